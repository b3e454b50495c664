"""tools/grafana/shm-vla.json: a dashboard Grafana can import, whose every query asks for one
cell and only for metrics (and labels) that the exporter serves (metrics.CATALOG). The live
exporter test also checks that a running cell serves every metric the dashboard uses."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client", reason="pip install shm-vla[metrics]")
from shm_vla import metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "tools" / "grafana" / "shm-vla.json"
METRIC = re.compile(r"\b(shm_vla_[a-z0-9_]+)(\{[^}]*\})?")
BY = re.compile(r"\bby \(([^)]*)\)")
TOPICS = ("tick rate", "jitter", "ages", "held", "vl encode", "restarts")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exported() -> dict[str, tuple[str, ...]]:
    """Exposed name -> label names (counters are exposed with their _total)."""
    return {metrics.PREFIX + name: labels for name, (_, _, labels) in metrics.CATALOG.items()}


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def dashboard_metrics() -> set[str]:
    return {name for _, expr in queries() for name, _ in METRIC.findall(expr)}


def test_importable_shape():
    dash = dashboard()
    assert dash["uid"] == "shm-vla-cell" and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "cell)" in variables["cell"]["query"]["query"] and "instance)" in variables["host"]["query"]["query"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["title"] and panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]


def test_one_cell_at_a_glance():
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for topic in TOPICS:
        assert topic in titles, topic
    for title, expr in queries():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), (title, expr)
        for name, selector in METRIC.findall(expr):
            assert 'cell="$cell"' in selector and 'instance=~"$host"' in selector, (title, expr)


def test_every_metric_and_label_is_exported():
    """Names, labels in `by (...)`, and labels in legends: those of the metrics the query reads
    (after a `by`, only those it keeps)."""
    names = exported()
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            used = [name for name, _ in METRIC.findall(expr)]
            assert used and all(name in names for name in used), (panel["title"], expr)
            labels = set.intersection(*(set(names[name]) for name in used))
            for group in BY.findall(expr):
                kept = {word.strip() for word in group.split(",")}
                assert kept <= labels, (panel["title"], kept)
                labels = kept
            legend = set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
            assert legend <= labels, (panel["title"], legend, labels)
    assert len(dashboard_metrics()) >= 20

"""The optional extras: declared so that pip can read them, installed by `make test` (CI),
and the package imports without them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_setup_cfg_extras_parse():
    """setuptools reads setup.cfg as pip's build would (a bad marker line fails here, not in CI's install)."""
    setupcfg = pytest.importorskip("setuptools.config.setupcfg")
    extras = setupcfg.read_configuration(REPO / "setup.cfg")["options"]["extras_require"]
    assert any(r.startswith("prometheus-client") for r in extras["metrics"]), extras["metrics"]
    assert any(r.startswith("rerun-sdk") and 'python_version >= "3.11"' in r for r in extras["rerun"]), extras["rerun"]


def test_make_test_installs_the_extras():
    makefile = (REPO / "Makefile").read_text()
    assert "-e '.[test,metrics,rerun]'" in makefile


def test_package_imports_and_runs_without_the_extras():
    """stat, analyze and the CLI work with prometheus_client and rerun unavailable."""
    code = ("import sys; sys.modules['prometheus_client'] = None; sys.modules['rerun'] = None\n"
            "import shm_vla.cli, shm_vla.stat_view, shm_vla.analyze, shm_vla.stat_model\n"
            "sys.exit(shm_vla.cli.main(['stat', '--help']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "--prometheus" in result.stdout


@pytest.mark.parametrize("missing, argv, line", [
    ("prometheus_client", ["--prometheus", "127.0.0.1:0"],
     "shm-vla-stat: --prometheus needs prometheus-client: pip install shm-vla[metrics]"),
    ("rerun", ["--rerun", "x.rrd", "--once"], "shm-vla-stat: --rerun needs rerun-sdk: pip install shm-vla[rerun]"),
])
def test_a_flag_without_its_extra_is_one_line_and_exit_2(missing, argv, line):
    """stat's flags that need an extra say which one to install (run with or without it installed)."""
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "from shm_vla import stat_view\n"
            f"sys.exit(stat_view.main({argv!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == line

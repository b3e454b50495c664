"""`shm-vla bench` (issue 12, item 5): the benchmarks are scripts of a checkout, not part of
the installed package. From a checkout `shm-vla bench NAME` runs bench/NAME.py; from an
installed wheel it says, in one line, to run them from a checkout. The wheel is built here
from the package's own files (pip, offline, no build isolation: a few seconds)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from procs import REPO
from shm_vla import cli


def test_the_listed_benchmarks_are_the_checkouts_scripts():
    assert sorted(p.stem.replace("_", "-") for p in cli.BENCH_DIR.glob("[!_]*.py")) == list(cli.BENCHMARKS)


def test_without_a_checkout_bench_says_where_the_benchmarks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "BENCH_DIR", tmp_path / "bench")
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: shm-vla bench") and "python bench/NAME.py" in out and "action_head" in out
    assert cli.main(["bench", "ipc", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run them from a checkout" in err


def test_from_a_checkout_bench_runs_the_script_and_refuses_helpers():
    def bench(*args):
        return subprocess.run([sys.executable, "-m", "shm_vla.cli", "bench", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    ran = bench("vl-ops", "--help")
    assert ran.returncode == 0 and ran.stdout.startswith("usage: vl_ops.py")
    for name in ("_common", "common", "../setup", "seed-style"):
        refused = bench(name)
        assert refused.returncode == 2 and f"no benchmark {name!r}" in refused.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, site folder it is installed into) for this checkout's package."""
    root = tmp_path_factory.mktemp("wheel")
    src, dist, site = root / "src", root / "dist", root / "site"
    shutil.copytree(REPO / "shm_vla", src / "shm_vla", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    for args in (["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
                 ["install", "--no-deps", "--no-index", "--target", str(site)]):
        if args[0] == "install":
            args.append(str(next(dist.glob("shm_vla-*.whl"))))
        proc = subprocess.run(pip + args, capture_output=True, text=True, timeout=180, cwd=root)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return next(dist.glob("shm_vla-*.whl")), site


def test_the_wheel_holds_the_package_and_no_benchmark_code(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "shm_vla/cli.py" in names and "shm_vla/model/runner.py" in names
    assert not [n for n in names if n.startswith("bench/") or "seed_style" in n], names


def test_an_installed_shm_vla_bench_says_to_use_a_checkout(installed, tmp_path):
    _, site = installed
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*argv):
        return subprocess.run(list(argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    where = run(sys.executable, "-c", "import shm_vla; print(shm_vla.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr   # the wheel's, not the checkout's
    shm_vla = str(site / "bin" / "shm-vla")
    helped = run(shm_vla, "bench", "--help")
    assert helped.returncode == 0 and "usage: shm-vla bench" in helped.stdout
    assert "run them from a checkout of shm-vla: python bench/NAME.py" in helped.stdout
    refused = run(shm_vla, "bench", "ipc", "--quick")
    assert refused.returncode == 2 and refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("shm-vla bench: the benchmarks are not part of the installed package")
    listed = run(shm_vla, "--help")
    assert listed.returncode == 0 and "benchmarks, from a checkout" in listed.stdout

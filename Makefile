# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use, with the optional extras the tests cover (metrics, rerun).
# torch is pinned to the CPU wheel for development and CI; GPU users install their own CUDA
# build of torch before `pip install -e .[gpu]`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH_PIN := torch==2.13.0
INSTANCE ?= demo
DEMO_S ?= 30

.PHONY: venv demo test test-fast bench-ipc install-systemd clean

venv: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test,metrics,rerun]'
	touch $(STAMP)

demo: venv
	$(PY) -m shm_vla.demo --instance $(INSTANCE) --duration $(DEMO_S)

# Two workers (each test file on one worker), then the few tests that must run alone.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile -m 'not serial' tests
	$(PY) -m pytest -q -m serial tests

test-fast: venv
	$(PY) -m pytest -q -m 'not slow' tests

bench-ipc: venv
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/ipc.py

install-systemd:
	sh systemd/install.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis

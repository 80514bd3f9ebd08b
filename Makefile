# The two commands of the README. Every command goes through $(PY), so `make quickstart
# PY=venv/bin/python` works without activating the venv (a bare `vseam` may not be on PATH).
# The CPU build of torch is pinned first, so the looser
# requirement in pyproject.toml (torch>=2.2) is already satisfied and pulls no CUDA wheels.
PY ?= python3
TORCH ?= torch==2.13.0

.PHONY: install quickstart test bench

install:
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"

quickstart: install
	$(PY) -m vseam_run run specs/quickstart.yaml

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) -m vseam_run bench search

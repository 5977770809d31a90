# The two commands in the README: `make lab` (the main job) and `make test`.
# Each does its own setup on a fresh Debian or Ubuntu machine, as root.
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup lab down test lint bench
setup:
	@scripts/install-deps

lab: setup
	$(PY) -m lab up $(if $(STEPS),--steps) $(if $(KEEP),--keep) $(if $(NODES),--nodes $(NODES))

down: setup
	$(PY) -m lab down

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check --diff . || true

test: setup lint
	$(PY) -m pytest

bench: setup
	$(PY) -m bench

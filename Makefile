# The README's two commands: `make lab` (the main job) and `make test`. Each does its own
# setup on a fresh Debian or Ubuntu machine, as root (scripts/install-deps).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup lab down phases test lint bench
setup:
	@scripts/install-deps

lab: setup
	$(PY) -m lab up $(if $(STEPS),--steps) $(if $(KEEP),--keep) $(if $(NODES),--nodes $(NODES)) \
		$(if $(LOGIN),--user $(LOGIN))

down: setup
	$(PY) -m lab down

phases: setup
	@$(PY) -m bootstrap phases

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy .

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) -m bench

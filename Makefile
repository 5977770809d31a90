# The README's two commands: `make lab` (the main job) and `make test`. Each does its own
# setup on a fresh Debian or Ubuntu machine, as root (scripts/install-deps).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup lab down phases test lint bench install-cni
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

# The plugin laid out exactly as the bootstrap installs it on a node, under DESTDIR (default
# /): <DESTDIR>/opt/cni/bin/lab-cni and its package in <DESTDIR>/opt/cni/lib/lab-cni/.
# Needs nothing but python3 (bootstrap/cni/install.py owns the layout).
install-cni:
	python3 -m bootstrap.cni.install $(or $(DESTDIR),/)

# The README's two commands: `make lab` (the main job) and `make test`. Each does its own
# setup on a fresh Debian or Ubuntu machine, as root (scripts/install-deps).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup venv lab down check status run ssh phases test lint bench install-cni \
	exercises exercise hint solution pods pod-run pod-exec pod-delete trace
setup:
	@scripts/install-deps

# The cloud path needs only the virtualenv: no root, no apt.
venv:
	@scripts/install-deps --venv-only
# A stack's verbs need only the virtualenv; a kept lab's need the lab's packages and root.
TARGET_SETUP = $(if $(STACK),venv,setup)

lab: setup
	$(PY) -m lab up $(if $(STEPS),--steps) $(if $(KEEP),--keep) $(if $(NODES),--nodes $(NODES)) \
		$(if $(LOGIN),--user $(LOGIN))

down: setup
	$(PY) -m lab down

# On a lab kept with `make lab KEEP=1`, or on a Pulumi stack with STACK=<name>.
ON_STACK = $(if $(STACK),--stack $(STACK))
check: $(TARGET_SETUP)
	$(PY) -m lab check $(ON_STACK)

status: $(TARGET_SETUP)
	$(PY) -m lab status $(ON_STACK)

# One probe, hop by hop: make trace FROM=bash-worker-1 TO=nginx-worker-2 [PORT=8080]
# [STACK=dev: between two test pods of a stack]
trace: $(TARGET_SETUP)
	$(PY) -m lab trace "$(FROM)" "$(TO)" $(if $(PORT),--port $(PORT)) $(ON_STACK)

run: $(TARGET_SETUP)
	$(PY) -m lab bootstrap "$(PHASES)" $(ON_STACK)

# Practise: break one thing for the learner to fix (README, "Practise").
exercises: venv
	@$(PY) -m lab exercises $(ON_STACK)

exercise: $(TARGET_SETUP)
	$(PY) -m lab exercise $(if $(EXERCISE),"$(EXERCISE)") $(if $(NODE),--node "$(NODE)") $(ON_STACK)

hint: $(TARGET_SETUP)
	@$(PY) -m lab hint $(ON_STACK)

solution: $(TARGET_SETUP)
	@$(PY) -m lab solution $(ON_STACK)

# Pods on a kept lab, as kubectl would (README, "Play with pods"); python -m lab run, exec
# and delete do the same with --name for another lab.
pods: setup
	@$(PY) -m lab pods

pod-run: setup
	$(PY) -m lab run "$(POD)" $(if $(NODE),--node "$(NODE)")

pod-exec: setup
	@$(PY) -m lab exec "$(POD)" -- $(CMD)

pod-delete: setup
	$(PY) -m lab delete "$(POD)"

ssh: venv
	$(PY) -m lab ssh "$(NODE)" --stack "$(STACK)"

phases: venv
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

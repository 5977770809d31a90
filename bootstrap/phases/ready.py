"""ready: wait until every node reports Ready (it needs the CNI config installed earlier)."""

from __future__ import annotations

import shlex

from bootstrap.kubeadm import KUBECTL
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase

NAME = "ready"
READY_TIMEOUT = 300


def new_ready_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Wait until every node is Ready", run=run_ready)


def run_ready(context: CloudContext) -> None:
    """Waits on the plan's nodes by name, not `--all`: a node removed from the plan may
    linger in the API server, NotReady, until someone deletes it."""
    control_plane = context.ssh.node(context.plan.control_plane.name)
    names = " ".join(shlex.quote(f"node/{name}") for name in context.plan.node_names())
    control_plane.run(f"{KUBECTL} wait --for=condition=Ready {names} "
                      f"--timeout={READY_TIMEOUT}s", timeout=READY_TIMEOUT + 30)

"""kubeadm-init: initialise the control plane, unless it already is."""

from __future__ import annotations

from bootstrap.kubeadm import ADMIN_KUBECONFIG, KUBEADM_INIT, render_init_config
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_noop, log_step

NAME = "kubeadm-init"
INIT_TIMEOUT = 900


def new_kubeadm_init_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Initialise the control plane with kubeadm", run=run_kubeadm_init)


def run_kubeadm_init(context: CloudContext) -> None:
    access = context.inventory.node(context.plan.control_plane.name)
    node = context.ssh.node(access.name)
    if node.exists(ADMIN_KUBECONFIG):
        log_noop(NAME, node.name, f"{ADMIN_KUBECONFIG} exists: the control plane is up")
        return
    # The exact version kubeadm ships with, so it never looks one up on the internet.
    version = node.run("kubeadm version -o short", timeout=60, quiet=True).output.strip()
    config = render_init_config(context.plan, access, version)
    node.run(KUBEADM_INIT, stdin=config.encode(), timeout=INIT_TIMEOUT)
    log_step(NAME, node.name, f"control plane {version} initialised")

"""kubeadm-init: initialise the control plane, or complete an init that stopped part way.

Done means what kubeadm init writes last exists (bootstrap-token RBAC, cluster-info, the
kube-proxy and CoreDNS add-ons), not that admin.conf exists: kubeadm writes that early.
The facts are read on the node, `init_commands` decides, then the commands run.
"""

from __future__ import annotations

from bootstrap.errors import LabError
from bootstrap.kubeadm import (
    INIT_FACTS,
    INIT_FACTS_TIMEOUT,
    InitFacts,
    describe_init,
    init_commands,
    parse_init_facts,
    render_init_config,
)
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_noop, log_step
from bootstrap.remote import RemoteNode

NAME = "kubeadm-init"
INIT_TIMEOUT = 900


def new_kubeadm_init_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Initialise the control plane with kubeadm, or complete its init",
                 run=run_kubeadm_init)


def run_kubeadm_init(context: CloudContext) -> None:
    name = context.plan.control_plane.name
    node = context.ssh.node(name)
    facts = read_init_facts(node)
    commands = init_commands(facts)
    if not commands:
        log_noop(NAME, name, "/etc/kubernetes/admin.conf exists and kubeadm init finished: "
                 "bootstrap-token RBAC, cluster-info, kube-proxy and CoreDNS are in place")
        return
    # The exact version kubeadm ships with, so it never looks one up on the internet.
    version = node.run("kubeadm version -o short", timeout=60, quiet=True).output.strip()
    config = render_init_config(context.plan, context.inventory.node(name).host, version)
    if facts.traces:
        log_step(NAME, name, f"{describe_init(facts)}: running {len(commands)} step(s) again")
    for command in commands:
        node.run(command, stdin=config.encode(), timeout=INIT_TIMEOUT)
    missing = read_init_facts(node).missing_objects()
    if missing:  # kubeadm said it succeeded: trust the cluster, not the exit code
        raise LabError(f"kubeadm init finished, but {', '.join(missing)} cannot be read "
                       "from the API server")
    log_step(NAME, name, f"control plane {version} initialised")


def read_init_facts(node: RemoteNode) -> InitFacts:
    return parse_init_facts(node.run(INIT_FACTS, timeout=INIT_FACTS_TIMEOUT, quiet=True).output)

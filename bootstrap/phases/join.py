"""join: join the workers that have not joined yet, with a fresh short-lived token."""

from __future__ import annotations

from bootstrap.inventory import NodeAccess
from bootstrap.kubeadm import (
    KUBEADM_JOIN,
    KUBELET_KUBECONFIG,
    TOKEN_CREATE,
    JoinCredentials,
    parse_join_command,
    render_join_config,
)
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_noop, log_step
from bootstrap.ssh import NodeSSH

NAME = "join"
JOIN_TIMEOUT = 600


def new_join_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Join the workers to the cluster", run=run_join)


def run_join(context: CloudContext) -> None:
    workers = [node.name for node in context.plan.workers]
    joined = context.ssh.on_all(lambda node: node.exists(KUBELET_KUBECONFIG), workers)
    for name in [name for name, done in joined.items() if done]:
        log_noop(NAME, name, f"{KUBELET_KUBECONFIG} exists: already joined")
    pending = [name for name, done in joined.items() if not done]
    if not pending:
        return
    control_plane = context.ssh.node(context.plan.control_plane.name)
    # secret: the output holds the token, which must reach neither the log nor an error.
    credentials = parse_join_command(control_plane.run(TOKEN_CREATE, timeout=60,
                                                       secret=True).output)
    context.ssh.on_all(
        lambda node: join_node(node, context.inventory.node(node.name), credentials), pending)


def join_node(node: NodeSSH, access: NodeAccess, credentials: JoinCredentials) -> None:
    node.run(KUBEADM_JOIN, stdin=render_join_config(credentials, access).encode(),
             timeout=JOIN_TIMEOUT)
    log_step(NAME, node.name, f"joined {credentials.endpoint}")

"""join: join the workers that have not joined, finishing half-joined ones, with a
short-lived token that is deleted once the joins are over.

Facts: each worker's kubeadm files, and which Node objects the API server has (a worker
with kubelet.conf gets a bounded wait for its Node). `join_action` decides; then the token is
made and the workers are reset where needed and joined in parallel.
"""

from __future__ import annotations

from dataclasses import replace

from bootstrap.kubeadm import (
    BOOTSTRAP_TOKEN_TTL,
    JOIN_FACTS,
    KUBEADM_JOIN,
    KUBEADM_RESET,
    KUBECTL_TIMEOUT,
    NODE_CIDRS,
    TOKEN_CREATE,
    JoinAction,
    JoinCredentials,
    WorkerFacts,
    describe_worker,
    join_action,
    parse_join_command,
    parse_node_cidrs,
    parse_worker_files,
    render_join_config,
    token_delete_command,
    wait_for_nodes_command,
)
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_noop, log_step
from bootstrap.remote import RemoteNode
from infra.plan import Node

NAME = "join"
JOIN_TIMEOUT = 600
RESET_TIMEOUT = 300
# A worker with kubelet.conf but no Node object may only be slow to register.
REGISTRATION_WAIT = 60


def new_join_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Join the workers to the cluster, finishing half-joined ones",
                 run=run_join)


def run_join(context: CloudContext) -> None:
    control_plane = context.ssh.node(context.plan.control_plane.name)
    facts = worker_facts(context, control_plane)
    actions = {name: join_action(found) for name, found in facts.items()}
    for name, action in actions.items():
        if action is JoinAction.NONE:
            log_noop(NAME, name, f"already joined: {describe_worker(facts[name])}")
        elif action is JoinAction.RESET_AND_JOIN:
            log_step(NAME, name, f"{describe_worker(facts[name])}: kubeadm reset, then join")
    pending = [name for name, action in actions.items() if action is not JoinAction.NONE]
    if not pending:
        return
    # secret: the output holds the token, which must reach neither the log nor an error.
    credentials = parse_join_command(control_plane.run(TOKEN_CREATE, timeout=KUBECTL_TIMEOUT,
                                                       secret=True).output)
    try:
        context.ssh.on_all(lambda node: join_node(node, context.plan.node(node.name),
                                                  credentials, actions[node.name]), pending)
    finally:
        delete_token(control_plane, credentials)


def worker_facts(context: CloudContext, control_plane: RemoteNode) -> dict[str, WorkerFacts]:
    workers = [node.name for node in context.plan.workers]
    files = context.ssh.on_all(
        lambda node: parse_worker_files(node.run(JOIN_FACTS, timeout=60, quiet=True).output),
        workers)
    listed = parse_node_cidrs(control_plane.run(NODE_CIDRS, timeout=KUBECTL_TIMEOUT,
                                                quiet=True).output)
    return {name: with_registration(control_plane, name, found, listed)
            for name, found in files.items()}


def with_registration(control_plane: RemoteNode, name: str, found: WorkerFacts,
                      listed: dict[str, str]) -> WorkerFacts:
    registered = name in listed or (found.kubelet_conf and registers_soon(control_plane, name))
    return replace(found, registered=registered)


def registers_soon(control_plane: RemoteNode, name: str) -> bool:
    waited = control_plane.run(wait_for_nodes_command([name], REGISTRATION_WAIT),
                               timeout=REGISTRATION_WAIT + KUBECTL_TIMEOUT, check=False,
                               quiet=True)
    return waited.ok


def join_node(node: RemoteNode, planned: Node, credentials: JoinCredentials,
              action: JoinAction) -> None:
    if action is JoinAction.RESET_AND_JOIN:
        node.run(KUBEADM_RESET, timeout=RESET_TIMEOUT)
    node.run(KUBEADM_JOIN, stdin=render_join_config(credentials, planned).encode(),
             timeout=JOIN_TIMEOUT)
    log_step(NAME, node.name, f"joined {credentials.endpoint}")


def delete_token(control_plane: RemoteNode, credentials: JoinCredentials) -> None:
    """No token outlives the joins; if the delete fails, the token's TTL still ends it."""
    deleted = control_plane.run(token_delete_command(credentials), timeout=KUBECTL_TIMEOUT,
                                check=False, quiet=True)
    if deleted.ok:
        log_step(NAME, control_plane.name, "deleted the join token")
    else:
        log_step(NAME, control_plane.name, "could not delete the join token; it expires "
                 f"on its own ({BOOTSTRAP_TOKEN_TTL} after it was made)")

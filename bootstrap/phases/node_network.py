"""node-network: install the applier, the node's desired state and the boot unit, then apply."""

from __future__ import annotations

import shlex

from bootstrap.node_network import (
    BOOT_COMMAND,
    BOOT_UNIT_NAME,
    NODE_FILES,
    OBSOLETE_NODE_FILES,
    applier_source,
    desired_state,
    render_boot_unit,
    render_state,
)
from bootstrap.node_network_apply import NO_CHANGES_LINE
from bootstrap.phases.context import LocalContext
from bootstrap.phases.workflow import Phase, log_files, log_noop, log_step
from bootstrap.remote import RemoteNode
from bootstrap.remote_files import DesiredFile, describe_paths, ensure_files
from infra.plan import Plan

NAME = "node-network"
SETUP_TIMEOUT = 120
SYSTEMCTL_TIMEOUT = 60
# systemd's own test for "booted with systemd" (sd_booted).
SYSTEMD_RUNNING_MARKER = "/run/systemd/system"


def new_node_network_phase() -> Phase[LocalContext]:
    return Phase(NAME, "Apply sysctls, the cni0 bridge and the iptables rules; install the "
                 "boot unit that re-applies them", run=run_node_network)


def run_node_network(context: LocalContext) -> None:
    context.ssh.on_all(lambda node: configure_node_network(node, context.plan))


def node_network_files(plan: Plan, node_name: str) -> list[DesiredFile]:
    state = desired_state(plan, plan.node(node_name))
    return [
        DesiredFile(NODE_FILES.applier, applier_source(), 0o644),
        DesiredFile(NODE_FILES.state, render_state(state).encode(), 0o644),
        DesiredFile(NODE_FILES.boot_unit, render_boot_unit().encode(), 0o644),
    ]


def configure_node_network(node: RemoteNode, plan: Plan) -> None:
    written, current = ensure_files(node, node_network_files(plan, node.name))
    log_files(NAME, node.name, written, current)
    remove_obsolete_files(node)
    # The applier shows each command it runs and ends with NO_CHANGES_LINE if there was none.
    applied = node.run(BOOT_COMMAND, timeout=SETUP_TIMEOUT)
    if applied.output.rstrip("\n").endswith(NO_CHANGES_LINE):
        log_noop(NAME, node.name, "bridge, sysctls and iptables rules already in place")
    enable_boot_unit(node, unit_changed=NODE_FILES.boot_unit in written)


def remove_obsolete_files(node: RemoteNode) -> None:
    stale = [path for path in OBSOLETE_NODE_FILES if node.exists(path)]
    if stale:
        node.run(shlex.join(["rm", "-f", *stale]), timeout=SETUP_TIMEOUT)
        log_step(NAME, node.name, f"removed {describe_paths(stale)} (an older version's)")


def enable_boot_unit(node: RemoteNode, *, unit_changed: bool) -> None:
    if not node.exists(SYSTEMD_RUNNING_MARKER):
        log_noop(NAME, node.name, f"{BOOT_UNIT_NAME} is installed for boot, but no systemd "
                 "runs here to enable it")
        return
    if unit_changed:
        node.run("systemctl daemon-reload", timeout=SYSTEMCTL_TIMEOUT)
    if node.run(f"systemctl is-enabled --quiet {BOOT_UNIT_NAME}", timeout=SYSTEMCTL_TIMEOUT,
                check=False, quiet=True).ok:
        log_noop(NAME, node.name, f"{BOOT_UNIT_NAME} already enabled")
        return
    node.run(f"systemctl enable {BOOT_UNIT_NAME}", timeout=SYSTEMCTL_TIMEOUT)
    log_step(NAME, node.name, f"enabled {BOOT_UNIT_NAME} for boot")

"""cni: install the lab-cni plugin and the node's CNI config list."""

from __future__ import annotations

import json
from pathlib import Path

from bootstrap.errors import LabError
from bootstrap.node_network import (
    NODE_FILES,
    cni_conflist,
    render_plugin_launcher,
)
from bootstrap.phases.context import LocalContext
from bootstrap.phases.workflow import Phase, log_noop, log_step
from bootstrap.remote_files import DesiredFile, ensure_files
from bootstrap.ssh import NodeSSH
from infra.plan import Plan

NAME = "cni"


def new_cni_phase() -> Phase[LocalContext]:
    return Phase(NAME, f"Install the CNI plugin as {NODE_FILES.plugin} and its config list",
                 run=run_cni)


def run_cni(context: LocalContext) -> None:
    plugin = read_plugin(context.plugin_source)
    context.ssh.on_all(lambda node: install_cni(node, context.plan, plugin))


def read_plugin(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise LabError(f"the CNI plugin source {path} does not exist") from None


def cni_files(plan: Plan, node_name: str, plugin: bytes) -> list[DesiredFile]:
    conflist = json.dumps(cni_conflist(plan, plan.node(node_name)), indent=2) + "\n"
    return [DesiredFile(NODE_FILES.plugin, render_plugin_launcher().encode(), 0o755),
            DesiredFile(NODE_FILES.plugin_module, plugin, 0o644),
            DesiredFile(NODE_FILES.conflist, conflist.encode(), 0o644)]


def install_cni(node: NodeSSH, plan: Plan, plugin: bytes) -> None:
    written, current = ensure_files(node, cni_files(plan, node.name, plugin))
    for path in written:
        log_step(NAME, node.name, f"installed {path}")
    for path in current:
        log_noop(NAME, node.name, f"{path} already has this content and mode (sha256 match)")

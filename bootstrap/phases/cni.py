"""cni: install the lab-cni plugin (bootstrap/cni/install.py lists its files) and the node's
CNI config list."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bootstrap.cni.install import NODE_LAUNCHER, PluginFile, plugin_files
from bootstrap.errors import LabError
from bootstrap.node_network import NODE_FILES, cni_conflist
from bootstrap.phases.context import LocalContext
from bootstrap.phases.workflow import Phase, log_files
from bootstrap.remote import RemoteNode
from bootstrap.remote_files import DesiredFile, ensure_files
from infra.plan import Plan

NAME = "cni"


def new_cni_phase() -> Phase[LocalContext]:
    return Phase(NAME, f"Install the CNI plugin as {NODE_LAUNCHER} and its config list",
                 run=run_cni)


def run_cni(context: LocalContext) -> None:
    plugin = read_plugin(context.plugin_source)
    context.ssh.on_all(lambda node: install_cni(node, context.plan, plugin))


def read_plugin(source: Path) -> list[PluginFile]:
    """The plugin's installed tree, from its package directory."""
    try:
        return plugin_files(source)
    except FileNotFoundError:
        raise LabError(f"the CNI plugin source {source} does not exist") from None


def cni_files(plan: Plan, node_name: str, plugin: Sequence[PluginFile]) -> list[DesiredFile]:
    conflist = json.dumps(cni_conflist(plan, plan.node(node_name)), indent=2) + "\n"
    return [*(DesiredFile(file.node_path, file.data, file.mode) for file in plugin),
            DesiredFile(NODE_FILES.conflist, conflist.encode(), 0o644)]


def install_cni(node: RemoteNode, plan: Plan, plugin: Sequence[PluginFile]) -> None:
    log_files(NAME, node.name, *ensure_files(node, cni_files(plan, node.name, plugin)))

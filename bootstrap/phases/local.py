"""The local workflow: wait-ssh > cni > node-network (kubeadm has no local stand-in)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bootstrap.inventory import Inventory
from bootstrap.phases.cni import new_cni_phase
from bootstrap.phases.context import PLUGIN_SOURCE, LocalContext, LocalData
from bootstrap.phases.node_network import new_node_network_phase
from bootstrap.phases.session import run_workflow
from bootstrap.phases.wait_ssh import new_wait_ssh_phase
from bootstrap.phases.workflow import Phase
from bootstrap.ssh import ClusterSSH
from infra.plan import Plan


def local_workflow() -> tuple[Phase[LocalContext], ...]:
    return (new_wait_ssh_phase(), new_cni_phase(), new_node_network_phase())


def run_local_workflow(plan: Plan, inventory: Inventory, *, ssh: ClusterSSH,
                       only: Iterable[str] = (), skip: Iterable[str] = (),
                       plugin_source: Path = PLUGIN_SOURCE) -> list[str]:
    """Run the local workflow over `ssh` (opened, and closed, by the caller); returns the
    phase paths that ran."""
    return run_workflow(local_workflow(), plan, inventory, only=only, skip=skip, ssh=ssh,
                        make_data=lambda connections: LocalData(plan, inventory, connections,
                                                                plugin_source))

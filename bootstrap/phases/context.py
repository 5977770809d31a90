"""What the workflows' phases may read (kubeadm's init/data.go), and the implementations.
The cloud context is the local one plus where to write the operator's kubeconfig."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bootstrap.errors import InventoryError
from bootstrap.inventory import Inventory
from bootstrap.ssh import ClusterSSH
from bootstrap.verify.checks import Outcome
from infra.plan import Plan

# Receives the verify phase's outcomes (the provider exposes them as an output).
ChecksSink = Callable[[Sequence[Outcome]], None]

# The plugin as written in this repository; nodes get it as /opt/cni/bin/lab-cni.
PLUGIN_SOURCE = Path(__file__).resolve().parent.parent / "cni" / "lab_cni.py"


class LocalContext(Protocol):
    @property
    def plan(self) -> Plan: ...

    @property
    def inventory(self) -> Inventory: ...

    @property
    def ssh(self) -> ClusterSSH: ...

    @property
    def plugin_source(self) -> Path: ...


class CloudContext(LocalContext, Protocol):
    """The cloud workflow also writes the operator's kubeconfig and reports its checks."""

    @property
    def kubeconfig_path(self) -> Path: ...

    @property
    def on_checks(self) -> ChecksSink: ...


@dataclass(frozen=True)
class LocalData:
    plan: Plan
    inventory: Inventory
    ssh: ClusterSSH
    plugin_source: Path = PLUGIN_SOURCE


def ignore_checks(_outcomes: Sequence[Outcome]) -> None:
    """The verify phase logs its table anyway; a caller may also want the outcomes."""


@dataclass(frozen=True)
class CloudData(LocalData):
    kubeconfig_path: Path = Path("kubeconfig")
    on_checks: ChecksSink = ignore_checks


def check_inventory_matches_plan(plan: Plan, inventory: Inventory) -> None:
    """The plan is the single source of addresses: the inventory must agree with it."""
    if inventory.names() != plan.node_names():
        raise InventoryError(f"inventory nodes {inventory.names()} differ from the plan's "
                             f"{plan.node_names()}")
    if inventory.cluster_cidr != str(plan.pod_network):
        raise InventoryError(f"inventory cluster CIDR {inventory.cluster_cidr} differs from "
                             f"the plan's {plan.pod_network}")
    for access in inventory.nodes:
        planned = plan.node(access.name)
        if access.role != planned.role:
            raise InventoryError(f"node {access.name}: inventory has role {access.role}; "
                                 f"the plan says {planned.role}")
        wanted = (str(planned.private_ip), str(planned.pod_cidr))
        if (access.private_ip, access.pod_cidr) != wanted:
            raise InventoryError(f"node {access.name}: inventory has private IP "
                                 f"{access.private_ip} and pod CIDR {access.pod_cidr}; the plan "
                                 f"says {wanted[0]} and {wanted[1]}")

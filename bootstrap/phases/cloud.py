"""The cloud workflow: wait-ssh > wait-cloud-init > prerequisites > cni > node-network
> kubeadm-init > join > pod-cidr > ready > kubeconfig > verify."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bootstrap.inventory import Inventory
from bootstrap.phases.cni import new_cni_phase
from bootstrap.phases.context import (
    PLUGIN_SOURCE,
    ChecksSink,
    CloudContext,
    CloudData,
    ignore_checks,
)
from bootstrap.phases.join import new_join_phase
from bootstrap.phases.kubeadm_init import new_kubeadm_init_phase
from bootstrap.phases.kubeconfig import new_kubeconfig_phase
from bootstrap.phases.node_network import new_node_network_phase
from bootstrap.phases.pod_cidr import new_pod_cidr_phase
from bootstrap.phases.prerequisites import new_prerequisites_phase
from bootstrap.phases.ready import new_ready_phase
from bootstrap.phases.session import run_workflow
from bootstrap.phases.verify import new_verify_phase
from bootstrap.phases.wait_cloud_init import new_wait_cloud_init_phase
from bootstrap.phases.wait_ssh import new_wait_ssh_phase
from bootstrap.phases.workflow import Phase
from bootstrap.ssh import ClusterSSH
from infra.plan import Plan


def cloud_workflow() -> tuple[Phase[CloudContext], ...]:
    return (new_wait_ssh_phase(), new_wait_cloud_init_phase(), new_prerequisites_phase(),
            new_cni_phase(), new_node_network_phase(), new_kubeadm_init_phase(),
            new_join_phase(), new_pod_cidr_phase(), new_ready_phase(), new_kubeconfig_phase(),
            new_verify_phase())


def run_cloud_workflow(plan: Plan, inventory: Inventory, *, ssh: ClusterSSH,
                       kubeconfig_path: Path,
                       only: Iterable[str] = (), skip: Iterable[str] = (),
                       plugin_source: Path = PLUGIN_SOURCE,
                       on_checks: ChecksSink = ignore_checks) -> list[str]:
    """Run the cloud workflow, like run_local_workflow; also writes the admin kubeconfig
    and hands the verify phase's outcomes to `on_checks`."""
    return run_workflow(cloud_workflow(), plan, inventory, only=only, skip=skip, ssh=ssh,
                        make_data=lambda connections: CloudData(
                            plan, inventory, connections, plugin_source, kubeconfig_path,
                            on_checks))

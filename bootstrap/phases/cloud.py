"""The cloud workflow: wait-ssh > wait-cloud-init > prerequisites > cni > node-network
> kubeadm-init > join > pod-cidr > ready > kubeconfig > verify."""

from __future__ import annotations

from collections.abc import Iterable

from bootstrap.phases.cni import new_cni_phase
from bootstrap.phases.context import CloudContext
from bootstrap.phases.join import new_join_phase
from bootstrap.phases.kubeadm_init import new_kubeadm_init_phase
from bootstrap.phases.kubeconfig import new_kubeconfig_phase
from bootstrap.phases.node_network import new_node_network_phase
from bootstrap.phases.pod_cidr import new_pod_cidr_phase
from bootstrap.phases.prerequisites import new_prerequisites_phase
from bootstrap.phases.ready import new_ready_phase
from bootstrap.phases.verify import new_verify_phase
from bootstrap.phases.wait_cloud_init import new_wait_cloud_init_phase
from bootstrap.phases.wait_ssh import new_wait_ssh_phase
from bootstrap.phases.workflow import Phase, Runner


def cloud_workflow() -> tuple[Phase[CloudContext], ...]:
    return (new_wait_ssh_phase(), new_wait_cloud_init_phase(), new_prerequisites_phase(),
            new_cni_phase(), new_node_network_phase(), new_kubeadm_init_phase(),
            new_join_phase(), new_pod_cidr_phase(), new_ready_phase(), new_kubeconfig_phase(),
            new_verify_phase())


def run_cloud_workflow(context: CloudContext, *, only: Iterable[str] = (),
                       skip: Iterable[str] = ()) -> list[str]:
    """Run the cloud workflow, like run_local_workflow; it also writes the admin kubeconfig
    and hands the verify phase's outcomes to the context's `on_checks`."""
    return Runner(cloud_workflow(), lambda: context).run(only=only, skip=skip)

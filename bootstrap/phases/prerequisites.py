"""prerequisites: check what cloud-init installed before kubeadm relies on it."""

from __future__ import annotations

from bootstrap.errors import LabError
from bootstrap.kubeadm import PREREQUISITE_FACTS, parse_facts, prerequisite_problems
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_step
from bootstrap.remote import RemoteNode

NAME = "prerequisites"


def new_prerequisites_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Check kubeadm's version, containerd's cgroup driver and CNI directory, "
                 "the loopback plugin and swap",
                 run=run_prerequisites)


def run_prerequisites(context: CloudContext) -> None:
    minor = context.plan.settings.kubernetes_version
    context.ssh.on_all(lambda node: check_prerequisites(node, minor))


def check_prerequisites(node: RemoteNode, kubernetes_minor: str) -> None:
    facts = parse_facts(node.run(PREREQUISITE_FACTS, timeout=60, quiet=True).output)
    problems = prerequisite_problems(facts, kubernetes_minor)
    if problems:
        raise LabError(f"node {node.name} is not ready for kubeadm: {'; '.join(problems)}")
    log_step(NAME, node.name, f"kubeadm {facts['kubeadm']}, containerd with systemd cgroups and "
             "CNI plugins in /opt/cni/bin, loopback installed, swap off")

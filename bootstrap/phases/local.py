"""The local workflow: wait-ssh > cni > node-network (kubeadm has no local stand-in)."""

from __future__ import annotations

from collections.abc import Iterable

from bootstrap.phases.cni import new_cni_phase
from bootstrap.phases.context import LocalContext
from bootstrap.phases.node_network import new_node_network_phase
from bootstrap.phases.wait_ssh import new_wait_ssh_phase
from bootstrap.phases.workflow import Phase, Runner


def local_workflow() -> tuple[Phase[LocalContext], ...]:
    return (new_wait_ssh_phase(), new_cni_phase(), new_node_network_phase())


def run_local_workflow(context: LocalContext, *, only: Iterable[str] = (),
                       skip: Iterable[str] = ()) -> list[str]:
    """Run the local workflow over the context's connections (opened, and closed, by the
    caller); returns the phase paths that ran."""
    return Runner(local_workflow(), lambda: context).run(only=only, skip=skip)

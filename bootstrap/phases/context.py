"""What the workflows' phases may read (kubeadm's init/data.go).

A phase of the local workflow reads a `LocalContext`; the cloud workflow's context adds where
to write the operator's kubeconfig and who receives the checks. Because `CloudContext` is a
`LocalContext`, every local phase also serves the cloud workflow. The nodes are reached
through the `NodeCluster` protocol: SSH in production, fakes in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootstrap.cni.install import SOURCE_DIR
from bootstrap.inventory import Inventory
from bootstrap.remote import NodeCluster
from bootstrap.verify.checks import Outcome
from infra.plan import Plan

# Receives the verify phase's outcomes (the provider exposes them as an output).
ChecksSink = Callable[[Sequence[Outcome]], None]


def ignore_checks(_outcomes: Sequence[Outcome]) -> None:
    """The verify phase logs its table anyway; a caller may also want the outcomes."""


@dataclass(frozen=True, kw_only=True)
class LocalContext:
    plan: Plan  # what each node is
    inventory: Inventory  # how each node is reached
    ssh: NodeCluster  # the open connections, one per inventory node
    plugin_source: Path = SOURCE_DIR


@dataclass(frozen=True, kw_only=True)
class CloudContext(LocalContext):
    kubeconfig_path: Path = Path("kubeconfig")
    on_checks: ChecksSink = ignore_checks

"""Running a workflow: check the inventory against the plan, open (or reuse) the SSH
connections when the first phase needs them, run, and close what was opened here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from bootstrap.inventory import Inventory
from bootstrap.phases.context import check_inventory_matches_plan
from bootstrap.phases.workflow import Phase, Runner
from bootstrap.ssh import ClusterSSH
from infra.plan import Plan

ContextT = TypeVar("ContextT")


def run_workflow(phases: Sequence[Phase[ContextT]], plan: Plan, inventory: Inventory, *,
                 only: Iterable[str], skip: Iterable[str], ssh: ClusterSSH | None,
                 make_data: Callable[[ClusterSSH], ContextT]) -> list[str]:
    check_inventory_matches_plan(plan, inventory)
    opened: list[ClusterSSH] = []

    def make_context() -> ContextT:
        if ssh is not None:
            return make_data(ssh)
        opened.append(ClusterSSH(inventory))
        return make_data(opened[0])

    try:
        return Runner(phases, make_context).run(only=only, skip=skip)
    finally:
        for connections in opened:
            connections.close()

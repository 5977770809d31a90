"""Running a workflow: check the inventory against the plan, then run the phases over the
caller's SSH connections (the caller opens and closes them)."""

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
                 only: Iterable[str], skip: Iterable[str], ssh: ClusterSSH,
                 make_data: Callable[[ClusterSSH], ContextT]) -> list[str]:
    check_inventory_matches_plan(plan, inventory)
    return Runner(phases, lambda: make_data(ssh)).run(only=only, skip=skip)

"""An open exercise, from start to verdict: its record on disk, what `check` says of it,
and the hint and solution texts. Shared by the local lab (the record beside the kept lab) and
a cloud stack (the record under the user's state directory, `stack_state_dir`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console

from bootstrap import exercises
from bootstrap.exercises import HINT_COUNT, Exercise, OpenExercise, Target
from bootstrap.remote import RemoteNode
from bootstrap.verify.checks import Outcome
from bootstrap.verify.facts import read_persisted_state
from infra.plan import Plan

RECORD_FILE = "exercise.json"


def load_record(directory: Path) -> OpenExercise | None:
    try:
        return OpenExercise(**json.loads((directory / RECORD_FILE).read_text()))
    except FileNotFoundError:
        return None


def save_record(directory: Path, record: OpenExercise) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RECORD_FILE).write_text(json.dumps(asdict(record)) + "\n")


def close_record(directory: Path) -> None:
    (directory / RECORD_FILE).unlink(missing_ok=True)


def stack_state_dir(stack: str) -> Path:
    """Where a stack's open exercise is recorded: $XDG_STATE_HOME/k8s-cni-lab/stacks/<stack>
    (~/.local/state/... by default); the stack itself holds nothing of it."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "k8s-cni-lab" / "stacks" / stack


def show_verdict(exercise: Exercise, plan: Plan, node: RemoteNode,
                 outcomes: Sequence[Outcome], directory: Path, console: Console) -> bool:
    """Print whether the open exercise is solved (checks and the files read at boot); close
    it when it is."""
    state, conflist = read_persisted_state(node)
    problems = exercises.persistence_problems(plan, plan.node(node.name), state, conflist)
    result = exercises.judge(exercise, [o.check.name for o in outcomes if not o.passed],
                             problems)
    for line in result.lines:
        console.print(f"[{'green' if result.solved else 'yellow'}]{line}[/]", soft_wrap=True,
                      highlight=False)
    if result.solved:
        close_record(directory)
    return result.solved


def show_hint(exercise: Exercise, target: Target, record: OpenExercise, directory: Path,
              console: Console) -> None:
    console.print(exercises.hint(exercise, target, record.hints_shown), soft_wrap=True,
                  markup=False, highlight=False)
    if record.hints_shown < HINT_COUNT:
        save_record(directory, replace(record, hints_shown=record.hints_shown + 1))


def show_solution(exercise: Exercise, target: Target, console: Console, enter: str) -> None:
    console.print(exercises.solution(exercise, target), soft_wrap=True, markup=False,
                  highlight=False)
    if exercise.where != "vpc":
        console.print(f"(get a shell there with: {enter})", soft_wrap=True, markup=False)

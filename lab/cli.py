"""What `python -m lab up|down|enter|check|status|bootstrap` do, apart from argument parsing."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bootstrap.cni.install import plugin_files
from bootstrap.errors import LabError
from bootstrap.verify.checks import Outcome
from bootstrap.verify.diagnose import VpcFacts
from bootstrap.verify.report import FAIL, PASS, failure_lines, outcome_table, show_status
from bootstrap.verify.status import read_status
from bootstrap.verify.trace_report import print_trace
from lab import exercise, lifecycle, nodes, picture, story
from lab.lifecycle import LabOptions, LocalLab


def up(options: LabOptions, *, keep: bool, steps: bool, console: Console) -> int:
    started, name = time.monotonic(), options.name
    try:
        lab = lifecycle.build(options, console, vpc_configured=not steps)
    except (LabError, ValueError) as error:  # ValueError: PlanError, a bad lab name
        console.print(f"[red]lab up failed:[/] {error}")
        return 1
    try:
        with lab.ssh:
            outcomes, pictures = _story(lab, console) if steps else _straight(lab, console)
        console.log(f"lab {name}: up and checked in {time.monotonic() - started:.1f} s")
        picture.show_files(console, "The checks", pictures)
        if keep:
            _print_how_to_explore(lab)
        return 0 if all(outcome.passed for outcome in outcomes) else 1
    except LabError as error:
        console.print(f"[red]lab failed:[/] {error}")
        return 1
    finally:
        if not keep:
            lifecycle.down(name)
            console.log(f"lab {name}: removed")


def _straight(lab: LocalLab, console: Console) -> tuple[Sequence[Outcome], list[Path]]:
    lifecycle.bootstrap(lab)
    lab.start_pods()
    outcomes, causes = lab.run_checks()
    console.print(outcome_table(outcomes, causes))
    print_failures(console, outcomes, causes)
    return outcomes, draw_checks(lab, "checks", outcomes, causes, lab.vpc_facts())


def _story(lab: LocalLab, console: Console) -> tuple[Sequence[Outcome], list[Path]]:
    stages = story.replay(lab)
    console.print(story_table([(stage.title, stage.outcomes) for stage in stages]))
    for stage in stages:  # why each FAIL failed, stage by stage, and where one stopped
        if stage.causes:
            console.print(f"[bold]{stage.title}[/]")
            for name, cause in stage.causes.items():
                console.print(f"  {name}: {cause}")
        if stage.traced:
            print_trace(console, *stage.traced)
    final = stages[-1]
    print_failures(console, final.outcomes, final.causes)
    pictures = [file for stage in stages
                for file in draw_checks(lab, f"checks-{stage.slug}", stage.outcomes,
                                        stage.causes, stage.vpc, title=stage.title)]
    return final.outcomes, pictures


def draw_checks(lab: LocalLab, what: str, outcomes: Sequence[Outcome],
                causes: Mapping[str, str], vpc: VpcFacts,
                title: str = "the checks") -> list[Path]:
    """The topology with each check's path, as out/<lab>/<what>.svg (and .png); a missing
    or failing `dot` costs the picture only, with a note."""
    paths = picture.check_paths(lab.layout, lab.pods, outcomes, causes)
    try:
        return picture.render(lab.layout, lab.pods, paths,
                              picture.picture_stem(lab.layout.lab, what), vpc=vpc,
                              title=title)
    except picture.PictureError as error:
        lab.console.print(f"[yellow]no picture of the checks:[/] {error}", soft_wrap=True)
        return []


def _print_how_to_explore(lab: LocalLab) -> None:
    name = lab.layout.lab
    node = lab.plan.workers[0].name
    pod = next((p.name for p in lab.pods if p.node == node), "POD")
    lab.console.print(
        f"The lab is up. Enter a node: [bold]python -m lab --name {name} enter {node}[/]\n"
        f"Enter a pod:  [bold]python -m lab --name {name} enter {node} {pod}[/]\n"
        f"Its pods:     [bold]python -m lab --name {name} pods[/] (and run, exec, delete)\n"
        f"Remove it:    [bold]make down[/] (or python -m lab --name {name} down)")


def story_table(stages: Sequence[tuple[str, Sequence[Outcome]]]) -> Table:
    """One row per check, one column per stage: each fix turns a FAIL into a pass."""
    table = Table(title="The seed lab's story, replayed", title_justify="left")
    table.add_column("check")
    table.add_column("expected")
    for stage, _ in stages:
        table.add_column(stage)
    first = stages[0][1]
    for row, outcome in enumerate(first):
        cells = [PASS if outcomes[row].passed else FAIL for _, outcomes in stages]
        table.add_row(outcome.check.name, outcome.check.expected, *cells)
    return table


def print_failures(console: Console, outcomes: Sequence[Outcome],
                   causes: Mapping[str, str]) -> None:
    for line in failure_lines(outcomes, causes):
        console.print(f"[red]x[/] {line}", soft_wrap=True)


def check(name: str, console: Console) -> int:
    """The connectivity checks on a kept lab, now: exit 0 only if every one is as expected.
    With an exercise open, the causes stay hidden and the verdict says if it is solved."""
    lab = lifecycle.attach(name, console)
    record = exercise.open_exercise(name)
    with lab.ssh:
        if record:
            exercise.refresh_pods(lab)
        outcomes, causes = lab.run_checks()
        # With an exercise open, the picture hides the causes too: the boxes show the plan.
        pictures = draw_checks(lab, "checks", outcomes, {} if record else causes,
                               VpcFacts() if record else lab.vpc_facts())
        if record:
            console.print(outcome_table(outcomes, {}))
            picture.show_files(console, "The checks", pictures)
            return 0 if exercise.verdict(lab, record, outcomes, console) else 1
    console.print(outcome_table(outcomes, causes))
    print_failures(console, outcomes, causes)
    picture.show_files(console, "The checks", pictures)
    return 0 if all(outcome.passed for outcome in outcomes) else 1


def status(name: str, console: Console) -> int:
    """One row per node of a kept lab; exit 0 only if every node holds what the plan says."""
    lab = lifecycle.attach(name, console)
    wanted = {file.node_path: hashlib.sha256(file.data).hexdigest() for file in plugin_files()}
    with lab.ssh:
        statuses = read_status(lab.ssh, lab.plan, wanted)
    return show_status(console, lab.plan, statuses)


def run(name: str, phases: Sequence[str], console: Console) -> int:
    """Run the named phases of the local workflow on a kept lab, as the bootstrap does."""
    lab = lifecycle.attach(name, console)
    with lab.ssh:
        lifecycle.bootstrap(lab, only=phases)
    return 0


def down(name: str, console: Console) -> int:
    removed = lifecycle.down(name)
    console.print(f"lab {name}: removed {', '.join(removed)}" if removed
                  else f"lab {name}: nothing to remove")
    return 0


def enter(name: str, node: str, pod: str | None, command: str | None) -> int:
    """A shell in the node's namespaces (net, mount, hostname), or in a pod's network."""
    argv = nodes.enter_argv(name, node, pod, ["bash", "-c", command] if command else ["bash"])
    os.execvp(argv[0], argv)
    return 0  # not reached

"""What `python -m lab up|down|enter` do, kept apart from argument parsing."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from rich.console import Console

from bootstrap.errors import LabError
from bootstrap.verify.checks import Outcome
from bootstrap.verify.report import outcome_table, print_failures, story_table
from lab import lab as local
from lab import nodes, story


def up(options: local.LabOptions, *, keep: bool, steps: bool, console: Console) -> int:
    started, name = time.monotonic(), options.name
    try:
        running = local.build(options, console, pod_routes=not steps)
    except (LabError, ValueError) as error:  # ValueError: PlanError, a bad lab name
        console.print(f"[red]lab up failed:[/] {error}")
        return 1
    try:
        with running.ssh:
            outcomes = _story(running, console) if steps else _straight(running, console)
        console.log(f"lab {name}: up and checked in {time.monotonic() - started:.1f} s")
        if keep:
            _print_how_to_explore(running)
        return 0 if all(outcome.passed for outcome in outcomes) else 1
    except LabError as error:
        console.print(f"[red]lab failed:[/] {error}")
        return 1
    finally:
        if not keep:
            local.down(name)
            console.log(f"lab {name}: removed")


def _straight(running: local.LocalLab, console: Console) -> Sequence[Outcome]:
    local.bootstrap(running)
    running.start_pods()
    outcomes, causes = running.run_checks()
    console.print(outcome_table(outcomes, causes))
    print_failures(console, outcomes, causes)
    return outcomes


def _story(running: local.LocalLab, console: Console) -> Sequence[Outcome]:
    stages = story.replay(running)
    console.print(story_table([(stage.title, stage.outcomes) for stage in stages]))
    for stage in stages:  # why each FAIL failed, stage by stage
        if stage.causes:
            console.print(f"[bold]{stage.title}[/]")
            for name, cause in stage.causes.items():
                console.print(f"  {name}: {cause}")
    final = stages[-1]
    print_failures(console, final.outcomes, final.causes)
    return final.outcomes


def _print_how_to_explore(running: local.LocalLab) -> None:
    name = running.layout.lab
    node = running.plan.workers[0].name
    pod = next((p.name for p in running.pods if p.node == node), "POD")
    running.console.print(
        f"The lab is up. Enter a node: [bold]python -m lab --name {name} enter {node}[/]\n"
        f"Enter a pod:  [bold]python -m lab --name {name} enter {node} {pod}[/]\n"
        f"Remove it:    [bold]make down[/] (or python -m lab --name {name} down)")


def down(name: str, console: Console) -> int:
    removed = local.down(name)
    console.print(f"lab {name}: removed {', '.join(removed)}" if removed
                  else f"lab {name}: nothing to remove")
    return 0


def enter(name: str, node: str, pod: str | None, command: str | None,
          console: Console) -> int:
    """A shell in the node's namespaces (net, mount, hostname), or in a pod's network."""
    pid_file = nodes.node_dir(name, node) / "sshd.pid"
    if not pid_file.exists():
        console.print(f"[red]no node {node} in a running lab {name}[/] (is it up with --keep?)")
        return 1
    argv = ["nsenter", "-t", pid_file.read_text().strip(), "-m", "-u", "-n"]
    argv += ["ip", "netns", "exec", pod] if pod else []
    argv += ["bash", "-c", command] if command else ["bash"]
    os.execvp(argv[0], argv)
    return 0  # not reached

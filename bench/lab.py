"""Benchmark of the local lab: wall time of up, checks, the checks' picture, one traced probe
(`make trace` from a pod to a pod on another node, target: under 2 s) and down with 3
nodes, and of the bootstrap with 3 and with 12 nodes (target: 12 nodes in no more than twice
the time of 3).

Every run builds and removes its own lab (namespace prefix "blab"), as root.
"""

from __future__ import annotations

import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lab import lifecycle, picture, trace

RUNS = 3
LAB = "blab"
TRACE_TARGET_S = 2.0


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def one_lab(node_count: int) -> dict[str, float]:
    """Seconds per stage of one full lab life."""
    quiet = Console(file=io.StringIO())
    times: dict[str, float] = {}
    start = time.perf_counter()
    lab = lifecycle.build(lifecycle.LabOptions(name=LAB, node_count=node_count), quiet)
    times["build"] = time.perf_counter() - start
    try:
        with lab.ssh:
            times["bootstrap"] = timed(lambda: lifecycle.bootstrap(lab))
            times["pods"] = timed(lab.start_pods)
            start = time.perf_counter()
            outcomes, causes = lab.run_checks()
            times["checks"] = time.perf_counter() - start
            paths = picture.check_paths(lab.layout, lab.pods, outcomes, causes)
            with tempfile.TemporaryDirectory() as drawn:
                times["picture"] = timed(lambda: picture.render(
                    lab.layout, lab.pods, paths, Path(drawn) / "checks", vpc=lab.vpc_facts()))
        times["trace"] = timed(lambda: one_trace(lab))
    finally:
        times["down"] = timed(lambda: lifecycle.down(LAB))
    times["total"] = sum(times.values())
    return times


def one_trace(lab: lifecycle.LocalLab) -> None:
    """What `make trace` does after Python starts: reach the kept lab again, trace a pod's
    request to a pod on another node, draw it. Its picture is removed after."""
    tools = next(pod for pod in lab.pods if pod.role == "tools")
    far_web = next(pod for pod in lab.pods if pod.role == "web" and pod.node != tools.node)
    try:
        trace.trace(LAB, tools.name, far_web.name, None, Console(file=io.StringIO()))
    finally:
        shutil.rmtree(picture.picture_stem(LAB, "trace").parent, ignore_errors=True)


def medians(node_count: int) -> dict[str, float]:
    runs = [one_lab(node_count) for _ in range(RUNS)]
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


def main() -> None:
    console = Console(width=None if Console().is_terminal else 120)
    lifecycle.down(LAB)  # a previous interrupted run
    small, large = medians(3), medians(12)
    table = Table(title=f"Local lab, wall time in seconds (median of {RUNS} runs)",
                  title_justify="left")
    for column in ("stage", "3 nodes", "12 nodes", "12 / 3"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in small:
        table.add_row(stage, f"{small[stage]:.2f}", f"{large[stage]:.2f}",
                      f"{large[stage] / small[stage]:.2f}x")
    console.print(table)
    ratio = large["bootstrap"] / small["bootstrap"]
    verdict = "meets" if ratio <= 2.0 else "misses"
    console.print(f"bootstrap 12 nodes / 3 nodes = {ratio:.2f}x ({verdict} the 2.0x target)")
    verdict = "meets" if small["trace"] < TRACE_TARGET_S else "misses"
    console.print(f"one trace on 3 nodes: {small['trace']:.2f} s ({verdict} the "
                  f"{TRACE_TARGET_S:.0f} s target)")

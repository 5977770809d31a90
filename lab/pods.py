"""Pods on a kept lab, the kubectl way: `pods`, `run`, `exec` and `delete` of `python -m lab`.

The lab's record (lab.json) plays the API server: which pods exist and on which node. Each
node's runtime stand-in plays the kubelet: it makes and removes them (CNI ADD and DEL) and
says whether they still run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from bootstrap.errors import LabError
from bootstrap.verify.checks import PodInfo, Role, pod_hosts, seed_pods
from infra.plan import Plan
from lab import lifecycle, nodes
from lab.lifecycle import PodOnNode
from lab.pod_runtime import name_problem

RUNNING, STOPPED, GONE = "running", "stopped", "gone"


# -- pure: what to say and to record --------------------------------------------------------

def pod_state(listed: PodOnNode | None) -> str:
    """running; stopped (the node knows the pod, but its netns or workload is gone, as after
    a reboot); gone (the node's runtime has no such pod)."""
    if listed is None:
        return GONE
    return RUNNING if listed.running else STOPPED


def pod_table(pods: Sequence[PodInfo], on_nodes: Mapping[str, Mapping[str, PodOnNode]]) -> Table:
    """One row per recorded pod, as `kubectl get pods -o wide` shows them; the address and
    state are what the pod's node reports now."""
    table = Table(title="Pods", title_justify="left")
    for column in ("name", "state", "address", "node"):
        table.add_column(column, no_wrap=True)
    for pod in pods:
        listed = on_nodes.get(pod.node, {}).get(pod.name)
        state = pod_state(listed)
        colour = "green" if state == RUNNING else "red"
        table.add_row(pod.name, f"[{colour}]{state}[/]", listed.ip if listed else pod.ip,
                      pod.node)
    return table


def new_pod_problem(plan: Plan, pods: Sequence[PodInfo], name: str, node: str,
                    lab: str) -> str | None:
    """Why `run NAME --node NODE` cannot start that pod, with the fix; None if it can."""
    if name_problem(name):
        return name_problem(name)
    if node not in plan.node_names():
        return f"no node {node!r} in lab {lab}: pick one of {', '.join(plan.node_names())}"
    taken = next((pod for pod in pods if pod.name == name), None)
    if taken:
        return (f"a pod named {name} runs already on {taken.node}: pick another name, or "
                f"`python -m lab --name {lab} delete {name}` first")
    return None


def role_of(plan: Plan, name: str, node: str) -> Role:
    """A seed pod started again keeps its role; any other runs the web workload."""
    return next((seed.role for seed in seed_pods(pod_hosts(plan))
                 if (seed.name, seed.node) == (name, node)), "web")


def seeds_first(plan: Plan, pods: Sequence[PodInfo]) -> list[PodInfo]:
    """The checks take the first pod of each role on a node: the seed pods must come first."""
    seeds = {(seed.name, seed.node) for seed in seed_pods(pod_hosts(plan))}
    return sorted(pods, key=lambda pod: (pod.name, pod.node) not in seeds)


def recorded_pod(pods: Sequence[PodInfo], name: str, lab: str) -> PodInfo:
    found = next((pod for pod in pods if pod.name == name), None)
    if found is None:
        known = ", ".join(pod.name for pod in pods) or "none"
        raise LabError(f"no pod named {name!r} in lab {lab} (its pods: {known}): "
                       f"`python -m lab --name {lab} pods` lists them")
    return found


# -- the verbs ------------------------------------------------------------------------------

def show(name: str, console: Console) -> int:
    """`pods`: exit 0 only if every recorded pod runs."""
    lab = lifecycle.attach(name, console)
    with lab.ssh:
        on_nodes = lab.pods_by_node()
    console.print(pod_table(lab.pods, on_nodes))
    running = [pod_state(on_nodes[pod.node].get(pod.name)) == RUNNING for pod in lab.pods]
    return 0 if all(running) else 1


def run(name: str, pod_name: str, node: str | None, console: Console) -> int:
    """`run`: a new pod on the node (default: the first worker), recorded once it runs."""
    lab = lifecycle.attach(name, console)
    node = node or lab.plan.workers[0].name
    problem = new_pod_problem(lab.plan, lab.pods, pod_name, node, name)
    if problem:
        raise LabError(problem)
    with lab.ssh:
        pod = lab.run_pod(pod_name, node, role_of(lab.plan, pod_name, node))
    lab.pods = seeds_first(lab.plan, [*lab.pods, pod])
    lab.save()
    console.print(f"pod/{pod.name} running on {pod.node} at {pod.ip}")
    return 0


def delete(name: str, pod_name: str, console: Console) -> int:
    """`delete`: CNI DEL on the pod's node, then the record; a seed pod too, with a warning."""
    lab = lifecycle.attach(name, console)
    pod = recorded_pod(lab.pods, pod_name, name)
    with lab.ssh:
        lab.stop_pod(pod)
    lab.pods = [other for other in lab.pods if other != pod]
    lab.save()
    console.print(f"pod/{pod.name} deleted from {pod.node}")
    if any(seed.name == pod.name for seed in lifecycle.missing_seed_pods(lab.plan, lab.pods)):
        console.print(f"[yellow]warning:[/] make check needs {pod.name}: start it again with "
                      f"{lifecycle.start_pod_command(name, pod.name, pod.node)}", soft_wrap=True)
    return 0


def execute(name: str, pod_name: str, command: Sequence[str], console: Console) -> int:
    """`exec`: the command in the pod's netns on its node, attached to this terminal (a shell
    if no command); returns its exit status."""
    lab = lifecycle.attach(name, console)
    pod = recorded_pod(lab.pods, pod_name, name)
    argv = nodes.enter_argv(name, pod.node, pod.name, list(command) or ["bash"])
    with subprocess.Popen(argv) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the command too: its status tells
                continue

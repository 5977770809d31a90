"""Exercises on a kept lab: the node-level catalog (bootstrap/exercises.py) plus what only the
lab can break (its simulated VPC's route table, and pods through its runtime stand-in), and
the verbs: start one, check it, hint, solution.

The open exercise is recorded beside the kept lab (/run/k8s-cni-lab/<lab>/exercise.json), so
`make down` removes it with the lab.
"""

from __future__ import annotations

import json
import random
import shlex
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Network

from rich.console import Console
from rich.table import Table

from bootstrap import exercise_session, exercises
from bootstrap.exercise_session import show_verdict
from bootstrap.exercises import (
    Exercise,
    OpenExercise,
    Target,
    file_command,
)
from bootstrap.node_network import BOOT_COMMAND, NODE_FILES, cni_conflist
from bootstrap.verify.checks import WEB_PORT, Outcome, PodInfo
from bootstrap.verify.report import outcome_table
from infra.plan import Node, Plan
from lab import lifecycle, network, nodes
from lab.layout import Layout, lab_layout
from lab.lifecycle import LabOptions, LocalLab

CHECK_COMMAND = "make check"


# -- the lab-only catalog ---------------------------------------------------------------------

def route_command(layout: Layout, node: Node, via: Node, verb: str = "replace") -> str:
    """The VPC route table's entry for `node`'s pod CIDR (the router namespace's table)."""
    if verb == "del":
        return f"ip -n {layout.router_ns} route del {node.pod_cidr}"
    return f"ip -n {layout.router_ns} route replace {node.pod_cidr} via {via.private_ip}"


def other_node(plan: Plan, node: Node) -> Node:
    """Where a wrong route points: the next node that runs pods, else any other."""
    others = [n for n in (*plan.workers, plan.control_plane) if n.name != node.name]
    return others[0]


def unrouted_subnet(plan: Plan, node: Node) -> IPv4Network:
    """A subnet of the cluster's pod network that the plan gives to no node: the last one."""
    return list(plan.pod_network.subnets(new_prefix=node.pod_cidr.prefixlen))[-1]


def restart_pods_command(target: Target) -> str:
    """Stop and start the node's pods through the runtime stand-in: a new CNI ADD each."""
    names = " ".join(shlex.quote(pod.name) for pod in target.node_pods)
    return (f"for pod in {names}; do {lifecycle.RUNTIME} stop $pod && "
            f"{lifecycle.RUNTIME} run $pod --port {WEB_PORT} >/dev/null; done")


def mismatched_conflist(target: Target) -> str:
    conflist = cni_conflist(target.plan, target.node)
    subnet = unrouted_subnet(target.plan, target.node)
    conflist["plugins"][0].update(subnet=str(subnet), gateway=str(subnet.network_address + 1))
    return file_command(NODE_FILES.conflist, json.dumps(conflist, indent=2))


def plan_conflist(target: Target) -> str:
    conflist = json.dumps(cni_conflist(target.plan, target.node), indent=2)
    return file_command(NODE_FILES.conflist, conflist)


def _source_dest_check(layout: Layout, node: Node, enabled: bool) -> str:
    lab_node = next(n for n in layout.nodes if n.planned == node)
    return "\n".join(network.source_dest_check_commands(layout, lab_node, enabled))


def lab_exercises(layout: Layout) -> tuple[Exercise, ...]:
    """The exercises that need the lab: its VPC (no AWS API call from here) and its pods."""
    plan = layout.plan
    return (
        Exercise(
            name="far-pods-silent", difficulty="medium", where="vpc",
            symptom="pods on one node reach the internet, but no pod on another node answers "
                    "them",
            fails=("pod to pod, across nodes", "pod to pod, across nodes (back)",
                   "large answer, across nodes"),
            cause="no route: the VPC route table does not send {node}'s pod CIDR to it",
            hints=("The nodes' own rules may be fine: who carries a packet between nodes, "
                   "and how does it know where a pod address lives?",
                   f"Look at the VPC's route table: `ip -n {layout.router_ns} route` on this "
                   "machine (the AWS console's route table).",
                   "The cause: no route: the VPC route table does not send {node}'s pod CIDR "
                   "to it ({pod_cidr} has no route at all)."),
            why="The VPC delivers a packet for {pod_cidr} only where its route table says; "
                "without the route it goes to the internet gateway, which drops it. In AWS "
                "the Pulumi program creates this route.",
            inject=lambda t: route_command(layout, t.node, t.node, "del"),
            fix=lambda t: route_command(layout, t.node, t.node)),
        Exercise(
            name="lost-between-nodes", difficulty="medium", where="vpc",
            symptom="traffic to one node's pods gets lost somewhere between the nodes",
            fails=("pod to pod, across nodes", "pod to pod, across nodes (back)",
                   "large answer, across nodes"),
            cause="no route: the VPC route table does not send {node}'s pod CIDR to it",
            hints=("Each node's pods live behind that node only. Where does the VPC send "
                   "packets for them?",
                   f"On this machine: `ip -n {layout.router_ns} route`, beside each node's "
                   "private address (`make status`).",
                   "The cause: no route: the VPC route table does not send {node}'s pod CIDR "
                   "to it, but to another node."),
            why="The route for {pod_cidr} must point at {node} ({private_ip}); another node "
                "has no such pods and sends the packets back, until they expire.",
            inject=lambda t: route_command(layout, t.node, other_node(plan, t.node)),
            fix=lambda t: route_command(layout, t.node, t.node)),
        Exercise(
            name="all-looks-right", difficulty="hard", where="vpc",
            symptom="every node's own setup looks right, yet one node's pods and the pods on "
                    "other nodes never hear each other",
            fails=("pod to pod, across nodes", "pod to pod, across nodes (back)",
                   "large answer, across nodes"),
            cause="source/destination check on {node}",
            hints=("The routes and the nodes' rules may all be right. What does EC2 itself "
                   "check about each packet a node sends or receives?",
                   "Compare the pod addresses in these packets with the node's own address "
                   f"({{private_ip}}); on this machine the VPC's per-node rules are in "
                   f"`ip netns exec {layout.router_ns} ebtables -t nat -L`.",
                   "The cause: source/destination check on {node}: EC2 drops packets whose "
                   "source or destination is not the instance's own address."),
            why="A node routes its pods' packets, whose addresses are not its own: with the "
                "check on, EC2 drops them at the instance. In AWS turn it off with `aws ec2 "
                "modify-instance-attribute --instance-id <{node}'s id> "
                "--no-source-dest-check`; the Pulumi program sets source_dest_check=False "
                "from the plan, for every node.",
            inject=lambda t: _source_dest_check(layout, t.node, True),
            fix=lambda t: _source_dest_check(layout, t.node, False)),
        Exercise(
            name="one-pod-stranded", difficulty="easy", where="pod",
            symptom="one pod reaches its neighbours on the node, and nothing else",
            fails=("pod to pod, across nodes", "large answer, across nodes",
                   "pod to internet"),
            cause="{tools_pod} on {node} has no default route",
            hints=("One pod is cut off from anything outside its own subnet. How does a pod "
                   "know where to send such packets?",
                   "In each pod on {node} (`python -m lab enter {node} POD`): `ip route`.",
                   "The cause: {tools_pod} on {node} has no default route."),
            why="The CNI plugin gives each pod a default route via its gateway {gateway}; "
                "without it the pod can only reach its own subnet {pod_cidr}.",
            inject=lambda t: f"ip netns exec {t.tools_pod} ip route del default",
            fix=lambda t: f"ip netns exec {t.tools_pod} ip route add default via "
                          f"{t.node.gateway}",
            boot_restores="the pod is created again at boot and the CNI plugin gives it its "
                          "default route"),
        Exercise(
            name="new-pods-unreachable", difficulty="hard", where="pod",
            symptom="new pods on one node start fine but only their neighbours answer them",
            fails=("pod to pod, across nodes", "pod to pod, across nodes (back)",
                   "large answer, across nodes", "pod to internet"),
            cause="pod CIDR mismatch on {node}",
            hints=("Compare the addresses the node's pods have with the addresses the VPC "
                   "sends to that node.",
                   "On {node}: the subnet in {conflist} against the node's pod CIDR "
                   "(`make status`).",
                   "The cause: pod CIDR mismatch on {node}: its CNI config gives pods another "
                   "subnet than {pod_cidr}, the one the VPC routes to it."),
            why="The CNI config decides pods' addresses; the VPC routes only {pod_cidr} to "
                "{node}, and its NAT rule matches only that subnet. Put the plan's subnet back "
                "in the config, apply the node network (it removes the stray gateway address "
                "from the bridge), and restart the node's pods so they get new addresses.",
            inject=lambda t: f"{mismatched_conflist(t)}\n{restart_pods_command(t)}",
            fix=lambda t: f"{plan_conflist(t)}\n{BOOT_COMMAND}\n{restart_pods_command(t)}"),
    )


def catalog(layout: Layout) -> tuple[Exercise, ...]:
    return (*exercises.NODE_EXERCISES, *lab_exercises(layout))


# -- the verbs --------------------------------------------------------------------------------

def open_exercise(lab: str) -> OpenExercise | None:
    return exercise_session.load_record(nodes.lab_dir(lab))


def target_for(lab: LocalLab, node: str) -> Target:
    return Target(lab.plan, lab.plan.node(node), tuple(lab.pods))


LEFT_OUT_ON_STACKS = {
    "vpc": "VPC level: on AWS they would take API calls that Pulumi would fight",
    "pod": "pod level: they reach pods through the lab's runtime stand-in, which a cluster "
           "has not",
}


def listing(name: str, console: Console, *, on_stack: bool = False) -> int:
    """The catalog: name, difficulty, symptom (never the cause). On a stack, only the
    node-level ones, and which are left out and why."""
    everything = catalog(lab_layout(name))
    shown = [e for e in everything if e.where == "node"] if on_stack else everything
    table = Table(title="Exercises (make exercise EXERCISE=<name>)", title_justify="left")
    for column in ("name", "difficulty", "symptom"):
        table.add_column(column)
    for exercise in shown:
        table.add_row(*exercises.listing_line(exercise))
    console.print(table)
    prefix = "Left out on a stack" if on_stack else "On the local lab only, not on a stack"
    for where, why in LEFT_OUT_ON_STACKS.items():
        names = ", ".join(e.name for e in everything if e.where == where)
        console.print(f"{prefix}: {names} ({why}).", soft_wrap=True, highlight=False)
    return 0


def start(name: str, wanted: str | None, node_name: str | None, console: Console) -> int:
    """Build the lab (kept) or reuse a kept one, inject one fault, print the failing table."""
    layout = lifecycle.kept_layout(name) or lab_layout(name)  # all checked before any build
    choices = catalog(layout)
    exercise = exercises.find(choices, wanted) if wanted else random.choice(choices)
    exercises.refuse_if_open(open_exercise(name), CHECK_COMMAND)
    node = exercises.chosen_node(layout.plan, exercise, node_name)
    lab = _kept_lab(name, console)
    with lab.ssh:
        outcomes, _ = lab.run_checks()
        exercises.refuse_unless_passing("lab", outcomes,
                                        "fix it or start again after `make down`")
        inject(lab, exercise, target_for(lab, node))
        exercise_session.save_record(nodes.lab_dir(name), OpenExercise(exercise.name, node))
        outcomes, _ = lab.run_checks()
    console.print(outcome_table(outcomes, {}, title=f"Exercise {exercise.name} "
                                                   f"({exercise.difficulty})"))
    console.print(f"[bold]Symptom:[/] {exercise.symptom}.\n"
                  f"{sum(not o.passed for o in outcomes)} check(s) fail. Find out why and fix "
                  "it by hand, so that it would also hold after a reboot.", soft_wrap=True)
    _print_how_to_enter(lab, console)
    return 0


def _kept_lab(name: str, console: Console) -> LocalLab:
    if (nodes.lab_dir(name) / lifecycle.STATE_FILE).exists():
        return lifecycle.attach(name, console)
    lab = lifecycle.build(LabOptions(name=name), console)
    try:
        with lab.ssh:
            lifecycle.bootstrap(lab)
            lab.start_pods()
    except BaseException:
        lifecycle.down(name)
        raise
    return lab


def inject(lab: LocalLab, exercise: Exercise, target: Target) -> None:
    run_shell(lab, exercise, target, exercise.inject(target))


def run_shell(lab: LocalLab, exercise: Exercise, target: Target, command: str) -> None:
    """An exercise's commands where they belong: on the node, or here for the VPC."""
    if exercise.where == "vpc":
        network.run(["bash", "-c", command])
    else:
        lab.ssh.node(target.node.name).run(command, timeout=120, quiet=True)
    if exercise.where == "pod":
        refresh_pods(lab)


def refresh_pods(lab: LocalLab) -> None:
    """Read each pod's address again (a pod restarted by hand may have a new one)."""
    on_nodes = lab.pods_by_node()
    lab.pods = [replace(pod, ip=on_nodes[pod.node][pod.name].ip)
                if pod.name in on_nodes[pod.node] else pod for pod in lab.pods]
    lab.save()


def _print_how_to_enter(lab: LocalLab, console: Console) -> None:
    name = lab.layout.lab
    node = lab.plan.workers[0].name
    pod = next((p.name for p in lab.pods if p.node == node), "POD")
    console.print(
        f"Enter a node: [bold]python -m lab --name {name} enter {node}[/] (or any node)\n"
        f"Enter a pod:  [bold]python -m lab --name {name} enter {node} {pod}[/]\n"
        "Then: [bold]make check[/] (solved?), [bold]make hint[/] (up to three), "
        "[bold]make solution[/] (give up), [bold]make down[/] (remove it all)", soft_wrap=True)


def verdict(lab: LocalLab, record: OpenExercise, outcomes: Sequence[Outcome],
            console: Console) -> bool:
    """Print whether the open exercise is solved; close it when it is."""
    exercise = exercises.find(catalog(lab.layout), record.name)
    return show_verdict(exercise, lab.plan, lab.ssh.node(record.node), outcomes,
                        nodes.lab_dir(lab.layout.lab), console)


def hint(name: str, console: Console) -> int:
    record = exercises.require_open(open_exercise(name), "give a hint for")
    exercise, target = _saved(name, record)
    exercise_session.show_hint(exercise, target, record, nodes.lab_dir(name), console)
    return 0


def solution(name: str, console: Console) -> int:
    record = exercises.require_open(open_exercise(name), "solve")
    exercise, target = _saved(name, record)
    exercise_session.show_solution(exercise, target, console,
                                   f"python -m lab --name {name} enter {record.node}")
    return 0


def _saved(name: str, record: OpenExercise) -> tuple[Exercise, Target]:
    """The open exercise and its target, from what the kept lab saved (no SSH needed)."""
    state = json.loads((nodes.lab_dir(name) / lifecycle.STATE_FILE).read_text())
    layout = lab_layout(name, state["nodeCount"])
    pods = tuple(PodInfo(**pod) for pod in state["pods"])
    return (exercises.find(catalog(layout), record.name),
            Target(layout.plan, layout.plan.node(record.node), pods))

"""The command line's verbs on a Pulumi stack: check, status, run, ssh, trace and the
node-level exercises, over SSH to the stack's nodes with its pinned host keys (the lab's own
verbs are in lab/cli.py)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from bootstrap import exercise_session, exercises
from bootstrap.cni.install import plugin_files
from bootstrap.exercises import Exercise, OpenExercise, Target
from bootstrap.inventory import Inventory
from bootstrap.kubeadm import KUBECTL, KUBECTL_TIMEOUT
from bootstrap.phases.cloud import run_cloud_workflow
from bootstrap.phases.context import CloudContext
from bootstrap.phases.verify import check_cluster, cloud_table, deploy_test_pods
from bootstrap.remote import NodeCluster
from bootstrap.ssh import ClusterSSH
from bootstrap.stack import Stack, StackError, by_hand_kubeconfig
from bootstrap.verify import cloud_trace
from bootstrap.verify.checks import ECHO_SERVER, probe
from bootstrap.verify.cloud import KubectlProber, cloud_checks
from bootstrap.verify.facts import read_node_facts
from bootstrap.verify.report import failure_lines, show_status
from bootstrap.verify.status import read_status
from bootstrap.verify.trace import assemble, parse_monitor
from bootstrap.verify.trace_remote import traced_on_nodes
from bootstrap.verify.trace_report import print_trace

# Opens the stack's SSH connections; the tests pass one that returns fake nodes.
Connect = Callable[[Inventory], NodeCluster]


def open_ssh(inventory: Inventory) -> NodeCluster:
    return ClusterSSH(inventory, on_line=None)  # output may hold tokens: never streamed


def check(stack: Stack, console: Console, connect: Connect = open_ssh) -> int:
    """The connectivity checks from the test pods: exit 0 only if all are as expected. With
    an exercise open, the causes stay hidden and the verdict says if it is solved."""
    _require_cluster(stack)
    if len(stack.plan.workers) < 2:
        raise StackError(f"stack {stack.name!r} has one worker: the checks need two "
                         "(pulumi config set nodeCount 3, then pulumi up)")
    directory = exercise_session.stack_state_dir(stack.name)
    record = exercise_session.load_record(directory)
    ssh = connect(stack.inventory)
    try:
        outcomes, causes = check_cluster(_context(stack, ssh, Path("unused")))
        if record:
            console.print(cloud_table(outcomes, {}))
            exercise = exercises.find(exercises.NODE_EXERCISES, record.name)
            return 0 if exercise_session.show_verdict(exercise, stack.plan,
                                                      ssh.node(record.node), outcomes,
                                                      directory, console) else 1
    finally:
        ssh.close()
    console.print(cloud_table(outcomes, causes))
    for line in failure_lines(outcomes, causes):
        console.print(f"[red]x[/] {line}", soft_wrap=True)
    return 0 if all(outcome.passed for outcome in outcomes) else 1


def trace(stack: Stack, source: str, target: str, port: int | None, console: Console,
          connect: Connect = open_ssh) -> int:
    """One probe between two test pods, traced by the kernel on both pods' nodes over SSH,
    the VPC between them inferred; 0 when it arrived, 1 when it stopped."""
    _require_cluster(stack)
    ssh = connect(stack.inventory)
    try:
        control_plane = ssh.node(stack.plan.control_plane.name)
        echo_source = ECHO_SERVER.read_bytes()
        pods = deploy_test_pods(control_plane, stack.plan, echo_source)
        check = cloud_trace.pod_check(cloud_checks(stack.plan, stack.inventory, pods),
                                      cloud_trace.pod_endpoint(pods, source),
                                      cloud_trace.pod_endpoint(pods, target), port)
        flow = cloud_trace.pod_flow(stack.plan, check)
        prober = KubectlProber(ssh, control_plane.name, echo_source)
        nodes = list(dict.fromkeys(end.node or "" for end in (check.source, check.target)))
        result, outputs = traced_on_nodes(ssh, nodes, flow, lambda: probe(prober, check))
        hops = assemble({node: parse_monitor(text) for node, text in outputs.items()}, flow)
        routes = stack.pod_routes or cloud_trace.planned_routes(stack.plan)
        note = cloud_trace.VPC_NOTE if stack.pod_routes else cloud_trace.PLANNED_NOTE
        traced = cloud_trace.explain(stack.plan, check, result,
                                     cloud_trace.with_vpc_hops(hops, routes),
                                     lambda: read_node_facts(ssh, stack.plan), note)
    finally:
        ssh.close()
    print_trace(console, check, traced)
    return 0 if traced.arrived else 1


def start_exercise(stack: Stack, wanted: str | None, node_name: str | None, console: Console,
                   connect: Connect = open_ssh) -> int:
    """A node-level fault injected over SSH on a healthy stack; the failing table."""
    _require_cluster(stack)
    exercise = exercises.find(exercises.NODE_EXERCISES, wanted) if wanted \
        else random.choice(exercises.NODE_EXERCISES)
    directory = exercise_session.stack_state_dir(stack.name)
    exercises.refuse_if_open(exercise_session.load_record(directory),
                             f"make check STACK={stack.name}")
    node = exercises.chosen_node(stack.plan, exercise, node_name)
    ssh = connect(stack.inventory)
    try:
        context = _context(stack, ssh, Path("unused"))
        exercises.refuse_unless_passing("stack", check_cluster(context)[0],
                                        f"fix it first (make check STACK={stack.name})")
        target = Target(stack.plan, stack.plan.node(node))
        ssh.node(node).run(exercise.inject(target), timeout=120, quiet=True)
        exercise_session.save_record(directory, OpenExercise(exercise.name, node))
        outcomes, _ = check_cluster(context)
    finally:
        ssh.close()
    console.print(cloud_table(outcomes, {}))
    console.print(f"Exercise {exercise.name} ({exercise.difficulty}) on {node}. Symptom: "
                  f"{exercise.symptom}.\nFix it by hand, so that it would also hold after a "
                  f"reboot: make ssh NODE={node} STACK={stack.name}; then make check, make hint "
                  f"or make solution, each with STACK={stack.name}.", soft_wrap=True)
    return 0


def hint(stack: Stack, console: Console) -> int:
    record, exercise, target, directory = _open_exercise(stack, "give a hint for")
    exercise_session.show_hint(exercise, target, record, directory, console)
    return 0


def solution(stack: Stack, console: Console) -> int:
    record, exercise, target, _ = _open_exercise(stack, "solve")
    exercise_session.show_solution(exercise, target, console,
                                   f"make ssh NODE={record.node} STACK={stack.name}")
    return 0


def _open_exercise(stack: Stack, verb: str) -> tuple[OpenExercise, Exercise, Target, Path]:
    directory = exercise_session.stack_state_dir(stack.name)
    record = exercises.require_open(exercise_session.load_record(directory), verb)
    exercise = exercises.find(exercises.NODE_EXERCISES, record.name)
    return record, exercise, Target(stack.plan, stack.plan.node(record.node)), directory


def status(stack: Stack, console: Console, connect: Connect = open_ssh) -> int:
    """One row per node, with Kubernetes' podCIDR and Ready condition: exit 0 only if every
    node holds what the plan says."""
    wanted = {file.node_path: hashlib.sha256(file.data).hexdigest() for file in plugin_files()}
    ssh = connect(stack.inventory)
    try:
        statuses = read_status(ssh, stack.plan, wanted)
        kubernetes = read_kubernetes_nodes(ssh, stack) if stack.has_cluster else {}
    finally:
        ssh.close()
    return show_status(console, stack.plan, statuses, kubernetes or None)


def read_kubernetes_nodes(ssh: NodeCluster, stack: Stack) -> dict[str, tuple[str, str]]:
    """Node name -> (spec.podCIDR, Ready status), from the API server."""
    control_plane = ssh.node(stack.plan.control_plane.name)
    listing = control_plane.run(f"{KUBECTL} get nodes -o json", timeout=KUBECTL_TIMEOUT,
                                check=False, quiet=True)
    return parse_kubernetes_nodes(listing.output) if listing.ok else {}


def parse_kubernetes_nodes(output: str) -> dict[str, tuple[str, str]]:
    nodes: dict[str, tuple[str, str]] = {}
    for item in json.loads(output).get("items", []):
        ready = next((c.get("status", "Unknown") for c in item["status"].get("conditions", [])
                      if c.get("type") == "Ready"), "Unknown")
        nodes[item["metadata"]["name"]] = (item["spec"].get("podCIDR", ""), ready)
    return nodes


def run(stack: Stack, phases: Sequence[str], connect: Connect = open_ssh) -> int:
    """The named phases of the cloud workflow (all of them when `phases` is empty). A stack
    bootstrapped by `pulumi up` keeps its kubeconfig as an output, so the kubeconfig phase
    writes into a temporary directory that is removed; a stack built with bootstrap=false,
    bootstrapped by hand, gets it in the current directory (`by_hand_kubeconfig`)."""
    ssh = connect(stack.inventory)
    try:
        with tempfile.TemporaryDirectory(prefix="k8s-cni-lab-") as scratch:
            kubeconfig = Path(scratch) / "kubeconfig"
            if not stack.bootstrapped_by_pulumi:
                kubeconfig = by_hand_kubeconfig(stack.name)
            run_cloud_workflow(_context(stack, ssh, kubeconfig), only=phases)
    finally:
        ssh.close()
    return 0


def ssh_command(stack: Stack, node: str, directory: Path) -> list[str]:
    """OpenSSH's command line for an interactive shell on `node`: the stack's key and its
    pinned host key, in files under `directory` (removed by the caller)."""
    access = stack.inventory.node(node)
    key, known_hosts = directory / "key", directory / "known_hosts"
    key.touch(mode=0o600)
    key.write_text(stack.inventory.private_key)
    known_hosts.write_text(f"{access.host} {access.host_key}\n")
    return ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
            "-p", str(access.port), f"{access.user}@{access.host}"]


def ssh(stack: Stack, node: str) -> int:
    stack.inventory.node(node)  # an unknown node fails here, naming the known ones
    with tempfile.TemporaryDirectory(prefix="k8s-cni-lab-ssh-") as directory:
        argv = ssh_command(stack, node, Path(directory))
        return subprocess.run(argv, check=False).returncode


def _context(stack: Stack, ssh: NodeCluster, kubeconfig: Path) -> CloudContext:
    return CloudContext(plan=stack.plan, inventory=stack.inventory, ssh=ssh,
                        kubeconfig_path=kubeconfig)


def _require_cluster(stack: Stack) -> None:
    if not stack.has_cluster:
        raise StackError(f"stack {stack.name!r} was built with bootstrap=false and has no "
                         f"cluster yet: bootstrap it by hand with `make run STACK={stack.name} "
                         "PHASES=all`, or `pulumi config set bootstrap true` and `pulumi up`")


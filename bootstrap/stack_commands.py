"""The command line's verbs on a Pulumi stack: check, status, run and ssh, over SSH to the
stack's nodes with its pinned host keys (the lab's own verbs are in lab/cli.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from bootstrap.cni.install import plugin_files
from bootstrap.inventory import Inventory
from bootstrap.kubeadm import KUBECTL, KUBECTL_TIMEOUT
from bootstrap.phases.cloud import run_cloud_workflow
from bootstrap.phases.context import CloudContext
from bootstrap.phases.verify import check_cluster, cloud_table
from bootstrap.remote import NodeCluster
from bootstrap.ssh import ClusterSSH
from bootstrap.stack import Stack, StackError, by_hand_kubeconfig
from bootstrap.verify.report import failure_lines, show_status
from bootstrap.verify.status import read_status

# Opens the stack's SSH connections; the tests pass one that returns fake nodes.
Connect = Callable[[Inventory], NodeCluster]


def open_ssh(inventory: Inventory) -> NodeCluster:
    return ClusterSSH(inventory, on_line=None)  # output may hold tokens: never streamed


def check(stack: Stack, console: Console, connect: Connect = open_ssh) -> int:
    """The connectivity checks from the test pods: exit 0 only if all are as expected."""
    _require_cluster(stack)
    if len(stack.plan.workers) < 2:
        raise StackError(f"stack {stack.name!r} has one worker: the checks need two "
                         "(pulumi config set nodeCount 3, then pulumi up)")
    ssh = connect(stack.inventory)
    try:
        outcomes, causes = check_cluster(_context(stack, ssh, Path("unused")))
    finally:
        ssh.close()
    console.print(cloud_table(outcomes, causes))
    for line in failure_lines(outcomes, causes):
        console.print(f"[red]x[/] {line}", soft_wrap=True)
    return 0 if all(outcome.passed for outcome in outcomes) else 1


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


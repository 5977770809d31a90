"""The local lab's lifecycle: build the simulated VPC and nodes, bootstrap them over SSH,
start pods, run the connectivity checks, and tear everything down.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import paramiko
from rich.console import Console

from bootstrap.errors import LabError
from bootstrap.inventory import Inventory, inventory_for_plan
from bootstrap.phases.context import LocalContext
from bootstrap.phases.local import run_local_workflow
from bootstrap.ssh import ClusterSSH, ConnectPolicy
from bootstrap.verify.checks import (
    ECHO_SERVER,
    IMAGE_DIR,
    WEB_PORT,
    Check,
    Endpoint,
    Outcome,
    PodInfo,
    Role,
    SeedPod,
    lab_checks,
    pod_hosts,
    run_checks,
    seed_pods,
    with_client,
)
from bootstrap.verify.diagnose import VpcFacts, failure_causes
from bootstrap.verify.facts import read_node_facts
from infra.plan import NODE_LOGIN, Plan
from lab import network, nodes
from lab.layout import INTERNET_ECHO_PORT, INTERNET_HOST, Layout, lab_layout
from lab.netns_socket import connect_in_namespace

RUNTIME = f"/usr/bin/python3 -IS {IMAGE_DIR}/pod_runtime.py"
PROBE_TIMEOUT = 15
# In the lab's directory: how to reach a lab kept up (`make lab KEEP=1`) from another command.
STATE_FILE = "lab.json"
CLIENT_KEY_FILE = "login_key"


class LabExists(LabError):
    """A lab of that name is up already: two labs must not share namespace names."""


@dataclass(frozen=True)
class PodOnNode:
    """A pod as its node's runtime reports it."""

    ip: str
    running: bool  # its netns exists and its workload process lives in it


@dataclass(frozen=True)
class LabOptions:
    name: str = "k8slab"
    node_count: int = 3
    connect_deadline: float = 30.0
    # The bootstrap's login: Ubuntu's, with sudo, as on EC2, or "root".
    user: str = NODE_LOGIN


@dataclass
class LocalLab:
    """A running lab; `down(name)` removes one even when this object is long gone, and
    `attach(name)` finds a kept one again from what `save` wrote."""

    layout: Layout
    inventory: Inventory
    ssh: ClusterSSH
    console: Console
    pods: list[PodInfo] = field(default_factory=list)

    @property
    def plan(self) -> Plan:
        return self.layout.plan

    def save(self) -> None:
        """What another process needs to reach this lab: node count, login, pinned host
        keys and pods; the login key beside it, readable by root only."""
        directory = nodes.lab_dir(self.layout.lab)
        key_file = directory / CLIENT_KEY_FILE
        key_file.touch(mode=0o600)
        key_file.write_text(self.inventory.private_key)
        state = {"nodeCount": len(self.plan.nodes), "user": self.inventory.nodes[0].user,
                 "hostKeys": {node.name: node.host_key for node in self.inventory.nodes},
                 "pods": [asdict(pod) for pod in self.pods]}
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    # -- pods -------------------------------------------------------------------------------

    def start_pods(self) -> list[PodInfo]:
        """The seed lab's pods (deploy.yaml), through the runtime stand-in on their nodes.
        With one worker the control plane runs pods too: lab nodes have no taint."""
        def start(name: str) -> list[PodInfo]:
            return [self.run_pod(pod.name, name, pod.role)
                    for pod in seed_pods(hosts) if pod.node == name]

        hosts = pod_hosts(self.plan)
        by_node = self.ssh.on_all(lambda node: start(node.name), hosts)
        self.pods = [pod for name in hosts for pod in by_node[name]]
        self.save()
        self.console.log("pods: " + ", ".join(f"{pod.name} {pod.ip}" for pod in self.pods))
        return self.pods

    def run_pod(self, name: str, node: str, role: Role) -> PodInfo:
        """A pod sandbox, CNI ADD and its echo server, as a kubelet has containerd make them;
        if any step fails, the runtime undoes the others."""
        output = self._runtime(node, f"run {shlex.quote(name)} --port {WEB_PORT}")
        return PodInfo(name, node, json.loads(output.splitlines()[-1])["ip"], role)

    def stop_pod(self, pod: PodInfo) -> None:
        """The workload stopped, CNI DEL, the netns removed; a pod already gone is fine."""
        self._runtime(pod.node, f"stop {shlex.quote(pod.name)}")

    def pods_on_node(self, node: str) -> dict[str, PodOnNode]:
        """What the node's runtime knows of its pods, by name: address and running."""
        listed = json.loads(self._runtime(node, "list").splitlines()[-1])
        return {pod["name"]: PodOnNode(pod["ip"], pod["running"]) for pod in listed}

    def pods_by_node(self) -> dict[str, dict[str, PodOnNode]]:
        """`pods_on_node` on every node that runs a recorded pod, at once."""
        hosts = list(dict.fromkeys(pod.node for pod in self.pods))
        return self.ssh.on_all(lambda node: self.pods_on_node(node.name), hosts)

    def _runtime(self, node: str, arguments: str) -> str:
        result = self.ssh.node(node).run(f"{RUNTIME} {arguments}", timeout=60, check=False,
                                         quiet=True)
        if not result.ok:  # the runtime's own one-line error is the last line
            lines = result.output.strip().splitlines() or [f"exit status {result.exit_code}"]
            raise LabError(f"{node}: {lines[-1]}")
        return result.output

    # -- checks -----------------------------------------------------------------------------

    def run_checks(self) -> tuple[list[Outcome], dict[str, str]]:
        """The checks, and for each failure its likely cause. They probe the seed pods:
        LabError, naming the command that starts each again, if one was deleted."""
        missing = missing_seed_pods(self.plan, self.pods)
        if missing:
            starts = "; ".join(start_pod_command(self.layout.lab, pod.name, pod.node)
                               for pod in missing)
            raise LabError(f"the checks need the seed lab's pod(s) "
                           f"{', '.join(pod.name for pod in missing)}: start them with {starts}")
        outcomes = run_checks(LabProber(self), seed_checks(self.layout, self.pods))
        return outcomes, failure_causes(outcomes, lambda: read_node_facts(self.ssh, self.plan),
                                        self.vpc_facts())

    def vpc_facts(self) -> VpcFacts:
        """What the simulated VPC does, read from its router: does the route table send each
        node's pod CIDR to that node, and is its source/destination check on?"""
        table = network.run(["ip", "-n", self.layout.router_ns, "route", "show"])
        next_hops = {words[0]: words[words.index("via") + 1]
                     for words in map(str.split, table.splitlines()) if "via" in words}
        routed = {node.name: next_hops.get(str(node.pod_cidr)) == str(node.private_ip)
                  for node in self.plan.nodes}
        return VpcFacts(routed, network.source_dest_checked(self.layout), next_hops)


# The simulated internet's host, as the checks (and a trace) name it.
INTERNET = Endpoint("internet", "internet", str(INTERNET_HOST.ip))


def seed_checks(layout: Layout, pods: Sequence[PodInfo]) -> list[Check]:
    """The seed lab's checks on this lab: what `make lab` and `make check` run."""
    public_ips = {node.name: str(node.public_ip) for node in layout.nodes}
    return lab_checks(layout.plan, public_ips, pods, INTERNET, INTERNET_ECHO_PORT)


def missing_seed_pods(plan: Plan, pods: Sequence[PodInfo]) -> list[SeedPod]:
    present = {(pod.name, pod.node) for pod in pods}
    return [pod for pod in seed_pods(pod_hosts(plan)) if (pod.name, pod.node) not in present]


def start_pod_command(lab: str, pod: str, node: str) -> str:
    return f"`python -m lab --name {lab} run {pod} --node {node}`"


class LabProber:
    """Runs probes the way an operator would: `ip netns exec <pod>` on the pod's node over
    SSH, directly on a node, or in the internet host's namespace."""

    def __init__(self, lab: LocalLab) -> None:
        self.lab = lab

    def run(self, source: Endpoint, argv: Sequence[str]) -> tuple[int, str]:
        if source.kind == "internet":
            # The internet host has no lab image: it runs the client from this checkout.
            local = with_client(argv, ["/usr/bin/python3", "-IS", str(ECHO_SERVER)])
            done = subprocess.run(["ip", "netns", "exec", self.lab.layout.internet_ns, *local],
                                  capture_output=True, text=True, check=False,
                                  timeout=PROBE_TIMEOUT)
            return done.returncode, done.stdout + done.stderr
        command = shlex.join(argv)
        if source.kind == "pod":
            command = f"ip netns exec {shlex.quote(source.name)} {command}"
        assert source.node is not None
        result = self.lab.ssh.node(source.node).run(command, timeout=PROBE_TIMEOUT, check=False,
                                                    quiet=True)
        return result.exit_code, result.output


def bootstrap(lab: LocalLab, *, only: Sequence[str] = (),
              skip: Sequence[str] = ()) -> list[str]:
    """The same bootstrap that configures EC2 instances, over the lab's SSH connections;
    returns the phases that ran."""
    started = time.monotonic()
    context = LocalContext(plan=lab.plan, inventory=lab.inventory, ssh=lab.ssh)
    ran = run_local_workflow(context, only=only, skip=skip)
    lab.console.log(f"bootstrap: {', '.join(ran)} in {time.monotonic() - started:.1f} s")
    return ran


# -- building and removing ------------------------------------------------------------------

def internet_client_factory(layout: Layout) -> Callable[[], paramiko.SSHClient]:
    """SSH clients whose TCP connections start on the simulated internet, like an operator's
    on AWS: through the gateway to the nodes' public addresses."""
    class FromTheInternet(paramiko.SSHClient):
        def connect(self, hostname: str, port: int = 22, **kwargs) -> None:  # type: ignore[override]
            kwargs["sock"] = connect_in_namespace(layout.internet_ns, hostname, port,
                                                  kwargs.get("timeout"))
            super().connect(hostname, port, **kwargs)

    return FromTheInternet


def build(options: LabOptions, console: Console, *, vpc_configured: bool = True) -> LocalLab:
    """Create the network and boot the nodes; on any failure, remove what was made. Without
    `vpc_configured`, the VPC is as EC2 starts it: no pod routes, every node's
    source/destination check on."""
    layout = lab_layout(options.name, options.node_count)
    if network.existing_namespaces(layout.lab) or nodes.lab_dir(layout.lab).exists():
        raise LabExists(f"a lab named {layout.lab} is already up: run `make down` (or "
                        f"`python -m lab down --name {layout.lab}`) first")
    try:
        return _build(layout, options, console, vpc_configured)
    except BaseException:
        down(layout.lab)
        raise


def _build(layout: Layout, options: LabOptions, console: Console,
           vpc_configured: bool) -> LocalLab:
    started = time.monotonic()
    nodes.lab_dir(layout.lab).mkdir(parents=True)
    planned_checks = [node for node in layout.nodes if node.planned.source_dest_check]
    network.build(layout, checked=planned_checks if vpc_configured else layout.nodes)
    if vpc_configured:
        network.add_pod_routes(layout)
    client_key = nodes.new_ed25519()
    host_keys = {node.name: nodes.prepare_disk(layout, node, client_key.public_line)
                 for node in layout.nodes}
    booting = {node.name: nodes.start_sshd(layout, node, options.user)
               for node in layout.nodes}
    _start_internet_host(layout)
    nodes.wait_booted(layout, booting)
    lab = _connect(layout, host_keys, client_key.private_openssh, options.user, console,
                   options.connect_deadline)
    lab.save()
    console.log(f"lab {layout.lab}: {len(layout.nodes)} nodes, router, gateway and internet "
                f"host up in {time.monotonic() - started:.1f} s")
    return lab


def _connect(layout: Layout, host_keys: dict[str, str], private_key: str, user: str,
             console: Console, deadline: float) -> LocalLab:
    inventory = inventory_for_plan(
        layout.plan, hosts={node.name: str(node.public_ip) for node in layout.nodes},
        host_keys=host_keys, private_key=private_key, user=user)
    # The nodes have booted: a connection that fails now is worth retrying soon.
    policy = ConnectPolicy(deadline=deadline, first_delay=0.05, max_delay=1.0)
    ssh = ClusterSSH(inventory, policy=policy, client_factory=internet_client_factory(layout),
                     on_line=None)
    return LocalLab(layout, inventory, ssh, console)


def kept_layout(name: str) -> Layout | None:
    """The layout of a lab kept up under this name, or None when there is none."""
    try:
        state = json.loads((nodes.lab_dir(name) / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return lab_layout(name, state["nodeCount"])


def attach(name: str, console: Console, *, deadline: float = 10.0) -> LocalLab:
    """A lab kept up by an earlier command, reached again with its pinned keys."""
    directory = nodes.lab_dir(name)
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        private_key = (directory / CLIENT_KEY_FILE).read_text()
    except FileNotFoundError:
        raise nodes.lab_not_up(name) from None
    layout = lab_layout(name, state["nodeCount"])
    lab = _connect(layout, state["hostKeys"], private_key, state["user"], console, deadline)
    lab.pods = [PodInfo(**pod) for pod in state["pods"]]
    return lab


def _start_internet_host(layout: Layout) -> None:
    with (nodes.lab_dir(layout.lab) / "internet.log").open("ab") as log:
        subprocess.Popen(["ip", "netns", "exec", layout.internet_ns, "/usr/bin/python3", "-IS",
                          str(ECHO_SERVER), "serve", "--port", str(INTERNET_ECHO_PORT),
                          "--name", "internet"],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    deadline = time.monotonic() + 10
    while True:  # the checks need it answering
        try:
            connect_in_namespace(layout.internet_ns, str(INTERNET_HOST.ip), INTERNET_ECHO_PORT,
                                 timeout=1).close()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                raise LabError(f"the internet host's echo server did not start: {error}; "
                               f"see {nodes.lab_dir(layout.lab) / 'internet.log'}") from None
            time.sleep(0.02)


def down(name: str) -> list[str]:
    """Remove every process, namespace, mount and file of the lab; safe to repeat."""
    removed = network.destroy(name)
    shutil.rmtree(nodes.lab_dir(name), ignore_errors=True)
    return removed

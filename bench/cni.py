"""Benchmark: lab-cni against Debian's reference bridge + host-local, side by side in one run.

Each plugin gets its own fresh "node" network namespace and is spawned the way a runtime spawns
it: a process started from inside the node namespace (this process enters it with setns, so the
timing is the plugin process alone, without an `ip netns exec` wrapper), CNI_* in the environment
and the config on stdin. Calls are interleaved across plugins, round by round, so that drift in
machine load hits every plugin alike. Needs root.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bootstrap.cni.install import LAUNCHER, install
from lab.netns_socket import enter_network_namespace

REFERENCE_DIR = Path("/usr/lib/cni")
SUBNET, GATEWAY, CLUSTER_CIDR = "10.244.1.0/24", "10.244.1.1", "10.244.0.0/16"
SEQUENTIAL_CALLS = 50
CONCURRENT_ADDS = 64


@dataclass
class Contender:
    """One plugin configuration under test, with its own node namespace and state directory."""

    label: str
    argv: list[str]
    cni_path: str
    config: dict
    node: str = ""
    add_ms: list[float] = field(default_factory=list)
    del_ms: list[float] = field(default_factory=list)
    concurrent_add_ms: float = 0.0
    failures: list[str] = field(default_factory=list)


def make_contenders(state_dir: Path) -> list[Contender]:
    def reference(ip_masq: bool) -> Contender:
        name = f"ref-masq-{str(ip_masq).lower()}"
        ipam = {
            "type": "host-local",
            "subnet": SUBNET,
            "gateway": GATEWAY,
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(state_dir / name),
        }
        config: dict[str, object] = {"cniVersion": "1.0.0", "name": name, "type": "bridge"}
        config["bridge"] = "cni0"
        config |= {"isGateway": True, "ipMasq": ip_masq, "hairpinMode": True, "ipam": ipam}
        label = f"reference bridge+host-local, ipMasq {str(ip_masq).lower()}"
        return Contender(label, [str(REFERENCE_DIR / "bridge")], str(REFERENCE_DIR), config)

    ours: dict[str, object] = {
        "cniVersion": "1.0.0",
        "name": "lab",
        "type": "lab-cni",
        "subnet": SUBNET,
    }
    ours |= {"clusterCidr": CLUSTER_CIDR, "dataDir": str(state_dir / "lab")}
    ours["logFile"] = str(state_dir / "lab-cni.log")
    installed = Contender("lab-cni", [str(install_lab_cni(state_dir))], "/opt/cni/bin", ours)
    return [installed, reference(True), reference(False)]


def install_lab_cni(state_dir: Path) -> Path:
    """The plugin laid out under a root as the bootstrap installs it on nodes; returns its
    launcher. Python caches the package's bytecode at the first call; the warm-up call below
    makes it, as the first pod on a node does."""
    root = state_dir / "root"
    install(root)
    launcher = root / LAUNCHER
    subprocess.run([launcher], input=b"{}", env={"CNI_COMMAND": "VERSION"}, check=True,
                   capture_output=True)
    return launcher


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def namespaces() -> Iterator[list[str]]:
    """Named network namespaces, always deleted, even when the benchmark fails."""
    created: list[str] = []
    try:
        yield created
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def add_namespace(created: list[str], name: str) -> str:
    sh("ip", "netns", "add", name)
    created.append(name)
    return name


@contextmanager
def inside_netns(name: str) -> Iterator[None]:
    """Enter a namespace in this thread, so children start there; always come back."""
    home = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
    home_fd = os.open(home, os.O_RDONLY)  # held open: the namespace to return to
    try:
        enter_network_namespace(f"/run/netns/{name}")
        yield
    finally:
        enter_network_namespace(f"/proc/self/fd/{home_fd}")
        os.close(home_fd)


def plugin_env(contender: Contender, command: str, pod: str) -> dict[str, str]:
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"bench-{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": f"/run/netns/{pod}",
        "CNI_PATH": contender.cni_path,
    }


def spawn(contender: Contender, command: str, pod: str) -> subprocess.Popen:
    process = subprocess.Popen(
        contender.argv,
        env=plugin_env(contender, command, pod),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(contender.config).encode())
    process.stdin.close()
    return process


def finish(contender: Contender, process: subprocess.Popen, what: str) -> None:
    assert process.stdout is not None
    output = process.stdout.read()
    if process.wait() != 0:
        contender.failures.append(f"{what}: {output.decode(errors='replace')[:200]}")


def timed_call(contender: Contender, command: str, pod: str) -> float:
    with inside_netns(contender.node):
        started = time.perf_counter()
        process = spawn(contender, command, pod)
        finish(contender, process, f"{command} {pod}")
        return (time.perf_counter() - started) * 1000


def concurrent_adds(contender: Contender, pods: list[str]) -> float:
    with inside_netns(contender.node):
        started = time.perf_counter()
        processes = [spawn(contender, "ADD", pod) for pod in pods]
        for pod, process in zip(pods, processes, strict=True):
            finish(contender, process, f"concurrent ADD {pod}")
        return (time.perf_counter() - started) * 1000


def run_rounds(contenders: list[Contender], created: list[str], tag: str) -> None:
    pods: dict[str, list[str]] = {c.label: [] for c in contenders}
    for i in range(SEQUENTIAL_CALLS):
        for c in contenders:
            pod = add_namespace(created, f"lcnib-{tag}-{c.node[-1]}-s{i}")
            pods[c.label].append(pod)
            c.add_ms.append(timed_call(c, "ADD", pod))
    for i in range(SEQUENTIAL_CALLS):
        for c in contenders:
            c.del_ms.append(timed_call(c, "DEL", pods[c.label][i]))
    for c in contenders:
        burst = [
            add_namespace(created, f"lcnib-{tag}-{c.node[-1]}-c{i}") for i in range(CONCURRENT_ADDS)
        ]
        c.concurrent_add_ms = concurrent_adds(c, burst)
        for pod in burst:
            timed_call(c, "DEL", pod)


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def render(contenders: list[Contender]) -> Table:
    """Every contender's numbers; each ratio is the installed lab-cni over that one."""
    ours, others = contenders[0], contenders[1:]
    table = Table(title=f"CNI plugin latency, {SEQUENTIAL_CALLS} calls each "
                        "(ms; ratio: lab-cni over that column)")
    table.add_column("metric")
    for c in contenders:
        table.add_column(c.label, justify="right")
    metrics = [
        ("ADD median", lambda c: statistics.median(c.add_ms)),
        ("ADD p95", lambda c: p95(c.add_ms)),
        ("DEL median", lambda c: statistics.median(c.del_ms)),
        ("DEL p95", lambda c: p95(c.del_ms)),
        (f"{CONCURRENT_ADDS} concurrent ADDs, wall", lambda c: c.concurrent_add_ms),
    ]
    for name, measure in metrics:
        mine = measure(ours)
        cells = [f"{mine:.1f}"]
        cells += [f"{measure(r):.1f} ({mine / measure(r):.2f}x)" for r in others]
        table.add_row(name, *cells)
    return table


def main() -> int:
    if os.geteuid() != 0:
        print("bench/cni.py needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="lcni-bench-") as state, namespaces() as created:
        contenders = make_contenders(Path(state))
        for i, c in enumerate(contenders):
            c.node = add_namespace(created, f"lcnib-{tag}-node{i}")
        run_rounds(contenders, created, tag)
    console = Console(width=None if Console().is_terminal else 120)
    console.print(render(contenders))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    console.print(f"{stamp}, {os.cpu_count()} CPUs, load average after the run {load}")
    failures = [f"{c.label}: {f}" for c in contenders for f in c.failures]
    for failure in failures[:10]:
        console.print(f"[red]failure[/red] {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

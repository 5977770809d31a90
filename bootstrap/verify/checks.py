"""The seed lab's connectivity checks, as data, and how to run them through a prober.

A check names a source and a target endpoint, how to probe (ping, or an HTTP request to an
echo server that answers with the client address it saw) and what must happen: reached or
not, and for HTTP which address the target must see. The same checks run after `pulumi up`
(through kubectl exec) and in the local lab (through netns exec); only the prober differs.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from bootstrap.verify.echo_server import LARGE_PATH
from infra.plan import Plan

EndpointKind = Literal["pod", "node", "internet", "service"]


@dataclass(frozen=True)
class Endpoint:
    kind: EndpointKind
    name: str
    ip: str
    node: str | None = None  # the node a pod runs on, or the node itself


@dataclass(frozen=True)
class Check:
    name: str
    source: Endpoint
    target: Endpoint
    # dns: look up the target's name at the target's address (a DNS server); "seen" is then
    # the address the name resolved to.
    method: Literal["ping", "http", "dns"]
    port: int = 0
    expect_reach: bool = True
    expect_seen: str | None = None  # the client address the target's echo server must see
    seen_means: str = ""  # what that address is, for the report ("sender's pod address")
    path: str = "/"  # what an HTTP check asks for (LARGE_PATH: an answer of many packets)

    @property
    def expected(self) -> str:
        return describe(self.expect_reach, self.expect_seen)


@dataclass(frozen=True)
class ProbeResult:
    reached: bool
    seen: str | None = None  # the client address the echo server reported
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    check: Check
    result: ProbeResult
    seconds: float

    @property
    def passed(self) -> bool:
        check, result = self.check, self.result
        if result.reached != check.expect_reach:
            return False
        return not (check.expect_reach and check.expect_seen and result.seen != check.expect_seen)

    @property
    def observed(self) -> str:
        return describe(self.result.reached, self.result.seen)


def describe(reached: bool, seen: str | None) -> str:
    """An expectation or an observation, in the table's words."""
    if not reached:
        return "no answer"
    return f"sees {seen}" if seen else "answers"


class Prober(Protocol):
    """Runs a command as the source endpoint (inside a pod, on a node, on the internet)."""

    def run(self, source: Endpoint, argv: Sequence[str]) -> tuple[int, str]: ...


PING_TIMEOUT_S = 1
HTTP_TIMEOUT_S = 2
# The project's tools on a lab node or in a test pod: the echo server, which is both the web
# pods' workload and the probes' HTTP client.
IMAGE_DIR = "/opt/k8s-cni-lab"
ECHO_SERVER = Path(__file__).with_name("echo_server.py")
ECHO_CLIENT = f"{IMAGE_DIR}/{ECHO_SERVER.name}"
WEB_PORT = 8080  # where the web pods' echo server listens
# How a probe starts the echo client; a prober whose sources keep python or the client
# elsewhere swaps this prefix (`with_client`).
ECHO_CLIENT_ARGV = ("/usr/bin/python3", "-IS", ECHO_CLIENT)


def find_check(checks: Sequence[Check], source: Endpoint, target: Endpoint,
               port: int | None) -> Check | None:
    """The check between these endpoints (on `port`, if given), if there is one."""
    return next((check for check in checks if check.source == source and
                 check.target == target and port in (None, check.port)), None)


def probe(prober: Prober, check: Check) -> ProbeResult:
    if check.method == "dns":
        code, output = prober.run(check.source, ["nslookup", "-type=a", check.target.name,
                                                 check.target.ip])
        address = resolved_address(output)
        return ProbeResult(code == 0 and address is not None, address, _last_line(output))
    if check.method == "ping":
        code, output = prober.run(check.source, ["ping", "-n", "-q", "-c", "1", "-W",
                                                 str(PING_TIMEOUT_S), check.target.ip])
        return ProbeResult(code == 0, None, _last_line(output))
    code, output = prober.run(check.source, [
        *ECHO_CLIENT_ARGV, "fetch", check.target.ip, str(check.port),
        "--timeout", str(HTTP_TIMEOUT_S), *(["--path", check.path] if check.path != "/" else [])])
    if code != 0:
        return ProbeResult(False, None, _last_line(output))
    try:
        seen = seen_address(output)
    except (ValueError, KeyError, TypeError):
        return ProbeResult(False, None, f"unexpected answer: {_last_line(output)}")
    return ProbeResult(True, seen)


def seen_address(answer: str) -> str:
    """The client address an echo answer reports: our echo server's JSON, or the bare
    address that plain-text services (http://checkip.amazonaws.com/) send."""
    last = _last_line(answer)
    if last.startswith("{"):
        return str(json.loads(last)["client"])
    return str(ipaddress.ip_address(last))


def resolved_address(nslookup_output: str) -> str | None:
    """The first address busybox `nslookup` gives for the name (after its server's own)."""
    answer = nslookup_output.partition("\nName:")[2]
    found = re.search(r"^Address(?: \d+)?:\s*([0-9.]+)", answer, re.MULTILINE)
    return found.group(1) if found else None


def with_client(argv: Sequence[str], client: Sequence[str]) -> list[str]:
    """argv with the echo client's command (ECHO_CLIENT_ARGV) replaced by `client`."""
    prefix = len(ECHO_CLIENT_ARGV)
    if tuple(argv[:prefix]) == ECHO_CLIENT_ARGV:
        return [*client, *argv[prefix:]]
    return list(argv)


def run_checks(prober: Prober, checks: Sequence[Check], workers: int = 8) -> list[Outcome]:
    """All checks, concurrently (failures wait for timeouts); results in the checks' order."""
    def timed(check: Check) -> Outcome:
        start = time.monotonic()
        result = probe(prober, check)
        return Outcome(check, result, time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(timed, checks))


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


Role = Literal["web", "tools"]
POD_ROLES: tuple[tuple[Role, str], ...] = (("web", "nginx"), ("tools", "bash"))  # seed names


@dataclass(frozen=True)
class SeedPod:
    name: str
    role: Role
    node: str


def pod_hosts(plan: Plan) -> list[str]:
    """The nodes that run the seed lab's pods: its two first workers or, in a cluster with
    one worker, that worker and the control plane (cross-node checks need two nodes)."""
    workers = [node.name for node in plan.workers[:2]]
    return workers if len(workers) == 2 else [*workers, plan.control_plane.name]


def seed_pods(hosts: Sequence[str]) -> list[SeedPod]:
    """The seed lab's pods: a web (nginx-) and a tools (bash-) pod on each host."""
    return [SeedPod(f"{prefix}-{host}", role, host) for host in hosts
            for role, prefix in POD_ROLES]


@dataclass(frozen=True)
class PodInfo:
    name: str
    node: str
    ip: str
    role: Role


def lab_checks(plan: Plan, public_ips: Mapping[str, str], pods: Sequence[PodInfo],
               internet: Endpoint, internet_port: int, *,
               internet_to_pod: bool = True) -> list[Check]:
    """The seed lab's story on the first two nodes that run pods (the first two workers):
    gateway, same node, across nodes, node to pod, pod to internet, and internet to pod
    (which must fail; left out with internet_to_pod=False where no internet host of ours
    can send the probe). Node addresses come from the plan; `public_ips` says what the
    internet sees of each node."""
    by_node = {node.name: node for node in plan.nodes}
    pod_nodes = list(dict.fromkeys(pod.node for pod in pods))
    if len(pod_nodes) < 2:
        raise ValueError(f"the checks need pods on two nodes, not on {pod_nodes}")
    first, second = pod_nodes[:2]

    def pod(role: str, node: str) -> Endpoint:
        info = next(p for p in pods if p.role == role and p.node == node)
        return Endpoint("pod", info.name, info.ip, info.node)

    tools, web, far_web = pod("tools", first), pod("web", first), pod("web", second)
    far_tools = pod("tools", second)
    # "Node to pod" starts on a node other than the target pod's: the control plane, unless
    # that pod runs there (a two-node cluster).
    master = next(node for node in plan.nodes if node.name != second)
    node_ep = Endpoint("node", master.name, str(master.private_ip), master.name)
    gateway = Endpoint("node", f"{first} cni0", str(by_node[first].gateway), first)
    checks = [
        Check("pod to its gateway", tools, gateway, "ping"),
        Check("pod to pod, same node", tools, web, "http", WEB_PORT,
              expect_seen=tools.ip, seen_means="sender's pod address"),
        Check("pod to pod, across nodes", tools, far_web, "http", WEB_PORT,
              expect_seen=tools.ip, seen_means="sender's pod address (no NAT in the cluster)"),
        Check("pod to pod, across nodes (back)", far_tools, web, "http", WEB_PORT,
              expect_seen=far_tools.ip, seen_means="sender's pod address"),
        Check("large answer, across nodes", tools, far_web, "http", WEB_PORT,
              expect_seen=tools.ip, seen_means="sender's pod address", path=LARGE_PATH),
        Check("node to pod", node_ep, far_web, "http", WEB_PORT,
              expect_seen=str(master.private_ip), seen_means="the node's private address"),
        Check("pod to internet", tools, internet, "http", internet_port,
              expect_seen=public_ips[first], seen_means="the node's public address"),
    ]
    if internet_to_pod:
        checks.append(Check("internet to pod", internet, web, "http", WEB_PORT,
                            expect_reach=False))
    return checks

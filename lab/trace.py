"""`make trace FROM= TO= [PORT=]`: one real probe on a kept lab, traced hop by hop by the
kernel in every namespace it may cross, as a table and a picture.

The trace agent (bootstrap/verify/trace_agent.py) runs in each of the lab's namespaces, the
probe is sent the way its check sends it, then every agent removes its rules and returns
what the kernel traced; bootstrap/verify/trace.py turns that into hops and reasons.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from bootstrap.verify import trace_agent
from bootstrap.verify.checks import (
    WEB_PORT,
    Check,
    Endpoint,
    PodInfo,
    ProbeResult,
    find_check,
    probe,
)
from bootstrap.verify.diagnose import (
    VpcFacts,
    cause_of,
    no_default_route,
    no_nat,
    no_pod_route,
)
from bootstrap.verify.facts import read_node_facts
from bootstrap.verify.trace import (
    Flow,
    Hop,
    Stop,
    TraceError,
    TraceResult,
    TraceUnavailable,
    assemble,
    counted_rules,
    drop_reason,
    monitor_errors,
    parse_monitor,
    route_summary,
    traced_part,
    untraceable,
    vanished_reason,
)
from bootstrap.verify.trace_report import print_trace
from infra.plan import Plan
from lab import lifecycle, picture
from lab.layout import INTERNET_ECHO_PORT, Layout
from lab.lifecycle import LabProber, LocalLab

AGENT = Path(trace_agent.__file__)
AGENT_TIMEOUT_S = 10.0
INTERNET, IGW, ROUTER = picture.INTERNET, picture.IGW, picture.ROUTER


# -- endpoints and the probe (pure) ---------------------------------------------------------

def endpoints(layout: Layout, pods: Sequence[PodInfo]) -> dict[str, Endpoint]:
    """Every endpoint a trace may name, by name and by address: pods, nodes (private and
    public address), each node's cni0 (the pods' gateway), the internet host."""
    found: dict[str, Endpoint] = {}
    internet = lifecycle.INTERNET
    found.update({internet.name: internet, internet.ip: internet})
    for node in layout.nodes:
        planned = node.planned
        own = Endpoint("node", node.name, str(planned.private_ip), node.name)
        found.update({node.name: own, own.ip: own,
                      str(node.public_ip): Endpoint("node", node.name, str(node.public_ip),
                                                    node.name),
                      str(planned.gateway): Endpoint("node", f"{node.name} cni0",
                                                     str(planned.gateway), node.name)})
    for pod in pods:
        endpoint = Endpoint("pod", pod.name, pod.ip, pod.node)
        found.update({pod.name: endpoint, pod.ip: endpoint})
    return found


def resolve(layout: Layout, pods: Sequence[PodInfo], text: str, *, sending: bool) -> Endpoint:
    if not text:
        raise TraceError("name both ends: make trace FROM=<pod, node, internet or address> "
                         "TO=<the same> (e.g. FROM=bash-worker-1 TO=nginx-worker-2)")
    known = endpoints(layout, pods)
    endpoint = known.get(text)
    if endpoint is None:
        raise TraceError(
            f"unknown endpoint {text!r}: name a pod ({', '.join(p.name for p in pods)}), a "
            f"node ({', '.join(n.name for n in layout.nodes)}), internet, or one of their "
            "addresses (`make status`, `python -m lab pods`)")
    if sending and endpoint.name.endswith(" cni0"):
        raise TraceError(f"{text} is {endpoint.name}, a pod gateway: it cannot send a probe; "
                         f"trace FROM={endpoint.node} (the node) instead")
    return endpoint


def trace_check(checks: Sequence[Check], source: Endpoint, target: Endpoint,
                port: int | None) -> Check:
    """The check of `make lab` between these endpoints, if there is one (so the probe is
    sent as it sends it); else the same kind of probe: HTTP to a pod's web server or to the
    internet's, or to `port`; a ping to anything else."""
    found = find_check(checks, source, target, port)
    if found:
        return found
    if port is None and target.kind in ("pod", "internet"):
        port = WEB_PORT if target.kind == "pod" else INTERNET_ECHO_PORT
    name = f"{source.name} to {target.name}"
    if port is None:
        return Check(name, source, target, "ping")
    return Check(name, source, target, "http", port)


def flow_of(layout: Layout, check: Check) -> Flow:
    """The probe's packets. A node's public address is translated to its private one on the
    way in; a pod's address to its node's private one (MASQUERADE) and that to the node's
    public one (the gateway's SNAT) on the way out: each is the target's or the source's."""
    def addresses(endpoint: Endpoint, leaving: bool) -> tuple[str, ...]:
        found = [endpoint.ip]
        for node in layout.nodes:
            private, public = str(node.planned.private_ip), str(node.public_ip)
            if endpoint.ip == public:
                found.append(private)
            elif leaving and endpoint.node == node.name and endpoint.ip != private:
                found += [private, public]
            elif leaving and endpoint.ip == private:
                found.append(public)
        return tuple(dict.fromkeys(found))

    targets, sources = addresses(check.target, False), addresses(check.source, True)
    if check.method == "ping":
        return Flow("icmp", targets, sources=sources)
    return Flow("tcp", targets, check.port, sources)


def places(layout: Layout) -> dict[str, str]:
    """Every namespace a probe may cross, by what it stands for."""
    return {INTERNET: layout.internet_ns, IGW: layout.igw_ns, ROUTER: layout.router_ns,
            **{node.name: node.namespace for node in layout.nodes}}


# -- running the agents -----------------------------------------------------------------------

@dataclass
class Agent:
    place: str
    process: subprocess.Popen[str]


def start_agents(layout: Layout, flow: Flow) -> list[Agent]:
    """One agent per namespace, each in its own session: a Ctrl-C reaches only us, and we
    stop them; if we die, their standard input closes and they clean up anyway."""
    agents = []
    for place, namespace in places(layout).items():
        spec = flow.agent_spec(bridge=place == ROUTER)
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "/usr/bin/python3", "-IS", str(AGENT),
             json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        agents.append(Agent(place, process))
    return agents


def wait_ready(agents: Sequence[Agent]) -> None:
    for agent in agents:
        assert agent.process.stdout is not None
        line = agent.process.stdout.readline().strip()
        if line != trace_agent.READY:
            rest = agent.process.stdout.read() if agent.process.poll() is not None else ""
            reason = untraceable(line + "\n" + rest)
            if reason:
                raise TraceUnavailable(f"{agent.place}: {reason}")
            raise TraceError(f"the trace agent in {agent.place} stopped: {line or rest}")


def stop_agents(agents: Sequence[Agent]) -> dict[str, str]:
    """Close every agent's input (each removes its rules and reports), and collect."""
    for agent in agents:
        if agent.process.stdin:
            agent.process.stdin.close()
            agent.process.stdin = None  # communicate() must not write to it
    outputs = {}
    for agent in agents:
        try:
            output, _ = agent.process.communicate(timeout=AGENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            agent.process.terminate()  # it still cleans up on SIGTERM
            output, _ = agent.process.communicate(timeout=AGENT_TIMEOUT_S)
        outputs[agent.place] = traced_part(output)
    return outputs


def traced_probe(lab: LocalLab, check: Check, flow: Flow) -> tuple[ProbeResult, dict[str, str]]:
    """The probe, with every agent listening; the agents are stopped whatever happens."""
    agents: list[Agent] = []
    try:
        agents = start_agents(lab.layout, flow)
        wait_ready(agents)
        result = probe(LabProber(lab), check)
    finally:
        outputs = stop_agents(agents)
    return result, outputs


def counted_probe(lab: LocalLab, check: Check, why: str) -> TraceResult:
    """The fallback: every namespace's `iptables-save -c` before and after the probe."""
    def saved() -> dict[str, str]:
        return {place: subprocess.run(["ip", "netns", "exec", namespace, "iptables-save", "-c"],
                                      capture_output=True, text=True, check=False).stdout
                for place, namespace in places(lab.layout).items()}

    before = saved()
    result = probe(LabProber(lab), check)
    after = saved()
    counted = {place: rules for place in before
               if (rules := counted_rules(before[place], after[place]))}
    stop = None if result.reached else (_source_stop(lab, check)
                                        or _diagnosed(lab, check, result, lab.vpc_facts()))
    note = f"no kernel trace ({why}): the rules whose counters rose during the probe, " \
           "read on a quiet lab; they say neither the order nor which packet"
    return TraceResult([], result.reached, stop, [note], counted)


# -- what the trace means (the lab's facts) ---------------------------------------------------

def _namespace_of(layout: Layout, place: str) -> str:
    return places(layout)[place]


def route_used(layout: Layout, hop: Hop) -> str:
    """`ip route get` in the hop's namespace for the packet as it was routed there (its
    error when there is none)."""
    source, destination = hop.before[0], hop.after[1]  # routed after any DNAT
    argv = ["ip", "-n", _namespace_of(layout, hop.place), "route", "get", destination]
    if hop.inbound:
        argv += ["from", source, "iif", hop.inbound]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (done.stdout if done.returncode == 0 else done.stderr).strip()
    return text.splitlines()[0].replace("RTNETLINK answers: ", "") if text else ""


def forwarding(layout: Layout, place: str) -> bool | None:
    done = subprocess.run(["ip", "netns", "exec", _namespace_of(layout, place), "sysctl", "-n",
                           "net.ipv4.ip_forward"], capture_output=True, text=True, check=False)
    return done.stdout.strip() == "1" if done.returncode == 0 else None


def place_of(endpoint: Endpoint) -> str:
    return INTERNET if endpoint.kind == "internet" else endpoint.node or ""


def explain(lab: LocalLab, check: Check, result: ProbeResult,
            hops: Sequence[Hop]) -> TraceResult:
    """Where and why the probe stopped: the first hop, in the packets' order, where the VPC
    had no route for a pod address or a rule or policy dropped it (traced); else the hop
    after which it vanished, or the source's own route; else the checks' diagnosis,
    labelled as not traced."""
    if result.reached:
        wrong = check.expect_seen and result.seen != check.expect_seen
        return TraceResult(list(hops), True, notes=[
            f"it arrived, but {check.target.name} saw {result.seen}, not {check.expect_seen} "
            f"({check.seen_means}): look for a NAT above"] if wrong else [])
    vpc = lab.vpc_facts()
    stop = _first_stop(lab, check, result, hops, vpc)
    if stop is None and hops:
        last = hops[-1]
        stop = _answered(lab, check, result, last, vpc) or \
            _vanished(lab, check, result, last, vpc)
    if stop is None:
        stop = _source_stop(lab, check) or _diagnosed(lab, check, result, vpc)
    return TraceResult(list(hops), False, stop)


def port_owners(layout: Layout) -> dict[str, str]:
    return {node.router_port: node.name for node in layout.nodes}


def pod_cidr_owner(plan: Plan, address: str) -> str:
    """The node whose pod CIDR holds the address; "" for an address not a pod's."""
    ip = ipaddress.ip_address(address)
    return next((node.name for node in plan.nodes if ip in node.pod_cidr), "")


def _first_stop(lab: LocalLab, check: Check, result: ProbeResult,
                hops: Sequence[Hop], vpc: VpcFacts) -> Stop | None:
    routed = vpc.routed
    owners = port_owners(lab.layout)
    for hop in hops:
        destination = hop.after[1]
        pods_node = pod_cidr_owner(lab.plan, destination)
        if hop.place == ROUTER and pods_node and not routed.get(pods_node, True):
            return Stop(ROUTER, hop.direction, no_pod_route(pods_node))
        if hop.place == ROUTER and not pods_node and \
                ipaddress.ip_address(destination) in lab.plan.pod_network:
            diagnosed = _diagnosed(lab, check, result, vpc).reason
            return Stop(ROUTER, hop.direction, f"no route: {destination} is in no node's pod "
                        f"CIDR, so the VPC route table has none for it; {diagnosed}")
        verdict = hop.dropped
        if verdict is None:
            continue
        sender = pod_cidr_owner(lab.plan, hop.before[0])
        if hop.place == IGW and sender:
            return Stop(IGW, hop.direction, no_nat(sender))
        return Stop(hop.place, hop.direction,
                    drop_reason(hop, verdict, owners, str(lab.plan.pod_network)))
    return None


def _answered(lab: LocalLab, check: Check, result: ProbeResult, hop: Hop,
              vpc: VpcFacts) -> Stop | None:
    """The first answer came back to the source's node: the first packets passed every hop
    both ways, and what failed came after them (a large answer, say), which the trace does
    not follow; the checks' diagnosis says why, labelled as not traced."""
    if hop.direction != "answer" or hop.place != place_of(check.source):
        return None
    diagnosed = _diagnosed(lab, check, result, vpc)
    return replace(diagnosed, place=hop.place, direction="answer",
                   reason=f"its first packets passed every hop both ways; then: "
                          f"{diagnosed.reason}")


def _vanished(lab: LocalLab, check: Check, result: ProbeResult, hop: Hop,
              vpc: VpcFacts) -> Stop:
    if hop.direction == "request" and hop.place == place_of(check.target):
        return Stop(hop.place, hop.direction, f"reached {hop.place}, but {check.target.name} "
                    "did not answer")
    route = hop.route  # `ip route get` there, read when the hops were assembled
    reason = vanished_reason(hop, route, forwarding(lab.layout, hop.place))
    if reason:
        return Stop(hop.place, hop.direction, reason)
    diagnosed = _diagnosed(lab, check, result, vpc)
    return replace(diagnosed, place=hop.place, direction=hop.direction,
                   reason=f"last seen on {hop.place} ({route_summary(route)}); "
                          f"{diagnosed.reason}")


def _source_stop(lab: LocalLab, check: Check) -> Stop | None:
    """Nothing traced anywhere: can the source route the packet at all?"""
    source, place = check.source, place_of(check.source)
    command = f"ip route get {shlex.quote(check.target.ip)}"
    if source.kind == "pod":
        code, _output = LabProber(lab).run(source, shlex.split(command))
        if code != 0:
            return Stop(place, "request", no_default_route(source.name, source.node or ""))
        return None
    done = subprocess.run(["ip", "-n", _namespace_of(lab.layout, place), *command.split()[1:]],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return Stop(place, "request", f"no route on {place} to {check.target.ip}")
    return None


def _diagnosed(lab: LocalLab, check: Check, result: ProbeResult, vpc: VpcFacts) -> Stop:
    cause = cause_of(check, result, lambda: read_node_facts(lab.ssh, lab.plan), vpc)
    return Stop(place_of(check.source), "request", cause, traced=False)


# -- showing it ---------------------------------------------------------------------------------

def element_path(layout: Layout, pods: Sequence[PodInfo], check: Check,
                 result: TraceResult) -> tuple[str, ...]:
    """The picture's boxes the traced packets passed, from the source on: the request to
    the target; when an answer came back and was lost, the answer's way too, to where it
    stopped."""
    request = [hop for hop in result.hops if hop.direction == "request"]
    answer = [hop for hop in result.hops if hop.direction == "answer"]
    ids = [picture.endpoint_element(layout, pods, check.source)]
    ids += [element for hop in request for element in _hop_elements(hop)]
    if result.arrived or answer:
        ids.append(picture.endpoint_element(layout, pods, check.target))
    if answer and not result.arrived:
        ids += [element for hop in answer for element in _hop_elements(hop)]
    return tuple(element for index, element in enumerate(ids)
                 if index == 0 or ids[index - 1] != element)


def _hop_elements(hop: Hop) -> list[str]:
    if hop.place in (INTERNET, IGW, ROUTER):
        return [hop.place]
    node, bridge = f"node:{hop.place}", f"bridge:{hop.place}"
    return [*([bridge] if hop.inbound == "cni0" else []), node,
            *([bridge] if hop.outbound == "cni0" else [])]


def stop_element(result: TraceResult) -> str | None:
    if result.stop is None:
        return None
    place = result.stop.place
    return place if place in (INTERNET, IGW, ROUTER) else f"node:{place}"


def draw(lab: LocalLab, check: Check, result: TraceResult) -> list[Path]:
    path = picture.DrawnPath(
        label=f"trace {check.source.name} -> {check.target.name}",
        hops=element_path(lab.layout, lab.pods, check, result), passed=result.arrived,
        stopped_at=stop_element(result), reason=result.stop.reason if result.stop else "")
    try:
        return picture.render(lab.layout, lab.pods, [path],
                              picture.picture_stem(lab.layout.lab, "trace"),
                              vpc=lab.vpc_facts(), title=path.label)
    except picture.PictureError as error:
        lab.console.print(f"[yellow]no picture of the trace:[/] {error}", soft_wrap=True)
        return []


# -- the verb -------------------------------------------------------------------------------

def run_trace(lab: LocalLab, source_text: str, target_text: str,
              port: int | None) -> tuple[Check, TraceResult]:
    """Trace one probe on a lab (its SSH open); nothing is printed."""
    source = resolve(lab.layout, lab.pods, source_text, sending=True)
    target = resolve(lab.layout, lab.pods, target_text, sending=False)
    if source == target or (source.node and source.node == target.node
                            and source.kind == target.kind == "node"):
        raise TraceError(f"{source_text} and {target_text} are the same endpoint: trace "
                         "between two different ones")
    check = trace_check(lifecycle.seed_checks(lab.layout, lab.pods), source, target, port)
    return check, trace_probe(lab, check)


def trace_probe(lab: LocalLab, check: Check) -> TraceResult:
    """Send the check's probe once, traced, and say where it went (its SSH open); where
    the kernel cannot trace, the rule counters that rose, labelled as such."""
    flow = flow_of(lab.layout, check)
    try:
        result, outputs = traced_probe(lab, check, flow)
    except TraceUnavailable as error:
        return counted_probe(lab, check, str(error))
    hops = assemble({place: parse_monitor(text) for place, text in outputs.items()}, flow)
    hops = [replace(hop, route=route_used(lab.layout, hop)) for hop in hops]
    notes = [f"the trace in {place} is incomplete: {error}"
             for place, text in outputs.items() for error in monitor_errors(text)]
    explained = explain(lab, check, result, hops)
    return replace(explained, notes=[*explained.notes, *notes])


def trace(name: str, source: str, target: str, port: int | None, console: Console) -> int:
    """`python -m lab trace`: 0 when the probe arrived, 1 when it stopped."""
    started = time.monotonic()
    lab = lifecycle.attach(name, console)
    try:
        with lab.ssh:
            check, result = run_trace(lab, source, target, port)
            files = draw(lab, check, result)
    except KeyboardInterrupt:
        console.print("[yellow]trace interrupted:[/] every trace rule was removed")
        return 130
    print_trace(console, check, result)
    console.print(f"[dim]traced in {time.monotonic() - started:.1f} s; every trace rule "
                  "removed[/]")
    picture.show_files(console, "The trace", files)
    return 0 if result.arrived else 1

"""`make trace STACK=dev FROM=<pod> TO=<pod>`: the trace between two test pods of a stack.

The node-side hops are traced by the kernel on both pods' nodes, over SSH
(trace_remote.py). Between the nodes the packet crosses the VPC, which no one here can
trace: that hop is the route the stack's route table holds for the packet (the `podRoutes`
output), shown as inferred, not traced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

from bootstrap.verify.checks import WEB_PORT, Check, Endpoint, PodInfo, ProbeResult, find_check
from bootstrap.verify.diagnose import NodeFacts, VpcFacts, cause_of
from bootstrap.verify.trace import Flow, Hop, Stop, TraceError, TraceResult, drop_reason
from infra.plan import Plan

VPC_HOP = "VPC (inferred from the route table, not traced)"
VPC_NOTE = "the VPC hop is inferred from the stack's route table (its podRoutes output), " \
           "not traced"
PLANNED_NOTE = "the VPC hop is inferred from the plan's routes (this stack predates the " \
               "podRoutes output: `pulumi up` adds it), not traced"


def planned_routes(plan: Plan) -> dict[str, str]:
    """The routes the Pulumi program makes: each node's pod CIDR to that node."""
    return {str(node.pod_cidr): f"{node.name} ({node.private_ip})" for node in plan.nodes}


def pod_endpoint(pods: Sequence[PodInfo], text: str) -> Endpoint:
    """A test pod by name or address: on a stack, a trace runs between two of them."""
    for pod in pods:
        if text in (pod.name, pod.ip):
            return Endpoint("pod", pod.name, pod.ip, pod.node)
    raise TraceError(f"no test pod {text!r} on the stack: name one of "
                     f"{', '.join(pod.name for pod in pods)} (FROM= and TO= on a stack are "
                     "pods)")


def pod_check(checks: Sequence[Check], source: Endpoint, target: Endpoint,
              port: int | None) -> Check:
    """The stack's check between the two pods, if there is one; else HTTP to the target's
    web server (or to `port`)."""
    return find_check(checks, source, target, port) or \
        Check(f"{source.name} to {target.name}", source, target, "http", port or WEB_PORT)


def pod_flow(plan: Plan, check: Check) -> Flow:
    """Pod to pod: the source pod's address, or its node's where a rule masquerades it."""
    node = plan.node(check.source.node or "")
    return Flow("tcp", (check.target.ip,), check.port,
                (check.source.ip, str(node.private_ip)))


def with_vpc_hops(hops: Sequence[Hop], routes: Mapping[str, str]) -> list[Hop]:
    """Between one node's hop and another's, the VPC's: the most specific of `routes`
    (destination CIDR -> target) for the packet's destination."""
    found: list[Hop] = []
    for hop in hops:
        last = found[-1] if found else None
        if last and last.direction == hop.direction and last.place != hop.place:
            found.append(Hop(VPC_HOP, hop.direction, "", "", last.after, last.after, (),
                             last.ttl - 1, route=vpc_route(routes, last.after[1])))
        found.append(hop)
    return found


def vpc_route(routes: Mapping[str, str], destination: str) -> str:
    address = ipaddress.ip_address(destination)
    matching = [ipaddress.ip_network(cidr) for cidr in routes
                if address in ipaddress.ip_network(cidr)]
    if not matching:
        return f"{destination} in the subnet: delivered directly"
    best = max(matching, key=lambda network: network.prefixlen)
    return f"{best} via {routes[str(best)]}"


def explain(plan: Plan, check: Check, result: ProbeResult, hops: Sequence[Hop],
            read_facts: Callable[[], Mapping[str, NodeFacts]],
            note: str = VPC_NOTE) -> TraceResult:
    """Arrived; or the first rule or policy that dropped it on a node (traced); or how far
    it was seen and the checks' diagnosis (not traced)."""
    if result.reached:
        return TraceResult(list(hops), True, notes=[note])
    for hop in hops:
        if hop.dropped:
            reason = drop_reason(hop, hop.dropped, {}, str(plan.pod_network))
            return TraceResult(list(hops), False, Stop(hop.place, hop.direction, reason),
                               [note])
    cause = cause_of(check, result, read_facts, VpcFacts())
    last = hops[-1] if hops else None
    place = last.place if last else check.source.node or ""
    seen = f"last seen on {place}; " if last else "seen on no node; "
    return TraceResult(list(hops), False,
                       Stop(place, last.direction if last else "request", seen + cause,
                            traced=False), [note])

"""Why a check failed, in words: facts read from the nodes, and a pure rule per cause.

Facts are a command plus a pure parser (pyinfra's model): `FACTS_COMMAND` runs on a node,
`parse_node_facts` reads its output. `likely_cause` turns a failed outcome and the facts into
one sentence: a pod without its default route, the bridge down or without its gateway, a
pod CIDR mismatch, forwarding off, FORWARD dropped or one way only, an MTU mismatch, no NAT,
NAT inside the cluster, no route, the source/destination check.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bootstrap.node_network import BRIDGE, NODE_FILES
from bootstrap.verify.checks import Check, Outcome, ProbeResult

FACTS_SECTION = "#--"
# One round trip per node: the forwarding sysctl, the filter and nat tables, the links
# (state, MTU), the bridge's addresses, the default route, the CNI config, and each pod
# namespace's default route.
FACTS_COMMAND = f"; echo '{FACTS_SECTION}'; ".join([
    "sysctl -n net.ipv4.ip_forward", "iptables-save -t filter", "iptables-save -t nat",
    "ip -o link show", f"ip -4 -o addr show dev {BRIDGE} 2>/dev/null",
    "ip -4 route show default", f"cat {NODE_FILES.conflist} 2>/dev/null",
    "for ns in $(ip netns list 2>/dev/null | cut -d' ' -f1); do "
    "echo \"$ns $(ip -n \"$ns\" -4 route show default 2>/dev/null | head -n 1)\"; done"])


@dataclass(frozen=True)
class NodeFacts:
    forwarding: bool
    forward_policy: str
    forward_accepts_pods: bool  # some rule accepts the cluster pod CIDR in FORWARD's path
    masquerades_outbound: bool  # pod traffic leaving the cluster is NATed
    masquerades_cluster: bool  # pod traffic to other pods is NATed too (the lab's bug)
    # Below: None, "" or () where the node did not say (an older command, a cloud node).
    forward_one_way: str = ""  # "from pods" or "to pods": the other direction is dropped
    bridge_up: bool | None = None
    bridge_missing_gateway: str = ""  # the gateway address the bridge should hold and lacks
    bridge_mtu: int | None = None
    uplink: str = ""  # the device of the node's default route, and its MTU
    uplink_mtu: int | None = None
    conflist_mismatch: str = ""  # the CNI config's subnet, when not the node's pod CIDR
    pods_without_default_route: tuple[str, ...] = ()  # pod namespaces, by name


def parse_node_facts(output: str, node_pod_cidr: str, cluster_cidr: str,
                     gateway: str = "") -> NodeFacts:
    """`gateway` is the address the bridge must hold (10.244.1.1/24); "" leaves it unchecked."""
    sections = [*output.split(FACTS_SECTION), *[""] * 8]
    sysctl, filter_table, nat_table, links, addresses, default, conflist, pods = sections[:8]
    rules = [line for line in filter_table.splitlines() if line.startswith("-A ")]
    policy = next((line.split()[1] for line in filter_table.splitlines()
                   if line.startswith(":FORWARD ")), "ACCEPT")
    accepts = any(cluster_cidr in line and "-j ACCEPT" in line for line in rules)
    masq = [line for line in nat_table.splitlines()
            if line.startswith("-A ") and "MASQUERADE" in line and _matches_source(
                line, node_pod_cidr)]
    outbound = bool(masq)
    cluster = any(f"! -d {cluster_cidr}" not in line for line in masq)
    link_table = parse_links(links)
    bridge = link_table.get(BRIDGE)
    uplink = next((words[words.index("dev") + 1] for words in map(str.split, default.splitlines())
                   if "dev" in words[:-1]), "")
    subnet = conflist_subnet(conflist)
    return NodeFacts(
        sysctl.strip() == "1", policy, accepts, outbound, cluster,
        forward_one_way=_one_way(rules, cluster_cidr),
        bridge_up=None if bridge is None else bridge[0],
        bridge_missing_gateway=gateway if bridge and gateway and gateway not in
        addresses.split() else "",
        bridge_mtu=None if bridge is None else bridge[1],
        uplink=uplink, uplink_mtu=link_table[uplink][1] if uplink in link_table else None,
        conflist_mismatch=subnet if subnet and subnet != node_pod_cidr else "",
        pods_without_default_route=tuple(
            words[0] for words in map(str.split, pods.splitlines())
            if words and "default" not in words))


def parse_links(text: str) -> dict[str, tuple[bool, int]]:
    """`ip -o link show`: name -> (administratively up, MTU)."""
    links = {}
    for words in map(str.split, text.splitlines()):
        if len(words) > 4 and "mtu" in words:
            name = words[1].rstrip(":").split("@")[0]
            links[name] = ("UP" in words[2].strip("<>").split(","),
                           int(words[words.index("mtu") + 1]))
    return links


def _one_way(rules: Sequence[str], cluster_cidr: str) -> str:
    """Which single direction of pod traffic the filter rules accept, if only one is."""
    accepted = [rule.split() for rule in rules if rule.split()[-2:] == ["-j", "ACCEPT"]]
    replies = any("ESTABLISHED" in ",".join(words) for words in accepted)
    sources = any(words[i:i + 2] == ["-s", cluster_cidr]
                  for words in accepted for i in range(len(words)))
    destinations = any(words[i:i + 2] == ["-d", cluster_cidr]
                       for words in accepted for i in range(len(words)))
    if replies or sources == destinations:
        return ""
    return "from pods" if sources else "to pods"


def conflist_subnet(text: str) -> str:
    """The subnet a CNI config list hands out; "" when it names none."""
    try:
        plugins = json.loads(text)["plugins"]
        return str(next(p["subnet"] for p in plugins if "subnet" in p))
    except (ValueError, KeyError, TypeError, StopIteration):
        return ""


def _matches_source(rule: str, pod_cidr: str) -> bool:
    """A MASQUERADE rule applies to the node's pods if it has no source or a covering one."""
    words = rule.split()
    if "-s" not in words:
        return True
    source = words[words.index("-s") + 1]
    try:
        return ipaddress.IPv4Network(pod_cidr).subnet_of(ipaddress.IPv4Network(source))
    except ValueError:
        return False


# The causes' words, shared by the diagnosis and the packet trace (bootstrap/verify/trace.py).
def forwarding_off(node: str) -> str:
    return f"forwarding off on {node} (net.ipv4.ip_forward=0)"


def forward_dropped(node: str, policy: str, accepted: str = "the pod network") -> str:
    return f"FORWARD dropped on {node}: policy {policy} and no rule accepts {accepted}"


def forward_one_way(node: str, way: str) -> str:
    return f"FORWARD on {node} accepts pod traffic one way only ({way}): the answers " \
           "coming back are dropped"


def no_pod_route(node: str) -> str:
    return f"no route: the VPC route table does not send {node}'s pod CIDR to it"


def source_dest_checked(node: str) -> str:
    return f"source/destination check on {node}: the VPC drops what it sends or receives " \
           "for an address not its own (its pods')"


def no_nat(node: str) -> str:
    return f"no NAT on {node}: the internet gateway drops pod addresses"


def no_default_route(pod: str, node: str) -> str:
    return f"{pod} on {node} has no default route: it reaches nothing beyond its own subnet"


@dataclass(frozen=True)
class VpcFacts:
    """What the VPC does for each node, where it can be read (the lab's router). A node
    missing from a map is unknown: the cloud's VPC is not visible from the nodes, so the
    cause then names what to check instead of claiming one."""

    routed: Mapping[str, bool] = field(default_factory=dict)  # its pod CIDR routed to it
    source_dest_check: Mapping[str, bool] = field(default_factory=dict)
    # The route table's next hop for each destination CIDR, where it can be read.
    next_hops: Mapping[str, str] = field(default_factory=dict)


def failure_causes(outcomes: Sequence[Outcome], read_facts: Callable[[], Mapping[str, NodeFacts]],
                   vpc: VpcFacts) -> dict[str, str]:
    """The likely cause of each failed check, by name; the facts are read only on failure."""
    failed = [outcome for outcome in outcomes if not outcome.passed]
    if not failed:
        return {}
    facts = read_facts()
    return {outcome.check.name: likely_cause(outcome, facts, vpc) for outcome in failed}


def cause_of(check: Check, result: ProbeResult,
             read_facts: Callable[[], Mapping[str, NodeFacts]], vpc: VpcFacts) -> str:
    """The likely cause of one failed probe ("" if it did not fail)."""
    outcome = Outcome(check, result, 0.0)
    return failure_causes([outcome], read_facts, vpc).get(check.name, "")


def likely_cause(outcome: Outcome, facts: Mapping[str, NodeFacts], vpc: VpcFacts) -> str:
    """One sentence: the first known cause on the check's path."""
    check = outcome.check
    if outcome.result.reached and not check.expect_reach:
        return f"{check.target.name} answered from the internet: the gateway must drop it"
    if outcome.result.reached:
        return _wrong_address(check, outcome.result.seen, facts)
    pod_cause = _pod_side_cause(check, facts)
    if pod_cause:
        return pod_cause
    nodes = _nodes_on_path(check)
    for node in nodes:
        if node in facts and not facts[node].forwarding and _forwards(check, node) \
                and not _bridged(check):
            return forwarding_off(node)
    for node in nodes:
        node_facts = facts.get(node)
        if node_facts and node_facts.forward_policy != "ACCEPT" and \
                not node_facts.forward_accepts_pods and _forwards(check, node):
            return forward_dropped(node, node_facts.forward_policy)
        if node_facts and node_facts.forward_policy != "ACCEPT" and \
                node_facts.forward_one_way and _forwards(check, node):
            return forward_one_way(node, node_facts.forward_one_way)
    for node in nodes:
        node_facts = facts.get(node)
        if node_facts and node_facts.uplink_mtu and node_facts.bridge_mtu and \
                node_facts.uplink_mtu < node_facts.bridge_mtu and not _bridged(check):
            return f"MTU mismatch on {node}: {node_facts.uplink} has MTU " \
                   f"{node_facts.uplink_mtu}, less than the pods' {node_facts.bridge_mtu} " \
                   f"({BRIDGE}): full-size packets are dropped, small ones (ping) pass"
    target_node = check.target.node or ""
    crosses_vpc = check.target.kind == "pod" and target_node != check.source.node
    if crosses_vpc and not vpc.routed.get(target_node, True):
        return no_pod_route(target_node)
    checked = [node for node in _pod_address_nodes(check) if vpc.source_dest_check.get(node)]
    if crosses_vpc and checked:
        return f"{source_dest_checked(checked[0])}; turn it off"
    if crosses_vpc and target_node not in vpc.routed:
        return f"{outcome.result.detail or 'no answer'}; the nodes' rules look right: check " \
               f"the VPC route for {target_node}'s pod CIDR and that source/destination " \
               "checking is off on both instances (not visible from the nodes)"
    source_facts = facts.get(check.source.node or "")
    if check.target.kind == "internet" and source_facts and not source_facts.masquerades_outbound:
        return no_nat(check.source.node or "")
    if check.target.kind == "service":
        return f"{outcome.result.detail or 'no answer'}; the nodes' rules look right: check " \
               "kube-proxy (`iptables-save -t nat | grep KUBE-SVC` on a node) and CoreDNS " \
               "(`kubectl -n kube-system get pods`)"
    return f"{outcome.result.detail or 'no answer'} (no known cause matched)"


def _wrong_address(check: Check, seen: str | None, facts: Mapping[str, NodeFacts]) -> str:
    source = check.source.node or ""
    if check.target.kind == "pod" and source in facts and facts[source].masquerades_cluster:
        return f"NAT inside the cluster: {source} masquerades pod-to-pod traffic " \
               f"(target saw {seen}); use '! -d <cluster CIDR>' in the NAT rule"
    return f"target saw {seen}, expected {check.expect_seen} ({check.seen_means})"


def _pod_side_cause(check: Check, facts: Mapping[str, NodeFacts]) -> str:
    """A cause on the node of a pod at either end: the pod's route, the bridge, the CNI
    config. Pod to pod on one node and pod to its gateway stay inside the pod's subnet."""
    local = _bridged(check) or (check.target.kind == "node" and
                                check.target.node == check.source.node)
    for end in (check.source, check.target):
        node_facts = facts.get(end.node or "")
        if end.kind != "pod" or node_facts is None:
            continue
        if end.name in node_facts.pods_without_default_route and not local:
            return no_default_route(end.name, end.node or "")
        if node_facts.bridge_up is False:
            return f"the bridge {BRIDGE} is down on {end.node}"
        if node_facts.bridge_missing_gateway and not _bridged(check):
            return f"{BRIDGE} on {end.node} lacks the pod gateway address " \
                   f"{node_facts.bridge_missing_gateway}"
        if node_facts.conflist_mismatch and not local:
            return f"pod CIDR mismatch on {end.node}: its CNI config gives pods " \
                   f"{node_facts.conflist_mismatch}, not the node's pod CIDR (the one the " \
                   "VPC routes to it)"
    return ""


def _pod_address_nodes(check: Check) -> list[str]:
    """The nodes that send or receive the check's packets with a pod's address."""
    ends = [check.source] if check.source.kind == "pod" else []
    return [end.node for end in (*ends, check.target) if end.node]


def _nodes_on_path(check: Check) -> list[str]:
    nodes = [check.source.node, check.target.node]
    return [node for node in dict.fromkeys(nodes) if node]


def _bridged(check: Check) -> bool:
    """Pods on one node talk through cni0: FORWARD sees it (br_netfilter), routing does not."""
    source, target = check.source, check.target
    return source.kind == target.kind == "pod" and source.node == target.node


def _forwards(check: Check, node: str) -> bool:
    """Does the packet pass through `node`'s FORWARD path (not only INPUT/OUTPUT)?"""
    if check.source.kind == "node" and check.source.node == node:
        return False  # a node's own packets leave through OUTPUT
    return not (check.target.kind == "node" and check.target.node == node)

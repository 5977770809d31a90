"""Why a check failed, in words: facts read from the nodes, and a pure rule per cause.

Facts are a command plus a pure parser (pyinfra's model): `FACTS_COMMAND` runs on a node,
`parse_node_facts` reads its output. `likely_cause` turns a failed outcome and the facts into
one sentence: forwarding off, FORWARD dropped, no NAT, NAT inside the cluster, no route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bootstrap.verify.checks import Check, Outcome

# One round trip per node: the forwarding sysctl, then the filter and nat tables.
FACTS_COMMAND = "sysctl -n net.ipv4.ip_forward; echo '#--'; iptables-save -t filter; " \
                "echo '#--'; iptables-save -t nat"


@dataclass(frozen=True)
class NodeFacts:
    forwarding: bool
    forward_policy: str
    forward_accepts_pods: bool  # some rule accepts the cluster pod CIDR in FORWARD's path
    masquerades_outbound: bool  # pod traffic leaving the cluster is NATed
    masquerades_cluster: bool  # pod traffic to other pods is NATed too (the lab's bug)


def parse_node_facts(output: str, node_pod_cidr: str, cluster_cidr: str) -> NodeFacts:
    sysctl, filter_table, nat_table = ([*output.split("#--"), "", ""])[:3]
    policy = next((line.split()[1] for line in filter_table.splitlines()
                   if line.startswith(":FORWARD ")), "ACCEPT")
    accepts = any(cluster_cidr in line and "-j ACCEPT" in line
                  for line in filter_table.splitlines() if line.startswith("-A "))
    masq = [line for line in nat_table.splitlines()
            if line.startswith("-A ") and "MASQUERADE" in line and _matches_source(
                line, node_pod_cidr)]
    outbound = bool(masq)
    cluster = any(f"! -d {cluster_cidr}" not in line for line in masq)
    return NodeFacts(sysctl.strip() == "1", policy, accepts, outbound, cluster)


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


def failure_causes(outcomes: Sequence[Outcome], read_facts: Callable[[], Mapping[str, NodeFacts]],
                   routed: Mapping[str, bool]) -> dict[str, str]:
    """The likely cause of each failed check, by name; the facts are read only on failure."""
    failed = [outcome for outcome in outcomes if not outcome.passed]
    if not failed:
        return {}
    facts = read_facts()
    return {outcome.check.name: likely_cause(outcome, facts, routed) for outcome in failed}


def likely_cause(outcome: Outcome, facts: Mapping[str, NodeFacts],
                 routed: Mapping[str, bool]) -> str:
    """One sentence; `routed` says, per node, whether the VPC routes its pod CIDR to it. A
    node missing from `routed` is unknown (the cloud's route table is not visible from the
    nodes): the sentence then names what to check instead of claiming a cause."""
    check = outcome.check
    if outcome.result.reached and not check.expect_reach:
        return f"{check.target.name} answered from the internet: the gateway must drop it"
    if outcome.result.reached:
        return _wrong_address(check, outcome.result.seen, facts)
    nodes = _nodes_on_path(check)
    for node in nodes:
        if node in facts and not facts[node].forwarding and _forwards(check, node) \
                and not _bridged(check):
            return f"forwarding off on {node} (net.ipv4.ip_forward=0)"
    for node in nodes:
        node_facts = facts.get(node)
        if node_facts and node_facts.forward_policy != "ACCEPT" and \
                not node_facts.forward_accepts_pods and _forwards(check, node):
            return f"FORWARD dropped on {node}: policy {node_facts.forward_policy} and no " \
                   "rule accepts the pod network"
    target_node = check.target.node
    if check.target.kind == "pod" and target_node != check.source.node and \
            not routed.get(target_node or "", True):
        return f"no route: the VPC route table does not send {target_node}'s pod CIDR to it"
    if check.target.kind == "pod" and target_node != check.source.node and \
            target_node not in routed:
        return f"{outcome.result.detail or 'no answer'}; the nodes' rules look right: check " \
               f"the VPC route for {target_node}'s pod CIDR and that source/destination " \
               "checking is off on both instances (not visible from the nodes)"
    source_facts = facts.get(check.source.node or "")
    if check.target.kind == "internet" and source_facts and not source_facts.masquerades_outbound:
        return f"no NAT on {check.source.node}: the internet gateway drops pod addresses"
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

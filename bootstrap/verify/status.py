"""`make status`: what each node holds, beside what the plan says it should.

One command per node reads everything (pyinfra's fact model: a command and a pure parser):
the node-network facts the diagnosis reads, the CNI config list, the bridge's addresses and
the sha256 of each installed plugin file. `node_status` compares them with the plan and
`disagreements` names what differs, so the table can mark it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bootstrap.errors import LabError
from bootstrap.node_network import BRIDGE, NODE_FILES
from bootstrap.remote import NodeCluster, RemoteNode
from bootstrap.verify.diagnose import (
    FACTS_COMMAND,
    NodeFacts,
    conflist_subnet,
    parse_node_facts,
)
from infra.plan import Node, Plan

SECTION = "==section=="
STATUS_TIMEOUT = 30


@dataclass(frozen=True)
class NodeStatus:
    name: str
    reached: str  # "" when SSH answered with the pinned host key, else why not
    planned_cidr: str
    conflist_cidr: str | None  # None: no CNI config list
    bridge_addresses: tuple[str, ...]  # IPv4 addresses on cni0, e.g. ("10.244.1.1/24",)
    facts: NodeFacts | None
    plugin: str  # "current", "outdated" or "missing"


def status_command(plugin_paths: Sequence[str]) -> str:
    """The facts for the diagnosis, the conflist, cni0's addresses, the plugin's hashes."""
    paths = " ".join(shlex.quote(path) for path in plugin_paths)
    return "; ".join([
        FACTS_COMMAND, f"echo {shlex.quote(SECTION)}",
        f"cat {shlex.quote(NODE_FILES.conflist)} 2>/dev/null", f"echo {shlex.quote(SECTION)}",
        f"ip -4 -o addr show dev {BRIDGE} 2>/dev/null", f"echo {shlex.quote(SECTION)}",
        f"sha256sum {paths} 2>/dev/null", "true"])


def node_status(plan: Plan, node: Node, output: str,
                plugin_hashes: Mapping[str, str]) -> NodeStatus:
    """Parse one node's status output (pure)."""
    facts_text, conflist, addresses, hashes = ([*output.split(SECTION), "", "", ""])[:4]
    return NodeStatus(
        name=node.name, reached="", planned_cidr=str(node.pod_cidr),
        conflist_cidr=conflist_subnet(conflist) or None,
        bridge_addresses=tuple(line.split()[3] for line in addresses.splitlines()
                               if len(line.split()) > 3),
        facts=parse_node_facts(facts_text, str(node.pod_cidr), str(plan.pod_network)),
        plugin=_plugin_state(hashes, plugin_hashes))


def _plugin_state(sha256sum_output: str, wanted: Mapping[str, str]) -> str:
    found = {path: digest for digest, path in
             (line.split(maxsplit=1) for line in sha256sum_output.splitlines() if " " in line)}
    if not all(path in found for path in wanted):
        return "missing"
    return "current" if all(found[path] == digest for path, digest in wanted.items()) \
        else "outdated"


def disagreements(status: NodeStatus, node: Node,
                  kubernetes: tuple[str, str] | None = None) -> list[str]:
    """What this node holds that differs from the plan, or is missing, in the checks' words.
    `kubernetes` is the Node object's (spec.podCIDR, Ready status), on a cloud cluster."""
    if status.reached:
        return [f"unreachable: {status.reached}"]
    found: list[str] = []
    if kubernetes is not None:
        pod_cidr, ready = kubernetes
        if pod_cidr != status.planned_cidr:
            found.append(f"spec.podCIDR {pod_cidr or 'unset'}, plan {status.planned_cidr}")
        if ready != "True":
            found.append(f"kubelet not Ready ({ready})")
    if status.conflist_cidr != status.planned_cidr:
        found.append(f"CNI config subnet {status.conflist_cidr or 'missing'}, plan "
                     f"{status.planned_cidr}")
    gateway = f"{node.gateway}/{node.pod_cidr.prefixlen}"
    if status.bridge_addresses != (gateway,):
        found.append(f"{BRIDGE} holds {', '.join(status.bridge_addresses) or 'no address'}, "
                     f"plan {gateway}")
    facts = status.facts
    if facts is not None:
        found += [text for wrong, text in (
            (not facts.forwarding, "forwarding off"),
            (not facts.forward_accepts_pods, "no FORWARD rule accepts the pod network"),
            (not facts.masquerades_outbound, "no NAT for traffic leaving the cluster"),
            (facts.masquerades_cluster, "NAT inside the cluster")) if wrong]
    if status.plugin != "current":
        found.append(f"plugin {status.plugin}")
    return found


def read_status(ssh: NodeCluster, plan: Plan,
                plugin_hashes: Mapping[str, str]) -> list[NodeStatus]:
    """Every node's status; a node SSH cannot reach is listed with the reason."""
    command = status_command(sorted(plugin_hashes))

    def read(remote: RemoteNode) -> NodeStatus:
        node = plan.node(remote.name)
        try:
            result = remote.run(command, timeout=STATUS_TIMEOUT, check=False, quiet=True)
        except LabError as error:
            return NodeStatus(node.name, str(error).splitlines()[0], str(node.pod_cidr),
                              None, (), None, "missing")
        return node_status(plan, node, result.output, plugin_hashes)

    found = ssh.on_all(read)
    return [found[node.name] for node in plan.nodes]

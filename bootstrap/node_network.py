"""The node network, as pure functions of the address plan: no I/O here.

Every node gets the same treatment, on AWS and in the local lab:
- sysctls: IPv4 forwarding, and bridged traffic through iptables (br_netfilter);
- the cni0 bridge holding the node's pod gateway address (and only that address);
- iptables rules in our own chains, flannel style: LAB-FWD (filter) accepts pod traffic in
  FORWARD, LAB-POSTRTG (nat) masquerades only traffic that leaves the cluster, so pods on
  different nodes see each other's real addresses;
- the CNI config list naming our plugin.

This module says what a node must have: its desired state, written to the node as JSON. The
applier (bootstrap/node_network_apply.py, standard library only) is the single
implementation that reaches it: the bootstrap ships it to the node and runs it, and a systemd
unit runs the same command at every boot, because the kernel forgets all of it at a reboot.
Running it again changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap import node_network_apply
from bootstrap.cni.install import CNI_TYPE
from bootstrap.node_network_apply import (
    COMMENT_TAG,
    Bridge,
    DesiredState,
    OwnChain,
    Rule,
    jumps_into,
    state_to_json,
)
from infra.plan import Node, Plan

BRIDGE = "cni0"
CNI_NETWORK_NAME = "lab-net"
CNI_VERSION = "1.0.0"
POD_MTU = 1500
IPAM_DATA_DIR = "/var/lib/cni/networks"
BOOT_UNIT_NAME = "lab-node-network.service"
NODE_PYTHON = "/usr/bin/python3 -IS"  # the node's own Python, isolated from its site-packages
SYSCTLS = (("net.ipv4.ip_forward", "1"), ("net.bridge.bridge-nf-call-iptables", "1"))


@dataclass(frozen=True)
class NodeFiles:
    """Every path the bootstrap writes on a node besides the plugin's (those are listed by
    bootstrap/cni/install.py), and nothing else."""

    applier: str = "/opt/k8s-cni-lab/node_network_apply.py"
    state: str = "/etc/k8s-cni-lab/node-network.json"
    boot_unit: str = f"/etc/systemd/system/{BOOT_UNIT_NAME}"
    conflist: str = "/etc/cni/net.d/10-lab-cni.conflist"


NODE_FILES = NodeFiles()
# What an older version wrote and nothing reads any more: the bash scripts the applier
# replaced. The node-network phase removes them.
OBSOLETE_NODE_FILES = ("/etc/k8s-cni-lab/node-network.sh",
                       "/etc/k8s-cni-lab/node-network-down.sh")
BOOT_COMMAND = f"{NODE_PYTHON} {NODE_FILES.applier} {NODE_FILES.state}"
TEARDOWN_COMMAND = f"{NODE_PYTHON} {NODE_FILES.applier} --teardown {NODE_FILES.state}"
# The applier with a desired state on its standard input instead of the state file.
APPLY_STDIN_COMMAND = f"{NODE_PYTHON} {NODE_FILES.applier} -"

FORWARD_CHAIN = OwnChain(table="filter", name="LAB-FWD", hook="FORWARD")
MASQUERADE_CHAIN = OwnChain(table="nat", name="LAB-POSTRTG", hook="POSTROUTING")
OWN_CHAINS = (FORWARD_CHAIN, MASQUERADE_CHAIN)


def rules(plan: Plan, node: Node) -> list[Rule]:
    """The rules inside our chains for this node, in order."""
    cluster, pods = str(plan.pod_network), str(node.pod_cidr)
    fwd, nat = FORWARD_CHAIN, MASQUERADE_CHAIN
    return [
        # Pod traffic crosses the node's FORWARD path (bridged or routed): accept it even
        # when the policy is DROP, as Docker sets it.
        Rule(fwd.table, fwd.name, ("-s", cluster, "-j", "ACCEPT"),
             f"{COMMENT_TAG} forward from pods"),
        Rule(fwd.table, fwd.name, ("-d", cluster, "-j", "ACCEPT"),
             f"{COMMENT_TAG} forward to pods"),
        # NAT only what leaves the cluster: pod to pod across nodes keeps its source address.
        Rule(nat.table, nat.name, ("-s", pods, "!", "-d", cluster, "-j", "MASQUERADE"),
             f"{COMMENT_TAG} masquerade pod traffic leaving the cluster"),
    ]


def jump_rules() -> list[Rule]:
    """The one jump from each built-in chain into ours."""
    return jumps_into(OWN_CHAINS)


def bridge_address(node: Node) -> str:
    """The gateway with the node's pod prefix, e.g. 10.244.1.1/24."""
    return f"{node.gateway}/{node.pod_cidr.prefixlen}"


def desired_state(plan: Plan, node: Node) -> DesiredState:
    """Everything the node network holds on this node."""
    return DesiredState(node=node.name, sysctls=SYSCTLS,
                        bridge=Bridge(BRIDGE, bridge_address(node)),
                        chains=OWN_CHAINS, rules=rules(plan, node))


def forward_only_state(plan: Plan, node: Node) -> DesiredState:
    """Only the filter-table part, the seed lab's "FORWARD fix": forwarding on and the
    FORWARD accept rules; no NAT, and the bridge left to the plugin."""
    return DesiredState(node=node.name, sysctls=SYSCTLS, bridge=None, chains=[FORWARD_CHAIN],
                        rules=[rule for rule in rules(plan, node)
                               if rule.table == FORWARD_CHAIN.table])


def render_state(state: DesiredState) -> str:
    """The state file the applier reads, one key per line for a reader on the node."""
    return json.dumps(state_to_json(state), indent=2) + "\n"


def applier_source() -> bytes:
    """The applier exactly as it is in this repository: the node runs this file."""
    return Path(node_network_apply.__file__).read_bytes()


def cni_conflist(plan: Plan, node: Node) -> dict[str, Any]:
    """The node's CNI network configuration list, read by the container runtime."""
    return {
        "cniVersion": CNI_VERSION,
        "name": CNI_NETWORK_NAME,
        "plugins": [{
            "type": CNI_TYPE,
            "bridge": BRIDGE,
            "subnet": str(node.pod_cidr),
            "gateway": str(node.gateway),
            "clusterCidr": str(plan.pod_network),
            "mtu": POD_MTU,
            "hairpinMode": True,
            "dataDir": IPAM_DATA_DIR,
        }],
    }


def render_boot_unit() -> str:
    """A oneshot unit that re-applies the node network at boot, before the kubelet starts."""
    return f"""\
[Unit]
Description=k8s-cni-lab node network (sysctls, {BRIDGE} bridge, iptables rules)
Wants=network-online.target
After=network-online.target
Before=kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={BOOT_COMMAND}

[Install]
WantedBy=multi-user.target
"""

"""How the bootstrap reaches each node, whoever made the nodes.

The Pulumi program (AWS) and the local lab (network namespaces) each build an `Inventory`.
It holds access data only: what a node *is* (role, private address, pod CIDR) is the plan's
`Node`, read from the plan wherever it is needed, never copied here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from bootstrap.errors import InventoryError
from infra.plan import NODE_LOGIN, Plan


@dataclass(frozen=True, kw_only=True)
class NodeAccess:
    """How to reach one node's sshd, and the host key to pin."""

    name: str  # the plan's node name
    host: str
    port: int = 22
    user: str = NODE_LOGIN
    host_key: str  # OpenSSH public key line of the node's sshd: "ssh-ed25519 AAAA..."

    def __post_init__(self) -> None:
        parse_host_key_line(self.name, self.host_key)

    @property
    def address(self) -> str:
        """host:port, the way an operator would type it."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class Inventory:
    """All nodes, and the SSH private key that opens them."""

    nodes: tuple[NodeAccess, ...]
    private_key: str = field(repr=False)  # OpenSSH or PEM text: a secret, never shown

    def __post_init__(self) -> None:
        names = self.names()
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise InventoryError(f"inventory lists node(s) twice: {', '.join(duplicates)}")

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> NodeAccess:
        for node in self.nodes:
            if node.name == name:
                return node
        raise InventoryError(f"no node named {name!r} in the inventory "
                             f"(nodes: {', '.join(self.names())})")


def inventory_for_plan(plan: Plan, *, hosts: Mapping[str, str], host_keys: Mapping[str, str],
                       private_key: str, user: str = NODE_LOGIN, port: int = 22) -> Inventory:
    """An inventory of the plan's nodes, given each node's SSH address and pinned host key."""
    missing = [n.name for n in plan.nodes if n.name not in hosts or n.name not in host_keys]
    if missing:
        raise InventoryError(f"no SSH address or host key for node(s): {', '.join(missing)}")
    nodes = tuple(NodeAccess(name=node.name, host=hosts[node.name], port=port, user=user,
                             host_key=host_keys[node.name])
                  for node in plan.nodes)
    return Inventory(nodes=nodes, private_key=private_key)


def check_agrees_with_plan(plan: Plan, inventory: Inventory,
                           reported_private_ips: Mapping[str, str]) -> None:
    """Nodes made elsewhere (the cloud) must be the plan's nodes, at the plan's addresses:
    the same names in the same order, and each private address the cloud reports equal to
    the planned one (the VPC routes, kubeadm and the checks all assume it)."""
    if inventory.names() != plan.node_names():
        raise InventoryError(f"inventory nodes {inventory.names()} differ from the plan's "
                             f"{plan.node_names()}")
    for node in plan.nodes:
        reported = reported_private_ips.get(node.name)
        if reported is not None and reported != str(node.private_ip):
            raise InventoryError(f"node {node.name}: the cloud reports private IP {reported}; "
                                 f"the plan says {node.private_ip}")


def parse_host_key_line(node: str, line: str) -> tuple[str, bytes]:
    """(key type, key blob) of an OpenSSH public key line; a trailing comment is allowed."""
    parts = line.split()
    if len(parts) < 2:
        raise InventoryError(f"node {node}: host key {line!r} is not an OpenSSH public key "
                             "line ('<type> <base64> [comment]')")
    key_type, encoded = parts[0], parts[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise InventoryError(f"node {node}: host key of type {key_type} is not valid "
                             "base64") from None
    return key_type, blob

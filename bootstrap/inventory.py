"""What the bootstrap needs to reach and configure each node, whoever made the nodes.

The Pulumi program (AWS) and the local lab (network namespaces) each build an `Inventory`;
the bootstrap phases read nothing else about the machines.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from bootstrap.errors import InventoryError
from infra.plan import Plan


@dataclass(frozen=True, kw_only=True)
class NodeAccess:
    """One node: how to reach its sshd, the host key to pin, and its planned addresses."""

    name: str
    role: str
    host: str
    port: int = 22
    user: str = "ubuntu"
    host_key: str  # OpenSSH public key line of the node's sshd: "ssh-ed25519 AAAA..."
    private_ip: str
    pod_cidr: str

    def __post_init__(self) -> None:
        parse_host_key_line(self.name, self.host_key)

    @property
    def address(self) -> str:
        """host:port, the way an operator would type it."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class Inventory:
    """All nodes, the SSH private key that opens them, and the cluster's pod CIDR."""

    nodes: tuple[NodeAccess, ...]
    private_key: str = field(repr=False)  # OpenSSH or PEM text: a secret, never shown
    cluster_cidr: str

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


def inventory_from_plan(plan: Plan, *, hosts: Mapping[str, str], host_keys: Mapping[str, str],
                        private_key: str, user: str = "ubuntu", port: int = 22) -> Inventory:
    """An inventory for the plan's nodes, given each node's SSH address and pinned host key."""
    missing = [n.name for n in plan.nodes if n.name not in hosts or n.name not in host_keys]
    if missing:
        raise InventoryError(f"no SSH address or host key for node(s): {', '.join(missing)}")
    nodes = tuple(
        NodeAccess(name=node.name, role=node.role, host=hosts[node.name], port=port, user=user,
                   host_key=host_keys[node.name], private_ip=str(node.private_ip),
                   pod_cidr=str(node.pod_cidr))
        for node in plan.nodes)
    return Inventory(nodes=nodes, private_key=private_key, cluster_cidr=str(plan.pod_network))


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

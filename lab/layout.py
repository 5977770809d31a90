"""The simulated AWS network as data: namespaces, links and addresses, derived from the plan.

Pure: no I/O, so the whole layout is testable without root. `lab/network.py` builds it.

    operator's SSH --- inet0 bridge [internet host 198.51.100.1] --- IGW --- VPC router
                                                                     (1:1 NAT     |  vpc0 bridge
                                                                      node IPs)   |  10.0.1.1
                                                          master 10.0.1.10, worker-N 10.0.1.1N
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from infra.plan import Node, Plan, Settings, make_plan

# Documentation ranges (RFC 5737) for everything outside the VPC, so no lab packet can be
# mistaken for, or leak to, a real address.
PUBLIC_IPS = IPv4Network("203.0.113.0/24")
ROUTER_IGW_LINK = IPv4Network("192.0.2.0/30")
INTERNET_HOST = IPv4Interface("198.51.100.1/24")
IGW_INTERNET_SIDE = IPv4Interface("198.51.100.254/24")
INTERNET_ECHO_PORT = 80

LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,19}$")


@dataclass(frozen=True)
class LabNode:
    """A planned node as the lab simulates it: the plan's `Node` (what it is) and where it
    lives on this machine."""

    planned: Node
    namespace: str
    public_ip: IPv4Address  # what the internet gateway translates its private address to
    router_port: str  # the node's veth peer on the router's vpc0 bridge

    @property
    def name(self) -> str:
        return self.planned.name


@dataclass(frozen=True)
class Layout:
    lab: str  # prefix of every namespace and host-side link this lab owns
    plan: Plan
    nodes: tuple[LabNode, ...]

    @property
    def router_ns(self) -> str:
        return f"{self.lab}-router"

    @property
    def igw_ns(self) -> str:
        return f"{self.lab}-igw"

    @property
    def internet_ns(self) -> str:
        return f"{self.lab}-inet"

    @property
    def router_ip(self) -> IPv4Interface:
        """The VPC router's address on the subnet: its first host, as in AWS."""
        subnet = self.plan.subnet
        return IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")

    @property
    def namespaces(self) -> list[str]:
        infra = [self.router_ns, self.igw_ns, self.internet_ns]
        return infra + [node.namespace for node in self.nodes]



def lab_layout(lab: str, node_count: int = Settings.node_count) -> Layout:
    """The lab as it is simulated: the project's default plan, with the security group open
    only to the internet host (the operator's address), as a careful operator sets it."""
    allowed = (f"{INTERNET_HOST.ip}/32",)
    return make_layout(make_plan(Settings(node_count=node_count, allowed_cidrs=allowed)), lab)


def make_layout(plan: Plan, lab: str = "k8slab") -> Layout:
    if not LAB_NAME.match(lab):
        raise ValueError(f"lab name {lab!r} must be 1-20 lowercase letters or digits, starting "
                         "with a letter (it prefixes the names of the lab's namespaces)")
    if len(plan.nodes) > PUBLIC_IPS.num_addresses - 20:
        raise ValueError(f"{len(plan.nodes)} nodes do not fit the lab's public range {PUBLIC_IPS}")
    nodes = tuple(
        LabNode(
            planned=node,
            namespace=f"{lab}-{node.name}",
            # Public addresses mirror the private host number: 10.0.1.11 <-> 203.0.113.11.
            public_ip=PUBLIC_IPS.network_address + int(node.private_ip) % 256,
            router_port=f"n{node.index}",
        )
        for node in plan.nodes
    )
    return Layout(lab, plan, nodes)


def router_igw_addresses() -> tuple[IPv4Interface, IPv4Interface]:
    first, second = list(ROUTER_IGW_LINK.hosts())
    prefix = ROUTER_IGW_LINK.prefixlen
    return IPv4Interface(f"{first}/{prefix}"), IPv4Interface(f"{second}/{prefix}")

"""The address plan: one source of truth for node names, roles and addresses.

Pure Python with no Pulumi import, so the Pulumi program, the bootstrap and the local lab
all compute the same pod CIDR, bridge gateway and private IP for node N, and the rules
can be tested without a cloud or root.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

Role = Literal["control-plane", "worker"]

CONTROL_PLANE_NAME = "master"
# The login of Canonical's Ubuntu images, with passwordless sudo; the local lab's nodes copy it.
NODE_LOGIN = "ubuntu"
API_SERVER_PORT = 6443  # kubeadm's default; the security group opens it, kubeadm binds it
# AWS reserves the first four addresses of a subnet; nodes start at .10 as in the seed lab.
FIRST_NODE_HOST = 10
# Kubernetes minors supported on the release date of this file, with their end of life.
SUPPORTED_KUBERNETES = {"1.35": "2027-02-28", "1.36": "2027-06-28", "1.37": "2027-10-28"}
# kubeadm's preflight refuses a control plane with fewer than 2 CPUs or 1700 MB of memory.
KUBEADM_MIN_VCPU = 2
KUBEADM_MIN_MIB = 1700
# vCPUs and MiB of common instance types; types not listed are not checked.
INSTANCE_SIZES: dict[str, tuple[int, int]] = {
    **{f"{fam}.nano": (2, 512) for fam in ("t3", "t3a", "t4g")},
    **{f"{fam}.micro": (2, 1024) for fam in ("t3", "t3a", "t4g")},
    **{f"{fam}.small": (2, 2048) for fam in ("t3", "t3a", "t4g")},
    **{f"{fam}.medium": (2, 4096) for fam in ("t3", "t3a", "t4g")},
    **{f"{fam}.large": (2, 8192) for fam in ("t3", "t3a", "t4g", "m5", "m6i", "m7i", "r5")},
    **{f"{fam}.xlarge": (4, 16384) for fam in ("t3", "t3a", "t4g", "m5", "m6i", "m7i")},
    **{f"{fam}.2xlarge": (8, 32768) for fam in ("t3", "t3a", "t4g", "m5", "m6i", "m7i")},
    "t2.nano": (1, 512),
    "t2.micro": (1, 1024),
    "t2.small": (1, 2048),
    "t2.medium": (2, 4096),
    "t2.large": (2, 8192),
    "c5.large": (2, 4096),
    "c6i.large": (2, 4096),
    "c7i.large": (2, 4096),
}
# Default quota of non-propagated routes per VPC route table (adjustable in Service Quotas).
DEFAULT_ROUTE_LIMIT = 50
# AWS accepts VPC and subnet IPv4 blocks from /16 (largest) to /28 (smallest).
AWS_BLOCK_PREFIXES = range(16, 29)


class PlanError(ValueError):
    """A setting that cannot produce a working cluster; the message names it and the fix."""

    def __init__(self, setting: str, problem: str, fix: str) -> None:
        self.setting, self.problem, self.fix = setting, problem, fix
        super().__init__(f"{setting}: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Settings:
    """Everything the plan depends on, with the project's defaults."""

    node_count: int = 3
    instance_type: str = "t3.small"
    kubernetes_version: str = "1.36"
    vpc_cidr: str = "10.0.0.0/16"
    subnet_cidr: str = "10.0.1.0/24"
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    node_prefix: int = 24
    allowed_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    root_volume_gib: int = 20
    route_limit: int = DEFAULT_ROUTE_LIMIT


def settings_from_wire(raw: Mapping[str, Any]) -> Settings:
    """Settings from a JSON or Pulumi property form, where numbers may arrive as floats and
    tuples as lists: the provider's input and the stack's `settings` output."""
    defaults = Settings()
    unknown = sorted(set(raw) - {f.name for f in fields(Settings)})
    if unknown:
        raise PlanError("settings", f"unknown setting(s) {', '.join(unknown)}",
                        "use the field names of Settings in infra/plan.py")
    return Settings(**{name: type(getattr(defaults, name))(value)
                       for name, value in raw.items()})


@dataclass(frozen=True)
class Node:
    """One planned node: node N owns the Nth /node_prefix of the pod CIDR."""

    index: int
    name: str
    role: Role
    private_ip: IPv4Address
    pod_cidr: IPv4Network
    gateway: IPv4Address  # the cni0 bridge address: first host of pod_cidr
    # EC2's source/destination check drops packets a node sends or receives for an address
    # not its own; every node forwards its pods' packets (the control plane runs pods too),
    # so the check is off everywhere. The Pulumi program and the lab's VPC router read this.
    source_dest_check: bool = False


@dataclass(frozen=True)
class Plan:
    settings: Settings
    vpc: IPv4Network
    subnet: IPv4Network
    pod_network: IPv4Network
    service_network: IPv4Network
    allowed: tuple[IPv4Network, ...]
    nodes: tuple[Node, ...] = field(default_factory=tuple)

    @property
    def control_plane(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[Node, ...]:
        return self.nodes[1:]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r} in the plan (nodes: {self.node_names()})")

    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]


def node_name(index: int) -> str:
    return CONTROL_PLANE_NAME if index == 0 else f"worker-{index}"


def parse_network(setting: str, value: str) -> IPv4Network:
    """An IPv4 CIDR with no host bits set, or a PlanError naming the setting."""
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise PlanError(setting, f"{value!r} is not a CIDR", "write it as a.b.c.d/len") from None
    if not isinstance(network, IPv4Network):
        raise PlanError(setting, f"{value!r} is IPv6", "use an IPv4 CIDR; the lab is IPv4 only")
    if str(network) != value.strip():
        raise PlanError(setting, f"{value!r} has host bits set", f"use {network}")
    return network


def make_plan(settings: Settings = Settings()) -> Plan:
    """Validate the settings and compute every node's addresses."""
    vpc = parse_network("vpcCidr", settings.vpc_cidr)
    subnet = parse_network("subnetCidr", settings.subnet_cidr)
    pods = parse_network("podCidr", settings.pod_cidr)
    services = parse_network("serviceCidr", settings.service_cidr)
    allowed = tuple(parse_network("allowedCidrs", c) for c in settings.allowed_cidrs)
    _check_aws_block_size("vpcCidr", vpc)
    _check_aws_block_size("subnetCidr", subnet)
    _check_layout(vpc, subnet, pods, services, settings.node_prefix)
    _check_node_count(settings, subnet, pods)
    _check_instance_type(settings.instance_type)
    _check_kubernetes_version(settings.kubernetes_version)
    if not allowed:
        raise PlanError("allowedCidrs", "the list is empty, so nobody could reach SSH or the "
                        "API server", "add your own address as a.b.c.d/32")
    if not 8 <= settings.root_volume_gib <= 16384:
        raise PlanError("rootVolumeGiB", f"{settings.root_volume_gib} GiB is out of range",
                        "choose 8 to 16384 (kubeadm nodes want at least 20)")
    return Plan(settings, vpc, subnet, pods, services, allowed,
                tuple(_plan_nodes(settings, subnet, pods)))


def _plan_nodes(settings: Settings, subnet: IPv4Network, pods: IPv4Network) -> Iterable[Node]:
    pod_subnets = pods.subnets(new_prefix=settings.node_prefix)
    for index in range(settings.node_count):
        pod_cidr = next(pod_subnets)
        yield Node(
            index=index,
            name=node_name(index),
            role="control-plane" if index == 0 else "worker",
            private_ip=subnet.network_address + FIRST_NODE_HOST + index,
            pod_cidr=pod_cidr,
            gateway=pod_cidr.network_address + 1,
        )


def _check_aws_block_size(setting: str, network: IPv4Network) -> None:
    first, last = AWS_BLOCK_PREFIXES[0], AWS_BLOCK_PREFIXES[-1]
    if network.prefixlen not in AWS_BLOCK_PREFIXES:
        raise PlanError(setting, f"{network} is a /{network.prefixlen}; AWS accepts /{first} "
                        f"to /{last}", f"choose a prefix length from /{first} to /{last}")


def _check_layout(vpc: IPv4Network, subnet: IPv4Network, pods: IPv4Network,
                  services: IPv4Network, node_prefix: int) -> None:
    if not subnet.subnet_of(vpc):
        raise PlanError("subnetCidr", f"{subnet} is outside the VPC {vpc}",
                        f"choose a subnet inside {vpc}")
    if pods.overlaps(vpc):
        raise PlanError("podCidr", f"{pods} overlaps the VPC {vpc}",
                        "choose a pod CIDR outside the VPC, such as 10.244.0.0/16")
    if services.overlaps(vpc):
        raise PlanError("serviceCidr", f"{services} overlaps the VPC {vpc}",
                        "choose a service CIDR outside the VPC, such as 10.96.0.0/12")
    if pods.overlaps(services):
        raise PlanError("podCidr", f"{pods} overlaps the service CIDR {services}",
                        "choose pod and service CIDRs that do not overlap")
    if not pods.prefixlen <= node_prefix <= 30:
        raise PlanError("nodePrefix", f"/{node_prefix} does not fit the pod CIDR {pods}",
                        f"choose a prefix from /{pods.prefixlen} to /30")


def _check_node_count(settings: Settings, subnet: IPv4Network, pods: IPv4Network) -> None:
    count = settings.node_count
    if count < 2:
        raise PlanError("nodeCount", f"{count} node(s) leaves no worker",
                        "use at least 2 (one control plane and one worker)")
    node_subnets = 2 ** (settings.node_prefix - pods.prefixlen)
    if count > node_subnets:
        raise PlanError("nodeCount", f"{count} nodes but the pod CIDR {pods} has only "
                        f"{node_subnets} /{settings.node_prefix} node subnets",
                        "use fewer nodes, a larger podCidr or a longer nodePrefix")
    # One route per node plus the default route to the internet gateway.
    if count + 1 > settings.route_limit:
        raise PlanError("nodeCount", f"{count} pod routes and the default route exceed the "
                        f"route table quota of {settings.route_limit} routes",
                        "use fewer nodes, or raise 'Routes per route table' in AWS Service "
                        "Quotas (Amazon VPC) and set routeLimit to the new quota")
    # Nodes take .10 upwards; AWS keeps the broadcast (last) address.
    if FIRST_NODE_HOST + count > subnet.num_addresses - 1:
        raise PlanError("nodeCount", f"{count} nodes do not fit in the subnet {subnet} "
                        f"(nodes start at host .{FIRST_NODE_HOST})",
                        "use fewer nodes or a larger subnetCidr")


def _check_instance_type(instance_type: str) -> None:
    size = INSTANCE_SIZES.get(instance_type)
    if size and (size[0] < KUBEADM_MIN_VCPU or size[1] < KUBEADM_MIN_MIB):
        raise PlanError("instanceType", f"{instance_type} has {size[0]} vCPU and {size[1]} MiB; "
                        f"kubeadm needs {KUBEADM_MIN_VCPU} vCPU and {KUBEADM_MIN_MIB} MB",
                        "use t3.small or larger")


def _check_kubernetes_version(version: str) -> None:
    if version not in SUPPORTED_KUBERNETES:
        supported = ", ".join(SUPPORTED_KUBERNETES)
        raise PlanError("kubernetesVersion", f"{version!r} is not a supported minor",
                        f"use one of {supported} (a minor, without the patch number)")

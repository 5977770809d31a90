"""The stack outputs: what an operator reads and pastes.

`nodes` holds everything per node, keyed by name (to script against, e.g. an inventory for
other tools; the bootstrap itself takes its inputs from the nodes directly); the flat maps
repeat parts of it for people at a terminal (`pulumi stack output publicIpsByNode`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pulumi

from infra.network import Network
from infra.nodes import NodeResources, Nodes
from infra.plan import NODE_LOGIN, Plan
from infra.routes import PodRoutes


def key_file() -> str:
    """Where docs/infra.md tells the operator to save the private key."""
    return f"{pulumi.get_project()}-{pulumi.get_stack()}.pem"


def known_hosts_file() -> str:
    return f"{pulumi.get_project()}-{pulumi.get_stack()}.known_hosts"


def stack_outputs(plan: Plan, network: Network, nodes: Nodes,
                  routes: PodRoutes) -> dict[str, Any]:
    members = nodes.members
    return {
        "nodes": {m.node.name: _inventory_entry(m) for m in members},
        "publicIpsByNode": {m.node.name: m.instance.public_ip for m in members},
        "privateIpsByNode": {m.node.name: m.instance.private_ip for m in members},
        "podCidrsByNode": {m.node.name: str(m.node.pod_cidr) for m in members},
        "eniIds": {m.node.name: m.instance.primary_network_interface_id for m in members},
        "hostPublicKeys": {m.node.name: _host_public_key(m) for m in members},
        "knownHosts": pulumi.Output.all(
            *[_known_hosts_line(m) for m in members]).apply("".join),
        "sshCommands": {m.node.name: _ssh_command(m) for m in members},
        "sshUser": NODE_LOGIN,
        "privateKey": nodes.private_key_openssh,
        "keyPairName": nodes.key_pair.key_name,
        "routeTableId": network.route_table.id,
        # The pod routes as AWS holds them: what `make trace STACK=...` shows for the VPC hop.
        "podRoutes": {node: {"destination": route.destination_cidr_block,
                             "networkInterfaceId": route.network_interface_id}
                      for node, route in routes.routes.items()},
        "vpcId": network.vpc.id,
        "subnetId": network.subnet.id,
        "securityGroupId": network.security_group.id,
        # Every setting, so a tool reading the outputs makes the same plan (`make check
        # STACK=...`); settings_from_wire reads them back.
        "settings": asdict(plan.settings),
        "kubernetesVersion": plan.settings.kubernetes_version,
        "podCidr": str(plan.pod_network),
        "serviceCidr": str(plan.service_network),
    }


def _inventory_entry(member: NodeResources) -> dict[str, Any]:
    node = member.node
    return {
        "role": node.role,
        "publicIp": member.instance.public_ip,
        "privateIp": member.instance.private_ip,
        "podCidr": str(node.pod_cidr),
        "gateway": str(node.gateway),
        "hostPublicKey": _host_public_key(member),
        "eniId": member.instance.primary_network_interface_id,
        "instanceId": member.instance.id,
    }


def _host_public_key(member: NodeResources) -> pulumi.Output[str]:
    return member.host_key.public_key_openssh.apply(str.strip)


def _known_hosts_line(member: NodeResources) -> pulumi.Output[str]:
    return pulumi.Output.concat(member.instance.public_ip, " ", _host_public_key(member), "\n")


def _ssh_command(member: NodeResources) -> pulumi.Output[str]:
    return pulumi.Output.concat(
        f"ssh -i {key_file()} -o UserKnownHostsFile={known_hosts_file()} "
        f"-o StrictHostKeyChecking=yes {NODE_LOGIN}@",
        member.instance.public_ip,
    )

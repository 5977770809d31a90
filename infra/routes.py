"""Pod routes: node N's pod CIDR goes to node N's network interface, so pods on different
nodes reach each other through the VPC with their own addresses (no overlay, no NAT)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.plan import Node


@dataclass(frozen=True)
class PodRoute:
    node: Node
    network_interface_id: pulumi.Input[str]


@dataclass(frozen=True)
class PodRoutesArgs:
    route_table_id: pulumi.Input[str]
    routes: Sequence[PodRoute]


class PodRoutes(pulumi.ComponentResource):
    def __init__(self, name: str, args: PodRoutesArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s-cni-lab:infra:PodRoutes", name, None, opts)
        self.routes = {
            route.node.name: aws.ec2.Route(
                f"{name}-{route.node.name}",
                route_table_id=args.route_table_id,
                destination_cidr_block=str(route.node.pod_cidr),
                network_interface_id=route.network_interface_id,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for route in args.routes
        }
        self.register_outputs({
            "podRoutes": {name: route.destination_cidr_block
                          for name, route in self.routes.items()},
        })

"""The lab's network: VPC, internet gateway, public subnet, route table and security group.

Pod routes are not created here (see routes.py): they need the instances' network
interfaces, and the route table must exist before the instances boot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.firewall import ingress_rules
from infra.plan import Plan
from infra.tags import resource_tags

ANYWHERE = "0.0.0.0/0"
@dataclass(frozen=True)
class NetworkArgs:
    plan: Plan
    availability_zone: pulumi.Input[str]


class Network(pulumi.ComponentResource):
    """A public subnet whose route table sends the internet to the gateway."""

    def __init__(self, name: str, args: NetworkArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s-cni-lab:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        plan = args.plan

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=str(plan.vpc),
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=resource_tags("vpc"),
            opts=child,
        )
        self.internet_gateway = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=self.vpc.id, tags=resource_tags("igw"), opts=child)
        self.subnet = aws.ec2.Subnet(
            f"{name}-public",
            vpc_id=self.vpc.id,
            cidr_block=str(plan.subnet),
            availability_zone=args.availability_zone,
            map_public_ip_on_launch=True,
            tags=resource_tags("public"),
            opts=child,
        )
        # No inline routes: the default route and the pod routes are separate Route
        # resources, and mixing the two styles makes each overwrite the other.
        self.route_table = aws.ec2.RouteTable(
            f"{name}-routes", vpc_id=self.vpc.id, tags=resource_tags("routes"), opts=child)
        self.default_route = aws.ec2.Route(
            f"{name}-default-route",
            route_table_id=self.route_table.id,
            destination_cidr_block=ANYWHERE,
            gateway_id=self.internet_gateway.id,
            opts=child,
        )
        self.route_table_association = aws.ec2.RouteTableAssociation(
            f"{name}-public-routes",
            subnet_id=self.subnet.id,
            route_table_id=self.route_table.id,
            opts=child,
        )
        self.security_group = self._security_group(name, plan, child)

        self.register_outputs({
            "vpcId": self.vpc.id,
            "subnetId": self.subnet.id,
            "routeTableId": self.route_table.id,
            "securityGroupId": self.security_group.id,
        })

    @property
    def internet_access(self) -> list[pulumi.Resource]:
        """What a node needs before it boots: cloud-init installs packages from the internet."""
        return [self.default_route, self.route_table_association]

    def _security_group(self, name: str, plan: Plan,
                        child: pulumi.ResourceOptions) -> aws.ec2.SecurityGroup:
        # Rules are separate resources (never inline), one per CIDR, so a change to one
        # CIDR touches one rule.
        group = aws.ec2.SecurityGroup(
            f"{name}-nodes",
            vpc_id=self.vpc.id,
            description="k8s-cni-lab nodes",
            tags=resource_tags("nodes"),
            opts=child,
        )
        for rule in ingress_rules(plan):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-in-{rule.key}",
                security_group_id=group.id,
                description=rule.description,
                cidr_ipv4=rule.cidr,
                ip_protocol=rule.protocol,
                from_port=rule.from_port,
                to_port=rule.to_port,
                tags=resource_tags(f"in-{rule.key}"),
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out-all",
            security_group_id=group.id,
            description="All outbound traffic (packages, images, the internet for pods)",
            cidr_ipv4=ANYWHERE,
            ip_protocol="-1",
            tags=resource_tags("out-all"),
            opts=child,
        )
        return group


# Local and Wavelength zones need an opt-in and offer few instance types: only a region's
# own Availability Zones qualify, without opt-in.
ZONE_FILTERS: list[aws.GetAvailabilityZonesFilterArgsDict] = [
    {"name": "zone-type", "values": ["availability-zone"]},
    {"name": "opt-in-status", "values": ["opt-in-not-required"]},
]


def default_availability_zone(instance_type: str) -> pulumi.Output[str]:
    """The default zone: the region's first Availability Zone that offers the instance type."""
    zones = aws.get_availability_zones_output(state="available", filters=ZONE_FILTERS)
    offers = aws.ec2.get_instance_type_offerings_output(
        location_type="availability-zone",
        filters=[{"name": "instance-type", "values": [instance_type]}])
    return pulumi.Output.all(zones.names, offers.locations).apply(
        lambda found: choose_zone(found[0], found[1], instance_type))


def choose_zone(zones: Sequence[str], offering: Sequence[str], instance_type: str) -> str:
    """The first zone, in the region's order, where the instance type is offered."""
    for zone in zones:
        if zone in offering:
            return zone
    raise pulumi.RunError(
        f"no Availability Zone of this region offers {instance_type}: set "
        "k8s-cni-lab:instanceType to another type, or k8s-cni-lab:availabilityZone")

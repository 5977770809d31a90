"""The nodes: the login key pair, one SSH host key per node, and one instance per node."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.cloud_init import HostKey, render_user_data
from infra.plan import Node, Plan
from infra.tags import resource_tags

CANONICAL_OWNER_ID = "099720109477"
UBUNTU_IMAGE_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"
# Graviton families have a "g" after the generation number: t4g, m7g, c6gn, r8g...
GRAVITON_FAMILY = re.compile(r"^[a-z]+\d+g")


def image_architecture(instance_type: str) -> str:
    """Ubuntu's name for the CPU architecture an instance type runs."""
    return "arm64" if GRAVITON_FAMILY.match(instance_type) else "amd64"


def latest_ubuntu_ami(instance_type: str) -> pulumi.Output[str]:
    """The newest Canonical Ubuntu 24.04 LTS image in the region for this instance type."""
    arch = image_architecture(instance_type)
    image = aws.ec2.get_ami_output(
        most_recent=True,
        owners=[CANONICAL_OWNER_ID],
        filters=[
            aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_IMAGE_NAME.format(arch=arch)]),
            aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
            aws.ec2.GetAmiFilterArgs(name="root-device-type", values=["ebs"]),
        ],
    )
    return image.id


@dataclass(frozen=True)
class NodesArgs:
    plan: Plan
    ami_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    # Resources that must exist before a node boots (its route to the internet).
    boot_dependencies: Sequence[pulumi.Resource]
    # True when the AMI comes from the "latest" lookup rather than the amiId setting.
    ami_is_latest: bool


@dataclass(frozen=True)
class NodeResources:
    node: Node
    host_key: tls.PrivateKey
    instance: aws.ec2.Instance


class Nodes(pulumi.ComponentResource):
    """One EC2 instance per planned node, reachable with one key pair and pinned host keys."""

    def __init__(self, name: str, args: NodesArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s-cni-lab:infra:Nodes", name, None, opts)
        self.login_key = tls.PrivateKey(
            f"{name}-login-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self))
        self.key_pair = aws.ec2.KeyPair(
            f"{name}-login",
            public_key=self.login_key.public_key_openssh,
            tags=resource_tags("login"),
            opts=pulumi.ResourceOptions(parent=self),
        )
        # pulumi-tls already marks its private outputs secret; wrapping again keeps the
        # export secret even if that ever changed.
        self.private_key_openssh: pulumi.Output[str] = pulumi.Output.secret(
            self.login_key.private_key_openssh)
        self.members = [self._node(name, node, args) for node in args.plan.nodes]

        self.register_outputs({
            "keyPairName": self.key_pair.key_name,
            "instanceIds": {m.node.name: m.instance.id for m in self.members},
            "hostPublicKeys": {m.node.name: m.host_key.public_key_openssh
                               for m in self.members},
        })

    def _node(self, name: str, node: Node, args: NodesArgs) -> NodeResources:
        settings = args.plan.settings
        host_key = tls.PrivateKey(f"{name}-{node.name}-host-key", algorithm="ED25519",
                                  opts=pulumi.ResourceOptions(parent=self))
        user_data = pulumi.Output.all(
            host_key.private_key_openssh, host_key.public_key_openssh
        ).apply(lambda keys: render_user_data(node.name, settings.kubernetes_version,
                                              HostKey(*keys)))
        instance = aws.ec2.Instance(
            f"{name}-{node.name}",
            ami=args.ami_id,
            instance_type=settings.instance_type,
            subnet_id=args.subnet_id,
            private_ip=str(node.private_ip),
            vpc_security_group_ids=[args.security_group_id],
            associate_public_ip_address=True,
            key_name=self.key_pair.key_name,
            source_dest_check=node.source_dest_check,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",  # IMDSv2 only
                # One hop: pods, one hop further behind the bridge, cannot reach IMDS.
                http_put_response_hop_limit=1,
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3",
                volume_size=settings.root_volume_gib,
                encrypted=True,
                delete_on_termination=True,
                tags=resource_tags(f"{node.name}-root", Role=node.name),
            ),
            # cloud-init runs only at first boot, so new user data needs a new instance.
            user_data=user_data,
            user_data_replace_on_change=True,
            tags=resource_tags(node.name, Role=node.name),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=list(args.boot_dependencies),
                # The replacement takes the same pinned private IP, which AWS refuses while
                # the old instance holds it: delete first, then create.
                delete_before_replace=True,
                # A newer Ubuntu image appearing must not replace a running cluster on the
                # next `pulumi up`; setting amiId explicitly does replace it.
                ignore_changes=["ami"] if args.ami_is_latest else None,
            ),
        )
        return NodeResources(node, host_key, instance)

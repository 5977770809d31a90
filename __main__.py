"""The k8s-cni-lab stack: config -> address plan -> network, nodes, pod routes -> cluster
bootstrap -> outputs."""

import pulumi

from bootstrap.provider import BootstrapNode, ClusterBootstrap, ClusterBootstrapArgs
from infra.config import load_config
from infra.network import Network, NetworkArgs, default_availability_zone
from infra.nodes import Nodes, NodesArgs, latest_ubuntu_ami
from infra.outputs import stack_outputs
from infra.plan import NODE_LOGIN, PlanError, make_plan
from infra.routes import PodRoute, PodRoutes, PodRoutesArgs

config = load_config()
try:
    plan = make_plan(config.settings)
except PlanError as error:
    # A RunError is reported without a Python traceback: the message names the setting.
    raise pulumi.RunError(f"invalid setting {error}") from None

network = Network("lab", NetworkArgs(
    plan=plan,
    availability_zone=(config.availability_zone
                       or default_availability_zone(plan.settings.instance_type)),
))
nodes = Nodes("lab", NodesArgs(
    plan=plan,
    ami_id=config.ami_id or latest_ubuntu_ami(plan.settings.instance_type),
    subnet_id=network.subnet.id,
    security_group_id=network.security_group.id,
    boot_dependencies=network.internet_access,
    ami_is_latest=config.ami_id is None,
))
routes = PodRoutes("lab-pods", PodRoutesArgs(
    route_table_id=network.route_table.id,
    routes=[PodRoute(m.node, m.instance.primary_network_interface_id) for m in nodes.members],
))

for name, value in stack_outputs(plan, network, nodes, routes).items():
    pulumi.export(name, value)

if config.bootstrap:
    cluster = ClusterBootstrap("lab-cluster", ClusterBootstrapArgs(
        plan=plan,
        nodes=[BootstrapNode(m.node, m.instance.public_ip, m.host_key.public_key_openssh,
                             m.instance.private_ip) for m in nodes.members],
        private_key=nodes.private_key_openssh,
        ssh_user=NODE_LOGIN,
    ), opts=pulumi.ResourceOptions(
        # SSH needs the instances; the Ready check needs cross-node pod routes in place.
        depends_on=[nodes, routes],
    ))
    pulumi.export("kubeconfig", cluster.kubeconfig)  # secret: additional_secret_outputs
    pulumi.export("checks", cluster.checks)  # connectivity check -> "pass" / "fail"

"""Policy tests of the real __main__.py under Pulumi's mocks (see conftest.py).

Each test runs the whole program and asserts one property of what it would create.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pulumi
import pytest
import yaml

from bootstrap.provider import OUTPUTS, installed_version
from infra.network import ZONE_FILTERS, choose_zone
from infra.plan import Settings, make_plan, settings_from_wire
from tests.bootstrap.test_provider import inputs as provider_test_inputs
from tests.infra.conftest import (
    AMI_ID,
    AMI_TOKEN,
    BOOTSTRAP,
    MOCK_KUBECONFIG,
    OFFERING_ZONES,
    OFFERINGS_TOKEN,
    ZONES,
    ZONES_TOKEN,
    Deployment,
    fake_public_key,
)

VPC = "aws:ec2/vpc:Vpc"
IGW = "aws:ec2/internetGateway:InternetGateway"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE = "aws:ec2/route:Route"
ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
INSTANCE = "aws:ec2/instance:Instance"
KEY_PAIR = "aws:ec2/keyPair:KeyPair"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
TAGGABLE = {VPC, IGW, SUBNET, ROUTE_TABLE, SECURITY_GROUP, INGRESS, EGRESS, INSTANCE, KEY_PAIR}

DEFAULT_PLAN = make_plan(Settings())
OPERATOR = "198.51.100.7/32"


def instances(lab: Deployment) -> dict[str, dict]:
    """Instance state keyed by node name (logical names are lab-<node>)."""
    return {name.removeprefix("lab-"): state
            for name, state in lab.registered(INSTANCE).items()}


def ingress(lab: Deployment) -> set[tuple]:
    return {(rule["ipProtocol"], rule.get("fromPort"), rule.get("toPort"), rule["cidrIpv4"])
            for rule in lab.registered(INGRESS).values()}


# --- network ---------------------------------------------------------------------------

@pulumi.runtime.test
def test_vpc_has_the_planned_cidr_and_dns(deploy):
    def check(lab: Deployment) -> None:
        vpc = lab.one(VPC)
        assert vpc["cidrBlock"] == "10.0.0.0/16"
        assert vpc["enableDnsSupport"] is True
        assert vpc["enableDnsHostnames"] is True
    return deploy().check(check)


@pulumi.runtime.test
def test_public_subnet_in_the_first_zone_that_offers_the_instance_type(deploy):
    def check(lab: Deployment) -> None:
        subnet = lab.one(SUBNET)
        assert subnet["cidrBlock"] == "10.0.1.0/24"
        assert subnet["vpcId"] == "lab-vpc-id"
        assert subnet["availabilityZone"] == OFFERING_ZONES[0] == ZONES[1]
        assert subnet["mapPublicIpOnLaunch"] is True
        assert lab.one(IGW)["vpcId"] == "lab-vpc-id"
        zones = [call.args for call in lab.mocks.calls if call.token == ZONES_TOKEN]
        assert zones == [{"state": "available", "filters": ZONE_FILTERS}]  # no Local zones
        offers = [call.args for call in lab.mocks.calls if call.token == OFFERINGS_TOKEN]
        assert offers == [{"locationType": "availability-zone",
                           "filters": [{"name": "instance-type", "values": ["t3.small"]}]}]
    return deploy().check(check)


def test_no_zone_offering_the_instance_type_names_the_settings():
    with pytest.raises(pulumi.RunError, match=r"offers t3\.small: set k8s-cni-lab:instanceType"):
        choose_zone(ZONES, ["us-east-1a"], "t3.small")


@pulumi.runtime.test
def test_availability_zone_setting_skips_the_lookup(deploy):
    def check(lab: Deployment) -> None:
        assert lab.one(SUBNET)["availabilityZone"] == "ap-southeast-1c"
        assert not {call.token for call in lab.mocks.calls} & {ZONES_TOKEN, OFFERINGS_TOKEN}
    return deploy({"availabilityZone": "ap-southeast-1c"}).check(check)


@pulumi.runtime.test
def test_default_route_to_the_gateway_and_subnet_association(deploy):
    def check(lab: Deployment) -> None:
        table = lab.one(ROUTE_TABLE)
        assert "routes" not in table, "routes must be separate Route resources, never inline"
        default = lab.registered(ROUTE)["lab-default-route"]
        assert default == {"routeTableId": "lab-routes-id",
                           "destinationCidrBlock": "0.0.0.0/0",
                           "gatewayId": "lab-igw-id"}
        association = lab.one(ASSOCIATION)
        assert association == {"subnetId": "lab-public-id", "routeTableId": "lab-routes-id"}
    return deploy().check(check)


# --- security group --------------------------------------------------------------------

@pulumi.runtime.test
def test_security_group_rules_are_exactly_the_planned_ones(deploy):
    def check(lab: Deployment) -> None:
        group = lab.one(SECURITY_GROUP)
        assert "ingress" not in group and "egress" not in group, "rules must not be inline"
        assert ingress(lab) == {
            ("tcp", 22, 22, OPERATOR),
            ("tcp", 6443, 6443, OPERATOR),
            ("-1", None, None, "10.0.0.0/16"),
            ("-1", None, None, "10.244.0.0/16"),
            ("icmp", -1, -1, "10.0.0.0/16"),
        }
        rules = [*lab.registered(INGRESS).values(), *lab.registered(EGRESS).values()]
        assert {rule["securityGroupId"] for rule in rules} == {"lab-nodes-id"}
        assert all(rule.get("description") for rule in rules)
        egress = lab.one(EGRESS)
        assert (egress["ipProtocol"], egress["cidrIpv4"]) == ("-1", "0.0.0.0/0")
    return deploy({"allowedCidrs": [OPERATOR]}).check(check)


@pulumi.runtime.test
def test_only_ssh_and_the_api_server_are_open_to_the_default_allowed_cidr(deploy):
    def check(lab: Deployment) -> None:
        from_anywhere = {(protocol, low, high) for protocol, low, high, cidr in ingress(lab)
                         if ipaddress.ip_network(cidr).prefixlen == 0}
        assert from_anywhere == {("tcp", 22, 22), ("tcp", 6443, 6443)}
    return deploy().check(check)


@pulumi.runtime.test
def test_each_allowed_cidr_gets_ssh_and_api_rules(deploy):
    allowed = ["198.51.100.7/32", "203.0.113.0/24"]

    def check(lab: Deployment) -> None:
        for port in (22, 6443):
            assert {cidr for protocol, low, _, cidr in ingress(lab)
                    if protocol == "tcp" and low == port} == set(allowed)
    return deploy({"allowedCidrs": allowed}).check(check)


# --- nodes -----------------------------------------------------------------------------

@pulumi.runtime.test
def test_one_instance_per_planned_node_with_its_private_ip(deploy):
    def check(lab: Deployment) -> None:
        nodes = instances(lab)
        assert sorted(nodes) == sorted(DEFAULT_PLAN.node_names())
        for node in DEFAULT_PLAN.nodes:
            state = nodes[node.name]
            assert state["privateIp"] == str(node.private_ip)
            assert state["instanceType"] == "t3.small"
            assert state["subnetId"] == "lab-public-id"
            assert state["vpcSecurityGroupIds"] == ["lab-nodes-id"]
            assert state["associatePublicIpAddress"] is True
            assert state["keyName"] == "lab-login-key"
    return deploy().check(check)


@pulumi.runtime.test
def test_source_dest_check_is_off_on_every_node(deploy):
    def check(lab: Deployment) -> None:
        assert {name: state["sourceDestCheck"] for name, state in instances(lab).items()} \
            == {name: False for name in DEFAULT_PLAN.node_names()}
    return deploy().check(check)


@pulumi.runtime.test
def test_imdsv2_is_required_with_one_hop(deploy):
    def check(lab: Deployment) -> None:
        for name, state in instances(lab).items():
            assert state["metadataOptions"] == {"httpEndpoint": "enabled",
                                                "httpTokens": "required",
                                                "httpPutResponseHopLimit": 1}, name
    return deploy().check(check)


@pulumi.runtime.test
def test_root_volume_is_encrypted_gp3_of_the_configured_size(deploy):
    def check(lab: Deployment) -> None:
        for name, state in instances(lab).items():
            volume = state["rootBlockDevice"]
            assert volume["encrypted"] is True, name
            assert volume["volumeType"] == "gp3", name
            assert volume["volumeSize"] == 30, name
            assert volume["deleteOnTermination"] is True, name
    return deploy({"rootVolumeGiB": "30"}).check(check)


@pulumi.runtime.test
def test_name_and_role_tags_on_instances(deploy):
    def check(lab: Deployment) -> None:
        for name, state in instances(lab).items():
            assert state["tags"]["Role"] == name
            assert state["tags"]["Name"] == f"k8s-cni-lab-dev-{name}"
    return deploy().check(check)


@pulumi.runtime.test
def test_every_taggable_resource_names_project_and_stack(deploy):
    def check(lab: Deployment) -> None:
        tagged = set()
        for type_ in TAGGABLE:
            for name, state in lab.registered(type_).items():
                assert state["tags"]["project"] == "k8s-cni-lab", name
                assert state["tags"]["stack"] == "dev", name
                assert state["tags"]["Name"].startswith("k8s-cni-lab-dev-"), name
                tagged.add(type_)
        assert tagged == TAGGABLE
        for name, state in instances(lab).items():
            assert state["rootBlockDevice"]["tags"]["stack"] == "dev", name
    return deploy().check(check)


@pulumi.runtime.test
def test_nodes_boot_only_after_the_internet_route_exists(deploy):
    def check(lab: Deployment) -> None:
        needed = {lab.urn_of(ROUTE, "lab-default-route"),
                  lab.urn_of(ASSOCIATION, "lab-public-routes")}
        for name in DEFAULT_PLAN.node_names():
            urn = lab.urn_of(INSTANCE, f"lab-{name}")
            assert needed <= set(lab.monitor.dependencies[urn]), name
    return deploy().check(check)


@pulumi.runtime.test
def test_user_data_change_replaces_the_instance_deleting_the_old_one_first(deploy):
    def check(lab: Deployment) -> None:
        for name, state in instances(lab).items():
            assert state["userDataReplaceOnChange"] is True, name
            # The new instance reuses the pinned private IP.
            assert lab.monitor.delete_before_replace[lab.urn_of(INSTANCE, f"lab-{name}")], name
    return deploy().check(check)


@pulumi.runtime.test
def test_user_data_installs_each_nodes_own_host_key(deploy):
    def check(lab: Deployment) -> None:
        keys = lab.registered(PRIVATE_KEY)
        for name, state in instances(lab).items():
            assert state["userData"].startswith("#cloud-config\n")
            document = yaml.safe_load(state["userData"])
            host_key = keys[f"lab-{name}-host-key"]
            assert host_key["algorithm"] == "ED25519"
            assert document["hostname"] == name
            assert document["ssh_keys"] == {
                "ed25519_private": host_key["privateKeyOpenssh"],
                "ed25519_public": host_key["publicKeyOpenssh"].strip(),
            }
            assert "v1.37/deb/" in yaml.safe_load(state["userData"])["write_files"][-1][
                "content"]
    return deploy({"kubernetesVersion": "1.37"}).check(check)


@pulumi.runtime.test
def test_login_key_is_ed25519_registered_as_a_key_pair(deploy):
    def check(lab: Deployment) -> None:
        login = lab.registered(PRIVATE_KEY)["lab-login-key"]
        assert login["algorithm"] == "ED25519"
        assert lab.one(KEY_PAIR)["publicKey"] == login["publicKeyOpenssh"]
    return deploy().check(check)


# --- AMI -------------------------------------------------------------------------------

def ami_lookups(lab: Deployment) -> list[dict]:
    return [call.args for call in lab.mocks.calls if call.token == AMI_TOKEN]


@pulumi.runtime.test
def test_default_ami_is_the_latest_canonical_ubuntu_lts(deploy):
    def check(lab: Deployment) -> None:
        (lookup,) = ami_lookups(lab)
        assert lookup["owners"] == ["099720109477"]
        assert lookup["mostRecent"] is True
        filters = {f["name"]: f["values"] for f in lookup["filters"]}
        assert filters["name"] == [
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
        assert filters["virtualization-type"] == ["hvm"]
        for name, state in instances(lab).items():
            assert state["ami"] == AMI_ID, name
            urn = lab.urn_of(INSTANCE, f"lab-{name}")
            # A newer image must not replace a running cluster.
            assert lab.monitor.ignore_changes[urn] == ["ami"]
    return deploy().check(check)


@pulumi.runtime.test
def test_graviton_instance_types_get_the_arm64_image(deploy):
    def check(lab: Deployment) -> None:
        (lookup,) = ami_lookups(lab)
        name_filter = next(f for f in lookup["filters"] if f["name"] == "name")
        assert name_filter["values"] == [
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-*"]
    return deploy({"instanceType": "t4g.small"}).check(check)


@pulumi.runtime.test
def test_ami_setting_is_used_without_a_lookup(deploy):
    def check(lab: Deployment) -> None:
        assert ami_lookups(lab) == []
        for name, state in instances(lab).items():
            assert state["ami"] == "ami-0123456789abcdef0"
            assert lab.monitor.ignore_changes[lab.urn_of(INSTANCE, f"lab-{name}")] == []
    return deploy({"amiId": "ami-0123456789abcdef0"}).check(check)


# --- pod routes ------------------------------------------------------------------------

@pulumi.runtime.test
def test_one_pod_route_per_node_to_its_own_eni(deploy):
    def check(lab: Deployment) -> None:
        routes = {name: state for name, state in lab.registered(ROUTE).items()
                  if name.startswith("lab-pods-")}
        assert len(routes) == 4
        for node in make_plan(Settings(node_count=4)).nodes:
            assert routes[f"lab-pods-{node.name}"] == {
                "routeTableId": "lab-routes-id",
                "destinationCidrBlock": str(node.pod_cidr),
                "networkInterfaceId": f"eni-lab-{node.name}",
            }
    return deploy({"nodeCount": "4"}).check(check)


# --- structure, outputs, errors --------------------------------------------------------

@pulumi.runtime.test
def test_every_resource_belongs_to_a_component(deploy):
    # The bootstrap is one resource of its own, with no children.
    components = {"k8s-cni-lab:infra:Network", "k8s-cni-lab:infra:Nodes",
                  "k8s-cni-lab:infra:PodRoutes", BOOTSTRAP}

    def check(lab: Deployment) -> None:
        for urn in lab.monitor.resources:
            parent_type = urn.split("::")[2].split("$")[0]
            assert parent_type in components | {"pulumi:pulumi:Stack"}, urn
            if parent_type == "pulumi:pulumi:Stack":
                assert urn.split("::")[2].split("$")[1] in components, urn
    return deploy().check(check)


@pulumi.runtime.test
def test_outputs_describe_every_node(deploy):
    def check(outputs: dict) -> None:
        for node in DEFAULT_PLAN.nodes:
            entry = outputs["nodes"][node.name]
            public_ip = outputs["publicIpsByNode"][node.name]
            assert entry == {
                "role": node.role,
                "publicIp": public_ip,
                "privateIp": str(node.private_ip),
                "podCidr": str(node.pod_cidr),
                "gateway": str(node.gateway),
                "hostPublicKey": f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5lab-{node.name}-host-key",
                "eniId": f"eni-lab-{node.name}",
                "instanceId": f"lab-{node.name}-id",
            }
            assert outputs["privateIpsByNode"][node.name] == str(node.private_ip)
            assert outputs["podCidrsByNode"][node.name] == str(node.pod_cidr)
            assert outputs["eniIds"][node.name] == entry["eniId"]
            assert outputs["hostPublicKeys"][node.name] == entry["hostPublicKey"]
            assert f"{public_ip} {entry['hostPublicKey']}\n" in outputs["knownHosts"]
            assert outputs["sshCommands"][node.name] == (
                "ssh -i k8s-cni-lab-dev.pem -o UserKnownHostsFile=k8s-cni-lab-dev.known_hosts "
                f"-o StrictHostKeyChecking=yes ubuntu@{public_ip}")
        assert sorted(outputs["publicIpsByNode"]) == ["master", "worker-1", "worker-2"]
        assert outputs["routeTableId"] == "lab-routes-id"
        assert outputs["podRoutes"] == {
            node.name: {"destination": str(node.pod_cidr),
                        "networkInterfaceId": f"eni-lab-{node.name}"}
            for node in DEFAULT_PLAN.nodes}
        assert outputs["keyPairName"] == "lab-login-key"
        assert outputs["sshUser"] == "ubuntu"
        assert outputs["privateKey"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert (outputs["kubernetesVersion"], outputs["podCidr"], outputs["serviceCidr"]) \
            == ("1.36", "10.244.0.0/16", "10.96.0.0/12")
        # A tool reading the outputs makes the very plan the program made.
        assert make_plan(settings_from_wire(outputs["settings"])) == DEFAULT_PLAN
    return deploy().check_outputs(check)


@pulumi.runtime.test
def test_private_key_and_kubeconfig_are_the_only_secret_outputs(deploy):
    lab = deploy()

    async def check() -> None:
        await pulumi.Output.all(*[resource.urn for resource in lab.resources]).future()
        secret = {name for name, value in lab.outputs.items()
                  if await pulumi.Output.from_input(value).is_secret()}
        assert secret == {"privateKey", "kubeconfig"}
        # The host keys' private halves travel in user data, which must stay secret too.
        for member in lab.namespace["nodes"].members:
            assert await member.instance.user_data.is_secret(), member.node.name
            assert await member.host_key.private_key_openssh.is_secret(), member.node.name

    return asyncio.ensure_future(check())


# --- cluster bootstrap ---------------------------------------------------------------

@pulumi.runtime.test
def test_bootstrap_gets_each_nodes_address_and_pinned_host_key(deploy):
    def check(lab: Deployment) -> None:
        bootstrap = lab.one(BOOTSTRAP)
        public_ips = {name: state["publicIp"] for name, state in instances(lab).items()}
        assert bootstrap["nodes"] == [
            {"name": node.name, "publicIp": public_ips[node.name], "sshPort": 22,
             "hostKey": fake_public_key(f"lab-{node.name}-host-key"),
             "privateIp": str(node.private_ip)}
            for node in DEFAULT_PLAN.nodes]
        assert bootstrap["sshUser"] == "ubuntu"
        assert bootstrap["privateKey"] == lab.registered(PRIVATE_KEY)["lab-login-key"][
            "privateKeyOpenssh"]
        assert bootstrap["settings"]["kubernetes_version"] == "1.37"
        assert bootstrap["version"] == installed_version(
            make_plan(Settings(kubernetes_version="1.37")))
        assert bootstrap["sshDeadlineSeconds"] == 180
        assert bootstrap["__provider"]  # the pickled BootstrapProvider
        # The provider's tests feed it input bags of this very shape.
        sent = provider_test_inputs()
        assert set(bootstrap) - {"__provider", *OUTPUTS} == set(sent)
        assert set(bootstrap["nodes"][0]) == set(sent["nodes"][0])
    return deploy({"kubernetesVersion": "1.37"}).check(check)


@pulumi.runtime.test
def test_bootstrap_key_is_a_secret_input_and_its_kubeconfig_a_secret_output(deploy):
    def check(lab: Deployment) -> None:
        urn = lab.urn_of(BOOTSTRAP, "lab-cluster")
        assert "privateKey" in lab.monitor.secret_inputs[urn]
        assert set(lab.monitor.additional_secret_outputs[urn]) == {"privateKey", "kubeconfig"}
    return deploy().check(check)


@pulumi.runtime.test
def test_bootstrap_waits_for_the_nodes_and_pod_routes(deploy):
    def check(lab: Deployment) -> None:
        needed = {lab.urn_of(INSTANCE, f"lab-{name}") for name in DEFAULT_PLAN.node_names()}
        needed |= {lab.urn_of(ROUTE, f"lab-pods-{name}") for name in DEFAULT_PLAN.node_names()}
        assert needed <= set(lab.monitor.dependencies[lab.urn_of(BOOTSTRAP, "lab-cluster")])
    return deploy().check(check)


@pulumi.runtime.test
def test_kubeconfig_and_checks_outputs_are_the_bootstraps(deploy):
    def check(outputs: dict) -> None:
        assert outputs["kubeconfig"] == MOCK_KUBECONFIG
        assert outputs["checks"] == {"pod to pod, across nodes": "pass"}
    return deploy().check_outputs(check)


@pulumi.runtime.test
def test_bootstrap_false_registers_no_bootstrap_and_no_kubeconfig(deploy):
    lab = deploy({"bootstrap": "false"})

    def check(lab: Deployment) -> None:
        assert lab.registered(BOOTSTRAP) == {}
        assert "kubeconfig" not in lab.outputs and "checks" not in lab.outputs
        assert len(instances(lab)) == 3
    return lab.check(check)


@pytest.mark.parametrize(("config", "setting"), [
    ({"nodeCount": "1"}, "nodeCount"),
    ({"instanceType": "t3.micro"}, "instanceType"),
    ({"kubernetesVersion": "1.31"}, "kubernetesVersion"),
    ({"podCidr": "10.0.128.0/17"}, "podCidr"),
    ({"allowedCidrs": ["not-a-cidr"]}, "allowedCidrs"),
])
def test_invalid_settings_stop_the_program_naming_the_setting(deploy, config, setting):
    with pytest.raises(pulumi.RunError, match=f"^invalid setting {setting}: .*Fix: "):
        deploy(config)


def test_allowed_cidrs_must_be_a_list_of_strings(deploy):
    with pytest.raises(pulumi.RunError, match="allowedCidrs: expected a list"):
        deploy({"allowedCidrs": {"cidr": "198.51.100.7/32"}})


def test_non_integer_node_count_names_the_key(deploy):
    with pytest.raises(pulumi.ConfigTypeError, match="nodeCount"):
        deploy({"nodeCount": "three"})

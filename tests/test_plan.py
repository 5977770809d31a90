"""The address plan: one test per validation error, and properties of every valid plan."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.config import PLAN_KEYS
from infra.plan import PlanError, Settings, make_plan

DEFAULTS = Settings()


def refused(**changes) -> PlanError:
    with pytest.raises(PlanError) as caught:
        make_plan(replace(DEFAULTS, **changes))
    return caught.value


# --- the default plan ------------------------------------------------------------------

def test_default_plan_matches_the_lab_layout():
    plan = make_plan()
    assert plan.node_names() == ["master", "worker-1", "worker-2"]
    assert [n.role for n in plan.nodes] == ["control-plane", "worker", "worker"]
    assert [str(n.private_ip) for n in plan.nodes] == ["10.0.1.10", "10.0.1.11", "10.0.1.12"]
    assert [str(n.pod_cidr) for n in plan.nodes] == [
        "10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert [str(n.gateway) for n in plan.nodes] == ["10.244.0.1", "10.244.1.1", "10.244.2.1"]
    assert plan.control_plane.name == "master"
    assert plan.workers == plan.nodes[1:]
    assert plan.node("worker-2").index == 2
    with pytest.raises(KeyError, match="worker-9"):
        plan.node("worker-9")


def test_plan_error_message_names_setting_problem_and_fix():
    error = PlanError("nodeCount", "too many", "use fewer")
    assert str(error) == "nodeCount: too many. Fix: use fewer"
    assert (error.setting, error.problem, error.fix) == ("nodeCount", "too many", "use fewer")


# --- one test per validation error ------------------------------------------------------

@pytest.mark.parametrize(("field", "setting"), [
    ("vpc_cidr", "vpcCidr"), ("subnet_cidr", "subnetCidr"), ("pod_cidr", "podCidr"),
    ("service_cidr", "serviceCidr"),
])
def test_malformed_cidr(field, setting):
    error = refused(**{field: "10.0.0.300/16"})
    assert error.setting == setting
    assert "is not a CIDR" in error.problem


def test_malformed_allowed_cidr():
    error = refused(allowed_cidrs=("198.51.100.7/32", "my-laptop"))
    assert error.setting == "allowedCidrs"
    assert "'my-laptop' is not a CIDR" in error.problem


def test_ipv6_cidr():
    error = refused(pod_cidr="fd00:244::/48")
    assert (error.setting, error.fix) == ("podCidr", "use an IPv4 CIDR; the lab is IPv4 only")


def test_cidr_with_host_bits():
    error = refused(subnet_cidr="10.0.1.5/24")
    assert error.setting == "subnetCidr"
    assert error.fix == "use 10.0.1.0/24"


@pytest.mark.parametrize(("field", "setting", "value"), [
    ("vpc_cidr", "vpcCidr", "10.0.0.0/8"),
    ("subnet_cidr", "subnetCidr", "10.0.1.0/29"),
])
def test_block_size_outside_what_aws_accepts(field, setting, value):
    error = refused(**{field: value})
    assert error.setting == setting
    assert "AWS accepts /16 to /28" in error.problem


def test_subnet_outside_the_vpc():
    error = refused(subnet_cidr="10.1.1.0/24")
    assert error.setting == "subnetCidr"
    assert "outside the VPC 10.0.0.0/16" in error.problem


def test_pod_cidr_overlapping_the_vpc():
    error = refused(pod_cidr="10.0.128.0/17", node_prefix=24)
    assert error.setting == "podCidr"
    assert "overlaps the VPC" in error.problem


def test_service_cidr_overlapping_the_vpc():
    error = refused(service_cidr="10.0.0.0/12")
    assert error.setting == "serviceCidr"
    assert "overlaps the VPC" in error.problem


def test_pod_cidr_overlapping_the_service_cidr():
    error = refused(pod_cidr="10.96.0.0/16")
    assert error.setting == "podCidr"
    assert "overlaps the service CIDR" in error.problem


@pytest.mark.parametrize("prefix", [15, 31])
def test_node_prefix_that_does_not_fit_the_pod_cidr(prefix):
    error = refused(node_prefix=prefix)
    assert error.setting == "nodePrefix"
    assert "does not fit the pod CIDR" in error.problem


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_one_worker(count):
    error = refused(node_count=count)
    assert error.setting == "nodeCount"
    assert "leaves no worker" in error.problem


def test_more_nodes_than_pod_cidr_node_subnets():
    error = refused(pod_cidr="10.244.0.0/22", node_count=5)
    assert error.setting == "nodeCount"
    assert "has only 4 /24 node subnets" in error.problem


def test_more_nodes_than_the_route_table_quota_points_at_the_quota():
    error = refused(node_count=50)
    assert error.setting == "nodeCount"
    assert "route table quota of 50 routes" in error.problem
    assert "Service Quotas" in error.fix and "routeLimit" in error.fix


def test_a_raised_route_limit_allows_more_nodes():
    plan = make_plan(replace(DEFAULTS, node_count=60, route_limit=100))
    assert len(plan.nodes) == 60


def test_more_nodes_than_the_subnet_holds():
    error = refused(subnet_cidr="10.0.1.0/28", node_count=6)
    assert error.setting == "nodeCount"
    assert "do not fit in the subnet" in error.problem


@pytest.mark.parametrize("instance_type", ["t3.micro", "t3.nano", "t2.small", "t2.micro"])
def test_control_plane_instance_below_the_kubeadm_minimum(instance_type):
    error = refused(instance_type=instance_type)
    assert error.setting == "instanceType"
    assert "kubeadm needs 2 vCPU" in error.problem


@pytest.mark.parametrize("instance_type", ["t3.small", "t3.medium", "m7i.large", "c5.xlarge"])
def test_instance_types_at_or_above_the_minimum_or_unknown_are_accepted(instance_type):
    assert make_plan(replace(DEFAULTS, instance_type=instance_type))


@pytest.mark.parametrize("version", ["1.31", "1.34", "1.38", "1.36.2", "v1.36"])
def test_unsupported_kubernetes_version(version):
    error = refused(kubernetes_version=version)
    assert error.setting == "kubernetesVersion"
    assert "1.35, 1.36, 1.37" in error.fix


def test_empty_allowed_cidrs():
    error = refused(allowed_cidrs=())
    assert error.setting == "allowedCidrs"
    assert "nobody could reach SSH" in error.problem


@pytest.mark.parametrize("size", [7, 16385])
def test_root_volume_out_of_range(size):
    assert refused(root_volume_gib=size).setting == "rootVolumeGiB"


# --- properties -------------------------------------------------------------------------

valid_settings = st.builds(
    Settings,
    node_count=st.integers(min_value=2, max_value=49),
    node_prefix=st.integers(min_value=22, max_value=28),
    pod_cidr=st.sampled_from(["10.244.0.0/16", "10.200.0.0/14", "172.16.0.0/12",
                              "192.168.0.0/16"]),
    subnet_cidr=st.sampled_from(["10.0.1.0/24", "10.0.0.0/20", "10.0.255.0/25"]),
    kubernetes_version=st.sampled_from(["1.35", "1.36", "1.37"]),
)


@settings(max_examples=200, deadline=None)
@given(valid_settings)
def test_every_valid_plan_is_consistent(chosen):
    plan = make_plan(chosen)
    nodes = plan.nodes
    assert len(nodes) == chosen.node_count
    assert [n.name for n in nodes] == ["master"] + [f"worker-{i}" for i in range(1, len(nodes))]
    assert [n.index for n in nodes] == list(range(len(nodes)))
    assert [n.role for n in nodes] == ["control-plane"] + ["worker"] * (len(nodes) - 1)
    for node in nodes:
        assert node.pod_cidr.subnet_of(plan.pod_network)
        assert node.pod_cidr.prefixlen == chosen.node_prefix
        assert node.pod_cidr.network_address == plan.pod_network.network_address + (
            node.index * node.pod_cidr.num_addresses)
        assert node.gateway == node.pod_cidr.network_address + 1
        assert node.private_ip in plan.subnet
        # AWS keeps the first four addresses and the last one of a subnet.
        assert plan.subnet.network_address + 4 <= node.private_ip < plan.subnet[-1]
        assert not node.pod_cidr.overlaps(plan.vpc)
        assert not node.pod_cidr.overlaps(plan.service_network)
    pod_cidrs = [n.pod_cidr for n in nodes]
    assert all(not a.overlaps(b) for i, a in enumerate(pod_cidrs) for b in pod_cidrs[i + 1:])
    assert len({n.private_ip for n in nodes}) == len(nodes)


cidr_text = st.one_of(
    st.builds(lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}/{p}", *[st.integers(0, 255)] * 4,
              st.integers(0, 32)),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(vpc=cidr_text, subnet=cidr_text, pods=cidr_text, services=cidr_text,
       count=st.integers(-1, 300), prefix=st.integers(0, 32))
def test_any_settings_give_a_plan_or_a_plan_error_naming_a_real_setting(
        vpc, subnet, pods, services, count, prefix):
    chosen = Settings(vpc_cidr=vpc, subnet_cidr=subnet, pod_cidr=pods, service_cidr=services,
                      node_count=count, node_prefix=prefix)
    try:
        plan = make_plan(chosen)
    except PlanError as error:
        assert error.setting in PLAN_KEYS, error.setting
        assert str(error).startswith(f"{error.setting}: ")
        assert error.fix
    else:
        assert plan.subnet.subnet_of(plan.vpc)
        assert not plan.pod_network.overlaps(plan.vpc)
        assert len(plan.nodes) == count
        assert all(ipaddress.ip_address(n.private_ip) in plan.subnet for n in plan.nodes)

"""The simulated VPC's layout, derived from the same plan as the Pulumi program (no root)."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from infra.plan import Settings, make_plan
from lab.layout import PUBLIC_IPS, make_layout
from lab.network import igw_rules


def test_nodes_mirror_the_plan_and_get_public_addresses_in_a_documentation_range():
    plan = make_plan()
    layout = make_layout(plan, "t1")
    assert [n.name for n in layout.nodes] == ["master", "worker-1", "worker-2"]
    assert [n.planned for n in layout.nodes] == list(plan.nodes)
    assert all(n.public_ip in PUBLIC_IPS for n in layout.nodes)
    assert layout.nodes[1].public_ip == IPv4Address("203.0.113.11")
    assert str(layout.router_ip) == "10.0.1.1/24"


def test_every_namespace_and_host_link_carries_the_lab_prefix():
    layout = make_layout(make_plan(Settings(node_count=12)), "abc")
    assert all(ns.startswith("abc-") for ns in layout.namespaces)
    assert len(set(layout.namespaces)) == 3 + 12


@pytest.mark.parametrize("name", ["", "Lab", "1lab", "a" * 21, "a-b"])
def test_bad_lab_names_are_refused(name):
    with pytest.raises(ValueError, match="lowercase"):
        make_layout(make_plan(), name)


def test_igw_translates_only_node_addresses_and_drops_everything_else():
    layout = make_layout(make_plan(), "t1")
    rules = igw_rules(layout)
    assert ":FORWARD DROP" in rules
    for node in layout.nodes:
        private = node.planned.private_ip
        assert f"-d {node.public_ip} -j DNAT --to-destination {private}" in rules
        assert f"-s {private} -j SNAT --to-source {node.public_ip}" in rules
    pods = IPv4Network("10.244.0.0/16")
    assert not any(str(pods.network_address)[:6] in line for line in rules.splitlines()
                   if "ACCEPT" in line), "no pod address may cross the gateway"

"""The simulated VPC's layout, derived from the same plan as the Pulumi program (no root)."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from infra.plan import Settings, make_plan
from lab.layout import INTERNET_HOST, PUBLIC_IPS, lab_layout, make_layout
from lab.network import checked_ports, igw_rules, source_dest_check_commands


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


def test_the_internet_reaches_nodes_only_where_the_security_group_lets_it():
    """The lab's plan opens SSH and the API server to the internet host alone (the
    operator's address); the VPC and pod sources never cross the gateway."""
    layout = lab_layout("t1")
    assert layout.plan.allowed == (IPv4Network(f"{INTERNET_HOST.ip}/32"),)
    inbound = [line for line in igw_rules(layout).splitlines() if "-i wan -o vpc" in line]
    assert inbound == [
        f"-A FORWARD -i wan -o vpc -s {INTERNET_HOST.ip}/32 -d {node.planned.private_ip} "
        f"-p tcp --dport {port} -j ACCEPT"
        for node in layout.nodes for port in (22, 6443)]


def test_an_open_security_group_lets_in_everything_it_names_and_only_that():
    layout = make_layout(make_plan(Settings(allowed_cidrs=("0.0.0.0/0", "192.0.2.0/28"))), "t1")
    inbound = {line.split(" -d ")[0] + " " + line.split(" -p ")[1]
               for line in igw_rules(layout).splitlines() if "-i wan -o vpc" in line}
    assert inbound == {f"-A FORWARD -i wan -o vpc -s {cidr} tcp --dport {port} -j ACCEPT"
                       for cidr in ("0.0.0.0/0", "192.0.2.0/28") for port in (22, 6443)}


def test_the_source_destination_check_is_read_back_from_the_rules_it_adds():
    layout = make_layout(make_plan(), "t1")
    worker = layout.nodes[1]
    commands = source_dest_check_commands(layout, worker, True)
    assert commands == [
        "ip netns exec t1-router ebtables -t nat -A PREROUTING -i n1 -p IPv4 "
        "--ip-src ! 10.0.1.11 -j DROP",
        "ip netns exec t1-router ebtables -t nat -A POSTROUTING -o n1 -p IPv4 "
        "--ip-dst ! 10.0.1.11 -j DROP"]
    assert [c.replace(" -A ", " -D ") for c in commands] == \
        source_dest_check_commands(layout, worker, False)
    # What `ebtables -t nat -L` prints with the check on for worker-1 (recorded).
    listing = ("Bridge table: nat\n\nBridge chain: PREROUTING, entries: 1, policy: ACCEPT\n"
               "-p IPv4 -i n1 --ip-src ! 10.0.1.11 -j DROP\n\n"
               "Bridge chain: OUTPUT, entries: 0, policy: ACCEPT\n\n"
               "Bridge chain: POSTROUTING, entries: 1, policy: ACCEPT\n"
               "-p IPv4 -o n1 --ip-dst ! 10.0.1.11 -j DROP\n")
    assert checked_ports(layout, listing) == {"master": False, "worker-1": True,
                                              "worker-2": False}
    assert checked_ports(layout, listing.replace(" n1 ", " n10 ")) == dict.fromkeys(
        ["master", "worker-1", "worker-2"], False)

"""Likely causes of failed checks, from node facts (pure: iptables-save text in, words out)."""

import pytest

from bootstrap.verify.checks import Endpoint, lab_checks, run_checks
from bootstrap.verify.diagnose import (
    NodeFacts,
    VpcFacts,
    failure_causes,
    likely_cause,
    parse_node_facts,
)
from tests.verify.test_checks import INTERNET, PLAN, PODS, PUBLIC, ScriptedProber

CLUSTER = "10.244.0.0/16"
HEALTHY = """1
#--
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:LAB-FWD - [0:0]
-A FORWARD -m comment --comment "k8s-cni-lab: pod traffic" -j LAB-FWD
-A LAB-FWD -s 10.244.0.0/16 -m comment --comment "k8s-cni-lab: from pods" -j ACCEPT
-A LAB-FWD -d 10.244.0.0/16 -m comment --comment "k8s-cni-lab: to pods" -j ACCEPT
COMMIT
#--
*nat
:POSTROUTING ACCEPT [0:0]
:LAB-POSTRTG - [0:0]
-A POSTROUTING -j LAB-POSTRTG
-A LAB-POSTRTG -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE
COMMIT
"""
BARE = """0
#--
*filter
:FORWARD DROP [0:0]
COMMIT
#--
*nat
:POSTROUTING ACCEPT [0:0]
COMMIT
"""
SEED_LAB_NAT = BARE.replace("0\n", "1\n", 1).replace(
    ":POSTROUTING ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.244.1.0/24 ! -o cni0 -j MASQUERADE")


def test_facts_of_a_configured_node():
    facts = parse_node_facts(HEALTHY, "10.244.1.0/24", CLUSTER)
    assert facts == NodeFacts(forwarding=True, forward_policy="DROP", forward_accepts_pods=True,
                              masquerades_outbound=True, masquerades_cluster=False)


def test_facts_of_a_bare_node_and_of_the_seed_labs_nat_rule():
    assert parse_node_facts(BARE, "10.244.1.0/24", CLUSTER) == NodeFacts(
        False, "DROP", False, False, False)
    seed = parse_node_facts(SEED_LAB_NAT, "10.244.1.0/24", CLUSTER)
    assert seed.masquerades_outbound and seed.masquerades_cluster


def test_a_rule_for_another_nodes_pods_does_not_count():
    assert not parse_node_facts(HEALTHY, "10.244.2.0/24", CLUSTER).masquerades_outbound


def outcomes_by_name(prober):
    checks = lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80)
    return {o.check.name: o for o in run_checks(prober, checks)}


class Silent:
    """Nothing answers: every probe fails."""

    def run(self, source: Endpoint, argv):
        return 1, "unreachable: timed out"


def facts_everywhere(text: str, pod_cidrs=("10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24")):
    names = [node.name for node in PLAN.nodes]
    return {name: parse_node_facts(text, cidr, CLUSTER)
            for name, cidr in zip(names, pod_cidrs, strict=True)}


# The lab's VPC as the plan sets it: every pod CIDR routed, no source/destination check.
ROUTED = VpcFacts(routed=dict.fromkeys(PLAN.node_names(), True),
                  source_dest_check=dict.fromkeys(PLAN.node_names(), False))


@pytest.mark.parametrize(("facts_text", "routed", "check", "cause"), [
    (BARE, True, "pod to pod, same node", "FORWARD dropped on worker-1"),
    (BARE, True, "pod to pod, across nodes", "forwarding off on worker-1"),
    (HEALTHY, False, "pod to pod, across nodes", "no route"),
    (HEALTHY.replace("-A LAB-POSTRTG -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE", ""),
     True, "pod to internet", "no NAT on worker-1"),
])
def test_each_failure_gets_its_cause(facts_text, routed, check, cause):
    outcome = outcomes_by_name(Silent())[check]
    vpc = VpcFacts(routed=dict.fromkeys(PLAN.node_names(), routed))
    assert cause in likely_cause(outcome, facts_everywhere(facts_text), vpc)


def test_nat_inside_the_cluster_is_named_as_such():
    outcome = outcomes_by_name(ScriptedProber(nat_inside=True))["pod to pod, across nodes"]
    cause = likely_cause(outcome, facts_everywhere(SEED_LAB_NAT), VpcFacts())
    assert "NAT inside the cluster: worker-1" in cause and "! -d" in cause


def test_an_unknown_route_is_named_as_what_to_check_not_as_the_cause():
    """The cloud cannot read the VPC's route table from the nodes: the VPC is unknown."""
    outcome = outcomes_by_name(Silent())["pod to pod, across nodes"]
    cause = likely_cause(outcome, facts_everywhere(HEALTHY), VpcFacts())
    assert cause.startswith("unreachable: timed out; the nodes' rules look right: check the "
                            "VPC route for worker-2's pod CIDR")
    assert "no route" not in cause
    known = likely_cause(outcome, facts_everywhere(HEALTHY), ROUTED)
    assert known == "unreachable: timed out (no known cause matched)"  # the lab's as before


@pytest.mark.parametrize(("checked", "check", "blamed"), [
    ("worker-1", "pod to pod, across nodes", "worker-1"),  # it sends a pod's address
    ("worker-1", "pod to pod, across nodes (back)", "worker-1"),  # it receives one
    ("worker-2", "node to pod", "worker-2"),
    ("master", "pod to pod, across nodes", None),  # not on the path
])
def test_the_source_destination_check_is_blamed_where_pod_addresses_cross(
        checked: str, check: str, blamed: str | None) -> None:
    outcome = outcomes_by_name(Silent())[check]
    vpc = VpcFacts(ROUTED.routed, {**ROUTED.source_dest_check, checked: True})
    cause = likely_cause(outcome, facts_everywhere(HEALTHY), vpc)
    if blamed:
        assert cause.startswith(f"source/destination check on {blamed}:")
    else:
        assert "source/destination" not in cause


def test_facts_are_read_only_when_a_check_failed():
    reads = []

    def read_facts():
        reads.append(1)
        return facts_everywhere(BARE)

    passing = run_checks(ScriptedProber(), lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80))
    assert failure_causes(passing, read_facts, VpcFacts()) == {} and reads == []
    failing = run_checks(ScriptedProber(nat_inside=True),
                         lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80))
    causes = failure_causes(failing, read_facts, VpcFacts())
    assert list(causes) == ["pod to pod, across nodes", "pod to pod, across nodes (back)",
                            "large answer, across nodes"]
    assert reads == [1]


# -- the node's links, bridge, CNI config and pods (the sections after the nat table) ---------

LINKS = """1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT
2: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT
3: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT
4: veth1a2b3c4d@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master cni0 state UP
"""
BRIDGE_ADDR = "3: cni0    inet 10.244.1.1/24 brd 10.244.1.255 scope global cni0\n"
DEFAULT = "default via 10.0.1.1 dev eth0\n"
CONFLIST = '{"plugins": [{"type": "lab-cni", "subnet": "10.244.1.0/24"}]}\n'
POD_ROUTES = "nginx-worker-1 default via 10.244.1.1 dev eth0\n" \
             "bash-worker-1 default via 10.244.1.1 dev eth0\n"


def recorded(filter_nat: str = HEALTHY, links: str = LINKS, addresses: str = BRIDGE_ADDR,
             conflist: str = CONFLIST, pods: str = POD_ROUTES) -> str:
    """FACTS_COMMAND's whole output on worker-1, as a healthy node prints it unless told."""
    return "#--\n".join([filter_nat.rstrip("\n") + "\n", links, addresses, DEFAULT, conflist,
                         pods])


def worker_1_facts(text: str) -> dict[str, NodeFacts]:
    healthy = parse_node_facts(recorded(), "10.244.1.0/24", CLUSTER, "10.244.1.1/24")
    return {"master": healthy, "worker-2": healthy,
            "worker-1": parse_node_facts(text, "10.244.1.0/24", CLUSTER, "10.244.1.1/24")}


def test_a_healthy_node_gives_no_cause_among_the_new_facts():
    facts = parse_node_facts(recorded(), "10.244.1.0/24", CLUSTER, "10.244.1.1/24")
    assert (facts.bridge_up, facts.bridge_missing_gateway, facts.bridge_mtu) == (True, "", 1500)
    assert (facts.uplink, facts.uplink_mtu, facts.conflist_mismatch) == ("eth0", 1500, "")
    assert facts.pods_without_default_route == () and facts.forward_one_way == ""


@pytest.mark.parametrize(("text", "check", "cause"), [
    (recorded(links=LINKS.replace("3: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP>",
                                  "3: cni0: <BROADCAST,MULTICAST>")),
     "pod to pod, same node", "the bridge cni0 is down on worker-1"),
    (recorded(addresses=""), "pod to internet",
     "cni0 on worker-1 lacks the pod gateway address 10.244.1.1/24"),
    (recorded(links=LINKS.replace("eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500",
                                  "eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1400")),
     "large answer, across nodes", "MTU mismatch on worker-1: eth0 has MTU 1400, less than "
                                   "the pods' 1500"),
    (recorded(conflist=CONFLIST.replace("10.244.1.0/24", "10.244.255.0/24")),
     "pod to pod, across nodes", "pod CIDR mismatch on worker-1: its CNI config gives pods "
                                 "10.244.255.0/24"),
    (recorded(pods=POD_ROUTES.replace("bash-worker-1 default via 10.244.1.1 dev eth0",
                                      "bash-worker-1")),
     "pod to internet", "bash-worker-1 on worker-1 has no default route"),
    (recorded(filter_nat=HEALTHY.replace(
        '-A LAB-FWD -d 10.244.0.0/16 -m comment --comment "k8s-cni-lab: to pods" -j ACCEPT\n',
        "")),
     "pod to internet", "FORWARD on worker-1 accepts pod traffic one way only (from pods)"),
])
def test_each_node_fault_gets_its_cause_from_recorded_facts(text, check, cause):
    outcome = outcomes_by_name(Silent())[check]
    assert cause in likely_cause(outcome, worker_1_facts(text), ROUTED)


def test_the_pods_own_subnet_is_not_blamed_on_its_route_or_the_cni_config():
    """Pod to pod on one node stays on the bridge: a missing default route or a CNI config
    with another subnet does not explain its failure."""
    outcome = outcomes_by_name(Silent())["pod to pod, same node"]
    text = recorded(pods="bash-worker-1\n",
                    conflist=CONFLIST.replace("10.244.1.0/24", "10.244.255.0/24"))
    cause = likely_cause(outcome, worker_1_facts(text), ROUTED)
    assert "default route" not in cause and "mismatch" not in cause


def test_a_conntrack_rule_makes_one_way_rules_enough():
    text = HEALTHY.replace(
        '-A LAB-FWD -d 10.244.0.0/16 -m comment --comment "k8s-cni-lab: to pods" -j ACCEPT',
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    assert parse_node_facts(text, "10.244.1.0/24", CLUSTER).forward_one_way == ""

"""Likely causes of failed checks, from node facts (pure: iptables-save text in, words out)."""

import pytest

from bootstrap.verify.checks import Endpoint, lab_checks, run_checks
from bootstrap.verify.diagnose import NodeFacts, failure_causes, likely_cause, parse_node_facts
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


@pytest.mark.parametrize(("facts_text", "routed", "check", "cause"), [
    (BARE, True, "pod to pod, same node", "FORWARD dropped on worker-1"),
    (BARE, True, "pod to pod, across nodes", "forwarding off on worker-1"),
    (HEALTHY, False, "pod to pod, across nodes", "no route"),
    (HEALTHY.replace("-A LAB-POSTRTG -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE", ""),
     True, "pod to internet", "no NAT on worker-1"),
])
def test_each_failure_gets_its_cause(facts_text, routed, check, cause):
    outcome = outcomes_by_name(Silent())[check]
    routes = {node.name: routed for node in PLAN.nodes}
    assert cause in likely_cause(outcome, facts_everywhere(facts_text), routes)


def test_nat_inside_the_cluster_is_named_as_such():
    outcome = outcomes_by_name(ScriptedProber(nat_inside=True))["pod to pod, across nodes"]
    cause = likely_cause(outcome, facts_everywhere(SEED_LAB_NAT), {})
    assert "NAT inside the cluster: worker-1" in cause and "! -d" in cause


def test_an_unknown_route_is_named_as_what_to_check_not_as_the_cause():
    """The cloud cannot read the VPC's route table from the nodes: `routed` is empty."""
    outcome = outcomes_by_name(Silent())["pod to pod, across nodes"]
    cause = likely_cause(outcome, facts_everywhere(HEALTHY), {})
    assert cause.startswith("unreachable: timed out; the nodes' rules look right: check the "
                            "VPC route for worker-2's pod CIDR")
    assert "no route" not in cause
    known = likely_cause(outcome, facts_everywhere(HEALTHY), {n.name: True for n in PLAN.nodes})
    assert known == "unreachable: timed out (no known cause matched)"  # the lab's as before


def test_facts_are_read_only_when_a_check_failed():
    reads = []

    def read_facts():
        reads.append(1)
        return facts_everywhere(BARE)

    passing = run_checks(ScriptedProber(), lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80))
    assert failure_causes(passing, read_facts, {}) == {} and reads == []
    failing = run_checks(ScriptedProber(nat_inside=True),
                         lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80))
    causes = failure_causes(failing, read_facts, {})
    assert list(causes) == ["pod to pod, across nodes", "pod to pod, across nodes (back)",
                            "large answer, across nodes"]
    assert reads == [1]

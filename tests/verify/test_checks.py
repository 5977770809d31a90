"""The checks as data, judged against what a fake prober reports (no network needed)."""

from collections.abc import Sequence

import pytest

from bootstrap.verify.checks import (
    ECHO_CLIENT,
    ECHO_CLIENT_ARGV,
    WEB_PORT,
    Check,
    Endpoint,
    PodInfo,
    lab_checks,
    pod_hosts,
    probe,
    run_checks,
    seed_pods,
    seen_address,
    with_client,
)
from infra.plan import Settings, make_plan

PLAN = make_plan()
PUBLIC = {"master": "203.0.113.10", "worker-1": "203.0.113.11", "worker-2": "203.0.113.12"}
PODS = [PodInfo("nginx-worker-1", "worker-1", "10.244.1.2", "web"),
        PodInfo("bash-worker-1", "worker-1", "10.244.1.3", "tools"),
        PodInfo("nginx-worker-2", "worker-2", "10.244.2.2", "web"),
        PodInfo("bash-worker-2", "worker-2", "10.244.2.3", "tools")]
INTERNET = Endpoint("internet", "internet", "198.51.100.1")


class ScriptedProber:
    """Answers like a healthy cluster: the echo server sees the sender's address, except
    that traffic to the internet shows the node's public address; the internet reaches no
    pod. `nat_inside` makes every cross-node packet carry the node address (the lab's bug)."""

    def __init__(self, nat_inside: bool = False) -> None:
        self.nat_inside = nat_inside
        self.calls: list[tuple[str, list[str]]] = []

    def run(self, source: Endpoint, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append((source.name, list(argv)))
        if argv[0] == "ping":
            return 0, "1 packets transmitted, 1 received"
        target = argv[argv.index("fetch") + 1]
        if source.kind == "internet":
            return 1, "unreachable: timed out"
        if target == INTERNET.ip:
            public = PUBLIC[str(source.node)]
            return 0, f'{{"client": "{public}"}}'
        seen = source.ip
        target_node = next(p.node for p in PODS if p.ip == target)
        if self.nat_inside and source.kind == "pod" and source.node != target_node:
            seen = str(PLAN.node(str(source.node)).private_ip)
        return 0, f'{{"server": "x", "client": "{seen}"}}'


def test_the_lab_story_has_every_check_of_the_seed_lab():
    names = [check.name for check in lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80)]
    assert names == ["pod to its gateway", "pod to pod, same node", "pod to pod, across nodes",
                     "pod to pod, across nodes (back)", "large answer, across nodes",
                     "node to pod", "pod to internet", "internet to pod"]


def test_a_healthy_cluster_passes_every_check():
    outcomes = run_checks(ScriptedProber(), lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80))
    assert [o.check.name for o in outcomes if not o.passed] == []


def test_nat_inside_the_cluster_fails_the_cross_node_checks_only():
    outcomes = run_checks(ScriptedProber(nat_inside=True),
                          lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80))
    failed = [o for o in outcomes if not o.passed]
    assert [o.check.name for o in failed] == ["pod to pod, across nodes",
                                              "pod to pod, across nodes (back)",
                                              "large answer, across nodes"]
    assert failed[0].observed == "sees 10.0.1.11"


def test_an_unexpected_answer_from_the_internet_fails():
    check = Check("internet to pod", INTERNET, Endpoint("pod", "p", "10.244.1.2", "worker-1"),
                  "http", WEB_PORT, expect_reach=False)

    class Open:
        def run(self, source, argv):
            return 0, '{"client": "198.51.100.1"}'

    result = probe(Open(), check)
    assert result.reached and result.seen == "198.51.100.1"
    assert not run_checks(Open(), [check])[0].passed


def test_a_garbled_answer_counts_as_unreachable_with_the_text_kept():
    check = lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80)[1]

    class Garbled:
        def run(self, source, argv):
            return 0, "<html>not json</html>"

    result = probe(Garbled(), check)
    assert not result.reached and "not json" in result.detail


def test_a_plain_text_address_counts_as_what_the_target_saw():
    """checkip.amazonaws.com answers with the caller's address as text, not JSON."""
    assert seen_address("203.0.113.11\n") == "203.0.113.11"
    assert seen_address('{"server": "nginx-worker-1", "client": "10.244.1.3"}\n') == "10.244.1.3"
    for garbled in ("<html>not json</html>", "", "[1, 2]", '{"server": "x"}'):
        try:
            seen_address(garbled)
        except (ValueError, KeyError, TypeError):
            continue
        raise AssertionError(f"{garbled!r} was accepted")


def test_a_prober_can_start_the_echo_client_its_own_way():
    check = lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80)[1]
    prober = ScriptedProber()
    probe(prober, check)
    argv = prober.calls[0][1]
    assert argv[:3] == list(ECHO_CLIENT_ARGV) == ["/usr/bin/python3", "-IS", ECHO_CLIENT]
    assert with_client(argv, ["python3", "/x.py"]) == ["python3", "/x.py", "fetch",
                                                       "10.244.1.2", "8080", "--timeout", "2"]
    ping = ["ping", "-n", "-q", "-c", "1", "-W", "1", "10.244.1.1"]
    assert with_client(ping, ["python3"]) == ping


def test_the_internet_to_pod_check_can_be_left_out():
    kept = lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80)
    dropped = lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80, internet_to_pod=False)
    assert dropped == kept[:-1] and kept[-1].name == "internet to pod"


def test_with_one_worker_the_control_plane_hosts_the_far_pods():
    """Two nodes: pods on worker-1 and the master; "node to pod" then starts on worker-1."""
    pods = [PodInfo("nginx-worker-1", "worker-1", "10.244.1.2", "web"),
            PodInfo("bash-worker-1", "worker-1", "10.244.1.3", "tools"),
            PodInfo("nginx-master", "master", "10.244.0.2", "web"),
            PodInfo("bash-master", "master", "10.244.0.3", "tools")]
    two_nodes = make_plan(Settings(node_count=2))
    checks = {c.name: c for c in lab_checks(two_nodes, PUBLIC, pods, INTERNET, 80)}
    assert checks["pod to pod, across nodes"].target.name == "nginx-master"
    node_to_pod = checks["node to pod"]
    assert (node_to_pod.source.name, node_to_pod.expect_seen) == ("worker-1", "10.0.1.11")


def test_pods_on_a_single_node_cannot_make_the_checks():
    with pytest.raises(ValueError, match="pods on two nodes"):
        lab_checks(PLAN, PUBLIC, [p for p in PODS if p.node == "worker-1"], INTERNET, 80)


def test_pod_hosts_are_two_workers_or_the_only_worker_and_the_control_plane():
    assert pod_hosts(make_plan(Settings(node_count=4))) == ["worker-1", "worker-2"]
    assert pod_hosts(make_plan(Settings(node_count=2))) == ["worker-1", "master"]
    assert [p.name for p in seed_pods(["worker-1"])] == ["nginx-worker-1", "bash-worker-1"]

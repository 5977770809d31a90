"""The trace's pure part: reading xtables-monitor's lines, ordering the hops of all
namespaces, and the reasons. The fixtures are real agent outputs, recorded on a local lab
(the pod to the internet, healthy; a source/destination check on; FORWARD's policy DROP
without the pod rules; a node's ping across the VPC)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootstrap.verify.trace import (
    Flow,
    Hop,
    Verdict,
    assemble,
    counted_rules,
    drop_reason,
    monitor_errors,
    network_header,
    parse_monitor,
    parse_verdict,
    untraceable,
    vanished_reason,
)

FIXTURES = Path(__file__).with_name("fixtures")
POD_NETWORK = "10.244.0.0/16"
OWNERS = {"n0": "master", "n1": "worker-1", "n2": "worker-2"}


def recorded(name: str) -> tuple[Flow, dict[str, str]]:
    data = json.loads((FIXTURES / f"trace-{name}.json").read_text())
    protocol, targets, port = data["flow"]
    return Flow(protocol, tuple(targets), port), data["monitor"]


def hops_of(name: str) -> list[Hop]:
    flow, monitor = recorded(name)
    return assemble({place: parse_monitor(text) for place, text in monitor.items()}, flow)


def test_a_packet_line_and_its_trace_lines_are_read() -> None:
    steps = parse_monitor(
        "PACKET: 2 ed1cecac IN=cni0 OUT=eth0 MACSRC=4a:ff:e:ca:d:a2 MACPROTO=0800 "
        "SRC=10.244.1.3 DST=10.244.2.2 LEN=60 TOS=0x0 TTL=63 ID=57689 DF SPORT=47850 "
        "DPORT=8080 SYN \n"
        " TRACE: 2 ed1cecac filter:FORWARD:rule:0x5:JUMP:LAB-FWD  -4 -t filter -A FORWARD "
        "-m comment --comment \"k8s-cni-lab jump to LAB-FWD\" -j LAB-FWD\n"
        " TRACE: 2 ed1cecac filter:LAB-FWD:policy:DROP \n"
        " EVENT: -4 -t raw -A PREROUTING -p icmp -j TRACE\nNEWGEN: GENID=5 PID=1 NAME=x\n")
    assert len(steps) == 1
    packet = steps[0].packet
    assert (packet.inbound, packet.outbound, packet.src, packet.dst) == \
        ("cni0", "eth0", "10.244.1.3", "10.244.2.2")
    assert (packet.ttl, packet.ip_id, packet.protocol, packet.sport, packet.dport) == \
        (63, 57689, "tcp", 47850, 8080)
    assert "SYN" in packet.flags
    jump, policy = steps[0].verdicts
    assert (jump.table, jump.chain, jump.kind, jump.verdict) == \
        ("filter", "FORWARD", "rule", "JUMP:LAB-FWD")
    assert jump.rule == '-A FORWARD -m comment --comment "k8s-cni-lab jump to LAB-FWD" ' \
                        '-j LAB-FWD'
    assert (policy.kind, policy.verdict, policy.drops) == ("policy", "DROP", True)


def test_a_bridged_packets_header_is_decoded_from_the_sign_extended_dump() -> None:
    fields = network_header("45000054ffffff897640003f01ffffff9c1c0a00010b0a00010c")
    assert fields == {"SRC": "10.0.1.11", "DST": "10.0.1.12", "TTL": "63",
                      "ID": str(0x8976), "PROTO_NUMBER": "1"}


def test_a_bridge_familys_rule_has_a_handle_and_no_text() -> None:
    verdict = parse_verdict(7, " TRACE: 7 9bf986ee nat:POSTROUTING:rule:0x5:DROP  ")
    assert (verdict.family, verdict.chain, verdict.handle, verdict.rule, verdict.drops) == \
        (7, "POSTROUTING", "0x5", "", True)


@given(st.text())
def test_any_text_parses_without_an_error(text: str) -> None:
    parse_monitor(text)


def test_the_trace_rules_match_the_probe_both_ways_before_any_other_rule() -> None:
    flow = Flow("tcp", ("203.0.113.11", "10.0.1.11"), 8080,
                sources=("198.51.100.1",))
    spec = flow.agent_spec(bridge=False)
    assert set(spec) == {"iptables"}
    bounded = ["--tcp-flags", "SYN", "SYN", "-m", "ttl", "--ttl-gt", "40", "-m", "limit",
               "--limit", "5/second", "--limit-burst", "8"]
    request = ["-p", "tcp", "-s", "198.51.100.1", "-d", "203.0.113.11,10.0.1.11",
               "--dport", "8080", *bounded]
    answer = ["-p", "tcp", "-s", "203.0.113.11,10.0.1.11", "-d", "198.51.100.1",
              "--sport", "8080", *bounded]
    assert spec["iptables"] == [["raw", chain, match] for chain in ("PREROUTING", "OUTPUT")
                                for match in (request, answer)]
    bridged = Flow("icmp", ("10.0.1.12",)).agent_spec(bridge=True)["ebtables"]
    burst = ["--limit", "5/second", "--limit-burst", "8"]
    assert bridged == [["nat", "PREROUTING", ["-p", "IPv4", "--ip-proto", "icmp",
                                              "--ip-dst", "10.0.1.12", *burst]],
                       ["nat", "PREROUTING", ["-p", "IPv4", "--ip-proto", "icmp",
                                              "--ip-src", "10.0.1.12", *burst]]]


def test_pod_to_internet_passes_node_router_gateway_and_back_nat_where_expected() -> None:
    hops = hops_of("pod-to-internet")
    assert [(hop.direction, hop.place) for hop in hops] == [
        ("request", "worker-1"), ("request", "router"), ("request", "igw"),
        ("request", "internet"), ("answer", "internet"), ("answer", "igw"),
        ("answer", "router"), ("answer", "worker-1")]
    translated = {hop.place: (hop.before, hop.after) for hop in hops
                  if hop.direction == "request" and hop.translated}
    assert translated == {
        "worker-1": (("10.244.1.3", "198.51.100.1"), ("10.0.1.11", "198.51.100.1")),
        "igw": (("10.0.1.11", "198.51.100.1"), ("203.0.113.11", "198.51.100.1"))}
    node, _, gateway, *_ = hops
    assert any(v.rule.endswith("-j MASQUERADE") for v in node.rules)
    assert any("-j SNAT --to-source 203.0.113.11" in v.rule for v in gateway.rules)
    assert (node.inbound, node.outbound, gateway.inbound, gateway.outbound) == \
        ("cni0", "eth0", "vpc", "wan")
    assert not any(hop.dropped for hop in hops)
    assert not any(v.rule.endswith("-j TRACE") for hop in hops for v in hop.verdicts)


def test_a_nodes_own_packet_starts_on_the_node_before_the_router_at_the_same_ttl() -> None:
    hops = hops_of("node-ping")
    assert [(hop.direction, hop.place) for hop in hops][:3] == \
        [("request", "master"), ("request", "router"), ("request", "worker-2")]
    assert hops[0].inbound == ""


def test_a_source_dest_check_stops_at_the_router_in_the_checks_words() -> None:
    hops = hops_of("source-dest-check")
    router = next(hop for hop in hops if hop.place == "router")
    assert router.bridge_ports[0] == "n1"
    assert router.dropped is not None
    assert drop_reason(router, router.dropped, OWNERS, POD_NETWORK).startswith(
        "source/destination check on worker-1")


def test_forwards_policy_drop_stops_on_the_node_in_the_checks_words() -> None:
    hops = hops_of("forward-policy-drop")
    assert [hop.place for hop in hops] == ["worker-1"]
    dropped = hops[0].dropped
    assert dropped is not None
    assert drop_reason(hops[0], dropped, OWNERS, POD_NETWORK) == \
        "FORWARD dropped on worker-1: policy DROP and no rule accepts the pod network"


def hop(**changes: object) -> Hop:
    fields: dict = {"place": "worker-1", "direction": "request", "inbound": "cni0",
                    "outbound": "", "before": ("10.244.1.3", "10.244.2.2"),
                    "after": ("10.244.1.3", "10.244.2.2"), "verdicts": (), "ttl": 64}
    fields.update(changes)
    return Hop(**fields)


def test_an_answer_dropped_by_forwards_policy_is_one_way_forwarding() -> None:
    policy = Verdict(2, "filter", "FORWARD", "policy", "DROP")
    assert drop_reason(hop(direction="answer"), policy, OWNERS, POD_NETWORK) == \
        "FORWARD on worker-1 accepts pod traffic one way only (from pods): the answers " \
        "coming back are dropped"


@pytest.mark.parametrize(("route", "forwarding", "expected"), [
    ("No route to host", False, "forwarding off on worker-1 (net.ipv4.ip_forward=0)"),
    ("Network is unreachable", True, "no route on worker-1 to 10.244.2.2"),
    ("Invalid cross-device link", True, "the reverse-path filter on worker-1 dropped it"),
])
def test_a_packet_that_vanished_unrouted_says_why(route: str, forwarding: bool,
                                                  expected: str) -> None:
    assert vanished_reason(hop(), route, forwarding).startswith(expected)


def test_a_packet_routed_and_forwarded_and_still_gone_has_no_traced_reason() -> None:
    assert vanished_reason(hop(), "10.244.2.2 via 10.0.1.1 dev eth0", True) == ""


def test_a_packet_that_left_and_was_not_seen_again_says_through_where() -> None:
    assert vanished_reason(hop(outbound="eth0"), "", True) == \
        "left worker-1 through eth0 and was not seen again"


def test_a_monitor_that_lost_part_of_the_trace_says_so() -> None:
    assert monitor_errors("PACKET: 2 a SRC=1.2.3.4\n EVENT: x\nNEWGEN: y\n"
                          "cannot receive from nfnetlink socket: No buffer space available\n"
                          ) == ["cannot receive from nfnetlink socket: No buffer space available"]


def test_without_a_trace_the_rules_whose_counters_rose_are_listed_in_order() -> None:
    before = "*filter\n:FORWARD DROP [0:0]\n[3:180] -A FORWARD -j LAB-FWD\n" \
             "[3:180] -A LAB-FWD -s 10.244.0.0/16 -j ACCEPT\n[0:0] -A LAB-FWD -d 10.244.0.0/16 " \
             "-j ACCEPT\nCOMMIT\n*nat\n[1:60] -A POSTROUTING -j LAB-POSTRTG\nCOMMIT\n"
    after = before.replace("[3:180]", "[5:300]").replace("[0:0] -A LAB-FWD", "[1:60] -A LAB-FWD")
    assert counted_rules(before, after) == [
        "filter: -A FORWARD -j LAB-FWD", "filter: -A LAB-FWD -s 10.244.0.0/16 -j ACCEPT",
        "filter: -A LAB-FWD -d 10.244.0.0/16 -j ACCEPT"]
    assert counted_rules(before, before) == []


def test_an_agent_that_cannot_trace_says_why() -> None:
    assert untraceable("UNTRACEABLE xtables-monitor cannot run: not found\nTRACE\n") == \
        "xtables-monitor cannot run: not found"
    assert untraceable("READY\nTRACE\n") == ""

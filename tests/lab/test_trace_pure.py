"""`make trace`'s pure part on the lab: endpoints by name or address, the probe it sends, the
addresses its trace rules match, and the boxes its picture draws. No root needed."""

from __future__ import annotations

import pytest

from bootstrap.verify.checks import PodInfo
from bootstrap.verify.trace import Hop, TraceResult
from lab import trace
from lab.layout import INTERNET_ECHO_PORT, lab_layout
from lab.lifecycle import seed_checks

LAYOUT = lab_layout("x")
PODS = [PodInfo("nginx-worker-1", "worker-1", "10.244.1.2", "web"),
        PodInfo("bash-worker-1", "worker-1", "10.244.1.3", "tools"),
        PodInfo("nginx-worker-2", "worker-2", "10.244.2.2", "web"),
        PodInfo("bash-worker-2", "worker-2", "10.244.2.3", "tools")]
INTERNET = trace.endpoints(LAYOUT, PODS)["internet"]
CHECKS = seed_checks(LAYOUT, PODS)


def resolve(text: str, sending: bool = False) -> trace.Endpoint:
    return trace.resolve(LAYOUT, PODS, text, sending=sending)


def test_an_endpoint_is_found_by_name_or_by_any_of_its_addresses() -> None:
    assert resolve("bash-worker-1") == resolve("10.244.1.3")
    assert resolve("worker-1").ip == "10.0.1.11"
    assert resolve("203.0.113.11").node == "worker-1"
    assert resolve("internet") == resolve("198.51.100.1")
    assert resolve("10.244.1.1").name == "worker-1 cni0"


@pytest.mark.parametrize(("text", "sending", "words"), [
    ("nosuch", False, "unknown endpoint 'nosuch': name a pod (nginx-worker-1"),
    ("10.244.1.1", True, "a pod gateway: it cannot send a probe; trace FROM=worker-1"),
    ("", False, "name both ends: make trace FROM="),
])
def test_bad_endpoints_are_refused_with_the_fix(text: str, sending: bool, words: str) -> None:
    with pytest.raises(trace.TraceError, match=words.replace("(", r"\(")):
        resolve(text, sending)


def test_the_probe_is_the_checks_where_there_is_one_else_http_to_a_pod_or_a_ping() -> None:
    to_internet = trace.trace_check(CHECKS, resolve("bash-worker-1"), INTERNET, None)
    assert to_internet.name == "pod to internet" and to_internet.port == INTERNET_ECHO_PORT
    far = trace.trace_check(CHECKS, resolve("bash-worker-2"), resolve("nginx-worker-2"), None)
    assert (far.method, far.port) == ("http", 8080)
    ping = trace.trace_check(CHECKS, resolve("master"), resolve("10.244.2.1"), None)
    assert ping.method == "ping"
    other_port = trace.trace_check(CHECKS, resolve("master"), resolve("worker-2"), 22)
    assert (other_port.method, other_port.port) == ("http", 22)


def test_the_trace_rules_match_every_address_a_translation_gives_the_ends() -> None:
    to_internet = trace.trace_check(CHECKS, resolve("bash-worker-1"), INTERNET, None)
    flow = trace.flow_of(LAYOUT, to_internet)
    assert flow.sources == ("10.244.1.3", "10.0.1.11", "203.0.113.11")
    assert flow.targets == ("198.51.100.1",)
    to_node = trace.flow_of(LAYOUT, trace.trace_check(CHECKS, INTERNET,
                                                      resolve("203.0.113.12"), None))
    assert (to_node.protocol, to_node.targets, to_node.sources) == \
        ("icmp", ("203.0.113.12", "10.0.1.12"), ("198.51.100.1",))


def test_the_picture_follows_the_request_and_a_lost_answer_back() -> None:
    check = trace.trace_check(CHECKS, resolve("bash-worker-1"), resolve("nginx-worker-2"), None)

    def hop(place: str, direction: str, inbound: str, outbound: str) -> Hop:
        return Hop(place, direction, inbound, outbound, ("a", "b"), ("a", "b"), (), 64)  # type: ignore[arg-type]

    hops = [hop("worker-1", "request", "cni0", "eth0"), hop("router", "request", "vpc0", ""),
            hop("worker-2", "request", "eth0", "cni0"), hop("worker-2", "answer", "cni0", "eth0"),
            hop("router", "answer", "vpc0", "")]
    lost = TraceResult(hops, False, trace.Stop("router", "answer", "no route"))
    assert trace.element_path(LAYOUT, PODS, check, lost) == (
        "pod:bash-worker-1", "bridge:worker-1", "node:worker-1", "router", "node:worker-2",
        "bridge:worker-2", "pod:nginx-worker-2", "bridge:worker-2", "node:worker-2", "router")
    assert trace.stop_element(lost) == "router"
    arrived = TraceResult(hops, True)
    assert trace.element_path(LAYOUT, PODS, check, arrived)[-1] == "pod:nginx-worker-2"

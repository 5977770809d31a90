"""`make trace STACK=dev`: the trace between two test pods of a stack, with fake nodes (no
AWS here) that answer the agent's commands with what real agents reported on a lab's nodes
(tests/verify/fixtures). The agent's SSH part runs for real in tests/lab/test_trace_e2e.py."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import pytest
from rich.console import Console

from bootstrap import stack_commands
from bootstrap.verify import cloud_trace
from bootstrap.verify.checks import PodInfo
from bootstrap.verify.trace import Flow, TraceError
from tests.bootstrap.cloud_replies import ACROSS, PODS
from tests.bootstrap.fakes import FakeCluster, Reply
from tests.bootstrap.test_stack_commands import (
    connect_to,
    healthy_cluster,
    output_of,
    quiet_console,
    stack,
)

FIXTURES = Path(__file__).parents[1] / "verify" / "fixtures"
CLOUD_PODS = [PodInfo(name, node, ip, "tools" if name.startswith("bash") else "web")
              for name, (node, ip) in PODS.items()]


def traced_by(cluster: FakeCluster, recording: str) -> FakeCluster:
    """Each worker's agent: started, READY, and at its stop what it traced (recorded)."""
    monitor = json.loads((FIXTURES / f"trace-{recording}.json").read_text())["monitor"]
    for name in ("worker-1", "worker-2"):
        cluster.node(name).replies[:0] = [
            Reply("kill -TERM", 0, f"READY\nTRACE\n{monitor.get(name, '')}\n"),
            Reply("setsid", 0, ""),
            Reply("/out", 0, "READY\n")]
    return cluster


def test_a_stack_trace_lists_both_nodes_and_the_vpc_between_them_as_inferred() -> None:
    cluster = traced_by(healthy_cluster(), "pod-to-pod")
    console = Console(file=io.StringIO(), width=300)  # each route on one line
    assert stack_commands.trace(stack(), "bash-worker-1", "nginx-worker-2", None, console,
                                connect_to(cluster)) == 0
    text = output_of(console)
    assert "pod to pod, across nodes" not in text  # the title names the pods
    assert "bash-worker-1 → nginx-worker-2" in text
    assert "VPC (inferred from the route table, not traced)" in text
    assert "10.244.2.0/24 via eni-2 (worker-2)" in text  # the stack's own route
    assert "arrived" in text and cloud_trace.VPC_NOTE in text
    for name in ("worker-1", "worker-2"):
        commands = cluster.node(name).commands
        assert any("setsid" in command for command in commands)
        assert any("kill -TERM" in command for command in commands)
    # Each agent is given the probe's own flow: its target, port and both sources (the pod's
    # address, and the node's where a rule would masquerade it).
    flow = Flow("tcp", ("10.244.2.2",), 8080, ("10.244.1.3", "10.0.1.11"))
    spec = shlex.quote(json.dumps(flow.agent_spec(bridge=False)))
    for name in ("worker-1", "worker-2"):
        assert any(spec in command for command in cluster.node(name).commands
                   if "setsid" in command)


def test_a_stack_without_the_routes_output_is_traced_with_the_plans_routes_and_says_so(
) -> None:
    cluster = traced_by(healthy_cluster(), "pod-to-pod")
    console = Console(file=io.StringIO(), width=300)
    assert stack_commands.trace(stack(podRoutes=None), "bash-worker-1", "nginx-worker-2", None,
                                console, connect_to(cluster)) == 0
    text = output_of(console)
    assert "10.244.2.0/24 via worker-2 (10.0.1.12)" in text
    assert cloud_trace.PLANNED_NOTE in text


def test_the_vpc_hop_takes_the_most_specific_route() -> None:
    routes = {"10.244.0.0/16": "eni-wide (x)", "10.244.2.0/24": "eni-2 (worker-2)"}
    assert cloud_trace.vpc_route(routes, "10.244.2.7") == "10.244.2.0/24 via eni-2 (worker-2)"
    assert cloud_trace.vpc_route(routes, "10.244.9.7") == "10.244.0.0/16 via eni-wide (x)"
    assert cloud_trace.vpc_route(routes, "10.0.1.12") == \
        "10.0.1.12 in the subnet: delivered directly"


def test_a_stack_trace_stops_where_a_node_dropped_the_packet() -> None:
    master = [reply for reply in healthy_cluster().node("master").replies
              if reply.match != ACROSS]
    cluster = traced_by(healthy_cluster(master), "forward-policy-drop")
    cluster.node("master").replies.insert(0, Reply(ACROSS, 1, "timed out\n"))
    console = quiet_console()
    assert stack_commands.trace(stack(), "bash-worker-1", "nginx-worker-2", None, console,
                                connect_to(cluster)) == 1
    assert "stopped at worker-1 (request): FORWARD dropped on worker-1: policy DROP and no " \
           "rule accepts the pod network" in " ".join(output_of(console).split())


def test_a_stack_trace_is_between_test_pods_and_says_which() -> None:
    with pytest.raises(TraceError, match="no test pod 'worker-1' on the stack: name one of "
                                         "nginx-worker-1"):
        cloud_trace.pod_endpoint(CLOUD_PODS, "worker-1")
    assert cloud_trace.pod_endpoint(CLOUD_PODS, "10.244.2.2").name == "nginx-worker-2"

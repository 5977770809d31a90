"""The trace agent for real, in namespaces the test makes: it traces the packets it is told
to, and leaves the namespace's rules exactly as they were, also when it is interrupted.
Root only; the probes go to the namespace's own loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from bootstrap.verify import trace_agent
from bootstrap.verify.trace import Flow, parse_monitor
from tests.bootstrap.netns import Namespaces, iptables_state, namespaces

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and namespaces")

SPEC = Flow("icmp", ("127.0.0.1",)).agent_spec(bridge=True)


@pytest.fixture
def spaces() -> Iterator[Namespaces]:
    with namespaces() as made:
        yield made


def rules(spaces: Namespaces, namespace: str) -> str:
    bridge = spaces.run(namespace, "ebtables-save").stdout
    return iptables_state(spaces, namespace) + "\n" + "\n".join(
        line for line in bridge.splitlines() if not line.startswith("#"))


def start(spaces: Namespaces, namespace: str) -> subprocess.Popen[str]:
    agent = subprocess.Popen(
        ["ip", "netns", "exec", namespace, "/usr/bin/python3", "-IS", trace_agent.__file__,
         json.dumps(SPEC)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    spaces.processes.append(agent)
    assert agent.stdout is not None
    assert agent.stdout.readline().strip() == trace_agent.READY
    return agent


def test_it_traces_the_probe_and_leaves_no_table_behind(spaces: Namespaces) -> None:
    namespace = spaces.create("trace")
    before = rules(spaces, namespace)
    agent = start(spaces, namespace)
    assert "-j TRACE" in spaces.run(namespace, "iptables-save").stdout
    spaces.run(namespace, "ping", "-c", "1", "-W", "1", "127.0.0.1")
    output, _ = agent.communicate("", timeout=30)
    steps = parse_monitor(output)
    assert any(step.packet.dst == "127.0.0.1" and step.packet.protocol == "icmp"
               for step in steps)
    assert rules(spaces, namespace) == before
    assert spaces.run(namespace, "iptables-save").stdout == ""  # not even an empty table


def test_a_table_that_was_there_stays_as_it_was(spaces: Namespaces) -> None:
    namespace = spaces.create("trace")
    spaces.run(namespace, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j",
               "ACCEPT")
    spaces.run(namespace, "ebtables", "-t", "nat", "-A", "PREROUTING", "-p", "ARP", "-j",
               "ACCEPT")
    before = rules(spaces, namespace)
    agent = start(spaces, namespace)
    agent.communicate("", timeout=30)
    assert rules(spaces, namespace) == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupted_agent_removes_its_rules(spaces: Namespaces, signum: int) -> None:
    namespace = spaces.create("trace")
    before = rules(spaces, namespace)
    agent = start(spaces, namespace)
    assert rules(spaces, namespace) != before
    os.killpg(agent.pid, signum)
    agent.communicate(timeout=30)
    assert rules(spaces, namespace) == before

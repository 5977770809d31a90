"""The trace on a real lab: each check of `make lab` traced hop by hop on a healthy lab, each
exercise's fault stopping the probe at the right hop with the checks' words, and no trace
rule left in any namespace, also when the trace is interrupted. One lab for the module,
removed even when a test fails; each test leaves it healthy."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest

from bootstrap import exercises
from bootstrap.verify import cloud_trace
from bootstrap.verify.checks import Check, ProbeResult, probe
from bootstrap.verify.trace import assemble, parse_monitor
from bootstrap.verify.trace_remote import traced_on_nodes
from lab import exercise as lab_exercise
from lab import lifecycle, network, trace
from lab.lifecycle import LabProber
from tests.lab.test_exercises_e2e import mend
from tests.lab.test_lab_e2e import lab_cli, lab_name

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root and network namespaces"),
]


def rule_sets(lab: lifecycle.LocalLab) -> dict[str, str]:
    """Every lab namespace's iptables and bridge rules, without counters and timestamps."""
    found = {}
    for namespace in network.existing_namespaces(lab.layout.lab):
        saved = "".join(network.run(["ip", "netns", "exec", namespace, tool])
                        for tool in ("iptables-save", "ebtables-save"))
        lines = [line for line in saved.splitlines() if not line.startswith("#")]
        found[namespace] = re.sub(r"\[\d+:\d+\]", "[0:0]", "\n".join(lines))
    return found


def the_checks(lab: lifecycle.LocalLab) -> list[Check]:
    return lifecycle.seed_checks(lab.layout, lab.pods)


EXPECTED_PATHS = {  # where each check's request goes, and where it is translated
    "pod to its gateway": (["worker-1"], set()),
    "pod to pod, same node": (["worker-1"], set()),
    "pod to pod, across nodes": (["worker-1", "router", "worker-2"], set()),
    "pod to pod, across nodes (back)": (["worker-2", "router", "worker-1"], set()),
    "large answer, across nodes": (["worker-1", "router", "worker-2"], set()),
    "node to pod": (["master", "router", "worker-2"], set()),
    "pod to internet": (["worker-1", "router", "igw", "internet"], {"worker-1", "igw"}),
    "internet to pod": ([], set()),
}


def test_each_check_of_a_healthy_lab_is_traced_through_the_expected_hops(
        practice_lab: lifecycle.LocalLab) -> None:
    lab, before = practice_lab, rule_sets(practice_lab)
    checks = the_checks(lab)
    assert {check.name for check in checks} == set(EXPECTED_PATHS)
    for check in checks:
        result = trace.trace_probe(lab, check)
        request = [hop for hop in result.hops if hop.direction == "request"]
        places, translated = EXPECTED_PATHS[check.name]
        assert [hop.place for hop in request] == places, check.name
        assert {hop.place for hop in request if hop.translated} == translated, check.name
        assert result.arrived == check.expect_reach, check.name
        if check.expect_reach:
            assert [hop.place for hop in result.hops if hop.direction == "answer"] == \
                places[::-1], check.name
    by_name = trace.run_trace(lab, "internet", lab.pods[0].name, None)
    assert by_name[0] == next(check for check in checks if check.name == "internet to pod")
    internet_to_pod = by_name[1]
    assert internet_to_pod.stop is not None
    assert internet_to_pod.stop.place == "internet"
    assert internet_to_pod.stop.reason.startswith("no route on internet")
    assert rule_sets(lab) == before


FAULTS = [  # exercise, from, to, where the trace stops, in which direction, traced there
    ("stuck-on-node", "bash-worker-1", "nginx-worker-2", "worker-1", "request", True),
    ("quiet-neighbours", "bash-worker-1", "nginx-worker-2", "worker-1", "request", True),
    ("no-reply", "bash-worker-1", "internet", "worker-1", "answer", True),
    ("no-way-out", "bash-worker-1", "internet", "igw", "request", True),
    ("far-pods-silent", "bash-worker-1", "nginx-worker-2", "router", "answer", True),
    ("lost-between-nodes", "bash-worker-1", "nginx-worker-2", "router", "answer", True),
    ("all-looks-right", "bash-worker-1", "nginx-worker-2", "router", "request", True),
    ("one-pod-stranded", "bash-worker-1", "nginx-worker-2", "worker-1", "request", True),
    ("new-pods-unreachable", "bash-worker-1", "nginx-worker-2", "router", "answer", True),
    # The pod still sends to its gateway's address, which the node routes on to the VPC:
    # the trace says where it was last seen, the nodes' configuration why.
    ("neighbours-only", "bash-worker-1", "10.244.1.1", "router", "request", False),
    # Nothing leaves the pod at all: the configuration says why.
    ("all-cut-off", "bash-worker-1", "nginx-worker-2", "worker-1", "request", False),
]


@pytest.mark.parametrize(("name", "source", "target", "place", "direction", "traced"), FAULTS,
                         ids=[fault[0] for fault in FAULTS])
def test_a_fault_stops_the_trace_at_its_hop_with_the_checks_words(
        practice_lab: lifecycle.LocalLab, name: str, source: str, target: str, place: str,
        direction: str, traced: bool) -> None:
    lab = practice_lab
    exercise = exercises.find(lab_exercise.catalog(lab.layout), name)
    where = lab_exercise.target_for(lab, "worker-1")
    try:
        lab_exercise.inject(lab, exercise, where)
        before = rule_sets(lab)
        _, result = trace.run_trace(lab, source, target, None)
        assert not result.arrived
        assert result.stop is not None
        assert (result.stop.place, result.stop.direction) == (place, direction)
        assert exercise.text(exercise.cause, where) in result.stop.reason
        assert result.stop.traced == traced
        assert rule_sets(lab) == before
        lab_exercise.run_shell(lab, exercise, where, exercise.fix(where))
    except BaseException:
        mend(lab)
        raise


def test_nat_inside_the_cluster_arrives_translated_on_the_node_and_says_so(
        practice_lab: lifecycle.LocalLab) -> None:
    lab = practice_lab
    exercise = exercises.find(lab_exercise.catalog(lab.layout), "wrong-sender")
    where = lab_exercise.target_for(lab, "worker-1")
    try:
        lab_exercise.inject(lab, exercise, where)
        check = next(c for c in the_checks(lab) if c.name == "pod to pod, across nodes")
        result = trace.trace_probe(lab, check)
        assert result.arrived
        request = [hop for hop in result.hops if hop.direction == "request"]
        assert [hop.place for hop in request if hop.translated] == ["worker-1"]
        assert any(v.rule.endswith("-j MASQUERADE") for v in request[0].rules)
        assert "saw 10.0.1.11, not 10.244.1.3" in result.notes[0]
        lab_exercise.run_shell(lab, exercise, where, exercise.fix(where))
    except BaseException:
        mend(lab)
        raise


def test_an_interrupted_trace_leaves_no_rule_and_no_agent(
        practice_lab: lifecycle.LocalLab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab, before = practice_lab, rule_sets(practice_lab)

    def interrupted(*_: object) -> None:
        assert rule_sets(lab) != before  # the agents are tracing
        assert len(agents_in(lab)) == len(lab.layout.namespaces)
        raise KeyboardInterrupt

    monkeypatch.setattr(trace, "probe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trace.run_trace(lab, "bash-worker-1", "nginx-worker-2", None)
    assert rule_sets(lab) == before
    assert agents_in(lab) == []


def agents_in(lab: lifecycle.LocalLab) -> list[int]:
    """The trace agents running in the lab's namespaces."""
    found = []
    for pid in network.namespace_pids(network.existing_namespaces(lab.layout.lab)):
        with contextlib.suppress(OSError):  # gone meanwhile
            if str(trace.AGENT).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def test_without_xtables_monitor_it_falls_back_to_rule_counters_labelled(
        practice_lab: lifecycle.LocalLab, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A machine whose iptables lacks the trace monitor: every other tool is there."""
    for tool in ("ip", "stdbuf", "iptables", "iptables-save", "ebtables", "ebtables-save",
                 "sysctl"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tmp_path))
    lab, before = practice_lab, rule_sets(practice_lab)
    check = next(check for check in the_checks(lab) if check.name == "pod to internet")
    result = trace.trace_probe(lab, check)
    assert result.arrived and result.hops == []
    assert "xtables-monitor is not installed" in result.notes[0]
    assert "counters" in result.notes[0]
    assert any(rule.endswith("-j MASQUERADE") for rule in result.counted["worker-1"])
    monkeypatch.undo()
    assert rule_sets(lab) == before


def leftovers_on_nodes(lab: lifecycle.LocalLab) -> list[str]:
    listed = lab.ssh.on_all(lambda node: node.run("ls -d /run/k8s-cni-lab-trace-* 2>/dev/null",
                                                  timeout=30, check=False).output.split())
    return [directory for directories in listed.values() for directory in directories]


def test_a_stacks_trace_runs_its_agents_over_ssh_and_leaves_nothing_behind(
        practice_lab: lifecycle.LocalLab) -> None:
    """The stack's path, on the lab's nodes: the agents over SSH as the login user with sudo,
    the probe, the VPC inferred between the two nodes."""
    lab, before = practice_lab, rule_sets(practice_lab)
    check = next(c for c in the_checks(lab) if c.name == "pod to pod, across nodes")
    flow = cloud_trace.pod_flow(lab.plan, check)
    result, outputs = traced_on_nodes(lab.ssh, ["worker-1", "worker-2"], flow,
                                      lambda: probe(LabProber(lab), check))
    assert result.reached
    hops = cloud_trace.with_vpc_hops(
        assemble({node: parse_monitor(text) for node, text in outputs.items()}, flow),
        cloud_trace.planned_routes(lab.plan))
    assert [(hop.direction, hop.place) for hop in hops] == [
        ("request", "worker-1"), ("request", cloud_trace.VPC_HOP), ("request", "worker-2"),
        ("answer", "worker-2"), ("answer", cloud_trace.VPC_HOP), ("answer", "worker-1")]
    assert rule_sets(lab) == before
    assert leftovers_on_nodes(lab) == []

    def interrupted() -> ProbeResult:
        assert rule_sets(lab) != before
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        traced_on_nodes(lab.ssh, ["worker-1", "worker-2"], flow, interrupted)
    assert rule_sets(lab) == before
    assert leftovers_on_nodes(lab) == []


def test_the_command_line_traces_and_refuses_bad_input(practice_lab: lifecycle.LocalLab) -> None:
    name = practice_lab.layout.lab
    arrived = lab_cli(name, "trace", "bash-worker-1", "nginx-worker-2")
    assert arrived.returncode == 0, arrived.stdout + arrived.stderr
    assert "arrived" in arrived.stdout and "trace.svg" in arrived.stdout
    stopped = lab_cli(name, "trace", "internet", "nginx-worker-1")
    assert stopped.returncode == 1
    assert "stopped at internet" in stopped.stdout
    for args, words in ((("nosuch", "internet"), "unknown endpoint 'nosuch'"),
                        (("10.244.1.1", "internet"), "a pod gateway: it cannot send"),
                        (("master", "master"), "the same endpoint"),
                        (("", ""), "name both ends")):
        refused = lab_cli(name, "trace", *args)
        assert refused.returncode == 1
        assert words in refused.stdout and "Traceback" not in refused.stderr, refused.stdout
    missing = lab_cli(lab_name(), "trace", "master", "internet")
    assert missing.returncode == 1 and "make lab KEEP=1" in missing.stdout

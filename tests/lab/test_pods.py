"""The pod verbs' pure parts and the runtime's own refusals and pod listing (no root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootstrap.errors import LabError
from bootstrap.verify.checks import PodInfo
from bootstrap.verify.report import plain_text
from infra.plan import Settings, make_plan
from lab import nodes, pod_runtime
from lab.__main__ import parse_args
from lab.lifecycle import PodOnNode, missing_seed_pods
from lab.pods import new_pod_problem, pod_state, pod_table, recorded_pod, role_of, seeds_first

PLAN = make_plan()
SEEDS = [PodInfo("nginx-worker-1", "worker-1", "10.244.1.2", "web"),
         PodInfo("bash-worker-1", "worker-1", "10.244.1.3", "tools"),
         PodInfo("nginx-worker-2", "worker-2", "10.244.2.2", "web"),
         PodInfo("bash-worker-2", "worker-2", "10.244.2.3", "tools")]
EXTRA = PodInfo("web-x", "worker-2", "10.244.2.4", "web")


def test_the_table_shows_what_the_nodes_report_and_gone_for_what_they_do_not():
    on_nodes = {"worker-1": {"nginx-worker-1": PodOnNode("10.244.1.9", True),
                             "bash-worker-1": PodOnNode("10.244.1.3", False)}}
    text = plain_text(pod_table([*SEEDS[:2], EXTRA], on_nodes))
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["nginx-worker-1", "running", "10.244.1.9", "worker-1"],  # the node's address now
        ["bash-worker-1", "stopped", "10.244.1.3", "worker-1"],
        ["web-x", "gone", "10.244.2.4", "worker-2"],  # the record's, the node has none
    ]


def test_pod_states():
    assert pod_state(PodOnNode("10.244.1.2", True)) == "running"
    assert pod_state(PodOnNode("10.244.1.2", False)) == "stopped"
    assert pod_state(None) == "gone"


@pytest.mark.parametrize(("name", "node", "problem"), [
    ("web-x", "worker-2", "a pod named web-x runs already on worker-2: pick another name, or "
                          "`python -m lab --name t1 delete web-x` first"),
    ("Web", "worker-1", "'Web' is not a pod name"),
    ("web_2", "worker-1", "'web_2' is not a pod name"),
    ("-web", "worker-1", "'-web' is not a pod name"),
    ("a" * 64, "worker-1", "is not a pod name"),
    ("web-y", "worker-9", "no node 'worker-9' in lab t1: pick one of master, worker-1, "
                          "worker-2"),
])
def test_a_new_pod_is_refused_with_the_fix(name, node, problem):
    found = new_pod_problem(PLAN, [*SEEDS, EXTRA], name, node, "t1")
    assert found is not None and problem in found


def test_a_new_pod_may_run_anywhere_even_on_the_control_plane():
    assert new_pod_problem(PLAN, SEEDS, "web-2", "master", "t1") is None
    assert new_pod_problem(PLAN, SEEDS, "a" * 63, "worker-1", "t1") is None


@given(st.from_regex(pod_runtime.POD_NAME, fullmatch=True))
def test_every_pod_name_fits_a_dns_label_and_a_netns_file_name(name):
    assert 1 <= len(name) <= 63 and "/" not in name and name not in {".", ".."}
    assert name == name.lower() and not name.startswith("-") and not name.endswith("-")


def test_a_seed_pod_started_again_keeps_its_role_and_comes_first():
    assert role_of(PLAN, "bash-worker-1", "worker-1") == "tools"
    assert role_of(PLAN, "bash-worker-1", "worker-2") == "web"  # not the seed pod
    assert role_of(PLAN, "web-x", "worker-2") == "web"
    again = PodInfo("nginx-worker-2", "worker-2", "10.244.2.9", "web")
    ordered = seeds_first(PLAN, [SEEDS[0], SEEDS[1], EXTRA, SEEDS[3], again])
    assert ordered == [SEEDS[0], SEEDS[1], SEEDS[3], again, EXTRA]


def test_missing_seed_pods_are_named_by_name_and_node():
    assert missing_seed_pods(PLAN, [*SEEDS, EXTRA]) == []
    moved = PodInfo("bash-worker-2", "worker-1", "10.244.1.7", "web")
    missing = missing_seed_pods(PLAN, [*SEEDS[:3], moved])
    assert [(pod.name, pod.node) for pod in missing] == [("bash-worker-2", "worker-2")]
    two_nodes = make_plan(Settings(node_count=2))
    assert [pod.node for pod in missing_seed_pods(two_nodes, [])] == ["worker-1"] * 2 + [
        "master"] * 2


def test_an_unknown_pod_names_the_known_ones_and_the_fix():
    assert recorded_pod(SEEDS, "bash-worker-2", "t1") == SEEDS[3]
    with pytest.raises(LabError, match=r"no pod named 'nope' in lab t1 \(its pods: nginx-"
                                       r".*\): `python -m lab --name t1 pods` lists them"):
        recorded_pod(SEEDS, "nope", "t1")


def test_exec_takes_the_command_after_the_pod_with_or_without_a_double_dash():
    args = parse_args(["--name", "t1", "exec", "bash-worker-1", "--", "ping", "-c", "2", "x"])
    assert (args.verb, args.pod, args.command) == ("exec", "bash-worker-1",
                                                   ["ping", "-c", "2", "x"])
    assert parse_args(["exec", "bash-worker-1", "ip", "-br", "a"]).command == ["ip", "-br", "a"]
    assert parse_args(["exec", "bash-worker-1"]).command == []  # a shell
    assert parse_args(["run", "web-2"]).node is None  # the first worker, chosen on the lab
    assert parse_args(["bootstrap", "node-network,cni"]).phases == ["node-network", "cni"]


def test_exec_and_enter_reach_the_node_through_its_sshd_namespaces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "STATE_ROOT", tmp_path)
    with pytest.raises(LabError, match=r"no lab named t1 is up: start one with `make lab KEEP"):
        nodes.enter_argv("t1", "worker-1", None, ["bash"])
    for node in ("worker-1", "master"):
        nodes.node_dir("t1", node).mkdir(parents=True)
    (nodes.node_dir("t1", "worker-1") / "sshd.pid").write_text("4242\n")
    assert nodes.enter_argv("t1", "worker-1", "web-x", ["ping", "-c", "1", "10.244.2.4"]) == [
        "nsenter", "-t", "4242", "-m", "-u", "-n", "ip", "netns", "exec", "web-x",
        "ping", "-c", "1", "10.244.2.4"]
    with pytest.raises(LabError, match=r"no node 'worker-9' in lab t1: pick one of master, "
                                       r"worker-1$"):
        nodes.enter_argv("t1", "worker-9", None, ["bash"])


# -- the runtime stand-in, as far as it runs without root -----------------------------------

@pytest.fixture
def runtime_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pod_runtime, "STATE_DIR", tmp_path)
    return tmp_path


def test_the_runtime_refuses_a_bad_name_and_a_pod_it_has_before_touching_anything(
        runtime_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pod_runtime, "load_conflist", lambda: pytest.fail("went on"))
    with pytest.raises(pod_runtime.PodRuntimeError, match="'Web' is not a pod name"):
        pod_runtime.run_pod("Web", 8080)
    (runtime_state / "web.json").write_text("{}")
    with pytest.raises(pod_runtime.PodRuntimeError, match="a pod named web exists already"):
        pod_runtime.run_pod("web", 8080)


def test_the_runtime_lists_a_pod_as_running_only_while_its_process_is_in_its_netns(
        runtime_state: Path) -> None:
    here = {"pid": os.getpid(), "netns": "/proc/self/ns/net"}  # this process, in its netns
    assert pod_runtime.is_running(here)
    assert not pod_runtime.is_running({**here, "netns": "/proc/self/ns/mnt"})  # another ns
    assert not pod_runtime.is_running({**here, "netns": str(runtime_state / "no-netns")})
    assert not pod_runtime.is_running({**here, "pid": 2 ** 22 + 1})  # above pid_max: no pid
    for name, ip, pod in (("b", "10.244.1.2", here), ("a", "10.244.1.1",
                                                     {**here, "pid": 2 ** 22 + 1})):
        (runtime_state / f"{name}.json").write_text(json.dumps({**pod, "name": name,
                                                                "ip": ip}))
    assert pod_runtime.list_pods() == [{"name": "a", "ip": "10.244.1.1", "running": False},
                                       {"name": "b", "ip": "10.244.1.2", "running": True}]

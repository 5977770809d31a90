"""The command line on a Pulumi stack: a fake `pulumi` executable on PATH returns recorded
stack outputs (there is no Pulumi CLI, backend or AWS account here), and the nodes are the
fakes of fakes.py and simulated_cluster.py (there is no cluster either)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bootstrap import stack_commands
from bootstrap.cni.install import plugin_files
from bootstrap.exercises import ExerciseError
from bootstrap.inventory import Inventory
from bootstrap.node_network import NODE_FILES, cni_conflist, desired_state, render_state
from bootstrap.phases.cloud import cloud_workflow
from bootstrap.remote import NodeCluster
from bootstrap.stack import Stack, StackError, read_stack, stack_from_outputs
from bootstrap.verify.status import SECTION
from infra.plan import Settings, make_plan
from lab.__main__ import main as lab_cli
from tests.bootstrap.cloud_replies import healthy_verify_replies, node_facts_reply
from tests.bootstrap.fakes import FakeCluster, FakeNode, Reply
from tests.bootstrap.simulated_cluster import simulated_cluster
from tests.bootstrap.sshd import new_ed25519_key

PLAN = make_plan(Settings())
PUBLIC = {"master": "203.0.113.10", "worker-1": "203.0.113.11", "worker-2": "203.0.113.12"}
HOST_KEY = new_ed25519_key().public_line
LOGIN_KEY = new_ed25519_key().private_openssh


def recorded_outputs(**changes: Any) -> dict[str, Any]:
    """What `pulumi stack output --json --show-secrets` prints for a bootstrapped stack."""
    outputs = {
        "settings": asdict(Settings()),
        "nodes": {node.name: {"publicIp": PUBLIC[node.name], "privateIp": str(node.private_ip),
                              "hostPublicKey": HOST_KEY, "role": node.role}
                  for node in PLAN.nodes},
        "podRoutes": {node.name: {"destination": str(node.pod_cidr),
                                  "networkInterfaceId": f"eni-{node.index}"}
                      for node in PLAN.nodes},
        "sshUser": "ubuntu", "privateKey": LOGIN_KEY, "kubeconfig": "apiVersion: v1\n"}
    return {key: value for key, value in {**outputs, **changes}.items() if value is not None}


@pytest.fixture
def fake_pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `pulumi` that knows the stack "dev" (its outputs in dev.json) and no other."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "dev.json").write_text(json.dumps(recorded_outputs()))
    script = bin_dir / "pulumi"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/calls
case "$*" in
  "stack output --json --show-secrets --stack dev") cat {tmp_path}/dev.json ;;
  *) echo "error: no stack named '$6' found" >&2; exit 255 ;;
esac
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def stack(**changes: Any) -> Stack:
    return stack_from_outputs("dev", recorded_outputs(**changes))


def connect_to(cluster: NodeCluster) -> stack_commands.Connect:
    def connect(inventory: Inventory) -> NodeCluster:
        assert inventory.names() == PLAN.node_names()
        return cluster
    return connect


def output_of(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=250, color_system=None)


def test_the_stack_is_read_through_the_pulumi_cli(fake_pulumi: Path) -> None:
    read = read_stack("dev")
    assert read.plan == PLAN and read.has_cluster
    assert [(n.name, n.host, n.user) for n in read.inventory.nodes] == [
        (name, PUBLIC[name], "ubuntu") for name in PLAN.node_names()]
    assert (fake_pulumi / "calls").read_text() == \
        "stack output --json --show-secrets --stack dev\n"


def test_bad_stacks_get_one_line_errors_that_name_the_fix(
        fake_pulumi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StackError, match=r"cannot read stack 'nope': error: no stack named "
                                         r"'nope' found. Fix: `pulumi stack ls`"):
        read_stack("nope")
    with pytest.raises(StackError, match=r"has no output.* settings: run `pulumi up`"):
        stack_from_missing("settings")
    moved = recorded_outputs()
    moved["nodes"]["worker-2"]["privateIp"] = "10.0.1.99"
    with pytest.raises(ValueError, match=r"worker-2: the cloud reports private IP 10\.0\.1\.99"):
        stack_from_outputs("dev", moved)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match="no Pulumi CLI on PATH"):
        read_stack("dev")


def stack_from_missing(key: str) -> Stack:
    outputs = recorded_outputs()
    del outputs[key]
    return stack_from_outputs("dev", outputs)


def test_the_command_line_prints_one_line_and_no_traceback(
        fake_pulumi: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lab_cli(["check", "--stack", "nope"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("check failed: cannot read stack 'nope'") and out.count("\n") == 1
    (fake_pulumi / "dev.json").write_text(json.dumps(
        {k: v for k, v in recorded_outputs().items() if k != "kubeconfig"}))
    assert lab_cli(["check", "--stack", "dev"]) == 1
    assert "built with bootstrap=false" in capsys.readouterr().out
    assert lab_cli(["ssh", "worker-9", "--stack", "dev"]) == 1
    assert "no node named 'worker-9'" in capsys.readouterr().out


def healthy_cluster(master_replies: list[Reply] | None = None) -> FakeCluster:
    """Nodes answering as a healthy cloud cluster does: the verify probes on the control
    plane, and each node's rules as the node-network phase left them."""
    nodes = {node.name: FakeNode(node.name, replies=[node_facts_reply(str(node.pod_cidr))])
             for node in PLAN.nodes}
    master = healthy_verify_replies() if master_replies is None else master_replies
    nodes["master"].replies[:0] = master
    return FakeCluster(nodes)


def test_check_runs_the_seed_labs_checks_through_kubectl_exec() -> None:
    console = quiet_console()
    assert stack_commands.check(stack(), console, connect_to(healthy_cluster())) == 0
    table = output_of(console)
    assert "pod to pod, across nodes" in table and "FAIL" not in table
    assert "'internet to pod' is not run" in table


def test_check_fails_and_names_the_cause_read_from_the_nodes() -> None:
    without_far_pod = [reply for reply in healthy_verify_replies()
                       if "10.244.2.2" not in reply.match]
    console = quiet_console()
    assert stack_commands.check(stack(), console,
                                connect_to(healthy_cluster(without_far_pod))) == 1
    text = output_of(console)
    assert "x pod to pod, across nodes: expected sees 10.244.1.3, got no answer" in text
    assert "check the VPC route for worker-2's pod CIDR" in text


def status_reply(node_name: str, *, bridge: str | None = None, plugin_ok: bool = True) -> Reply:
    """What one node prints for the status command (the node's state, recorded)."""
    node = PLAN.node(node_name)
    facts = node_facts_reply(str(node.pod_cidr)).output
    conflist = json.dumps({"plugins": [{"type": "lab-cni", "subnet": str(node.pod_cidr)}]})
    address = bridge or f"{node.gateway}/24"
    hashes = "".join(f"{hashlib.sha256(f.data if plugin_ok else b'old').hexdigest()}  "
                     f"{f.node_path}\n" for f in plugin_files())
    return Reply("sha256sum", 0, f"{facts}{SECTION}\n{conflist}\n{SECTION}\n"
                 f"7: cni0    inet {address} brd x scope global cni0\n{SECTION}\n{hashes}")


def kubernetes_nodes(ready: str = "True") -> Reply:
    return Reply("get nodes -o json", 0, json.dumps({"items": [
        {"metadata": {"name": n.name}, "spec": {"podCIDR": str(n.pod_cidr)},
         "status": {"conditions": [{"type": "Ready", "status": ready}]}} for n in PLAN.nodes]}))


def test_status_shows_each_node_against_the_plan_and_kubernetes() -> None:
    nodes = {n: FakeNode(n, replies=[status_reply(n)]) for n in PLAN.node_names()}
    nodes["master"].replies.append(kubernetes_nodes())
    console = quiet_console()
    assert stack_commands.status(stack(), console, connect_to(FakeCluster(nodes))) == 0
    text = output_of(console)
    assert "│ worker-1 │ ok  │ 10.244.1.0/24 │ 10.244.1.0/24 │ 10.244.1.1/24 │ 10.244.1.0/24 │ " \
        "current │ Ready   │ on / ok / outbound" in text
    assert text.count("│ ok  │") == 3 and "x " not in text


def test_status_marks_what_differs_from_the_plan() -> None:
    nodes = {n: FakeNode(n, replies=[status_reply(n)]) for n in PLAN.node_names()}
    nodes["worker-2"].replies = [status_reply("worker-2", bridge="10.244.9.1/24",
                                              plugin_ok=False)]
    nodes["master"].replies.append(kubernetes_nodes(ready="False"))
    console = quiet_console()
    assert stack_commands.status(stack(), console, connect_to(FakeCluster(nodes))) == 1
    text = output_of(console)
    assert "x worker-2: kubelet not Ready (False); cni0 holds 10.244.9.1/24, plan " \
        "10.244.2.1/24; plugin outdated" in text


def test_run_runs_only_the_named_phases_on_the_stack() -> None:
    cluster = simulated_cluster(PLAN)
    assert stack_commands.run(stack(), ["wait-ssh", "node-network"], connect_to(cluster)) == 0
    for node in cluster.nodes.values():
        assert node.commands[0] == "<connect>"
        assert not any("kubeadm" in command for command in node.commands)
        assert node.uploads, "node-network installs its files"


def test_run_bootstraps_a_bare_stack_by_hand_and_keeps_its_kubeconfig_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bootstrap=false: no kubeconfig output. `make run PHASES=all` (verify aside: the
    simulated cluster runs no pods) writes it where the docs say, and check then accepts
    the stack."""
    monkeypatch.chdir(tmp_path)
    bare = stack_from_outputs("dev", {k: v for k, v in recorded_outputs().items()
                                      if k != "kubeconfig"})
    assert not bare.has_cluster
    cluster = simulated_cluster(PLAN)
    every_phase_but_verify = [p.name for p in cloud_workflow() if p.name != "verify"]
    assert stack_commands.run(bare, every_phase_but_verify, connect_to(cluster)) == 0
    kubeconfig = tmp_path / "k8s-cni-lab-dev.kubeconfig"
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert "server: https://203.0.113.10:6443" in kubeconfig.read_text()
    assert bare.has_cluster


def test_ssh_pins_the_stacks_host_key_and_uses_its_login_key(tmp_path: Path) -> None:
    argv = stack_commands.ssh_command(stack(), "worker-1", tmp_path)
    assert argv[0] == "ssh" and argv[-1] == "ubuntu@203.0.113.11"
    assert "StrictHostKeyChecking=yes" in argv and "IdentitiesOnly=yes" in argv
    assert (tmp_path / "known_hosts").read_text() == f"203.0.113.11 {HOST_KEY}\n"
    assert (tmp_path / "key").read_text() == LOGIN_KEY
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600


# -- exercises on a stack ---------------------------------------------------------------------

@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's state directory, where a stack's open exercise is recorded."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "k8s-cni-lab" / "stacks" / "dev"


def with_files(cluster: FakeCluster, node: str, state: str, conflist: str) -> FakeCluster:
    cluster.node(node).files.update({NODE_FILES.state: (state.encode(), 0o644),
                                     NODE_FILES.conflist: (conflist.encode(), 0o644)})
    return cluster


def plan_files(node: str) -> tuple[str, str]:
    planned = PLAN.node(node)
    return (render_state(desired_state(PLAN, planned)),
            json.dumps(cni_conflist(PLAN, planned), indent=2))


def test_an_exercise_on_a_stack_injects_over_ssh_and_is_recorded(state_home: Path) -> None:
    cluster = healthy_cluster()
    console = quiet_console()
    assert stack_commands.start_exercise(stack(), "stuck-on-node", None, console,
                                         connect_to(cluster)) == 0
    assert "sysctl -q -w net.ipv4.ip_forward=0" in cluster.node("worker-1").commands
    assert json.loads((state_home / "exercise.json").read_text()) == {
        "name": "stuck-on-node", "node": "worker-1", "hints_shown": 0}
    text = output_of(console)
    assert "Symptom: pods on one node talk to each other" in text
    assert "ip_forward" not in text.split("Symptom")[1]  # the cause stays unnamed
    with pytest.raises(ExerciseError, match=r"exercise stuck-on-node is still open on "
                                            r"worker-1: solve it .`make check STACK=dev`"):
        stack_commands.start_exercise(stack(), "no-way-out", None, quiet_console(),
                                      connect_to(healthy_cluster()))


def test_a_stack_exercise_refuses_lab_only_unknown_or_unhealthy_starts(state_home: Path) -> None:
    for name in ("far-pods-silent", "nope"):
        with pytest.raises(ExerciseError, match=f"no exercise named '{name}'"):
            stack_commands.start_exercise(stack(), name, None, quiet_console(),
                                          connect_to(healthy_cluster()))
    broken = healthy_cluster()
    broken.node("master").replies.insert(0, Reply("checkip.amazonaws.com", 1, "unreachable\n"))
    with pytest.raises(ExerciseError, match=r"checks do not all pass already \(pod to internet"):
        stack_commands.start_exercise(stack(), "no-way-out", None, quiet_console(),
                                      connect_to(broken))
    assert not any(c.startswith("cat >") for c in broken.node("worker-1").commands)
    assert not (state_home / "exercise.json").exists()


def test_check_on_a_stack_judges_the_open_exercise_by_the_files_read_at_boot(
        state_home: Path) -> None:
    assert stack_commands.start_exercise(stack(), "no-way-out", "worker-2", quiet_console(),
                                         connect_to(healthy_cluster())) == 0
    # The rule put back by hand only: the checks pass, the state file still lacks it.
    state, conflist = plan_files("worker-2")
    lacking = json.loads(state)
    lacking["rules"] = [rule for rule in lacking["rules"] if "MASQUERADE" not in rule["spec"]]
    console = quiet_console()
    cluster = with_files(healthy_cluster(), "worker-2", json.dumps(lacking), conflist)
    assert stack_commands.check(stack(), console, connect_to(cluster)) == 1
    text = output_of(console)
    assert "exercise no-way-out: not solved yet: every check passes, but the boot unit " \
           "would bring the fault back" in text
    assert "lacks the rule 'k8s-cni-lab masquerade pod traffic leaving the cluster'" in text
    assert "Likely cause" not in text
    # The state file restored as the solution says: solved, and the exercise is closed.
    console = quiet_console()
    cluster = with_files(healthy_cluster(), "worker-2", state, conflist)
    assert stack_commands.check(stack(), console, connect_to(cluster)) == 0
    assert "exercise no-way-out: solved" in output_of(console)
    assert "reboot would also" not in output_of(console)
    assert not (state_home / "exercise.json").exists()


def test_hints_and_the_solution_on_a_stack_need_no_connection(
        state_home: Path, fake_pulumi: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lab_cli(["hint", "--stack", "dev"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("hint failed: no exercise is open to give a hint for: start one "
                          "with `make exercise`") and out.count("\n") == 1
    state_home.mkdir(parents=True)
    (state_home / "exercise.json").write_text(json.dumps({"name": "stuck-on-node",
                                                           "node": "worker-1"}))
    shown = []
    for _ in range(4):
        assert lab_cli(["hint", "--stack", "dev"]) == 0
        shown.append(capsys.readouterr().out)
    assert [line.split(":")[0] for line in shown[:3]] == ["hint 1/3", "hint 2/3", "hint 3/3"]
    assert "ip_forward=0" not in shown[0] + shown[1] and "ip_forward=0" in shown[2]
    assert shown[3].startswith("no more hints for stuck-on-node")
    assert lab_cli(["solution", "--stack", "dev"]) == 0
    solution_text = capsys.readouterr().out
    assert "The cause: forwarding off on worker-1" in solution_text
    assert "sysctl -w net.ipv4.ip_forward=1" in solution_text
    assert "make ssh NODE=worker-1 STACK=dev" in solution_text


def test_the_listing_on_a_stack_names_what_is_left_out_and_why(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert lab_cli(["exercises", "--stack", "dev"]) == 0
    out = capsys.readouterr().out
    assert "stuck-on-node" in out and "big-answers-stall" in out
    table = out.split("Left out")[0]
    assert "far-pods-silent" not in table and "new-pods-unreachable" not in table
    assert "Left out on a stack: far-pods-silent, lost-between-nodes, all-looks-right (VPC " \
           "level: on AWS they would take API calls that Pulumi would fight)" in out

"""The cloud workflow's kubeadm side: its configs, parsers and decisions as pure functions,
then each cloud phase over simulated nodes (simulated_cluster.py), which stand in for
kubeadm, the kubelet and the API server with recorded behaviour: no cloud, kubeadm or
kubelet runs here. A table stops every phase, and kubeadm init and join after each of their
own steps, once: the next run completes, and a run after that changes nothing."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap.cni.install import plugin_files
from bootstrap.errors import CommandFailed, LabError
from bootstrap.inventory import Inventory, inventory_for_plan
from bootstrap.kubeadm import (
    ADMIN_KUBECONFIG,
    API_PHASES,
    BOOTSTRAP_TOKEN_TTL,
    INIT_FACTS,
    KUBEADM_INIT,
    KUBEADM_INIT_AGAIN,
    InitFacts,
    JoinAction,
    JoinCredentials,
    WorkerFacts,
    init_commands,
    init_phase_command,
    join_action,
    operator_kubeconfig,
    parse_init_facts,
    parse_join_command,
    parse_node_cidrs,
    pod_cidr_patch_command,
    pod_cidr_patches,
    prerequisite_problems,
    render_init_config,
    render_join_config,
)
from bootstrap.node_network import BOOT_COMMAND, NODE_FILES
from bootstrap.phases import cloud_workflow, run_cloud_workflow
from bootstrap.phases.context import CloudContext
from bootstrap.phases.join import JOIN_TIMEOUT, run_join
from bootstrap.phases.kubeadm_init import run_kubeadm_init
from bootstrap.phases.kubeconfig import run_kubeconfig
from bootstrap.phases.pod_cidr import run_pod_cidr
from bootstrap.phases.prerequisites import run_prerequisites
from bootstrap.phases.wait_cloud_init import run_wait_cloud_init
from bootstrap.phases.workflow import Runner
from infra.plan import Settings, make_plan
from tests.bootstrap.cloud_replies import healthy_verify_replies
from tests.bootstrap.fakes import FakeCluster, FakeNode, Reply
from tests.bootstrap.simulated_cluster import (
    DEFAULT_ADMIN_CONF,
    INIT_STEPS,
    JOIN_STOPS,
    SimulatedCluster,
    simulated_cluster,
)
from tests.bootstrap.sshd import new_ed25519_key

PLAN = make_plan(Settings())
PUBLIC = {"master": "203.0.113.10", "worker-1": "203.0.113.11", "worker-2": "203.0.113.12"}
TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "ab" * 32
JOIN_COMMAND = (f"kubeadm join 10.0.1.10:6443 --token {TOKEN} "
                f"--discovery-token-ca-cert-hash {CA_HASH} \n")
ADMIN_CONF = DEFAULT_ADMIN_CONF  # its client key is U0VDUkVU
# Commands that change a node or the cluster: a run over a finished cluster sends none.
CHANGING = ("kubeadm init", "kubeadm join", "kubeadm reset", "token create", "token delete",
            "patch node", "systemctl enable", "daemon-reload")


def inventory() -> Inventory:
    return inventory_for_plan(PLAN, hosts=PUBLIC,
                              host_keys=dict.fromkeys(PUBLIC, new_ed25519_key().public_line),
                              private_key="unused by fakes")


def context(cluster: FakeCluster, tmp_path: Path) -> CloudContext:
    return CloudContext(plan=PLAN, inventory=inventory(), ssh=cluster,
                        plugin_source=tmp_path / "plugin", kubeconfig_path=tmp_path / "kubeconfig")


def cluster(**replies: list[Reply]) -> FakeCluster:
    return FakeCluster({name: FakeNode(name, replies=list(replies.get(name.replace("-", "_"),
                                                                      [])))
                        for name in PLAN.node_names()})


def simulated() -> SimulatedCluster:
    return simulated_cluster(PLAN, master_replies=healthy_verify_replies())


def run_phases(nodes: SimulatedCluster, tmp_path: Path, *only: str) -> list[str]:
    plugin = tmp_path / "lab_cni"  # a plugin package: the cni phase uploads its files
    plugin.mkdir(exist_ok=True)
    (plugin / "__init__.py").write_bytes(b"plugin")
    return run_cloud_workflow(CloudContext(plan=PLAN, inventory=inventory(), ssh=nodes,
                                           plugin_source=plugin,
                                           kubeconfig_path=tmp_path / "kubeconfig"), only=only)


def commands_since(nodes: FakeCluster, counts: dict[str, int]) -> list[str]:
    return [command for name, node in nodes.nodes.items()
            for command in node.commands[counts.get(name, 0):]]


def counts(nodes: FakeCluster) -> dict[str, int]:
    return {name: len(node.commands) for name, node in nodes.nodes.items()}


# -- pure: kubeadm configs and parsers ---------------------------------------------------------

def test_init_config_pins_the_plan_and_keeps_cidr_allocation_off() -> None:
    init, cluster_config = yaml.safe_load_all(
        render_init_config(PLAN, "203.0.113.10", "v1.36.2"))
    assert init["apiVersion"] == cluster_config["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.0.1.10", "bindPort": 6443}
    assert init["nodeRegistration"] == {
        "name": "master", "criSocket": "unix:///run/containerd/containerd.sock",
        "kubeletExtraArgs": [{"name": "node-ip", "value": "10.0.1.10"}]}
    assert cluster_config["kubernetesVersion"] == "v1.36.2"
    assert cluster_config["networking"] == {"podSubnet": "10.244.0.0/16",
                                            "serviceSubnet": "10.96.0.0/12"}
    assert cluster_config["apiServer"]["certSANs"] == ["10.0.1.10", "203.0.113.10"]
    assert cluster_config["controllerManager"]["extraArgs"] == [
        {"name": "allocate-node-cidrs", "value": "false"}]


def test_no_bootstrap_token_outlives_the_bootstrap() -> None:
    """kubeadm's default token lives 24 h: init's (never used) and the join phase's live
    15 minutes, longer than a join may take."""
    init, _ = yaml.safe_load_all(render_init_config(PLAN, "203.0.113.10", "v1.36.2"))
    assert init["bootstrapTokens"] == [{"ttl": "15m"}]
    assert BOOTSTRAP_TOKEN_TTL == "15m" and JOIN_TIMEOUT < 15 * 60


def test_join_command_is_parsed_and_the_token_stays_out_of_repr() -> None:
    credentials = parse_join_command("W1126 warning line\n" + JOIN_COMMAND)
    assert credentials == JoinCredentials("10.0.1.10:6443", TOKEN, CA_HASH)
    assert TOKEN not in repr(credentials) and credentials.token_id == "abcdef"
    with pytest.raises(LabError, match="printed no join command") as refused:
        parse_join_command(f"kubeadm join --token {TOKEN}")
    assert TOKEN not in str(refused.value)


def test_join_config_pins_the_ca_hash_and_the_plan_node() -> None:
    config = yaml.safe_load(render_join_config(parse_join_command(JOIN_COMMAND),
                                               PLAN.node("worker-2")))
    assert config["kind"] == "JoinConfiguration"
    assert config["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.0.1.10:6443", "token": TOKEN, "caCertHashes": [CA_HASH]}
    assert config["nodeRegistration"]["name"] == "worker-2"
    assert config["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "node-ip", "value": "10.0.1.12"}]


HEALTHY = {"kubeadm": "v1.36.2", "systemd_cgroup": "1", "cni_bin_dir": "1",
           "cni_loopback": "yes", "swap": "0"}


@pytest.mark.parametrize(("facts", "problems"), [
    (HEALTHY, []),
    ({**HEALTHY, "kubeadm": "v1.35.0"}, ["kubeadm reports 'v1.35.0'"]),
    ({**HEALTHY, "cni_loopback": "no"}, ["/opt/cni/bin/loopback is missing"]),
    ({**HEALTHY, "cni_bin_dir": "0"}, ["containerd does not run CNI plugins from /opt/cni/bin"]),
    ({"kubeadm": "bash: kubeadm: command not found", "systemd_cgroup": "0", "cni_bin_dir": "1",
      "cni_loopback": "yes", "swap": "1"},
     ["kubeadm reports 'bash: kubeadm", "SystemdCgroup = true", "swap is on"]),
    ({}, ["kubeadm reports 'nothing'", "SystemdCgroup", "CNI plugins", "loopback"]),
])
def test_prerequisite_problems(facts: dict[str, str], problems: list[str]) -> None:
    found = prerequisite_problems(facts, "1.36")
    assert len(found) == len(problems)
    for message, start in zip(found, problems, strict=True):
        assert start in message and "\n" not in message


def test_a_missing_loopback_plugin_names_the_fix_in_one_line() -> None:
    (problem,) = prerequisite_problems({**HEALTHY, "cni_loopback": "no"}, "1.36")
    assert problem == ("/opt/cni/bin/loopback is missing and containerd needs it for every "
                       "pod: apt-get install kubernetes-cni (pkgs.k8s.io) and hold it")


def test_pod_cidr_decisions_follow_the_plan() -> None:
    listed = parse_node_cidrs("master 10.244.0.0/24\nworker-1 \nworker-2 \n")
    assert listed == {"master": "10.244.0.0/24", "worker-1": "", "worker-2": ""}
    assert pod_cidr_patches(PLAN, listed) == {"worker-1": "10.244.1.0/24",
                                              "worker-2": "10.244.2.0/24"}
    with pytest.raises(LabError, match=r"worker-1 has 10.244.2.0/24, the plan says 10.244.1.0"):
        pod_cidr_patches(PLAN, {**listed, "worker-1": "10.244.2.0/24"})
    with pytest.raises(LabError, match="not registered with the API server: worker-2"):
        pod_cidr_patches(PLAN, {"master": "", "worker-1": ""})
    patch = pod_cidr_patch_command("worker-1", "10.244.1.0/24").split(" -p ")[1]
    assert json.loads(patch.strip("'")) == {"spec": {"podCIDR": "10.244.1.0/24",
                                                     "podCIDRs": ["10.244.1.0/24"]}}


def test_operator_kubeconfig_points_at_the_public_address() -> None:
    config = yaml.safe_load(operator_kubeconfig(DEFAULT_ADMIN_CONF, "master", "203.0.113.10"))
    assert config["clusters"][0]["cluster"]["server"] == "https://203.0.113.10:6443"
    assert config["users"][0]["user"]["client-key-data"] == "U0VDUkVU"


# -- pure: what completes a kubeadm init, and a join -------------------------------------------

ALL_OBJECTS = {"bootstrap_rbac": True, "cluster_info": True, "kube_proxy": True,
               "coredns": True}
PHASES = [init_phase_command(phase) for phase in API_PHASES]


@pytest.mark.parametrize(("facts", "commands"), [
    (InitFacts(), [KUBEADM_INIT]),
    (InitFacts(traces=True), [KUBEADM_INIT_AGAIN]),  # stopped before the API server answered
    (InitFacts(traces=True, api=True), PHASES),
    (InitFacts(traces=True, api=True, bootstrap_rbac=True), PHASES),
    (InitFacts(traces=True, api=True, bootstrap_rbac=True, cluster_info=True), PHASES[3:]),
    (InitFacts(traces=True, api=True, bootstrap_rbac=True, cluster_info=True,
               kubelet_finalized=True, coredns=True), PHASES[4:]),
    (InitFacts(traces=True, api=True, kubelet_finalized=True, **ALL_OBJECTS), []),
    # Someone deleted kube-proxy: the add-on phase puts it back, nothing is reset.
    (InitFacts(traces=True, api=True, kubelet_finalized=True,
               **{**ALL_OBJECTS, "kube_proxy": False}), PHASES[4:]),
])
def test_init_commands_complete_init_from_where_it_stopped(facts: InitFacts,
                                                          commands: list[str]) -> None:
    assert init_commands(facts) == commands


def test_init_commands_refuse_to_redo_a_finished_init_whose_api_server_is_down() -> None:
    with pytest.raises(LabError, match=r"API server does not answer, although kubeadm init "
                                       r"got past kubelet-finalize.*journalctl -u kubelet"):
        init_commands(InitFacts(traces=True, kubelet_finalized=True))


def test_the_bootstrap_token_phase_never_prints_its_token() -> None:
    assert init_phase_command("bootstrap-token").endswith("--skip-token-print")
    assert "--skip-token-print" in KUBEADM_INIT and "--skip-token-print" in KUBEADM_INIT_AGAIN


@pytest.mark.parametrize(("facts", "action"), [
    (WorkerFacts(), JoinAction.JOIN),
    (WorkerFacts(kubelet_conf=True, registered=True), JoinAction.NONE),
    (WorkerFacts(bootstrap_conf=True, cluster_ca=True), JoinAction.RESET_AND_JOIN),
    (WorkerFacts(cluster_ca=True), JoinAction.RESET_AND_JOIN),
    (WorkerFacts(kubelet_conf=True), JoinAction.RESET_AND_JOIN),  # its Node never registered
    (WorkerFacts(registered=True), JoinAction.JOIN),  # a rebuilt worker under an old Node
])
def test_join_action(facts: WorkerFacts, action: JoinAction) -> None:
    assert join_action(facts) is action


def fake_bin(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/bash\n{script}\n")
    path.chmod(0o755)


@pytest.mark.parametrize("api_answers", [True, False])
def test_the_init_facts_script_runs_in_bash(tmp_path: Path, api_answers: bool) -> None:
    """The real script, with its paths moved under tmp_path and a stand-in kubectl that
    knows only kube-proxy (and /readyz when the API answers)."""
    root = tmp_path / "root"
    (root / "etc/kubernetes/manifests").mkdir(parents=True)
    (root / "etc/kubernetes/admin.conf").write_text("admin")
    (root / "etc/kubernetes/manifests/kube-apiserver.yaml").write_text("manifest")
    (root / "etc/kubernetes/kubelet.conf").write_text(
        "client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    readyz = "exit 0" if api_answers else "exit 1"
    fake_bin(bin_dir, "kubectl", f'case "$*" in *readyz*) {readyz};; '
                                 "*daemonset/kube-proxy*) exit 0;; *) exit 1;; esac")
    fake_bin(bin_dir, "sleep", "exit 0")  # the API wait, without waiting
    script = INIT_FACTS.replace("/etc/kubernetes", f"{root}/etc/kubernetes")
    result = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                            check=True, timeout=30)
    assert parse_init_facts(result.stdout) == InitFacts(
        traces=True, kubelet_finalized=True, api=api_answers, kube_proxy=api_answers)


# -- phases over fake nodes --------------------------------------------------------------------

def test_wait_cloud_init_accepts_done_and_degraded_and_reports_errors(tmp_path: Path) -> None:
    fine = cluster(master=[Reply("--wait", 0)], worker_1=[Reply("--wait", 2)],
                   worker_2=[Reply("--wait", 0)])
    run_wait_cloud_init(context(fine, tmp_path))
    assert [n.commands for n in fine.nodes.values()] == [["cloud-init status --wait"]] * 3
    broken = cluster(worker_2=[Reply("--wait", 1), Reply("--long", 1, "status: error\n"
                                                         "errors:\n  - apt failed\n")])
    with pytest.raises(LabError) as failed:
        Runner(cloud_workflow(), lambda: context(broken, tmp_path)).run(
            only=["wait-cloud-init"])
    assert str(failed.value).startswith("phase wait-cloud-init: 1 node(s) failed: worker-2")
    assert "cloud-init failed (status 1)" in str(failed.value)
    assert "| errors:" in str(failed.value) and "|   - apt failed" in str(failed.value)


def test_prerequisites_report_every_problem_of_the_node(tmp_path: Path) -> None:
    nodes = simulated()
    nodes.node("worker-2").prerequisites = ("kubeadm=v1.36.0\nsystemd_cgroup=0\ncni_bin_dir=1\n"
                                            "cni_loopback=no\nswap=2\n")
    with pytest.raises(LabError) as failed:
        run_prerequisites(context(nodes, tmp_path))
    message = str(failed.value)
    assert "1 node(s) failed: worker-2" in message
    assert "SystemdCgroup" in message and "swap is on" in message
    assert "/opt/cni/bin/loopback is missing" in message


def test_kubeadm_init_runs_once_with_the_config_on_stdin(tmp_path: Path) -> None:
    nodes = simulated()
    run_kubeadm_init(context(nodes, tmp_path))
    master = nodes.node("master")
    assert [c for c in master.commands if c.startswith("kubeadm")] == [
        "kubeadm version -o short", "kubeadm init --config /dev/stdin --skip-token-print"]
    config = master.stdins[master.commands.index(KUBEADM_INIT)]
    assert config is not None and b"kubernetesVersion: v1.36.2" in config
    before = nodes.state()
    run_kubeadm_init(context(nodes, tmp_path))  # init finished: only its facts are read
    assert nodes.state() == before
    assert not [c for c in master.commands[3:] if c.startswith("kubeadm")]
    assert nodes.node("worker-1").commands == []


def finished_init() -> Any:
    nodes = simulated()
    run_kubeadm_init(context(nodes, Path("/nonexistent")))
    return nodes.state()


@pytest.mark.parametrize("stop_after", INIT_STEPS)
def test_kubeadm_init_stopped_after_any_step_is_completed_by_the_next_run(
        tmp_path: Path, stop_after: str) -> None:
    """kubeadm init fails once, right after `stop_after`, leaving what that step wrote. The
    next run completes it (the same files and objects as an init that never stopped, less
    its tokens), and a third run changes nothing."""
    nodes = simulated()
    nodes.node("master").stop_init_after = stop_after
    with pytest.raises(CommandFailed, match="stopped by the test"):
        run_kubeadm_init(context(nodes, tmp_path))
    run_kubeadm_init(context(nodes, tmp_path))
    master = nodes.node("master")
    resumed = [c for c in master.commands if c.startswith("kubeadm init")][1:]
    api_answered = INIT_STEPS.index(stop_after) >= INIT_STEPS.index("kubelet-start")
    if stop_after in ("addon", "show-join-command"):
        assert resumed == []  # what init writes last exists: nothing to complete
    elif api_answered:
        assert resumed and all(c.startswith("kubeadm init phase") for c in resumed)
    else:
        assert resumed == [KUBEADM_INIT if stop_after == "preflight" else KUBEADM_INIT_AGAIN]
    done = nodes.state()
    assert done[:3] == finished_init()[:3]  # the API server's objects and nodes
    assert done[4]["master"] == finished_init()[4]["master"]  # the control plane's files
    run_kubeadm_init(context(nodes, tmp_path))
    assert nodes.state() == done


def test_join_joins_only_pending_workers_and_never_logs_the_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    nodes = simulated()
    run_phases(nodes, tmp_path, "kubeadm-init")
    worker_1 = nodes.node("worker-1")
    worker_1.files["/etc/kubernetes/kubelet.conf"] = (b"joined", 0o600)
    nodes.api.nodes["worker-1"] = ""
    before = counts(nodes)
    run_join(context(nodes, tmp_path))
    master = nodes.node("master").commands[before["master"]:]
    assert [c for c in master if c.startswith("kubeadm")] == [
        "kubeadm token create --print-join-command --ttl 15m", "kubeadm token delete tok001"]
    assert not [c for c in worker_1.commands if c.startswith("kubeadm")]
    worker_2 = nodes.node("worker-2")
    join = worker_2.commands.index("kubeadm join --config /dev/stdin")
    token = nodes.api.issued[-1]
    assert token.encode() in (worker_2.stdins[join] or b"")
    assert not [r for r in caplog.records if token in r.getMessage()]
    assert token not in nodes.api.tokens  # deleted once the joins were over
    assert all(ttl == "15m" for ttl in nodes.api.tokens.values())  # init's, expiring soon
    before = nodes.state()
    run_join(context(nodes, tmp_path))  # everyone joined: no new token, no join
    assert nodes.state() == before and len(nodes.api.issued) == 2


def test_the_join_token_is_deleted_even_when_a_join_fails(tmp_path: Path) -> None:
    nodes = simulated()
    run_phases(nodes, tmp_path, "kubeadm-init")
    nodes.node("worker-2").faults["kubeadm join"] = 1
    with pytest.raises(LabError, match="worker-2"):
        run_join(context(nodes, tmp_path))
    assert nodes.api.issued[-1] not in nodes.api.tokens


def test_a_failed_token_create_keeps_the_token_out_of_the_error(tmp_path: Path) -> None:
    """kubeadm may print the join command and still fail: its output must not travel."""
    nodes = simulated()
    run_phases(nodes, tmp_path, "kubeadm-init")
    nodes.node("master").replies.insert(0, Reply("token create", 1, JOIN_COMMAND))
    with pytest.raises(CommandFailed) as failed:
        run_join(context(nodes, tmp_path))
    assert TOKEN not in str(failed.value) and "withheld" in str(failed.value)


@pytest.mark.parametrize("stop_at", JOIN_STOPS)
def test_a_half_joined_worker_is_reset_and_joined_by_the_next_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, stop_at: str) -> None:
    """worker-1's join stops once: before writing anything, while waiting for the kubelet's
    TLS bootstrap (bootstrap-kubelet.conf and the CA left), or done with a kubelet whose Node
    never registers (kubelet.conf left; pod-cidr, which waits for every Node, fails)."""
    caplog.set_level(logging.INFO, logger="k8s_cni_lab.phases")
    nodes = simulated()
    run_phases(nodes, tmp_path, "kubeadm-init")
    nodes.node("worker-1").stop_join_at = stop_at
    with pytest.raises(LabError, match="worker-1"):
        run_phases(nodes, tmp_path, "join", "pod-cidr")
    worker_1 = nodes.node("worker-1")
    before = len(worker_1.commands)
    run_phases(nodes, tmp_path, "join", "pod-cidr")
    resumed = [c for c in worker_1.commands[before:] if c.startswith("kubeadm")]
    if stop_at == "preflight":
        assert resumed == ["kubeadm join --config /dev/stdin"]
    else:
        assert resumed == ["kubeadm reset -f --cri-socket unix:///run/containerd/containerd.sock",
                           "kubeadm join --config /dev/stdin"]
        assert "kubeadm reset, then join" in caplog.text
    assert nodes.api.nodes == {n.name: str(n.pod_cidr) for n in PLAN.nodes}
    done = nodes.state()
    run_phases(nodes, tmp_path, "join", "pod-cidr")
    assert nodes.state() == done


def test_pod_cidr_waits_for_every_node_then_patches_and_refuses_disagreement(
        tmp_path: Path) -> None:
    nodes = simulated()
    run_phases(nodes, tmp_path, "kubeadm-init", "join")
    before = counts(nodes)["master"]
    run_pod_cidr(context(nodes, tmp_path))
    commands = nodes.node("master").commands[before:]
    assert commands[0].endswith(" wait --for=create node/master node/worker-1 node/worker-2 "
                                "--timeout=180s")
    assert commands[2:] == [pod_cidr_patch_command("master", "10.244.0.0/24"),
                            pod_cidr_patch_command("worker-1", "10.244.1.0/24"),
                            pod_cidr_patch_command("worker-2", "10.244.2.0/24")]
    swapped = simulated()
    run_phases(swapped, tmp_path, "kubeadm-init", "join")
    swapped.api.nodes.update({"master": "10.244.1.0/24", "worker-1": "10.244.0.0/24"})
    with pytest.raises(LabError, match=r"master has 10.244.1.0/24, the plan says 10.244.0.0/24"):
        run_pod_cidr(context(swapped, tmp_path))
    assert not [c for c in swapped.node("master").commands if "patch" in c]


def test_kubeconfig_is_written_private_and_rewritten_only_when_it_changes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="k8s_cni_lab.phases")
    nodes = cluster()
    nodes.node("master").files[ADMIN_KUBECONFIG] = (DEFAULT_ADMIN_CONF.encode(), 0o600)
    run_kubeconfig(context(nodes, tmp_path))
    written = tmp_path / "kubeconfig"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert "server: https://203.0.113.10:6443" in written.read_text()
    run_kubeconfig(context(nodes, tmp_path))
    assert caplog.records[-1].getMessage().endswith(f"no-op: {written} is up to date")
    with pytest.raises(LabError, match=r"admin.conf does not exist on master"):
        run_kubeconfig(context(cluster(), tmp_path))


# -- the whole workflow, stopped once anywhere -------------------------------------------------

def test_the_whole_cloud_workflow_then_a_rerun_that_changes_nothing(tmp_path: Path) -> None:
    """All eleven phases in order; then a second run writes, initialises, joins and patches
    nothing."""
    nodes = simulated()
    assert run_phases(nodes, tmp_path) == [phase.name for phase in cloud_workflow()]
    master = nodes.node("master").commands
    order = ["<connect>", "cloud-init status --wait", "printf 'kubeadm", BOOT_COMMAND,
             "kubeadm init", "get nodes", "token create", "token delete", "patch node worker-1",
             "wait --for=condition", "apply -f -", "exec bash-worker-1"]
    positions = [next(i for i, c in enumerate(master) if step in c) for step in order]
    assert positions == sorted(positions)
    wait = next(c for c in master if "wait --for=condition" in c)  # the plan's nodes
    assert "--all" not in wait and all(f"node/{n.name}" in wait for n in PLAN.nodes)
    assert "server: https://203.0.113.10:6443" in (tmp_path / "kubeconfig").read_text()
    first, done = counts(nodes), nodes.state()

    assert run_phases(nodes, tmp_path) == [phase.name for phase in cloud_workflow()]
    assert nodes.state() == done
    plugin = [file.node_path for file in plugin_files(tmp_path / "lab_cni")]
    for name, node in nodes.nodes.items():
        assert sorted(node.uploads) == sorted([*NODE_FILES.__dict__.values(), *plugin])  # once
        again = node.commands[first[name]:]
        assert BOOT_COMMAND in again  # re-applied every time: it is idempotent
        assert not [c for c in again if any(word in c for word in CHANGING)]


# (phase, node, fault): each stops its phase once, the way a real failure there would.
PHASE_FAULTS = [
    ("wait-ssh", "worker-2", "<connect>"),
    ("wait-cloud-init", "worker-1", "cloud-init status --wait"),
    ("prerequisites", "master", "printf 'kubeadm="),
    ("cni", "worker-2", "<put>"),
    ("node-network", "worker-1", BOOT_COMMAND),
    ("kubeadm-init", "master", "kubeadm init"),
    ("join", "worker-2", "kubeadm join"),
    ("join", "master", "token create"),
    ("pod-cidr", "master", "patch node worker-2"),
    ("ready", "master", "wait --for=condition=Ready node/"),
    ("kubeconfig", "master", "<read:/etc/kubernetes/admin.conf>"),
    ("verify", "master", "apply -f -"),
]


@pytest.mark.parametrize(("phase", "node", "fault"), PHASE_FAULTS)
def test_any_phase_stopped_once_is_finished_by_the_next_run(
        tmp_path: Path, phase: str, node: str, fault: str) -> None:
    nodes = simulated()
    nodes.node(node).faults[fault] = 1
    with pytest.raises(LabError, match=f"^phase {phase}: "):
        run_phases(nodes, tmp_path)
    assert run_phases(nodes, tmp_path) == [phase.name for phase in cloud_workflow()]
    done, before = nodes.state(), counts(nodes)
    run_phases(nodes, tmp_path)
    assert nodes.state() == done
    assert not [c for c in commands_since(nodes, before) if any(w in c for w in CHANGING)]
    assert nodes.api.nodes == {n.name: str(n.pod_cidr) for n in PLAN.nodes}
    assert set(nodes.api.tokens.values()) == {"15m"}  # init's own, expiring soon


@pytest.mark.parametrize("stop_after", INIT_STEPS)
def test_the_workflow_resumes_after_kubeadm_init_stopped_at_any_step(
        tmp_path: Path, stop_after: str) -> None:
    nodes = simulated()
    nodes.node("master").stop_init_after = stop_after
    with pytest.raises(LabError, match=r"^phase kubeadm-init: "):
        run_phases(nodes, tmp_path)
    assert run_phases(nodes, tmp_path) == [phase.name for phase in cloud_workflow()]
    done, before = nodes.state(), counts(nodes)
    run_phases(nodes, tmp_path)
    assert nodes.state() == done
    assert not [c for c in commands_since(nodes, before) if any(w in c for w in CHANGING)]

"""The cloud workflow over fake nodes: given what the nodes answer, expect these commands,
uploads, no-ops and errors. kubeadm's configs and parsers are tested as pure functions."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
import yaml

from bootstrap.errors import CommandFailed, LabError
from bootstrap.inventory import Inventory, inventory_from_plan
from bootstrap.kubeadm import (
    ADMIN_KUBECONFIG,
    KUBELET_KUBECONFIG,
    JoinCredentials,
    operator_kubeconfig,
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
from bootstrap.phases.context import CloudData
from bootstrap.phases.join import run_join
from bootstrap.phases.kubeadm_init import run_kubeadm_init
from bootstrap.phases.kubeconfig import run_kubeconfig
from bootstrap.phases.pod_cidr import run_pod_cidr
from bootstrap.phases.prerequisites import run_prerequisites
from bootstrap.phases.wait_cloud_init import run_wait_cloud_init
from bootstrap.phases.workflow import Runner
from infra.plan import Settings, make_plan
from tests.bootstrap.cloud_replies import healthy_verify_replies
from tests.bootstrap.fakes import FakeCluster, FakeNode, Reply
from tests.bootstrap.sshd import new_ed25519_key

PLAN = make_plan(Settings())
PUBLIC = {"master": "203.0.113.10", "worker-1": "203.0.113.11", "worker-2": "203.0.113.12"}
TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "ab" * 32
JOIN_COMMAND = (f"kubeadm join 10.0.1.10:6443 --token {TOKEN} "
                f"--discovery-token-ca-cert-hash {CA_HASH} \n")
ADMIN_CONF = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://10.0.1.10:6443
  name: kubernetes
users:
- name: kubernetes-admin
  user:
    client-key-data: U0VDUkVU
"""


def inventory() -> Inventory:
    return inventory_from_plan(PLAN, hosts=PUBLIC,
                               host_keys=dict.fromkeys(PUBLIC, new_ed25519_key().public_line),
                               private_key="unused by fakes")


def context(cluster: FakeCluster, tmp_path: Path) -> CloudData:
    return CloudData(PLAN, inventory(), cluster, tmp_path / "plugin",  # type: ignore[arg-type]
                     tmp_path / "kubeconfig")


def cluster(**replies: list[Reply]) -> FakeCluster:
    return FakeCluster({name: FakeNode(name, replies=list(replies.get(name.replace("-", "_"),
                                                                      [])))
                        for name in PLAN.node_names()})


# -- pure: kubeadm configs and parsers ---------------------------------------------------------

def test_init_config_pins_the_plan_and_keeps_cidr_allocation_off() -> None:
    init, cluster_config = yaml.safe_load_all(
        render_init_config(PLAN, inventory().node("master"), "v1.36.2"))
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


def test_join_command_is_parsed_and_the_token_stays_out_of_repr() -> None:
    credentials = parse_join_command("W1126 warning line\n" + JOIN_COMMAND)
    assert credentials == JoinCredentials("10.0.1.10:6443", TOKEN, CA_HASH)
    assert TOKEN not in repr(credentials)
    with pytest.raises(LabError, match="printed no join command") as refused:
        parse_join_command(f"kubeadm join --token {TOKEN}")
    assert TOKEN not in str(refused.value)


def test_join_config_pins_the_ca_hash() -> None:
    config = yaml.safe_load(render_join_config(parse_join_command(JOIN_COMMAND),
                                               inventory().node("worker-2")))
    assert config["kind"] == "JoinConfiguration"
    assert config["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.0.1.10:6443", "token": TOKEN, "caCertHashes": [CA_HASH]}
    assert config["nodeRegistration"]["name"] == "worker-2"
    assert config["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "node-ip", "value": "10.0.1.12"}]


@pytest.mark.parametrize(("facts", "problems"), [
    ({"kubeadm": "v1.36.2", "systemd_cgroup": "1", "swap": "0"}, []),
    ({"kubeadm": "v1.35.0", "systemd_cgroup": "1", "swap": "0"}, ["kubeadm reports 'v1.35.0'"]),
    ({"kubeadm": "bash: kubeadm: command not found", "systemd_cgroup": "0", "swap": "1"},
     ["kubeadm reports 'bash: kubeadm", "SystemdCgroup = true", "swap is on"]),
    ({}, ["kubeadm reports 'nothing'", "SystemdCgroup"]),
])
def test_prerequisite_problems(facts: dict[str, str], problems: list[str]) -> None:
    found = prerequisite_problems(facts, "1.36")
    assert len(found) == len(problems)
    for message, start in zip(found, problems, strict=True):
        assert start in message


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
    config = yaml.safe_load(operator_kubeconfig(ADMIN_CONF, inventory().node("master")))
    assert config["clusters"][0]["cluster"]["server"] == "https://203.0.113.10:6443"
    assert config["users"][0]["user"]["client-key-data"] == "U0VDUkVU"


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
    good = "kubeadm=v1.36.2\nsystemd_cgroup=1\nswap=0\n"
    nodes = cluster(master=[Reply("printf", 0, good)], worker_1=[Reply("printf", 0, good)],
                    worker_2=[Reply("printf", 0, "kubeadm=v1.36.0\nsystemd_cgroup=0\nswap=2\n")])
    with pytest.raises(LabError) as failed:
        run_prerequisites(context(nodes, tmp_path))
    message = str(failed.value)
    assert "1 node(s) failed: worker-2" in message
    assert "SystemdCgroup" in message and "swap is on" in message


def test_kubeadm_init_runs_once_with_the_config_on_stdin(tmp_path: Path) -> None:
    nodes = cluster(master=[Reply("kubeadm version", 0, "v1.36.2\n"),
                            Reply("kubeadm init", creates=ADMIN_KUBECONFIG)])
    run_kubeadm_init(context(nodes, tmp_path))
    master = nodes.node("master")
    assert master.commands == ["kubeadm version -o short",
                               "kubeadm init --config /dev/stdin --skip-token-print"]
    config = master.stdins[1]
    assert config is not None and b"kubernetesVersion: v1.36.2" in config
    run_kubeadm_init(context(nodes, tmp_path))  # admin.conf exists now: nothing runs
    assert len(master.commands) == 2
    assert nodes.node("worker-1").commands == []


def test_join_joins_only_pending_workers_and_never_logs_the_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    nodes = cluster(master=[Reply("token create", 0, JOIN_COMMAND)],
                    worker_2=[Reply("kubeadm join", creates=KUBELET_KUBECONFIG)])
    nodes.node("worker-1").files[KUBELET_KUBECONFIG] = (b"joined", 0o600)
    run_join(context(nodes, tmp_path))
    assert nodes.node("master").commands == [
        "kubeadm token create --print-join-command --ttl 30m"]
    assert nodes.node("worker-1").commands == []
    worker_2 = nodes.node("worker-2")
    assert worker_2.commands == ["kubeadm join --config /dev/stdin"]
    assert worker_2.stdins[0] is not None and TOKEN.encode() in worker_2.stdins[0]
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]
    run_join(context(nodes, tmp_path))  # everyone joined: no new token, no join
    assert len(nodes.node("master").commands) == 1


def test_a_failed_token_create_keeps_the_token_out_of_the_error(tmp_path: Path) -> None:
    """kubeadm may print the join command and still fail: its output must not travel."""
    nodes = cluster(master=[Reply("token create", 1, JOIN_COMMAND)])
    with pytest.raises(CommandFailed) as failed:
        run_join(context(nodes, tmp_path))
    assert TOKEN not in str(failed.value) and "withheld" in str(failed.value)


def test_pod_cidr_patches_empty_nodes_and_refuses_disagreement(tmp_path: Path) -> None:
    listed = "master 10.244.0.0/24\nworker-1 \nworker-2 \n"
    nodes = cluster(master=[Reply("get nodes", 0, listed)])
    run_pod_cidr(context(nodes, tmp_path))
    assert nodes.node("master").commands[1:] == [
        pod_cidr_patch_command("worker-1", "10.244.1.0/24"),
        pod_cidr_patch_command("worker-2", "10.244.2.0/24")]
    swapped = cluster(master=[Reply("get nodes", 0, "master 10.244.1.0/24\n"
                                                    "worker-1 10.244.0.0/24\nworker-2 \n")])
    with pytest.raises(LabError, match=r"master has 10.244.1.0/24, the plan says 10.244.0.0/24"):
        run_pod_cidr(context(swapped, tmp_path))
    assert len(swapped.node("master").commands) == 1  # nothing patched


def test_kubeconfig_is_written_private_and_rewritten_only_when_it_changes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="k8s_cni_lab.phases")
    nodes = cluster()
    nodes.node("master").files[ADMIN_KUBECONFIG] = (ADMIN_CONF.encode(), 0o600)
    run_kubeconfig(context(nodes, tmp_path))
    written = tmp_path / "kubeconfig"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert "server: https://203.0.113.10:6443" in written.read_text()
    run_kubeconfig(context(nodes, tmp_path))
    assert caplog.records[-1].getMessage().endswith(f"no-op: {written} is up to date")
    with pytest.raises(LabError, match=r"admin.conf does not exist on master"):
        run_kubeconfig(context(cluster(), tmp_path))


def test_the_whole_cloud_workflow_then_a_rerun_that_changes_nothing(tmp_path: Path) -> None:
    """All eleven phases in order over fake nodes; then, with the nodes reporting the state the
    first run left, a second run writes, initialises, joins and patches nothing."""
    plugin = tmp_path / "lab_cni.py"
    plugin.write_bytes(b"plugin")
    facts = Reply("printf 'kubeadm", 0, "kubeadm=v1.36.2\nsystemd_cgroup=1\nswap=0\n")
    not_enabled = Reply("is-enabled", 1)
    nodes = cluster(
        master=[facts, not_enabled, Reply("kubeadm version", 0, "v1.36.2\n"),
                Reply("kubeadm init", creates=ADMIN_KUBECONFIG, content=ADMIN_CONF.encode()),
                Reply("token create", 0, JOIN_COMMAND),
                Reply("get nodes", 0, "master \nworker-1 \nworker-2 \n"),
                *healthy_verify_replies()],
        worker_1=[facts, not_enabled, Reply("kubeadm join", creates=KUBELET_KUBECONFIG)],
        worker_2=[facts, not_enabled, Reply("kubeadm join", creates=KUBELET_KUBECONFIG)])
    for node in nodes.nodes.values():
        node.files["/run/systemd/system"] = (b"", 0o755)

    def run() -> list[str]:
        return run_cloud_workflow(PLAN, inventory(), kubeconfig_path=tmp_path / "kubeconfig",
                                  ssh=nodes, plugin_source=plugin)  # type: ignore[arg-type]

    assert run() == [phase.name for phase in cloud_workflow()]
    master = nodes.node("master").commands
    order = ["<connect>", "cloud-init status --wait", "printf 'kubeadm", BOOT_COMMAND,
             "kubeadm init", "token create", "get nodes", "patch node worker-1", "wait --for",
             "apply -f -", "exec bash-worker-1"]
    positions = [next(i for i, c in enumerate(master) if step in c) for step in order]
    assert positions == sorted(positions)
    wait = next(c for c in master if "wait --for" in c)  # the plan's nodes, not --all
    assert "--all" not in wait and all(f"node/{n.name}" in wait for n in PLAN.nodes)
    assert "server: https://203.0.113.10:6443" in (tmp_path / "kubeconfig").read_text()
    first = {name: len(node.commands) for name, node in nodes.nodes.items()}

    for node in nodes.nodes.values():  # what the nodes now say about themselves
        node.replies.remove(not_enabled)
    nodes.node("master").replies.insert(0, Reply("get nodes", 0, "".join(
        f"{n.name} {n.pod_cidr}\n" for n in PLAN.nodes)))
    assert run() == [phase.name for phase in cloud_workflow()]
    for name, node in nodes.nodes.items():
        assert sorted(node.uploads) == sorted(NODE_FILES.__dict__.values())  # each once
        again = node.commands[first[name]:]
        assert BOOT_COMMAND in again  # re-applied every time: it is idempotent
        assert not [c for c in again if any(word in c for word in (
            "kubeadm init", "kubeadm join", "token create", "patch", "systemctl enable"))]

"""The cloud verify phase: the test pods' manifests and the cloud's check list as pure
functions, then the phase over fake nodes (fakes.py) whose scripted kubectl replies play a
healthy cluster, one that NATs pod traffic between nodes, and one where packets get no
answer. No cluster, kubectl or container runtime runs here, and nothing is sent anywhere:
checkip.amazonaws.com is a scripted reply too."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bootstrap.errors import CommandFailed, LabError
from bootstrap.kubeadm import ADMIN_KUBECONFIG
from bootstrap.phases import cloud_workflow
from bootstrap.phases.context import CloudContext
from bootstrap.phases.verify import run_verify
from bootstrap.phases.workflow import Runner
from bootstrap.provider import BootstrapFailed, BootstrapProvider
from bootstrap.verify.checks import ECHO_SERVER, Outcome, PodInfo, resolved_address
from bootstrap.verify.cloud import cloud_checks, parse_pods, render_manifests
from infra.plan import Settings, make_plan
from tests.bootstrap import cloud_replies as replies
from tests.bootstrap.cloud_replies import KUBECTL, NAMESPACE, node_facts_reply
from tests.bootstrap.fakes import FakeCluster, Reply
from tests.bootstrap.test_cloud_phases import ADMIN_CONF, PLAN, cluster, inventory
from tests.bootstrap.test_provider import Connections, healthy_cluster
from tests.bootstrap.test_provider import inputs as provider_inputs

WORKERS = ["worker-1", "worker-2"]
ECHO_BYTES = ECHO_SERVER.read_bytes()
POD_INFOS = [PodInfo(name, node, ip, "web" if name.startswith("nginx") else "tools")
             for name, (node, ip) in replies.PODS.items()]
SECRET_KEY_DATA = "U0VDUkVU"  # the client key in ADMIN_CONF


class Recorded:
    """Stands in for the provider's `on_checks`."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def __call__(self, outcomes: Sequence[Outcome]) -> None:
        self.outcomes.extend(outcomes)


def verify_context(nodes: FakeCluster, tmp_path: Path, sink: Recorded) -> CloudContext:
    return CloudContext(plan=PLAN, inventory=inventory(), ssh=nodes,
                        kubeconfig_path=tmp_path / "kubeconfig", on_checks=sink)


def healthy(**extra: list[Reply]) -> FakeCluster:
    """A cluster answering like a healthy one; `extra` replies go first (they win)."""
    nodes = cluster(master=[*extra.get("master", []), *replies.healthy_verify_replies()],
                    worker_1=extra.get("worker_1", []), worker_2=extra.get("worker_2", []))
    nodes.node("master").files[ADMIN_KUBECONFIG] = (ADMIN_CONF.encode(), 0o600)
    return nodes


def manifests() -> dict[str, Any]:
    return json.loads(render_manifests(PLAN, ECHO_BYTES.decode()))


# -- pure: manifests, pod listing, check list ---------------------------------------------

def test_the_manifests_hold_the_seed_pods_on_their_workers() -> None:
    items = manifests()["items"]
    assert [item["kind"] for item in items] == ["Namespace", "ConfigMap"] + ["Pod"] * 4 + [
        "Service"]
    pods = {item["metadata"]["name"]: item for item in items[2:6]}
    assert {name: pod["spec"]["nodeSelector"] for name, pod in pods.items()} == {
        "nginx-worker-1": {"kubernetes.io/hostname": "worker-1"},
        "bash-worker-1": {"kubernetes.io/hostname": "worker-1"},
        "nginx-worker-2": {"kubernetes.io/hostname": "worker-2"},
        "bash-worker-2": {"kubernetes.io/hostname": "worker-2"}}
    for pod in pods.values():
        assert pod["metadata"]["namespace"] == NAMESPACE
        container, = pod["spec"]["containers"]
        assert container["image"] == "public.ecr.aws/docker/library/python:3.12-alpine"
        assert container["volumeMounts"] == [{"name": "echo-server",
                                              "mountPath": "/opt/k8s-cni-lab", "readOnly": True}]
        assert pod["spec"]["volumes"] == [{"name": "echo-server",
                                           "configMap": {"name": "echo-server"}}]
        assert pod["spec"]["automountServiceAccountToken"] is False
    web = pods["nginx-worker-2"]["spec"]["containers"][0]
    assert web["command"] == ["/usr/local/bin/python3", "-IS", "/opt/k8s-cni-lab/echo_server.py",
                              "serve", "--port", "8080", "--name", "nginx-worker-2"]
    assert web["readinessProbe"]["tcpSocket"] == {"port": 8080}
    assert pods["bash-worker-1"]["spec"]["containers"][0]["securityContext"] == {
        "capabilities": {"add": ["NET_RAW"]}}  # busybox ping


def test_the_echo_service_fronts_the_far_web_pod_at_a_static_cluster_ip() -> None:
    service = manifests()["items"][-1]
    assert service["metadata"] == {"name": "echo", "namespace": NAMESPACE}
    assert service["spec"] == {"type": "ClusterIP", "clusterIP": "10.96.0.100",
                               "selector": {"k8s-cni-lab/pod": "nginx-worker-2"},
                               "ports": [{"port": 8080, "targetPort": 8080}]}
    far_web = next(item for item in manifests()["items"]
                   if item["metadata"]["name"] == "nginx-worker-2")
    assert far_web["metadata"]["labels"]["k8s-cni-lab/pod"] == "nginx-worker-2"


def test_the_configmap_holds_the_echo_server_byte_for_byte_and_rendering_is_stable() -> None:
    config_map = manifests()["items"][1]
    assert config_map["metadata"] == {"name": "echo-server", "namespace": NAMESPACE}
    assert config_map["data"]["echo_server.py"].encode() == ECHO_BYTES
    assert render_manifests(PLAN, ECHO_BYTES.decode()) == render_manifests(
        PLAN, ECHO_BYTES.decode())  # a re-apply sends the same objects


def test_the_cloud_runs_the_local_checks_but_internet_to_pod() -> None:
    checks = cloud_checks(PLAN, inventory(), POD_INFOS)
    assert [check.name for check in checks] == [
        "pod to its gateway", "pod to pod, same node", "pod to pod, across nodes",
        "pod to pod, across nodes (back)", "large answer, across nodes", "node to pod",
        "pod to internet", "pod to Service, across nodes", "pod to Service, hairpin",
        "DNS: the API server's Service", "DNS: the echo Service"]
    internet = checks[6]
    assert (internet.target.ip, internet.port) == ("checkip.amazonaws.com", 80)
    assert internet.expect_seen == replies.WORKER_1_PUBLIC  # the node's public address
    assert checks[0].target.ip == "10.244.1.1"  # worker-1's cni0, from the plan


@pytest.mark.parametrize(("pods", "problem"), [
    ({**replies.PODS, "bash-worker-2": ("worker-1", "10.244.1.9")},
     "bash-worker-2 runs on worker-1, not worker-2"),
    ({**replies.PODS, "nginx-worker-1": ("worker-1", "")}, "nginx-worker-1 has no pod IP"),
    ({k: v for k, v in replies.PODS.items() if k != "nginx-worker-2"},
     "nginx-worker-2 is not listed"),
])
def test_a_pod_listing_that_cannot_be_checked_is_refused(pods: dict[str, tuple[str, str]],
                                                         problem: str) -> None:
    with pytest.raises(LabError, match=problem):
        parse_pods(replies.pod_listing(pods), WORKERS)


def test_a_listing_that_is_not_json_is_refused_with_the_command() -> None:
    with pytest.raises(LabError, match="get pods -o json` printed no pod list"):
        parse_pods("error: the server doesn't have a resource type", WORKERS)


# -- the phase over fake nodes ------------------------------------------------------------

def test_a_healthy_cluster_passes_applied_waited_and_probed_with_the_right_argv(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="k8s_cni_lab.phases")
    nodes, sink = healthy(), Recorded()
    run_verify(verify_context(nodes, tmp_path, sink))

    master = nodes.node("master")
    assert master.commands[:3] == [
        f"{KUBECTL} apply -f -",
        f"{KUBECTL} -n {NAMESPACE} wait --for=condition=Ready pod/nginx-worker-1 "
        "pod/bash-worker-1 pod/nginx-worker-2 pod/bash-worker-2 --timeout=180s",
        f"{KUBECTL} -n {NAMESPACE} get pods -o json"]
    assert master.stdins[0] == render_manifests(PLAN, ECHO_BYTES.decode()).encode()
    assert sorted(master.commands[3:]) == sorted(replies.PROBES)  # concurrent: any order
    node_probe = master.commands.index(replies.NODE_TO_POD)
    assert master.stdins[node_probe] == ECHO_BYTES  # the node's client comes on stdin
    assert nodes.node("worker-1").commands == nodes.node("worker-2").commands == []  # no facts
    assert [(o.check.name, o.passed) for o in sink.outcomes] == [
        (name, True) for name in ("pod to its gateway", "pod to pod, same node",
                                  "pod to pod, across nodes", "pod to pod, across nodes (back)",
                                  "large answer, across nodes", "node to pod", "pod to internet",
                                  "pod to Service, across nodes", "pod to Service, hairpin",
                                  "DNS: the API server's Service", "DNS: the echo Service")]
    table = next(r.getMessage() for r in caplog.records if "checks done" in r.getMessage())
    assert "'internet to pod' is not run" in table
    assert table.count(" pass ") == 11 and "FAIL" not in table


def test_nat_inside_the_cluster_fails_both_cross_node_checks_with_the_cause(
        tmp_path: Path) -> None:
    """The seed lab's `! -o cni0` NAT rule: far pods see the node's address."""
    nodes = healthy(master=[Reply(replies.ACROSS, 0, replies.echo("10.0.1.11")),
                            Reply(replies.ACROSS_BACK, 0, replies.echo("10.0.1.12"))],
                    worker_1=[node_facts_reply("10.244.1.0/24", "! -o cni0")],
                    worker_2=[node_facts_reply("10.244.2.0/24", "! -o cni0")])
    with pytest.raises(LabError) as failed:
        run_verify(verify_context(nodes, tmp_path, Recorded()))
    message = str(failed.value)
    assert message.startswith("3 of 11 connectivity check(s) failed:")
    assert "- pod to pod, across nodes: expected sees 10.244.1.3, got sees 10.0.1.11. " \
           "Likely cause: NAT inside the cluster: worker-1 masquerades" in message
    assert "- pod to pod, across nodes (back): expected sees 10.244.2.3, got sees " \
           "10.0.1.12. Likely cause: NAT inside the cluster: worker-2 masquerades" in message
    assert "pod to internet" not in message


def test_no_answer_fails_each_check_named_with_a_cause_it_can_see(tmp_path: Path) -> None:
    """No NAT on worker-1: the internet never answers. Across nodes, the nodes' rules are
    right, so the message points at what the nodes cannot show (the VPC), claiming nothing."""
    nodes = healthy(master=[Reply(replies.TO_INTERNET, 1, "unreachable: timed out\n"),
                            Reply(replies.ACROSS, 1, "unreachable: timed out\n"
                                                     "command terminated with exit code 1\n")],
                    worker_1=[node_facts_reply("10.244.1.0/24", None)],
                    worker_2=[node_facts_reply("10.244.2.0/24")])
    nodes.node("master").replies.insert(0, node_facts_reply("10.244.0.0/24"))
    sink = Recorded()
    with pytest.raises(LabError) as failed:
        run_verify(verify_context(nodes, tmp_path, sink))
    message = str(failed.value)
    assert message.startswith("3 of 11 connectivity check(s) failed:")
    assert "- pod to internet: expected sees 203.0.113.11, got no answer. Likely cause: " \
           "no NAT on worker-1" in message
    assert "- pod to pod, across nodes: expected sees 10.244.1.3, got no answer. Likely " \
           "cause: unreachable: timed out; the nodes' rules look right: check the VPC route " \
           "for worker-2's pod CIDR" in message
    assert [o.check.name for o in sink.outcomes if not o.passed] == [
        "pod to pod, across nodes", "large answer, across nodes",
        "pod to internet"]  # the provider sees them too


def test_service_and_dns_failures_point_at_kube_proxy_and_coredns(tmp_path: Path) -> None:
    """Pod networking passes; the Service does not answer and CoreDNS knows no such name."""
    nodes = healthy(master=[
        Reply(replies.HAIRPIN, 1, "unreachable: timed out\n"),
        Reply(replies.DNS_ECHO, 1, "Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\n"
                                   "** server can't find echo.k8s-cni-lab-checks.svc."
                                   "cluster.local: NXDOMAIN\n")],
        worker_1=[node_facts_reply("10.244.1.0/24")], worker_2=[node_facts_reply("10.244.2.0/24")])
    with pytest.raises(LabError) as failed:
        run_verify(verify_context(nodes, tmp_path, Recorded()))
    message = str(failed.value)
    assert message.startswith("2 of 11 connectivity check(s) failed:")
    assert "- pod to Service, hairpin: expected answers, got no answer. Likely cause: " \
           "unreachable: timed out; the nodes' rules look right: check kube-proxy" in message
    assert "- DNS: the echo Service: expected sees 10.96.0.100, got no answer. Likely cause: " \
           "** server can't find echo.k8s-cni-lab-checks.svc.cluster.local: NXDOMAIN; " \
           "the nodes' rules look right: check kube-proxy" in message


@pytest.mark.parametrize("answer", [
    "Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\nName:\tx.cluster.local\n"
    "Address: 10.96.0.1\n",
    "Server:    10.96.0.10\nAddress 1: 10.96.0.10 kube-dns.kube-system.svc.cluster.local\n\n"
    "Name:      x.cluster.local\nAddress 1: 10.96.0.1 kubernetes.default.svc.cluster.local\n",
])
def test_the_name_resolves_to_the_answer_not_the_servers_address(answer: str) -> None:
    assert resolved_address(answer) == "10.96.0.1"
    assert resolved_address(answer.partition("Name:")[0]) is None  # NXDOMAIN: no Name line


def test_pods_that_never_get_ready_fail_before_any_probe(tmp_path: Path) -> None:
    nodes = healthy(master=[Reply("wait --for=condition=Ready pod/", 1,
                                  "error: timed out waiting for the condition on "
                                  "pods/bash-worker-2\n")])
    with pytest.raises(CommandFailed, match="pods/bash-worker-2"):
        run_verify(verify_context(nodes, tmp_path, Recorded()))
    assert len(nodes.node("master").commands) == 2  # apply, wait: no listing, no probe


def test_no_secret_reaches_the_log_or_the_error(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    nodes = healthy(master=[Reply(replies.TO_INTERNET, 1, "unreachable: timed out\n")])
    with pytest.raises(LabError) as failed:
        run_verify(verify_context(nodes, tmp_path, Recorded()))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for text in (logged, str(failed.value)):
        assert SECRET_KEY_DATA not in text and "certificate-authority-data" not in text
    # Every command is kubectl with the admin kubeconfig's path, a probe or a fact: none
    # prints the kubeconfig (no `config view --raw`, no read of admin.conf).
    assert not [c for c in nodes.node("master").commands
                if "config view" in c or c.startswith(("cat", "base64"))]


def test_verify_runs_last_and_can_be_skipped(tmp_path: Path) -> None:
    assert cloud_workflow()[-1].name == "verify"
    nodes = healthy()
    ran = Runner(cloud_workflow(), lambda: verify_context(nodes, tmp_path, Recorded())).run(
        only=["kubeconfig", "verify"], skip=["verify"])
    assert ran == ["kubeconfig"]
    assert not [c for c in nodes.node("master").commands if "apply" in c]


def test_a_cluster_with_one_worker_has_no_cross_node_checks_to_run(tmp_path: Path) -> None:
    plan = make_plan(Settings(node_count=2))
    nodes = FakeCluster({name: healthy().node(name) for name in plan.node_names()})
    context = CloudContext(plan=plan, inventory=inventory(), ssh=nodes,
                           kubeconfig_path=tmp_path / "kubeconfig")
    assert Runner(cloud_workflow(), lambda: context).run(only=["verify"]) == []
    assert nodes.node("master").commands == []


def test_pulumi_up_fails_loudly_with_the_table_on_stderr(
        capfd: pytest.CaptureFixture[str]) -> None:
    nodes = healthy_cluster()
    nodes.node("master").replies.insert(0, Reply(replies.TO_INTERNET, 1, "unreachable\n"))
    with pytest.raises(BootstrapFailed) as failed:
        BootstrapProvider(connect=Connections(nodes)).create(provider_inputs())
    assert str(failed.value).startswith("cluster bootstrap failed: phase verify: 1 of 11 "
                                        "connectivity check(s) failed:\n- pod to internet: ")
    stderr = capfd.readouterr().err
    assert "[bootstrap] [verify] master: checks done" in stderr
    assert "FAIL no answer" in stderr and SECRET_KEY_DATA not in stderr

"""The ClusterBootstrap dynamic provider, two ways.

1. Called directly, with property bags shaped as the engine sends them (serialized and
   deserialized over Pulumi's wire format) and the SSH layer replaced by the fake nodes of
   fakes.py, through the provider's `connect` argument: no kubeadm or cloud runs here.
2. Over gRPC as the engine drives it: `python -m pulumi.dynamic` in a subprocess, the pickled
   provider in `__provider`, and the generated stubs. Its only network traffic goes to
   127.0.0.1, to a port that is bound but not listening, so connections are refused.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dill
import grpc
import pytest
import yaml
from google.protobuf import struct_pb2
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc
from pulumi.runtime.sync_await import _sync_await

from bootstrap import node_network
from bootstrap.inventory import Inventory
from bootstrap.provider import (
    BootstrapFailed,
    BootstrapProvider,
    changed_inputs,
    installed_version,
    open_cluster_ssh,
    redact,
)
from bootstrap.ssh import ConnectPolicy
from infra.plan import Settings, make_plan
from tests.bootstrap.cloud_replies import healthy_verify_replies
from tests.bootstrap.fakes import FakeCluster, Reply
from tests.bootstrap.simulated_cluster import simulated_cluster
from tests.bootstrap.sshd import new_ed25519_key
from tests.bootstrap.test_cloud_phases import ADMIN_CONF, PUBLIC, TOKEN

ROOT = Path(__file__).resolve().parents[2]
PLAN = make_plan(Settings())
LOGIN_KEY = new_ed25519_key()
HOST_KEYS = {name: new_ed25519_key().public_line for name in PLAN.node_names()}
URN = ("urn:pulumi:dev::k8s-cni-lab::pulumi-python:dynamic/bootstrap:ClusterBootstrap"
       "::lab-cluster")
SECRET_KEY_DATA = "U0VDUkVU"  # the client key in ADMIN_CONF


def wire(props: dict[str, Any]) -> dict[str, Any]:
    """What the provider receives: numbers as floats, tuples as lists, None dropped."""
    return rpc.deserialize_properties(_sync_await(rpc.serialize_properties(props, {})), True)


def inputs(settings: Settings | None = None, **changes: Any) -> dict[str, Any]:
    settings = settings or Settings()
    plan = make_plan(settings)
    props: dict[str, Any] = {
        "settings": asdict(settings),
        "nodes": [{"name": n.name, "publicIp": PUBLIC.get(n.name, "203.0.113.99"),
                   "sshPort": 22, "hostKey": HOST_KEYS.get(n.name, HOST_KEYS["master"]),
                   "privateIp": str(n.private_ip)}
                  for n in plan.nodes],
        "sshUser": "ubuntu",
        "privateKey": LOGIN_KEY.private_openssh,
        "version": {"plugin": "a" * 64, "nodeFiles": "b" * 64},
        "sshDeadlineSeconds": 180,
    }
    return wire({**props, **changes})


def with_node(props: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    nodes = [{**n, **changes} if n["name"] == name else n for n in props["nodes"]]
    return {**props, "nodes": nodes}


def healthy_cluster() -> FakeCluster:
    """Fresh, well-prepared Ubuntu machines, simulated (see simulated_cluster.py)."""
    return simulated_cluster(PLAN, master_replies=healthy_verify_replies(), admin_conf=ADMIN_CONF,
                             join_tokens=[TOKEN])


class Connections:
    """A `connect` factory handing out one fake cluster, recording what it was given."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.calls: list[tuple[Inventory, ConnectPolicy]] = []

    def __call__(self, inventory: Inventory, policy: ConnectPolicy) -> Any:
        self.calls.append((inventory, policy))
        return self.cluster


def commands_since(cluster: FakeCluster, counts: dict[str, int]) -> list[str]:
    """Every command each node ran after it had run counts[node]."""
    return [command for name, node in cluster.nodes.items()
            for command in node.commands[counts.get(name, 0):]]


def assert_no_secret(text: str) -> None:
    for secret in (*LOGIN_KEY.private_openssh.splitlines()[1:-1], TOKEN, SECRET_KEY_DATA):
        assert secret not in text


# -- 1. the provider called directly --------------------------------------------------------

def test_create_runs_the_cloud_workflow_and_returns_kubeconfig_and_pod_cidrs(
        capfd: pytest.CaptureFixture[str]) -> None:
    connections = Connections(healthy_cluster())
    props = inputs(sshDeadlineSeconds=42)
    created = BootstrapProvider(connect=connections).create(props)

    assert created.id.startswith("cluster-")
    outs = created.outs or {}
    kubeconfig = yaml.safe_load(outs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.10:6443"
    assert kubeconfig["users"][0]["user"]["client-key-data"] == SECRET_KEY_DATA
    assert outs["apiServer"] == "https://203.0.113.10:6443"
    assert outs["checks"] == dict.fromkeys(
        ["pod to its gateway", "pod to pod, same node", "pod to pod, across nodes",
         "pod to pod, across nodes (back)", "large answer, across nodes", "node to pod",
         "pod to internet", "pod to Service, across nodes", "pod to Service, hairpin",
         "DNS: the API server's Service", "DNS: the echo Service"], "pass")
    assert {key: outs[key] for key in props} == props  # the inputs, for diff and delete
    (inventory, policy), = connections.calls
    assert policy.deadline == 42
    assert [(n.name, n.host, n.port, n.user, n.host_key) for n in inventory.nodes] == [
        (name, PUBLIC[name], 22, "ubuntu", HOST_KEYS[name]) for name in PLAN.node_names()]
    assert inventory.private_key == LOGIN_KEY.private_openssh
    master = connections.cluster.node("master").commands
    assert any("kubeadm init" in c for c in master) and any("wait --for" in c for c in master)
    stderr = capfd.readouterr().err
    assert "[bootstrap] [kubeadm-init] master: control plane v1.36.2 initialised" in stderr
    assert "[bootstrap] [join] worker-2: joined 10.0.1.10:6443" in stderr
    assert "[bootstrap] [verify] master: checks done\nConnectivity checks (cloud;" in stderr
    assert_no_secret(stderr)


def test_update_reruns_the_workflow_which_changes_nothing_on_a_built_cluster(
        capfd: pytest.CaptureFixture[str]) -> None:
    connections = Connections(healthy_cluster())
    provider = BootstrapProvider(connect=connections)
    created = provider.create(inputs())
    before = {name: len(node.commands) for name, node in connections.cluster.nodes.items()}
    news = inputs(version={"plugin": "c" * 64, "nodeFiles": "b" * 64})
    updated = provider.update(created.id, created.outs or {}, news)

    again = commands_since(connections.cluster, before)
    assert any(node_network.BOOT_COMMAND in c for c in again)  # re-applied: it is idempotent
    assert not [c for c in again if any(step in c for step in (
        "kubeadm init", "kubeadm join", "token create", "patch node"))]
    assert (updated.outs or {})["version"]["plugin"] == "c" * 64
    assert (updated.outs or {})["kubeconfig"] == (created.outs or {})["kubeconfig"]
    assert "no-op: /etc/kubernetes/admin.conf exists" in capfd.readouterr().err


def test_a_failed_phase_is_one_clean_error_naming_the_node_without_the_key() -> None:
    cluster = healthy_cluster()
    key_line = LOGIN_KEY.private_openssh.splitlines()[2]
    cluster.node("worker-2").replies.insert(0, Reply("--wait", 1))
    # A command that echoes key material: the error quotes its output, redacted.
    cluster.node("worker-2").replies.insert(0, Reply("--long", 1, f"status: error\n{key_line}\n"))
    with pytest.raises(BootstrapFailed) as failed:
        BootstrapProvider(connect=Connections(cluster)).create(inputs())
    message = str(failed.value)
    assert message.startswith("cluster bootstrap failed: phase wait-cloud-init: 1 node(s) "
                              "failed: worker-2")
    assert "| [secret]" in message and "run `pulumi up` again" in message
    assert_no_secret(message)
    assert failed.value.__suppress_context__  # the traceback shows this one error


def test_a_node_holding_another_pod_cidr_fails_the_create() -> None:
    cluster = healthy_cluster()
    cluster.node("master").replies.insert(0, Reply("get nodes", 0, "master 10.244.1.0/24\n"
                                                   "worker-1 10.244.0.0/24\nworker-2 \n"))
    with pytest.raises(BootstrapFailed, match=r"phase pod-cidr: node pod CIDRs disagree .*: "
                                              r"master has 10.244.1.0/24, the plan says"):
        BootstrapProvider(connect=Connections(cluster)).create(inputs())


def test_delete_touches_no_node(capfd: pytest.CaptureFixture[str]) -> None:
    def no_connection(_inventory: Inventory, _policy: ConnectPolicy) -> Any:
        raise AssertionError("delete must not connect")

    outs = {**inputs(), "kubeconfig": ADMIN_CONF}
    BootstrapProvider(connect=no_connection).delete("cluster-0", outs)
    assert "nothing runs on the nodes" in capfd.readouterr().err


@pytest.mark.parametrize(("news", "changed", "replaces"), [
    (inputs(), [], None),
    (inputs(sshDeadlineSeconds=5), [], None),  # operational only
    (inputs(version={"plugin": "c" * 64, "nodeFiles": "b" * 64}), ["version.plugin"], []),
    (with_node(inputs(), "worker-1", publicIp="203.0.113.77"), ["nodes.worker-1.publicIp"],
     []),
    (inputs(privateKey="another key"), ["privateKey"], []),
    (inputs(Settings(kubernetes_version="1.37")), ["settings.kubernetes_version"], []),
    (inputs(Settings(node_count=4)), ["settings.node_count", "nodes.worker-3"], ["nodes"]),
    (inputs(Settings(node_count=2)), ["settings.node_count", "nodes.worker-2"], ["nodes"]),
])
def test_diff_updates_on_any_input_and_replaces_only_for_a_new_node_set(
        news: dict[str, Any], changed: list[str], replaces: list[str] | None) -> None:
    olds = {**inputs(), "kubeconfig": ADMIN_CONF,
            "__provider": "old pickle"}
    assert changed_inputs(olds, news) == changed
    result = BootstrapProvider().diff("cluster-0", olds, {**news, "__provider": "new pickle"})
    assert result.changes is bool(changed)
    assert result.replaces == replaces
    assert result.delete_before_replace in (None, False)


def test_diff_in_preview_counts_unknown_values_as_changed() -> None:
    olds = inputs()
    unknown_ip = with_node(inputs(), "master", publicIp=rpc.UNKNOWN)
    result = BootstrapProvider().diff("cluster-0", olds, unknown_ip)
    assert (result.changes, result.replaces) == (True, [])
    unknown_nodes = BootstrapProvider().diff("cluster-0", olds, {**olds, "nodes": rpc.UNKNOWN})
    assert (unknown_nodes.changes, unknown_nodes.replaces) == (True, [])


def test_check_accepts_good_and_unknown_inputs() -> None:
    provider = BootstrapProvider()
    for news in (inputs(), with_node(inputs(), "worker-1", hostKey=rpc.UNKNOWN),
                 {**inputs(), "nodes": rpc.UNKNOWN, "privateKey": rpc.UNKNOWN}):
        assert provider.check({}, news).failures == []


@pytest.mark.parametrize(("news", "failure"), [
    (with_node(inputs(), "worker-1", privateIp="10.0.1.99"),
     ("nodes", "node worker-1: the cloud reports private IP 10.0.1.99; the plan says "
               "10.0.1.11")),
    (with_node(inputs(), "worker-1", hostKey="ssh-ed25519"),
     ("nodes", "node worker-1: host key 'ssh-ed25519' is not an OpenSSH public key line")),
    (with_node(inputs(), "worker-2", sshPort="ssh"),
     ("nodes", "malformed node entry: ValueError(\"invalid literal for int()")),
    (inputs() | {"nodes": [{"name": "master"}]},
     ("nodes", "malformed node entry: KeyError('publicIp')")),
    (inputs(Settings(node_count=4)) | {"nodes": inputs()["nodes"]},
     ("nodes", "inventory nodes ['master', 'worker-1', 'worker-2'] differ")),
    (inputs() | {"settings": asdict(Settings(kubernetes_version="1.31"))},
     ("settings", "kubernetesVersion: '1.31' is not a supported minor")),
    (inputs() | {"settings": {"node_cuont": 3}},
     ("settings", "settings: unknown setting(s) node_cuont")),
    (inputs(sshDeadlineSeconds=0), ("sshDeadlineSeconds", "must be a positive number")),
])
def test_check_names_the_input_that_cannot_work(news: dict[str, Any],
                                                failure: tuple[str, str]) -> None:
    failures = BootstrapProvider().check({}, news).failures
    assert [(f.property, f.reason[:len(failure[1])]) for f in failures] == [failure]


def test_version_follows_the_plugin_and_the_rendered_node_files(tmp_path: Path) -> None:
    plugin = tmp_path / "lab_cni"
    plugin.mkdir()
    (plugin / "__init__.py").write_bytes(b"plugin 1")
    first = installed_version(PLAN, plugin)
    (plugin / "__init__.py").write_bytes(b"plugin 2")
    second = installed_version(PLAN, plugin)
    assert second["plugin"] != first["plugin"] and second["nodeFiles"] == first["nodeFiles"]
    other_pods = installed_version(make_plan(Settings(pod_cidr="10.200.0.0/16")), plugin)
    assert other_pods["nodeFiles"] != second["nodeFiles"]
    assert other_pods["plugin"] == second["plugin"]


def test_redact_replaces_the_key_and_each_of_its_lines() -> None:
    key = LOGIN_KEY.private_openssh
    lines = key.splitlines()
    assert_no_secret(redact(f"a {key} b {lines[1]} c", key))
    assert redact("nothing secret", key) == "nothing secret"


def test_the_provider_pickles_by_reference() -> None:
    """The engine stores this pickle in state and unpickles it in another process."""
    pickled = base64.b64decode(serialize_provider(BootstrapProvider()))
    assert len(pickled) < 500 and b"bootstrap.provider" in pickled
    restored = dill.loads(pickled)
    assert type(restored) is BootstrapProvider
    assert restored._connect is open_cluster_ssh


# -- 2. over gRPC, as the engine drives it --------------------------------------------------

PROVIDER_PICKLE = serialize_provider(BootstrapProvider())


@pytest.fixture
def provider_process() -> Iterator[tuple[provider_pb2_grpc.ResourceProviderStub,
                                         subprocess.Popen[bytes]]]:
    """The dynamic provider host the engine starts in the project directory: the working
    directory alone (no PYTHONPATH) must let it import bootstrap.provider to unpickle."""
    env = {**os.environ, "PULUMI_PROJECT": "k8s-cni-lab"}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen([sys.executable, "-m", "pulumi.dynamic"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())  # its first line, as the engine reads it
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            yield provider_pb2_grpc.ResourceProviderStub(channel), process
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but never listening: every connection to it is refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def struct(props: dict[str, Any]) -> struct_pb2.Struct:
    return _sync_await(rpc.serialize_properties({**props, "__provider": PROVIDER_PICKLE}, {}))


def unreachable_inputs(port: int, deadline: float) -> dict[str, Any]:
    props = inputs(sshDeadlineSeconds=deadline)
    return {**props, "nodes": [{**n, "publicIp": "127.0.0.1", "sshPort": port}
                               for n in props["nodes"]]}


def configure(stub: provider_pb2_grpc.ResourceProviderStub) -> provider_pb2.ConfigureResponse:
    """The engine's first call to a provider."""
    return stub.Configure(provider_pb2.ConfigureRequest(
        args=struct_pb2.Struct(), acceptSecrets=True, acceptResources=True))


def test_grpc_configure_check_and_diff_with_an_unknown_input(provider_process: Any) -> None:
    stub, _ = provider_process
    # So the engine sends plain values, which is why these tests send no secret markers.
    assert configure(stub).acceptSecrets is False

    checked = stub.Check(provider_pb2.CheckRequest(urn=URN, olds=struct_pb2.Struct(),
                                                   news=struct(inputs())))
    assert list(checked.failures) == []
    refused = stub.Check(provider_pb2.CheckRequest(
        urn=URN, olds=struct_pb2.Struct(),
        news=struct(with_node(inputs(), "worker-2", privateIp="10.0.1.50"))))
    assert [(f.property, f.reason.split(":")[0]) for f in refused.failures] == [
        ("nodes", "node worker-2")]

    olds = struct({**inputs(), "kubeconfig": ADMIN_CONF})
    unknown = stub.Diff(provider_pb2.DiffRequest(
        id="cluster-0", urn=URN, olds=olds,
        news=struct(with_node(inputs(), "worker-1", publicIp=rpc.UNKNOWN))))
    assert unknown.changes == provider_pb2.DiffResponse.DIFF_SOME
    assert list(unknown.replaces) == []
    grown = stub.Diff(provider_pb2.DiffRequest(id="cluster-0", urn=URN, olds=olds,
                                               news=struct(inputs(Settings(node_count=4)))))
    assert list(grown.replaces) == ["nodes"]
    same = stub.Diff(provider_pb2.DiffRequest(id="cluster-0", urn=URN, olds=olds,
                                              news=struct(inputs())))
    assert same.changes == provider_pb2.DiffResponse.DIFF_NONE


def test_grpc_create_against_an_unreachable_node_is_a_clean_error_then_delete(
        provider_process: Any, refused_port: int) -> None:
    stub, process = provider_process
    configure(stub)
    props = unreachable_inputs(refused_port, deadline=1.5)
    with pytest.raises(grpc.RpcError) as failed:
        stub.Create(provider_pb2.CreateRequest(urn=URN, properties=struct(props)), timeout=30)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    details = failed.value.details()
    assert ("bootstrap.provider.BootstrapFailed: cluster bootstrap failed: phase wait-ssh: "
            "3 node(s) failed: master, worker-1, worker-2") in details
    assert f"- master: node master (127.0.0.1:{refused_port}): no SSH session after" in details
    assert f"Unable to connect to port {refused_port} on 127.0.0.1" in details
    assert "The above exception was the direct cause" not in details
    assert_no_secret(details)

    stub.Delete(provider_pb2.DeleteRequest(id="cluster-0", urn=URN, properties=struct(props)),
                timeout=10)
    process.terminate()
    stderr = process.communicate(timeout=10)[1].decode()
    assert "[bootstrap] [wait-ssh] Connect to every node over SSH" in stderr
    assert "[bootstrap] forgetting the cluster on master, worker-1, worker-2" in stderr
    assert_no_secret(stderr)



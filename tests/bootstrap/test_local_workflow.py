"""The local workflow over real SSH: each node is a namespace this test creates, running sshd
in a private mount namespace whose /etc and /opt are overlays (writes land in the test's
directory, never on the host) and whose /run is empty (no systemd)."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from bootstrap.cni.install import ENTRY_MODULE, NODE_LAUNCHER, plugin_files
from bootstrap.errors import PhaseError
from bootstrap.inventory import Inventory, inventory_for_plan
from bootstrap.node_network import (
    NODE_FILES,
    OBSOLETE_NODE_FILES,
    applier_source,
    cni_conflist,
    desired_state,
    render_boot_unit,
    render_state,
)
from bootstrap.phases import run_local_workflow
from bootstrap.phases.context import LocalContext
from bootstrap.ssh import ClusterSSH, ConnectPolicy
from infra.plan import Plan, Settings, make_plan
from tests.bootstrap.conftest import needs_netns, needs_sshd
from tests.bootstrap.netns import Namespaces, connect_in_netns, iptables_state, namespaces
from tests.bootstrap.sshd import SSHD, KeyPair, new_ed25519_key, write_sshd_files

pytestmark = [needs_netns, needs_sshd]

OVERLAID = ("/etc", "/opt")
PLUGIN_V1 = b"def main():\n    print('lab-cni v1')\n    return 0\n"
PLUGIN_V2 = PLUGIN_V1.replace(b"v1", b"v2, upgraded")


def fake_plugin(directory: Path, entry_module: bytes) -> Path:
    """A plugin package whose entry point prints its version; returns its source directory."""
    directory.mkdir(exist_ok=True)
    (directory / "__init__.py").write_bytes(b"")
    (directory / f"{ENTRY_MODULE}.py").write_bytes(entry_module)
    return directory


def node_paths(plugin: Path) -> dict[str, tuple[bytes, int]]:
    """Node path -> (content, mode) of each installed plugin file."""
    return {file.node_path: (file.data, file.mode) for file in plugin_files(plugin)}


def bytecode(plugin: Path) -> set[str]:
    """The caches the node's Python writes at the first call (the same Python here): one per
    imported module of the package, none for the launcher, which is run, not imported."""
    return {importlib.util.cache_from_source(path) for path in node_paths(plugin)
            if path != NODE_LAUNCHER}


@dataclass(frozen=True)
class SimulatedNode:
    name: str
    namespace: str
    directory: Path
    host_key: KeyPair

    def upper(self, path: str) -> Path:
        """Where the node's writes below `path` (one of OVERLAID) land."""
        return self.directory / "upper" / path.strip("/")

    def file(self, node_path: str) -> Path:
        top = next(p for p in OVERLAID if node_path.startswith(p + "/"))
        return self.upper(top) / node_path[len(top) + 1:]


@dataclass(frozen=True)
class SimulatedCluster:
    plan: Plan
    nodes: dict[str, SimulatedNode]
    client_key: KeyPair
    spaces: Namespaces

    def inventory(self) -> Inventory:
        return inventory_for_plan(
            self.plan, hosts={n.name: str(n.private_ip) for n in self.plan.nodes},
            host_keys={name: node.host_key.public_line for name, node in self.nodes.items()},
            private_key=self.client_key.private_openssh, user="root")

    def context(self, ssh: ClusterSSH, plugin: Path) -> LocalContext:
        return LocalContext(plan=self.plan, inventory=self.inventory(), ssh=ssh,
                            plugin_source=plugin)

    def ssh(self) -> ClusterSSH:
        namespace_of = {str(n.private_ip): self.nodes[n.name].namespace for n in self.plan.nodes}

        class InNamespace(paramiko.SSHClient):
            def connect(self, hostname: str, port: int = 22,  # type: ignore[override]
                        **kwargs: object) -> None:
                timeout = float(kwargs.get("timeout") or 5)  # type: ignore[arg-type]
                kwargs["sock"] = connect_in_netns(namespace_of[hostname], hostname, port,
                                                  timeout)
                super().connect(hostname, port, **kwargs)  # type: ignore[arg-type]

        return ClusterSSH(self.inventory(), client_factory=InNamespace, on_line=None,
                          policy=ConnectPolicy(deadline=20, first_delay=0.05, max_delay=0.5))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimulatedCluster]:
    plan = make_plan(Settings(node_count=2))
    client_key = new_ed25519_key()
    with namespaces() as spaces:
        nodes = {node.name: _boot_node(spaces, tmp_path / node.name, node.name,
                                       str(node.private_ip), client_key)
                 for node in plan.nodes}
        yield SimulatedCluster(plan, nodes, client_key, spaces)


def _boot_node(spaces: Namespaces, directory: Path, name: str, address: str,
               client_key: KeyPair) -> SimulatedNode:
    directory.mkdir()
    node = SimulatedNode(name, spaces.create(name), directory, new_ed25519_key())
    spaces.run(node.namespace, "ip", "addr", "add", f"{address}/32", "dev", "lo")
    config = write_sshd_files(directory, listen=address, port=22, host_key=node.host_key,
                              client_key=client_key)
    mounts = []
    for path in OVERLAID:
        upper, work = node.upper(path), directory / "work" / path.strip("/")
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        mounts.append(f"mount -t overlay overlay -o lowerdir={path},upperdir={upper},"
                      f"workdir={work} {path}")
    mounts.append("mount -t tmpfs tmpfs /run && mkdir /run/sshd")
    spaces.start(node.namespace, "unshare", "--mount", "--propagation", "private", "bash",
                 "-ec", " && ".join([*mounts, f"exec {SSHD} -D -e -f {config}"]))
    return node


def _written_files(node: SimulatedNode) -> set[str]:
    return {f"{top}/{path.relative_to(node.upper(top))}" for top in OVERLAID
            for path in node.upper(top).rglob("*") if path.is_file()}


def test_workflow_installs_everything_then_a_rerun_changes_nothing(
        cluster: SimulatedCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugin = fake_plugin(tmp_path / "lab_cni", PLUGIN_V1)
    plan = cluster.plan
    with cluster.ssh() as ssh:
        ran = run_local_workflow(cluster.context(ssh, plugin))
        states = {n.name: iptables_state(cluster.spaces, n.namespace)
                  for n in cluster.nodes.values()}
        caplog.set_level(logging.INFO, logger="k8s_cni_lab")
        caplog.clear()  # the first run's lines, where an earlier test left the logger at INFO
        rerun = run_local_workflow(cluster.context(ssh, plugin))

    assert ran == rerun == ["wait-ssh", "cni", "node-network"]
    for name, node in cluster.nodes.items():
        planned = plan.node(name)
        installed = node_paths(plugin)
        assert _written_files(node) == {*NODE_FILES.__dict__.values(), *installed}  # only
        expected: dict[str, tuple[bytes | None, int]] = {
            **installed,
            NODE_FILES.conflist: (None, 0o644),
            NODE_FILES.applier: (applier_source(), 0o644),
            NODE_FILES.state: (render_state(desired_state(plan, planned)).encode(), 0o644),
            NODE_FILES.boot_unit: (render_boot_unit().encode(), 0o644),
        }
        for path, (content, mode) in expected.items():
            assert node.file(path).stat().st_mode & 0o7777 == mode, path
            if content is not None:
                assert node.file(path).read_bytes() == content, path
        conflist = json.loads(node.file(NODE_FILES.conflist).read_text())
        assert conflist == cni_conflist(plan, planned)
        bridge = cluster.spaces.run(node.namespace, "ip", "-4", "-o", "addr", "show", "cni0")
        assert f"inet {planned.gateway}/24" in bridge.stdout
        assert iptables_state(cluster.spaces, node.namespace) == states[name]
        assert "-j LAB-FWD" in states[name] and "-j LAB-POSTRTG" in states[name]

    messages = [record.getMessage() for record in caplog.records]
    for name in cluster.nodes:
        assert any(m.startswith(f"[cni] {name}: no-op: {NODE_LAUNCHER}, ") and
                   m.endswith("already have this content and mode (sha256 match)")
                   for m in messages)
        assert (f"[node-network] {name}: no-op: bridge, sysctls and iptables rules already "
                "in place") in messages
        assert (f"[node-network] {name}: no-op: lab-node-network.service is installed for "
                "boot, but no systemd runs here to enable it") in messages
    assert not [m for m in messages if ": installed " in m]


def test_an_older_versions_scripts_are_removed_once(
        cluster: SimulatedCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugin = fake_plugin(tmp_path / "lab_cni", PLUGIN_V1)
    caplog.set_level(logging.INFO, logger="k8s_cni_lab")
    with cluster.ssh() as ssh:
        for name in cluster.nodes:
            ssh.node(name).put_files([(path, b"#!/bin/bash\n", 0o755)
                                      for path in OBSOLETE_NODE_FILES])
        run_local_workflow(cluster.context(ssh, plugin))
        assert not any(ssh.node(name).exists(path)
                       for name in cluster.nodes for path in OBSOLETE_NODE_FILES)
        run_local_workflow(cluster.context(ssh, plugin))
    removed = [r.getMessage() for r in caplog.records if ": removed " in r.getMessage()]
    assert sorted(removed) == [
        f"[node-network] {name}: removed /etc/k8s-cni-lab/ (2 files) (an older version's)"
        for name in sorted(cluster.nodes)]  # once: the rerun finds nothing to remove


def test_only_cni_uploads_a_changed_plugin_and_touches_nothing_else(
        cluster: SimulatedCluster, tmp_path: Path) -> None:
    plugin = fake_plugin(tmp_path / "lab_cni", PLUGIN_V1)
    with cluster.ssh() as ssh:
        assert run_local_workflow(cluster.context(ssh, plugin),
                                  only=["cni"]) == ["cni"]

        def run_plugin() -> dict[str, str]:
            return {name: ssh.node(name).run(NODE_LAUNCHER, timeout=30, quiet=True).output
                    for name in cluster.nodes}

        assert set(run_plugin().values()) == {"lab-cni v1\n"}  # and its bytecode is cached
        fake_plugin(plugin, PLUGIN_V2)
        assert run_local_workflow(cluster.context(ssh, plugin),
                                  skip=["wait-ssh", "node-network"]) == ["cni"]
        # The launcher runs the new version, not the cached bytecode of the old one.
        assert set(run_plugin().values()) == {"lab-cni v2, upgraded\n"}
    installed = node_paths(plugin)
    entry = next(path for path in installed if path.endswith(f"/{ENTRY_MODULE}.py"))
    for node in cluster.nodes.values():
        assert node.file(entry).read_bytes() == PLUGIN_V2
        assert _written_files(node) == {*installed, NODE_FILES.conflist, *bytecode(plugin)}
        links = cluster.spaces.run(node.namespace, "ip", "-o", "link").stdout
        assert "cni0" not in links


def test_a_failing_node_fails_the_phase_naming_the_node(cluster: SimulatedCluster,
                                                        tmp_path: Path) -> None:
    plugin = fake_plugin(tmp_path / "lab_cni", PLUGIN_V1)
    broken = cluster.nodes["worker-1"]
    # A cni0 that is not a bridge: the setup script must refuse it on that node only.
    cluster.spaces.run(broken.namespace, "ip", "link", "add", "cni0", "type", "veth",
                       "peer", "name", "cni0-peer")
    with cluster.ssh() as ssh, pytest.raises(PhaseError) as failure:
        run_local_workflow(cluster.context(ssh, plugin))
    message = str(failure.value)
    assert message.startswith("phase node-network: 1 node(s) failed: worker-1")
    assert "cni0 exists but is not a bridge" in message
    master = cluster.nodes["master"]
    assert "cni0" in cluster.spaces.run(master.namespace, "ip", "-o", "link").stdout

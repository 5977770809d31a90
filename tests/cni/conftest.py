"""Fixtures for the lab-cni tests: every test gets its own node and pod network namespaces.

The plugin is invoked the way a runtime invokes it: its launcher, installed in a temporary
root exactly as on a node (bootstrap/cni/install.py), executed inside the node namespace
(`ip netns exec <node>`), CNI_* in the environment and the config on stdin. Namespaces are
removed even when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootstrap.cni.install import LAUNCHER, install

SUBNET, GATEWAY = "10.244.1.0/24", "10.244.1.1"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class CallResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)


@dataclass
class Node:
    """A simulated node: one network namespace, its pods, a data dir and a log file."""

    prefix: str
    tmp: Path
    plugin: Path  # the installed launcher
    name: str = ""
    pods: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def log_file(self) -> Path:
        return self.tmp / "lab-cni.log"

    def config(self, version: str = "1.0.0", **overrides: object) -> dict:
        conf: dict = {"cniVersion": version, "name": "labnet", "type": "lab-cni"}
        conf |= {"subnet": SUBNET, "clusterCidr": "10.244.0.0/16"}
        conf |= {"dataDir": str(self.data_dir), "logFile": str(self.log_file)}
        conf.update(overrides)
        return conf

    def add_pod(self) -> str:
        name = f"{self.prefix}-p{len(self.pods)}"
        sh("ip", "netns", "add", name)
        self.pods.append(name)
        return name

    def env(self, command: str, pod: str | None, container_id: str, ifname: str) -> dict:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env |= {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname}
        env |= {"CNI_PATH": "/opt/cni/bin"}
        if pod is not None:
            env["CNI_NETNS"] = f"/run/netns/{pod}"
        return env

    @property
    def default_log_dir(self) -> Path:
        """Mounted over /var/log for every call (`ip netns exec` gives each its own mount
        namespace): a config that names no logFile, or cannot be read, logs to the default
        /var/log/lab-cni.log, and that must never be the host's."""
        return self.tmp / "var-log"

    def argv(self) -> list[str]:
        self.default_log_dir.mkdir(exist_ok=True)
        return ["ip", "netns", "exec", self.name, "/bin/sh", "-c",
                'mount --bind "$0" /var/log && exec "$@"', str(self.default_log_dir),
                str(self.plugin)]

    def call_raw(self, env: dict, stdin: str) -> CallResult:
        done = subprocess.run(self.argv(), input=stdin, env=env, capture_output=True, text=True)
        return CallResult(done.returncode, done.stdout, done.stderr)

    def call(
        self,
        command: str,
        conf: dict,
        pod: str | None = None,
        container_id: str = "",
        ifname: str = "eth0",
    ) -> CallResult:
        container_id = container_id or f"ctr-{pod}"
        return self.call_raw(self.env(command, pod, container_id, ifname), json.dumps(conf))

    def spawn(self, command: str, conf: dict, pod: str,
              container_id: str = "") -> subprocess.Popen[str]:
        """Start a call and hand it its config at once, so that many run at the same time
        (the plugin reads stdin before anything else); collect with communicate()."""
        env = self.env(command, pod, container_id or f"ctr-{pod}", "eth0")
        process = subprocess.Popen(
            self.argv(),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(conf))
        process.stdin.close()
        process.stdin = None  # sent: communicate() must not touch it again
        return process

    def ip(self, *args: str, pod: str | None = None, check: bool = True) -> str:
        return sh("ip", "-n", pod or self.name, *args, check=check).stdout

    def links(self, pod: str | None = None) -> list[dict]:
        return json.loads(self.ip("-j", "-d", "link", "show", pod=pod))

    def link_names(self, pod: str | None = None) -> set[str]:
        return {link["ifname"] for link in self.links(pod)}

    def veths(self) -> set[str]:
        return {
            link["ifname"]
            for link in self.links()
            if link.get("linkinfo", {}).get("info_kind") == "veth"
        }

    def reservations(self, network: str = "labnet") -> dict[str, list[str]]:
        """IP -> [container id, ifname, host veth], straight from the disk store."""
        store = self.data_dir / network
        if not store.is_dir():
            return {}
        return {
            p.name: p.read_text().split("\n")
            for p in store.iterdir()
            if p.name[0].isdigit() and p.name.count(".") == 3
        }


def requires_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


def pod_ip(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def state(node: Node, pod: str | None = None) -> tuple:
    """Everything an ADD could leave behind: reservations, node links, pod links."""
    return (node.reservations(), node.link_names(), node.link_names(pod) if pod else None)


@pytest.fixture(scope="session")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The launcher of a tree laid out as on a node; its first call caches the bytecode."""
    root = tmp_path_factory.mktemp("cni-root")
    install(root)
    return root / LAUNCHER


@pytest.fixture
def node(tmp_path: Path, installed_plugin: Path) -> Iterator[Node]:
    requires_root()
    prefix = f"lcni-{uuid.uuid4().hex[:8]}"
    n = Node(prefix=prefix, tmp=tmp_path, plugin=installed_plugin, name=f"{prefix}-node")
    sh("ip", "netns", "add", n.name)
    try:
        n.ip("link", "set", "lo", "up")
        yield n
    finally:
        for name in [*n.pods, n.name]:
            sh("ip", "netns", "del", name, check=False)


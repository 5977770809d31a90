"""Conformance through libcni: the plugin driven exactly as containerd drives it.

The Go driver in libcni_driver/ is built offline (GOPATH mode, Debian's libcni sources) once
per source hash, then run inside the node namespace with the plugin installed as `lab-cni` in a
plugin directory and a conflist like the lab's /etc/cni/net.d/10-lab-cni.conflist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.cni.conftest import Node

pytestmark = pytest.mark.root  # namespaces, veths and bridges: skipped unless root

DRIVER_SOURCE = Path(__file__).with_name("libcni_driver")
GOPATH = Path("/usr/share/gocode")
LIBCNI = GOPATH / "src/github.com/containernetworking/cni/libcni"
BUILD_ROOT = Path(tempfile.gettempdir()) / "lab-cni-test-build"


@pytest.fixture(scope="session")
def driver() -> Path:
    """Build the driver, cached by the hash of its source."""
    if not shutil.which("go") or not LIBCNI.is_dir():
        pytest.skip("needs golang-go and golang-github-appc-cni-dev")
    digest = hashlib.sha256((DRIVER_SOURCE / "main.go").read_bytes()).hexdigest()[:16]
    binary = BUILD_ROOT / f"libcni-driver-{digest}"
    if not binary.exists():
        BUILD_ROOT.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": ""}
        env["GOCACHE"] = str(BUILD_ROOT / "gocache")
        partial = binary.with_suffix(".partial")
        subprocess.run(
            ["go", "build", "-o", str(partial), "."], cwd=DRIVER_SOURCE, env=env, check=True
        )
        partial.rename(binary)
    return binary


class Runtime:
    """What containerd holds for one node: a plugin dir, a conflist, a result cache."""

    def __init__(self, node: Node, driver: Path, version: str) -> None:
        self.node, self.driver = node, driver
        self.plugin_dir = node.tmp / "opt-cni-bin"
        self.plugin_dir.mkdir()
        (self.plugin_dir / "lab-cni").symlink_to(node.plugin)  # the launcher follows links
        plugin = {k: v for k, v in node.config(version).items() if k not in ("cniVersion", "name")}
        conflist = {"cniVersion": version, "name": "labnet", "plugins": [plugin]}
        self.conflist = node.tmp / "10-lab-cni.conflist"
        self.conflist.write_text(json.dumps(conflist))
        self.cache = node.tmp / "cni-cache"

    def run(self, action: str, pod: str, ifname: str = "eth0") -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.node.name, str(self.driver), action]
        argv += [str(self.conflist), str(self.plugin_dir), str(self.cache)]
        argv += [f"ctr-{pod}", f"/run/netns/{pod}", ifname]
        return subprocess.run(argv, capture_output=True, text=True)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_libcni_add_check_del(node: Node, driver: Path, version: str) -> None:
    runtime = Runtime(node, driver, version)
    pod = node.add_pod()

    validated = runtime.run("validate", pod)
    added = runtime.run("add", pod)

    assert validated.returncode == 0, validated.stderr
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert result["cniVersion"] == version
    assert result["ips"][0]["address"] == "10.244.1.2/24"
    assert result["interfaces"][1]["sandbox"] == f"/run/netns/{pod}"
    assert list(node.reservations()) == ["10.244.1.2"]

    checked = runtime.run("check", pod)
    if version == "0.3.1":
        assert checked.returncode != 0 and "does not support the CHECK" in checked.stderr
    else:
        assert checked.returncode == 0, checked.stderr
        node.ip("route", "del", "default", pod=pod)
        broken = runtime.run("check", pod)
        assert broken.returncode != 0 and "default route" in broken.stderr

    deleted = runtime.run("del", pod)
    again = runtime.run("del", pod)

    assert deleted.returncode == 0, deleted.stderr
    assert again.returncode == 0, again.stderr
    assert node.reservations() == {}
    assert node.veths() == set()
    assert "eth0" not in node.link_names(pod)


def test_libcni_reports_plugin_errors_with_their_code(node: Node, driver: Path) -> None:
    runtime = Runtime(node, driver, "1.0.0")
    pod = node.add_pod()
    node.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer", pod=pod)

    failed = runtime.run("add", pod)

    assert failed.returncode != 0
    assert "already exists" in failed.stderr
    assert node.reservations() == {}

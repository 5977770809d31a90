"""A failed ADD undoes every earlier step; a rejected call changes nothing.

Each fault is real, set up in the namespaces the way it happens on a node, never a test hook in
the plugin.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable

import pytest

from tests.cni.conftest import Node, sh, state

pytestmark = pytest.mark.root  # namespaces, veths and bridges: skipped unless root


def assert_add_fails_cleanly(node: Node, conf: dict, pod: str, code: int) -> dict:
    before_links, before_veths = node.link_names(), node.veths()
    failed = node.call("ADD", conf, pod)
    assert failed.returncode != 0
    error = failed.json
    assert error["code"] == code, error
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert node.reservations() == {}
    assert node.veths() == before_veths
    assert node.link_names() - before_links <= {"cni0"}  # only the shared bridge may stay
    return error


def test_full_pool_rolls_back_nothing_and_leaves_the_holder(node: Node) -> None:
    conf = node.config(subnet="10.244.1.0/30")  # one assignable address: .2
    holder, pod = node.add_pod(), node.add_pod()
    assert node.call("ADD", conf, holder).returncode == 0
    before = state(node, pod)

    failed = node.call("ADD", conf, pod)

    assert failed.json["code"] == 100
    assert state(node, pod) == before


def test_bridge_name_held_by_a_non_bridge_link(node: Node) -> None:
    node.ip("link", "add", "cni0", "type", "veth", "peer", "name", "cni0peer")
    error = assert_add_fails_cleanly(node, node.config(), node.add_pod(), 102)
    assert "not a bridge" in error["msg"]


def test_netns_path_that_disappeared(node: Node) -> None:
    pod = node.add_pod()
    sh("ip", "netns", "del", pod)
    error = assert_add_fails_cleanly(node, node.config(), pod, 103)
    assert pod in error["msg"]


def test_interface_name_already_taken_in_the_pod(node: Node) -> None:
    pod = node.add_pod()
    node.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer", pod=pod)
    error = assert_add_fails_cleanly(node, node.config(), pod, 104)
    assert "already exists" in error["msg"]
    assert node.link_names(pod) == {"lo", "eth0", "eth0peer"}  # the pod's own eth0 is untouched


def test_pod_side_configuration_failure(node: Node) -> None:
    """A default route that already exists in the pod makes the last ADD step fail."""
    pod = node.add_pod()
    node.ip("link", "add", "other0", "type", "veth", "peer", "name", "other1", pod=pod)
    node.ip("addr", "add", "192.0.2.2/24", "dev", "other0", pod=pod)
    node.ip("link", "set", "other0", "up", pod=pod)
    node.ip("route", "add", "default", "via", "192.0.2.1", pod=pod)

    error = assert_add_fails_cleanly(node, node.config(), pod, 104)

    assert "File exists" in error["details"]
    assert node.link_names(pod) == {"lo", "other0", "other1"}


def test_lock_held_too_long_gives_try_again(node: Node) -> None:
    conf = node.config()
    store = node.data_dir / "labnet"
    store.mkdir(parents=True)
    fd = os.open(store / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        pod = node.add_pod()
        before = state(node, pod)
        failed = node.call("ADD", conf, pod)
    finally:
        os.close(fd)
    assert failed.json["code"] == 11
    assert state(node, pod) == before


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda conf: {k: v for k, v in conf.items() if k != key}


def _set(**values: object) -> Callable[[dict], dict]:
    return lambda conf: conf | values


# (case, CNI_* overrides, config transform or raw stdin, expected code)
BAD_INPUTS: list[tuple[str, dict, Callable[[dict], dict] | str, int]] = [
    ("malformed JSON", {}, '{"cniVersion": "1.0.0", ', 6),
    ("config is not an object", {}, "[1, 2]", 6),
    ("unsupported version", {}, _set(cniVersion="0.2.0"), 1),
    ("missing version", {}, _drop("cniVersion"), 1),
    ("missing name", {}, _drop("name"), 7),
    ("name escapes the data dir", {}, _set(name="../etc"), 7),
    ("missing subnet", {}, _drop("subnet"), 7),
    ("subnet not a CIDR", {}, _set(subnet="10.244.1.0"), 7),
    ("subnet prefix too long", {}, _set(subnet="10.244.1.0/31"), 7),
    ("subnet prefix too short", {}, _set(subnet="10.0.0.0/15"), 7),
    ("subnet host bits set", {}, _set(subnet="10.244.1.7/24"), 7),
    ("subnet octet out of range", {}, _set(subnet="10.244.256.0/24"), 7),
    ("gateway outside subnet", {}, _set(gateway="10.244.2.1"), 7),
    ("gateway is the broadcast", {}, _set(gateway="10.244.1.255"), 7),
    ("subnet outside clusterCidr", {}, _set(clusterCidr="10.9.0.0/16"), 7),
    ("mtu not a number", {}, _set(mtu="1500"), 7),
    ("bridge name too long", {}, _set(bridge="a-very-long-bridge"), 7),
    ("relative dataDir", {}, _set(dataDir="data"), 7),
    ("missing container id", {"CNI_CONTAINERID": None}, _set(), 4),
    ("container id with a space", {"CNI_CONTAINERID": "a b"}, _set(), 4),
    ("container id starting with a dash", {"CNI_CONTAINERID": "-abc"}, _set(), 4),
    ("container id with a slash", {"CNI_CONTAINERID": "../x"}, _set(), 4),
    ("missing interface name", {"CNI_IFNAME": None}, _set(), 4),
    ("interface name too long", {"CNI_IFNAME": "eth0123456789012"}, _set(), 4),
    ("interface name with a slash", {"CNI_IFNAME": "eth/0"}, _set(), 4),
    ("interface name dot", {"CNI_IFNAME": "."}, _set(), 4),
    ("interface name with a colon", {"CNI_IFNAME": "eth0:1"}, _set(), 4),
    ("interface name with a hash (iproute2 batch comment)", {"CNI_IFNAME": "eth#0"}, _set(), 4),
    ("missing netns on ADD", {"CNI_NETNS": None}, _set(), 4),
    ("missing CNI_PATH", {"CNI_PATH": None}, _set(), 4),
    ("unknown command", {"CNI_COMMAND": "FROB"}, _set(), 4),
    ("missing command", {"CNI_COMMAND": None}, _set(), 4),
]


@pytest.mark.parametrize(
    ("env_overrides", "stdin", "code"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_its_code_and_changes_nothing(
    node: Node, env_overrides: dict, stdin: Callable[[dict], dict] | str, code: int
) -> None:
    pod = node.add_pod()
    env = node.env("ADD", pod, f"ctr-{pod}", "eth0")
    for key, value in env_overrides.items():
        env.pop(key) if value is None else env.__setitem__(key, value)
    text = stdin if isinstance(stdin, str) else json.dumps(stdin(node.config()))
    before = state(node, pod)

    result = node.call_raw(env, text)

    assert result.returncode != 0
    error = result.json
    assert error["code"] == code, error
    assert error["msg"] and "details" in error
    speaks_callers_version = not isinstance(stdin, str) and code != 1
    assert error["cniVersion"] == ("1.0.0" if speaks_callers_version else "1.1.0")
    assert state(node, pod) == before
    assert not node.data_dir.exists()
    # Each rejected call logs one line: to the config's logFile, or where none could be
    # read, to the default /var/log/lab-cni.log (the test's private /var/log).
    log = node.log_file if not isinstance(stdin, str) else node.default_log_dir / "lab-cni.log"
    assert f"error {code}:" in log.read_text().splitlines()[-1]

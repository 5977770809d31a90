"""Pure parts of the bootstrap: keys, inventory, error messages, file decisions, backoff, the
boot unit step over a fake node. No root, no network."""

from __future__ import annotations

import threading
import time

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bootstrap.errors import (
    CommandFailed,
    HostKeyMismatch,
    InventoryError,
    LabError,
    NodesFailed,
    PhaseError,
    PrivateKeyError,
)
from bootstrap.inventory import (
    Inventory,
    NodeAccess,
    check_agrees_with_plan,
    inventory_for_plan,
)
from bootstrap.phases.node_network import enable_boot_unit
from bootstrap.remote import RunResult
from bootstrap.remote_files import DesiredFile, RemoteFile, describe_paths, files_to_write
from bootstrap.ssh import (
    ConnectPolicy,
    for_each_node,
    host_key_name,
    load_private_key,
    pinned_host_key,
    remote_command,
)
from infra.plan import Settings, make_plan
from tests.bootstrap.fakes import FakeNode, Reply
from tests.bootstrap.sshd import new_ed25519_key

PLAN = make_plan(Settings())
HOST_KEY = new_ed25519_key().public_line


def _pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
         fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize(("make", "fmt", "kind"), [
    (ed25519.Ed25519PrivateKey.generate, serialization.PrivateFormat.OpenSSH, "ssh-ed25519"),
    (ed25519.Ed25519PrivateKey.generate, serialization.PrivateFormat.PKCS8, "ssh-ed25519"),
    (lambda: rsa.generate_private_key(65537, 2048), serialization.PrivateFormat.OpenSSH,
     "ssh-rsa"),
    (lambda: rsa.generate_private_key(65537, 2048),
     serialization.PrivateFormat.TraditionalOpenSSL, "ssh-rsa"),  # "BEGIN RSA PRIVATE KEY"
    (lambda: rsa.generate_private_key(65537, 2048), serialization.PrivateFormat.PKCS8,
     "ssh-rsa"),
])
def test_private_keys_load_from_openssh_and_pem(make, fmt, kind) -> None:  # type: ignore[no-untyped-def]
    key = make()
    loaded = load_private_key(_pem(key, fmt))
    assert loaded.get_name() == kind
    expected = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()
    assert f"{loaded.get_name()} {loaded.get_base64()}" == expected
    assert loaded.can_sign()


def test_a_bad_private_key_is_refused_without_quoting_it() -> None:
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXNlY3JldC1zZWNyZXQ=\n-----END"
    with pytest.raises(PrivateKeyError) as refused:
        load_private_key(secret)
    assert "c2VjcmV0" not in str(refused.value) and "Ed25519 or RSA" in str(refused.value)


def _access(name: str = "master", host_key: str = HOST_KEY, port: int = 22) -> NodeAccess:
    return NodeAccess(name=name, host="203.0.113.10", port=port, host_key=host_key)


def test_inventory_hides_the_private_key_and_finds_nodes_by_name() -> None:
    key = new_ed25519_key().private_openssh
    inventory = Inventory(nodes=(_access(),), private_key=key)
    assert key.splitlines()[1] not in repr(inventory) and "private_key" not in repr(inventory)
    assert inventory.node("master").port == 22 and inventory.node("master").user == "ubuntu"
    assert inventory.node("master").address == "203.0.113.10:22"
    with pytest.raises(InventoryError, match=r"no node named 'nope'.*nodes: master"):
        inventory.node("nope")


def test_inventory_refuses_bad_host_keys_and_duplicate_names() -> None:
    with pytest.raises(InventoryError, match="master: host key 'AAAA' is not an OpenSSH"):
        _access(host_key="AAAA")
    with pytest.raises(InventoryError, match="not valid base64"):
        _access(host_key="ssh-ed25519 !!!")
    with pytest.raises(InventoryError, match="twice: master"):
        Inventory(nodes=(_access(), _access()), private_key="k")


def test_inventory_for_plan_lists_the_plans_nodes_in_order() -> None:
    names = PLAN.node_names()
    inventory = inventory_for_plan(PLAN, hosts={n: f"198.51.100.{i}" for i, n in
                                                enumerate(names)},
                                   host_keys=dict.fromkeys(names, HOST_KEY), private_key="k")
    assert inventory.names() == names
    assert inventory.node("worker-2").host == "198.51.100.2"
    with pytest.raises(InventoryError, match=r"no SSH address or host key for node.*worker-2"):
        inventory_for_plan(PLAN, hosts={}, host_keys={}, private_key="k")


def test_nodes_made_elsewhere_must_be_the_plans_nodes_at_the_plans_addresses() -> None:
    names = PLAN.node_names()
    good = inventory_for_plan(PLAN, hosts=dict.fromkeys(names, "h"),
                              host_keys=dict.fromkeys(names, HOST_KEY), private_key="k")
    planned = {node.name: str(node.private_ip) for node in PLAN.nodes}
    check_agrees_with_plan(PLAN, good, planned)
    with pytest.raises(InventoryError, match=r"worker-2: the cloud reports private IP "
                                             r"10.0.1.99; the plan says 10.0.1.12"):
        check_agrees_with_plan(PLAN, good, {**planned, "worker-2": "10.0.1.99"})
    with pytest.raises(InventoryError, match="differ from the plan"):
        check_agrees_with_plan(PLAN, Inventory(nodes=good.nodes[:2], private_key="k"), planned)
    reordered = Inventory(nodes=good.nodes[::-1], private_key="k")
    with pytest.raises(InventoryError, match="differ from the plan"):
        check_agrees_with_plan(PLAN, reordered, planned)


def test_remote_command_is_bounded_and_uses_sudo_for_other_users() -> None:
    assert remote_command("echo 'a b'", user="root", timeout=30) == (
        "timeout -k 5 30 bash --norc --noprofile -c 'echo '\"'\"'a b'\"'\"''")
    assert remote_command("id -u", user="ubuntu", timeout=2.5) == (
        "sudo -n timeout -k 5 2.5 bash --norc --noprofile -c 'id -u'")


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = ConnectPolicy(first_delay=0.5, max_delay=4)
    for attempt, ceiling in [(0, 0.5), (1, 1), (2, 2), (3, 4), (10, 4)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


def test_command_failed_shows_node_command_status_and_last_20_lines() -> None:
    output = "".join(f"line {n}\n" for n in range(1, 31))
    message = str(CommandFailed(RunResult("worker-1", "make it", 2, output)))
    assert message.splitlines()[0] == "node worker-1: command exited with status 2: make it"
    assert message.splitlines()[1] == "last 20 of 30 output lines:"
    assert message.splitlines()[2:] == [f"  | line {n}" for n in range(11, 31)]
    assert str(CommandFailed(RunResult("m", "true", 1, ""))).endswith("(no output)")


def test_error_tree_has_one_root() -> None:
    errors = [CommandFailed(RunResult("m", "c", 1, "")), NodesFailed({"m": OSError("x")}),
              PhaseError("cni", OSError("x")), HostKeyMismatch("m", "h:22", "a", "b")]
    assert all(isinstance(error, LabError) for error in errors)


def test_for_each_node_bounds_the_pool_and_keeps_the_order() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def work(name: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return name.upper()

    assert list(for_each_node(work, ["e", "a", "d", "b", "c"], max_workers=2).items()) == [
        ("e", "E"), ("a", "A"), ("d", "D"), ("b", "B"), ("c", "C")]
    assert peak == 2


def test_for_each_node_runs_every_node_even_when_some_fail() -> None:
    done: list[str] = []

    def work(name: str) -> None:
        done.append(name)
        if name in ("b", "d"):
            raise OSError(f"{name} broke")

    with pytest.raises(NodesFailed) as failed:
        for_each_node(work, ["a", "b", "c", "d"], max_workers=1)
    assert sorted(done) == ["a", "b", "c", "d"]
    assert str(failed.value) == "2 node(s) failed: b, d\n- b: b broke\n- d: d broke"


def test_only_files_that_differ_in_content_or_mode_are_written() -> None:
    plugin = DesiredFile("/opt/cni/bin/lab-cni", b"v2", 0o755)
    conflist = DesiredFile("/etc/cni/net.d/10-lab-cni.conflist", b"{}", 0o644)
    unit = DesiredFile("/etc/systemd/system/x.service", b"[Unit]", 0o644)
    present = [RemoteFile(plugin.path, DesiredFile("", b"v1", 0).sha256, 0o755),
               RemoteFile(conflist.path, conflist.sha256, 0o644),
               RemoteFile(unit.path, unit.sha256, 0o600)]
    assert files_to_write([plugin, conflist, unit], present) == [plugin, unit]
    assert files_to_write([conflist], [RemoteFile(conflist.path, None, None)]) == [conflist]
    assert files_to_write([conflist], [RemoteFile(conflist.path, conflist.sha256, 0o644)]) == []


def boot_unit_node(*, systemd: bool, enabled: bool) -> FakeNode:
    return FakeNode("worker-1", files={"/run/systemd/system": (b"", 0o755)} if systemd else {},
                    replies=[Reply("is-enabled", exit_code=0 if enabled else 1)])


@pytest.mark.parametrize(("node", "unit_changed", "commands"), [
    (boot_unit_node(systemd=False, enabled=False), True, []),
    (boot_unit_node(systemd=True, enabled=False), True, [
        "systemctl daemon-reload", "systemctl is-enabled --quiet lab-node-network.service",
        "systemctl enable lab-node-network.service"]),
    (boot_unit_node(systemd=True, enabled=True), False, [
        "systemctl is-enabled --quiet lab-node-network.service"]),
    (boot_unit_node(systemd=True, enabled=True), True, [
        "systemctl daemon-reload", "systemctl is-enabled --quiet lab-node-network.service"]),
])
def test_boot_unit_is_enabled_only_under_systemd_and_only_once(
        node: FakeNode, unit_changed: bool, commands: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="k8s_cni_lab.phases")
    enable_boot_unit(node, unit_changed=unit_changed)
    assert node.commands == commands
    if not node.files:
        assert caplog.records[0].getMessage() == (
            "[node-network] worker-1: no-op: lab-node-network.service is installed for boot, "
            "but no systemd runs here to enable it")


def test_paramiko_pins_are_built_from_the_inventory_line() -> None:
    access = _access(port=2222)
    pinned = pinned_host_key(access)
    assert isinstance(pinned, paramiko.Ed25519Key)
    assert f"{pinned.get_name()} {pinned.get_base64()}" == HOST_KEY
    assert host_key_name(access) == "[203.0.113.10]:2222"
    assert host_key_name(_access()) == "203.0.113.10"


def test_a_directory_with_several_files_is_named_once_with_a_count():
    assert describe_paths(["/opt/cni/bin/lab-cni", "/opt/cni/lib/x/a.py", "/opt/cni/lib/x/b.py",
                           "/etc/cni/net.d/10-lab-cni.conflist"]) == (
        "/opt/cni/bin/lab-cni, /opt/cni/lib/x/ (2 files), /etc/cni/net.d/10-lab-cni.conflist")
    assert describe_paths(["/a/b"]) == "/a/b"

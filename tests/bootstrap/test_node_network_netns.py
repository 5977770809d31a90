"""The applier run for real, as the node runs it, inside namespaces this test creates."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap import node_network_apply
from bootstrap.node_network import desired_state, forward_only_state, render_state
from bootstrap.node_network_apply import NO_CHANGES_LINE
from infra.plan import Settings, make_plan
from tests.bootstrap.conftest import needs_netns
from tests.bootstrap.netns import Namespaces, iptables_state, link_state, namespaces

pytestmark = needs_netns

PLAN = make_plan(Settings())
WORKER = PLAN.node("worker-1")
# This repository's file, run as the node runs it: its own directory is not on sys.path.
APPLIER = node_network_apply.__file__
# Someone else's rules: they must survive our setup and teardown untouched.
FOREIGN_RULES = [
    ("filter", "FORWARD", "-s", "192.0.2.7/32", "-j", "DROP"),
    ("nat", "POSTROUTING", "-s", "192.0.2.0/24", "-o", "lo", "-j", "MASQUERADE"),
]
ECHO_PORT = "8080"
# Answers each connection with the address it came from, then closes.
PEER_ECHO = f"""
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", {ECHO_PORT}))
server.listen()
print("ready", flush=True)
while True:
    conn, peer = server.accept()
    conn.sendall(peer[0].encode())
    conn.close()
"""
ASK_PEER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as conn:
    print(conn.recv(64).decode())
"""


@pytest.fixture
def spaces() -> Iterator[Namespaces]:
    with namespaces() as made:
        yield made


def new_node(spaces: Namespaces) -> str:
    """A node namespace with someone else's rules and Docker's FORWARD policy (DROP)."""
    name = spaces.create("node")
    spaces.run(name, "iptables", "-P", "FORWARD", "DROP")
    for table, chain, *spec in FOREIGN_RULES:
        spaces.run(name, "iptables", "-t", table, "-A", chain, *spec)
    return name


@pytest.fixture
def node(spaces: Namespaces) -> str:
    return new_node(spaces)


@pytest.fixture
def state_file(tmp_path: Path) -> str:
    """worker-1's desired state, as the bootstrap writes it on the node."""
    path = tmp_path / "node-network.json"
    path.write_text(render_state(desired_state(PLAN, WORKER)))
    return str(path)


def node_state(spaces: Namespaces, namespace: str) -> tuple[str, str]:
    return iptables_state(spaces, namespace), link_state(spaces, namespace)


def apply(spaces: Namespaces, namespace: str, *arguments: str, stdin: str | None = None) -> str:
    """The boot unit's command (`--teardown` first: the teardown), standard output only."""
    return spaces.run(namespace, "/usr/bin/python3", "-IS", APPLIER, *arguments,
                      stdin=stdin).stdout


def test_setup_applies_everything_and_a_second_run_changes_nothing(
        spaces: Namespaces, node: str, state_file: str) -> None:
    first = apply(spaces, node, state_file)
    assert "node-network: created bridge cni0 with 10.244.1.1/24, up" in first
    assert "+ iptables-restore -w --noflush <<'EOF'" in first  # each command is shown
    assert first.endswith("node-network: rebuilt iptables chains LAB-FWD and LAB-POSTRTG\n"
                          "node-network: 3 change(s)\n")  # the bridge sysctl: already 1
    after_first = node_state(spaces, node)

    assert apply(spaces, node, state_file) == f"{NO_CHANGES_LINE}\n"
    assert node_state(spaces, node) == after_first

    saved = after_first[0]
    assert '-A LAB-POSTRTG -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment ' \
           '"k8s-cni-lab masquerade pod traffic leaving the cluster" -j MASQUERADE' in saved
    assert saved.count("-j LAB-FWD") == 1 and saved.count("-j LAB-POSTRTG") == 1
    assert "-A FORWARD -s 192.0.2.7/32 -j DROP" in saved  # foreign rules kept
    assert "inet 10.244.1.1/24 brd 10.244.1.255 scope global cni0" in after_first[1]
    assert spaces.run(node, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert spaces.run(node, "sysctl", "-n",
                      "net.bridge.bridge-nf-call-iptables").stdout.strip() == "1"


def test_setup_repairs_drift_back_to_the_same_state(spaces: Namespaces, node: str,
                                                    state_file: str) -> None:
    apply(spaces, node, state_file)
    wanted = node_state(spaces, node)
    spaces.run(node, "iptables", "-t", "nat", "-F", "LAB-POSTRTG")  # a rule lost
    spaces.run(node, "iptables", "-A", "LAB-FWD", "-s", "10.99.0.0/16", "-j", "ACCEPT")  # stale
    spaces.run(node, "iptables", "-D", "FORWARD", "1")  # our jump gone
    spaces.run(node, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment",
               "k8s-cni-lab jump to LAB-POSTRTG", "-j", "LAB-POSTRTG")  # a second jump
    spaces.run(node, "ip", "addr", "add", "10.99.0.1/24", "dev", "cni0")  # an extra address
    spaces.run(node, "ip", "link", "set", "cni0", "down")
    spaces.run(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")

    repaired = apply(spaces, node, state_file)
    for change in ("removed 10.99.0.1/24 from cni0", "set cni0 up", "set net.ipv4.ip_forward=1",
                   "rebuilt iptables chains LAB-FWD and LAB-POSTRTG"):
        assert f"node-network: {change}\n" in repaired
    assert node_state(spaces, node) == wanted


def test_the_boot_run_restores_everything_a_reboot_lost(spaces: Namespaces, node: str,
                                                        state_file: str) -> None:
    """A reboot loses the bridge, the sysctls and every iptables rule: the boot unit's
    command brings them back."""
    apply(spaces, node, state_file)
    wanted = node_state(spaces, node)
    spaces.run(node, "ip", "link", "del", "cni0")
    spaces.run(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    for table in ("filter", "nat"):
        spaces.run(node, "iptables", "-t", table, "-F")
        spaces.run(node, "iptables", "-t", table, "-X")
    spaces.run(node, "iptables", "-P", "FORWARD", "DROP")
    for table, chain, *spec in FOREIGN_RULES:  # the others' rules come back at boot too
        spaces.run(node, "iptables", "-t", table, "-A", chain, *spec)

    booted = apply(spaces, node, state_file)
    assert "created bridge cni0" in booted and "rebuilt iptables chains" in booted
    restored = node_state(spaces, node)
    assert restored[0] == wanted[0]
    # The new bridge has a new index and MAC address; everything else is as before.
    assert _without_identity(restored[1]) == _without_identity(wanted[1])


def test_teardown_leaves_exactly_what_was_there_before(spaces: Namespaces, node: str,
                                                       state_file: str) -> None:
    before = node_state(spaces, node)
    apply(spaces, node, state_file)
    removed = apply(spaces, node, "--teardown", state_file)
    for change in ("removed jump to LAB-FWD", "removed jump to LAB-POSTRTG",
                   "removed chain LAB-FWD (filter)", "removed chain LAB-POSTRTG (nat)",
                   "removed bridge cni0"):
        assert f"node-network: {change}\n" in removed
    assert node_state(spaces, node) == before
    assert apply(spaces, node, "--teardown", state_file) == f"{NO_CHANGES_LINE}\n"


def test_a_cni0_that_is_not_a_bridge_is_refused_before_anything_changes(
        spaces: Namespaces, node: str, state_file: str) -> None:
    spaces.run(node, "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0-peer")
    spaces.run(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    before = node_state(spaces, node)
    refused = spaces.run(node, "/usr/bin/python3", "-IS", APPLIER, state_file, check=False)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == ("node-network: cni0 exists but is not a bridge; remove it and "
                              "re-run\n")
    assert node_state(spaces, node) == before
    assert spaces.run(node, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


def test_the_forward_only_state_then_the_whole_one_ends_as_the_whole_one(
        spaces: Namespaces, node: str, state_file: str) -> None:
    """The story's stage 2 (the filter table only, its state on standard input), then the
    node-network phase: the same rules as a node set up in one go."""
    forward_only = render_state(forward_only_state(PLAN, WORKER))
    applied = apply(spaces, node, "-", stdin=forward_only)
    assert "node-network: rebuilt iptables chains LAB-FWD\n" in applied
    saved = iptables_state(spaces, node)
    assert "-j LAB-FWD" in saved and "LAB-POSTRTG" not in saved
    assert "cni0" not in link_state(spaces, node)  # the bridge is left to the plugin
    assert apply(spaces, node, "-", stdin=forward_only) == f"{NO_CHANGES_LINE}\n"

    apply(spaces, node, state_file)
    in_one_go = new_node(spaces)
    apply(spaces, in_one_go, state_file)
    assert iptables_state(spaces, node) == iptables_state(spaces, in_one_go)


def test_nat_applies_only_to_traffic_leaving_the_cluster(spaces: Namespaces, node: str,
                                                         state_file: str) -> None:
    """A pod on worker-1 reaches a pod of worker-2 with its own address, and the internet
    with the node's address (the seed lab's `! -o cni0` NATed both), through a FORWARD
    policy of DROP."""
    pod, outside = spaces.create("pod"), spaces.create("outside")
    remote_pod, internet, node_ip = "10.244.2.2", "198.51.100.1", str(WORKER.private_ip)
    apply(spaces, node, state_file)
    _wire_pod(spaces, node, pod, pod_ip="10.244.1.2/24", gateway=str(WORKER.gateway))
    # "outside" is the VPC router holding the remote pod and the internet host's addresses.
    _veth(spaces, node, "eth0", outside, "vpc0")
    spaces.run(node, "ip", "addr", "add", f"{node_ip}/24", "dev", "eth0")
    spaces.run(node, "ip", "route", "add", "default", "via", "10.0.1.1")
    spaces.run(outside, "ip", "addr", "add", "10.0.1.1/24", "dev", "vpc0")
    for address in (remote_pod, internet):
        spaces.run(outside, "ip", "addr", "add", f"{address}/32", "dev", "lo")
    spaces.run(outside, "ip", "route", "add", str(WORKER.pod_cidr), "via", node_ip)
    _start_peer_echo(spaces, outside)

    assert _source_seen(spaces, pod, remote_pod) == "10.244.1.2"  # not NATed in the cluster
    assert _source_seen(spaces, pod, internet) == node_ip  # NATed on the way out


def _without_identity(links: str) -> str:
    """`ip -d addr` output without interface indexes and MAC addresses."""
    return re.sub(r"link/ether \S+", "link/ether", re.sub(r"(?m)^\d+: ", "", links))


def _veth(spaces: Namespaces, left_ns: str, left: str, right_ns: str, right: str) -> None:
    spaces.run(left_ns, "ip", "link", "add", left, "type", "veth", "peer", "name", right,
               "netns", right_ns)
    spaces.run(left_ns, "ip", "link", "set", left, "up")
    spaces.run(right_ns, "ip", "link", "set", right, "up")


def _wire_pod(spaces: Namespaces, node: str, pod: str, *, pod_ip: str, gateway: str) -> None:
    _veth(spaces, node, "vethpod", pod, "eth0")
    spaces.run(node, "ip", "link", "set", "vethpod", "master", "cni0")
    spaces.run(pod, "ip", "addr", "add", pod_ip, "dev", "eth0")
    spaces.run(pod, "ip", "route", "add", "default", "via", gateway)


def _start_peer_echo(spaces: Namespaces, namespace: str) -> None:
    server = spaces.start(namespace, "/usr/bin/python3", "-I", "-c", PEER_ECHO)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"


def _source_seen(spaces: Namespaces, client_ns: str, address: str) -> str:
    """The source address the echo server at `address` saw for a connection from client_ns."""
    deadline = time.monotonic() + 5
    while True:  # the bridge port may need a moment to forward
        asked = spaces.run(client_ns, "/usr/bin/python3", "-I", "-c", ASK_PEER, address,
                           ECHO_PORT, check=False)
        if asked.returncode == 0 or time.monotonic() > deadline:
            assert asked.returncode == 0, asked.stdout + asked.stderr
            return asked.stdout.strip()
        time.sleep(0.1)

"""The whole local lab, for real: namespaces, sshd, the bootstrap over SSH, our CNI plugin,
pods and the connectivity checks. Root only; every lab is removed even when a test fails."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from bootstrap import node_network
from bootstrap.ssh import NodeSSH
from lab import lifecycle, network, nodes, picture, story
from lab.__main__ import main as lab_main
from lab.netns_socket import connect_in_namespace

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root and network namespaces"),
]


def lab_name() -> str:
    return "t" + secrets.token_hex(3)


@dataclass(frozen=True)
class Footprint:
    """What a running lab holds: its processes and the namespaces they live in."""

    pids: frozenset[int]
    net_namespaces: frozenset[int]  # inodes
    mount_namespaces: frozenset[int]


def footprint(name: str) -> Footprint:
    namespaces = network.existing_namespaces(name)
    pids = network.namespace_pids(namespaces)
    seen = network.process_namespaces()
    return Footprint(frozenset(pids),
                     frozenset(os.stat(f"/run/netns/{ns}").st_ino for ns in namespaces),
                     frozenset(seen[pid][1] for pid in pids if pid in seen) - {0})


def assert_nothing_left(name: str, before: Footprint) -> None:
    """No process in any of the lab's namespaces, no namespace, no mount, no file."""
    assert before.pids and before.net_namespaces and before.mount_namespaces
    alive = [pid for pid, (net, mnt) in network.process_namespaces().items()
             if net in before.net_namespaces or mnt in before.mount_namespaces]
    assert alive == [], "processes of the lab survived"
    assert not [pid for pid in before.pids
                if os.path.exists(f"/proc/{pid}") and not network.is_zombie(pid)]
    assert network.existing_namespaces(name) == []
    assert f"/run/netns/{name}-" not in Path("/proc/self/mountinfo").read_text()
    assert not nodes.lab_dir(name).exists()


@pytest.fixture(scope="module")
def running_lab() -> Iterator[lifecycle.LocalLab]:
    name = lab_name()
    console = Console(file=io.StringIO(), width=200)
    held: Footprint | None = None
    try:
        lab = lifecycle.build(lifecycle.LabOptions(name=name), console)
        with lab.ssh:
            lifecycle.bootstrap(lab)
            lab.start_pods()
            held = footprint(name)
            yield lab
    finally:
        lifecycle.down(name)
    assert held is not None
    assert_nothing_left(name, held)


def failures(lab: lifecycle.LocalLab) -> dict[str, str]:
    outcomes, causes = lab.run_checks()
    return {o.check.name: f"{o.observed}: {causes.get(o.check.name)}"
            for o in outcomes if not o.passed}


def test_every_check_of_the_seed_lab_passes(running_lab):
    assert failures(running_lab) == {}


def test_the_bootstrap_logged_in_as_ubuntu_and_used_sudo(running_lab):
    node = running_lab.ssh.node("worker-1")
    assert node.access.user == "ubuntu"
    assert node.run("id -un", timeout=30, quiet=True).output == "root\n"  # through sudo -n
    owner = node.run("stat -c '%U %a' /opt/cni/bin/lab-cni /opt/cni/lib/lab-cni/lab_cni/plugin.py "
                     f"{node_network.NODE_FILES.applier}", timeout=30, quiet=True)
    assert owner.output == "root 755\nroot 644\nroot 644\n"
    staged = node.run("ls -A /tmp", timeout=30, quiet=True).output
    assert ".k8s-cni-lab" not in staged  # uploads staged for sudo are cleaned up
    # A root-only file (as kubeadm's admin.conf is) is read through sudo; absent is None.
    node.put_files([("/etc/k8s-cni-lab/private.conf", b"key: not-for-ubuntu\n", 0o600)])
    assert node.read_file("/etc/k8s-cni-lab/private.conf") == (b"key: not-for-ubuntu\n", 0o600)
    assert node.read_file("/etc/k8s-cni-lab/absent.conf") is None
    node.run("rm /etc/k8s-cni-lab/private.conf", timeout=30)


def test_pods_got_distinct_addresses_from_their_nodes_pod_cidr(running_lab):
    for pod in running_lab.pods:
        node = running_lab.plan.node(pod.node)
        assert pod.ip in {str(host) for host in node.pod_cidr.hosts()} - {str(node.gateway)}
    assert len({pod.ip for pod in running_lab.pods}) == len(running_lab.pods)


def test_the_security_group_lets_the_internet_in_on_ssh_only_and_the_vpc_everywhere(
        running_lab):
    """A node listening on another port answers its neighbours, not the internet host."""
    lab = running_lab
    worker, master = lab.layout.nodes[1], lab.plan.control_plane
    listener = lab.ssh.node(worker.name)
    listener.run("nohup timeout 20 python3 -m http.server 8081 >/dev/null 2>&1 &", timeout=30)
    try:
        address = (str(worker.planned.private_ip), 8081)
        reach = f"python3 -c \"import socket; socket.create_connection({address}, 5)\""
        assert lab.ssh.node(master.name).run(
            f"for try in 1 2 3 4 5; do {reach} && exit 0; sleep 0.2; done; exit 1",
            timeout=30, check=False, quiet=True).exit_code == 0
        with pytest.raises(OSError):
            connect_in_namespace(lab.layout.internet_ns, str(worker.public_ip), 8081, 1)
        connect_in_namespace(lab.layout.internet_ns, str(worker.public_ip), 22, 5).close()
    finally:
        listener.run("pkill -f 'http.server 8081'", timeout=30, check=False)


def test_the_source_destination_check_drops_pod_traffic_until_it_is_off(running_lab):
    lab = running_lab
    worker = lab.layout.nodes[2]
    try:
        network.set_source_dest_check(lab.layout, worker, True)
        assert network.source_dest_checked(lab.layout)[worker.name]
        failed = failures(lab)
        assert "pod to pod, across nodes" in failed and "node to pod" in failed
        assert "source/destination check on worker-2" in failed["node to pod"]
        assert "pod to its gateway" not in failed and "pod to internet" not in failed
    finally:
        network.apply_planned_checks(lab.layout)
    assert not any(network.source_dest_checked(lab.layout).values())
    assert failures(lab) == {}


def test_a_pod_that_fails_to_start_leaves_no_namespace_and_no_address(running_lab):
    node = running_lab.ssh.node("worker-1")
    store = "ls /var/lib/cni/networks/lab-net | sort"
    reserved = node.run(store, timeout=30, quiet=True).output
    # The workload cannot bind port 99999: the runtime must undo the CNI ADD and the netns.
    failed = node.run(f"{lifecycle.RUNTIME} run doomed --port 99999", timeout=60, check=False,
                      quiet=True)
    assert failed.exit_code == 1 and "doomed" not in node.run(
        "ip netns list", timeout=30, quiet=True).output
    assert node.run(store, timeout=30, quiet=True).output == reserved


def node_state(lab: lifecycle.LocalLab, name: str) -> str:
    return lab.ssh.node(name).run(
        "iptables-save | grep -v '^#'; ip -4 -o addr show cni0; ip -o link show cni0; "
        "sysctl net.ipv4.ip_forward",
        timeout=30, quiet=True).output


def test_node_network_applied_again_changes_nothing(running_lab):
    before = {name: node_state(running_lab, name) for name in running_lab.ssh.names()}
    assert lifecycle.bootstrap(running_lab, only=("node-network",)) == ["node-network"]
    for name, state in before.items():
        assert "-j LAB-FWD" in state and "MASQUERADE" in state, name  # applied, not empty
        assert node_state(running_lab, name).splitlines() == state.splitlines(), name


def test_a_reboot_then_the_boot_unit_restores_every_check(running_lab):
    """A reboot loses pods' namespaces, the bridge, the rules and sysctls; the IPAM store on
    disk stays. The boot unit's command brings the node network back; the runtime then
    stops the dead sandboxes (DEL without a netns) and starts the pods again."""
    workers = [node.name for node in running_lab.plan.workers]
    for name in workers:
        running_lab.ssh.node(name).run(
            f"for pod in $(ip netns list | cut -d' ' -f1); do ip netns pids $pod | xargs -r kill;"
            f" ip netns del $pod; done; {node_network.TEARDOWN_COMMAND};"
            " sysctl -q -w net.ipv4.ip_forward=0",
            timeout=60, quiet=True)
    assert "pod to pod, same node" in failures(running_lab)

    def boot(node: NodeSSH) -> None:
        node.run(node_network.BOOT_COMMAND, timeout=60, quiet=True)
        for pod in (p.name for p in running_lab.pods if p.node == node.name):
            node.run(f"{lifecycle.RUNTIME} stop {pod}", timeout=60, quiet=True)

    running_lab.ssh.on_all(boot, workers)
    running_lab.start_pods()
    assert failures(running_lab) == {}


FAILING_PLUGIN = b"""#!/bin/sh
# A second plugin that refuses every ADD: the runtime must undo the first one's.
cat >/dev/null
[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{"cniVersion": "1.0.0", "code": 11, "msg": "refused by the test"}'; exit 1
"""


def pod_rows(out: str) -> dict[str, list[str]]:
    """The `pods` table's rows by name: state, address, node."""
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines()]
    return {row[0]: row[1:] for row in cells if len(row) == 4 and row[0] != "name"}


def test_pods_are_run_listed_used_and_deleted_as_with_kubectl(running_lab, capfd):
    """run, pods, exec (a ping across nodes), delete and each bad input through the command
    line entry, on the module's lab kept up: every error one line, nothing half-made."""
    name = running_lab.layout.lab
    worker = running_lab.ssh.node("worker-1")

    def lab(*args: str, on: str = name) -> tuple[int, str]:
        code = lab_main(["--name", on, *args])
        out, err = capfd.readouterr()
        assert "Traceback" not in out + err
        return code, out + err

    def refused(*args: str, on: str = name) -> str:
        code, out = lab(*args, on=on)
        assert code == 1 and out.count("\n") == 1, out
        return out

    conflist = worker.read_file(str(node_network.NODE_FILES.conflist))
    assert conflist is not None
    failing = json.loads(conflist[0])
    failing["plugins"].append({"type": "fail-add"})
    reserved = "ls /var/lib/cni/networks/lab-net"
    try:
        code, out = lab("run", "web-x", "--node", "worker-2")
        assert code == 0 and out.startswith("pod/web-x running on worker-2 at 10.244.2."), out
        address = out.split(" at ")[1].strip()
        code, out = lab("pods")
        rows = pod_rows(out)
        assert code == 0 and rows["web-x"] == ["running", address, "worker-2"]
        assert rows["bash-worker-1"][0] == "running" and len(rows) == 5
        code, out = lab("exec", "bash-worker-1", "--", "ping", "-c", "1", "-W", "5", address)
        assert code == 0 and "1 received" in out, out
        assert lab("exec", "web-x", "--", "sh", "-c", "exit 3")[0] == 3

        assert "a pod named web-x runs already on worker-2" in refused("run", "web-x")
        assert "'Web_X' is not a pod name" in refused("run", "Web_X")
        assert "no node 'worker-9'" in refused("run", "web-y", "--node", "worker-9")
        assert "no pod named 'nope'" in refused("exec", "nope", "--", "true")
        assert "no pod named 'nope'" in refused("delete", "nope")
        absent = lab_name()
        assert f"no lab named {absent} is up" in refused("pods", on=absent)

        before = worker.run(reserved, timeout=30, quiet=True).output
        worker.put_files([("/opt/cni/bin/fail-add", FAILING_PLUGIN, 0o755),
                          ("/etc/cni/net.d/00-fail.conflist", json.dumps(failing).encode(),
                           0o644)])
        assert "CNI ADD by fail-add failed (1)" in refused("run", "doomed", "--node", "worker-1")
        assert "doomed" not in worker.run("ip netns list", timeout=30, quiet=True).output
        assert worker.run(reserved, timeout=30, quiet=True).output == before
        assert "doomed" not in pod_rows(lab("pods")[1])

        on_worker_2 = running_lab.ssh.node("worker-2")
        on_worker_2.run("kill $(ip netns pids web-x); while ip netns pids web-x | grep -q .; "
                        "do sleep 0.05; done", timeout=30, quiet=True)  # its workload dies
        code, out = lab("pods")
        assert code == 1 and pod_rows(out)["web-x"] == ["stopped", address, "worker-2"]

        code, out = lab("delete", "web-x")
        assert code == 0 and out == "pod/web-x deleted from worker-2\n"
        assert "web-x" not in pod_rows(lab("pods")[1])
        assert "web-x" not in on_worker_2.run("ip netns list", timeout=30, quiet=True).output
        assert address not in on_worker_2.run(reserved, timeout=30, quiet=True).output

        code, out = lab("delete", "nginx-worker-2")
        assert code == 0 and "warning: make check needs nginx-worker-2" in out
        assert "the checks need the seed lab's pod(s) nginx-worker-2" in refused("check")
        assert lab("run", "nginx-worker-2", "--node", "worker-2")[0] == 0
    finally:
        worker.run("rm -f /opt/cni/bin/fail-add /etc/cni/net.d/00-fail.conflist", timeout=30)
        running_lab.pods = lifecycle.attach(name, Console(file=io.StringIO())).pods
    assert failures(running_lab) == {}


def test_two_nodes_run_every_check_with_pods_on_the_control_plane():
    name = lab_name()
    try:
        lab = lifecycle.build(lifecycle.LabOptions(name=name, node_count=2, user="root"),
                          Console(file=io.StringIO()))
        with lab.ssh:
            lifecycle.bootstrap(lab)
            assert {pod.node for pod in lab.start_pods()} == {"master", "worker-1"}
            held = footprint(name)
            assert failures(lab) == {}
    finally:
        lifecycle.down(name)
    assert_nothing_left(name, held)


def test_the_story_turns_each_failure_into_a_pass():
    name = lab_name()
    console = Console(file=io.StringIO(), width=200)
    try:
        # As root, where the main fixture logs in as ubuntu with sudo: both paths run.
        lab = lifecycle.build(lifecycle.LabOptions(name=name, user="root"), console,
                          vpc_configured=False)
        with lab.ssh:
            stages = story.replay(lab)
            held = footprint(name)
    finally:
        lifecycle.down(name)
    assert_nothing_left(name, held)
    failing = [sorted(o.check.name for o in stage.outcomes if not o.passed) for stage in stages]
    across = ["large answer, across nodes", "node to pod", "pod to pod, across nodes",
              "pod to pod, across nodes (back)"]
    assert failing == [
        sorted([*across, "pod to internet", "pod to pod, same node"]),
        sorted([*across, "pod to internet"]),
        across,
        across,
        [],
    ]
    # What each stage's picture shows of the VPC: routes from stage 4, checks off at 5.
    assert [set(stage.vpc.routed.values()) for stage in stages] == [{False}] * 3 + [{True}] * 2
    assert stages[3].vpc.source_dest_check["worker-1"]
    assert set(stages[4].vpc.source_dest_check.values()) == {False}
    assert "FORWARD dropped on worker-1" in stages[0].causes["pod to pod, same node"]
    assert "no NAT on worker-1" in stages[1].causes["pod to internet"]
    assert "no route" in stages[2].causes["pod to pod, across nodes"]
    assert "source/destination check on worker-1" in stages[3].causes["pod to pod, across nodes"]
    assert "source/destination check on worker-2" in stages[3].causes["node to pod"]
    # Each stage's first failing check, traced: where its packet stopped, in the same words.
    stops = [(stage.traced[0].name, stage.traced[1].stop) for stage in stages[:4]
             if stage.traced and stage.traced[1].stop]
    assert [(name, stop.place) for name, stop in stops] == [
        ("pod to pod, same node", "worker-1"), ("pod to pod, across nodes", "router"),
        ("pod to pod, across nodes", "router"), ("pod to pod, across nodes", "router")]
    for (name, stop), stage in zip(stops, stages[:4], strict=True):
        assert stop.reason.split(":")[0] in stage.causes[name]
    assert stages[4].traced is None


def lab_cli(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", "--name", name, *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_cli_keeps_a_lab_that_another_process_removes_idempotently():
    """`up --keep` exits leaving the lab running, as a crashed run would; `down`, in a new
    process with no memory of it, removes every process, namespace and file."""
    name, held = lab_name(), None
    try:
        kept = lab_cli(name, "up", "--keep")
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert "pod to internet" in kept.stdout and "FAIL" not in kept.stdout
        assert f"--name {name} enter worker-1" in kept.stdout
        drawn = picture.picture_stem(name, "checks").with_suffix(".svg")
        assert "The checks, drawn: " in kept.stdout and f"{name}/checks.svg" in kept.stdout
        svg = ET.parse(drawn).getroot()
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"
        assert "bash-worker-1" in "".join(svg.itertext())
        on_node = lab_cli(name, "enter", "worker-1", "-c", "hostname; ip -4 -br addr show cni0")
        assert on_node.stdout.split()[:4] == ["worker-1", "cni0", "UP", "10.244.1.1/24"]
        in_pod = lab_cli(name, "enter", "worker-1", "bash-worker-1", "-c",
                         "ip -4 -o addr show eth0")
        assert " inet 10.244.1." in in_pod.stdout, in_pod.stderr
        held = footprint(name)
        workloads = [pid for pid in held.pids
                     if b"echo_server.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workloads) == 5  # two pods on each worker, and the internet host
    finally:
        removed = lab_cli(name, "down")
    assert removed.returncode == 0 and f"{name}-router" in removed.stdout
    assert held is not None
    assert_nothing_left(name, held)
    again = lab_cli(name, "down")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_a_kept_lab_is_checked_broken_by_hand_and_mended_by_one_phase():
    """The learner's loop on a kept lab, each step a new process: check (pass), a rule
    removed by hand, check and status (fail, naming the cause), run node-network, check."""
    name = lab_name()
    chain = node_network.FORWARD_CHAIN.name
    try:
        assert lab_cli(name, "up", "--keep").returncode == 0
        healthy = lab_cli(name, "check")
        assert healthy.returncode == 0 and "FAIL" not in healthy.stdout, healthy.stdout
        status = lab_cli(name, "status")
        assert status.returncode == 0 and " ok " in status.stdout, status.stdout
        lab_cli(name, "enter", "worker-1", "-c", f"iptables -F {chain}")
        broken = lab_cli(name, "check")
        assert broken.returncode == 1 and "FORWARD dropped on worker-1" in broken.stdout
        status = lab_cli(name, "status")
        assert status.returncode == 1
        assert "no FORWARD rule accepts the pod network" in status.stdout, status.stdout
        unknown = lab_cli(name, "bootstrap", "node-netwrok")
        assert unknown.returncode == 1 and "unknown phase(s): node-netwrok" in unknown.stdout
        assert "Traceback" not in unknown.stdout + unknown.stderr
        mended = lab_cli(name, "bootstrap", "node-network")
        assert mended.returncode == 0 and "[node-network]" in mended.stdout, mended.stdout
        assert lab_cli(name, "check").returncode == 0
    finally:
        lab_cli(name, "down")
    gone = lab_cli(name, "check")
    assert gone.returncode == 1 and f"no lab named {name} is up" in gone.stdout
    assert "Traceback" not in gone.stdout + gone.stderr

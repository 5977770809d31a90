"""Build and remove the simulated VPC: namespaces, links, the router's route table, the IGW.

Everything the lab creates lives in namespaces named `<lab>-*`; the host namespace is not
touched (the operator reaches the nodes from the internet namespace, see
lab/netns_socket.py).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network
from pathlib import Path

from bootstrap.errors import LabError
from infra.firewall import IngressRule, ingress_rules
from lab.layout import (
    IGW_INTERNET_SIDE,
    INTERNET_HOST,
    PUBLIC_IPS,
    LabNode,
    Layout,
    router_igw_addresses,
)

KILL_ROUNDS = 10


class LabCommandError(LabError):
    """A command that builds or removes the simulated network failed."""


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise LabCommandError(f"{' '.join(argv)} failed ({done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def ip_batch(namespace: str | None, commands: Iterable[str]) -> None:
    """Run many iproute2 commands in one process (`ip -batch`), in a namespace or the host."""
    prefix = ["ip", "-n", namespace] if namespace else ["ip"]
    run([*prefix, "-batch", "-"], stdin="\n".join(commands) + "\n")


def sysctl(namespace: str, settings: dict[str, str]) -> None:
    run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w",
         *(f"{key}={value}" for key, value in settings.items())])


def existing_namespaces(lab: str) -> list[str]:
    names = (line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line)
    return [name for name in names if name.startswith(f"{lab}-")]


def build(layout: Layout, *, checked: Iterable[LabNode] = ()) -> None:
    """Create the VPC router, the nodes on its subnet, the IGW and the internet host; the
    router checks source and destination at the ports of the `checked` nodes."""
    for namespace in layout.namespaces:
        run(["ip", "netns", "add", namespace])
        ip_batch(namespace, ["link set lo up"])
    _build_router(layout)
    for node in layout.nodes:
        _build_node(layout, node)
    for node in checked:  # a new router has no check yet: no need to read its rules first
        _switch_check(layout, node, True)
    _build_igw(layout)
    _build_internet(layout)


def _build_router(layout: Layout) -> None:
    router, igw = router_igw_addresses()
    ip_batch(layout.router_ns, [
        "link add vpc0 type bridge",
        f"addr add {layout.router_ip} dev vpc0",
        "link set vpc0 up",
    ])
    ip_batch(None, [f"link add igw0 netns {layout.router_ns} type veth peer name vpc "
                    f"netns {layout.igw_ns}"])
    ip_batch(layout.router_ns, [
        f"addr add {router} dev igw0", "link set igw0 up", f"route add default via {igw.ip}",
    ])
    # A VPC router forwards but never redirects hosts to each other (AWS does not either).
    sysctl(layout.router_ns, {"net.ipv4.ip_forward": "1",
                              "net.ipv4.conf.all.send_redirects": "0",
                              "net.ipv4.conf.vpc0.send_redirects": "0"})


def _build_node(layout: Layout, node: LabNode) -> None:
    prefix = layout.plan.subnet.prefixlen
    ip_batch(None, [f"link add eth0 netns {node.namespace} type veth peer name "
                    f"{node.router_port} netns {layout.router_ns}"])
    ip_batch(layout.router_ns, [f"link set {node.router_port} master vpc0 up"])
    ip_batch(node.namespace, [
        f"addr add {node.planned.private_ip}/{prefix} dev eth0",
        "link set eth0 up",
        f"route add default via {layout.router_ip.ip}",
    ])
    # Docker and some distributions set FORWARD to DROP: the node network must cope.
    run(["ip", "netns", "exec", node.namespace, "iptables", "-P", "FORWARD", "DROP"])
    sysctl(node.namespace, {"net.ipv4.conf.all.accept_redirects": "0"})


def add_pod_routes(layout: Layout) -> None:
    """The VPC route table's pod routes: node N's pod CIDR via node N (the Pulumi routes)."""
    ip_batch(layout.router_ns, [f"route replace {planned.pod_cidr} via {planned.private_ip}"
                                for planned in layout.plan.nodes])


def source_dest_check_commands(layout: Layout, node: LabNode, enabled: bool) -> list[str]:
    """EC2's source/destination check at the node's port on the VPC router, as ebtables
    rules: what leaves the node must come from its address, what enters must be for it."""
    ip, port = node.planned.private_ip, node.router_port
    verb = "-A" if enabled else "-D"
    return [f"ip netns exec {layout.router_ns} ebtables -t nat {verb} {rule} -p IPv4 {match} "
            "-j DROP"
            for rule, match in ((f"PREROUTING -i {port}", f"--ip-src ! {ip}"),
                                (f"POSTROUTING -o {port}", f"--ip-dst ! {ip}"))]


def apply_planned_checks(layout: Layout) -> None:
    """Each node's check as the plan sets it, as the Pulumi program does at launch."""
    for node in layout.nodes:
        set_source_dest_check(layout, node, node.planned.source_dest_check)


def set_source_dest_check(layout: Layout, node: LabNode, enabled: bool) -> None:
    """Turn the check on or off for one node, like `aws ec2 modify-instance-attribute`."""
    if source_dest_checked(layout)[node.name] != enabled:
        _switch_check(layout, node, enabled)


def _switch_check(layout: Layout, node: LabNode, enabled: bool) -> None:
    for command in source_dest_check_commands(layout, node, enabled):
        run(shlex.split(command))


def source_dest_checked(layout: Layout) -> dict[str, bool]:
    """Is the check on for each node? Read from the router's rules."""
    listing = run(["ip", "netns", "exec", layout.router_ns, "ebtables", "-t", "nat", "-L"])
    return checked_ports(layout, listing)


def checked_ports(layout: Layout, listing: str) -> dict[str, bool]:
    """Each node whose port has a DROP rule in an `ebtables -L` listing: half a check (one
    direction) still drops."""
    dropping = [f" {line.strip()} " for line in listing.splitlines()
                if line.split()[-2:] == ["-j", "DROP"]]
    return {node.name: any(f" {flag} {node.router_port} " in rule
                           for rule in dropping for flag in ("-i", "-o"))
            for node in layout.nodes}


def _build_igw(layout: Layout) -> None:
    router, _ = router_igw_addresses()
    ip_batch(None, [f"link add wan netns {layout.igw_ns} type veth peer name igw "
                    f"netns {layout.internet_ns}"])
    ip_batch(layout.igw_ns, [
        f"addr add {router_igw_addresses()[1]} dev vpc", "link set vpc up",
        f"addr add {IGW_INTERNET_SIDE} dev wan", "link set wan up",
        f"route add {layout.plan.vpc} via {router.ip}",
    ])
    sysctl(layout.igw_ns, {"net.ipv4.ip_forward": "1"})
    run(["ip", "netns", "exec", layout.igw_ns, "iptables-restore"], stdin=igw_rules(layout))


def igw_rules(layout: Layout) -> str:
    """Like AWS's IGW: translate node addresses 1:1 to public ones, drop any other source.
    What the internet may send in is the security group's, from the same rules as the
    Pulumi program's (stateful: answers to the nodes' own connections pass)."""
    nat = ["*nat"]
    filt = ["*filter", ":FORWARD DROP [0:0]",
            "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    from_internet = [rule for rule in ingress_rules(layout.plan)
                     if not _inside(layout, IPv4Network(rule.cidr))]
    for node in layout.nodes:
        private = node.planned.private_ip
        nat += [f"-A PREROUTING -i wan -d {node.public_ip} -j DNAT --to-destination {private}",
                f"-A POSTROUTING -o wan -s {private} -j SNAT --to-source {node.public_ip}"]
        filt.append(f"-A FORWARD -i vpc -o wan -s {private} -j ACCEPT")
        filt += [f"-A FORWARD -i wan -o vpc -s {rule.cidr} -d {private}{_protocol(rule)} "
                 "-j ACCEPT" for rule in from_internet]
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT"]) + "\n"


def _inside(layout: Layout, cidr: IPv4Network) -> bool:
    """A security group source the internet gateway never sees: the VPC's or the pods'."""
    plan = layout.plan
    return cidr.subnet_of(plan.vpc) or cidr.subnet_of(plan.pod_network)


def _protocol(rule: IngressRule) -> str:
    """The rule's protocol and ports as iptables matches ("-1" is all; -1 ports are any)."""
    if rule.protocol == "-1":
        return ""
    if rule.from_port in (None, -1):
        return f" -p {rule.protocol}"
    ports = str(rule.from_port) if rule.to_port == rule.from_port else \
        f"{rule.from_port}:{rule.to_port}"
    return f" -p {rule.protocol} --dport {ports}"


def _build_internet(layout: Layout) -> None:
    ip_batch(layout.internet_ns, [
        "link add inet0 type bridge",
        f"addr add {INTERNET_HOST} dev inet0",
        "link set inet0 up",
        "link set igw master inet0 up",
        f"route add {PUBLIC_IPS} via {IGW_INTERNET_SIDE.ip}",
    ])


def namespace_pids(namespaces: Iterable[str]) -> set[int]:
    """Processes in these network namespaces, and every process sharing a mount namespace
    with one of them (a node's pods run in the node's mount namespace, in pod netns)."""
    net_inodes = set()
    for name in namespaces:
        try:
            net_inodes.add(os.stat(f"/run/netns/{name}").st_ino)
        except FileNotFoundError:
            continue
    procs = process_namespaces()
    inside = {pid for pid, (net, _) in procs.items() if net in net_inodes}
    # 0 stands for the host's mount namespace: never a reason to kill a process.
    mounts = {procs[pid][1] for pid in inside} - {0}
    return inside | {pid for pid, (_, mnt) in procs.items() if mnt in mounts}


def process_namespaces() -> dict[int, tuple[int, int]]:
    host_mnts = {os.stat("/proc/self/ns/mnt").st_ino}
    with contextlib.suppress(OSError):  # pid 1 may be out of reach in a container
        host_mnts.add(os.stat("/proc/1/ns/mnt").st_ino)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            net = os.stat(entry / "ns/net").st_ino
            mnt = os.stat(entry / "ns/mnt").st_ino
        except OSError:
            continue
        found[int(entry.name)] = (net, 0 if mnt in host_mnts else mnt)
    return found


def kill_processes(pids: set[int], grace: float = 2.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not is_zombie(pid)}
            time.sleep(0.02)
        if not pids:
            return


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def destroy(lab: str) -> list[str]:
    """Remove every process, namespace and link of the lab, idempotently; returns what went.
    Processes are scanned again until none is left: one may fork while we kill (an sshd
    session, a pod's workload), and a survivor would keep a node's mounts alive."""
    namespaces = existing_namespaces(lab)
    for _ in range(KILL_ROUNDS):
        survivors = namespace_pids(namespaces)
        if not survivors:
            break
        kill_processes(survivors)
    else:
        raise LabCommandError(f"processes of lab {lab} survive SIGKILL: "
                              f"{sorted(namespace_pids(namespaces))}")
    for namespace in namespaces:
        run(["ip", "netns", "del", namespace], check=False)
    return namespaces

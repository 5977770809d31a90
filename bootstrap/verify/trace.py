"""A probe's path, hop by hop, from the kernel's own packet trace (pure: no I/O here).

The trace rules (`Flow.agent_spec`) mark only the probe's packets; in each network namespace
the packet may cross, bootstrap/verify/trace_agent.py sets them and returns what
`xtables-monitor --trace` printed. `parse_monitor` reads that, `assemble` orders the hops
of all namespaces (a routed hop lowers the IP TTL by one, so the TTL says which came
first), and `drop_reason` / `vanished_reason` say why a packet stopped, in the checks'
words.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from bootstrap.errors import LabError
from bootstrap.verify.diagnose import (
    forward_dropped,
    forward_one_way,
    forwarding_off,
    source_dest_checked,
)
from bootstrap.verify.trace_agent import OUTPUT_MARK, UNTRACEABLE

Direction = Literal["request", "answer"]
Protocol = Literal["tcp", "icmp"]
IP_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
BRIDGE_FAMILY = 7
DROPPING = ("DROP", "REJECT")
# What a namespace holds, for the trace rules: every namespace has iptables' raw table; a
# namespace whose bridge can drop (the VPC router's source/destination check) also gets a
# bridge-family rule.
TRACE_CHAINS = ("PREROUTING", "OUTPUT")
# A packet that loops between two routers (a wrong route) passes again and again until its
# TTL runs out, and a large answer is many packets: trace only TCP's handshake (the hops use
# its first packets), only while the TTL is high (every sender starts at 64 or more), and at
# most a short burst per rule, or the monitor, flooded, loses the trace.
TTL_FLOOR = 40
BURST = ["--limit", "5/second", "--limit-burst", "8"]


class TraceError(LabError):
    """Bad input (an endpoint that does not exist), or an agent that failed."""


class TraceUnavailable(TraceError):
    """This kernel or machine cannot trace packets (no nftables trace, no xtables-monitor)."""


@dataclass(frozen=True)
class Packet:
    """One packet as the monitor printed it at one hook."""

    family: int  # 2: IPv4, 7: bridge
    inbound: str = ""
    outbound: str = ""
    src: str = ""
    dst: str = ""
    ttl: int = 0
    ip_id: int = 0
    protocol: str = ""
    sport: int = 0
    dport: int = 0
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Verdict:
    """A rule or a chain's policy the packet met: `rule` as `iptables -S` prints it ("" in
    the bridge family, where the monitor gives only the rule's handle)."""

    family: int
    table: str
    chain: str
    kind: str  # "rule", "policy" or "return"
    verdict: str  # ACCEPT, DROP, CONTINUE, JUMP:LAB-FWD, ...
    rule: str = ""
    handle: str = ""

    @property
    def ours(self) -> bool:
        """One of the trace's own rules, which mark the packet and match nothing else."""
        return self.rule.endswith("-j TRACE") or (self.family == BRIDGE_FAMILY and
                                                  self.verdict == "CONTINUE")

    @property
    def drops(self) -> bool:
        return self.verdict in DROPPING

    def describe(self) -> str:
        if self.kind != "rule":
            return f"{self.table} {self.chain}: policy {self.verdict}"
        if self.rule:
            return f"{self.table}: {self.rule}"
        return f"bridge {self.table} {self.chain}: rule {self.handle} -> {self.verdict}"


@dataclass(frozen=True)
class Step:
    """A packet at one hook, and the rules and policies it met there."""

    packet: Packet
    verdicts: tuple[Verdict, ...] = ()


# -- the monitor's output ------------------------------------------------------------------

def parse_monitor(text: str) -> list[Step]:
    """`xtables-monitor --trace` lines: a PACKET line, then the TRACE lines of that packet.
    Rule-set events (EVENT, NEWGEN) and anything else are left out."""
    steps: list[tuple[str, Packet, list[Verdict]]] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].isdigit():
            continue
        if words[0] == "PACKET:":
            steps.append((words[2], parse_packet(int(words[1]), words[3:]), []))
        elif words[0] == "TRACE:" and steps:
            same = [verdicts for trace_id, _, verdicts in steps if trace_id == words[2]]
            (same[-1] if same else steps[-1][2]).append(parse_verdict(int(words[1]), line))
    return [Step(packet, tuple(verdicts)) for _, packet, verdicts in steps]


def parse_packet(family: int, words: Sequence[str]) -> Packet:
    fields = dict(word.split("=", 1) for word in words if "=" in word)
    flags = frozenset(word for word in words if "=" not in word)
    if "NH" in fields and "SRC" not in fields:
        fields.update(network_header(fields["NH"]))
    number = int(fields.get("PROTO_NUMBER", "0") or 0)
    protocol = fields.get("PROTO", "").lower() or IP_PROTOCOLS.get(number, "")
    if not protocol:
        protocol = "tcp" if "SPORT" in fields and "DPORT" in fields else "icmp"
    return Packet(family, fields.get("IN", ""), fields.get("OUT", ""), fields.get("SRC", ""),
                  fields.get("DST", ""), int(fields.get("TTL", "0")), int(fields.get("ID", "0")),
                  protocol, int(fields.get("SPORT", "0")), int(fields.get("DPORT", "0")), flags)


def network_header(hexdump: str) -> dict[str, str]:
    """The IPv4 header of a bridged packet, which the monitor prints raw (NH=...) and with
    each byte above 0x7f sign-extended ("ffffff8c" for 0x8c)."""
    data = bytes(int(byte, 16) for byte in re.findall(r"(?:ffffff)?([0-9a-f]{2})", hexdump))
    if len(data) < 20 or data[0] >> 4 != 4:
        return {}
    return {"SRC": ".".join(map(str, data[12:16])), "DST": ".".join(map(str, data[16:20])),
            "TTL": str(data[8]), "ID": str(int.from_bytes(data[4:6], "big")),
            "PROTO_NUMBER": str(data[9])}


def parse_verdict(family: int, line: str) -> Verdict:
    """` TRACE: 2 id filter:LAB-FWD:rule:0x3:ACCEPT  -4 -t filter -A LAB-FWD ... -j ACCEPT`"""
    words = line.split(maxsplit=3)
    where, _, rule = words[3].partition(" ") if len(words) > 3 else ("", "", "")
    parts = where.split(":")
    table, chain, kind = ([*parts, "", "", ""])[:3]
    handle = parts[3] if kind == "rule" and len(parts) > 3 else ""
    verdict = ":".join(parts[4:] if kind == "rule" else parts[3:])
    rule = re.sub(r"^-4 -t \S+ ", "", rule.strip())
    return Verdict(family, table, chain, kind, verdict, rule, handle)


def route_summary(route: str) -> str:
    """`ip route get`'s first line without what the row shows already (the destination, the
    source) and the lookup's details: "via 10.0.1.1 dev eth0", "local", "dev cni0"; an error
    as it is."""
    words = route.split()
    if words[:1] == ["local"]:
        return "local (for this namespace)"
    if not words or not re.match(r"^[0-9.]+$", words[0]):
        return route.strip()
    kept, skip = [], {"from", "src", "uid", "cache", "iif"}
    index = 1
    while index < len(words):
        if words[index] in skip:
            index += 2
            continue
        kept.append(words[index])
        index += 1
    return " ".join(kept)


def monitor_errors(text: str) -> list[str]:
    """What the monitor said besides packets and events: an error such as "No buffer space
    available" means it lost part of the trace."""
    known = ("PACKET:", "TRACE:", "EVENT:", "NEWGEN:")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith(known)]


def traced_part(output: str) -> str:
    """What an agent's monitor saw: the lines after its TRACE mark."""
    lines = output.splitlines()
    if OUTPUT_MARK not in lines:
        return ""
    return "\n".join(lines[lines.index(OUTPUT_MARK) + 1:])


def untraceable(output: str) -> str:
    """The agent's reason when this kernel or this node cannot trace; "" when it could."""
    for line in output.splitlines():
        if line.startswith(UNTRACEABLE):
            return line[len(UNTRACEABLE):].strip()
    return ""


# -- the probe's flow ----------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    """The probe's packets: their protocol, every address the target and the source have on
    the way (as the source sent it, and after each translation), and for TCP the target's
    port. Both directions match: to the target, and its answers."""

    protocol: Protocol
    targets: tuple[str, ...]
    port: int = 0
    sources: tuple[str, ...] = ()  # () matches any source

    def iptables_matches(self) -> list[list[str]]:
        """Two rules, one per direction (iptables makes one rule per address pair of the
        comma lists, and deletes them all by the same line)."""
        targets, sources = ",".join(self.targets), ",".join(self.sources)
        request = ["-p", self.protocol, *(["-s", sources] if sources else []), "-d", targets]
        answer = ["-p", self.protocol, "-s", targets, *(["-d", sources] if sources else [])]
        if self.protocol == "tcp":
            request += ["--dport", str(self.port), "--tcp-flags", "SYN", "SYN"]
            answer += ["--sport", str(self.port), "--tcp-flags", "SYN", "SYN"]
        bounded = ["-m", "ttl", "--ttl-gt", str(TTL_FLOOR), "-m", "limit", *BURST]
        return [[*request, *bounded], [*answer, *bounded]]

    def ebtables_matches(self) -> list[list[str]]:
        matches = []
        for address in self.targets:
            for towards, port in (("--ip-dst", "--ip-dport"), ("--ip-src", "--ip-sport")):
                match = ["-p", "IPv4", "--ip-proto", self.protocol, towards, address]
                if self.protocol == "tcp":
                    match += [port, str(self.port)]
                matches.append([*match, *BURST])
        return matches

    def agent_spec(self, *, bridge: bool) -> dict[str, list[list[object]]]:
        """What trace_agent.py sets in one namespace: raw PREROUTING and OUTPUT (a packet
        arriving or made here), and for a namespace whose bridge drops, the bridge's nat
        PREROUTING, before any rule of its own."""
        spec: dict[str, list[list[object]]] = {
            "iptables": [["raw", chain, match] for chain in TRACE_CHAINS
                         for match in self.iptables_matches()]}
        if bridge:
            spec["ebtables"] = [["nat", "PREROUTING", match]
                                for match in self.ebtables_matches()]
        return spec

    def direction(self, packet: Packet) -> Direction | None:
        if packet.protocol != self.protocol:
            return None
        ported = self.protocol == "tcp" and packet.family != BRIDGE_FAMILY
        if packet.dst in self.targets and (not ported or packet.dport == self.port):
            return "request"
        if packet.src in self.targets and (not ported or packet.sport == self.port):
            return "answer"
        return None


# -- hops ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    """One namespace the probe's first packet of one direction passed."""

    place: str  # the namespace, by what it stands for: "worker-1", "router", "igw", ...
    direction: Direction
    inbound: str  # "" for a packet made here
    outbound: str  # "" for a packet that went no further (delivered here, or lost)
    before: tuple[str, str]  # source and destination as it arrived
    after: tuple[str, str]  # as it left (as the next hop saw it)
    verdicts: tuple[Verdict, ...]  # the rules and policies it met, the trace's own left out
    ttl: int  # the TTL it arrived with
    # The bridge ports it came in and went out through, where a bridge was traced.
    bridge_ports: tuple[str, str] = ("", "")
    route: str = ""  # the route it took here (`ip route get`), filled in by the caller

    @property
    def dropped(self) -> Verdict | None:
        return next((verdict for verdict in self.verdicts if verdict.drops), None)

    @property
    def translated(self) -> bool:
        return self.before != self.after

    @property
    def rules(self) -> tuple[Verdict, ...]:
        """What to show: each rule matched, and a policy where it decided."""
        return tuple(v for v in self.verdicts if v.kind == "rule" or v.verdict != "ACCEPT"
                     or (v.chain in ("FORWARD", "INPUT") and v.table == "filter"))


def first_packet(steps: Sequence[Step], flow: Flow, direction: Direction) -> list[Step]:
    """The steps of the first packet of one direction (a TCP handshake's first segment, a
    ping's request or reply), on its first visit: the IP ID stays the same across hops and
    NAT; a packet that loops back comes with a TTL lower again."""
    mine = [step for step in steps if flow.direction(step.packet) == direction]
    if flow.protocol == "tcp":
        mine = [step for step in mine if step.packet.family == BRIDGE_FAMILY
                or "SYN" in step.packet.flags]
    if not mine:
        return []
    first = mine[0].packet
    return [step for step in mine if step.packet.ip_id == first.ip_id
            and first.ttl - 1 <= step.packet.ttl <= first.ttl]


def _hop(place: str, direction: Direction, steps: Sequence[Step]) -> Hop:
    routed = [step.packet for step in steps if step.packet.family != BRIDGE_FAMILY]
    bridged = [step.packet for step in steps if step.packet.family == BRIDGE_FAMILY]
    entry = (routed or bridged)[0]
    last = (routed or bridged)[-1]
    return Hop(place, direction, entry.inbound,
               next((p.outbound for p in reversed(routed) if p.outbound), ""),
               (entry.src, entry.dst), (last.src, last.dst),
               tuple(v for step in steps for v in step.verdicts if not v.ours),
               max(p.ttl for p in (routed or bridged)),
               bridge_ports=(bridged[0].inbound if bridged else "",
                             next((p.outbound for p in bridged if p.outbound), "")))


def assemble(traces: Mapping[str, Sequence[Step]], flow: Flow) -> list[Hop]:
    """Every namespace's part of the trace, in the order the packets passed them: the
    request first, then the answer. Higher TTL first (each routed hop lowers it); at the
    same TTL a packet made here comes before the namespace that received it. A hop's
    "after" is what the next hop saw: a translation shows where it was made."""
    hops: list[Hop] = []
    for direction in ("request", "answer"):
        found = [_hop(place, direction, steps) for place, steps in
                 ((place, first_packet(all_steps, flow, direction))
                  for place, all_steps in traces.items()) if steps]
        found.sort(key=lambda hop: (-hop.ttl, hop.inbound != ""))
        for index, hop in enumerate(found):
            if index + 1 < len(found):
                hop = replace(hop, after=found[index + 1].before)
            hops.append(hop)
    return hops


# -- why it stopped ------------------------------------------------------------------------

@dataclass(frozen=True)
class Stop:
    place: str
    direction: Direction
    reason: str
    traced: bool = True  # False: the reason comes from the configuration, not the trace


@dataclass(frozen=True)
class TraceResult:
    hops: list[Hop]
    arrived: bool
    stop: Stop | None = None
    notes: list[str] = field(default_factory=list)
    # Without a kernel trace: per namespace, the rules whose counters rose during the probe.
    counted: Mapping[str, list[str]] = field(default_factory=dict)


# -- without a kernel trace: rule counters -------------------------------------------------

def rule_counters(saved: str) -> dict[str, int]:
    """`iptables-save -c`: each rule ("table: -A ...") and the packets it counted."""
    counters, table = {}, ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        found = re.match(r"^\[(\d+):\d+\] (-A .*)$", line)
        if found:
            counters[f"{table}: {found.group(2)}"] = int(found.group(1))
    return counters


def counted_rules(before: str, after: str) -> list[str]:
    """The rules whose packet counters rose between two `iptables-save -c`, in order: on a
    quiet lab, the rules the probe's packets matched (but not in which order, nor which
    packet)."""
    earlier = rule_counters(before)
    return [rule for rule, packets in rule_counters(after).items()
            if packets > earlier.get(rule, 0)]


def drop_reason(hop: Hop, verdict: Verdict, port_owners: Mapping[str, str],
                pod_network: str) -> str:
    """A dropping rule or policy, in the words of the checks' causes where there are some.
    `port_owners` names the node behind each bridge port of the VPC router."""
    if verdict.family == BRIDGE_FAMILY:
        inbound, outbound = hop.bridge_ports
        owner = port_owners.get(outbound if verdict.chain == "POSTROUTING" else inbound, "")
        if owner:
            return source_dest_checked(owner)
        return f"dropped by the bridge's {verdict.table} {verdict.chain} rule " \
               f"{verdict.handle} on {hop.place}"
    if verdict.kind != "rule" and verdict.chain == "FORWARD":
        if hop.direction == "answer":
            return forward_one_way(hop.place, "from pods")
        accepted = "the pod network" if any(
            ipaddress.ip_address(address) in ipaddress.ip_network(pod_network)
            for address in hop.before) else "the packet"
        return forward_dropped(hop.place, verdict.verdict, accepted)
    if verdict.kind != "rule":
        return f"{verdict.chain} dropped on {hop.place}: policy {verdict.verdict}"
    return f"dropped on {hop.place} by the rule {verdict.rule} ({verdict.table} table)"


def vanished_reason(hop: Hop, route: str, forwarding: bool | None) -> str:
    """A packet seen arriving at `hop` and nowhere after it, with no rule that dropped it:
    `route` is `ip route get` for it there (its error, if it failed), `forwarding` the
    namespace's net.ipv4.ip_forward. "" when none of these explains it."""
    if hop.outbound:
        return f"left {hop.place} through {hop.outbound} and was not seen again"
    if forwarding is False:
        return forwarding_off(hop.place)
    if "cross-device" in route:
        return f"the reverse-path filter on {hop.place} dropped it (rp_filter): no route " \
               f"back to {hop.before[0]} through {hop.inbound}"
    if "unreachable" in route.lower() or "no route" in route.lower():
        return f"no route on {hop.place} to {hop.after[1]}"
    return ""  # routed, forwarded, and still gone: the trace cannot say why

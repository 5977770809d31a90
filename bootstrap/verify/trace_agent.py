"""The node side of a packet trace, standard library only: it runs in one network namespace
(a lab namespace, or a cloud node over SSH), as root.

It starts `xtables-monitor --trace`, adds the trace rules it is given (iptables raw table,
and the bridge family's nat table where asked), prints READY once the monitor has seen them,
and waits for its standard input to close. Then, also on a signal or when its caller
vanishes, it removes every rule it added, and a table it created, and prints what the
monitor saw after a TRACE line. Nothing else in the namespace changes.

    python3 -IS trace_agent.py '{"iptables": [["raw", "PREROUTING", ["-p", "icmp"]]],
                                 "ebtables": []}' [DEADLINE_SECONDS]

With DEADLINE_SECONDS it runs detached instead (a node reached over SSH): it ignores its
input and stops on a signal (SIGTERM) or at the deadline, so a lost connection leaves no rule
behind for longer than that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

READY, OUTPUT_MARK, UNTRACEABLE = "READY", "TRACE", "UNTRACEABLE"
READY_TIMEOUT_S = 5.0
# Which nf_tables family each tool's tables live in (NFPROTO_IPV4, NFPROTO_BRIDGE).
FAMILIES = {"iptables": 2, "ebtables": 7}
NETLINK_NETFILTER = 12
TRACE_GROUP_BIT = 1 << (9 - 1)  # NFNLGRP_NFTRACE, as /proc/net/netlink shows groups
SAVE = {"iptables": "iptables-save", "ebtables": "ebtables-save"}


def rule_argv(tool: str, table: str, chain: str, match: list[str], verb: str) -> list[str]:
    """`-I chain 1` puts the trace rule before any rule that could drop the packet."""
    position = ["-I", chain, "1"] if verb == "add" else ["-D", chain]
    return [tool, "-t", table, *position, *match, "-j", "TRACE"]


def existing_tables(tool: str) -> set[str]:
    """The tables the namespace has: `iptables-save` lists only those (and creates none)."""
    done = subprocess.run([SAVE[tool]], capture_output=True, text=True, check=False)
    return {line[1:].strip() for line in done.stdout.splitlines() if line.startswith("*")}


def table_has_rules(tool: str, table: str) -> bool:
    done = subprocess.run([SAVE[tool], "-t", table], capture_output=True, text=True,
                          check=False)
    return any(line.startswith("-A ") for line in done.stdout.splitlines())


def delete_table(family: int, name: str) -> None:
    """Remove a whole nf_tables table (what `nft delete table` does; nft may not be
    installed): one netlink batch with NFT_MSG_DELTABLE."""
    subsystem, deltable, ack = 10, 2, 4  # NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE, NLM_F_ACK

    def message(kind: int, flags: int, seq: int, nf_family: int, res_id: int,
                payload: bytes = b"") -> bytes:
        body = struct.pack("BB", nf_family, 0) + struct.pack("!H", res_id) + payload
        return struct.pack("=IHHII", 16 + len(body), kind, 1 | flags, seq, 0) + body

    value = name.encode() + b"\0"
    attribute = struct.pack("=HH", 4 + len(value), 1) + value  # NFTA_TABLE_NAME
    attribute += b"\0" * (-len(attribute) % 4)
    batch = (message(0x10, 0, 1, 0, subsystem)  # NFNL_MSG_BATCH_BEGIN
             + message(subsystem << 8 | deltable, ack, 2, family, 0, attribute)
             + message(0x11, 0, 3, 0, subsystem))  # NFNL_MSG_BATCH_END
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.send(batch)
        reply = sock.recv(65536)
    kind = struct.unpack_from("=H", reply, 4)[0]
    error = struct.unpack_from("=i", reply, 16)[0] if kind == 2 else 0  # NLMSG_ERROR
    if error:
        raise OSError(-error, f"cannot delete table {name}")


class Monitor:
    """`xtables-monitor --trace --event`, read by a thread: the rule-set events show when
    it listens, the trace lines are the result."""

    def __init__(self) -> None:
        if shutil.which("xtables-monitor") is None:
            raise OSError("xtables-monitor is not installed (iptables' nftables tools)")
        self.process = subprocess.Popen(["stdbuf", "-oL", "xtables-monitor", "--trace", "--event"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def listening(self) -> bool:
        """Has the monitor joined the trace's netlink group? From then on it misses nothing:
        the kernel queues what it has not read yet."""
        try:
            sockets = {os.readlink(f"/proc/{self.process.pid}/fd/{fd}")
                       for fd in os.listdir(f"/proc/{self.process.pid}/fd")}
            table = Path("/proc/net/netlink").read_text().splitlines()[1:]
        except OSError:
            return False
        return any(words[1] == str(NETLINK_NETFILTER) and int(words[3], 16) & TRACE_GROUP_BIT
                   and f"socket:[{words[9]}]" in sockets
                   for words in map(str.split, table) if len(words) > 9)

    def transactions(self) -> int:
        """Rule-set changes the monitor saw (one NEWGEN line each: every iptables or
        ebtables command, every table deleted). The bridge family's events carry no rule
        text, so the changes are counted rather than read."""
        return sum(1 for line in list(self.lines) if line.startswith("NEWGEN:"))

    def wait_for(self, done: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not done():
            if time.monotonic() > deadline or self.process.poll() is not None:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> list[str]:
        self.process.terminate()  # its lines are out already: stdbuf -oL
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=2)
        return self.lines


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signum)


def run(spec: dict[str, list[list]], deadline: float | None = None) -> int:
    """Trace until the standard input closes; with a deadline (detached, on a node reached
    over SSH), until a signal or the deadline, whichever comes first."""
    rules = [(tool, table, chain, match) for tool in FAMILIES
             for table, chain, match in spec.get(tool, [])]
    before = {tool: existing_tables(tool) for tool in FAMILIES if spec.get(tool)}
    try:
        monitor = Monitor()
    except OSError as error:
        print(f"{UNTRACEABLE} xtables-monitor cannot run: {error}", flush=True)
        return 1
    added: list[tuple[str, str, str, list[str]]] = []
    try:
        if not monitor.wait_for(monitor.listening):
            print(f"{UNTRACEABLE} xtables-monitor does not listen to the kernel's trace",
                  flush=True)
            return 1
        for rule in rules:
            done = subprocess.run(rule_argv(*rule, verb="add"), capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                print(f"{UNTRACEABLE} {done.stderr.strip()}", flush=True)
                return 1
            added.append(rule)
        print(READY, flush=True)
        if deadline is None:
            sys.stdin.read()  # until the caller is done, or gone
        else:
            time.sleep(deadline)  # a signal ends it sooner
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        for rule in reversed(added):
            subprocess.run(rule_argv(*rule, verb="delete"), capture_output=True, check=False)
        changes = 2 * len(added)
        for tool, tables in before.items():
            for table in {table for t, table, _, _ in added if t == tool} - tables:
                if not table_has_rules(tool, table):
                    delete_table(FAMILIES[tool], table)
                    changes += 1
        # The deletions' events come after every trace line of the probe: all is read.
        monitor.wait_for(lambda: monitor.transactions() >= changes)
        lines = monitor.stop()
        print(OUTPUT_MARK, *lines, sep="\n", flush=True)
    return 0


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    return run(json.loads(argv[0]), float(argv[1]) if len(argv) > 1 else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Network namespaces made by a test and removed after it, whatever happened."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

_counter = itertools.count()


class Namespaces:
    """Creates namespaces with unique names; `cleanup` kills their processes and removes
    them. Each namespace starts with loopback up and IPv6 off (no address flapping)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []

    def create(self, role: str) -> str:
        name = f"bst-{os.getpid()}-{next(_counter)}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        self.run(name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1")
        return name

    def run(self, namespace: str, *command: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ip", "netns", "exec", namespace, *command], input=stdin,
                              text=True, capture_output=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} in {namespace} exited "
                                 f"{done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def start(self, namespace: str, *command: str) -> subprocess.Popen[str]:
        """A background process in the namespace, in its own process group."""
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *command], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def cleanup(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def namespaces() -> Iterator[Namespaces]:
    made = Namespaces()
    try:
        yield made
    finally:
        made.cleanup()


def iptables_state(spaces: Namespaces, namespace: str) -> str:
    """iptables-save without its timestamp comments and packet counters."""
    saved = spaces.run(namespace, "iptables-save").stdout
    lines = [line for line in saved.splitlines() if not line.startswith("#")]
    return re.sub(r"\[\d+:\d+\]", "[0:0]", "\n".join(lines))


def link_state(spaces: Namespaces, namespace: str) -> str:
    """`ip -d addr` without the bridge's running timers, which tick on their own."""
    shown = spaces.run(namespace, "ip", "-d", "addr").stdout
    return re.sub(r"\b(\w+_timer)\s+[\d.]+", r"\1", shown)


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def connect_in_netns(namespace: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection made from inside `namespace`: a short-lived thread enters it (setns
    changes only the calling thread), and the socket stays in that namespace afterwards."""
    made: dict[str, socket.socket | BaseException] = {}

    def connect() -> None:
        try:
            with open(f"/run/netns/{namespace}") as handle:
                if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns {namespace}: {os.strerror(error)}")
            made["socket"] = socket.create_connection((host, port), timeout=timeout)
        except BaseException as error:
            made["error"] = error

    thread = threading.Thread(target=connect, name=f"connect-in-{namespace}")
    thread.start()
    thread.join()
    outcome = made.get("socket", made.get("error"))
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, socket.socket)
    return outcome

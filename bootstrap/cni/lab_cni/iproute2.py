"""The pod side's runner: one `ip -batch -` inside the pod's network namespace.

The process starts before its commands are known: its exec and namespace switch then overlap
the plugin's own work. `send` hands it the commands on stdin, `wait` collects the outcome, and
the plugin may work on in between.
`subprocess` would import a dozen modules (signal, selectors, threading, ...); `os.posix_spawnp`
and three pipes do the same here.
"""

from __future__ import annotations

import os

IP_PATHS = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
# Where runtimes and `ip netns` keep named namespaces: `ip -n NAME` enters them itself.
NAMED_NETNS_DIRS = ("/run/netns", "/var/run/netns")
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}  # C: stable messages
READ_CHUNK = 65536


class IpFailed(Exception):
    """`ip` is missing, or a command of the batch failed (`details`: what ip printed)."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg, self.details = msg, details


def find_ip_binary() -> str:
    for path in IP_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise IpFailed("iproute2's ip command was not found")


def netns_argv(netns_path: str, argv: list[str]) -> list[str]:
    """`argv` (an ip command line) run inside the namespace at `netns_path`."""
    directory, name = os.path.split(netns_path)
    if directory in NAMED_NETNS_DIRS and not name.startswith("-"):
        return [argv[0], "-n", name, *argv[1:]]  # saves the exec of nsenter
    return ["nsenter", f"--net={netns_path}", *argv]  # any other path: /proc/PID/ns/net


class IpBatch:
    """One `ip [options] -batch -` in a network namespace, started at once."""

    def __init__(self, netns_path: str, ip_options: list[str]) -> None:
        argv = netns_argv(netns_path, [find_ip_binary(), *ip_options, "-batch", "-"])
        stdin_r, self.stdin = os.pipe()
        self.stdout, out_w = os.pipe()
        self.stderr, err_w = os.pipe()
        actions = [(os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1)]
        actions.append((os.POSIX_SPAWN_DUP2, err_w, 2))
        try:
            self.pid = os.posix_spawnp(argv[0], argv, CHILD_ENV, file_actions=actions)
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)

    def run(self, batch: str) -> str:
        """Feed the commands, wait, and return stdout; a failed command raises IpFailed."""
        self.send(batch)
        return self.wait()

    def send(self, batch: str) -> None:
        """Hand `ip` its commands; it runs them while the caller goes on."""
        try:  # noqa: SIM105 (contextlib.suppress: contextlib costs 4 ms of start-up)
            os.write(self.stdin, batch.encode())
        except BrokenPipeError:
            pass  # ip already exited (say, the namespace vanished): its stderr says why

    def wait(self) -> str:
        """Wait for `ip` and return its stdout; a failed command raises IpFailed."""
        code, out, err = self.finish()
        if code != 0:
            raise IpFailed("ip failed in the container namespace", err.decode().strip())
        return out.decode()

    def finish(self) -> tuple[int, bytes, bytes]:
        """Close its stdin (an empty batch is a no-op), collect output and reap it; idempotent."""
        if not self.pid:
            return 0, b"", b""
        os.close(self.stdin)
        out, err = read_all(self.stdout), read_all(self.stderr)
        status, self.pid = os.waitpid(self.pid, 0)[1], 0
        return os.waitstatus_to_exitcode(status), out, err


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, READ_CHUNK):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)

"""The SSH layer against a real OpenSSH server on 127.0.0.1 (started by the fixtures)."""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from bootstrap.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    NodesFailed,
    SSHUnreachable,
)
from bootstrap.ssh import ClusterSSH, ConnectPolicy
from tests.bootstrap.conftest import needs_sshd
from tests.bootstrap.sshd import TestSSHServer, new_ed25519_key

pytestmark = needs_sshd

FAST = ConnectPolicy(deadline=15, attempt_timeout=3, first_delay=0.05, max_delay=0.5)


def counting_clients() -> tuple[Callable[[], paramiko.SSHClient], list[paramiko.SSHClient]]:
    """A client factory that keeps every client it made: one per connection attempt."""
    made: list[paramiko.SSHClient] = []

    def make() -> paramiko.SSHClient:
        made.append(paramiko.SSHClient())
        return made[-1]
    return make, made


def cluster(server: TestSSHServer, names: tuple[str, ...] = ("node-a",), *,
            policy: ConnectPolicy = FAST, host_key: str | None = None,
            lines: list[tuple[str, str]] | None = None, max_workers: int = 16,
            client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient,
            ) -> ClusterSSH:
    sink = (lambda node, line: lines.append((node, line))) if lines is not None else None
    return ClusterSSH(server.inventory(names, host_key=host_key), policy=policy,
                      on_line=sink, max_workers=max_workers, client_factory=client_factory)


def test_run_streams_combined_output_line_by_line(sshd: TestSSHServer) -> None:
    lines: list[tuple[str, str]] = []
    with cluster(sshd, lines=lines) as nodes:
        result = nodes.node("node-a").run(
            "echo to-stdout; sleep 0.2; echo to-stderr >&2; sleep 0.2; printf no-newline",
            timeout=10)
    assert result.exit_code == 0 and result.ok
    assert result.output == "to-stdout\nto-stderr\nno-newline"
    assert lines == [("node-a", "to-stdout"), ("node-a", "to-stderr"), ("node-a", "no-newline")]


def test_default_sink_logs_each_line_with_the_node_name(
        sshd: TestSSHServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with ClusterSSH(sshd.inventory(), policy=FAST) as nodes:
        nodes.node("node-a").run("echo hello", timeout=10)
        nodes.node("node-a").run("echo hidden", timeout=10, quiet=True)
    messages = [record.getMessage() for record in caplog.records]
    assert "[node-a] hello" in messages
    assert "[node-a] hidden" not in messages
    # The private key never reaches the log, even at DEBUG (paramiko's own records included).
    key_body = sshd.client_key.private_openssh.splitlines()[1]
    assert not any(key_body in message for message in messages)


def test_failing_command_raises_with_exit_code_and_output(sshd: TestSSHServer) -> None:
    with cluster(sshd) as nodes:
        node = nodes.node("node-a")
        with pytest.raises(CommandFailed) as failure:
            node.run("for i in $(seq 1 30); do echo line-$i; done; echo boom >&2; exit 3",
                     timeout=10)
        unchecked = node.run("echo soft; exit 4", timeout=10, check=False)
    result = failure.value.result
    assert (result.node, result.exit_code) == ("node-a", 3)
    assert "line-1\n" in result.output and result.output.endswith("boom\n")
    message = str(failure.value)
    assert "node node-a" in message and "status 3" in message and "exit 3" in message
    assert "| boom" in message and "| line-12" in message  # the last 20 lines...
    assert "| line-11\n" not in message  # ...and no more
    assert (unchecked.exit_code, unchecked.output) == (4, "soft\n")


def test_secret_output_is_returned_but_never_streamed_nor_put_in_errors(
        sshd: TestSSHServer) -> None:
    lines: list[tuple[str, str]] = []
    with cluster(sshd, lines=lines) as nodes:
        node = nodes.node("node-a")
        printed = "printf 'token-%s\\n' abc123"  # prints the secret without containing it
        token = node.run(printed, timeout=10, secret=True)
        with pytest.raises(CommandFailed) as failed:
            node.run(f"{printed}; exit 2", timeout=10, secret=True)
        with pytest.raises(CommandTimeout) as timed_out:
            node.run(f"{printed}; sleep 5", timeout=1, secret=True)
    assert token.output == "token-abc123\n"
    assert lines == []
    for error in (failed.value, timed_out.value):
        assert "token-abc123" not in str(error) and "withheld" in str(error)
    assert "token-abc123" not in failed.value.result.output


def test_command_timeout_is_raised_and_kills_the_remote_command(sshd: TestSSHServer) -> None:
    marker = "31.4159"  # a sleep whose command line we can look for afterwards
    with cluster(sshd) as nodes, pytest.raises(CommandTimeout) as timeout:
        nodes.node("node-a").run(f"echo started; sleep {marker}", timeout=1)
    assert timeout.value.output == "started\n"
    assert "after 1 s" in str(timeout.value)
    time.sleep(0.2)
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline")
                if _read(p) == f"sleep\0{marker}\0"], "the remote command outlived its timeout"


def test_stdin_is_sent_then_closed(sshd: TestSSHServer) -> None:
    payload = b"x" * 3_000_000  # larger than the SSH window: needs the sender thread
    with cluster(sshd) as nodes:
        node = nodes.node("node-a")
        assert node.run("cat", stdin=b"hello\n", timeout=10).output == "hello\n"
        assert node.run("wc -c", stdin=payload, timeout=20).output.strip() == str(len(payload))
        assert node.run("cat", timeout=10).output == ""  # no stdin: EOF at once, no hang


def test_connection_is_reused_across_commands(sshd: TestSSHServer) -> None:
    with cluster(sshd) as nodes:
        node = nodes.node("node-a")
        first = node.run("echo $SSH_CONNECTION", timeout=10).output
        second = node.run("echo $SSH_CONNECTION", timeout=10).output
    assert first == second  # same client port: one TCP connection


def test_put_writes_atomically_with_mode_and_creates_directories(
        sshd: TestSSHServer, tmp_path: Path) -> None:
    target = tmp_path / "remote" / "deep" / "plugin"
    with cluster(sshd) as nodes:
        node = nodes.node("node-a")
        node.put_files([(str(target), b"#!/bin/sh\necho v1\n", 0o755)])
        assert target.read_bytes() == b"#!/bin/sh\necho v1\n"
        assert target.stat().st_mode & 0o7777 == 0o755
        node.put_files([(str(target), b"v2\n", 0o640)])
    assert target.read_bytes() == b"v2\n"
    assert target.stat().st_mode & 0o7777 == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["plugin"]  # no temp files left


@pytest.mark.parametrize("size", [0, 100, 300_000])  # empty, small, and a prefetched read
def test_read_file_returns_content_and_mode_or_none(
        sshd: TestSSHServer, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    target = tmp_path / "fact"
    target.write_bytes(data)
    target.chmod(0o640)
    with cluster(sshd) as nodes:
        node = nodes.node("node-a")
        assert node.read_file(str(target)) == (data, 0o640)
        assert node.read_file(str(tmp_path / "absent")) is None
        assert node.exists(str(target)) and not node.exists(str(tmp_path / "absent"))


def test_connect_retries_until_a_late_sshd_answers(sshd_server: TestSSHServer) -> None:
    starter = threading.Timer(1.5, sshd_server.start)
    starter.start()
    try:
        factory, attempts = counting_clients()
        with cluster(sshd_server, client_factory=factory) as nodes:
            nodes.connect_all()
            assert nodes.node("node-a").run("echo up", timeout=10).output == "up\n"
    finally:
        starter.join()
    assert len(attempts) > 1, "the first attempt cannot have reached an sshd not yet started"


def test_unreachable_node_fails_after_the_deadline_naming_node_and_error(
        sshd_server: TestSSHServer) -> None:
    policy = ConnectPolicy(deadline=1.5, attempt_timeout=1, first_delay=0.05, max_delay=0.3)
    factory, attempts = counting_clients()
    with cluster(sshd_server, policy=policy, client_factory=factory) as nodes, \
            pytest.raises(SSHUnreachable) as unreachable:
        nodes.node("node-a").connect()
    assert len(attempts) > 1 and unreachable.value.waited >= policy.deadline
    message = str(unreachable.value)
    assert "node-a" in message and f"127.0.0.1:{sshd_server.port}" in message
    assert "NoValidConnectionsError" in message  # paramiko's "connection refused"


def test_wrong_pinned_host_key_is_refused_at_once(sshd: TestSSHServer) -> None:
    impostor = new_ed25519_key().public_line
    factory, attempts = counting_clients()
    with cluster(sshd, host_key=impostor, client_factory=factory) as nodes, \
            pytest.raises(HostKeyMismatch) as mismatch:
        nodes.node("node-a").run("echo never", timeout=10)
    assert len(attempts) == 1  # fatal, never retried
    message = str(mismatch.value)
    assert "node-a" in message and "host key mismatch" in message
    assert "refresh the inventory" in message


def test_parallel_runs_use_one_connection_per_node(sshd: TestSSHServer, tmp_path: Path) -> None:
    """Each command waits until all four have started (a rendezvous in a shared directory):
    run one after another, the first would give up and fail."""
    names = ("master", "worker-1", "worker-2", "worker-3")
    room = tmp_path / "rendezvous"
    room.mkdir()
    meet = f"touch {room}/$0; for _ in $(seq 200); do [ $(ls {room} | wc -l) = 4 ] " \
           f"&& echo $0 && exit; sleep 0.05; done; exit 1"
    with cluster(sshd, names, max_workers=4) as nodes:
        nodes.connect_all()
        results = nodes.on_all(lambda node: node.run(f"bash -c {shlex.quote(meet)} {node.name}",
                                                     timeout=30))
        ports = nodes.on_all(lambda node: node.run("echo $SSH_CONNECTION", timeout=10).output)
    assert list(results) == list(names)
    assert [r.output for r in results.values()] == [f"{name}\n" for name in names]
    assert len(set(ports.values())) == len(names)


def test_parallel_failure_lists_every_failed_node(sshd: TestSSHServer) -> None:
    names = ("master", "worker-1", "worker-2")
    with cluster(sshd, names) as nodes, pytest.raises(NodesFailed) as failed:
        nodes.on_all(lambda node: node.run(
            "echo bad-$(hostname) >&2; exit 2" if node.name != "master" else "true", timeout=10))
    assert sorted(failed.value.failures) == ["worker-1", "worker-2"]
    message = str(failed.value)
    assert "2 node(s) failed: worker-1, worker-2" in message
    assert "- worker-1: node worker-1: command exited with status 2" in message


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""

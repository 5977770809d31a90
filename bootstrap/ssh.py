"""SSH to the nodes (paramiko): pinned host keys, retries up to a deadline, streamed output.

One `NodeSSH` per node holds one reused connection; `ClusterSSH` holds them all and runs a
function on every node with a bounded thread pool. The private key is loaded once and never
logged; host keys come from the inventory only (RejectPolicy, never AutoAddPolicy).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import logging
import posixpath
import random
import secrets
import shlex
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bootstrap.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    NodesFailed,
    PrivateKeyError,
    SSHUnreachable,
)
from bootstrap.inventory import Inventory, NodeAccess, parse_host_key_line
from bootstrap.remote import RunResult

T = TypeVar("T")
# Receives each output line of a remote command: (node name, line without newline).
LineSink = Callable[[str, str], None]

log = logging.getLogger("k8s_cni_lab.ssh")
# paramiko logs every failed attempt from its transport thread; the retry loop below
# reports what matters. A handler keeps logging's last-resort printer off those records.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_MAX_WORKERS = 16
# Exit codes of coreutils' timeout(1) when it had to stop the command (TERM, then KILL).
TIMEOUT_EXIT_CODES = (124, 137)
# After TERM, timeout(1) waits this long before KILL; the local deadline adds a margin on top.
KILL_AFTER_SECONDS = 5
LOCAL_DEADLINE_MARGIN = KILL_AFTER_SECONDS + 5
RECV_POLL_SECONDS = 1.0
WITHHELD = "(output withheld: it may hold secrets)"
PREFETCH_ABOVE = 64 * 1024
# Everything that can happen while sshd is still starting, cloud-init is installing keys, or
# the network is coming up. BadHostKeyException is an SSHException too: it is caught first.
TRANSIENT_ERRORS = (OSError, EOFError, paramiko.SSHException)


def log_line(node: str, line: str) -> None:
    """The default LineSink: each output line to the log, prefixed with the node name."""
    log.info("[%s] %s", node, line)


@dataclass(frozen=True)
class ConnectPolicy:
    """How long to keep trying a node, and how fast."""

    deadline: float = 180.0  # overall, per node: covers boot, sshd start and cloud-init keys
    attempt_timeout: float = 10.0  # TCP connect, banner and auth, per attempt
    first_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, so many nodes do not retry in lockstep."""
        ceiling = min(self.max_delay, self.first_delay * 2 ** attempt)
        return random.uniform(ceiling / 2, ceiling)


def load_private_key(text: str) -> paramiko.PKey:
    """An Ed25519 or RSA private key from OpenSSH or PEM text (unencrypted)."""
    data = text.encode()
    loaded: object
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=None)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        # The library's message never quotes key material, but keep ours generic anyway.
        raise PrivateKeyError(f"the SSH private key cannot be loaded ({type(error).__name__}); "
                              "expected an unencrypted Ed25519 or RSA key in OpenSSH or "
                              "PEM format") from None
    if isinstance(loaded, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=loaded)
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        # paramiko reads Ed25519 only from OpenSSH text, so re-encode PEM (PKCS#8) keys.
        openssh = loaded.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption())
        return paramiko.Ed25519Key(file_obj=io.StringIO(openssh.decode()))
    raise PrivateKeyError(f"SSH private keys of type {type(loaded).__name__} are not "
                          "supported; use Ed25519 or RSA")


def pinned_host_key(access: NodeAccess) -> paramiko.PKey:
    key_type, blob = parse_host_key_line(access.name, access.host_key)
    return paramiko.PKey.from_type_string(key_type, blob)


def host_key_name(access: NodeAccess) -> str:
    """The name paramiko looks the host key up by (OpenSSH's known_hosts convention)."""
    return access.host if access.port == 22 else f"[{access.host}]:{access.port}"


def remote_command(command: str, *, user: str, timeout: float) -> str:
    """The command line sent to sshd: bounded by timeout(1) so nothing outlives the call,
    run by bash, and through `sudo -n` when the login user is not root."""
    # --norc: bash sources ~/.bashrc when it believes sshd started it, which can cost a
    # tenth of a second per command (pyenv, rustup...). The login shell does that once anyway.
    bounded = (f"timeout -k {KILL_AFTER_SECONDS} {timeout:g} "
               f"bash --norc --noprofile -c {shlex.quote(command)}")
    return bounded if user == "root" else f"sudo -n {bounded}"


def describe_error(error: BaseException) -> str:
    text = str(error) or "no details"
    return f"{type(error).__name__}: {text}"


class NodeSSH:
    """One node's SSH connection, opened on first use and reused; reopened if it drops."""

    def __init__(self, access: NodeAccess, key: paramiko.PKey, *,
                 policy: ConnectPolicy = ConnectPolicy(), on_line: LineSink | None = log_line,
                 client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient) -> None:
        self.access = access
        self._key = key
        self._policy = policy
        self._on_line = on_line
        self._client_factory = client_factory
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()  # guards connecting and the shared SFTP session

    @property
    def name(self) -> str:
        return self.access.name

    # -- connecting -------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection if it is not open, retrying transient errors until the
        policy's deadline; HostKeyMismatch is raised at once, SSHUnreachable at the end."""
        with self._lock:
            self._ensure_connected()

    def _ensure_connected(self) -> paramiko.SSHClient:
        transport = self._client.get_transport() if self._client else None
        if self._client is None or transport is None or not transport.is_active():
            self._drop_connection()
            self._client = self._connect_with_retries()
        return self._client

    def _connect_with_retries(self) -> paramiko.SSHClient:
        start = time.monotonic()
        deadline = start + self._policy.deadline
        for attempt in itertools.count():
            remaining = deadline - time.monotonic()
            try:
                return self._connect_once(min(self._policy.attempt_timeout, max(remaining, 1.0)))
            except paramiko.BadHostKeyException as error:
                raise self._mismatch(error) from None
            except TRANSIENT_ERRORS as error:
                last_error = describe_error(error)
            now = time.monotonic()
            if now >= deadline:
                break
            delay = min(self._policy.delay(attempt), deadline - now)
            log.debug("[%s] SSH not ready (%s); retry in %.1f s", self.name, last_error, delay)
            time.sleep(delay)
        raise SSHUnreachable(self.name, self.access.address, time.monotonic() - start, last_error)

    def _connect_once(self, timeout: float) -> paramiko.SSHClient:
        client = self._client_factory()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pinned = pinned_host_key(self.access)
        client.get_host_keys().add(host_key_name(self.access), pinned.get_name(), pinned)
        try:
            client.connect(self.access.host, port=self.access.port, username=self.access.user,
                           pkey=self._key, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout, channel_timeout=timeout,
                           allow_agent=False, look_for_keys=False)
        except BaseException:
            client.close()
            raise
        return client

    def _mismatch(self, error: paramiko.BadHostKeyException) -> HostKeyMismatch:
        def show(key: paramiko.PKey) -> str:
            return f"{key.get_name()} {key.fingerprint}"
        return HostKeyMismatch(self.name, self.access.address,
                               show(error.expected_key), show(error.key))

    # -- commands ---------------------------------------------------------------------------

    def run(self, command: str, *, timeout: float, check: bool = True,
            stdin: bytes | None = None, quiet: bool = False, secret: bool = False) -> RunResult:
        """Run a shell command (bash; via `sudo -n` unless the user is root), streaming its
        combined output line by line; CommandFailed on a non-zero exit unless check=False,
        CommandTimeout when it runs longer than timeout seconds. With secret=True the output
        (a token, a credential) is returned but neither streamed nor put in any error."""
        if timeout <= 0:
            raise ValueError(f"command timeout must be positive, not {timeout}")
        log.debug("[%s] $ %s", self.name, command)
        with self._lock:
            transport = self._ensure_connected().get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=self._policy.attempt_timeout)
        started = time.monotonic()
        try:
            channel.set_combine_stderr(True)
            channel.exec_command(remote_command(command, user=self.access.user, timeout=timeout))
            _feed_stdin(channel, stdin)
            output, exit_code = self._collect(channel, command, timeout, quiet or secret,
                                              secret)
        finally:
            channel.close()
        shown = WITHHELD if secret else output
        timed_out = exit_code in TIMEOUT_EXIT_CODES and time.monotonic() - started >= timeout
        if timed_out:
            raise CommandTimeout(self.name, command, timeout, shown)
        result = RunResult(self.name, command, exit_code, output)
        if check and not result.ok:
            raise CommandFailed(RunResult(self.name, command, exit_code, shown))
        return result

    def _collect(self, channel: paramiko.Channel, command: str, timeout: float,
                 quiet: bool, secret: bool) -> tuple[str, int]:
        """Read until EOF and the exit status, never past the local deadline."""
        deadline = time.monotonic() + timeout + LOCAL_DEADLINE_MARGIN
        sink = None if quiet else self._on_line
        lines = _LineSplitter(lambda line: sink(self.name, line) if sink else None)

        def timed_out() -> CommandTimeout:
            return CommandTimeout(self.name, command, timeout,
                                  WITHHELD if secret else lines.text())

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out()
            channel.settimeout(min(remaining, RECV_POLL_SECONDS))
            try:
                chunk = channel.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            lines.feed(chunk)
        lines.finish()
        if not channel.status_event.wait(max(deadline - time.monotonic(), 0)):
            raise timed_out()
        return lines.text(), channel.recv_exit_status()  # already received: cannot block

    # -- files ------------------------------------------------------------------------------

    def put_files(self, files: Sequence[tuple[str, bytes, int]], *,
                  timeout: float = 60) -> None:
        """Write (path, data, mode) files atomically: each is uploaded to a temporary name,
        then renamed over its path, parent directories created. A non-root user stages them
        in /tmp and finishes them all with one sudo command."""
        token = secrets.token_hex(4)
        staged = [f"/tmp/.k8s-cni-lab-{token}-{index}" for index in range(len(files))]
        with self._lock:
            sftp = self._sftp_session(timeout)
            if self.access.user == "root":
                for path, data, mode in files:
                    _sftp_put_atomically(sftp, path, data, mode, token)
                return
            for (_, data, _), stage in zip(files, staged, strict=True):
                _sftp_write(sftp, stage, data, 0o600)
        self.run(_install_staged_command(files, staged, token), timeout=timeout, quiet=True)

    def read_file(self, path: str, *, timeout: float = 60) -> tuple[bytes, int] | None:
        """A file's content and permission bits over SFTP (no shell to start), or None if
        there is no such file. A file the login user may not read (root's 0600
        /etc/kubernetes/admin.conf) is read through sudo, its content kept out of errors."""
        with self._lock:
            sftp = self._sftp_session(timeout)
            try:
                with sftp.open(path, "rb") as remote:
                    attributes = remote.stat()
                    size = attributes.st_size or 0
                    if size > PREFETCH_ABOVE:  # pipelined reads; a thread is dear below
                        remote.prefetch(size)
                    return remote.read(), stat.S_IMODE(attributes.st_mode or 0)
            except FileNotFoundError:
                return None
            except PermissionError:
                if self.access.user == "root":
                    raise
        return self._read_file_with_sudo(path, timeout)

    def _read_file_with_sudo(self, path: str, timeout: float) -> tuple[bytes, int] | None:
        q = shlex.quote(path)
        # Mode and base64 on the last two lines: anything sudo prints first is skipped.
        found = self.run(f"if [ -e {q} ]; then stat -c %a {q}; base64 -w0 {q}; echo; "
                         "else echo missing; fi", timeout=timeout, secret=True)
        lines = found.output.strip().splitlines()
        if lines[-1:] == ["missing"]:
            return None
        return base64.b64decode(lines[-1]), int(lines[-2], 8)

    def exists(self, path: str, *, timeout: float = 60) -> bool:
        with self._lock:
            sftp = self._sftp_session(timeout)
            try:
                sftp.stat(path)
            except FileNotFoundError:
                return False
        return True

    def _sftp_session(self, timeout: float) -> paramiko.SFTPClient:
        client = self._ensure_connected()
        channel = self._sftp.get_channel() if self._sftp else None
        if self._sftp is None or channel is None or channel.closed:
            self._sftp = client.open_sftp()
        sftp_channel = self._sftp.get_channel()
        assert sftp_channel is not None
        sftp_channel.settimeout(timeout)  # no SFTP call can hang forever
        return self._sftp

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None


class ClusterSSH:
    """Every node's NodeSSH, sharing one loaded private key; usable as a context manager."""

    def __init__(self, inventory: Inventory, *, policy: ConnectPolicy = ConnectPolicy(),
                 on_line: LineSink | None = log_line, max_workers: int = DEFAULT_MAX_WORKERS,
                 client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient) -> None:
        key = load_private_key(inventory.private_key)
        self.inventory = inventory
        self.max_workers = max_workers
        self._nodes = {access.name: NodeSSH(access, key, policy=policy, on_line=on_line,
                                            client_factory=client_factory)
                       for access in inventory.nodes}

    def node(self, name: str) -> NodeSSH:
        self.inventory.node(name)  # raises InventoryError naming the known nodes
        return self._nodes[name]

    def names(self) -> list[str]:
        return list(self._nodes)

    def connect_all(self) -> None:
        """Connect to every node in parallel; NodesFailed lists the ones that never answered."""
        self.on_all(NodeSSH.connect)

    def on_all(self, action: Callable[[NodeSSH], T],
               names: Sequence[str] | None = None) -> dict[str, T]:
        """Run action(node) on every node (or the named ones) in parallel."""
        chosen = self.names() if names is None else list(names)
        return for_each_node(lambda name: action(self.node(name)), chosen,
                             max_workers=self.max_workers)

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()

    def __enter__(self) -> ClusterSSH:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def for_each_node(action: Callable[[str], T], names: Iterable[str], *,
                  max_workers: int = DEFAULT_MAX_WORKERS) -> dict[str, T]:
    """action(name) for each name on a bounded thread pool. Every call runs to the end; then
    the results come back in the given order, or NodesFailed lists every failed node."""
    ordered = list(names)
    if not ordered:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(ordered)),
                            thread_name_prefix="node") as pool:
        futures = {name: pool.submit(action, name) for name in ordered}
    failures = {name: error for name, future in futures.items()
                if (error := future.exception()) is not None}
    if failures:
        raise NodesFailed(failures)
    return {name: future.result() for name, future in futures.items()}


class _LineSplitter:
    """Turns received chunks into complete lines for the sink, and keeps the whole text."""

    def __init__(self, sink: Callable[[str], object]) -> None:
        self._sink = sink
        self._chunks: list[bytes] = []
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        *complete, self._pending = (self._pending + chunk).split(b"\n")
        for line in complete:
            self._sink(_decode(line))

    def finish(self) -> None:
        if self._pending:
            self._sink(_decode(self._pending))
            self._pending = b""

    def text(self) -> str:
        return _decode(b"".join(self._chunks))


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").rstrip("\r")


def _feed_stdin(channel: paramiko.Channel, stdin: bytes | None) -> None:
    """Send stdin from a thread, so a command that writes before it reads cannot deadlock
    against us; then signal EOF. Without stdin, EOF at once."""
    if stdin is None:
        channel.shutdown_write()
        return

    def send() -> None:
        try:
            channel.sendall(stdin)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the command exited or the channel closed: its exit status tells the story

    threading.Thread(target=send, name=f"stdin-{channel.get_id()}", daemon=True).start()


def _sftp_write(sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int) -> None:
    try:
        with sftp.open(path, "wb") as remote:
            remote.set_pipelined(True)
            remote.write(data)
        sftp.chmod(path, mode)
    except BaseException:
        _sftp_remove_quietly(sftp, path)
        raise


def _sftp_put_atomically(sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int,
                         token: str) -> None:
    directory, base = posixpath.split(path)
    _sftp_makedirs(sftp, directory)
    staged = posixpath.join(directory, f".{base}.{token}.tmp")
    _sftp_write(sftp, staged, data, mode)
    try:
        sftp.posix_rename(staged, path)
    except BaseException:
        _sftp_remove_quietly(sftp, staged)
        raise


def _install_staged_command(files: Sequence[tuple[str, bytes, int]], staged: Sequence[str],
                            token: str) -> str:
    """Move staged uploads into place as root: each through a temporary name beside its
    target, then a rename, so readers never see half a file; the staged copies always go."""
    q = shlex.quote
    steps = []
    for (path, _, mode), stage in zip(files, staged, strict=True):
        directory, base = posixpath.split(path)
        final_tmp = posixpath.join(directory, f".{base}.{token}.tmp")
        steps.append(f"install -D -m {mode:o} {q(stage)} {q(final_tmp)} "
                     f"&& mv -f {q(final_tmp)} {q(path)}")
    cleanup = " ".join(q(stage) for stage in staged)
    return f"{' && '.join(steps)}; status=$?; rm -f {cleanup}; exit $status"


def _sftp_makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    missing: list[str] = []
    while directory not in ("", "/"):
        try:
            sftp.stat(directory)
            break
        except FileNotFoundError:
            missing.append(directory)
            directory = posixpath.dirname(directory)
    for path in reversed(missing):
        sftp.mkdir(path, 0o755)


def _sftp_remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    # Never created, or the session is gone: nothing to clean.
    with contextlib.suppress(OSError):
        sftp.remove(path)

"""A real OpenSSH server on 127.0.0.1 for the SSH layer's tests: its own config, a fresh
Ed25519 host key and one authorized client key, all in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bootstrap.inventory import Inventory, NodeAccess
from lab.nodes import KeyPair, new_ed25519

SSHD = "/usr/sbin/sshd"

# The same key generator as the local lab's.
new_ed25519_key = new_ed25519


def write_sshd_files(directory: Path, *, listen: str, port: int, host_key: KeyPair,
                     client_key: KeyPair) -> Path:
    """sshd_config, host key and authorized_keys in `directory`; returns the config path."""
    host_key_path = directory / "ssh_host_ed25519_key"
    host_key_path.write_text(host_key.private_openssh)
    host_key_path.chmod(0o600)
    (directory / "authorized_keys").write_text(client_key.public_line + "\n")
    config = directory / "sshd_config"
    config.write_text(f"""\
ListenAddress {listen}
Port {port}
HostKey {host_key_path}
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxSessions 64
MaxStartups 64
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    return config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class TestSSHServer:
    """One sshd; start() may be called late to test connection retries."""

    __test__ = False  # not a pytest test class

    directory: Path
    port: int = field(default_factory=free_port)
    host_key: KeyPair = field(default_factory=new_ed25519_key)
    client_key: KeyPair = field(default_factory=new_ed25519_key)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_sshd_files(self.directory, listen="127.0.0.1", port=self.port,
                         host_key=self.host_key, client_key=self.client_key)

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with (self.directory / "sshd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.directory / "sshd_config")],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.directory / 'sshd.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        """Kill sshd and its per-connection processes (they share its process group)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def access(self, name: str, *, host_key: str | None = None) -> NodeAccess:
        return NodeAccess(name=name, host="127.0.0.1", port=self.port, user="root",
                          host_key=host_key or self.host_key.public_line)

    def inventory(self, names: tuple[str, ...] = ("node-a",), *,
                  host_key: str | None = None) -> Inventory:
        return Inventory(nodes=tuple(self.access(name, host_key=host_key) for name in names),
                         private_key=self.client_key.private_openssh)


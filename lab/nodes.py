"""Simulated EC2 instances: a node namespace with its own disk view and a real OpenSSH server.

Each node's processes run in a private mount namespace where /etc, /opt, /var/lib,
/var/log and /root are overlays on the host's (writes land in the node's own directory, never
on the host) and /run and /tmp are fresh tmpfs. That is the node's "disk": the bootstrap
writes its files there over SSH exactly as on an EC2 instance.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bootstrap.errors import LabError
from bootstrap.verify.checks import ECHO_SERVER, IMAGE_DIR
from lab.layout import LabNode, Layout

STATE_ROOT = Path("/run/k8s-cni-lab")
OVERLAID = ("/etc", "/opt", "/var/lib", "/var/log", "/root")
# The node "image": the runtime stand-in and the pods' workload (also the probes' client).
IMAGE_FILES = (Path(__file__).with_name("pod_runtime.py"), ECHO_SERVER)
SSHD_DIR = "/etc/ssh-lab"

SSHD_CONFIG = f"""\
Port 22
ListenAddress 0.0.0.0
HostKey {SSHD_DIR}/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile {SSHD_DIR}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 200
Subsystem sftp internal-sftp
"""


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    public_line: str  # "ssh-ed25519 AAAA..."


def new_ed25519() -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, public)


def lab_dir(lab: str) -> Path:
    return STATE_ROOT / lab


def node_dir(lab: str, node: str) -> Path:
    return lab_dir(lab) / "nodes" / node


def lab_not_up(lab: str) -> LabError:
    return LabError(f"no lab named {lab} is up: start one with `make lab KEEP=1`")


def enter_argv(lab: str, node: str, pod: str | None, command: Sequence[str]) -> list[str]:
    """The command in a node's namespaces (net, mount, hostname), or in one of its pods'."""
    if not lab_dir(lab).exists():
        raise lab_not_up(lab)
    pid_file = node_dir(lab, node) / "sshd.pid"
    if not pid_file.exists():
        known = sorted(path.name for path in (lab_dir(lab) / "nodes").iterdir())
        raise LabError(f"no node {node!r} in lab {lab}: pick one of {', '.join(known)}")
    argv = ["nsenter", "-t", pid_file.read_text().strip(), "-m", "-u", "-n"]
    return argv + (["ip", "netns", "exec", pod] if pod else []) + list(command)


def upper_dir(lab: str, node: str, path: str) -> Path:
    """Where the node's writes to `path` (one of OVERLAID) land on the host."""
    return node_dir(lab, node) / "upper" / path.strip("/").replace("/", "-")


def prepare_disk(layout: Layout, node: LabNode, client_public_key: str) -> str:
    """Write the node's sshd files and image into its overlay; return the sshd host key."""
    for path in OVERLAID:
        upper_dir(layout.lab, node.name, path).mkdir(parents=True)
        (node_dir(layout.lab, node.name) / "work" / Path(path).name).mkdir(parents=True)
    sshd = upper_dir(layout.lab, node.name, "/etc") / Path(SSHD_DIR).name
    sshd.mkdir()
    host_key = new_ed25519()
    key_file = sshd / "ssh_host_ed25519_key"
    key_file.write_text(host_key.private_openssh)
    key_file.chmod(0o600)
    (sshd / "authorized_keys").write_text(client_public_key + "\n")
    (sshd / "sshd_config").write_text(SSHD_CONFIG)
    # A node's root has its own home: sshd's bash reads ~/.bashrc even for commands, and
    # the host's may be slow (pyenv) or print things. An image's default is empty.
    home = upper_dir(layout.lab, node.name, "/root")
    for dotfile in (".bashrc", ".profile"):
        (home / dotfile).write_text("# k8s-cni-lab node image: intentionally empty\n")
    image = upper_dir(layout.lab, node.name, "/opt") / Path(IMAGE_DIR).name
    image.mkdir()
    for source in IMAGE_FILES:
        shutil.copy(source, image / source.name)
        (image / source.name).chmod(0o755)
    return host_key.public_line


def boot_script(lab: str, node: str, login_user: str) -> str:
    """What the node runs at "boot", inside its own mount and UTS namespaces: its disk view,
    hostname, and the login user (like Ubuntu's `ubuntu`: sudo without a password)."""
    lines = []
    for path in OVERLAID:
        work = node_dir(lab, node) / "work" / Path(path).name
        options = f"lowerdir={path},upperdir={upper_dir(lab, node, path)},workdir={work}"
        lines.append(f"mount -t overlay overlay -o {shlex.quote(options)} {path}")
    name = shlex.quote(node)
    lines += ["mount -t tmpfs -o mode=0755 tmpfs /run", "mkdir -p /run/sshd /run/netns",
              "mount -t tmpfs -o mode=1777 tmpfs /tmp",
              f"hostname {name}", f"echo 127.0.1.1 {name} >> /etc/hosts"]
    if login_user != "root":
        user = shlex.quote(login_user)
        # Password "*": no password can log in, but the account is not locked, which
        # sshd without PAM would refuse even for a key.
        lines += [f"useradd --create-home --home-dir /var/lib/{user} --shell /bin/bash "
                  f"--password '*' {user}",
                  f"echo {shlex.quote(f'{login_user} ALL=(ALL) NOPASSWD:ALL')} "
                  f"> /etc/sudoers.d/{user}"]
    return " && ".join(lines)


def start_sshd(layout: Layout, node: LabNode, login_user: str) -> subprocess.Popen[bytes]:
    """Boot the node, then sshd in the foreground (so the pid is sshd's)."""
    script = f"{boot_script(layout.lab, node.name, login_user)} && exec /usr/sbin/sshd -D " \
             f"-e -f {SSHD_DIR}/sshd_config"
    directory = node_dir(layout.lab, node.name)
    with (directory / "sshd.log").open("ab") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            ["ip", "netns", "exec", node.namespace, "unshare", "--mount", "--uts",
             "--propagation", "private", "/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    (directory / "sshd.pid").write_text(f"{process.pid}\n")  # for `python -m lab enter`
    return process


SSHD_READY = b"Server listening on 0.0.0.0 port 22"


def wait_booted(layout: Layout, booting: dict[str, subprocess.Popen[bytes]],
                timeout: float = 30.0) -> None:
    """Return once every node's sshd listens (its log says so): the instance has booted,
    like an EC2 instance passing its status checks. A node whose boot failed is named."""
    deadline = time.monotonic() + timeout
    waiting = dict(booting)
    while waiting:
        for name, process in list(waiting.items()):
            log = node_dir(layout.lab, name) / "sshd.log"
            if SSHD_READY in log.read_bytes():
                del waiting[name]
            elif process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise LabError(f"node {name} did not boot (sshd "
                               f"{'exited' if process.returncode is not None else 'silent'}): "
                               + " | ".join(tail))
        time.sleep(0.01)

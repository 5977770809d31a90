"""Cloud-init user data for a node: a pure function of the node's name, the Kubernetes minor
and the node's SSH host key, so it can be tested without a cloud and its changes are visible
in `pulumi preview` as a diff (a change replaces the instance).

No Pulumi or AWS import here: the renderer is also cheap to import from tests.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

# An ERE for the setting in containerd's effective config; the bootstrap checks it too.
SYSTEMD_CGROUP_LINE = r"^\s*SystemdCgroup = true$"

K8S_KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
SETUP_SCRIPT = "/usr/local/sbin/lab-node-setup"
# Loaded at every boot by systemd-modules-load: containerd's overlayfs snapshotter, and
# bridged pod traffic seen by iptables (kube-proxy, our NAT rule).
KERNEL_MODULES = ("overlay", "br_netfilter")
# Applied at every boot by systemd-sysctl, after the modules above are loaded.
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
# Ubuntu 24.04's containerd is 2.x (config version 3). The kubelet takes its cgroup driver
# from containerd, whose default is cgroupfs; control-plane pods crash-loop unless both use
# systemd. runtime_type is repeated so the runc entry is complete on its own.
CONTAINERD_CONFIG = """\
version = 3

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = true
"""
BASE_PACKAGES = ("containerd", "ca-certificates", "curl", "gpg", "conntrack", "socat",
                 "iptables", "jq")
KUBERNETES_PACKAGES = ("kubelet", "kubeadm", "kubectl")


@dataclass(frozen=True)
class HostKey:
    """A node's SSH host key pair, in OpenSSH format (from pulumi-tls)."""

    private_openssh: str
    public_openssh: str


def kubernetes_repository(kubernetes_version: str) -> str:
    """pkgs.k8s.io serves one apt repository per minor version."""
    return f"https://pkgs.k8s.io/core:/stable:/v{kubernetes_version}/deb/"


def render_user_data(hostname: str, kubernetes_version: str, host_key: HostKey) -> str:
    """The #cloud-config document for one node."""
    document = {
        "hostname": hostname,
        "preserve_hostname": False,
        "manage_etc_hosts": "localhost",
        # Only the supplied host key exists, so the bootstrap can pin it.
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public_openssh.strip(),
        },
        "write_files": [
            _file("/etc/modules-load.d/kubernetes.conf", "\n".join(KERNEL_MODULES) + "\n"),
            _file("/etc/sysctl.d/90-kubernetes.conf",
                  "".join(f"{key} = {value}\n" for key, value in SYSCTLS.items())),
            _file("/etc/containerd/config.toml", CONTAINERD_CONFIG),
            _file(SETUP_SCRIPT, setup_script(kubernetes_version), permissions="0755"),
        ],
        "runcmd": [[SETUP_SCRIPT]],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False,
                                         width=4096)


def setup_script(kubernetes_version: str) -> str:
    """The script cloud-init runs once: packages, swap off, and the checks that they took.

    It exits non-zero on any failure, so `cloud-init status --wait` reports an error.
    """
    repository = kubernetes_repository(kubernetes_version)
    source = f"deb [signed-by={K8S_KEYRING}] {repository} /"
    kube_packages = " ".join(KUBERNETES_PACKAGES)
    return f"""\
#!/bin/bash
# Written by cloud-init from the k8s-cni-lab Pulumi program; runs once per instance.
set -euo pipefail
# Wait for other apt users (unattended-upgrades at first boot) instead of failing.
apt_get() {{ DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600 "$@"; }}

# The kubelet refuses to run with swap on.
swapoff -a
sed -ri '/\\sswap\\s/ s/^#*/#/' /etc/fstab

# The boot-time files above, applied now as well.
modprobe -a {" ".join(KERNEL_MODULES)}
sysctl --system >/dev/null

apt_get update
apt_get install {" ".join(BASE_PACKAGES)}

install -d -m 0755 /etc/apt/keyrings
curl -fsSL --retry 5 {shlex.quote(repository + "Release.key")} \\
  | gpg --batch --yes --dearmor -o {K8S_KEYRING}
echo {shlex.quote(source)} > /etc/apt/sources.list.d/kubernetes.list
apt_get update
apt_get install {kube_packages}
apt-mark hold {kube_packages}

systemctl restart containerd
# Captured first: with pipefail, grep -q closing the pipe early would fail the check.
effective_config=$(containerd config dump)
if ! grep -Eq {shlex.quote(SYSTEMD_CGROUP_LINE)} <<<"$effective_config"; then
  echo "containerd is not using SystemdCgroup = true; see /etc/containerd/config.toml" >&2
  exit 1
fi
"""


def _file(path: str, content: str, permissions: str = "0644") -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": permissions,
            "content": content}


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, so the user data reads like the files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)

"""Cloud-init user data for a node: a pure function of the node's name, the Kubernetes minor
and the node's SSH host key, so it can be tested without a cloud and its changes are visible
in `pulumi preview` as a diff (a change replaces the instance).

No Pulumi or AWS import here: the renderer is also cheap to import from tests.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

# EREs for settings in containerd's effective config (`containerd config dump`); the
# bootstrap's prerequisites phase checks them too.
SYSTEMD_CGROUP_LINE = r"^\s*SystemdCgroup = true$"
# containerd runs the CNI plugins from here for every pod: lab-cni, and loopback from the
# kubernetes-cni package. 1.x dumps `bin_dir = "..."`, 2.1+ `bin_dirs = ['...']`.
CNI_BIN_DIR = "/opt/cni/bin"
CNI_BIN_DIR_LINE = r"^\s*bin_dirs? = \[?" + f"[\"']{CNI_BIN_DIR}[\"']" + r"\]?$"

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
# containerd's config, per major version; the setup script installs the one that matches the
# containerd apt installed. Ubuntu 24.04 released with containerd 1.7 (config version 2), and
# its updates may bring 2.x (config version 3, where the CRI plugin's tables moved); 1.x cannot
# read version 3. The kubelet takes its cgroup driver from containerd, whose default is
# cgroupfs: control-plane pods crash-loop unless both use systemd. runtime_type is repeated so
# the runc entry is complete on its own; the CNI directories are the defaults, written out so
# that the effective config is checked, not assumed.
CONTAINERD_CONFIGS = {
    "1": f"""\
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "/etc/cni/net.d"
""",
    "2": f"""\
version = 3

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = true

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['{CNI_BIN_DIR}']
  conf_dir = '/etc/cni/net.d'
""",
}
CONTAINERD_CONFIG_DIR = "/etc/k8s-cni-lab/containerd"
BASE_PACKAGES = ("containerd", "ca-certificates", "curl", "gpg", "conntrack", "socat",
                 "iptables", "jq")
# kubernetes-cni (loopback and the reference plugins in /opt/cni/bin) is named: pkgs.k8s.io's
# kubelet and kubeadm no longer pull it in, and containerd needs loopback for every pod.
KUBERNETES_PACKAGES = ("kubelet", "kubeadm", "kubectl", "kubernetes-cni")


@dataclass(frozen=True)
class HostKey:
    """A node's SSH host key pair, in OpenSSH format (from pulumi-tls)."""

    private_openssh: str
    public_openssh: str


def kubernetes_repository(kubernetes_version: str) -> str:
    """pkgs.k8s.io serves one apt repository per minor version."""
    return f"https://pkgs.k8s.io/core:/stable:/v{kubernetes_version}/deb/"


def containerd_config_path(major: str) -> str:
    return f"{CONTAINERD_CONFIG_DIR}/config-{major}.x.toml"


def render_user_data(hostname: str, kubernetes_version: str, host_key: HostKey) -> str:
    """The #cloud-config document for one node."""
    document = {
        "hostname": hostname,
        "preserve_hostname": False,
        "manage_etc_hosts": "localhost",
        # Only the supplied host key exists, so the bootstrap can pin it: cloud-init deletes
        # the image's keys and, given ssh_keys, generates none (ssh_genkeytypes applies only
        # without ssh_keys, and its schema refuses an empty list).
        "ssh_deletekeys": True,
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public_openssh.strip(),
        },
        "write_files": [
            _file("/etc/modules-load.d/kubernetes.conf", "\n".join(KERNEL_MODULES) + "\n"),
            _file("/etc/sysctl.d/90-kubernetes.conf",
                  "".join(f"{key} = {value}\n" for key, value in SYSCTLS.items())),
            *[_file(containerd_config_path(major), config)
              for major, config in CONTAINERD_CONFIGS.items()],
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

{containerd_setup()}"""


def containerd_setup() -> str:
    """The setup script's containerd part: install the config for the installed major version,
    restart containerd, and check the effective config and the loopback plugin."""
    return f"""\
# The config for the containerd major version apt installed: `containerd --version` prints
# "containerd <source> <version> <revision>".
containerd_version=$(containerd --version | awk '{{print $3}}')
case "${{containerd_version#v}}" in
  1.*) containerd_major=1 ;;
  2.*) containerd_major=2 ;;
  *) echo "containerd $containerd_version: no config for it in {CONTAINERD_CONFIG_DIR}" >&2
     exit 1 ;;
esac
install -D -m 0644 "{CONTAINERD_CONFIG_DIR}/config-$containerd_major.x.toml" \\
  /etc/containerd/config.toml
systemctl restart containerd
# Captured first: with pipefail, grep -q closing the pipe early would fail the check.
effective_config=$(containerd config dump)
if ! grep -Eq {shlex.quote(SYSTEMD_CGROUP_LINE)} <<<"$effective_config"; then
  echo "containerd is not using SystemdCgroup = true; see /etc/containerd/config.toml" >&2
  exit 1
fi
if ! grep -Eq {shlex.quote(CNI_BIN_DIR_LINE)} <<<"$effective_config"; then
  echo "containerd does not run CNI plugins from {CNI_BIN_DIR}; see its config.toml" >&2
  exit 1
fi
if [ ! -x {CNI_BIN_DIR}/loopback ]; then
  echo "{CNI_BIN_DIR}/loopback is missing: the kubernetes-cni package did not install it" >&2
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

"""The node's cloud-init document, rendered without Pulumi."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from infra.cloud_init import HostKey, render_user_data

HOST_KEY = HostKey(
    private_openssh="-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n"
                    "-----END OPENSSH PRIVATE KEY-----\n",
    public_openssh="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n",
)


def render(hostname: str = "worker-1", version: str = "1.36") -> dict:
    text = render_user_data(hostname, version, HOST_KEY)
    assert text.startswith("#cloud-config\n"), "cloud-init ignores user data without it"
    return yaml.safe_load(text)


def written(document: dict) -> dict[str, dict]:
    return {entry["path"]: entry for entry in document["write_files"]}


def setup_script(document: dict) -> str:
    (command,) = document["runcmd"]
    return written(document)[command[0]]["content"]


def test_sets_the_hostname():
    document = render("worker-2")
    assert document["hostname"] == "worker-2"
    assert document["preserve_hostname"] is False


def test_installs_only_the_supplied_ed25519_host_key():
    document = render()
    assert document["ssh_keys"] == {
        "ed25519_private": HOST_KEY.private_openssh,
        "ed25519_public": HOST_KEY.public_openssh.strip(),
    }
    assert document["ssh_deletekeys"] is True
    assert document["ssh_genkeytypes"] == []


def test_loads_overlay_and_br_netfilter_at_boot():
    modules = written(render())["/etc/modules-load.d/kubernetes.conf"]["content"]
    assert modules.split() == ["overlay", "br_netfilter"]


def test_persists_forwarding_and_bridge_sysctls():
    sysctl_file = next(path for path in written(render()) if path.startswith("/etc/sysctl.d/"))
    content = written(render())[sysctl_file]["content"]
    settings = dict(line.split(" = ") for line in content.splitlines())
    assert settings["net.ipv4.ip_forward"] == "1"
    assert settings["net.bridge.bridge-nf-call-iptables"] == "1"


def test_containerd_uses_the_systemd_cgroup_driver_in_config_version_3():
    config = tomllib.loads(written(render())["/etc/containerd/config.toml"]["content"])
    assert config["version"] == 3
    runc = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True
    assert runc["runtime_type"] == "io.containerd.runc.v2"


def test_checks_that_containerd_took_the_cgroup_driver():
    script = setup_script(render())
    restart = script.index("systemctl restart containerd")
    check = script.index("containerd config dump")
    assert restart < check
    assert "SystemdCgroup = true" in script[check:]
    assert "exit 1" in script[check:]


def test_installs_containerd_and_not_docker():
    script = setup_script(render())
    assert re.search(r"apt_get install .*\bcontainerd\b", script)
    assert "docker" not in script


@pytest.mark.parametrize("version", ["1.35", "1.36", "1.37"])
def test_kubernetes_packages_come_from_the_minor_repository_and_are_held(version):
    script = setup_script(render(version=version))
    repository = f"https://pkgs.k8s.io/core:/stable:/v{version}/deb/"
    assert f"{repository}Release.key" in script
    assert f"{repository} /" in script
    assert "apt_get install kubelet kubeadm kubectl" in script
    assert script.index("apt_get install kubelet") < script.index(
        "apt-mark hold kubelet kubeadm kubectl")
    assert "apt.kubernetes.io" not in script


def test_turns_swap_off_now_and_at_boot():
    script = setup_script(render())
    assert "swapoff -a" in script
    assert "/etc/fstab" in script


def test_setup_script_fails_fast_and_waits_for_the_apt_lock():
    script = setup_script(render())
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script
    assert "DPkg::Lock::Timeout=" in script
    assert written(render())["/usr/local/sbin/lab-node-setup"]["permissions"] == "0755"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_script_is_valid_bash():
    result = subprocess.run(["bash", "-n"], input=setup_script(render()), text=True,
                            capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


def test_rendering_is_deterministic_and_fits_ec2_user_data():
    first = render_user_data("master", "1.36", HOST_KEY)
    assert first == render_user_data("master", "1.36", HOST_KEY)
    assert len(first.encode()) < 16 * 1024  # EC2's user data limit


def test_renderer_imports_neither_pulumi_nor_aws():
    code = ("import sys, infra.cloud_init; "
            "print(sorted(m for m in sys.modules if m.startswith('pulumi')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"

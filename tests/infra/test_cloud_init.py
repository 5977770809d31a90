"""The node's cloud-init document, rendered without Pulumi, and checked against cloud-init's own
schema (from the cloud-init apt package that scripts/install-deps installs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from infra.cloud_init import (
    CNI_BIN_DIR_LINE,
    SYSTEMD_CGROUP_LINE,
    HostKey,
    containerd_config_path,
    render_user_data,
)

# Debian's cloud-init package ships the schema its `cloud-init schema` command uses.
CLOUD_CONFIG_SCHEMA = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas/"
                          "schema-cloud-config-v1.json")

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
    # Given ssh_keys, cloud-init generates no key; an empty list would fail its schema.
    assert "ssh_genkeytypes" not in document


def test_loads_overlay_and_br_netfilter_at_boot():
    modules = written(render())["/etc/modules-load.d/kubernetes.conf"]["content"]
    assert modules.split() == ["overlay", "br_netfilter"]


def test_persists_forwarding_and_bridge_sysctls():
    sysctl_file = next(path for path in written(render()) if path.startswith("/etc/sysctl.d/"))
    content = written(render())[sysctl_file]["content"]
    settings = dict(line.split(" = ") for line in content.splitlines())
    assert settings["net.ipv4.ip_forward"] == "1"
    assert settings["net.bridge.bridge-nf-call-iptables"] == "1"


def containerd_config(major: str) -> dict:
    return tomllib.loads(written(render())[containerd_config_path(major)]["content"])


def test_containerd_1x_config_is_version_2_with_systemd_cgroups_and_the_cni_directory():
    config = containerd_config("1")
    assert config["version"] == 2
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert cri["cni"] == {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}


def test_containerd_2x_config_is_version_3_with_systemd_cgroups_and_the_cni_directories():
    config = containerd_config("2")
    assert config["version"] == 3
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runtime["cni"] == {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}


def section(script: str, start: str, end: str) -> str:
    return script[script.index(start):script.index(end, script.index(start)) + len(end)]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("version_line", "major"), [
    ("containerd github.com/containerd/containerd 1.7.12 ", "1"),  # Ubuntu 24.04's archive
    ("containerd github.com/containerd/containerd/v2 2.1.3 ", "2"),
    ("containerd containerd.io v2.2.1 dea7da592f5d1d2b7755e3a161be07f43fad8f75", "2"),
    ("containerd github.com/containerd/containerd/v2 3.0.0 ", None),
])
def test_the_script_picks_the_config_for_the_installed_containerd(version_line, major):
    """The script's own selection, run by bash with a stand-in `containerd --version`."""
    selection = section(setup_script(render()), "containerd_version=", "esac")
    result = subprocess.run(
        ["bash", "-c", f"containerd() {{ echo {version_line!r}; }}\n{selection}\n"
                       'echo "$containerd_major"'],
        capture_output=True, text=True, check=False)
    if major is None:
        assert result.returncode == 1 and "no config for it" in result.stderr
    else:
        assert result.stdout.strip() == major
        assert written(render())[containerd_config_path(major)]


@pytest.mark.parametrize("dump", [
    # containerd 1.7's `config dump`, and 2.1's (go-toml writes single quotes)
    '    [plugins."io.containerd.grpc.v1.cri".cni]\n      bin_dir = "/opt/cni/bin"\n'
    '      conf_dir = "/etc/cni/net.d"\n    [plugins."io.containerd.grpc.v1.cri".containerd'
    '.runtimes.runc.options]\n            SystemdCgroup = true\n',
    "    [plugins.'io.containerd.cri.v1.runtime'.cni]\n      bin_dirs = ['/opt/cni/bin']\n"
    "    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n"
    "          SystemdCgroup = true\n",
])
def test_the_effective_config_checks_match_what_containerd_dumps(dump):
    for pattern in (SYSTEMD_CGROUP_LINE, CNI_BIN_DIR_LINE):
        found = subprocess.run(["grep", "-Ec", pattern], input=dump, capture_output=True,
                               text=True, check=False)
        assert found.stdout.strip() == "1", pattern
    elsewhere = dump.replace("/opt/cni/bin", "/usr/lib/cni")
    assert subprocess.run(["grep", "-Eq", CNI_BIN_DIR_LINE], input=elsewhere, text=True,
                          check=False).returncode == 1


def test_checks_that_containerd_took_its_config_and_that_loopback_is_installed():
    script = setup_script(render())
    install = script.index("/etc/containerd/config.toml")
    restart = script.index("systemctl restart containerd")
    check = script.index("containerd config dump")
    assert script.index("apt_get install kubelet") < install < restart < check
    assert "SystemdCgroup = true" in script[check:]
    assert "bin_dirs?" in script[check:]
    assert "[ ! -x /opt/cni/bin/loopback ]" in script[check:]
    assert script[check:].count("exit 1") == 3


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
    assert "apt_get install kubelet kubeadm kubectl kubernetes-cni\n" in script
    assert script.index("apt_get install kubelet") < script.index(
        "apt-mark hold kubelet kubeadm kubectl kubernetes-cni\n")
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


def cloud_config_schema() -> dict:
    if not CLOUD_CONFIG_SCHEMA.exists():
        pytest.skip(f"{CLOUD_CONFIG_SCHEMA} is missing: apt-get install cloud-init "
                    "(scripts/install-deps does)")
    return json.loads(CLOUD_CONFIG_SCHEMA.read_text())


@pytest.mark.parametrize("hostname", ["master", "worker-1"])
def test_user_data_passes_cloud_inits_own_schema(hostname):
    """A document that fails the schema makes every node report "degraded"."""
    schema = cloud_config_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = render(hostname)
    assert [error.message for error in validator.iter_errors(document)] == []
    # The schema allows unknown top-level keys; cloud-init ignores them: refuse typos too.
    known = set(schema.get("properties", {}))
    for definition in schema.get("$defs", {}).values():
        known |= set(definition.get("properties", {}))
    assert set(document) <= known


def test_the_schema_check_can_fail():
    schema = cloud_config_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert list(validator.iter_errors({**render(), "ssh_genkeytypes": []}))

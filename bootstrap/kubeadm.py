"""kubeadm and kubectl for the cloud workflow, as pure functions: configs to render, outputs to
parse, and decisions to take. The phases in bootstrap/phases/ run the commands.

kubeadm's config API is kubeadm.k8s.io/v1beta4 (extraArgs are lists of {name, value}). The
controller manager does not allocate node pod CIDRs: the plan pins node N to its CIDR and
the pod-cidr phase patches `spec.podCIDR`, so the VPC routes, the bridge and Kubernetes
agree by construction (findings #9).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from bootstrap.errors import LabError
from bootstrap.inventory import NodeAccess
from infra.cloud_init import SYSTEMD_CGROUP_LINE
from infra.plan import API_SERVER_PORT, Plan

KUBEADM_API = "kubeadm.k8s.io/v1beta4"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
KUBECTL = f"kubectl --kubeconfig={ADMIN_KUBECONFIG}"
# Configs go to kubeadm on stdin: the join token never touches a disk or a command line.
# --skip-token-print: the streamed output would otherwise put a join token in the log.
KUBEADM_INIT = "kubeadm init --config /dev/stdin --skip-token-print"
KUBEADM_JOIN = "kubeadm join --config /dev/stdin"
TOKEN_CREATE = "kubeadm token create --print-join-command --ttl 30m"
# Prints "<name> <podCIDR>" per registered node ("<name> " when it has none).
KUBECTL_TIMEOUT = 60  # one kubectl call against the API server
NODE_CIDRS = (f"{KUBECTL} get nodes -o jsonpath="
              "'{range .items[*]}{.metadata.name}{\" \"}{.spec.podCIDR}{\"\\n\"}{end}'")
PREREQUISITE_FACTS = (
    "printf 'kubeadm=%s\\n' \"$(kubeadm version -o short 2>&1)\"; "
    "printf 'systemd_cgroup=%s\\n' "
    f"\"$(containerd config dump 2>/dev/null | grep -Ec {shlex.quote(SYSTEMD_CGROUP_LINE)})\"; "
    "printf 'swap=%s\\n' \"$(swapon --noheadings | wc -l)\"")


def _documents(*documents: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in documents)


def _args(**values: str) -> list[dict[str, str]]:
    """v1beta4's list form of extra arguments."""
    return [{"name": name.replace("_", "-"), "value": value} for name, value in values.items()]


def render_init_config(plan: Plan, control_plane: NodeAccess, kubernetes_version: str) -> str:
    """InitConfiguration + ClusterConfiguration for the control plane."""
    private_ip = control_plane.private_ip
    init = {
        "apiVersion": KUBEADM_API,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": private_ip, "bindPort": API_SERVER_PORT},
        "nodeRegistration": _node_registration(control_plane),
    }
    cluster = {
        "apiVersion": KUBEADM_API,
        "kind": "ClusterConfiguration",
        "kubernetesVersion": kubernetes_version,
        "controlPlaneEndpoint": f"{private_ip}:{API_SERVER_PORT}",
        "networking": {"podSubnet": str(plan.pod_network),
                       "serviceSubnet": str(plan.service_network)},
        # The operator's kubeconfig reaches the API server on the node's public address.
        "apiServer": {"certSANs": sorted({control_plane.host, private_ip})},
        # Node CIDRs come from the plan (pod-cidr phase), not from registration order.
        "controllerManager": {"extraArgs": _args(allocate_node_cidrs="false")},
    }
    return _documents(init, cluster)


@dataclass(frozen=True)
class JoinCredentials:
    """What `kubeadm token create --print-join-command` prints; the token is a secret."""

    endpoint: str
    token: str = field(repr=False)
    ca_cert_hash: str


_JOIN = re.compile(r"kubeadm join (?P<endpoint>\S+) --token (?P<token>\S+)"
                   r" --discovery-token-ca-cert-hash (?P<hash>sha256:[0-9a-f]{64})")


def parse_join_command(output: str) -> JoinCredentials:
    found = _JOIN.search(output)
    if found is None:
        # Never echo the output: it would contain the token.
        raise LabError("`kubeadm token create --print-join-command` printed no join command")
    return JoinCredentials(found["endpoint"], found["token"], found["hash"])


def render_join_config(credentials: JoinCredentials, node: NodeAccess) -> str:
    """JoinConfiguration that pins the cluster CA by its hash."""
    return _documents({
        "apiVersion": KUBEADM_API,
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {
            "apiServerEndpoint": credentials.endpoint,
            "token": credentials.token,
            "caCertHashes": [credentials.ca_cert_hash],
        }},
        "nodeRegistration": _node_registration(node),
    })


def _node_registration(node: NodeAccess) -> dict[str, Any]:
    # The node registers under its plan name (cloud-init sets the same hostname) and with its
    # VPC address, which the pod routes and the checks use.
    return {"name": node.name, "criSocket": CRI_SOCKET,
            "kubeletExtraArgs": _args(node_ip=node.private_ip)}


def parse_facts(output: str) -> dict[str, str]:
    """key=value lines into a dict."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def prerequisite_problems(facts: dict[str, str], kubernetes_minor: str) -> list[str]:
    """What stops kubeadm on this node, each with its fix; empty when ready."""
    problems = []
    version = facts.get("kubeadm", "")
    if not re.fullmatch(rf"v{re.escape(kubernetes_minor)}\.\d+", version):
        problems.append(f"kubeadm reports {version or 'nothing'!r}, expected "
                        f"v{kubernetes_minor}.x: check the pkgs.k8s.io repository cloud-init "
                        "configured")
    if facts.get("systemd_cgroup", "0") == "0":
        problems.append("containerd does not use SystemdCgroup = true (control-plane pods "
                        "would crash-loop): fix /etc/containerd/config.toml and restart it")
    if facts.get("swap", "0") != "0":
        problems.append("swap is on and the kubelet refuses to run: swapoff -a")
    return problems


def parse_node_cidrs(output: str) -> dict[str, str]:
    """NODE_CIDRS output into {node name: podCIDR or ''}."""
    cidrs = {}
    for line in output.splitlines():
        name, _, cidr = line.partition(" ")
        if name:
            cidrs[name] = cidr.strip()
    return cidrs


def pod_cidr_patches(plan: Plan, registered: dict[str, str]) -> dict[str, str]:
    """{node: planned CIDR} for nodes still without one. A missing node or a CIDR other than
    the plan's is an error: the VPC routes and the bridges follow the plan."""
    missing = [name for name in plan.node_names() if name not in registered]
    if missing:
        raise LabError(f"node(s) not registered with the API server: {', '.join(missing)}")
    wrong = [f"{node.name} has {registered[node.name]}, the plan says {node.pod_cidr}"
             for node in plan.nodes if registered[node.name] not in ("", str(node.pod_cidr))]
    if wrong:
        raise LabError("node pod CIDRs disagree with the plan (set once, they cannot be "
                       f"changed: delete and re-join the node): {'; '.join(wrong)}")
    return {node.name: str(node.pod_cidr) for node in plan.nodes if not registered[node.name]}


def pod_cidr_patch_command(node_name: str, cidr: str) -> str:
    patch = f'{{"spec":{{"podCIDR":"{cidr}","podCIDRs":["{cidr}"]}}}}'
    return f"{KUBECTL} patch node {node_name} --type merge -p '{patch}'"


def operator_kubeconfig(admin_conf: str, control_plane: NodeAccess) -> str:
    """admin.conf with its server set to the control plane's SSH (public) address."""
    config = yaml.safe_load(admin_conf)
    try:
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://{control_plane.host}:{API_SERVER_PORT}"
    except (KeyError, TypeError):
        raise LabError(f"{ADMIN_KUBECONFIG} on {control_plane.name} has no clusters") from None
    return yaml.safe_dump(config, sort_keys=False)

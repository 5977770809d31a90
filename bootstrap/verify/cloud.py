"""The checks after `pulumi up`: the seed lab's four test pods, and the kubectl exec prober.

Pure parts (the manifests, the pod listing's parser, the cloud's check list) and one thin
driver, `KubectlProber`, which the verify phase (bootstrap/phases/verify.py) runs over SSH.

The web pods run the project's own echo server (echo_server.py here, shipped as a ConfigMap)
and every pod mounts it where `probe()` looks for the client, so only the interpreter's path
differs from the local lab. The image is the official `python` image from its ECR Public
mirror (no anonymous pull limit, unlike Docker Hub), pinned by tag: python3 for the echo
server and client, busybox `ping` for the gateway check.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Sequence
from typing import Any

from bootstrap.errors import LabError
from bootstrap.inventory import Inventory
from bootstrap.kubeadm import KUBECTL
from bootstrap.remote import NodeCluster
from bootstrap.verify.checks import (
    ECHO_CLIENT,
    WEB_PORT,
    Check,
    Endpoint,
    PodInfo,
    SeedPod,
    lab_checks,
    seed_pods,
    with_client,
)
from infra.plan import Plan

NAMESPACE = "k8s-cni-lab-checks"  # one `kubectl delete namespace` removes the test pods
# The official image (ECR Public mirror): python3 at POD_PYTHON, busybox ping.
IMAGE = "public.ecr.aws/docker/library/python:3.12-alpine"
POD_PYTHON = "/usr/local/bin/python3"  # where the official python images install it
ECHO_CONFIGMAP = "echo-server"
# The internet's view of a pod's traffic: a plain-HTTP service that answers with the
# caller's public address as text (https would need more than the stdlib-only client).
INTERNET_ECHO = Endpoint("internet", "internet", "checkip.amazonaws.com")
INTERNET_ECHO_PORT = 80
# What the table says about the check the cloud cannot run.
LEFT_OUT = "'internet to pod' is not run: there is no internet host of ours to send it"

# How each source starts the echo client: pods from the mounted ConfigMap, nodes (stock
# Ubuntu, nothing of ours installed) from stdin.
POD_CLIENT = (POD_PYTHON, "-IS", ECHO_CLIENT)
NODE_CLIENT = ("/usr/bin/python3", "-IS", "-")
PROBE_TIMEOUT = 30  # kubectl exec starts a process in the pod: allow for a slow API server

# -- manifests ----------------------------------------------------------------------------

def render_manifests(workers: Sequence[str], echo_source: str) -> str:
    """One JSON `List` for `kubectl apply -f -`: the namespace, the echo server as a
    ConfigMap, and the pods. Deterministic, so a re-apply changes nothing."""
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
             {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": ECHO_CONFIGMAP, "namespace": NAMESPACE},
              "data": {posixpath.basename(ECHO_CLIENT): echo_source}},
             *(_pod_manifest(pod) for pod in seed_pods(workers))]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2) + "\n"


def _pod_manifest(pod: SeedPod) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": pod.role,
        "image": IMAGE,
        "volumeMounts": [{"name": ECHO_CONFIGMAP, "mountPath": posixpath.dirname(ECHO_CLIENT),
                          "readOnly": True}],
        # busybox ping needs a raw socket where unprivileged ICMP is not enabled.
        "securityContext": {"capabilities": {"add": ["NET_RAW"]}},
    }
    if pod.role == "web":
        container["command"] = [*POD_CLIENT, "serve", "--port", str(WEB_PORT),
                                "--name", pod.name]
        container["ports"] = [{"containerPort": WEB_PORT}]
        container["readinessProbe"] = {"tcpSocket": {"port": WEB_PORT}, "periodSeconds": 2}
    else:
        container["command"] = [POD_PYTHON, "-IS", "-c", "import signal; signal.pause()"]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/part-of": "k8s-cni-lab-checks"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": pod.node},
            "containers": [container],
            "volumes": [{"name": ECHO_CONFIGMAP, "configMap": {"name": ECHO_CONFIGMAP}}],
            # The node's resolver (the VPC's), not cluster DNS: the internet check tests
            # pod networking and NAT, not CoreDNS and kube-proxy.
            "dnsPolicy": "Default",
            "automountServiceAccountToken": False,  # the pods need no API credentials
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,  # PID 1 ignores SIGTERM; nothing to save
        },
    }


# -- the pods as the API server reports them ----------------------------------------------

def apply_command() -> str:
    return f"{KUBECTL} apply -f -"


def wait_command(workers: Sequence[str], timeout_s: int) -> str:
    names = " ".join(shlex.quote(f"pod/{pod.name}") for pod in seed_pods(workers))
    return f"{KUBECTL} -n {NAMESPACE} wait --for=condition=Ready {names} --timeout={timeout_s}s"


def list_pods_command() -> str:
    return f"{KUBECTL} -n {NAMESPACE} get pods -o json"


def parse_pods(listing: str, workers: Sequence[str]) -> list[PodInfo]:
    """The test pods with their addresses; LabError naming every pod that is missing, has
    no address or runs on another node than its nodeSelector says."""
    try:
        items = {item["metadata"]["name"]: item for item in json.loads(listing)["items"]}
    except (ValueError, KeyError, TypeError) as error:
        raise LabError(f"`{list_pods_command()}` printed no pod list ({error})") from None
    found, problems = [], []
    for pod in seed_pods(workers):
        item = items.get(pod.name)
        node = (item or {}).get("spec", {}).get("nodeName")
        address = (item or {}).get("status", {}).get("podIP")
        if item is None:
            problems.append(f"{pod.name} is not listed")
        elif node != pod.node:
            problems.append(f"{pod.name} runs on {node}, not {pod.node}")
        elif not address:
            problems.append(f"{pod.name} has no pod IP")
        else:
            found.append(PodInfo(pod.name, pod.node, address, pod.role))
    if problems:
        raise LabError(f"test pods in namespace {NAMESPACE}: {'; '.join(problems)}")
    return found


# -- the checks ---------------------------------------------------------------------------

def cloud_checks(plan: Plan, inventory: Inventory, pods: Sequence[PodInfo]) -> list[Check]:
    """The local lab's checks without 'internet to pod'; the internet is checkip."""
    public_ips = {node.name: node.host for node in inventory.nodes}
    return lab_checks(plan, public_ips, pods, INTERNET_ECHO, INTERNET_ECHO_PORT,
                      internet_to_pod=False)


class KubectlProber:
    """Runs a probe as a pod (`kubectl exec` on the control plane) or as a node (the plain
    command on that node, the echo client's source on stdin)."""

    def __init__(self, ssh: NodeCluster, control_plane: str, echo_source: bytes) -> None:
        self.ssh, self.control_plane, self.echo_source = ssh, control_plane, echo_source

    def run(self, source: Endpoint, argv: Sequence[str]) -> tuple[int, str]:
        stdin = None
        if source.kind == "pod":
            node = self.control_plane
            command = exec_command(source.name, with_client(argv, POD_CLIENT))
        elif source.kind == "node" and source.node:
            node, on_node = source.node, with_client(argv, NODE_CLIENT)
            command = shlex.join(on_node)
            stdin = self.echo_source if on_node != list(argv) else None
        else:
            raise LabError(f"no way to probe from {source.name} in the cloud")
        result = self.ssh.node(node).run(command, timeout=PROBE_TIMEOUT, check=False,
                                         stdin=stdin, quiet=True)
        return result.exit_code, without_exec_status(result.output)


def without_exec_status(output: str) -> str:
    """The probe's own output: kubectl exec's "command terminated with exit code N" last
    line would otherwise stand in for the probe's reason (its exit code is kept)."""
    lines = output.rstrip("\n").splitlines()
    if lines and lines[-1].startswith("command terminated with exit code"):
        lines.pop()
    return "\n".join(lines)


def exec_command(pod: str, argv: Sequence[str]) -> str:
    return f"{KUBECTL} -n {NAMESPACE} exec {shlex.quote(pod)} -- {shlex.join(argv)}"

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
    pod_hosts,
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
# The echo Service, in front of the web pod on the second node. Its ClusterIP is chosen,
# not allocated: an address in the service range's lower band, which the API server keeps
# for static assignment, so the checks know it without asking.
ECHO_SERVICE = "echo"
ECHO_SERVICE_OFFSET = 100
DNS_SERVICE_OFFSET = 10  # kubeadm gives CoreDNS's Service the range's 10th address
API_SERVICE_OFFSET = 1  # and the API server's own Service (kubernetes.default) the first
CLUSTER_DOMAIN = "svc.cluster.local"
POD_LABEL = "k8s-cni-lab/pod"  # each test pod's own name, for the Service's selector
# What the table says about the check the cloud cannot run.
LEFT_OUT = "'internet to pod' is not run: there is no internet host of ours to send it"

# How each source starts the echo client: pods from the mounted ConfigMap, nodes (stock
# Ubuntu, nothing of ours installed) from stdin.
POD_CLIENT = (POD_PYTHON, "-IS", ECHO_CLIENT)
NODE_CLIENT = ("/usr/bin/python3", "-IS", "-")
PROBE_TIMEOUT = 30  # kubectl exec starts a process in the pod: allow for a slow API server

# -- manifests ----------------------------------------------------------------------------

def render_manifests(plan: Plan, echo_source: str) -> str:
    """One JSON `List` for `kubectl apply -f -`: the namespace, the echo server as a
    ConfigMap, the pods and the echo Service. Deterministic, so a re-apply changes nothing."""
    hosts = pod_hosts(plan)
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
             {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": ECHO_CONFIGMAP, "namespace": NAMESPACE},
              "data": {posixpath.basename(ECHO_CLIENT): echo_source}},
             *(_pod_manifest(pod) for pod in seed_pods(hosts)),
             {"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": ECHO_SERVICE, "namespace": NAMESPACE},
              "spec": {"type": "ClusterIP", "clusterIP": service_ip(plan, ECHO_SERVICE_OFFSET),
                       "selector": {POD_LABEL: _far_web_pod(hosts)},
                       "ports": [{"port": WEB_PORT, "targetPort": WEB_PORT}]}}]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2) + "\n"


def service_ip(plan: Plan, offset: int) -> str:
    return str(plan.service_network[offset])


def _far_web_pod(hosts: Sequence[str]) -> str:
    return next(pod.name for pod in seed_pods(hosts) if pod.role == "web" and pod.node == hosts[1])


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
                     "labels": {"app.kubernetes.io/part-of": "k8s-cni-lab-checks",
                                POD_LABEL: pod.name}},
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
    """The local lab's checks without 'internet to pod' (the internet is checkip), then what
    a cluster's user touches: the echo Service through kube-proxy, and CoreDNS."""
    public_ips = {node.name: node.host for node in inventory.nodes}
    checks = lab_checks(plan, public_ips, pods, INTERNET_ECHO, INTERNET_ECHO_PORT,
                        internet_to_pod=False)
    return [*checks, *service_checks(plan, pods)]


def service_checks(plan: Plan, pods: Sequence[PodInfo]) -> list[Check]:
    hosts = pod_hosts(plan)
    by_name = {pod.name: pod for pod in pods}
    tools = next(p for p in pods if p.role == "tools" and p.node == hosts[0])
    behind = by_name[_far_web_pod(hosts)]
    sender = Endpoint("pod", tools.name, tools.ip, tools.node)
    echo_ip = service_ip(plan, ECHO_SERVICE_OFFSET)
    service = Endpoint("service", f"Service {ECHO_SERVICE}", echo_ip, behind.node)
    dns = service_ip(plan, DNS_SERVICE_OFFSET)

    def lookup(name: str) -> Endpoint:
        return Endpoint("service", name, dns)

    return [
        Check("pod to Service, across nodes", sender, service, "http", WEB_PORT,
              expect_seen=tools.ip, seen_means="sender's pod address (kube-proxy only DNATs)"),
        # Hairpin: the pod reaches itself through the Service, back out of its own bridge
        # port. kube-proxy masquerades this traffic, so any answer will do.
        Check("pod to Service, hairpin", Endpoint("pod", behind.name, behind.ip, behind.node),
              service, "http", WEB_PORT),
        Check("DNS: the API server's Service", sender,
              lookup(f"kubernetes.default.{CLUSTER_DOMAIN}"), "dns", 53,
              expect_seen=service_ip(plan, API_SERVICE_OFFSET),
              seen_means="kubernetes.default's ClusterIP, from CoreDNS"),
        Check("DNS: the echo Service", sender,
              lookup(f"{ECHO_SERVICE}.{NAMESPACE}.{CLUSTER_DOMAIN}"), "dns", 53,
              expect_seen=echo_ip, seen_means="the echo Service's ClusterIP"),
    ]


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

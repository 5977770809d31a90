"""Scripted replies for the verify phase over fake nodes (fakes.py): the test pods' listing,
what each probe prints, and each node's facts. A fake stands in for kubectl, the pods and
checkip.amazonaws.com: no cluster exists here and no packet leaves this process.

The match strings are written out literally (not built with the code under test), so a
probe with another argv finds no reply, gets an empty answer and fails its check.
"""

from __future__ import annotations

import json

from tests.bootstrap.fakes import Reply

KUBECTL = "kubectl --kubeconfig=/etc/kubernetes/admin.conf"
NAMESPACE = "k8s-cni-lab-checks"
POD_FETCH = "/usr/local/bin/python3 -IS /opt/k8s-cni-lab/echo_server.py fetch"
NODE_FETCH = "/usr/bin/python3 -IS - fetch"
# name -> (node, pod IP), as the API server would list them
PODS = {"nginx-worker-1": ("worker-1", "10.244.1.2"), "bash-worker-1": ("worker-1", "10.244.1.3"),
        "nginx-worker-2": ("worker-2", "10.244.2.2"), "bash-worker-2": ("worker-2", "10.244.2.3")}
WORKER_1_PUBLIC = "203.0.113.11"  # test_cloud_phases.PUBLIC["worker-1"]


def in_pod(pod: str, command: str) -> str:
    return f"{KUBECTL} -n {NAMESPACE} exec {pod} -- {command}"


def pod_fetch(pod: str, target: str, port: int = 8080) -> str:
    return in_pod(pod, f"{POD_FETCH} {target} {port} --timeout 2")


def node_fetch(target: str) -> str:
    return f"{NODE_FETCH} {target} 8080 --timeout 2"


def echo(client: str) -> str:
    return json.dumps({"server": "fake", "client": client}) + "\n"


def pod_listing(pods: dict[str, tuple[str, str]] = PODS) -> str:
    return json.dumps({"kind": "List", "items": [
        {"metadata": {"name": name}, "spec": {"nodeName": node}, "status": {"podIP": ip}}
        for name, (node, ip) in pods.items()]})


# The probes of a healthy cluster: each reply is what the echo server (or checkip) says.
GATEWAY_PING = in_pod("bash-worker-1", "ping -n -q -c 1 -W 1 10.244.1.1")
SAME_NODE = pod_fetch("bash-worker-1", "10.244.1.2")
ACROSS = pod_fetch("bash-worker-1", "10.244.2.2")
ACROSS_BACK = pod_fetch("bash-worker-2", "10.244.1.2")
LARGE_ACROSS = f"{ACROSS} --path /large"  # ACROSS's reply answers it too (a substring)
NODE_TO_POD = node_fetch("10.244.2.2")
TO_INTERNET = pod_fetch("bash-worker-1", "checkip.amazonaws.com", 80)
# What a cluster's user touches: the echo Service (static ClusterIP 10.96.0.100) across
# nodes and from the pod behind it, and CoreDNS (10.96.0.10) through busybox nslookup.
TO_SERVICE = pod_fetch("bash-worker-1", "10.96.0.100")
HAIRPIN = pod_fetch("nginx-worker-2", "10.96.0.100")
DNS_API = in_pod("bash-worker-1",
                 "nslookup -type=a kubernetes.default.svc.cluster.local 10.96.0.10")
DNS_ECHO = in_pod("bash-worker-1",
                  "nslookup -type=a echo.k8s-cni-lab-checks.svc.cluster.local 10.96.0.10")
PROBES = (GATEWAY_PING, SAME_NODE, ACROSS, ACROSS_BACK, LARGE_ACROSS, NODE_TO_POD, TO_INTERNET,
          TO_SERVICE, HAIRPIN, DNS_API, DNS_ECHO)


def nslookup(name: str, address: str) -> str:
    """busybox nslookup's answer, as the alpine image prints it."""
    return (f"Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\n"
            f"Name:\t{name}\nAddress: {address}\n\n")


def healthy_verify_replies() -> list[Reply]:
    """The control plane's replies when every check passes."""
    return [Reply(f"{KUBECTL} -n {NAMESPACE} get pods -o json", 0, pod_listing()),
            Reply(GATEWAY_PING, 0, "1 packets transmitted, 1 packets received, 0% loss\n"),
            Reply(SAME_NODE, 0, echo("10.244.1.3")),
            Reply(ACROSS, 0, echo("10.244.1.3")),
            Reply(ACROSS_BACK, 0, echo("10.244.2.3")),
            Reply(NODE_TO_POD, 0, echo("10.0.1.10")),
            Reply(TO_INTERNET, 0, f"{WORKER_1_PUBLIC}\n"),
            Reply(TO_SERVICE, 0, echo("10.244.1.3")),
            Reply(HAIRPIN, 0, echo("10.244.2.1")),  # kube-proxy masquerades hairpin traffic
            Reply(DNS_API, 0, nslookup("kubernetes.default.svc.cluster.local", "10.96.0.1")),
            Reply(DNS_ECHO, 0, nslookup("echo.k8s-cni-lab-checks.svc.cluster.local",
                                        "10.96.0.100"))]


def node_facts_reply(pod_cidr: str, nat_rule: str | None = "! -d 10.244.0.0/16") -> Reply:
    """FACTS_COMMAND's output: forwarding on, pod traffic accepted, and the NAT rule for the
    node's pods with `nat_rule` as its match (the seed lab's "! -o cni0" NATs pod-to-pod
    traffic too); None: no NAT at all."""
    nat = f"-A LAB-POSTRTG -s {pod_cidr} {nat_rule} -j MASQUERADE\n" if nat_rule else ""
    return Reply("iptables-save -t nat", 0, (
        "1\n#--\n*filter\n:FORWARD DROP [0:0]\n:LAB-FWD - [0:0]\n-A FORWARD -j LAB-FWD\n"
        "-A LAB-FWD -s 10.244.0.0/16 -j ACCEPT\n-A LAB-FWD -d 10.244.0.0/16 -j ACCEPT\n"
        "COMMIT\n#--\n*nat\n:POSTROUTING ACCEPT [0:0]\n:LAB-POSTRTG - [0:0]\n"
        f"-A POSTROUTING -j LAB-POSTRTG\n{nat}COMMIT\n"))

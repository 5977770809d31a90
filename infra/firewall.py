"""Who may reach the nodes: the security group's ingress rules as data.

Pure, without Pulumi, so the Pulumi program (infra/network.py) and the local lab's internet
gateway (lab/network.py) filter from the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.plan import API_SERVER_PORT, Plan

SSH_PORT = 22


@dataclass(frozen=True)
class IngressRule:
    """One security group ingress permission; protocol "-1" means all traffic."""

    key: str  # stable part of the logical name
    description: str
    cidr: str
    protocol: str
    from_port: int | None = None
    to_port: int | None = None


def ingress_rules(plan: Plan) -> list[IngressRule]:
    """Who may reach the nodes: the operator on SSH and the API server, the cluster on all."""
    rules = []
    for cidr in map(str, plan.allowed):
        label = cidr.replace(".", "-").replace("/", "-")
        rules += [
            IngressRule(f"ssh-{label}", "SSH from an allowed CIDR", cidr, "tcp",
                        SSH_PORT, SSH_PORT),
            IngressRule(f"api-{label}", "Kubernetes API server from an allowed CIDR", cidr,
                        "tcp", API_SERVER_PORT, API_SERVER_PORT),
        ]
    return [
        *rules,
        IngressRule("vpc-all", "All traffic between nodes", str(plan.vpc), "-1"),
        # Pods talk to pods on other nodes with their own addresses (no NAT), so packets
        # arrive with a pod source address.
        IngressRule("pods-all", "All traffic from pods on other nodes", str(plan.pod_network),
                    "-1"),
        # Already covered by vpc-all; kept explicit so ping and path MTU discovery between
        # nodes survive any narrowing of that rule.
        IngressRule("vpc-icmp", "ICMP between nodes", str(plan.vpc), "icmp", -1, -1),
    ]

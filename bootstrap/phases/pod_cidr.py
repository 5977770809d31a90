"""pod-cidr: give each node the pod CIDR the plan gave it, or fail if it has another."""

from __future__ import annotations

from bootstrap.kubeadm import (
    KUBECTL_TIMEOUT,
    NODE_CIDRS,
    parse_node_cidrs,
    pod_cidr_patch_command,
    pod_cidr_patches,
    wait_for_nodes_command,
)
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_noop, log_step

NAME = "pod-cidr"
# A kubelet registers its Node shortly after it joins; a Node still missing after this is
# named in the phase's error.
REGISTRATION_TIMEOUT = 180


def new_pod_cidr_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Set each node's spec.podCIDR from the plan and check they agree",
                 run=run_pod_cidr)


def run_pod_cidr(context: CloudContext) -> None:
    control_plane = context.ssh.node(context.plan.control_plane.name)
    # Not checked: pod_cidr_patches names each node that is still missing.
    control_plane.run(wait_for_nodes_command(context.plan.node_names(), REGISTRATION_TIMEOUT),
                      timeout=REGISTRATION_TIMEOUT + KUBECTL_TIMEOUT, check=False, quiet=True)
    listed = control_plane.run(NODE_CIDRS, timeout=KUBECTL_TIMEOUT, quiet=True)
    patches = pod_cidr_patches(context.plan, parse_node_cidrs(listed.output))
    for node in context.plan.nodes:
        if node.name not in patches:
            log_noop(NAME, node.name, f"podCIDR is already {node.pod_cidr}, as planned")
    for name, cidr in patches.items():
        control_plane.run(pod_cidr_patch_command(name, cidr), timeout=KUBECTL_TIMEOUT)
        log_step(NAME, name, f"podCIDR set to {cidr}")

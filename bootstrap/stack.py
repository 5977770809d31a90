"""A Pulumi stack as a target of the command line: its plan and inventory, read from
`pulumi stack output --json --show-secrets` through the Pulumi CLI (so no AWS credentials
are needed, only access to the stack's state).

The outputs are the ones `infra/outputs.py` exports: `settings` (the plan's inputs), `nodes`
(per node: publicIp, privateIp, hostPublicKey), `sshUser` and the secret `privateKey`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.errors import LabError
from bootstrap.inventory import Inventory, NodeAccess, check_agrees_with_plan
from infra.plan import Plan, PlanError, make_plan, settings_from_wire

PULUMI_TIMEOUT = 120


class StackError(LabError):
    """The stack cannot be read, or lacks what the command needs; the message names the fix."""


@dataclass(frozen=True)
class Stack:
    name: str
    plan: Plan
    inventory: Inventory
    bootstrapped_by_pulumi: bool = True  # False when built with bootstrap=false
    # The VPC's pod routes from the outputs: destination CIDR -> where AWS sends it.
    pod_routes: Mapping[str, str] = field(default_factory=dict)

    @property
    def has_cluster(self) -> bool:
        """Bootstrapped by `pulumi up`, or by hand with `make run STACK=...`."""
        return self.bootstrapped_by_pulumi or by_hand_kubeconfig(self.name).exists()


def by_hand_kubeconfig(stack: str) -> Path:
    """Where `make run STACK=<stack>` keeps the kubeconfig of a stack built with
    bootstrap=false: in the current directory, named like the stack's key file."""
    return Path(f"k8s-cni-lab-{stack}.kubeconfig")


def read_outputs(stack: str) -> dict[str, Any]:
    """The stack's outputs, secrets included; never printed."""
    if shutil.which("pulumi") is None:
        raise StackError("no Pulumi CLI on PATH: install it (https://www.pulumi.com/docs/"
                         "install/) and log in to the backend that holds the stack")
    done = subprocess.run(["pulumi", "stack", "output", "--json", "--show-secrets",
                           "--stack", stack], capture_output=True, text=True, check=False,
                          timeout=PULUMI_TIMEOUT)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise StackError(f"cannot read stack {stack!r}: {reason}. Fix: `pulumi stack ls` "
                         "lists the stacks of this project")
    try:
        outputs = json.loads(done.stdout)
    except ValueError:
        raise StackError(f"pulumi printed no JSON for stack {stack!r}") from None
    if not isinstance(outputs, dict):
        raise StackError(f"pulumi printed no outputs object for stack {stack!r}")
    return outputs


def stack_from_outputs(name: str, outputs: Mapping[str, Any]) -> Stack:
    """The plan and inventory the outputs describe (pure), checked against each other."""
    missing = [key for key in ("settings", "nodes", "sshUser", "privateKey") if key not in outputs]
    if missing:
        raise StackError(f"stack {name!r} has no output(s) {', '.join(missing)}: run "
                         "`pulumi up` with this version of the project first")
    try:
        plan = make_plan(settings_from_wire(outputs["settings"]))
    except PlanError as error:
        raise StackError(f"stack {name!r}: {error}") from None
    nodes = outputs["nodes"]
    inventory = Inventory(nodes=tuple(
        NodeAccess(name=node.name, host=nodes[node.name]["publicIp"], user=outputs["sshUser"],
                   host_key=nodes[node.name]["hostPublicKey"])
        for node in plan.nodes if node.name in nodes), private_key=outputs["privateKey"])
    check_agrees_with_plan(plan, inventory,
                           {name: entry["privateIp"] for name, entry in nodes.items()})
    return Stack(name, plan, inventory, bootstrapped_by_pulumi="kubeconfig" in outputs,
                 pod_routes=_pod_routes(outputs.get("podRoutes", {})))


def _pod_routes(routes: Mapping[str, Any]) -> dict[str, str]:
    return {route["destination"]: f"{route['networkInterfaceId']} ({node})"
            for node, route in routes.items()}


def read_stack(name: str) -> Stack:
    return stack_from_outputs(name, read_outputs(name))

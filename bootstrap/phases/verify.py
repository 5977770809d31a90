"""verify: the seed lab's connectivity checks on the real cluster, the same table as `make lab`.

Applies the four test pods (bootstrap/verify/cloud.py), waits until they are Ready, reads
their addresses, runs the shared checks through `kubectl exec`, logs the table and fails
with every failed check and its likely cause. The VPC's routes cannot be read from the
nodes, so no cause is ever blamed on them (`VpcFacts` unknown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table

from bootstrap.errors import LabError
from bootstrap.kubeadm import KUBECTL_TIMEOUT
from bootstrap.phases.context import CloudContext, LocalContext
from bootstrap.phases.workflow import Phase, log_step
from bootstrap.remote import RemoteNode
from bootstrap.verify.checks import ECHO_SERVER, Outcome, PodInfo, pod_hosts, run_checks
from bootstrap.verify.cloud import (
    LEFT_OUT,
    NAMESPACE,
    KubectlProber,
    apply_command,
    cloud_checks,
    list_pods_command,
    parse_pods,
    render_manifests,
    wait_command,
)
from bootstrap.verify.diagnose import VpcFacts, failure_causes
from bootstrap.verify.facts import read_node_facts
from bootstrap.verify.report import failure_lines, outcome_table, plain_text
from infra.plan import Plan

NAME = "verify"
POD_READY_TIMEOUT = 180  # pulling the image on a fresh node takes most of it


def new_verify_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Run the connectivity checks from test pods and print the table",
                 run=run_verify, run_if=has_two_workers)


def has_two_workers(context: CloudContext) -> bool:
    """The test pods run on workers only (no toleration for the control plane's taint), and
    the cross-node checks need two of them, as in the seed lab."""
    return len(context.plan.workers) >= 2


def run_verify(context: CloudContext) -> None:
    outcomes, causes = check_cluster(context)
    log_step(NAME, context.plan.control_plane.name,
             f"checks done\n{plain_text(cloud_table(outcomes, causes))}")
    context.on_checks(outcomes)
    raise_on_failure(outcomes, causes)


def check_cluster(context: LocalContext) -> tuple[list[Outcome], dict[str, str]]:
    """The checks from the test pods (applied if missing), and each failure's likely cause."""
    control_plane = context.ssh.node(context.plan.control_plane.name)
    echo_source = ECHO_SERVER.read_bytes()
    pods = deploy_test_pods(control_plane, context.plan, echo_source)
    checks = cloud_checks(context.plan, context.inventory, pods)
    prober = KubectlProber(context.ssh, control_plane.name, echo_source)
    outcomes = run_checks(prober, checks)
    causes = failure_causes(outcomes, lambda: read_node_facts(context.ssh, context.plan),
                            VpcFacts())
    return outcomes, causes


def cloud_table(outcomes: Sequence[Outcome], causes: Mapping[str, str]) -> Table:
    return outcome_table(outcomes, causes, title=f"Connectivity checks (cloud; {LEFT_OUT})")


def deploy_test_pods(control_plane: RemoteNode, plan: Plan,
                     echo_source: bytes) -> list[PodInfo]:
    """Apply (idempotent), wait for Ready (bounded), and read the pods' addresses."""
    workers = pod_hosts(plan)
    manifests = render_manifests(plan, echo_source.decode())
    control_plane.run(apply_command(), stdin=manifests.encode(), timeout=KUBECTL_TIMEOUT,
                      quiet=True)
    control_plane.run(wait_command(workers, POD_READY_TIMEOUT),
                      timeout=POD_READY_TIMEOUT + KUBECTL_TIMEOUT, quiet=True)
    listing = control_plane.run(list_pods_command(), timeout=KUBECTL_TIMEOUT, quiet=True)
    pods = parse_pods(listing.output, workers)
    log_step(NAME, control_plane.name, f"test pods Ready in namespace {NAMESPACE}: " +
             ", ".join(f"{pod.name} {pod.ip}" for pod in pods))
    return pods


def raise_on_failure(outcomes: Sequence[Outcome], causes: dict[str, str]) -> None:
    failures = failure_lines(outcomes, causes)
    if failures:
        raise LabError(f"{len(failures)} of {len(outcomes)} connectivity check(s) failed:\n" +
                       "\n".join(f"- {line}" for line in failures))

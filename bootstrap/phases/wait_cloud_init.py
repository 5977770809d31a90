"""wait-cloud-init: SSH answers before cloud-init has finished installing packages; wait
for it, and fail with its own account of what went wrong."""

from __future__ import annotations

from bootstrap.errors import LabError, format_tail
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_step
from bootstrap.remote import RemoteNode

NAME = "wait-cloud-init"
CLOUD_INIT_TIMEOUT = 1200
# `cloud-init status --wait` exits 0 when done, 1 on error, 2 when done but "degraded"
# (recoverable errors, such as a deprecated key): 2 is not a failure.
DONE, DEGRADED = 0, 2


def new_wait_cloud_init_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Wait until cloud-init has finished on every node",
                 run=run_wait_cloud_init)


def run_wait_cloud_init(context: CloudContext) -> None:
    context.ssh.on_all(wait_for_cloud_init)


def wait_for_cloud_init(node: RemoteNode) -> None:
    status = node.run("cloud-init status --wait", timeout=CLOUD_INIT_TIMEOUT, check=False,
                      quiet=True)
    if status.exit_code == DONE:
        log_step(NAME, node.name, "cloud-init done")
        return
    if status.exit_code == DEGRADED:
        log_step(NAME, node.name, "cloud-init done, degraded (recoverable errors)")
        return
    details = node.run("cloud-init status --long", timeout=60, check=False, quiet=True)
    raise LabError(f"node {node.name}: cloud-init failed (status {status.exit_code}); see "
                   f"/var/log/cloud-init-output.log. cloud-init status --long:\n"
                   f"{format_tail(details.output)}")

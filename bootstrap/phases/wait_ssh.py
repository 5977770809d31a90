"""wait-ssh: every node answers over SSH with its pinned host key."""

from __future__ import annotations

from bootstrap.phases.context import LocalContext
from bootstrap.phases.workflow import Phase, log_step

NAME = "wait-ssh"


def new_wait_ssh_phase() -> Phase[LocalContext]:
    return Phase(NAME, "Connect to every node over SSH, retrying until the deadline",
                 run=run_wait_ssh)


def run_wait_ssh(context: LocalContext) -> None:
    context.ssh.connect_all()
    for name in context.ssh.names():
        log_step(NAME, name, "SSH session open, host key verified")

"""kubeconfig: the operator's kubeconfig, pointing at the control plane's public address."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bootstrap.errors import LabError
from bootstrap.kubeadm import ADMIN_KUBECONFIG, operator_kubeconfig
from bootstrap.phases.context import CloudContext
from bootstrap.phases.workflow import Phase, log_noop, log_step
from infra.plan import API_SERVER_PORT

NAME = "kubeconfig"


def new_kubeconfig_phase() -> Phase[CloudContext]:
    return Phase(NAME, "Write the cluster admin's kubeconfig on this machine",
                 run=run_kubeconfig)


def run_kubeconfig(context: CloudContext) -> None:
    access = context.inventory.node(context.plan.control_plane.name)
    found = context.ssh.node(access.name).read_file(ADMIN_KUBECONFIG)
    if found is None:
        raise LabError(f"{ADMIN_KUBECONFIG} does not exist on {access.name}: run kubeadm-init")
    wanted = operator_kubeconfig(found[0].decode(), access.name, access.host)
    path = context.kubeconfig_path
    if path.exists() and path.read_text() == wanted:
        log_noop(NAME, access.name, f"{path} is up to date")
        return
    write_private_file(path, wanted)
    log_step(NAME, access.name, f"wrote {path} (server https://{access.host}:{API_SERVER_PORT})")


def write_private_file(path: Path, text: str) -> None:
    """Atomically, readable by the owner only: the file holds cluster-admin credentials."""
    staged = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()  # a leftover could have a wider mode; O_EXCL then creates it 0600
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(staged, path)

"""The cloud bootstrap as a Pulumi dynamic resource, so `pulumi up` ends with a kubeadm cluster.

The engine runs `BootstrapProvider` in its own process (`python -m pulumi.dynamic`, started in
the project directory), which unpickles it from the `__provider` property by reference: keep
this module importable under this name, free of side effects and of pulumi_aws (slow import).

- create and update run the idempotent cloud workflow and return the inputs, the admin
  kubeconfig, the API server's address and the outcome of each connectivity check (the
  verify phase, whose table goes to stderr);
- diff compares the inputs, never the SSH deadline; only a new set of node names replaces;
- delete runs nothing on the nodes: the instances go with the stack, and a replacement is
  created before the old resource is deleted, so a `kubeadm reset` here would wreck the new
  cluster on the nodes both share.

Progress goes to stderr (Pulumi shows it; `pulumi.log` is not connected in this process):
phase lines only, never command output, which can hold join tokens or keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pulumi.runtime.rpc import UNKNOWN

from bootstrap.cni.install import SOURCE_DIR, tree_sha256
from bootstrap.errors import InventoryError, LabError
from bootstrap.inventory import Inventory, NodeAccess, check_agrees_with_plan
from bootstrap.phases.cloud import run_cloud_workflow
from bootstrap.phases.cni import cni_files, read_plugin
from bootstrap.phases.context import CloudContext
from bootstrap.phases.node_network import node_network_files
from bootstrap.remote import NodeCluster
from bootstrap.ssh import ClusterSSH, ConnectPolicy
from bootstrap.verify.checks import Outcome
from infra.plan import (
    API_SERVER_PORT,
    NODE_LOGIN,
    Node,
    Plan,
    make_plan,
    settings_from_wire,
)

# Inputs that describe the cluster: a change to any of them re-runs the workflow.
COMPARED_INPUTS = ("settings", "nodes", "sshUser", "privateKey", "version")
# How long to wait for each node's sshd; operational, so changing it alone changes nothing.
DEADLINE_INPUT = "sshDeadlineSeconds"
OUTPUTS = ("kubeconfig", "apiServer", "checks")
SECRET_OUTPUTS = ["privateKey", "kubeconfig"]
PROGRESS_LOGGER = "k8s_cni_lab.phases"

# Opens the SSH connections of an inventory; tests pass one that returns fake nodes.
SSHFactory = Callable[[Inventory, ConnectPolicy], NodeCluster]


class BootstrapFailed(LabError):
    """The workflow stopped; the message names the phase and node, and holds no secret."""


def open_cluster_ssh(inventory: Inventory, policy: ConnectPolicy) -> ClusterSSH:
    # on_line=None: command output is not streamed; it can hold tokens and keys.
    return ClusterSSH(inventory, policy=policy, on_line=None)


class BootstrapProvider(dynamic.ResourceProvider):
    def __init__(self, connect: SSHFactory = open_cluster_ssh) -> None:
        super().__init__()
        self._connect = connect  # a module-level function: pickled by reference

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        failures = [dynamic.CheckFailure(key, reason) for key, reason in input_problems(news)]
        return dynamic.CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = changed_inputs(olds, news)
        if not changed:
            return dynamic.DiffResult(changes=False)
        old_names, new_names = node_names(olds), node_names(news)
        replace = old_names is not None and new_names is not None and old_names != new_names
        progress(f"{'replace' if replace else 'update'}: changed {', '.join(changed)}")
        return dynamic.DiffResult(changes=True, replaces=["nodes"] if replace else [],
                                  delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(f"cluster-{uuid.uuid4().hex[:12]}", self._bootstrap(props))

    def update(self, _id: str, _olds: dict[str, Any],
               news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(self._bootstrap(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        names = node_names(props) or []
        progress(f"forgetting the cluster on {', '.join(names)}; nothing runs on the nodes "
                 "(they are destroyed or replaced with it)")

    def _bootstrap(self, props: dict[str, Any]) -> dict[str, Any]:
        plan = make_plan(settings_from_wire(props["settings"]))
        inventory = inventory_of(props)
        check_agrees_with_plan(plan, inventory, reported_private_ips(props))
        policy = ConnectPolicy(deadline=float(props.get(DEADLINE_INPUT,
                                                        ConnectPolicy.deadline)))
        with tempfile.TemporaryDirectory(prefix="k8s-cni-lab-") as workdir, progress_lines():
            kubeconfig_path = Path(workdir) / "kubeconfig"
            checked: list[Outcome] = []
            try:
                with contextlib.closing(self._connect(inventory, policy)) as ssh:
                    run_cloud_workflow(CloudContext(
                        plan=plan, inventory=inventory, ssh=ssh, kubeconfig_path=kubeconfig_path,
                        on_checks=checked.extend))
            except LabError as error:
                # from None: the chained causes would repeat the message in the traceback.
                raise BootstrapFailed(
                    f"cluster bootstrap failed: {redact(str(error), inventory.private_key)}\n"
                    "Every phase is idempotent: fix the cause and run `pulumi up` again."
                ) from None
            kubeconfig = kubeconfig_path.read_text()
        control_plane = inventory.node(plan.control_plane.name)
        return {**{key: props[key] for key in (*COMPARED_INPUTS, DEADLINE_INPUT) if key in props},
                "kubeconfig": kubeconfig,
                "apiServer": f"https://{control_plane.host}:{API_SERVER_PORT}",
                "checks": check_verdicts(checked)}


# -- the resource, as the Pulumi program declares it ---------------------------------------

@dataclass(frozen=True)
class BootstrapNode:
    node: Node  # the plan's node: what it is
    public_ip: pulumi.Input[str]  # where SSH reaches it
    host_key: pulumi.Input[str]  # OpenSSH public key line of its sshd, pinned
    private_ip: pulumi.Input[str]  # as the cloud reports it; checked against the plan's
    ssh_port: int = 22


@dataclass(frozen=True)
class ClusterBootstrapArgs:
    plan: Plan
    nodes: Sequence[BootstrapNode]
    private_key: pulumi.Input[str]  # the login key; pass it as a secret
    ssh_user: str = NODE_LOGIN
    ssh_deadline_seconds: float = ConnectPolicy.deadline
    plugin_source: Path = SOURCE_DIR


class ClusterBootstrap(dynamic.Resource, module="bootstrap", name="ClusterBootstrap"):
    """A kubeadm cluster on existing nodes, made by the cloud workflow."""

    kubeconfig: pulumi.Output[str]  # the cluster admin's, server at the public address
    apiServer: pulumi.Output[str]  # https://<control plane public IP>:6443
    checks: pulumi.Output[dict[str, str]]  # connectivity check -> "pass" or "fail"

    def __init__(self, name: str, args: ClusterBootstrapArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {
            "settings": asdict(args.plan.settings),
            "nodes": [{"name": n.node.name, "publicIp": n.public_ip, "sshPort": n.ssh_port,
                       "hostKey": n.host_key, "privateIp": n.private_ip}
                      for n in args.nodes],
            "sshUser": args.ssh_user,
            "privateKey": args.private_key,
            "version": installed_version(args.plan, args.plugin_source),
            DEADLINE_INPUT: args.ssh_deadline_seconds,
            **dict.fromkeys(OUTPUTS),  # None: outputs the provider computes
        }
        secrets = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        super().__init__(BootstrapProvider(), name, props,
                         pulumi.ResourceOptions.merge(opts, secrets))


def installed_version(plan: Plan, plugin_source: Path = SOURCE_DIR) -> dict[str, str]:
    """sha256 of the plugin and of every other file the bootstrap writes on the nodes, so a
    change to either updates the resource."""
    plugin = read_plugin(plugin_source)
    plugin_paths = {file.node_path for file in plugin}
    node_files = hashlib.sha256()
    for node in plan.nodes:
        for file in [*cni_files(plan, node.name, plugin), *node_network_files(plan, node.name)]:
            if file.path not in plugin_paths:
                node_files.update(f"{node.name} {file.path} {file.mode:o} {file.sha256}\n"
                                  .encode())
    return {"plugin": tree_sha256(plugin), "nodeFiles": node_files.hexdigest()}


# -- pure helpers over the property bags --------------------------------------------------

def inventory_of(props: Mapping[str, Any]) -> Inventory:
    nodes = tuple(NodeAccess(name=n["name"], host=n["publicIp"], port=int(n.get("sshPort", 22)),
                             user=props["sshUser"], host_key=n["hostKey"])
                  for n in props["nodes"])
    return Inventory(nodes=nodes, private_key=props.get("privateKey", ""))


def reported_private_ips(props: Mapping[str, Any]) -> dict[str, str]:
    return {n["name"]: n["privateIp"] for n in props["nodes"]}


def input_problems(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(input, reason) for each input that cannot work; unknown values (preview) pass."""
    deadline = props.get(DEADLINE_INPUT, 1)
    problems = []
    if not is_unknown(deadline) and not (isinstance(deadline, (int, float)) and deadline > 0):
        problems.append((DEADLINE_INPUT, f"must be a positive number of seconds, not {deadline}"))
    if is_unknown(props.get("settings")):
        return problems
    try:
        plan = make_plan(settings_from_wire(props.get("settings", {})))
    except (TypeError, ValueError) as error:  # PlanError is a ValueError
        return [*problems, ("settings", str(error))]
    if is_unknown(props.get("nodes")) or is_unknown(props.get("sshUser")):
        return problems
    try:
        inventory = inventory_of({**props, "privateKey": ""})
        check_agrees_with_plan(plan, inventory, reported_private_ips(props))
    except (KeyError, TypeError, ValueError) as error:  # InventoryError is a ValueError
        return [*problems, ("nodes", str(error) if isinstance(error, InventoryError)
                            else f"malformed node entry: {error!r}")]
    return problems


def changed_inputs(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
    """Dotted paths of the compared inputs that differ ("version.plugin",
    "nodes.worker-1.publicIp"); a value still unknown (preview) counts as changed."""
    changed: list[str] = []
    for key in COMPARED_INPUTS:
        old, new = olds.get(key), news.get(key)
        if key == "nodes":
            old, new = _by_name(old), _by_name(new)
        changed += _changed_paths(key, old, new)
    return changed


def node_names(props: Mapping[str, Any]) -> list[str] | None:
    """The node names in order, or None while any is unknown."""
    nodes = props.get("nodes")
    if not isinstance(nodes, list):
        return None
    names: list[str] = []
    for entry in nodes:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or is_unknown(name):
            return None
        names.append(name)
    return names


def is_unknown(value: Any) -> bool:
    """True if the value, or anything inside it, is not known yet (preview)."""
    if isinstance(value, dict):
        return any(is_unknown(item) for item in value.values())
    if isinstance(value, list):
        return any(is_unknown(item) for item in value)
    return value == UNKNOWN


def redact(text: str, secret: str) -> str:
    """The text with the secret, and each line of it, replaced (a PEM body split by a
    library still matches line by line)."""
    for piece in sorted({secret, *secret.splitlines()}, key=len, reverse=True):
        if len(piece) >= 16 and "-----" not in piece:
            text = text.replace(piece, "[secret]")
    return text


def _by_name(nodes: Any) -> Any:
    names = node_names({"nodes": nodes})
    return dict(zip(names, nodes, strict=True)) if names is not None else nodes


def _changed_paths(path: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [changed for key in sorted(old.keys() | new.keys())
                for changed in _changed_paths(f"{path}.{key}", old.get(key), new.get(key))]
    return [] if old == new and not is_unknown(new) else [path]


# -- the cluster, after the workflow --------------------------------------------------------

def check_verdicts(outcomes: Sequence[Outcome]) -> dict[str, str]:
    """Check name -> "pass" or "fail". A failure stops the create, so a stored state holds
    passes only; empty when the verify phase did not run."""
    return {outcome.check.name: "pass" if outcome.passed else "fail" for outcome in outcomes}


def progress(message: str) -> None:
    print(f"[bootstrap] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress_lines() -> Iterator[None]:
    """The phases' log lines (phase started, per node done or no-op) to stderr."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[bootstrap] %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)

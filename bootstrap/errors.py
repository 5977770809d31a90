"""The project's error tree: one root, `LabError`, so callers can catch everything we raise.

Messages are written for the operator: they name the node, what failed and, where there is
one, the remedy. No message ever contains key material.
"""

from __future__ import annotations

from collections.abc import Mapping

from bootstrap.remote import RunResult

# How many trailing output lines a failed command shows.
OUTPUT_TAIL_LINES = 20


class LabError(Exception):
    """Root of every error k8s-cni-lab raises on purpose."""


class InventoryError(LabError, ValueError):
    """An inventory entry that cannot be used (bad host key line, unknown node name...)."""


class PrivateKeyError(LabError, ValueError):
    """The SSH private key cannot be loaded. The message never quotes the key."""


class SSHUnreachable(LabError, ConnectionError):
    """A node did not accept an SSH session before the deadline."""

    def __init__(self, node: str, address: str, waited: float, last_error: str) -> None:
        self.node, self.address, self.waited, self.last_error = node, address, waited, last_error
        super().__init__(f"node {node} ({address}): no SSH session after {waited:.0f} s; "
                         f"last error: {last_error}")


class HostKeyMismatch(LabError):
    """The node's sshd presented a host key other than the pinned one: never retried."""

    def __init__(self, node: str, address: str, expected: str, presented: str) -> None:
        self.node, self.address = node, address
        self.expected, self.presented = expected, presented
        super().__init__(
            f"node {node} ({address}): host key mismatch, connection refused. "
            f"The inventory pins {expected} but the server presented {presented}. "
            "If the node was rebuilt or the lab recreated, refresh the inventory so it pins "
            "the new key (re-run `pulumi up` or the lab's `up`); otherwise the address may "
            "belong to another machine or the connection may be intercepted: do not connect.")


class CommandFailed(LabError):
    """A remote command exited non-zero; carries its `RunResult`."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(
            f"node {result.node}: command exited with status {result.exit_code}: "
            f"{result.command}\n{format_tail(result.output)}")


class CommandTimeout(LabError, TimeoutError):
    """A remote command was still running when its timeout expired; it was abandoned."""

    def __init__(self, node: str, command: str, timeout: float, output: str) -> None:
        self.node, self.command, self.timeout, self.output = node, command, timeout, output
        super().__init__(f"node {node}: command still running after {timeout:g} s, abandoned: "
                         f"{command}\n{format_tail(output)}")


class NodesFailed(LabError):
    """One or more nodes failed in a parallel step; lists every failed node."""

    def __init__(self, failures: Mapping[str, BaseException]) -> None:
        self.failures = dict(failures)
        lines = [f"{len(self.failures)} node(s) failed: {', '.join(self.failures)}"]
        lines += [f"- {name}: {error}" for name, error in self.failures.items()]
        super().__init__("\n".join(lines))


class UnknownPhase(LabError, ValueError):
    """--only/--skip named a phase the workflow does not have."""

    def __init__(self, unknown: list[str], known: list[str]) -> None:
        self.unknown, self.known = unknown, known
        super().__init__(f"unknown phase(s): {', '.join(unknown)}; "
                         f"phases are: {', '.join(known)}")


class PhaseError(LabError):
    """A phase failed; the message starts with the phase path, like kubeadm's."""

    def __init__(self, path: str, cause: BaseException) -> None:
        self.path, self.cause = path, cause
        super().__init__(f"phase {path}: {cause}")


def format_tail(output: str) -> str:
    """The last OUTPUT_TAIL_LINES lines of a command's output, indented for a message."""
    lines = output.rstrip("\n").splitlines()
    if not lines:
        return "(no output)"
    tail = lines[-OUTPUT_TAIL_LINES:]
    header = f"last {len(tail)} of {len(lines)} output lines:" if len(lines) > len(tail) \
        else "output:"
    return "\n".join([header, *(f"  | {line}" for line in tail)])

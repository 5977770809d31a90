"""What the bootstrap needs of a node and of a cluster of nodes, whoever provides them.

`bootstrap/ssh.py` implements these protocols over paramiko; the tests implement them with
in-memory fakes. Phases, facts and checks are typed against the protocols, so both are
checked by mypy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RunResult:
    """A finished remote command; `output` is stdout and stderr interleaved as produced."""

    node: str
    command: str
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class RemoteNode(Protocol):
    """One node: run shell commands (as root), read, test and write files."""

    @property
    def name(self) -> str: ...

    def connect(self) -> None: ...

    def run(self, command: str, *, timeout: float, check: bool = True,
            stdin: bytes | None = None, quiet: bool = False,
            secret: bool = False) -> RunResult: ...

    def exists(self, path: str, *, timeout: float = 60) -> bool: ...

    def read_file(self, path: str, *, timeout: float = 60) -> tuple[bytes, int] | None: ...

    def put_files(self, files: Sequence[tuple[str, bytes, int]], *,
                  timeout: float = 60) -> None: ...


class NodeCluster(Protocol):
    """Every node of a cluster, by name; `on_all` runs one action per node in parallel."""

    def node(self, name: str) -> RemoteNode: ...

    def names(self) -> list[str]: ...

    def connect_all(self) -> None: ...

    def on_all(self, action: Callable[[RemoteNode], T],
               names: Sequence[str] | None = None) -> dict[str, T]: ...

    def close(self) -> None: ...

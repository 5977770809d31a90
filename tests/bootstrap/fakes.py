"""Fake nodes for phase tests: scripted command replies and an in-memory file system, with
every command, stdin and upload recorded. No SSH, no root. They implement the protocols of
bootstrap/remote.py, so mypy checks them like the SSH classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from bootstrap.errors import CommandFailed
from bootstrap.remote import RunResult
from bootstrap.ssh import WITHHELD, for_each_node

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """The answer to the first command containing `match`; `creates` then exists on the node,
    holding `content`."""

    match: str
    exit_code: int = 0
    output: str = ""
    creates: str | None = None
    content: bytes = b""


@dataclass
class FakeNode:
    name: str
    replies: list[Reply] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    stdins: list[bytes | None] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)

    def connect(self) -> None:
        self.commands.append("<connect>")

    def run(self, command: str, *, timeout: float, check: bool = True,
            stdin: bytes | None = None, quiet: bool = False, secret: bool = False) -> RunResult:
        assert timeout > 0
        self.commands.append(command)
        self.stdins.append(stdin)
        reply = next((r for r in self.replies if r.match in command), Reply(command))
        if reply.creates:
            self.files[reply.creates] = (reply.content, 0o600)
        result = RunResult(self.name, command, reply.exit_code, reply.output)
        if check and not result.ok:  # as NodeSSH does: a secret output stays out of errors
            raise CommandFailed(replace(result, output=WITHHELD) if secret else result)
        return result

    def exists(self, path: str, *, timeout: float = 60) -> bool:
        return path in self.files

    def read_file(self, path: str, *, timeout: float = 60) -> tuple[bytes, int] | None:
        return self.files.get(path)

    def put_files(self, files: Sequence[tuple[str, bytes, int]], *,
                  timeout: float = 60) -> None:
        for path, data, mode in files:
            self.uploads.append(path)
            self.files[path] = (data, mode)


NodeT = TypeVar("NodeT", bound=FakeNode)


@dataclass
class FakeCluster(Generic[NodeT]):
    """Stands in for ClusterSSH (both are a `NodeCluster`); runs on_all on the real pool."""

    nodes: dict[str, NodeT]

    def node(self, name: str) -> NodeT:
        return self.nodes[name]

    def names(self) -> list[str]:
        return list(self.nodes)

    def connect_all(self) -> None:
        self.on_all(FakeNode.connect)

    def on_all(self, action: Callable[[NodeT], T],
               names: Sequence[str] | None = None) -> dict[str, T]:
        chosen = self.names() if names is None else list(names)
        return for_each_node(lambda name: action(self.nodes[name]), chosen, max_workers=4)

    def close(self) -> None:
        pass

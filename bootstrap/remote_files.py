"""Files the bootstrap installs on nodes, pyinfra style: a fact (what the node has), a pure
decision (what differs), then the upload of only that."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from bootstrap.remote import RemoteNode

TRANSFER_TIMEOUT = 120


@dataclass(frozen=True)
class DesiredFile:
    path: str
    data: bytes
    mode: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    """What a node has at a path: sha256 and mode are None when there is no file."""

    path: str
    sha256: str | None
    mode: int | None


def remote_file(node: RemoteNode, path: str) -> RemoteFile:
    """The fact, read over SFTP: our files are small, and no remote shell has to start."""
    found = node.read_file(path, timeout=TRANSFER_TIMEOUT)
    if found is None:
        return RemoteFile(path, None, None)
    data, mode = found
    return RemoteFile(path, hashlib.sha256(data).hexdigest(), mode)


def files_to_write(desired: Sequence[DesiredFile],
                   present: Sequence[RemoteFile]) -> list[DesiredFile]:
    """The desired files whose content or mode differs from what the node has."""
    have = {fact.path: (fact.sha256, fact.mode) for fact in present}
    return [wanted for wanted in desired
            if have.get(wanted.path) != (wanted.sha256, wanted.mode)]


def ensure_files(node: RemoteNode, desired: Sequence[DesiredFile]) -> tuple[list[str], list[str]]:
    """Upload the files that differ; returns (written paths, paths already up to date)."""
    stale = files_to_write(desired, [remote_file(node, wanted.path) for wanted in desired])
    if stale:
        node.put_files([(wanted.path, wanted.data, wanted.mode) for wanted in stale],
                       timeout=TRANSFER_TIMEOUT)
    written = [wanted.path for wanted in stale]
    return written, [wanted.path for wanted in desired if wanted.path not in written]


def describe_paths(paths: Sequence[str]) -> str:
    """Paths in one line: a directory that holds several of them is named once, counted."""
    by_directory: dict[str, list[str]] = {}
    for path in paths:
        by_directory.setdefault(posixpath.dirname(path), []).append(path)
    return ", ".join(files[0] if len(files) == 1 else f"{directory}/ ({len(files)} files)"
                     for directory, files in by_directory.items())

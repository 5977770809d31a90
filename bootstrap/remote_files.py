"""Files the bootstrap installs on nodes, pyinfra style: a fact (one command and a pure
parser), a pure decision, then the upload of only what differs."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from bootstrap.errors import LabError
from bootstrap.ssh import NodeSSH

FACT_TIMEOUT = 30
UPLOAD_TIMEOUT = 120
_MISSING = "-"


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
    """What a node has at a path: None for both fields when the file does not exist."""

    path: str
    sha256: str | None
    mode: int | None


def files_fact_command(paths: Sequence[str]) -> str:
    """One line per path: '<sha256> <octal mode> <path>', or '- - <path>' if missing."""
    quoted = " ".join(shlex.quote(path) for path in paths)
    return (f"for f in {quoted}; do if [ -f \"$f\" ]; then "
            "printf '%s %s %s\\n' \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" "
            "\"$(stat -c %a \"$f\")\" \"$f\"; "
            f"else printf '{_MISSING} {_MISSING} %s\\n' \"$f\"; fi; done")


def parse_files_fact(output: str) -> dict[str, RemoteFile]:
    facts: dict[str, RemoteFile] = {}
    for line in output.splitlines():
        digest, mode, path = line.split(" ", 2)
        facts[path] = RemoteFile(path, None if digest == _MISSING else digest,
                                 None if mode == _MISSING else int(mode, 8))
    return facts


def files_to_write(desired: Sequence[DesiredFile],
                   present: dict[str, RemoteFile]) -> list[DesiredFile]:
    """The desired files whose content or mode differs from what the node has."""
    stale = []
    for wanted in desired:
        have = present.get(wanted.path)
        if have is None:
            raise LabError(f"no fact for {wanted.path}: the fact command's output was cut short")
        if (have.sha256, have.mode) != (wanted.sha256, wanted.mode):
            stale.append(wanted)
    return stale


def ensure_files(node: NodeSSH, desired: Sequence[DesiredFile]) -> tuple[list[str], list[str]]:
    """Upload the files that differ; returns (written paths, paths already up to date)."""
    fact = node.run(files_fact_command([f.path for f in desired]), timeout=FACT_TIMEOUT,
                    quiet=True)
    stale = files_to_write(desired, parse_files_fact(fact.output))
    for wanted in stale:
        node.put(wanted.path, wanted.data, wanted.mode, timeout=UPLOAD_TIMEOUT)
    written = [wanted.path for wanted in stale]
    return written, [f.path for f in desired if f.path not in written]

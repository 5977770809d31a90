"""The plugin as installed on a node: the one place that says which files go where.

    /opt/cni/bin/lab-cni                   0755  the launcher the runtime runs
    /opt/cni/lib/lab-cni/lab_cni/*.py      0644  the plugin package (bootstrap/cni/lab_cni/)

The launcher imports the package instead of being the plugin, because Python caches bytecode
only for imported modules: compiling the plugin on every pod event would cost more than the
reference plugin's whole ADD, importing its cached bytecode about a millisecond. The first call
writes the cache, as for any installed module; an upgrade changes a module's size and time,
which invalidates its cache. The launcher finds the package relative to its own real path, so
the tree works under any root.

Everyone uses this list: the bootstrap's cni phase uploads it, the tests and the bench run the
plugin from a copy in a temporary directory, and `make install-cni DESTDIR=<root>` runs
`python -m bootstrap.cni.install <root>`. Standard library only; it never imports the plugin.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CNI_TYPE = "lab-cni"  # the conflist's "type": the runtime runs <CNI_PATH>/<type>
PACKAGE = "lab_cni"
ENTRY_MODULE = "plugin"  # the package's module with main()
SOURCE_DIR = Path(__file__).resolve().parent / PACKAGE
BIN_DIR = "opt/cni/bin"  # relative to the root; CNI_PATH on nodes
LIB_DIR = f"opt/cni/lib/{CNI_TYPE}"  # the launcher's sys.path entry
LAUNCHER = f"{BIN_DIR}/{CNI_TYPE}"
LAUNCHER_MODE, MODULE_MODE = 0o755, 0o644
NODE_LAUNCHER = f"/{LAUNCHER}"  # where the plugin is on a node


@dataclass(frozen=True)
class PluginFile:
    """One file of the installed tree."""

    relative_path: str  # below the root: "opt/cni/bin/lab-cni"
    data: bytes
    mode: int

    @property
    def node_path(self) -> str:
        return f"/{self.relative_path}"


def plugin_files(source: Path = SOURCE_DIR) -> list[PluginFile]:
    """The launcher and every module of the package in `source`, in a stable order.
    FileNotFoundError if `source` holds no package."""
    if not (source / "__init__.py").is_file():
        raise FileNotFoundError(f"no Python package in {source}")
    library = [PluginFile(f"{LIB_DIR}/{PACKAGE}/{module.name}", module.read_bytes(),
                          MODULE_MODE) for module in sorted(source.glob("*.py"))]
    return [PluginFile(LAUNCHER, render_launcher().encode(), LAUNCHER_MODE), *library]


def render_launcher() -> str:
    """The runtime's entry point: kept tiny, because as the script Python runs it is compiled
    on every call, never cached."""
    library = posixpath.relpath(LIB_DIR, BIN_DIR)  # ../lib/lab-cni
    return f"""\
#!/usr/bin/python3 -IS
# {CNI_TYPE}, installed by k8s-cni-lab. The plugin is the package {PACKAGE} in {library},
# relative to this file's real directory; importing it lets Python reuse its cached bytecode.
import os
import sys

here = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(here, {library!r})))
from {PACKAGE}.{ENTRY_MODULE} import main

status = main()
sys.stdout.flush()  # then nothing is left to write: skip the interpreter's teardown (~1 ms)
os._exit(status)
"""


def tree_sha256(files: Sequence[PluginFile]) -> str:
    """One digest of paths, modes and contents: it changes when any installed byte would."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_path} {file.mode:o} {len(file.data)}\n".encode())
        digest.update(file.data)
    return digest.hexdigest()


def install(root: Path, source: Path = SOURCE_DIR) -> list[Path]:
    """Write the tree under `root`; returns the paths written. A file that already has its
    content and mode is left alone (a rewrite would invalidate its bytecode cache for nothing),
    and each write is a rename, so a plugin running meanwhile never reads half a module."""
    written = []
    for file in plugin_files(source):
        target = root / file.relative_path
        if _has(target, file):
            continue
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        staged.write_bytes(file.data)
        staged.chmod(file.mode)
        staged.replace(target)
        written.append(target)
    return written


def _has(target: Path, file: PluginFile) -> bool:
    try:
        return (target.stat().st_mode & 0o7777 == file.mode
                and target.read_bytes() == file.data)
    except FileNotFoundError:
        return False


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bootstrap.cni.install DESTDIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    written = install(root)
    for path in written:
        print(f"installed {path}")
    print(f"{CNI_TYPE}: {len(written)} file(s) written under {os.path.abspath(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The installed layout (bootstrap/cni/install.py): what it lists, what `make install-cni`
writes, and that the tree runs wherever it is laid out. No root needed: only VERSION runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bootstrap.cni.install import (
    LAUNCHER,
    LIB_DIR,
    PACKAGE,
    SOURCE_DIR,
    PluginFile,
    install,
    plugin_files,
    tree_sha256,
)

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def version(launcher: Path) -> dict:
    done = subprocess.run([launcher], input=b"{}", env={"CNI_COMMAND": "VERSION"},
                          capture_output=True, check=True)
    return json.loads(done.stdout)


def test_the_tree_is_the_launcher_and_every_module_of_the_package() -> None:
    files = {file.relative_path: file.mode for file in plugin_files()}
    modules = {f"{LIB_DIR}/{PACKAGE}/{p.name}": 0o644 for p in SOURCE_DIR.glob("*.py")}
    assert files == {LAUNCHER: 0o755, **modules}
    assert f"{LIB_DIR}/{PACKAGE}/plugin.py" in modules and len(modules) > 1


def test_install_writes_the_tree_once_and_it_runs_from_any_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert sorted(install(root)) == sorted(root / f.relative_path for f in plugin_files())
    assert install(root) == []  # a second install writes nothing
    assert version(root / LAUNCHER)["supportedVersions"][-1] == "1.1.0"
    cached = sorted(p.name for p in (root / LIB_DIR / PACKAGE / "__pycache__").iterdir())
    assert any(name.startswith("plugin.") for name in cached)  # imported, so cached

    moved = shutil.move(root, tmp_path / "elsewhere")
    link = tmp_path / "bin" / "lab-cni"  # as a runtime's plugin directory may hold it
    link.parent.mkdir()
    link.symlink_to(Path(moved) / LAUNCHER)
    assert version(link) == version(Path(moved) / LAUNCHER)


def test_make_install_cni_needs_nothing_but_python3(tmp_path: Path) -> None:
    """`make install-cni` runs the module with the system Python, without the virtualenv."""
    subprocess.run([SYSTEM_PYTHON, "-m", "bootstrap.cni.install", str(tmp_path)], cwd=REPO,
                   env={"PYTHONDONTWRITEBYTECODE": "1"}, check=True, capture_output=True)
    assert all((tmp_path / f.relative_path).read_bytes() == f.data for f in plugin_files())
    assert (tmp_path / LAUNCHER).stat().st_mode & 0o777 == 0o755


def test_the_digest_follows_every_byte_path_and_mode() -> None:
    files = plugin_files()
    digest = tree_sha256(files)
    path, data, mode = files[0].relative_path, files[0].data, files[0].mode
    for changed in (PluginFile(path, data + b"\n", mode), PluginFile(path + "x", data, mode),
                    PluginFile(path, data, 0o700)):
        assert tree_sha256([changed, *files[1:]]) != digest

"""The package boundaries that the layout promises, read from the source (no imports run).

infra/ says what exists and imports nothing of the bootstrap or the lab; bootstrap/ configures
and checks nodes and imports nothing of the lab; no module imports another in a circle; the
CNI plugin, which runs on nodes, imports only the standard library.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("infra", "bootstrap", "lab")
PLUGIN_DIR = REPO / "bootstrap" / "cni" / "lab_cni"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module the file imports, anywhere in it (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in files and m != name}
            for name, path in files.items()}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("infra", ("bootstrap", "lab")),
    ("bootstrap", ("lab",)),
])
def test_a_layer_imports_nothing_of_the_layers_built_on_it(package: str,
                                                           forbidden: tuple[str, ...]) -> None:
    crossing = sorted(f"{module} imports {target}"
                      for module, targets in project_graph().items()
                      if module.split(".")[0] == package
                      for target in targets if target.split(".")[0] in forbidden)
    assert crossing == []


def test_bootstrap_reads_no_file_of_the_lab() -> None:
    """No path into lab/ is spelled in bootstrap/ (`... / "lab" / ...`, "lab/x.py")."""
    def lab_paths(path: Path) -> list[str]:
        return [node.value for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and (node.value == "lab" or node.value.startswith("lab/"))]
    readers = {str(p.relative_to(REPO)): found for p in (REPO / "bootstrap").rglob("*.py")
               if (found := lab_paths(p))}
    assert readers == {}


def test_no_module_imports_another_in_a_circle() -> None:
    graph = project_graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_plugin_imports_only_the_standard_library() -> None:
    own = {module_name(p) for p in PLUGIN_DIR.rglob("*.py")} | {p.stem for p in
                                                                PLUGIN_DIR.glob("*.py")}
    outside = sorted(f"{path.name}: {module}" for path in PLUGIN_DIR.rglob("*.py")
                     for module in imported_modules(path)
                     if module.split(".")[0] not in sys.stdlib_module_names
                     and module not in own and module.split(".")[0] not in own)
    assert PLUGIN_DIR.is_dir() and outside == []

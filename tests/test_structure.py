"""The package's import graph: layered (layers -> models -> data/engine -> deploy -> CLI), with no circle, read
from the source of every module, imports inside functions included; and every module imports alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "compactnets"
# A module may import its own floor or below. The root package sits above deploy (deploy/onnx reads __version__).
FLOORS = {
    "errors": 0, "safe_pickle": 0, "cpu": 0, "counting": 0, "openvino_cpu": 0,
    "checkpoint": 1, "layers": 1,
    "data": 2,
    "models": 3,
    "engine": 4, "profiler": 4, "convert": 4, "timm_bridge": 4,
    "deploy": 5, "__init__": 5,
    "cli": 6, "__main__": 7,
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The compactnets modules ``path`` imports (``from . import x`` names a submodule when one exists)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("compactnets"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("compactnets")}
    return found - {name}


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS["__init__"] if len(parts) == 1 else FLOORS[parts[1]]


def test_every_module_has_a_floor_and_no_import_runs_back_up():
    up = [
        f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if _floor(target) > _floor(module)
    ]
    assert not up, up


def test_the_import_graph_has_no_circle():
    # a package imports its submodules and they import siblings, never the package's own __init__ back
    try:
        order = list(TopologicalSorter(GRAPH).static_order())
    except CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")
    assert set(order) >= set(MODULES) and len(MODULES) > 50


def test_the_graph_is_read_from_the_code():
    """The reader sees what it must: a check that cannot fail would prove nothing."""
    assert "compactnets.models._registry" in GRAPH["compactnets.models.nin"]
    assert "compactnets.models._builder" in GRAPH["compactnets.models._factory"]
    assert "compactnets.data.classes" in GRAPH["compactnets.models._builder"]  # an import inside a function
    assert not GRAPH["compactnets.errors"]


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    def fails(module: str) -> str | None:
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        return f"{module}: {result.stderr.strip().splitlines()[-1]}" if result.returncode else None

    with ThreadPoolExecutor(2) as pool:  # two interpreters at a time: the CI machine's cores
        failures = [f for f in pool.map(fails, [m for m in MODULES if not m.endswith("__main__")]) if f]
    assert not failures, failures

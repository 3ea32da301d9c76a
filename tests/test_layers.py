"""The package reads as the five stops and its imports run one way: every module (function-level imports
too) imports only from its own layer or the layers below it; quality/ and flows/ never import each other."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llmbus"

# Bottom to top: a module may import only from its own line or the lines above it.
LAYERS: list[set[str]] = [
    {"errors", "settings", "redact", "extras", "embed", "pages", "telemetry"},  # shared helpers (pages: the one
    # base template the report and the web UIs extend; extras: the optional packages, imported only through
    # `require`; telemetry: OpenTelemetry spans and logging records)
    {"task"},
    {"train"},  # encoder training: read by providers/encoder.py, used by trained judges and students
    {"providers"},
    {"store"},
    {"run"},
    {"advise"},
    {"quality", "flows"},
    {"distill", "experiments"},  # stop 5, and stop 2's compare and run browser (above quality's eval)
    {"serve"},
    {"web"},
    {"project"},  # the public API's Project: the stops as methods (under the CLI, over every stop)
    {"cli", "__init__", "testing"},  # the package root's lazy API sits on top with the CLI
]
APART = {frozenset({"quality", "flows"})}  # same layer, but neither imports the other


def _unit(module: str) -> str:
    """The layer unit of a dotted module: its subpackage, or the root module's own name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _rank(unit: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if unit in layer:
            return rank
    raise AssertionError(f"llmbus.{unit} is in no layer: add it to LAYERS in tests/test_layers.py")


def _module_name(path: Path) -> tuple[str, str]:
    """(dotted module name, dotted package a relative import resolves against)."""
    parts = ["llmbus", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _is_module(dotted: str) -> bool:
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(source: str, package: str) -> set[str]:
    """Every llmbus module the source imports, anywhere in it, relative imports resolved against `package`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {name for name in found if name == "llmbus" or name.startswith("llmbus.")}


def graph() -> dict[str, set[str]]:
    """Each llmbus module and the llmbus modules it imports."""
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, package = _module_name(path)
        edges[module] = imports(path.read_text(encoding="utf-8"), package) - {module}
    return edges


def violations() -> set[tuple[str, str]]:
    """(importer, imported) pairs that import upward or across quality/flows."""
    bad = set()
    for module, targets in graph().items():
        mine = _unit(module)
        for target in targets:
            theirs = _unit(target)
            if theirs == mine:
                continue
            if _rank(theirs) > _rank(mine) or frozenset({mine, theirs}) in APART:
                bad.add((module, target))
    return bad


def test_imports_run_one_way():
    found = sorted(violations())
    assert not found, "imports against the layer order:\n" + "\n".join(f"  {a} imports {b}" for a, b in found)


def cycles() -> set[tuple[str, ...]]:
    """Groups of modules that import each other, directly or around a loop (Tarjan's strongly connected
    components of more than one module)."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.add(tuple(sorted(group)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    found = sorted(cycles())
    assert not found, "import cycles:\n" + "\n".join("  " + " <-> ".join(group) for group in found)


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        _rank(_unit(_module_name(path)[0]))


MAX_MODULE_LINES = 400  # past this a module does several things: split it by idea (STYLE.md)


def oversized(limit: int = MAX_MODULE_LINES) -> dict[str, int]:
    """Modules under src/llmbus longer than `limit` lines, with their line counts."""
    counts = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
              for path in PACKAGE.rglob("*.py")}
    return {path: n for path, n in sorted(counts.items()) if n > limit}


def test_no_module_is_over_400_lines():
    found = oversized()
    assert not found, "modules over 400 lines (split them by idea):\n" + "\n".join(
        f"  {path}: {n}" for path, n in found.items())
    assert oversized(100), "the counter sees every module"  # a counter that finds nothing would always pass


def test_the_checker_sees_function_level_and_relative_imports():
    source = "def f():\n    from ..cli import app\n    import llmbus.serve.gateway\n    from . import base\n"
    assert imports(source, "llmbus.providers") == {"llmbus.cli.app", "llmbus.serve.gateway", "llmbus.providers.base"}


def test_the_package_root_is_a_lazy_public_api():
    code = ("import sys, llmbus; heavy = {'sqlalchemy', 'torch', 'llmbus.store'} & set(sys.modules); "
            "print(sorted(heavy)); from llmbus.store import Store; from llmbus.task.spec import load_spec; "
            "from llmbus.flows.engine import flow; assert llmbus.Store is Store and llmbus.load_spec is load_spec "
            "and llmbus.flow is flow; print(sorted(llmbus.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert done.returncode == 0, done.stderr
    loaded, names = done.stdout.splitlines()
    assert loaded == "[]"  # `import llmbus` loads none of the stops
    assert "run_task" in names and "open_provider" in names and "__version__" in names
    assert (PACKAGE / "py.typed").is_file()


def test_every_package_is_found_and_ships_its_templates():
    for folder in {p.parent for p in PACKAGE.rglob("*.py")}:
        assert (folder / "__init__.py").is_file(), f"{folder}: no __init__.py, so packages.find leaves it out"
    data = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for package, globs in data.items() for pattern in globs
               for path in PACKAGE.parent.joinpath(*package.split(".")).glob(pattern)}
    templates = {p for p in PACKAGE.rglob("*") if p.is_file() and "templates" in p.parts}
    assert templates and templates <= shipped, sorted(str(p) for p in templates - shipped)
    assert PACKAGE / "py.typed" in shipped

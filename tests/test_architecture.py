"""The package's shape, checked: no import cycles, layers import only downwards, short functions.

The import graph is read from the source (ast), counting imports inside functions too:
a lazy import still makes two modules depend on each other, it only hides the cycle
until run time. `if TYPE_CHECKING:` blocks are left out (they never run).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stl_bench

ROOT = Path(stl_bench.__file__).parent
# Front ends: they may import the whole core; the core never imports them. The digits
# demo is one: it runs the pipeline through the CLI's own commands, as a user would.
FRONT_ENDS = ("stl_bench.commands", "stl_bench.ui", "stl_bench.cli", "stl_bench.__main__", "stl_bench.demo")
OUTSIDE = ("app", "benchmarks", "tests")
# What each layer may not import (a layer's own modules and those below it are allowed).
FORBIDDEN = {
    "stl_bench.fan": ("stl_bench.data", "stl_bench.stl", "stl_bench.train", "stl_bench.evaluate",
                      "stl_bench.deploy", "stl_bench.serve", "stl_bench.demo"),
    "stl_bench.data": ("stl_bench.stl", "stl_bench.train", "stl_bench.evaluate", "stl_bench.deploy",
                       "stl_bench.serve", "stl_bench.demo"),
    "stl_bench.stl": ("stl_bench.train", "stl_bench.evaluate", "stl_bench.deploy", "stl_bench.serve",
                      "stl_bench.demo"),
    "stl_bench.evaluate": ("stl_bench.train", "stl_bench.serve", "stl_bench.demo"),
    "stl_bench.deploy": ("stl_bench.train", "stl_bench.demo"),
    "stl_bench.train": ("stl_bench.evaluate", "stl_bench.deploy", "stl_bench.serve", "stl_bench.demo"),
}
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `name` imports (resolved to a module of the package where it is one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for child in node.body for n in ast.walk(child)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m.split(".")[0] in ("stl_bench", *OUTSIDE)}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycle_inside_the_package():
    assert _cycles(_graph()) == []


def test_the_core_never_imports_front_ends_or_outside_code():
    bad = sorted(f"{m} imports {t}" for m, targets in _graph().items() if not _under(m, FRONT_ENDS)
                 for t in targets if _under(t, FRONT_ENDS) or t.split(".")[0] in OUTSIDE)
    assert bad == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    bad = sorted(f"{m} imports {t}" for m, targets in _graph().items() if _under(m, (layer,))
                 for t in targets if _under(t, FORBIDDEN[layer]))
    assert bad == []


def test_deploy_reads_files_without_the_exporter_and_dispatches_in_one_place():
    graph = _graph()
    backends = {"stl_bench.deploy.onnx_runner", "stl_bench.deploy.tensorrt_runner", "stl_bench.serve.http_runner"}
    exporter = {"stl_bench.deploy.export_onnx", "stl_bench.deploy.graph_rewrites", "stl_bench.deploy.parity"}
    assert not graph["stl_bench.deploy.runner"] & (backends | exporter | {"stl_bench.deploy.open"})
    assert not {m for m in graph["stl_bench.deploy.onnx_format"] if m.startswith("stl_bench.deploy")}, \
        "the file format imports no other deploy module"
    for reader in (*backends, "stl_bench.deploy.tensorrt", "stl_bench.serve.triton_repo"):
        assert not graph[reader] & exporter, f"{reader} must read files without the exporter"
    assert backends <= graph["stl_bench.deploy.open"]


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _long_functions() -> list[tuple[int, str]]:
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                found.append((length, f"{name}.{node.name} ({path.relative_to(ROOT.parent)}:{node.lineno})"))
    return sorted(found, reverse=True)


def test_no_function_is_longer_than_a_screen():
    assert [f for f in _long_functions() if f[0] > MAX_FUNCTION_LINES] == []

"""The deploy/ and serve/ import graph: no cycles, base types below the backends.

Read from the source (every `import`, also those inside functions), so a lazy import
that closes a cycle is caught as well as a top-level one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import stl_bench

ROOT = Path(stl_bench.__file__).parent
PACKAGES = ("deploy", "serve")


def _module_name(path: Path) -> str:
    return ".".join(("stl_bench", *path.relative_to(ROOT).with_suffix("").parts))


def _imports(path: Path) -> set[str]:
    """Every stl_bench module `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stl_bench"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from stl_bench.deploy import runner`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("stl_bench"))
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py"]
    modules = {_module_name(p): p for p in files}
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles_in_deploy_and_serve():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_layers_of_deploy():
    graph = _graph()
    backends = {"stl_bench.deploy.onnx_runner", "stl_bench.deploy.tensorrt_runner", "stl_bench.serve.http_runner"}
    exporter = {"stl_bench.deploy.export_onnx", "stl_bench.deploy.graph_rewrites", "stl_bench.deploy.parity"}
    assert not graph["stl_bench.deploy.runner"] & (backends | exporter | {"stl_bench.deploy.open"})
    assert not graph["stl_bench.deploy.onnx_format"], "the file format imports no other deploy module"
    for reader in (*backends, "stl_bench.deploy.tensorrt", "stl_bench.serve.triton_repo"):
        assert not graph[reader] & exporter, f"{reader} must read files without the exporter"
    assert backends <= graph["stl_bench.deploy.open"]

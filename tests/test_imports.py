"""No import cycles among the modules of `engine/` and `kernels/` (issue 14's bar), and `kernels/`
imports nothing from `engine/`.

    .venv/bin/python -m pytest tests/test_imports.py -q

The graph is read from the source with `ast`, nothing is imported. An edge A -> B exists when A
has an `import B`, `from B import x` or `from pkg import B` (B a module of the two packages),
relative forms resolved, anywhere in A: at module level *and* inside functions, because a
deferred import is still a dependency (the two cycles issue 14 found in `kernels/` were
deferred imports one way and module-level the other). Imports under `if TYPE_CHECKING:` are left
out: they never run. `from pkg import name` where `name` is not a submodule is an edge to `pkg`
(its `__init__`). Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`; those implicit
edges are left out, as import-linter does.

A failure prints each cycle as `a -> b -> ... -> a`, with the file and line of every edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels")

# (importer, imported) -> "file:line" of the first import statement making that edge
Edges = dict[tuple[str, str], str]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of PACKAGES: dotted name -> file."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, outside `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from X import ...` reads from."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its closest enclosing module that is one of ours (import a.b.c -> a.b.c or a.b)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def module_edges(importer: str, source: str, is_package: bool, modules: dict[str, Path], where: str) -> Edges:
    """The edges out of one module, given its source text."""
    edges: Edges = {}
    for node in _imports(ast.parse(source, filename=where)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = _resolve_from(node, importer, is_package)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            known = _known(target, modules)
            if known is not None and known != importer:
                edges.setdefault((importer, known), f"{where}:{node.lineno}")
    return edges


def import_edges(modules: dict[str, Path]) -> Edges:
    edges: Edges = {}
    for importer, path in modules.items():
        where = str(path.relative_to(REPO))
        edges.update(module_edges(importer, path.read_text(), path.name == "__init__.py", modules, where))
    return edges


def find_cycles(nodes: list[str], edges: Edges) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module,
    or a self-loop; Tarjan's algorithm, iterative."""
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in sorted(edges):
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    return [_cycle_in(comp, graph) for comp in components]


def _cycle_in(component: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest closed path through the component's first module (breadth-first)."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in graph[node]:
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")


def describe(cycle: list[str], edges: Edges) -> str:
    hops = [f"    {a} -> {b}   ({edges[(a, b)]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n" + "\n".join(hops)


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], Edges]:
    modules = all_modules()
    return modules, import_edges(modules)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package, graph):
    """No cycle whose modules lie in `package` (cycles through both packages fail for each)."""
    modules, edges = graph
    cycles = find_cycles(sorted(modules), edges)
    mine = [c for c in cycles if any(m == package or m.startswith(package + ".") for m in c)]
    assert not mine, f"{len(mine)} import cycle(s) in {package}/:\n" + "\n".join(describe(c, edges) for c in mine)


def test_kernels_import_nothing_from_engine(graph):
    _, edges = graph
    bad = [f"{a} -> {b} ({where})" for (a, b), where in edges.items() if a.startswith("kernels") and b.startswith("engine")]
    assert not bad, "kernels/ must not import engine/: " + "; ".join(bad)


def test_the_graph_sees_deferred_relative_and_from_package_imports():
    """The reader itself, on the forms it must resolve (a cycle it must report, one it must not)."""
    modules = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py"), "p.c": Path("p/c.py")}
    sources = {
        "p": "",
        "p.a": "from p.b import f\n",
        "p.b": "def f():\n    from . import c\n",  # deferred, relative, `from pkg import mod`
        "p.c": "from typing import TYPE_CHECKING\nimport p.a as a\nif TYPE_CHECKING:\n    from p import b\n",
    }
    edges: Edges = {}
    for name, src in sources.items():
        edges.update(module_edges(name, src, modules[name].name == "__init__.py", modules, name))
    assert set(edges) == {("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a")}  # TYPE_CHECKING edge left out
    assert find_cycles(sorted(modules), edges) == [["p.a", "p.b", "p.c", "p.a"]]
    del edges[("p.c", "p.a")]
    assert find_cycles(sorted(modules), edges) == []

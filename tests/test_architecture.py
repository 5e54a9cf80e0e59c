"""The shape of the package (issue 28): no import cycles, tools outside the analyses, one device rule.

The import graph is read from the source (``ast``), not from ``sys.modules``, so an
import inside a function counts as much as one at the top of a module:

- ``import s3viz.x`` and ``from s3viz.x import y`` (absolute or relative) are edges
  to ``s3viz.x``, or to ``s3viz.x.y`` when that is a submodule;
- a name a package re-exports (``from .stats import ProbeStats`` in its
  ``__init__``, or its lazy ``_EXPORTS`` table, :mod:`s3viz._lazy`) resolves to the
  module that defines it, and the package has an edge to every module it exports
  from (lazily or not) and every submodule in its ``_SUBMODULES``;
- a module's edge to a package that holds it is left out: Python imports the
  parents of every module first anyway, and a package re-exporting its own
  submodules is how packages are written. A cycle through a package's
  ``__init__`` that leaves the package (``A -> s3viz.probe -> s3viz.probe.weighted
  -> A``) still counts.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "s3viz"

# Scripts and reports: they may import any analysis, no analysis may import them.
TOOLS = {"s3viz.zoo.train_tiny", "s3viz.demo", "s3viz.report"}
CLI = "s3viz.run"  # the command line: may import anything, imported by nothing

# The one module that asks torch whether CUDA is there.
DEVICE_MODULE = "s3viz._device"

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict:
    """module name -> (path, parsed tree) for every module of s3viz."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return out


SOURCES = _sources()
MODULES = set(SOURCES)


def _is_package(name: str) -> bool:
    return SOURCES[name][0].name == "__init__.py"


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _literal_dict(tree: ast.Module, name: str) -> dict:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _reexports(package: str) -> dict:
    """name -> defining submodule, for the names ``package`` hands out (eagerly or lazily)."""
    path, tree = SOURCES[package]
    table = {n: f"{package}.{m}" for n, m in _literal_dict(tree, "_EXPORTS").items()}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = _base(package, node)
            if base.startswith(package + "."):
                for alias in node.names:
                    table[alias.asname or alias.name] = base
    return table


REEXPORTS = {m: _reexports(m) for m in MODULES if _is_package(m)}


def _targets(module: str, node) -> list:
    """The s3viz modules one import statement reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "s3viz"]
    base = _base(module, node)
    if base.split(".")[0] != "s3viz":
        return []
    out = []
    for alias in node.names:
        if f"{base}.{alias.name}" in MODULES:
            out.append(f"{base}.{alias.name}")
        elif alias.name in REEXPORTS.get(base, {}):
            out += [base, REEXPORTS[base][alias.name]]
        else:
            out.append(base)
    return out


def _graph() -> dict:
    """module -> {imported module: line of the first import}."""
    graph = {m: {} for m in MODULES}
    for module, (_, tree) in SOURCES.items():
        edges = graph[module]
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, node):
                    assert target in MODULES, f"{module}:{node.lineno} imports {target}, not a module"
                    edges.setdefault(target, node.lineno)
        if _is_package(module):
            _, tree = SOURCES[module]
            lazy = set(_literal_dict(tree, "_EXPORTS").values())
            lazy |= set(ast.literal_eval(next(
                (n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "_SUBMODULES" for t in n.targets)),
                ast.Tuple(elts=[], ctx=ast.Load()))))
            for sub in lazy:  # relative to the package, as lazy_exports imports them
                edges.setdefault(importlib.util.resolve_name(f".{sub}", module), 0)
        # Python imports every parent package first; the edge back to one adds nothing.
        for target in list(edges):
            if module.startswith(target + "."):
                del edges[target]
        edges.pop(module, None)
    return graph


GRAPH = _graph()


def _components(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def _cycles(graph: dict) -> list:
    """One cycle in each strongly connected component."""
    return [_cycle_in(graph, comp) for comp in _components(graph)]


def _cycle_in(graph: dict, comp: set) -> list:
    """One cycle inside a strongly connected component, as a path that returns to its start."""
    start = min(comp)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in comp)
        back = [w for w in nxt if w in seen]
        if back:
            i = path.index(back[0])
            return path[i:] + [back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


def _show(graph: dict, cycle: list) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def _reachable(graph: dict, start: str) -> dict:
    """module -> the module it was first reached from, for everything ``start`` imports."""
    parent, todo = {start: None}, [start]
    while todo:
        v = todo.pop()
        for w in sorted(graph[v]):
            if w not in parent:
                parent[w] = v
                todo.append(w)
    return parent


def test_graph_sees_imports_inside_functions():
    # the graph must count an import that a function makes (s3viz.demo imports the
    # report tool only in main()), a lazy table, and a name a package re-exports
    assert "s3viz.report" in GRAPH["s3viz.demo"]
    assert "s3viz.probe.weighted" in GRAPH["s3viz"]
    assert "s3viz.zoo" in GRAPH["s3viz"]
    assert "s3viz.probe.stats" in GRAPH["s3viz.probe"]


def test_cycle_search_finds_a_cycle():
    toy = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    (cycle,) = _cycles(toy)
    assert cycle == ["a", "b", "c", "a"]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    comps = _components(GRAPH)
    assert not comps, "import cycles:\n" + "\n".join(
        f"{_show(GRAPH, _cycle_in(GRAPH, c))}\n  (modules in the cycle: {sorted(c)})" for c in comps)


@pytest.mark.parametrize("tool", sorted(TOOLS | {CLI}))
def test_no_analysis_imports_a_tool(tool):
    assert tool in MODULES
    users = []
    for module in sorted(MODULES - TOOLS - {CLI}):
        parent = _reachable(GRAPH, module)
        if tool in parent:
            chain = [tool]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])
            users.append(" -> ".join(reversed(chain)))
    assert not users, f"analyses that import the tool {tool}:\n" + "\n".join(users)


def _cuda_checks() -> set:
    """(module, line) of every ``torch.cuda.is_available`` (called or passed) in s3viz."""
    found = set()
    for module, (_, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "is_available"
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "cuda"):
                found.add((module, node.lineno))
    return found


def test_one_device_rule():
    found = _cuda_checks()
    assert any(m == DEVICE_MODULE for m, _ in found), "the scan found no check in s3viz._device"
    elsewhere = sorted(f for f in found if f[0] != DEVICE_MODULE)
    assert not elsewhere, ("torch.cuda.is_available() outside s3viz._device (pick the device "
                           f"with s3viz._device.resolve_device): {elsewhere}")

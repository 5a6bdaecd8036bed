"""Imports point one way (DESIGN.md, "Parts and layout"), and no module imports itself back.

The imports are read from the source with `ast`, not by importing anything.
Module-level imports, those inside functions and those under
`if TYPE_CHECKING:` count alike: a lazy import still ties two modules
together, and two modules that each need the other's types are one concept
split in two (the issue that asked for this test named such a pair,
ztunnel's inbound and proxy, whose one direction was a TYPE_CHECKING import).
Break such a cycle with a Protocol or a plain type in the lower module.
Imports spelled as strings (importlib, the CLI's table of subcommands) are
not seen.

- No import cycle among the project's own modules: a module never imports a
  module that, directly or through others, imports it.
- The components (control_plane, node_agent, ztunnel, waypoint, bench) import
  `shoal` and never each other; `shoal/` imports none of them, except the CLI
  (`shoal/cli/`), the one place that starts them. `bench` measures the parts,
  so it may drive one in process (as `bench.waypoint_core` drives the
  waypoint's request path); no part ever imports `bench`.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("control_plane", "node_agent", "ztunnel", "waypoint", "bench")
PACKAGES = ("shoal", *COMPONENTS)
CLI = "shoal.cli"


@dataclass(frozen=True)
class Import:
    source: str      # the importing module
    target: str      # the imported project module
    line: int

    def __str__(self) -> str:
        return f"{module_path(self.source)}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


MODULES = project_modules()


def module_path(name: str) -> str:
    return str(MODULES[name].relative_to(ROOT))


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, in functions and under `if TYPE_CHECKING:` too."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str) -> list[Import]:
    """The project modules `module` imports. `from pkg import sub` counts as importing pkg.sub when
    sub is a module, else pkg; parent packages of a dotted name are not counted (Python runs their
    __init__ first, but that is the package's structure, not an import between two modules)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = (node.module or "") if node.level == 0 else _resolve_relative(
                module, path.name == "__init__.py", node.level, node.module)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]   # `import a.b.attr` style: the nearest module
            if target in MODULES and target != module:
                found.append(Import(module, target, node.lineno))
    return found


def import_graph() -> dict[str, list[Import]]:
    return {module: imports_of(module) for module in MODULES}


def cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One shortest cycle through each strongly connected group of modules (Tarjan, then BFS)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[set[str]] = []
    counter = 0

    def connect(start: str) -> None:
        nonlocal counter
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            edge = next(edges, None)
            if edge is not None:
                if edge.target not in index:
                    index[edge.target] = low[edge.target] = counter
                    counter += 1
                    stack.append(edge.target)
                    on_stack.add(edge.target)
                    work.append((edge.target, iter(graph[edge.target])))
                elif edge.target in on_stack:
                    low[node] = min(low[node], index[edge.target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return [_shortest_cycle(graph, group) for group in groups]


def _shortest_cycle(graph: dict[str, list[Import]], group: set[str]) -> list[Import]:
    start = min(group)
    came_by: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for edge in graph[node]:
            if edge.target not in group:
                continue
            if edge.target == start:
                path = [edge]
                while path[0].source != start:
                    path.insert(0, came_by[path[0].source])
                return path
            if edge.target not in came_by:
                came_by[edge.target] = edge
                queue.append(edge.target)
    raise AssertionError(f"no cycle found in {sorted(group)}")


def component_of(module: str) -> str:
    top = module.split(".")[0]
    if top == "shoal":
        return CLI if module == CLI or module.startswith(CLI + ".") else "shoal"
    return top


def test_the_scanner_sees_every_package_and_lazy_imports():
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    graph = import_graph()
    # shoal.cli.node_agent imports the node agent inside its main(): a function-level import counts.
    assert "node_agent.agent" in {i.target for i in graph["shoal.cli.node_agent"]}
    assert [component_of(m) for m in ("shoal.cli", "shoal.cli.local", "shoal.local.cli", "ztunnel.main")] == \
        [CLI, CLI, "shoal", "ztunnel"]


def test_the_cycle_finder_finds_each_cycle_once_and_shortest():
    def graph(edges: str) -> dict[str, list[Import]]:
        out: dict[str, list[Import]] = {}
        for pair in edges.split():
            source, target = pair.split(">")
            out.setdefault(source, []).append(Import(source, target, 1))
            out.setdefault(target, [])
        return out

    assert cycles(graph("a>b b>c c>d")) == []
    (found,) = cycles(graph("a>b b>c c>a c>d d>e e>c"))
    assert [edge.target for edge in found] in (["c", "a"], ["b", "c", "a"])  # from "a", the shortest way back
    assert len(cycles(graph("a>b b>a x>y y>z z>x"))) == 2


def test_no_module_imports_itself_back():
    found = cycles(import_graph())
    if found:
        pytest.fail("import cycles:\n" + "".join(
            "  " + " -> ".join([cycle[0].source, *(edge.target for edge in cycle)]) + "\n"
            + "".join(f"      {edge}\n" for edge in cycle) for cycle in found))


def test_components_import_shoal_and_never_each_other():
    wrong = []
    for module, found in import_graph().items():
        here = component_of(module)
        for edge in found:
            there = component_of(edge.target)
            if there in COMPONENTS and there != here and here not in (CLI, "bench"):
                wrong.append(f"  {edge} ({'shoal/' if here == 'shoal' else here} -> {there})")
    if wrong:
        pytest.fail("a component imports another component, or shoal/ outside shoal/cli/ imports a component "
                    "(shared code belongs in shoal/):\n" + "\n".join(sorted(wrong)))

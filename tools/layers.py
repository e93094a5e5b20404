"""Print the package layers with each package's imports; exit 1 on any break of the import rule.

The rule (docs/architecture.md, the table of ``RULES``): a package imports only the packages
listed for it, which sit in lower layers; nothing imports ``simnet`` but ``verihive/cli.py``
(the ``--byzantine-*`` flags) and the tests; and no module imports itself through others, at
any depth, within a package or across packages.

Every ``.py`` file under the packages is parsed, never imported: each ``import`` and
``from ... import`` counts, at module level, inside a function (a deferred import) or under
``if TYPE_CHECKING:`` alike. Relative imports are resolved; ``from a import b`` names the module
``a.b`` when that module exists. Imports built from strings (``importlib.import_module``) are
not seen.

    ./dev python -m tools.layers           # this repository
    ./dev python -m tools.layers ROOT      # another tree holding the same packages
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Rules:
    """Layers (layer 0 first) and the packages each package may import besides itself.

    ``exceptions`` maps a module to the extra packages that module alone may import.
    """

    layers: tuple[tuple[str, ...], ...]
    may_import: Mapping[str, frozenset[str]]
    exceptions: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def packages(self) -> tuple[str, ...]:
        """Return every package, layer 0 first."""
        return tuple(p for layer in self.layers for p in layer)

    def is_allowed(self, module: str, package: str) -> bool:
        """Return whether ``module`` may import a module of ``package``."""
        own = package_of(module)
        return (
            package == own
            or package in self.may_import.get(own, frozenset())
            or package in self.exceptions.get(module, frozenset())
        )


_CORES = frozenset({"merkle", "bft", "executor", "slashing", "trust"})
RULES = Rules(
    layers=(
        ("merkle",),
        ("bft",),
        ("trust", "executor", "slashing"),
        ("proto",),
        ("verihive", "simnet"),
    ),
    may_import={
        "merkle": frozenset(),
        "bft": frozenset({"merkle"}),
        "executor": frozenset({"bft", "merkle"}),
        "slashing": frozenset({"bft"}),
        "trust": frozenset({"bft", "slashing", "merkle"}),
        "proto": _CORES,
        "verihive": _CORES | {"proto"},
        "simnet": _CORES | {"proto", "verihive"},
    },
    exceptions={"verihive.cli": frozenset({"simnet"})},
)
"""The import rule of docs/architecture.md (the design's layout.md)."""


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` at ``path``:``line``.

    ``where``: ``module`` (runs at import time), ``function`` (deferred) or ``type-checking``.
    """

    source: str
    target: str
    path: str
    line: int
    where: str

    def describe(self) -> str:
        """Return ``path:line source -> target`` with where it sits when not at module level."""
        how = {"module": "", "function": " (in a function)", "type-checking": " (TYPE_CHECKING)"}
        return f"{self.path}:{self.line}  {self.source} -> {self.target}{how[self.where]}"


@dataclass(frozen=True)
class Graph:
    """The modules of the scanned packages and the imports between them."""

    modules: frozenset[str]
    imports: tuple[Import, ...]


def package_of(module: str) -> str:
    """Return the top-level package of the dotted ``module``."""
    return module.split(".", 1)[0]


def module_name(path: Path, root: Path) -> str:
    """Return the dotted module name of the file ``path`` under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def iter_sources(root: Path, packages: Iterable[str]) -> Iterator[Path]:
    """Yield every ``.py`` file under the ``packages`` that exist in ``root``, sorted."""
    for package in packages:
        base = root / package
        if base.is_dir():
            yield from sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _raw_imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Yield every import statement of ``tree`` with where it sits."""

    def walk(node: ast.AST, where: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, where
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, "function")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                inner = "function" if where == "function" else "type-checking"
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), inner)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), where)
            else:
                yield from walk(child, where)

    yield from walk(tree, "module")


def _resolve(name: str, modules: frozenset[str]) -> str:
    """Return the longest known module that ``name`` starts with (``name`` if none)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return name


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: frozenset[str]
) -> Iterator[str]:
    """Yield the modules that ``node`` in ``module`` imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield _resolve(alias.name, modules)
        return
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = here[: len(here) - (node.level - 1)]
        base = ".".join([*base_parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in modules else _resolve(base, modules)


def scan(root: Path, packages: Sequence[str] = RULES.packages) -> Graph:
    """Return the import graph of the ``packages`` under ``root``, between those packages only."""
    files = {module_name(p, root): p for p in iter_sources(root, packages)}
    modules = frozenset(files)
    ours = set(packages)
    found: set[Import] = set()
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(root).as_posix()
        is_package = path.name == "__init__.py"
        for node, where in _raw_imports(tree):
            for target in _targets(node, module, is_package, modules):
                if package_of(target) in ours and target != module:
                    found.add(Import(module, target, rel, node.lineno, where))
    return Graph(modules, tuple(sorted(found, key=lambda i: (i.path, i.line, i.target))))


def find_forbidden(graph: Graph, rules: Rules = RULES) -> list[Import]:
    """Return the imports that break ``rules``' table, in file order."""
    return [i for i in graph.imports if not rules.is_allowed(i.source, package_of(i.target))]


def _strongly_connected(nodes: Iterable[str], edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of the graph (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(nodes):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(start: str, members: set[str], edges: Mapping[str, set[str]]) -> list[str]:
    """Return a shortest path ``start -> ... -> start`` inside ``members``."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges.get(node, ())):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise ValueError(f"{start} is on no cycle")


@dataclass(frozen=True)
class Cycle:
    """Modules that import each other (a strongly connected set) and one shortest cycle."""

    members: tuple[str, ...]
    path: tuple[Import, ...]


def find_cycles(graph: Graph) -> list[Cycle]:
    """Return each set of modules that import each other, with one shortest cycle through it."""
    edges: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Import] = {}
    for i in graph.imports:
        edges.setdefault(i.source, set()).add(i.target)
        first.setdefault((i.source, i.target), i)
    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    cycles = []
    for component in _strongly_connected(nodes, edges):
        if len(component) < 2:
            continue
        path = _shortest_cycle(component[0], set(component), edges)
        steps = tuple(first[(a, b)] for a, b in pairwise(path))
        cycles.append(Cycle(tuple(component), steps))
    return cycles


def format_layers(graph: Graph, rules: Rules = RULES) -> list[str]:
    """Return the layers, top first, each package with the packages it imports.

    A forbidden import is marked ``!``; one allowed to a single module only names that module.
    """
    lines = []
    for number in reversed(range(len(rules.layers))):
        for k, package in enumerate(rules.layers[number]):
            used: dict[str, set[str]] = {}
            for i in graph.imports:
                if package_of(i.source) == package and package_of(i.target) != package:
                    used.setdefault(package_of(i.target), set()).add(i.source)
            shown = []
            for target in sorted(used):
                if target in rules.may_import.get(package, frozenset()):
                    shown.append(target)
                elif all(rules.is_allowed(s, target) for s in used[target]):
                    shown.append(f"{target} (only {', '.join(sorted(used[target]))})")
                else:
                    shown.append(f"{target}!")
            label = f"layer {number}" if k == 0 else ""
            lines.append(f"{label:8} {package:9} -> {', '.join(shown) or '(nothing of ours)'}")
    return lines


def report(graph: Graph, rules: Rules = RULES) -> tuple[list[str], int]:
    """Return the printed report of ``graph`` and the number of violations in it."""
    forbidden = find_forbidden(graph, rules)
    cycles = find_cycles(graph)
    deferred = sum(i.where == "function" for i in graph.imports)
    typing_only = sum(i.where == "type-checking" for i in graph.imports)
    lines = [
        "Package layers; imports point down only (docs/architecture.md).",
        "",
        *format_layers(graph, rules),
        "",
        f"{len(graph.modules)} modules, {len(graph.imports)} imports between them "
        f"({deferred} in functions, {typing_only} under TYPE_CHECKING).",
    ]
    count = len(forbidden) + len(cycles)
    if count == 0:
        lines.append("No violation: every import is allowed and there is no import cycle.")
        return lines, 0
    lines += ["", f"{count} violation{'s' if count != 1 else ''}:"]
    for i in forbidden:
        source = package_of(i.source)
        allowed = sorted(rules.may_import.get(source, frozenset())) or ["nothing of ours"]
        lines.append(f"  forbidden  {i.describe()}: {source} may import {', '.join(allowed)}")
    for cycle in cycles:
        lines.append(f"  cycle      among {', '.join(cycle.members)}; the shortest:")
        lines += [f"               {i.describe()}" for i in cycle.path]
    return lines, count


def main(argv: Sequence[str] | None = None) -> int:
    """Print the layers of the tree at ``ROOT`` (argument) and return 1 on any violation."""
    parser = argparse.ArgumentParser(prog="python -m tools.layers", description=__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=ROOT, help="tree to check")
    args = parser.parse_args(argv)
    lines, violations = report(scan(args.root.resolve()))
    print("\n".join(lines))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""The protocol core's module graph: no cycle; merkle a leaf. (docs/decisions.md, [reshape])

Every import counts, at any depth: top level, under ``if TYPE_CHECKING:`` and inside functions.
A deferred import that closes a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("bft", "merkle", "executor", "slashing", "trust", "proto", "simnet", "verihive")


def get_module_name(path: Path) -> str:
    """Return the dotted module name of ``path`` under the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def get_imports(path: Path) -> set[str]:
    """Return every module of ours that ``path`` imports, wherever the import sits."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from bft import thresholds`` names a module; ``from bft.x import y`` a member.
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in OURS)
    return found


def get_graph(package: str) -> dict[str, set[str]]:
    """Return ``package``'s modules, each with the modules of ours it imports."""
    modules = {get_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}
    everything = {get_module_name(p) for name in OURS for p in (ROOT / name).rglob("*.py")}
    return {
        name: {m for m in get_imports(path) if m in everything and m != name}
        for name, path in modules.items()
    }


def test_bft_modules_import_one_another_without_a_cycle():
    graph = get_graph("bft")
    inner = {name: {m for m in deps if m.startswith("bft")} for name, deps in graph.items()}
    try:
        order = list(TopologicalSorter(inner).static_order())
    except CycleError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"bft modules import in a cycle: {' -> '.join(exc.args[1])}")
    assert order.index("bft.measure") < order.index("bft.evidence") < order.index("bft.verifier")
    assert order.index("bft.confirmation") < order.index("bft.verifier")


def test_bft_imports_only_itself_and_merkle():
    outside = {
        f"{name} -> {m}"
        for name, deps in get_graph("bft").items()
        for m in deps
        if m.split(".")[0] not in ("bft", "merkle")
    }
    assert not outside


def test_merkle_is_a_leaf():
    graph = get_graph("merkle")
    assert {m for deps in graph.values() for m in deps if not m.startswith("merkle")} == set()


def test_the_verifiers_tables_live_in_bft():
    assert (ROOT / "bft" / "thresholds" / "torch-cpu-float32" / "torch-cpu-float32.json").exists()
    assert not (ROOT / "executor" / "thresholds").exists()
    assert not (ROOT / "executor" / "thresholds.py").exists()

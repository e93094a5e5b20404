"""The import rule of docs/architecture.md, checked by ``python -m tools.layers``.

The repository follows it; on small trees the checker reports a forbidden import, an import of
``simnet`` from anywhere but the CLI, and cycles through deferred, ``TYPE_CHECKING`` and
relative imports.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.layers import ROOT, RULES, find_cycles, find_forbidden, main, report, scan


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path: source) under ``root`` with an ``__init__.py`` in every folder."""
    for name, source in files.items():
        path = root / name
        for folder in path.relative_to(root).parents:
            if folder != Path("."):
                init = root / folder / "__init__.py"
                init.parent.mkdir(parents=True, exist_ok=True)
                init.touch()
        path.write_text(source)
    return root


def test_repository_follows_the_import_rule():
    lines, violations = report(scan(ROOT))
    assert violations == 0, "\n".join(lines)


def test_the_documented_command_prints_the_layers():
    done = subprocess.run(
        [sys.executable, "-m", "tools.layers"], cwd=ROOT, capture_output=True, text=True
    )
    _, violations = report(scan(ROOT))
    assert done.returncode == (1 if violations else 0), done.stderr
    for number, layer in enumerate(RULES.layers):
        assert f"layer {number}  {layer[0]} " in done.stdout


def test_allowed_tree_has_no_violation(tmp_path, capsys):
    root = make_tree(
        tmp_path,
        {
            "merkle/tree.py": "import hashlib\n",
            "bft/messages.py": "from merkle.tree import x\n",
            "executor/core.py": "import bft.messages\nfrom merkle import tree\n",
            "slashing/records.py": "from bft.messages import Vote\n",
            "trust/tombstones.py": "from slashing.records import SlashRecord\n",
            "verihive/cli.py": "from simnet.executors import MODES\n",
            "simnet/executors.py": "from executor.core import ExecutorCore\n",
            "simnet/localnet.py": "from verihive.localnet import Faults\n",
            "verihive/localnet.py": "import proto.convert\n",
            "proto/convert.py": "from slashing import records\nfrom trust import tombstones\n",
        },
    )
    graph = scan(root)
    assert find_forbidden(graph) == [] and find_cycles(graph) == []
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "simnet (only verihive.cli)" in out and "No violation" in out


def test_invalid_forbidden_import_is_reported(tmp_path, capsys):
    root = make_tree(
        tmp_path,
        {
            "merkle/tree.py": "import os\n\nfrom bft.errors import Reject\n",
            "bft/errors.py": "class Reject(Exception): ...\n",
        },
    )
    (bad,) = find_forbidden(scan(root))
    assert (bad.source, bad.target, bad.path, bad.line) == (
        "merkle.tree",
        "bft.errors",
        "merkle/tree.py",
        3,
    )
    assert main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "merkle    -> bft!" in out
    assert "forbidden  merkle/tree.py:3  merkle.tree -> bft.errors" in out


def test_invalid_simnet_import_outside_the_cli(tmp_path):
    root = make_tree(
        tmp_path,
        {
            "simnet/verifiers.py": "",
            "verihive/cli.py": "from simnet import verifiers\n",
            "verihive/localnet.py": "from simnet.verifiers import make_byzantine_verifier\n",
            "bft/quorum.py": "def f():\n    import simnet.verifiers\n",
        },
    )
    forbidden = find_forbidden(scan(root))
    assert [(i.source, i.target, i.where) for i in forbidden] == [
        ("bft.quorum", "simnet.verifiers", "function"),
        ("verihive.localnet", "simnet.verifiers", "module"),
    ]


def test_invalid_type_checking_import_counts(tmp_path):
    root = make_tree(
        tmp_path,
        {
            "bft/types.py": "",
            "merkle/tree.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from bft import types\n"
            ),
        },
    )
    (bad,) = find_forbidden(scan(root))
    assert (bad.target, bad.where, bad.line) == ("bft.types", "type-checking", 4)


def test_invalid_cycle_through_a_deferred_import(tmp_path, capsys):
    root = make_tree(
        tmp_path,
        {
            "bft/verifier.py": "def confirm():\n    from bft.confirmation import sign\n",
            "bft/evidence.py": "from bft.verifier import Thresholds\n",
            "bft/confirmation.py": "from bft.evidence import audit\n",
            "bft/types.py": "",
        },
    )
    graph = scan(root)
    assert find_forbidden(graph) == []
    (cycle,) = find_cycles(graph)
    assert cycle.members == ("bft.confirmation", "bft.evidence", "bft.verifier")
    assert [(i.source, i.target) for i in cycle.path] == [
        ("bft.confirmation", "bft.evidence"),
        ("bft.evidence", "bft.verifier"),
        ("bft.verifier", "bft.confirmation"),
    ]
    assert main([str(root)]) == 1
    assert "cycle      among bft.confirmation, bft.evidence, bft.verifier" in (
        capsys.readouterr().out
    )


def test_invalid_cycle_across_packages(tmp_path):
    root = make_tree(
        tmp_path,
        {
            "executor/thresholds.py": "import bft.verifier\n",
            "bft/verifier.py": "from executor.thresholds import load\n",
        },
    )
    graph = scan(root)
    assert [(i.source, i.target) for i in find_forbidden(graph)] == [
        ("bft.verifier", "executor.thresholds")
    ]
    (cycle,) = find_cycles(graph)
    assert cycle.members == ("bft.verifier", "executor.thresholds")


def test_invalid_cycle_through_relative_imports(tmp_path):
    root = make_tree(
        tmp_path,
        {
            "bft/a.py": "from . import b\n",
            "bft/b.py": "from .c import x\n",
            "bft/c.py": "from ..bft.a import y\n",
        },
    )
    (cycle,) = find_cycles(scan(root))
    assert cycle.members == ("bft.a", "bft.b", "bft.c")

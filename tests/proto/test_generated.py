"""The committed generated code is what the pinned generators produce from verihive.proto."""

from __future__ import annotations

from pathlib import Path

from proto.generate import OUTPUTS, ROOT, generate


def test_generated_code_is_reproducible(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert [p.name for p in fresh] == list(OUTPUTS)
    for path in fresh:
        committed = ROOT / "proto" / path.name
        stale = f"{path.name} is stale: run python -m proto.generate"
        assert committed.read_bytes() == path.read_bytes(), stale


def test_services_and_package_are_versioned() -> None:
    text = (ROOT / "proto" / "verihive.proto").read_text()
    assert "package verihive.v1;" in text
    for service in ("service Executor", "service Verifier", "service Assembler"):
        assert service in text

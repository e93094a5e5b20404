"""End to end with the real model, SmolLM2-135M-Instruct, over loopback gRPC."""

from __future__ import annotations

import json

import pytest

from verihive.cli import infer_main, verify_main

pytestmark = pytest.mark.slow

PROMPT = "What is the capital of France?"


def _run(capsys, *args: str) -> dict:
    capsys.readouterr()
    infer_main(["--json", "--max-new-tokens", "24", *args, PROMPT])
    return json.loads(capsys.readouterr().out)


def test_smollm2_answers_and_receipt_verifies(smollm2, capsys, tmp_path):
    path = tmp_path / "receipt.json"
    out = _run(capsys, "--receipt-out", str(path))
    assert out["accepted"] is True
    assert "Paris" in out["text"]
    assert out["model_id"] == smollm2.model_id.hex()
    assert all(v["max_error"] <= 1e-5 and v["max_margin"] <= 1e-3 for v in out["votes"])
    assert all(len(v["positions"]) == 4 for v in out["votes"])
    assert verify_main(["receipt", str(path)]) == 0


@pytest.mark.parametrize(
    "mode", ["int8-weights", "bf16-compute", "other-model", "tamper-tokens", "equivocate"]
)
def test_smollm2_byzantine_executor_is_caught(smollm2, capsys, mode):
    out = _run(capsys, "--byzantine-executor", mode)
    first, second = out["attempts"]
    # Whole-run cheats differ at every layer or every position: every verifier rejects.
    assert first["accepted"] is False and first["verdicts"] == ["REJECT"] * 4
    assert second["accepted"] is True and "Paris" in out["text"]

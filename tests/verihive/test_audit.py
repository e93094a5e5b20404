"""``bft-verify audit``: evidence files re-checked offline with the local model. [EVID.4]"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bft.evidence
import bft.thresholds
from bft.measure import Thresholds
from bft.messages import EvidenceCheck
from proto import convert
from proto import verihive_pb2 as pb
from verihive.cli import infer_main, verify_main

PROMPT = "What is the capital of France?"


def _evidence_file(capsys, tmp_path, mode: str, *args: str):
    path = tmp_path / f"{mode}.evidence"
    capsys.readouterr()
    infer_main(
        [
            "--json",
            "--model",
            "tiny",
            "--max-new-tokens",
            "8",
            "--byzantine-executor",
            mode,
            "--evidence-out",
            str(path),
            *args,
            PROMPT,
        ]
    )
    capsys.readouterr()
    return path


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("int8-weights", "layer"),
        ("tamper-tokens", "embedding"),
        ("bad-opening", "opening"),
        ("equivocate", "equivocation"),
    ],
)
def test_audit_proves_real_evidence(capsys, tmp_path, mode, check):
    path = _evidence_file(capsys, tmp_path, mode)
    assert verify_main(["audit", str(path), "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"proven: {check}:")


def test_audit_proves_real_sequence_evidence(capsys, tmp_path):
    # [SKETCH.5]: no openings in the file; the auditor re-runs its own prefill.
    path = _evidence_file(capsys, tmp_path, "bad-sketch", "--sequence-check", "1")
    message = pb.Evidence()
    message.ParseFromString(path.read_bytes())
    assert message.check == pb.CHECK_SEQUENCE and not message.HasField("response")
    assert verify_main(["audit", str(path), "--model", "tiny"]) == 0
    assert capsys.readouterr().out.startswith("proven: sequence:")


def test_audit_refuses_made_up_sequence_evidence(capsys, tmp_path):
    # bad-opening commits honest states (only its openings lie): its sketch fits the tokens.
    path = _evidence_file(capsys, tmp_path, "bad-opening")
    message = pb.Evidence()
    message.ParseFromString(path.read_bytes())
    evidence = convert.evidence_from_pb(message)
    made_up = dataclasses.replace(
        evidence, check=EvidenceCheck.SEQUENCE, response=None, position=0, measured=1.0
    )
    bad = tmp_path / "made-up-sequence.evidence"
    bad.write_bytes(convert.evidence_to_pb(made_up).SerializeToString())
    assert verify_main(["audit", str(bad), "--model", "tiny"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("not proven: sequence:") and "mismatches on 0 of" in out


def test_audit_refuses_made_up_evidence(capsys, tmp_path):
    # tamper-tokens keeps every layer consistent, so a layer claim against it is false: the
    # auditor re-executes the layer itself and finds it exact.
    path = _evidence_file(capsys, tmp_path, "tamper-tokens")
    message = pb.Evidence()
    message.ParseFromString(path.read_bytes())
    evidence = convert.evidence_from_pb(message)
    opened = {(o.tile.boundary, o.tile.chunk) for o in evidence.response.openings}
    num_chunks = evidence.signed.commitment.num_chunks
    layer = next(
        b
        for b in range(1, evidence.signed.commitment.num_layers + 1)
        if all((b, k) in opened and (b - 1, k) in opened for k in range(num_chunks))
    )
    made_up = dataclasses.replace(evidence, check=EvidenceCheck.LAYER, layer=layer, measured=1.0)
    bad = tmp_path / "made-up.evidence"
    bad.write_bytes(convert.evidence_to_pb(made_up).SerializeToString())
    assert verify_main(["audit", str(bad), "--model", "tiny"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("not proven: layer:") and "recomputes with error 0" in out


def test_audit_malformed_and_unknown_model(capsys, tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\xff\x00 not evidence")
    assert verify_main(["audit", str(garbage)]) == 2
    assert capsys.readouterr().out.startswith("malformed:")
    assert verify_main(["audit", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    path = _evidence_file(capsys, tmp_path, "int8-weights")
    assert verify_main(["audit", str(path), "--model", "smollm2"]) == 3
    assert "cannot audit" in capsys.readouterr().out


def test_audit_abstains_only_when_it_cannot_judge(capsys, tmp_path, monkeypatch):
    # CannotJudge is "cannot audit" (exit 3); any other error inside the audit (here a numpy
    # ValueError while re-executing the layer) is a crash, never an abstention. [EVID.4]
    path = _evidence_file(capsys, tmp_path, "int8-weights")
    monkeypatch.setattr(bft.thresholds, "load_thresholds", lambda: Thresholds(profile="x-float16"))
    assert verify_main(["audit", str(path), "--model", "tiny"]) == 3
    assert capsys.readouterr().out.startswith("cannot audit: no calibrated bands")
    monkeypatch.undo()

    def broken(*args, **kwargs):
        return np.add(np.ones((2, 3)), np.ones((4, 1, 2)))  # operands could not be broadcast

    monkeypatch.setattr(bft.evidence, "measure_layer", broken)
    with pytest.raises(ValueError, match="broadcast"):
        verify_main(["audit", str(path), "--model", "tiny"])
    assert "cannot audit" not in capsys.readouterr().out

"""End to end over loopback gRPC: bft-infer, receipts, byzantine executors. [ASM.1], [RECEIPT.2]"""

from __future__ import annotations

import base64
import json
import random

import pytest

from bft.errors import ProtocolError
from bft.receipt import check_receipt
from proto import convert
from simnet.executors import WHOLE_RUN_MODES
from verihive.cli import infer_main, verify_main
from verihive.receipts import receipt_from_json

PROMPT = "What is the capital of France?"


def _run_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    rc = infer_main(["--json", "--model", "tiny", "--max-new-tokens", "12", *args, PROMPT])
    out = json.loads(capsys.readouterr().out)
    assert rc == (0 if out["accepted"] else 1)
    return out


def test_honest_request_is_certified(capsys, tmp_path):
    path = tmp_path / "receipt.json"
    out = _run_json(capsys, "--receipt-out", str(path))
    assert out["accepted"] is True
    assert len(out["attempts"]) == 1
    assert len(out["votes"]) == 4 and all(v["verdict"] == "ACCEPT" for v in out["votes"])
    assert all(len(v["layers"]) == 2 for v in out["votes"])
    assert len(out["merkle_root"]) == 64
    assert out["receipt"]["commitment"]["commitment"]["merkle_root"]
    assert verify_main(["receipt", str(path)]) == 0
    assert capsys.readouterr().out.startswith("valid:")


@pytest.mark.parametrize("mode", WHOLE_RUN_MODES)
def test_whole_run_cheat_is_caught_and_honest_serves(capsys, mode):
    out = _run_json(capsys, "--byzantine-executor", mode)
    first, second = out["attempts"]
    assert first["accepted"] is False
    if mode == "replay":  # the assembler itself sees a commitment for another request
        assert first["verdicts"] == [] and "another request" in first["reason"]
    elif mode == "withhold":  # a liveness fault: no verdict against the executor
        assert first["verdicts"] == ["UNAVAILABLE"] * 4
    else:  # a whole-run cheat fails every verifier's checks, each with evidence
        assert first["verdicts"] == ["REJECT"] * 4
        assert all("evidence" in v for v in first["votes"])
    assert second["accepted"] is True and out["accepted"] is True
    assert out["executor"] == second["executor"] != first["executor"]


def test_every_flipped_byte_fails(capsys, tmp_path):
    path = tmp_path / "receipt.json"
    _run_json(capsys, "--receipt-out", str(path), "--max-new-tokens", "4")
    data = path.read_bytes()
    receipt = convert.receipt_from_pb(receipt_from_json(data))
    check_receipt(receipt)
    rng = random.Random(7)
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= rng.randrange(1, 256)
        with pytest.raises(ProtocolError):
            check_receipt(convert.receipt_from_pb(receipt_from_json(bytes(flipped))))


def test_invalid_receipt_cli_exit_codes(capsys, tmp_path):
    path = tmp_path / "receipt.json"
    _run_json(capsys, "--receipt-out", str(path), "--max-new-tokens", "4")
    obj = json.loads(path.read_text())
    obj["votes"] = obj["votes"][:2]  # fewer than 2f+1 ACCEPTs
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")
    assert verify_main(["receipt", str(bad)]) == 1
    assert "needs 3" in capsys.readouterr().out
    assert verify_main(["receipt", str(tmp_path / "missing.json")]) == 2
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00not json")
    assert verify_main(["receipt", str(garbage)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("invalid:") for line in lines)


def test_human_summary(capsys):
    capsys.readouterr()
    assert infer_main(["--model", "tiny", "--max-new-tokens", "4", PROMPT]) == 0
    out = capsys.readouterr().out
    for needle in ("verification:", "merkle root", "accepted     yes", "max error", "time"):
        assert needle in out


def test_receipt_pinned_validator_set(capsys, tmp_path):
    path = tmp_path / "receipt.json"
    _run_json(capsys, "--receipt-out", str(path), "--max-new-tokens", "4")
    members = json.loads(path.read_text())["validator_set"]["set"]["validators"]
    keys = [m["key"] for m in members]
    good = tmp_path / "validators.txt"
    good.write_text("\n".join(base64.b64decode(k).hex() for k in keys) + "\n")
    assert verify_main(["receipt", str(path), "--validators", str(good)]) == 0
    other = tmp_path / "other.txt"
    stranger = "ab" * 32
    other.write_text("\n".join([*(base64.b64decode(k).hex() for k in keys[:-1]), stranger]))
    capsys.readouterr()
    assert verify_main(["receipt", str(path), "--validators", str(other)]) == 1
    assert "trusted" in capsys.readouterr().out


# --- the whole-sequence sketch check [SKETCH.4]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "1.0000001", "nan", "inf", "half"])
def test_invalid_sequence_check_probability(capsys, value):
    with pytest.raises(SystemExit) as exc:
        infer_main(["--model", "tiny", "--sequence-check", value, PROMPT])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--sequence-check" in err
    if value != "half":
        assert "not a probability in [0, 1]" in err


def test_bad_sketch_is_caught_when_every_verifier_checks_the_sequence(capsys):
    out = _run_json(capsys, "--byzantine-executor", "bad-sketch", "--sequence-check", "1")
    first, second = out["attempts"]
    assert first["accepted"] is False and first["verdicts"] == ["REJECT"] * 4
    assert {v["evidence"]["check"] for v in first["votes"]} == {"sequence"}
    # The evidence names the first position of the worst sketch chunk.
    assert all(v["evidence"]["position"] % 32 == 0 for v in first["votes"])
    assert second["accepted"] is True and out["accepted"] is True


def test_bad_sketch_is_certified_when_no_verifier_checks_the_sequence(capsys):
    # q = 0: only the sketch check could see it (the detection class of bad-sketch).
    out = _run_json(capsys, "--byzantine-executor", "bad-sketch", "--sequence-check", "0")
    assert [a["accepted"] for a in out["attempts"]] == [True]
    assert out["accepted"] is True and out["executor"] == out["attempts"][0]["executor"]

"""Hedged dispatch and slash files over loopback gRPC, through the CLI. [ASM.6], [SLASH.1]"""

from __future__ import annotations

import dataclasses
import json

from google.protobuf.message import DecodeError

from bft.errors import ProtocolError
from bft.validators import SignedValidatorSet
from proto import convert
from proto import verihive_pb2 as pb
from slashing.records import SlashRecord
from verihive.cli import infer_main, verify_main

PROMPT = "What is the capital of France?"


def _run_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    rc = infer_main(["--json", "--model", "tiny", "--max-new-tokens", "8", *args, PROMPT])
    out = json.loads(capsys.readouterr().out)
    assert rc == (0 if out["accepted"] else 1)
    return out


def test_hedged_request_goes_to_two_executors_and_the_first_certified_wins(capsys):
    out = _run_json(capsys, "--hedge", "2")
    assert out["accepted"] is True
    assert 1 <= len(out["attempts"]) <= 2
    assert out["executor"] in {a["executor"] for a in out["attempts"] if a["accepted"]}


def test_hedged_verify_all_serves_agreeing_certified_answers(capsys):
    out = _run_json(capsys, "--hedge", "2", "--hedge-verify-all")
    assert out["accepted"] is True
    assert len(out["attempts"]) == 2
    assert all(a["accepted"] for a in out["attempts"])  # both certified, same output


def test_hedged_certified_answers_that_disagree_are_not_served(capsys):
    # wrong-sampler keeps honest activations for its own tokens; with no sampler positions and
    # no sketch check nothing in one attempt can see it, so both attempts certify. Their outputs
    # differ under one seed: neither is served. [ASM.6]
    out = _run_json(
        capsys,
        "--hedge",
        "2",
        "--hedge-verify-all",
        "--byzantine-executor",
        "wrong-sampler",
        "--temperature",
        "1.0",
        "--positions-per-verifier",
        "0",
        "--sequence-check",
        "0",
    )
    assert out["accepted"] is False and out["text"] == ""
    assert len(out["attempts"]) == 2
    assert all("disagree" in a["reason"] for a in out["attempts"])
    assert out["receipt"] is None


def test_slash_file_of_a_lying_executor_is_proven_offline(capsys, tmp_path):
    out = _run_json(capsys, "--byzantine-executor", "int8-weights", "--slashes-out", str(tmp_path))
    first = out["attempts"][0]
    assert first["outcome"] == "rejected"
    assert [x["offence"] for x in first["slashed"]] == ["executor-fraud"]
    files = sorted(tmp_path.glob("*.slash"))
    assert len(files) == 1
    capsys.readouterr()
    assert verify_main(["slash", str(files[0]), "--model", "tiny"]) == 0
    assert capsys.readouterr().out.startswith("proven:")


def test_slash_file_of_a_double_voter_is_proven_on_signatures(capsys, tmp_path):
    out = _run_json(capsys, "--byzantine-verifier", "double-vote", "--slashes-out", str(tmp_path))
    assert out["accepted"] is True
    assert [x["offence"] for x in out["attempts"][0]["slashed"]] == ["verifier-double-vote"]
    (path,) = tmp_path.glob("*.slash")
    capsys.readouterr()
    assert verify_main(["slash", str(path)]) == 0
    assert "signatures" in capsys.readouterr().out


def test_invalid_slash_files(capsys, tmp_path):
    _run_json(capsys, "--byzantine-verifier", "double-vote", "--slashes-out", str(tmp_path))
    (path,) = tmp_path.glob("*.slash")
    data = bytearray(path.read_bytes())
    garbage = tmp_path / "garbage.slash"
    garbage.write_bytes(b"\xff\x00not protobuf")
    assert verify_main(["slash", str(garbage)]) == 2
    assert verify_main(["slash", str(tmp_path / "missing.slash")]) == 2
    # A flipped byte makes the file unreadable (2) or changes a signed part or a signature (1,
    # not proven), except in the one part no signature covers: the copy of the signed
    # commitment that the REJECT's evidence carries in its opening response (read only as
    # equivocation evidence, whose own signature is checked then [OPEN.4]). A flip there leaves
    # what the file proves unchanged (0): that is fixed by the signatures. [SLASH.1]
    # (Checked on every byte of such a file; 97 of them here.)
    original = _meaning(bytes(data))
    assert original is not None
    flipped = tmp_path / "flipped.slash"
    wants = []
    for i in range(0, len(data), max(1, len(data) // 97)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        flipped.write_bytes(bytes(bad))
        meaning = _meaning(bytes(bad))
        want = 2 if meaning is None else 0 if meaning == original else 1
        capsys.readouterr()
        assert verify_main(["slash", str(flipped)]) == want, (i, capsys.readouterr().out)
        wants.append(want)
    assert wants.count(1) > len(wants) // 2, wants  # nearly every byte is signed


def _meaning(data: bytes) -> tuple[SlashRecord, SignedValidatorSet] | None:
    """Return the record and validator set ``data`` holds, without the unsigned copies of the
    commitment in opening responses; ``None`` when ``data`` is not a well-formed slash file."""
    m = pb.SlashProof()
    try:
        m.ParseFromString(data)
        record, vset = convert.slash_from_pb(m)
    except (DecodeError, ProtocolError):
        return None
    votes = []
    for v in record.votes:
        ev = v.evidence
        if ev is not None and ev.response is not None:
            response = dataclasses.replace(ev.response, commitment=None)
            v = dataclasses.replace(v, evidence=dataclasses.replace(ev, response=response))
        votes.append(v)
    return dataclasses.replace(record, votes=tuple(votes)), vset

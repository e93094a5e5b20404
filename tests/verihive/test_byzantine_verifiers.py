"""Byzantine verifiers over real gRPC on loopback (tiny model, f = 1). [GUAR.1]-[GUAR.4]

Verifier 0 of :func:`verihive.localnet.start_local_network` lies as one mode of
:mod:`simnet.verifiers`; the network has 4 verifiers, so every committee holds all of them and
the liar sits on each. With an honest executor every mode still ends in a certified request
whose receipt passes ``check_receipt`` against the pinned validator set, with exactly what the
mode earns:

- ``always-accept``: nothing (its ACCEPT is in the certificate; only a spot audit of its vote
  shows that it was signed without the work, [VOTE.4]);
- ``always-reject``: its made-up accusation is refuted by the 3 honest members and it is
  penalised for a false accusation, on every request ([CONFIRM.3], [SLASH.2], [SLASH.4]);
- ``silent``: nothing; the 3 honest ACCEPTs certify ([GUAR.3]);
- ``double-vote`` (an honest server and a lying twin with one key): the key is slashed for
  ``verifier-double-vote`` and tombstoned ([QUORUM.5], [SLASH.1], [SLASH.3]), and is not asked
  again.

Each network then serves a second request. With an ``int8-weights`` executor and an
always-accept verifier the honest REJECTs are confirmed by 2f+1, the executor is slashed for
``executor-fraud`` and tombstoned, the next executor serves, and the slashed one is skipped
from then on ([CONFIRM.3], [SLASH.3]). ``bft-infer --byzantine-verifier MODE --json`` reports
the same slashes and penalties in its attempts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bft.assembler import Outcome
from bft.challenge import compute_commitment_challenge
from bft.confirmation import Finding
from bft.crypto import compute_node_id
from bft.evidence import AuditModel, audit_evidence, spot_audit_vote
from bft.messages import Evidence, SamplingParams, Verdict
from bft.receipt import Receipt, check_receipt
from bft.thresholds import load_thresholds
from bft.types import PublicKey
from executor.backend import TorchBackend
from executor.model import LoadedModel
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from simnet.localnet import local_faults
from simnet.verifiers import VERIFIER_MODES
from slashing.records import Offence, check_penalty, check_slash
from verihive.assembler import AttemptResult
from verihive.cli import infer_main
from verihive.localnet import LocalNetConfig, LocalNetwork, start_local_network
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, make_channel

PROMPT = "What is the capital of France?"
SAMPLING = SamplingParams(max_new_tokens=8)


@contextmanager
def _network(tiny: LoadedModel, **modes: str) -> Iterator[LocalNetwork]:
    """Start the embedded network with ``modes`` (``executor=``, ``verifier=``) of simnet."""
    with start_local_network(tiny, LocalNetConfig(), faults=local_faults(**modes)) as net:
        yield net


def _liar(net: LocalNetwork) -> PublicKey:
    """Return verifier 0's key (the byzantine one, and its twin's)."""
    return net.verifier_services[0].core.key.public_key


def _receipt(net: LocalNetwork, attempt: AttemptResult) -> Receipt:
    """Return the attempt's receipt as a client gets it, checked against the pinned set."""
    message = net.assembler.receipt_of(attempt)
    assert message is not None
    receipt = convert.receipt_from_pb(pb.Receipt.FromString(message.SerializeToString()))
    check_receipt(receipt, trusted_validators=net.assembler.validator_set.vset.keys)
    return receipt


def _auditor(tiny: LoadedModel) -> AuditModel:
    """Return the honest model as an auditor."""
    backend = TorchBackend(tiny.model)
    return AuditModel(backend, tiny.model_id, backend.info.num_layers, backend.info.hidden_size)


def _proven(tiny: LoadedModel, evidence: Evidence | None) -> bool:
    """Return ``bft-verify audit``'s verdict on ``evidence`` (calibrated thresholds)."""
    assert evidence is not None
    return audit_evidence(evidence, _auditor(tiny), load_thresholds()).proven


def _spot_audit(attempt: AttemptResult, tiny: LoadedModel) -> dict[PublicKey, bool]:
    """Return, per ACCEPT voter, whether its vote re-computes from openings fetched over gRPC."""
    assert attempt.tally is not None
    req, signed = attempt.tally.request, attempt.tally.signed
    auditor = _auditor(tiny)
    channel = make_channel(attempt.executor.address, MAX_OPEN_MESSAGE_BYTES)
    try:
        stub = pb_grpc.ExecutorStub(channel)
        found = {}
        for v in attempt.tally.votes:
            if v.verdict is not Verdict.ACCEPT:
                continue
            ch = compute_commitment_challenge(
                v.challenge_signature, signed.commitment, req, v.escalated
            )
            tiles = [convert.tile_to_pb(t) for t in ch.required_tiles()]
            raw = stub.Open(pb.OpenRequest(commitment_digest=signed.digest, tiles=tiles))
            response = convert.opening_response_from_pb(raw)
            found[v.verifier_key] = spot_audit_vote(v, signed, response, auditor).ok
        return found
    finally:
        channel.close()


@pytest.mark.parametrize("mode", VERIFIER_MODES)
def test_byzantine_verifier_with_an_honest_executor(tiny, mode):
    with _network(tiny, verifier=mode) as net:
        node, liar = net.assembler, _liar(net)
        vset = node.validator_set.vset
        for round_ in (1, 2):  # the node set keeps serving
            text, attempts = node.infer(PROMPT, SAMPLING)
            (a,) = attempts
            assert a.outcome is Outcome.CERTIFIED, a.reason
            assert isinstance(text, str)
            assert a.tally is not None
            assert not node.tombstones.is_tombstoned(a.executor.public_key)
            signers = {v.verifier_key for v in _receipt(net, a).votes}
            voters = {v.verifier_key: v.verdict for v in a.votes}
            assert len(signers) >= 3
            for r in a.slashes:
                check_slash(r, vset)
            for p in a.penalties:
                check_penalty(p, vset)
            if mode == "always-accept":
                assert a.slashes == () and a.penalties == ()
                assert len(signers) == 4 and liar in signers
                # Only the lazy ACCEPT fails a spot audit: it was signed without the work.
                assert _spot_audit(a, tiny) == {k: k != liar for k in voters}
            elif mode == "always-reject":
                assert a.slashes == ()
                (p,) = a.penalties
                assert p.accuser == liar and voters[liar] is Verdict.REJECT
                assert "false accusation" in a.reason
                (d,) = a.tally.disputes
                findings = {c.verifier_key: c.finding for c in d.confirmations}
                want = {k: Finding.CONFIRM if k == liar else Finding.REFUTE for k in voters}
                assert findings == want
                assert not _proven(tiny, d.accusation.evidence)
                assert len(signers) == 3 and liar not in signers
                assert node.tombstones.penalties_of(liar) == round_
                assert not node.tombstones.is_tombstoned(liar)
            elif mode == "silent":
                assert a.slashes == () and a.penalties == ()
                assert liar not in voters and len(voters) == 3 and len(signers) == 3
            else:  # double-vote: slashed on the first request, never asked again
                assert a.penalties == ()
                assert node.tombstones.is_tombstoned(liar)
                assert node.tombstones.offences_of(liar) == 1
                assert liar not in voters and len(signers) == 3
                if round_ == 1:
                    (r,) = a.slashes
                    assert r.offence is Offence.VERIFIER_DOUBLE_VOTE and r.offender == liar
                    assert a.tally.double_voters == {liar}
                    assert {v.verdict for v in r.votes} == {Verdict.ACCEPT, Verdict.REJECT}
                    assert node.tombstones.slash_of(liar) == r
                else:
                    assert a.slashes == () and a.tally.double_voters == frozenset()
            if mode != "double-vote":
                assert node.tombstones.slashes == ()


def test_lazy_accepter_cannot_save_a_cheating_executor(tiny):
    with _network(tiny, verifier="always-accept", executor="int8-weights") as net:
        node, liar = net.assembler, _liar(net)
        vset = node.validator_set.vset
        text, attempts = node.infer(PROMPT, SAMPLING)
        cheat, honest = attempts
        cheater = cheat.executor.public_key
        assert cheat.outcome is Outcome.REJECTED and cheat.tally is not None
        verdicts = {v.verifier_key: v.verdict for v in cheat.votes}
        assert verdicts == {k: Verdict.ACCEPT if k == liar else Verdict.REJECT for k in verdicts}
        assert len(cheat.tally.disputes) == 3  # one per honest REJECT
        # A confirmed round: the 3 honest CONFIRMs beat the liar's REFUTE. (The assembler may
        # skip the other rounds once one is confirmed.)
        everyone = {k: Finding.REFUTE if k == liar else Finding.CONFIRM for k in verdicts}
        rounds = [
            {c.verifier_key: c.finding for c in d.confirmations} for d in cheat.tally.disputes
        ]
        assert rounds[0] == everyone
        assert all(r in ({}, everyone) for r in rounds)
        assert cheat.slashes and cheat.penalties == ()
        for r in cheat.slashes:
            check_slash(r, vset)
            assert r.offence is Offence.EXECUTOR_FRAUD and r.offender == cheater
            assert r.accusation is not None and r.accusation.verifier_key != liar
            assert _proven(tiny, r.accusation.evidence)
        assert node.tombstones.is_tombstoned(cheater)  # slashed once, however many records
        assert node.tombstones.slashes == (cheat.slashes[0],)
        assert not node.tombstones.is_tombstoned(liar)
        assert honest.outcome is Outcome.CERTIFIED and text
        _receipt(net, honest)
        # The tombstoned executor is refused for good: the next request goes straight on.
        text, attempts = node.infer(PROMPT, SAMPLING)
        (a,) = attempts
        assert a.outcome is Outcome.CERTIFIED and a.executor == honest.executor
        _receipt(net, a)


def _infer_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    rc = infer_main(["--json", "--model", "tiny", "--max-new-tokens", "8", *args, PROMPT])
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert rc == (0 if out["accepted"] else 1)
    return out


def _node_id(key_hex: str) -> str:
    return compute_node_id(PublicKey(bytes.fromhex(key_hex))).hex()


@pytest.mark.parametrize("mode", VERIFIER_MODES)
def test_bft_infer_reports_byzantine_verifier(capsys, mode):
    out = _infer_json(capsys, "--byzantine-verifier", mode)
    assert out["accepted"] is True
    (a,) = out["attempts"]
    assert a["accepted"] is True and a["outcome"] == "certified"
    verdicts = sorted(a["verdicts"])
    voters = {v["verifier"]: v["verdict"] for v in a["votes"]}
    if mode == "always-accept":
        assert verdicts == ["ACCEPT"] * 4
        assert a["slashed"] == [] and a["penalised"] == []
    elif mode == "always-reject":
        assert verdicts == ["ACCEPT"] * 3 + ["REJECT"]
        assert a["slashed"] == []
        (p,) = a["penalised"]
        assert p["offence"] == "false-accusation"
        assert voters[_node_id(p["key"])] == "REJECT"
        findings = sorted(c["finding"] for c in a["confirmations"])
        assert findings == ["CONFIRM"] + ["REFUTE"] * 3
    elif mode == "silent":
        assert verdicts == ["ACCEPT"] * 3
        assert a["slashed"] == [] and a["penalised"] == []
    else:
        assert verdicts == ["ACCEPT"] * 3
        (s,) = a["slashed"]
        assert s["offence"] == "verifier-double-vote"
        assert _node_id(s["key"]) not in voters
        assert a["penalised"] == []


def test_bft_infer_reports_executor_slash_past_a_lazy_verifier(capsys):
    out = _infer_json(
        capsys, "--byzantine-verifier", "always-accept", "--byzantine-executor", "int8-weights"
    )
    first, second = out["attempts"]
    assert first["outcome"] == "rejected"
    assert sorted(first["verdicts"]) == ["ACCEPT"] + ["REJECT"] * 3
    assert first["slashed"] and all(s["offence"] == "executor-fraud" for s in first["slashed"])
    assert {_node_id(s["key"]) for s in first["slashed"]} == {first["executor"]}
    assert first["penalised"] == []
    assert second["accepted"] is True and out["executor"] == second["executor"]

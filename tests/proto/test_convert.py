"""Protobuf at the edges: explicit conversion and structural validation. [LIMIT.2]

Round trips use the real objects of one honest tiny-model run (see :mod:`tests.support`).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft.errors import Malformed
from bft.limits import MAX_LAYERS, MAX_LEAVES, MAX_VALIDATORS
from bft.messages import (
    Evidence,
    EvidenceCheck,
    SamplingParams,
    Verdict,
)
from bft.receipt import check_receipt
from merkle.sketch import SketchCheck
from merkle.tree import MAX_PROOF_STEPS
from proto import convert
from proto import verihive_pb2 as pb
from tests.support import (
    Run,
    get_network,
    get_receipt,
    resign_commitment,
    resign_vote,
)


def wire(message):
    """Return ``message`` after serialisation and parsing, as a peer would receive it."""
    return type(message).FromString(message.SerializeToString())


# --- round trips


def test_request_round_trip(run):
    assert convert.request_from_pb(wire(convert.request_to_pb(run.request))) == run.request


def test_commitment_round_trip(run):
    back = convert.commitment_from_pb(wire(convert.commitment_to_pb(run.signed)))
    assert back == run.signed
    back.check()


def test_vote_round_trip(run):
    for vote in run.votes:
        back = convert.vote_from_pb(wire(convert.vote_to_pb(vote)))
        assert back == vote
        assert back.signing_root() == vote.signing_root()
        back.check()


def test_opening_response_round_trip(run):
    for response in run.responses.values():
        assert response.commitment == run.signed
        for r in (response, dataclasses.replace(response, commitment=None)):
            back = convert.opening_response_from_pb(wire(convert.opening_response_to_pb(r)))
            assert back == r
            assert back.signing_root() == r.signing_root()


def test_vote_round_trip_keeps_sampler_checks_and_escalation(run):
    for vote in run.votes:
        assert vote.sampler_checks  # m = 4 positions per verifier
        back = convert.vote_from_pb(wire(convert.vote_to_pb(vote)))
        assert back.sampler_checks == vote.sampler_checks and back.escalated is False
    escalated = resign(run.votes[0], escalated=True)
    back = convert.vote_from_pb(wire(convert.vote_to_pb(escalated)))
    assert back == escalated and back.escalated
    back.check()


def test_commitment_round_trip_keeps_the_sketch(run):
    # [SKETCH.1]: one sketch entry per 32 positions, in the signed commitment.
    m = wire(convert.commitment_to_pb(run.signed))
    assert list(m.commitment.sketch) == list(run.signed.commitment.sketch)
    assert len(m.commitment.sketch) == 1 and len(m.commitment.sketch[0]) == 256
    assert convert.commitment_from_pb(m).commitment.sketch == run.signed.commitment.sketch


@pytest.mark.parametrize("ppm", [0, 1, 100_000, 1_000_000])
def test_request_round_trip_keeps_sequence_check_ppm(run, ppm):
    request = dataclasses.replace(run.request, sequence_check_ppm=ppm)
    m = wire(convert.request_to_pb(request))
    assert m.sequence_check_ppm == ppm
    back = convert.request_from_pb(m)
    assert back == request and back.digest() == request.digest()


@pytest.mark.parametrize(
    "check", [SketchCheck(0, 0.0), SketchCheck(1, 0.25), SketchCheck((1 << 32) - 1, 1.0)], ids=repr
)
def test_vote_round_trip_keeps_the_sequence_check(run, check):
    # [SKETCH.4]: present (even all zero) or absent, as signed.
    vote = resign(run.votes[0], sequence_check=check)
    m = wire(convert.vote_to_pb(vote))
    assert m.HasField("sequence_check")
    back = convert.vote_from_pb(m)
    assert back == vote and back.sequence_check == check
    back.check()
    absent = wire(convert.vote_to_pb(run.votes[0]))
    assert run.votes[0].sequence_check is None and not absent.HasField("sequence_check")
    assert convert.vote_from_pb(absent).sequence_check is None


def test_sequence_evidence_round_trip(run):
    evidence = Evidence(
        EvidenceCheck.SEQUENCE, run.request, run.signed, position=32, measured=0.75, detail="s"
    )
    m = wire(convert.evidence_to_pb(evidence))
    assert m.check == pb.CHECK_SEQUENCE == 8
    back = convert.evidence_from_pb(m)
    assert back == evidence and back.digest() == evidence.digest()


def resign(vote, **changes):
    return resign_vote(vote, get_network().key_of(vote.verifier_key), **changes)


def evidences(run: Run) -> list[Evidence]:
    """Return evidence of every check kind, with and without openings and a second commitment."""
    net = get_network()
    response = next(iter(run.responses.values()))
    other = resign_commitment(
        run.signed, net.executor_key, tokens=(*run.signed.commitment.tokens[:-1], 5)
    )
    out = []
    for check in EvidenceCheck:
        base = Evidence(
            check,
            run.request,
            run.signed,
            layer=3,
            position=25,
            measured=0.25,
            detail=f"{check.value} claim",
        )
        out += [
            base,
            dataclasses.replace(base, response=response),
            dataclasses.replace(base, response=dataclasses.replace(response, commitment=None)),
            dataclasses.replace(base, other=other),
            dataclasses.replace(base, response=response, other=other, measured=0.0, detail=""),
        ]
    return out


def test_evidence_round_trip(run):
    for evidence in evidences(run):
        back = convert.evidence_from_pb(wire(convert.evidence_to_pb(evidence)))
        assert back == evidence
        assert back.digest() == evidence.digest()


def test_reject_vote_round_trip_keeps_its_evidence(run):
    vote = run.votes[0]
    for evidence in evidences(run)[::4]:
        reject = resign(vote, verdict=Verdict.REJECT, reason="r", evidence=evidence)
        back = convert.vote_from_pb(wire(convert.vote_to_pb(reject)))
        assert back == reject
        back.check()  # the vote's signature covers the evidence digest


def evidence_pb(run: Run) -> pb.Evidence:
    evidence = Evidence(
        EvidenceCheck.LAYER,
        run.request,
        run.signed,
        next(iter(run.responses.values())),
        layer=2,
        measured=0.5,
    )
    return convert.evidence_to_pb(evidence)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: setattr(m, "check", 0),
        lambda m: setattr(m, "check", 9),
        lambda m: setattr(m, "measured", math.nan),
        lambda m: setattr(m, "measured", math.inf),
        lambda m: setattr(m, "measured", -math.inf),
        lambda m: m.ClearField("request"),
        lambda m: m.ClearField("commitment"),
        lambda m: setattr(m, "detail", "d" * 1025),
        lambda m: setattr(m.request, "request_id", b"short"),
        lambda m: setattr(m.commitment.commitment, "num_leaves", 3),
        lambda m: m.response.openings[0].ClearField("proof"),
        lambda m: setattr(m.response.commitment.commitment, "merkle_root", b"\x00"),
        lambda m: m.other.CopyFrom(pb.SignedCommitment()),
    ],
    ids=[
        "unspecified-check",
        "unknown-check",
        "nan-measured",
        "inf-measured",
        "minus-inf-measured",
        "no-request",
        "no-commitment",
        "long-detail",
        "bad-request",
        "bad-commitment",
        "bad-response",
        "bad-response-commitment",
        "empty-other",
    ],
)
def test_invalid_evidence(run, mutate):
    m = evidence_pb(run)
    mutate(m)
    with pytest.raises(Malformed):
        convert.evidence_from_pb(wire(m))


def test_evidence_detail_bound_is_inclusive(run):
    m = evidence_pb(run)
    m.detail = "d" * 1024
    assert convert.evidence_from_pb(wire(m)).detail == "d" * 1024


def test_invalid_vote_evidence_without_reject(run):
    # [VOTE.3]: REJECT iff evidence, also on the wire.
    vote = run.votes[0]
    m = convert.vote_to_pb(vote)
    m.evidence.CopyFrom(evidence_pb(run))
    with pytest.raises(Malformed, match="evidence"):
        convert.vote_from_pb(wire(m))
    m = convert.vote_to_pb(vote)
    m.verdict = pb.REJECT
    with pytest.raises(Malformed, match="evidence"):
        convert.vote_from_pb(wire(m))


def test_invalid_vote_with_malformed_evidence(run):
    reject = resign(run.votes[0], verdict=Verdict.REJECT, evidence=evidences(run)[1])
    m = convert.vote_to_pb(reject)
    m.evidence.measured = math.nan
    with pytest.raises(Malformed):
        convert.vote_from_pb(wire(m))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5])
def test_invalid_vote_sampler_margin(run, value):
    m = convert.vote_to_pb(run.votes[0])
    m.sampler_checks[1].margin = value
    with pytest.raises(Malformed):
        convert.vote_from_pb(m)


def test_receipt_round_trip_still_checks():
    receipt = get_receipt()
    back = convert.receipt_from_pb(wire(convert.receipt_to_pb(receipt)))
    assert back == receipt
    check_receipt(back)


valid_sampling = st.builds(
    SamplingParams,
    temperature=st.floats(0, 100),
    top_k=st.integers(0, 1 << 24),
    top_p=st.floats(0, 1, exclude_min=True),
    max_new_tokens=st.integers(1, 8192),
    stop_at_eos=st.booleans(),
)


@given(valid_sampling)
def test_sampling_round_trip(params):
    assert convert.sampling_from_pb(wire(convert.sampling_to_pb(params))) == params


# --- malformed input


def request_pb(run: Run, **changes) -> pb.InferenceRequest:
    m = convert.request_to_pb(run.request)
    for name, value in changes.items():
        setattr(m, name, value)
    return m


@pytest.mark.parametrize(
    "changes",
    [
        {"request_id": b"\x00" * 15},
        {"model_id": b"\x00" * 33},
        {"validator_set_digest": b""},
        {"network_id": "n" * 257},
        {"epoch": 1 << 63},
        {"f": 33},
        {"layers_per_verifier": 0},
    ],
    ids=lambda c: next(iter(c)),
)
def test_invalid_request(run, changes):
    with pytest.raises(Malformed):
        convert.request_from_pb(request_pb(run, **changes))


@pytest.mark.parametrize("ppm", [1_000_001, (1 << 32) - 1])
def test_invalid_request_sequence_check_ppm(run, ppm):
    # [SKETCH.4]: q is a probability in parts per million.
    with pytest.raises(Malformed, match="sequence_check_ppm"):
        convert.request_from_pb(request_pb(run, sequence_check_ppm=ppm))


def test_invalid_request_prompt(run):
    m = request_pb(run)
    del m.prompt_tokens[:]
    with pytest.raises(Malformed):
        convert.request_from_pb(m)
    m.prompt_tokens.extend([1 << 24])
    with pytest.raises(Malformed):
        convert.request_from_pb(m)


def test_invalid_request_without_sampling(run):
    m = request_pb(run)
    m.ClearField("sampling")
    with pytest.raises(Malformed, match="sampling is missing"):
        convert.request_from_pb(m)


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_p": math.nan},
        {"top_p": -math.inf},
        {"temperature": 101.0},
        {"top_p": 0.0},  # what an unset top_p reads as: senders must set it
        {"max_new_tokens": 0},
        {"top_k": (1 << 24) + 1},
    ],
    ids=repr,
)
def test_invalid_sampling(changes):
    m = convert.sampling_to_pb(SamplingParams())
    for name, value in changes.items():
        setattr(m, name, value)
    with pytest.raises(Malformed):
        convert.sampling_from_pb(m)


@pytest.mark.parametrize(
    "changes",
    [
        {"request_digest": b"\x00" * 31},
        {"model_id": b""},
        {"executor_key": b"\x00" * 33},
        {"merkle_root": b"\x00" * 16},
        {"prompt_len": 0},
        {"num_layers": 0},
        {"hidden_size": 65537},
        {"chunk_size": 0},
        {"num_leaves": 21},
        {"dtype": "d" * 257},
    ],
    ids=lambda c: next(iter(c)),
)
def test_invalid_commitment(run, changes):
    m = convert.commitment_to_pb(run.signed)
    for name, value in changes.items():
        setattr(m.commitment, name, value)
    with pytest.raises(Malformed):
        convert.commitment_from_pb(m)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda sketch: sketch.pop(),
        lambda sketch: sketch.append(sketch[0]),
        lambda sketch: sketch.__setitem__(0, b""),
        lambda sketch: sketch.__setitem__(0, sketch[0][:-1]),
        lambda sketch: sketch.__setitem__(0, sketch[0] + b"\x01\x00"),
        lambda sketch: sketch.__setitem__(0, b"\xf1\xff" + sketch[0][2:]),
        lambda sketch: sketch.__setitem__(0, sketch[0][:-2] + b"\xff\xff"),
    ],
    ids=["none", "extra", "empty", "odd", "129-coefficients", "prime", "above-prime"],
)
def test_invalid_commitment_sketch(run, mutate):
    # [SKETCH.3]: one chunk of 1..128 field elements per 32 positions, else malformed.
    m = convert.commitment_to_pb(run.signed)
    sketch = list(m.commitment.sketch)
    mutate(sketch)
    del m.commitment.sketch[:]
    m.commitment.sketch.extend(sketch)
    with pytest.raises(Malformed, match="sketch"):
        convert.commitment_from_pb(wire(m))


def test_invalid_commitment_missing(run):
    m = convert.commitment_to_pb(run.signed)
    m.ClearField("commitment")
    with pytest.raises(Malformed, match="commitment is missing"):
        convert.commitment_from_pb(m)


def test_commitment_signature_is_left_to_the_core(run):
    # from_pb never checks signatures; the core raises BadSignature or Malformed itself.
    m = convert.commitment_to_pb(run.signed)
    m.signature = b"\x00" * 63
    back = convert.commitment_from_pb(m)
    with pytest.raises(Malformed):
        back.check()


@pytest.mark.parametrize(
    "changes",
    [
        {"request_digest": b"\x00" * 31},
        {"commitment_digest": b"\x00" * 33},
        {"verifier_key": b""},
        {"challenge_signature": b"\x00" * 32},
        {"signature": b"\x00" * 65},
        {"embedding_max_error": math.nan},
        {"embedding_max_error": math.inf},
        {"embedding_max_error": -1.0},
        {"reason": "r" * 1025},
        {"verdict": 0},
        {"verdict": 4},
        {"verdict": 7},
    ],
    ids=repr,
)
def test_invalid_vote(run, changes):
    m = convert.vote_to_pb(run.votes[0])
    for name, value in changes.items():
        setattr(m, name, value)
    with pytest.raises(Malformed):
        convert.vote_from_pb(m)


@pytest.mark.parametrize("field", ["max_rel_error", "witness"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5])
def test_invalid_vote_layer_measurement(run, value, field):
    m = convert.vote_to_pb(run.votes[0])
    setattr(m.layer_checks[1], field, value)
    with pytest.raises(Malformed):
        convert.vote_from_pb(m)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, 1.5, 1.0 + 1e-12])
def test_invalid_vote_sequence_mismatch(run, value):
    # [SKETCH.4]: a fraction of top entries, in [0, 1].
    m = convert.vote_to_pb(resign(run.votes[0], sequence_check=SketchCheck(0, 0.5)))
    m.sequence_check.mismatch = value
    with pytest.raises(Malformed):
        convert.vote_from_pb(wire(m))


def test_invalid_vote_with_too_many_layer_checks(run):
    m = convert.vote_to_pb(run.votes[0])
    for _ in range(MAX_LAYERS + 1 - len(m.layer_checks)):
        m.layer_checks.append(m.layer_checks[0])
    with pytest.raises(Malformed, match="too many layer checks"):
        convert.vote_from_pb(m)


def response_pb(run: Run) -> pb.OpenResponse:
    return convert.opening_response_to_pb(next(iter(run.responses.values())))


@pytest.mark.parametrize("field", ["tile", "proof"])
def test_invalid_opening_without_a_part(run, field):
    m = response_pb(run)
    m.openings[2].ClearField(field)
    with pytest.raises(Malformed, match=f"{field} is missing"):
        convert.opening_response_from_pb(m)


def test_invalid_opening_with_a_too_long_proof(run):
    m = response_pb(run)
    steps = m.openings[0].proof.steps
    while len(steps) <= MAX_PROOF_STEPS:
        steps.append(pb.ProofStep(bit=0, digest=b"\x00" * 32))
    with pytest.raises(Malformed, match="too long"):
        convert.opening_response_from_pb(m)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: setattr(p.steps[0], "bit", 2),
        lambda p: setattr(p.steps[0], "digest", b"\x00" * 31),
        lambda p: setattr(p.steps[-1], "digest", b"\x00" * 33),
        lambda p: setattr(p, "leaf_index", p.tree_size),
        lambda p: setattr(p, "tree_size", 0),
        lambda p: p.ClearField("steps"),
    ],
    ids=["bit", "short-digest", "long-digest", "index", "size", "no-steps"],
)
def test_invalid_opening_proof(run, mutate):
    m = response_pb(run)
    mutate(m.openings[1].proof)
    with pytest.raises(Malformed):
        convert.opening_response_from_pb(m)


@pytest.mark.parametrize(
    ("boundary", "chunk"),
    [(MAX_LAYERS + 1, 0), (0, MAX_LEAVES + 1)],
)
def test_invalid_tile_reference(run, boundary, chunk):
    m = response_pb(run)
    m.openings[0].tile.boundary, m.openings[0].tile.chunk = boundary, chunk
    with pytest.raises(Malformed, match="tile reference out of range"):
        convert.opening_response_from_pb(m)


def test_tile_reference_bounds_are_inclusive():
    assert (
        convert.tile_from_pb(pb.TileRef(boundary=MAX_LAYERS, chunk=MAX_LEAVES)).chunk == MAX_LEAVES
    )


@pytest.mark.parametrize("field", ["request", "commitment", "validator_set"])
def test_invalid_receipt_without_a_part(field):
    m = convert.receipt_to_pb(get_receipt())
    m.ClearField(field)
    with pytest.raises(Malformed, match=f"{field} is missing"):
        convert.receipt_from_pb(m)


def test_receipt_round_trip_keeps_the_signed_validator_set():
    # [VSET.3]: the receipt carries the set with its endorsements, as signed.
    receipt = get_receipt()
    back = convert.receipt_from_pb(wire(convert.receipt_to_pb(receipt)))
    assert back.validator_set == receipt.validator_set == get_network().validator_set
    assert back.validator_set.digest == receipt.request.validator_set_digest
    check_receipt(back)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_invalid_receipt_validator_key_length(size):
    m = convert.receipt_to_pb(get_receipt())
    m.validator_set.set.validators[2].key = b"\x00" * size
    with pytest.raises(Malformed, match="32 bytes"):
        convert.receipt_from_pb(m)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_invalid_receipt_endorsement_key_length(size):
    m = convert.receipt_to_pb(get_receipt())
    m.validator_set.endorsements[2].key = b"\x00" * size
    with pytest.raises(Malformed, match="wrong size"):
        convert.receipt_from_pb(m)


def test_invalid_receipt_with_too_many_validators():
    m = convert.receipt_to_pb(get_receipt())
    validators = m.validator_set.set.validators
    validators.extend([validators[0]] * (MAX_VALIDATORS + 1 - len(validators)))
    with pytest.raises(Malformed, match="too many"):
        convert.receipt_from_pb(m)


def test_invalid_receipt_with_too_many_endorsements():
    m = convert.receipt_to_pb(get_receipt())
    endorsements = m.validator_set.endorsements
    endorsements.extend([endorsements[0]] * (MAX_VALIDATORS + 1 - len(endorsements)))
    with pytest.raises(Malformed, match="too many"):
        convert.receipt_from_pb(m)


def test_invalid_receipt_with_a_malformed_vote():
    m = convert.receipt_to_pb(get_receipt())
    m.votes[3].embedding_max_error = math.nan
    with pytest.raises(Malformed):
        convert.receipt_from_pb(m)


def test_invalid_receipt_with_a_malformed_request():
    m = convert.receipt_to_pb(get_receipt())
    m.request.request_id = b"short"
    with pytest.raises(Malformed):
        convert.receipt_from_pb(m)


def test_from_pb_validates_only_structure(run):
    # A well-formed vote with a wrong signature parses: the core decides (BadSignature).
    vote = dataclasses.replace(run.votes[0], reason="edited")
    back = convert.vote_from_pb(convert.vote_to_pb(vote))
    assert back == vote

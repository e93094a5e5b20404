"""Protocol statements: structural bounds, signing roots, signatures.

[REQ.1]-[REQ.2], [COMMIT.1]-[COMMIT.2], [VOTE.1]-[VOTE.3], [OPEN.1], [SAMPLE.1], [LIMIT.1]
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bft.crypto import SigningKey
from bft.encoding import compute_signing_root
from bft.errors import BadSignature, Malformed, ProtocolError
from bft.limits import (
    MAX_F,
    MAX_HIDDEN,
    MAX_LAYERS,
    MAX_NETWORK_ID_BYTES,
    MAX_STRING,
    MAX_TOKENS,
    MAX_VOCAB,
)
from bft.messages import (
    TAG_SAMPLING_SEED,
    Commitment,
    Evidence,
    EvidenceCheck,
    InferenceRequest,
    LayerCheck,
    OpeningResponse,
    SamplerCheck,
    SamplingParams,
    SignedCommitment,
    TileOpening,
    TileRef,
    Verdict,
    Vote,
    compute_challenge_message,
)
from bft.types import Digest, ModelId, Signature
from bft.validators import ValidatorSet
from merkle.sketch import SketchCheck
from merkle.tree import MerkleProof, ProofStep

NET = "net-a"
SAMPLING = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=16)
REQ = InferenceRequest(
    network_id=NET,
    request_id=b"\x01" * 16,
    epoch=3,
    model_id=ModelId(b"\x02" * 32),
    prompt_tokens=(1, 2, 3),
    sampling=SAMPLING,
    f=1,
    layers_per_verifier=2,
    validator_set_digest=Digest(b"\x03" * 32),
)
EXEC = SigningKey.from_seed(b"\x04" * 32)
VERIFIER = SigningKey.from_seed(b"\x05" * 32)
COMMIT = Commitment(
    network_id=NET,
    request_digest=REQ.digest(),
    model_id=REQ.model_id,
    executor_key=EXEC.public_key,
    tokens=(1, 2, 3, 7, 8),
    prompt_len=3,
    dtype="float32",
    backend="torch-cpu",
    num_layers=4,
    hidden_size=64,
    chunk_size=2,
    merkle_root=Digest(b"\x06" * 32),
    num_leaves=(4 + 1) * 3,
    sketch=(b"\x01\x00" * 128,),
)
SIGNED = SignedCommitment(COMMIT, EXEC.sign(COMMIT.signing_root()))
_UNSIGNED_VOTE = Vote(
    network_id=NET,
    request_digest=REQ.digest(),
    commitment_digest=SIGNED.digest,
    verifier_key=VERIFIER.public_key,
    verdict=Verdict.ACCEPT,
    challenge_signature=VERIFIER.sign(compute_challenge_message(NET, SIGNED.digest)),
    layer_checks=(
        LayerCheck(layer=1, chunks=(0, 1, 2), max_rel_error=1e-7, worst_position=4),
        LayerCheck(layer=3, chunks=(0, 1, 2), max_rel_error=2e-7, worst_position=0),
    ),
    embedding_max_error=0.0,
    reason="",
    sampler_checks=(SamplerCheck(position=3, margin=0.0), SamplerCheck(position=4, margin=1e-4)),
)
VOTE = dataclasses.replace(_UNSIGNED_VOTE, signature=VERIFIER.sign(_UNSIGNED_VOTE.signing_root()))
_PROOF = MerkleProof(leaf_index=0, tree_size=1, steps=(ProofStep(0, Digest(b"\x00" * 32)),))
RESPONSE = OpeningResponse(
    network_id=NET,
    commitment_digest=SIGNED.digest,
    openings=(
        TileOpening(TileRef(0, 0), b"leaf-a", _PROOF),
        TileOpening(TileRef(1, 2), b"leaf-b", _PROOF),
    ),
    signature=Signature(b""),
)
SIGNED_RESPONSE = dataclasses.replace(
    RESPONSE, signature=EXEC.sign(RESPONSE.signing_root()), commitment=SIGNED
)
_OTHER = dataclasses.replace(COMMIT, tokens=(1, 2, 3, 7, 9))
SIGNED_OTHER = SignedCommitment(_OTHER, EXEC.sign(_OTHER.signing_root()))
EVIDENCE = Evidence(
    EvidenceCheck.LAYER, REQ, SIGNED, SIGNED_RESPONSE, layer=3, position=4, measured=0.5
)


def test_baselines_are_valid():
    REQ.validate()
    SAMPLING.validate()
    COMMIT.validate()
    SIGNED.check()
    VOTE.check()


# --- structural bounds


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": -0.1},
        {"temperature": 100.5},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"top_p": math.nan},
        {"top_k": -1},
        {"top_k": MAX_VOCAB + 1},
        {"max_new_tokens": 0},
        {"max_new_tokens": MAX_TOKENS + 1},
    ],
    ids=repr,
)
def test_invalid_sampling_params(changes):
    with pytest.raises(Malformed):
        dataclasses.replace(SAMPLING, **changes).validate()


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": 0.0},
        {"temperature": 100.0},
        {"top_p": 1.0},
        {"top_p": 1e-9},
        {"top_k": 0},
        {"top_k": MAX_VOCAB},
        {"max_new_tokens": 1},
        {"max_new_tokens": MAX_TOKENS},
    ],
    ids=repr,
)
def test_sampling_params_bounds_are_inclusive(changes):
    dataclasses.replace(SAMPLING, **changes).validate()


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": "n" * (MAX_NETWORK_ID_BYTES + 1)},
        {"network_id": ""},
        {"network_id": "é" * 129},  # 129 code points, 258 bytes: bytes count [LIMIT.1]
        {"request_id": b"\x01" * 15},
        {"request_id": b"\x01" * 17},
        {"model_id": b"\x02" * 31},
        {"validator_set_digest": b""},
        {"prompt_tokens": ()},
        {"prompt_tokens": (1, -1)},
        {"prompt_tokens": (MAX_VOCAB,)},
        {"prompt_tokens": (1,) * (MAX_TOKENS + 1)},
        {"prompt_tokens": (1,) * (MAX_TOKENS - 15)},  # + max_new_tokens 16 > MAX_TOKENS
        {"sampling": dataclasses.replace(SAMPLING, top_p=2.0)},
        {"f": -1},
        {"f": MAX_F + 1},
        {"layers_per_verifier": 0},
        {"layers_per_verifier": MAX_LAYERS + 1},
        {"positions_per_verifier": -1},
        {"positions_per_verifier": MAX_TOKENS + 1},
        {"epoch": -1},
        {"epoch": 1 << 63},
    ],
    ids=lambda c: repr(c)[:60],
)
def test_invalid_request(changes):
    with pytest.raises(Malformed):
        dataclasses.replace(REQ, **changes).validate()


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": "n" * MAX_NETWORK_ID_BYTES},
        {"network_id": "é" * 128},
        {"prompt_tokens": (MAX_VOCAB - 1,)},
        {"prompt_tokens": (0,) * (MAX_TOKENS - 16)},
        {"f": 0},
        {"f": MAX_F},
        {"layers_per_verifier": MAX_LAYERS},
        {"positions_per_verifier": 0},
        {"positions_per_verifier": MAX_TOKENS},
        {"epoch": (1 << 63) - 1},
    ],
    ids=lambda c: repr(c)[:60],
)
def test_request_bounds_are_inclusive(changes):
    dataclasses.replace(REQ, **changes).validate()


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": "n" * (MAX_NETWORK_ID_BYTES + 1)},
        {"network_id": ""},
        {"network_id": "é" * 129},  # 129 code points, 258 bytes: bytes count [LIMIT.1]
        {"dtype": "d" * (MAX_STRING + 1)},
        {"backend": "b" * (MAX_STRING + 1)},
        {"request_digest": b"\x00" * 31},
        {"model_id": b"\x00" * 33},
        {"executor_key": b"\x00" * 31},
        {"merkle_root": b""},
        {"tokens": (1, 2, MAX_VOCAB, 7, 8)},
        {"prompt_len": 0},
        {"prompt_len": 6},
        {"num_layers": 0, "num_leaves": 3},
        {"num_layers": MAX_LAYERS + 1, "num_leaves": (MAX_LAYERS + 2) * 3},
        {"hidden_size": 0},
        {"hidden_size": MAX_HIDDEN + 1},
        {"chunk_size": 0},
        {"chunk_size": MAX_TOKENS + 1, "num_leaves": 5},
        {"num_leaves": 14},
        {"num_leaves": 16},
        {"tokens": (1,) * 4096, "chunk_size": 1, "num_layers": 256, "num_leaves": 257 * 4096}
        | {"sketch": (b"\x01\x00",) * 128},
        {"sketch": ()},  # [SKETCH.3] one entry per 32 positions
        {"sketch": (b"\x01\x00", b"\x01\x00")},
        {"sketch": (b"",)},
        {"sketch": (b"\x01",)},
        {"sketch": (b"\x01\x00" * 129,)},
        {"sketch": (b"\xf1\xff",)},  # 65521: outside the field
    ],
    ids=lambda c: repr(c)[:60],
)
def test_invalid_commitment(changes):
    with pytest.raises(Malformed):
        dataclasses.replace(COMMIT, **changes).validate()


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt_len": 5},  # no output tokens (e.g. immediate EOS) is allowed
        {"prompt_len": 1},
        {"chunk_size": 5, "num_leaves": 5},
        {"chunk_size": 1, "num_leaves": 25},
        {"tokens": (1,) * 4096, "chunk_size": 1, "num_layers": 255, "num_leaves": 256 * 4096}
        | {"sketch": (b"\x01\x00",) * 128},
        {"sketch": (b"\xf0\xff" * 128,)},  # 65520, the largest field element
    ],
    ids=lambda c: repr(c)[:60],
)
def test_commitment_bounds_are_inclusive(changes):
    dataclasses.replace(COMMIT, **changes).validate()


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": "n" * (MAX_NETWORK_ID_BYTES + 1)},
        {"network_id": ""},
        {"network_id": "é" * 129},  # 129 code points, 258 bytes: bytes count [LIMIT.1]
        {"request_digest": b"\x00" * 31},
        {"commitment_digest": b"\x00" * 33},
        {"verifier_key": b""},
        {"challenge_signature": b"\x00" * 63},
        {"signature": b"\x00" * 65},
        {"signature": b""},
        {"reason": "r" * (4 * MAX_STRING + 1)},
        {"layer_checks": (LayerCheck(1, (0,), 0.0, 0),) * (MAX_LAYERS + 1)},
        {"embedding_max_error": -1e-9},
        {"embedding_max_error": math.nan},
        {"embedding_max_error": math.inf},
        {"layer_checks": (LayerCheck(1, (0,), -0.5, 0),)},
        {"layer_checks": (LayerCheck(1, (0,), math.nan, 0),)},
        {"layer_checks": (LayerCheck(1, (0,), math.inf, 0),)},
        {"layer_checks": (LayerCheck(1, (0,), 0.0, 0, -1e-9),)},  # [VOTE.4] witness
        {"layer_checks": (LayerCheck(1, (0,), 0.0, 0, math.nan),)},
        {"layer_checks": (LayerCheck(1, (0,), 0.0, 0, math.inf),)},
        {"sampler_checks": (SamplerCheck(3, -1e-9),)},
        {"sampler_checks": (SamplerCheck(3, math.nan),)},
        {"sampler_checks": (SamplerCheck(3, math.inf),)},
        {"sampler_checks": (SamplerCheck(3, 0.0),) * (MAX_TOKENS + 1)},
    ],
    ids=lambda c: repr(c)[:60],
)
def test_invalid_vote(changes):
    with pytest.raises(Malformed):
        dataclasses.replace(VOTE, **changes).validate()


def test_vote_reason_bound_is_inclusive():
    dataclasses.replace(VOTE, reason="r" * (4 * MAX_STRING)).validate()


def test_vote_sampler_check_bound_is_inclusive():
    dataclasses.replace(VOTE, sampler_checks=(SamplerCheck(3, 0.0),) * MAX_TOKENS).validate()


@pytest.mark.parametrize("verdict", [Verdict.ACCEPT, Verdict.UNAVAILABLE])
def test_invalid_non_reject_vote_with_evidence(verdict):
    # [EVID.1]: evidence belongs to REJECT votes only.
    with pytest.raises(Malformed, match="evidence"):
        dataclasses.replace(VOTE, verdict=verdict, evidence=EVIDENCE).validate()


def test_invalid_reject_vote_without_evidence():
    with pytest.raises(Malformed, match="evidence"):
        dataclasses.replace(VOTE, verdict=Verdict.REJECT).validate()
    dataclasses.replace(VOTE, verdict=Verdict.REJECT, evidence=EVIDENCE).validate()


# --- signing roots bind every field

_bytes16 = st.binary(min_size=16, max_size=16)
_bytes32 = st.binary(min_size=32, max_size=32)
_u32 = st.integers(0, 2**32 - 1)
_u63 = st.integers(0, 2**63 - 1)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_tokens = st.lists(_u32, max_size=6).map(tuple)
_sampling = st.builds(
    SamplingParams,
    temperature=_finite,
    top_k=_u63,
    top_p=_finite,
    max_new_tokens=_u63,
    stop_at_eos=st.booleans(),
)

REQUEST_FIELDS = {
    "network_id": st.text(max_size=12),
    "request_id": _bytes16,
    "epoch": _u63,
    "model_id": _bytes32,
    "prompt_tokens": _tokens,
    "sampling": _sampling,
    "f": _u63,
    "layers_per_verifier": _u63,
    "validator_set_digest": _bytes32,
    "positions_per_verifier": _u63,
    "sequence_check_ppm": _u63,
}
SAMPLING_FIELDS = {
    "temperature": _finite,
    "top_k": _u63,
    "top_p": _finite,
    "max_new_tokens": _u63,
    "stop_at_eos": st.booleans(),
}
COMMITMENT_FIELDS = {
    "network_id": st.text(max_size=12),
    "request_digest": _bytes32,
    "model_id": _bytes32,
    "executor_key": _bytes32,
    "tokens": _tokens,
    "prompt_len": _u63,
    "dtype": st.text(max_size=12),
    "backend": st.text(max_size=12),
    "num_layers": _u63,
    "hidden_size": _u63,
    "chunk_size": _u63,
    "merkle_root": _bytes32,
    "num_leaves": _u63,
    "sketch": st.lists(st.binary(min_size=2, max_size=6), max_size=3).map(tuple),
    "settings": st.text(max_size=12),
}
_layer_check = st.builds(
    LayerCheck,
    layer=_u63,
    chunks=_tokens,
    max_rel_error=_finite,
    worst_position=_u63,
    witness=_finite,
)
_sampler_check = st.builds(SamplerCheck, position=_u63, margin=_finite)
VOTE_FIELDS = {
    "network_id": st.text(max_size=12),
    "request_digest": _bytes32,
    "commitment_digest": _bytes32,
    "verifier_key": _bytes32,
    "verdict": st.sampled_from(Verdict),
    "challenge_signature": st.binary(min_size=64, max_size=64),
    "layer_checks": st.lists(_layer_check, max_size=3).map(tuple),
    "embedding_max_error": _finite,
    "reason": st.text(max_size=12),
    "sampler_checks": st.lists(_sampler_check, max_size=3).map(tuple),
    "escalated": st.booleans(),
    "evidence": st.sampled_from([None, EVIDENCE, dataclasses.replace(EVIDENCE, layer=2)]),
    "sequence_check": st.sampled_from([None, SketchCheck(0, 0.0), SketchCheck(1, 0.5)]),
}
LAYER_CHECK_FIELDS = {
    "layer": _u63,
    "chunks": _tokens,
    "max_rel_error": _finite,
    "worst_position": _u63,
    "witness": _finite,  # [VOTE.4]: the attention-update norms are signed too
}
SAMPLER_CHECK_FIELDS = {"position": _u63, "margin": _finite}
EVIDENCE_FIELDS = {
    "check": st.sampled_from(EvidenceCheck),
    "request": st.sampled_from([dataclasses.replace(REQ, epoch=4), REQ]),
    "signed": st.sampled_from([SIGNED, SIGNED_OTHER]),
    "response": st.sampled_from([None, RESPONSE, SIGNED_RESPONSE]),
    "other": st.sampled_from([None, SIGNED, SIGNED_OTHER]),
    "layer": _u63,
    "position": _u63,
    "measured": _finite,
    "detail": st.text(max_size=12),
}


def _changed(base, fields, data):
    """Return ``base`` with one field (drawn from ``fields``) set to another value."""
    name = data.draw(st.sampled_from(sorted(fields)), label="field")
    value = data.draw(fields[name], label="value")
    changed = dataclasses.replace(base, **{name: value})
    assume(changed != base)
    return changed


def test_field_tables_cover_every_signed_field():
    assert set(REQUEST_FIELDS) == {f.name for f in dataclasses.fields(InferenceRequest)}
    assert set(SAMPLING_FIELDS) == {f.name for f in dataclasses.fields(SamplingParams)}
    assert set(COMMITMENT_FIELDS) == {f.name for f in dataclasses.fields(Commitment)}
    assert set(VOTE_FIELDS) | {"signature"} == {f.name for f in dataclasses.fields(Vote)}
    assert set(LAYER_CHECK_FIELDS) == {f.name for f in dataclasses.fields(LayerCheck)}
    assert set(SAMPLER_CHECK_FIELDS) == {f.name for f in dataclasses.fields(SamplerCheck)}
    assert set(EVIDENCE_FIELDS) == {f.name for f in dataclasses.fields(Evidence)}


@given(st.data())
def test_request_digest_changes_with_any_field(data):
    assert _changed(REQ, REQUEST_FIELDS, data).digest() != REQ.digest()


@given(st.data())
def test_request_digest_changes_with_any_sampling_field(data):
    sampling = _changed(SAMPLING, SAMPLING_FIELDS, data)
    assert sampling.encode() != SAMPLING.encode()
    assert dataclasses.replace(REQ, sampling=sampling).digest() != REQ.digest()


@given(st.data())
def test_commitment_root_changes_with_any_field(data):
    assert _changed(COMMIT, COMMITMENT_FIELDS, data).signing_root() != COMMIT.signing_root()


@given(st.data())
def test_vote_root_changes_with_any_field(data):
    assert _changed(VOTE, VOTE_FIELDS, data).signing_root() != VOTE.signing_root()


@given(st.data(), st.integers(0, 1))
def test_vote_root_changes_with_any_layer_check_field(data, which):
    check = _changed(VOTE.layer_checks[which], LAYER_CHECK_FIELDS, data)
    checks = list(VOTE.layer_checks)
    checks[which] = check
    assert (
        dataclasses.replace(VOTE, layer_checks=tuple(checks)).signing_root() != VOTE.signing_root()
    )


def test_vote_root_binds_layer_check_order():
    swapped = dataclasses.replace(VOTE, layer_checks=VOTE.layer_checks[::-1])
    assert swapped.signing_root() != VOTE.signing_root()


@given(st.data(), st.integers(0, 1))
def test_vote_root_changes_with_any_sampler_check_field(data, which):
    checks = list(VOTE.sampler_checks)
    checks[which] = _changed(checks[which], SAMPLER_CHECK_FIELDS, data)
    changed = dataclasses.replace(VOTE, sampler_checks=tuple(checks))
    assert changed.signing_root() != VOTE.signing_root()


def test_vote_root_binds_sampler_check_order():
    swapped = dataclasses.replace(VOTE, sampler_checks=VOTE.sampler_checks[::-1])
    assert swapped.signing_root() != VOTE.signing_root()


@given(st.data())
def test_evidence_digest_changes_with_any_field(data):
    assert _changed(EVIDENCE, EVIDENCE_FIELDS, data).digest() != EVIDENCE.digest()


def test_evidence_digest_binds_the_response_signature_and_the_second_commitment():
    # The signed parts are bound with their signatures: a re-signed part is another claim.
    base = dataclasses.replace(EVIDENCE, response=SIGNED_RESPONSE, other=SIGNED_OTHER)
    resigned = dataclasses.replace(SIGNED_RESPONSE, signature=VERIFIER.sign(b"x" * 32))
    assert dataclasses.replace(base, response=resigned).digest() != base.digest()
    other = dataclasses.replace(SIGNED_OTHER, signature=VERIFIER.sign(b"y" * 32))
    assert dataclasses.replace(base, other=other).digest() != base.digest()
    signed = dataclasses.replace(SIGNED, signature=VERIFIER.sign(b"z" * 32))
    assert dataclasses.replace(base, signed=signed).digest() != base.digest()


def test_evidence_digest_depends_on_network_and_names_the_accused():
    moved = dataclasses.replace(EVIDENCE, request=dataclasses.replace(REQ, network_id="net-b"))
    assert moved.digest() != EVIDENCE.digest()
    assert EVIDENCE.executor_key == EXEC.public_key


@given(st.binary(min_size=64, max_size=64))
def test_vote_root_excludes_the_signature(signature):
    assert (
        dataclasses.replace(VOTE, signature=Signature(signature)).signing_root()
        == VOTE.signing_root()
    )


def test_roots_of_different_statements_never_collide():
    roots = {
        REQ.digest(),
        REQ.sampling_seed(),
        COMMIT.signing_root(),
        VOTE.signing_root(),
        compute_challenge_message(NET, SIGNED.digest),
        ValidatorSet.of_keys(NET, (EXEC.public_key,)).digest(),
        EVIDENCE.digest(),
        SIGNED_RESPONSE.signing_root(),
    }
    assert len(roots) == 8


def test_digest_depends_on_network():
    assert dataclasses.replace(REQ, network_id="net-b").digest() != REQ.digest()
    assert compute_challenge_message("net-b", SIGNED.digest) != compute_challenge_message(
        NET, SIGNED.digest
    )


# --- sampling seed [SAMPLE.1]


@given(st.data())
def test_sampling_seed_ignores_every_field_but_request_id_and_network(data):
    fields = {k: v for k, v in REQUEST_FIELDS.items() if k not in ("request_id", "network_id")}
    assert _changed(REQ, fields, data).sampling_seed() == REQ.sampling_seed()


@given(_bytes16, st.text(max_size=12))
def test_sampling_seed_depends_on_request_id_and_network(request_id, network_id):
    other = dataclasses.replace(REQ, request_id=request_id, network_id=network_id)
    assert len(other.sampling_seed()) == 32
    assert other.sampling_seed() == compute_signing_root(TAG_SAMPLING_SEED, network_id, request_id)
    if (request_id, network_id) != (REQ.request_id, REQ.network_id):
        assert other.sampling_seed() != REQ.sampling_seed()


# --- signatures [COMMIT.2]


@given(st.data())
def test_invalid_tampered_commitment_fails_check(data):
    tampered = SignedCommitment(_changed(COMMIT, COMMITMENT_FIELDS, data), SIGNED.signature)
    with pytest.raises(ProtocolError):
        tampered.check()


@given(st.integers(0, 511))
def test_invalid_commitment_signature_bit_flip(bit):
    sig = bytearray(SIGNED.signature)
    sig[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadSignature):
        SignedCommitment(COMMIT, Signature(bytes(sig))).check()


def test_invalid_commitment_signed_by_another_key():
    with pytest.raises(BadSignature):
        SignedCommitment(COMMIT, VERIFIER.sign(COMMIT.signing_root())).check()


def test_invalid_commitment_signature_length():
    with pytest.raises(Malformed):
        SignedCommitment(COMMIT, Signature(SIGNED.signature[:63])).check()


def test_commitment_resigned_after_change_passes_but_has_a_new_digest():
    changed = dataclasses.replace(COMMIT, tokens=(1, 2, 3, 7, 9))
    resigned = SignedCommitment(changed, EXEC.sign(changed.signing_root()))
    resigned.check()
    assert resigned.digest != SIGNED.digest


@given(st.data())
def test_invalid_tampered_vote_fails_check(data):
    tampered = dataclasses.replace(_changed(VOTE, VOTE_FIELDS, data), signature=VOTE.signature)
    with pytest.raises(ProtocolError):
        tampered.check()


def test_invalid_vote_signed_by_another_key():
    with pytest.raises(BadSignature):
        dataclasses.replace(VOTE, signature=EXEC.sign(VOTE.signing_root())).check()


def test_invalid_unsigned_vote():
    with pytest.raises(Malformed):
        _UNSIGNED_VOTE.check()


# --- opening responses [OPEN.1]


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": "net-b"},
        {"commitment_digest": b"\x00" * 32},
        {"openings": RESPONSE.openings[::-1]},
        {"openings": RESPONSE.openings[:1]},
        {"openings": (RESPONSE.openings[0], TileOpening(TileRef(1, 2), b"leaf-c", _PROOF))},
        {"openings": (RESPONSE.openings[0], TileOpening(TileRef(2, 1), b"leaf-b", _PROOF))},
        {"openings": (RESPONSE.openings[0], TileOpening(TileRef(1, 3), b"leaf-b", _PROOF))},
    ],
    ids=lambda c: repr(c)[:50],
)
def test_opening_root_binds_network_commitment_tiles_and_leaves(changes):
    assert dataclasses.replace(RESPONSE, **changes).signing_root() != RESPONSE.signing_root()


# --- derived properties


@given(st.integers(0, MAX_F))
def test_quorum_is_2f_plus_1_and_committee_3f_plus_1(f):
    req = dataclasses.replace(REQ, f=f)
    assert req.quorum == 2 * f + 1
    assert req.committee_size == 3 * f + 1
    # Any two quorums of one committee share at least f + 1 members, so one honest one.
    assert 2 * req.quorum - req.committee_size == f + 1


def test_commitment_derived_values():
    assert COMMIT.num_chunks == 3
    assert COMMIT.output_tokens == (7, 8)
    assert COMMIT.executor_id == EXEC.node_id
    assert VOTE.verifier_id == VERIFIER.node_id
    assert VOTE.max_error == 2e-7
    assert dataclasses.replace(VOTE, layer_checks=()).max_error == 0.0
    assert VOTE.max_margin == 1e-4
    assert dataclasses.replace(VOTE, sampler_checks=()).max_margin == 0.0


# --- the spec's worked examples


def test_spec_example_default_sampling_encoding():
    # [REQ.2]: the defaults and their canonical bytes.
    assert SamplingParams() == SamplingParams(0.0, 0, 1.0, 64, True)
    assert SamplingParams().encode().hex() == (
        "050000000000000000030000000000000000053ff00000000000000300000000000000400801"
    )


def test_spec_example_request():
    # [REQ.1] example of docs/spec/commitment.md (m = 4, q = 0).
    validators = (SigningKey.from_seed(b"\x00" * 32).public_key,)
    vset = ValidatorSet.of_keys("testnet", validators).digest()
    req = InferenceRequest(
        network_id="testnet",
        request_id=b"\x00" * 16,
        epoch=0,
        model_id=ModelId(b"\x00" * 32),
        prompt_tokens=(1, 2, 3),
        sampling=SamplingParams(),
        f=1,
        layers_per_verifier=2,
        validator_set_digest=vset,
        positions_per_verifier=4,
    )
    req.validate()
    assert vset.hex() == "c410f8de0c6d9149617fbb2672a5331ed5d94d0d2c7f38d514e1793297708551"
    assert req.digest().hex() == "88d78ac00597ee5751b4e808c21d07a0174ec9ebb38219a8110aa11901dc8bc5"
    assert req.sampling_seed().hex() == (
        "7ac04d124800abe4ef39046b0f3f3d3f224846ceef435a939b0fe59b5c2fb335"
    )

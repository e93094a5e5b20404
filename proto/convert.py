"""Explicit conversion between protobuf messages and the protocol's dataclasses.

``from_pb`` functions validate structure and raise :class:`bft.errors.Malformed`; they never
check signatures (that is the core's job, so that it raises the right error kind).
"""

from __future__ import annotations

import math

from google.protobuf.message import Message

from bft.confirmation import Confirmation, Finding
from bft.errors import Malformed
from bft.join import JoinRequest, LeaveRequest
from bft.limits import MAX_LAYERS, MAX_LEAVES, MAX_OPENINGS, MAX_TEXT, MAX_VALIDATORS
from bft.messages import (
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
)
from bft.orders import Order
from bft.receipt import Receipt
from bft.types import Digest, ModelId, PublicKey, Signature
from bft.validators import Endorsement, SignedValidatorSet, Validator, ValidatorSet
from merkle.errors import MalformedProof
from merkle.sketch import SketchCheck
from merkle.tree import MAX_PROOF_STEPS, MerkleProof, ProofStep
from proto import verihive_pb2 as pb
from slashing.records import Offence, SlashRecord


def _require(msg: Message, name: str) -> None:
    if not msg.HasField(name):
        raise Malformed(f"{type(msg).__name__}.{name} is missing")


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise Malformed(f"{what} is not finite")
    return value


def sampling_to_pb(s: SamplingParams) -> pb.SamplingParams:
    """Return the protobuf form of ``s``."""
    return pb.SamplingParams(
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        max_new_tokens=s.max_new_tokens,
        stop_at_eos=s.stop_at_eos,
    )


def sampling_from_pb(m: pb.SamplingParams) -> SamplingParams:
    """Return validated sampling parameters from ``m``."""
    s = SamplingParams(
        temperature=_finite(m.temperature, "temperature"),
        top_k=m.top_k,
        top_p=_finite(m.top_p, "top_p"),
        max_new_tokens=m.max_new_tokens,
        stop_at_eos=m.stop_at_eos,
    )
    s.validate()
    return s


def request_to_pb(r: InferenceRequest) -> pb.InferenceRequest:
    """Return the protobuf form of ``r``."""
    return pb.InferenceRequest(
        network_id=r.network_id,
        request_id=r.request_id,
        epoch=r.epoch,
        model_id=r.model_id,
        prompt_tokens=r.prompt_tokens,
        sampling=sampling_to_pb(r.sampling),
        f=r.f,
        layers_per_verifier=r.layers_per_verifier,
        validator_set_digest=r.validator_set_digest,
        positions_per_verifier=r.positions_per_verifier,
        sequence_check_ppm=r.sequence_check_ppm,
    )


def request_from_pb(m: pb.InferenceRequest) -> InferenceRequest:
    """Return a validated request from ``m``."""
    _require(m, "sampling")
    r = InferenceRequest(
        network_id=m.network_id,
        request_id=m.request_id,
        epoch=m.epoch,
        model_id=ModelId(m.model_id),
        prompt_tokens=tuple(m.prompt_tokens),
        sampling=sampling_from_pb(m.sampling),
        f=m.f,
        layers_per_verifier=m.layers_per_verifier,
        validator_set_digest=Digest(m.validator_set_digest),
        positions_per_verifier=m.positions_per_verifier,
        sequence_check_ppm=m.sequence_check_ppm,
    )
    r.validate()
    return r


def commitment_to_pb(s: SignedCommitment) -> pb.SignedCommitment:
    """Return the protobuf form of the signed commitment ``s``."""
    c = s.commitment
    return pb.SignedCommitment(
        commitment=pb.Commitment(
            network_id=c.network_id,
            request_digest=c.request_digest,
            model_id=c.model_id,
            executor_key=c.executor_key,
            tokens=c.tokens,
            prompt_len=c.prompt_len,
            dtype=c.dtype,
            backend=c.backend,
            num_layers=c.num_layers,
            hidden_size=c.hidden_size,
            chunk_size=c.chunk_size,
            merkle_root=c.merkle_root,
            num_leaves=c.num_leaves,
            sketch=c.sketch,
            settings=c.settings,
        ),
        signature=s.signature,
    )


def commitment_from_pb(m: pb.SignedCommitment) -> SignedCommitment:
    """Return a structurally valid signed commitment from ``m`` (signature not yet checked)."""
    _require(m, "commitment")
    c = m.commitment
    commitment = Commitment(
        network_id=c.network_id,
        request_digest=Digest(c.request_digest),
        model_id=ModelId(c.model_id),
        executor_key=PublicKey(c.executor_key),
        tokens=tuple(c.tokens),
        prompt_len=c.prompt_len,
        dtype=c.dtype,
        backend=c.backend,
        num_layers=c.num_layers,
        hidden_size=c.hidden_size,
        chunk_size=c.chunk_size,
        merkle_root=Digest(c.merkle_root),
        num_leaves=c.num_leaves,
        sketch=tuple(c.sketch),
        settings=c.settings,
    )
    commitment.validate()
    return SignedCommitment(commitment=commitment, signature=Signature(m.signature))


def tile_to_pb(t: TileRef) -> pb.TileRef:
    """Return the protobuf form of ``t``."""
    return pb.TileRef(boundary=t.boundary, chunk=t.chunk)


def tile_from_pb(m: pb.TileRef) -> TileRef:
    """Return the tile reference in ``m``."""
    if m.boundary > MAX_LAYERS or m.chunk > MAX_LEAVES:
        raise Malformed("tile reference out of range")
    return TileRef(boundary=m.boundary, chunk=m.chunk)


def proof_to_pb(p: MerkleProof) -> pb.MerkleProof:
    """Return the protobuf form of ``p``."""
    return pb.MerkleProof(
        leaf_index=p.leaf_index,
        tree_size=p.tree_size,
        steps=[pb.ProofStep(bit=s.bit, digest=s.digest) for s in p.steps],
    )


def proof_from_pb(m: pb.MerkleProof) -> MerkleProof:
    """Return a structurally valid proof from ``m``."""
    if len(m.steps) > MAX_PROOF_STEPS:
        raise Malformed("Merkle proof too long")
    p = MerkleProof(
        leaf_index=m.leaf_index,
        tree_size=m.tree_size,
        steps=tuple(ProofStep(bit=s.bit, digest=Digest(s.digest)) for s in m.steps),
    )
    try:
        p.validate()
    except MalformedProof as exc:
        raise Malformed(str(exc)) from None
    return p


def opening_response_to_pb(r: OpeningResponse) -> pb.OpenResponse:
    """Return the protobuf form of ``r``."""
    return pb.OpenResponse(
        network_id=r.network_id,
        commitment_digest=r.commitment_digest,
        openings=[
            pb.TileOpening(tile=tile_to_pb(o.tile), leaf=o.leaf, proof=proof_to_pb(o.proof))
            for o in r.openings
        ],
        signature=r.signature,
        commitment=commitment_to_pb(r.commitment) if r.commitment else None,
    )


def opening_response_from_pb(m: pb.OpenResponse) -> OpeningResponse:
    """Return a structurally valid opening response from ``m`` (signature not yet checked)."""
    if len(m.openings) > MAX_OPENINGS:
        raise Malformed("too many openings")
    openings = []
    for o in m.openings:
        _require(o, "tile")
        _require(o, "proof")
        openings.append(
            TileOpening(tile=tile_from_pb(o.tile), leaf=o.leaf, proof=proof_from_pb(o.proof))
        )
    return OpeningResponse(
        network_id=m.network_id,
        commitment_digest=Digest(m.commitment_digest),
        openings=tuple(openings),
        signature=Signature(m.signature),
        commitment=commitment_from_pb(m.commitment) if m.HasField("commitment") else None,
    )


def vote_to_pb(v: Vote) -> pb.Vote:
    """Return the protobuf form of ``v``."""
    return pb.Vote(
        network_id=v.network_id,
        request_digest=v.request_digest,
        commitment_digest=v.commitment_digest,
        verifier_key=v.verifier_key,
        verdict=int(v.verdict),  # type: ignore[arg-type]
        challenge_signature=v.challenge_signature,
        layer_checks=[
            pb.LayerCheck(
                layer=c.layer,
                chunks=c.chunks,
                max_rel_error=c.max_rel_error,
                worst_position=c.worst_position,
                witness=c.witness,
            )
            for c in v.layer_checks
        ],
        embedding_max_error=v.embedding_max_error,
        reason=v.reason,
        signature=v.signature,
        sampler_checks=[
            pb.SamplerCheck(position=s.position, margin=s.margin) for s in v.sampler_checks
        ],
        escalated=v.escalated,
        evidence=evidence_to_pb(v.evidence) if v.evidence else None,
        sequence_check=(
            pb.SequenceCheck(chunk=v.sequence_check.chunk, mismatch=v.sequence_check.mismatch)
            if v.sequence_check
            else None
        ),
    )


def vote_from_pb(m: pb.Vote) -> Vote:
    """Return a structurally valid vote from ``m`` (signature not yet checked)."""
    try:
        verdict = Verdict(m.verdict)
    except ValueError as exc:
        raise Malformed(f"unknown verdict {m.verdict}") from exc
    if len(m.layer_checks) > MAX_LAYERS:
        raise Malformed("too many layer checks")
    v = Vote(
        network_id=m.network_id,
        request_digest=Digest(m.request_digest),
        commitment_digest=Digest(m.commitment_digest),
        verifier_key=PublicKey(m.verifier_key),
        verdict=verdict,
        challenge_signature=Signature(m.challenge_signature),
        layer_checks=tuple(
            LayerCheck(
                layer=c.layer,
                chunks=tuple(c.chunks),
                max_rel_error=_finite(c.max_rel_error, "max_rel_error"),
                worst_position=c.worst_position,
                witness=_finite(c.witness, "witness"),
            )
            for c in m.layer_checks
        ),
        embedding_max_error=_finite(m.embedding_max_error, "embedding_max_error"),
        reason=m.reason,
        signature=Signature(m.signature),
        sampler_checks=tuple(
            SamplerCheck(position=s.position, margin=_finite(s.margin, "margin"))
            for s in m.sampler_checks
        ),
        escalated=m.escalated,
        evidence=evidence_from_pb(m.evidence) if m.HasField("evidence") else None,
        sequence_check=(
            SketchCheck(
                chunk=m.sequence_check.chunk,
                mismatch=_finite(m.sequence_check.mismatch, "mismatch"),
            )
            if m.HasField("sequence_check")
            else None
        ),
    )
    v.validate()
    return v


_CHECKS = {
    EvidenceCheck.COMMITMENT: pb.CHECK_COMMITMENT,
    EvidenceCheck.LENGTH: pb.CHECK_LENGTH,
    EvidenceCheck.OPENING: pb.CHECK_OPENING,
    EvidenceCheck.EMBEDDING: pb.CHECK_EMBEDDING,
    EvidenceCheck.LAYER: pb.CHECK_LAYER,
    EvidenceCheck.SAMPLER: pb.CHECK_SAMPLER,
    EvidenceCheck.EQUIVOCATION: pb.CHECK_EQUIVOCATION,
    EvidenceCheck.SEQUENCE: pb.CHECK_SEQUENCE,
}
_CHECKS_BACK = {v: k for k, v in _CHECKS.items()}


def evidence_to_pb(e: Evidence) -> pb.Evidence:
    """Return the protobuf form of ``e``."""
    return pb.Evidence(
        check=_CHECKS[e.check],
        request=request_to_pb(e.request),
        commitment=commitment_to_pb(e.signed),
        response=opening_response_to_pb(e.response) if e.response else None,
        other=commitment_to_pb(e.other) if e.other else None,
        layer=e.layer,
        position=e.position,
        measured=e.measured,
        detail=e.detail,
    )


def evidence_from_pb(m: pb.Evidence) -> Evidence:
    """Return structurally valid evidence from ``m`` (signatures not yet checked). [EVID.2]"""
    if m.check not in _CHECKS_BACK:
        raise Malformed(f"unknown evidence check {m.check}")
    _require(m, "request")
    _require(m, "commitment")
    if len(m.detail) > MAX_TEXT:
        raise Malformed("evidence detail too long")
    return Evidence(
        check=_CHECKS_BACK[m.check],
        request=request_from_pb(m.request),
        signed=commitment_from_pb(m.commitment),
        response=opening_response_from_pb(m.response) if m.HasField("response") else None,
        other=commitment_from_pb(m.other) if m.HasField("other") else None,
        layer=m.layer,
        position=m.position,
        measured=_finite(m.measured, "measured"),
        detail=m.detail,
    )


def validator_set_to_pb(s: SignedValidatorSet) -> pb.SignedValidatorSet:
    """Return the protobuf form of the signed validator set ``s``."""
    v = s.vset
    return pb.SignedValidatorSet(
        set=pb.ValidatorSet(
            network_id=v.network_id,
            epoch=v.epoch,
            previous=v.previous,
            validators=[pb.Validator(key=m.key, trust=m.trust) for m in v.validators],
        ),
        endorsements=[pb.Endorsement(key=e.key, signature=e.signature) for e in s.endorsements],
    )


def validator_set_from_pb(m: pb.SignedValidatorSet) -> SignedValidatorSet:
    """Return a structurally valid signed validator set (endorsements not yet checked)."""
    _require(m, "set")
    if len(m.set.validators) > MAX_VALIDATORS or len(m.endorsements) > MAX_VALIDATORS:
        raise Malformed("too many validators or endorsements")
    vset = ValidatorSet(
        network_id=m.set.network_id,
        epoch=m.set.epoch,
        validators=tuple(Validator(PublicKey(v.key), v.trust) for v in m.set.validators),
        previous=Digest(m.set.previous),
    )
    vset.validate()
    endorsements = tuple(
        Endorsement(PublicKey(e.key), Signature(e.signature)) for e in m.endorsements
    )
    for e in endorsements:
        if len(e.key) != 32 or len(e.signature) != 64:
            raise Malformed("endorsement key or signature has the wrong size")
    return SignedValidatorSet(vset, endorsements)


def receipt_to_pb(r: Receipt) -> pb.Receipt:
    """Return the protobuf form of ``r``."""
    return pb.Receipt(
        request=request_to_pb(r.request),
        commitment=commitment_to_pb(r.signed_commitment),
        validator_set=validator_set_to_pb(r.validator_set),
        votes=[vote_to_pb(v) for v in r.votes],
    )


def receipt_from_pb(m: pb.Receipt) -> Receipt:
    """Return a structurally valid receipt from ``m`` (signatures not yet checked)."""
    _require(m, "request")
    _require(m, "commitment")
    _require(m, "validator_set")
    if len(m.votes) > MAX_VALIDATORS:
        raise Malformed("too many votes")
    return Receipt(
        request=request_from_pb(m.request),
        signed_commitment=commitment_from_pb(m.commitment),
        validator_set=validator_set_from_pb(m.validator_set),
        votes=tuple(vote_from_pb(v) for v in m.votes),
    )


def confirmation_to_pb(c: Confirmation) -> pb.Confirmation:
    """Return the protobuf form of ``c``."""
    return pb.Confirmation(
        network_id=c.network_id,
        request_digest=c.request_digest,
        commitment_digest=c.commitment_digest,
        accusation_digest=c.accusation_digest,
        verifier_key=c.verifier_key,
        finding=int(c.finding),  # type: ignore[arg-type]
        measured=c.measured,
        detail=c.detail,
        signature=c.signature,
    )


def confirmation_from_pb(m: pb.Confirmation) -> Confirmation:
    """Return a structurally valid confirmation (signature not yet checked)."""
    try:
        finding = Finding(m.finding)
    except ValueError as exc:
        raise Malformed(f"unknown finding {m.finding}") from exc
    c = Confirmation(
        network_id=m.network_id,
        request_digest=Digest(m.request_digest),
        commitment_digest=Digest(m.commitment_digest),
        accusation_digest=Digest(m.accusation_digest),
        verifier_key=PublicKey(m.verifier_key),
        finding=finding,
        measured=_finite(m.measured, "measured"),
        detail=m.detail,
        signature=Signature(m.signature),
    )
    c.validate()
    return c


def slash_to_pb(r: SlashRecord, vset: SignedValidatorSet) -> pb.SlashProof:
    """Return the protobuf form of the slash record ``r`` with its epoch's validator set."""
    return pb.SlashProof(
        offence=r.offence.value,
        offender=r.offender,
        request=request_to_pb(r.request),
        commitment=commitment_to_pb(r.signed),
        accusation=vote_to_pb(r.accusation) if r.accusation else None,
        confirmations=[confirmation_to_pb(c) for c in r.confirmations],
        votes=[vote_to_pb(v) for v in r.votes],
        validator_set=validator_set_to_pb(vset),
    )


def slash_from_pb(m: pb.SlashProof) -> tuple[SlashRecord, SignedValidatorSet]:
    """Return a structurally valid slash record and its validator set (nothing checked yet)."""
    for name in ("request", "commitment", "validator_set"):
        _require(m, name)
    try:
        offence = Offence(m.offence)
    except ValueError as exc:
        raise Malformed(f"unknown offence {m.offence!r}") from exc
    if len(m.offender) != 32:
        raise Malformed("offender key must be 32 bytes")
    if len(m.confirmations) > MAX_VALIDATORS or len(m.votes) > 2:
        raise Malformed("too many confirmations or votes")
    record = SlashRecord(
        offence=offence,
        offender=PublicKey(m.offender),
        request=request_from_pb(m.request),
        signed=commitment_from_pb(m.commitment),
        accusation=vote_from_pb(m.accusation) if m.HasField("accusation") else None,
        confirmations=tuple(confirmation_from_pb(c) for c in m.confirmations),
        votes=tuple(vote_from_pb(v) for v in m.votes),
    )
    return record, validator_set_from_pb(m.validator_set)


def join_to_pb(j: JoinRequest) -> pb.JoinRequest:
    """Return ``j`` as protobuf."""
    return pb.JoinRequest(
        network_id=j.network_id,
        public_key=j.public_key,
        address=j.address,
        model_id=j.model_id,
        profile=j.profile,
        tokens_per_second=j.tokens_per_second,
        nonce=j.nonce,
        signature=j.signature,
    )


def join_from_pb(m: pb.JoinRequest) -> JoinRequest:
    """Return the validated join request of ``m``; ``Malformed`` when it is not one. [JOIN.1]"""
    j = JoinRequest(
        network_id=m.network_id,
        public_key=PublicKey(m.public_key),
        address=m.address,
        model_id=ModelId(m.model_id),
        profile=m.profile,
        tokens_per_second=m.tokens_per_second,
        nonce=m.nonce,
        signature=Signature(m.signature),
    )
    j.validate()
    return j


def leave_to_pb(j: LeaveRequest) -> pb.LeaveRequest:
    """Return ``j`` as protobuf."""
    return pb.LeaveRequest(
        network_id=j.network_id,
        public_key=j.public_key,
        issued_at_ms=j.issued_at_ms,
        signature=j.signature,
    )


def leave_from_pb(m: pb.LeaveRequest) -> LeaveRequest:
    """Return the validated leave request of ``m``; ``Malformed`` when it is not one. [JOIN.3]"""
    j = LeaveRequest(
        network_id=m.network_id,
        public_key=PublicKey(m.public_key),
        issued_at_ms=m.issued_at_ms,
        signature=Signature(m.signature),
    )
    j.validate()
    return j


def order_to_pb(o: Order) -> pb.Order:
    """Return ``o`` as protobuf."""
    return pb.Order(assembler_key=o.assembler_key, signature=o.signature)


def order_from_pb(m: pb.Order) -> Order:
    """Return the validated order of ``m``; ``Malformed`` when it is not one. [ADMIT.1]"""
    o = Order(PublicKey(m.assembler_key), Signature(m.signature))
    o.validate()
    return o

"""Auditing evidence: does a REJECT's evidence prove misbehaviour? [EVID.1]-[EVID.4]

Anyone can run :func:`audit_evidence`. Equivocation and bad openings need signatures and
hashes only; commitment, length, embedding, layer, sampler and sequence claims need the model the
commitment names, and are re-measured with the auditor's own model and thresholds: the
accuser's numbers are never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bft.crypto import is_valid_signature
from bft.errors import CannotJudge, ProtocolError, Reject
from bft.measure import (
    LayerModel,
    Thresholds,
    compute_commitment_problem,
    compute_length_violation,
    measure_embedding,
    measure_layer,
    measure_sampler,
    measure_sequence,
    open_tiles,
)
from bft.messages import (
    Commitment,
    Evidence,
    EvidenceCheck,
    OpeningResponse,
    SignedCommitment,
    TileRef,
    Vote,
)
from bft.types import ModelId
from merkle.errors import SketchError

MODEL_FREE_CHECKS = frozenset({EvidenceCheck.EQUIVOCATION, EvidenceCheck.OPENING})

Tiles = dict[TileRef, npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class AuditResult:
    """The auditor's verdict: ``proven`` when the evidence shows misbehaviour."""

    proven: bool
    check: EvidenceCheck
    detail: str
    measured: float = 0.0


@dataclass(frozen=True, slots=True)
class AuditModel:
    """The auditor's model: what :class:`LayerModel` gives plus its identity and shape."""

    model: LayerModel
    model_id: ModelId
    num_layers: int
    hidden_size: int


def audit_evidence(
    evidence: Evidence, auditor: AuditModel | None, thresholds: Thresholds | None = None
) -> AuditResult:
    """Return whether ``evidence`` proves the accused executor misbehaved. [EVID.3]

    Raises :class:`CannotJudge` when the claim needs a model and ``auditor`` holds none or
    another one, or when ``thresholds`` hold no bands for the accused's execution profile.
    """
    ev = evidence
    try:
        ev.request.validate()
        ev.signed.check()  # the accused really signed this commitment
    except ProtocolError as exc:
        return _result(ev, False, f"accused commitment is not validly signed: {exc}")
    c = ev.signed.commitment
    if c.request_digest != ev.request.digest():
        return _result(ev, False, "commitment was not signed for the request in the evidence")
    table = thresholds or Thresholds()
    if ev.check is EvidenceCheck.EQUIVOCATION:
        return _audit_equivocation(ev)
    if ev.check in (EvidenceCheck.COMMITMENT, EvidenceCheck.LENGTH):
        auditor = _require_model(auditor, ev)
        problem = compute_commitment_problem(
            ev.request,
            ev.signed,
            auditor.num_layers,
            auditor.hidden_size,
            auditor.model.vocab_size,
            table.profiles,
        ) or compute_length_violation(ev.request, c.output_tokens, auditor.model.eos_ids)
        return _result(ev, problem is not None, problem or "commitment fits its request")
    if ev.check is not EvidenceCheck.OPENING:
        auditor = _require_model(auditor, ev)
        misfit = _compute_misfit(c, auditor)
        if misfit is not None:  # an honest accuser makes a commitment claim here [VERIFY.1]
            return _result(ev, False, f"{misfit}: a commitment claim, not this one")
    if ev.check is EvidenceCheck.SEQUENCE:
        return _audit_sequence(ev, _require_model(auditor, ev), table.require(c.profile))
    response = ev.response
    if response is None:
        return _result(ev, False, "claim needs the executor's signed openings")
    if not is_valid_signature(c.executor_key, response.signing_root(), response.signature):
        return _result(ev, False, "openings are not signed by the accused executor")
    if response.commitment_digest != ev.signed.digest or response.network_id != c.network_id:
        return _result(ev, False, "openings are for another commitment")
    try:
        tiles = open_tiles(ev.signed, response)
    except Reject as exc:
        return _result(ev, ev.check is EvidenceCheck.OPENING, f"signed opening is bad: {exc}")
    if ev.check is EvidenceCheck.OPENING:
        return _result(ev, False, "every signed opening opens the signed root")
    return _audit_computation(ev, _require_model(auditor, ev), table.require(c.profile), tiles)


def _require_model(auditor: AuditModel | None, ev: Evidence) -> AuditModel:
    if auditor is None or auditor.model_id != ev.signed.commitment.model_id:
        raise CannotJudge("this evidence needs the model its commitment names")
    return auditor


def _compute_misfit(c: Commitment, auditor: AuditModel) -> str | None:
    """Return why ``c``'s layers, hidden size or tokens do not fit ``auditor``'s model, or
    ``None``; re-measuring such a commitment would index the model out of its shape."""
    if c.num_layers != auditor.num_layers or c.hidden_size != auditor.hidden_size:
        return "commitment's shape is not the model's"
    if max(c.tokens) >= auditor.model.vocab_size:
        return "commitment holds a token outside the model's vocabulary"
    return None


def _result(ev: Evidence, proven: bool, detail: str, measured: float = 0.0) -> AuditResult:
    return AuditResult(proven, ev.check, detail, measured)


def _audit_equivocation(ev: Evidence) -> AuditResult:
    other = ev.other
    if other is None:
        return _result(ev, False, "equivocation evidence needs a second commitment")
    try:
        other.check()
    except ProtocolError as exc:
        return _result(ev, False, f"second commitment is not validly signed: {exc}")
    a, b = ev.signed.commitment, other.commitment
    if a.executor_key != b.executor_key:
        return _result(ev, False, "the two commitments are by different executors")
    if a.request_digest != b.request_digest:
        return _result(ev, False, "the two commitments are for different requests")
    if ev.signed.digest == other.digest:
        return _result(ev, False, "the two commitments are the same")
    return _result(ev, True, "one executor signed two different commitments for one request")


def _audit_sequence(ev: Evidence, auditor: AuditModel, t: Thresholds) -> AuditResult:
    try:
        sq = measure_sequence(auditor.model, ev.signed)
    except SketchError as exc:  # a malformed sketch is a commitment claim, not this one
        return _result(ev, False, f"sketch cannot be checked: {exc}")
    detail = f"sketch chunk {sq.chunk} mismatches on {sq.mismatch:.3g} of its top entries"
    return _result(ev, sq.mismatch > t.sequence.reject_min, detail, sq.mismatch)


def _audit_computation(
    ev: Evidence, auditor: AuditModel, t: Thresholds, tiles: Tiles
) -> AuditResult:
    c = ev.signed.commitment
    if ev.check is EvidenceCheck.EMBEDDING:
        if not all(TileRef(0, k) in tiles for k in range(c.num_chunks)):
            return _result(ev, False, "embedding claim needs every boundary-0 tile")
        err, pos = measure_embedding(auditor.model, c.tokens, tiles, c.num_chunks)
        detail = f"boundary 0 error {err:.3g} at position {pos}"
        return _result(ev, err > t.embedding.reject_min, detail, err)
    if ev.check is EvidenceCheck.LAYER:
        b = ev.layer
        chunks = tuple(sorted(r.chunk for r in tiles if r.boundary == b))
        inputs_ok = bool(chunks) and all(TileRef(b - 1, k) in tiles for k in range(max(chunks) + 1))
        if not 1 <= b <= c.num_layers or not inputs_ok:
            return _result(ev, False, f"layer claim needs the input and output tiles of layer {b}")
        check = measure_layer(auditor.model, b, chunks, tiles, c.chunk_size, len(c.tokens))
        detail = f"layer {b} recomputes with error {check.max_rel_error:.3g}"
        return _result(ev, check.max_rel_error > t.layer.reject_min, detail, check.max_rel_error)
    if ev.check is EvidenceCheck.SAMPLER:
        p = ev.position
        if not c.prompt_len <= p < len(c.tokens):
            return _result(ev, False, "sampler claim names a position outside the output")
        if TileRef(c.num_layers, (p - 1) // c.chunk_size) not in tiles:
            return _result(ev, False, "sampler claim needs the last-boundary tile before it")
        sc = measure_sampler(auditor.model, ev.request, ev.signed, p, tiles)
        detail = f"sampler margin {sc.margin:.3g} at position {p}"
        return _result(ev, sc.margin > t.sampler.reject_min, detail, sc.margin)
    return _result(ev, False, f"unknown claim {ev.check.value}")


WITNESS_TOLERANCE = 1e-3
"""Relative tolerance when re-computing a vote's witnesses (honest noise is ~1e-6)."""


@dataclass(frozen=True, slots=True)
class SpotAudit:
    """Whether a vote's reported work re-computes: ``ok`` false means a lazy or lying vote."""

    ok: bool
    detail: str


def spot_audit_vote(
    vote: Vote,
    signed: SignedCommitment,
    response: OpeningResponse,
    auditor: AuditModel,
    thresholds: Thresholds | None = None,
) -> SpotAudit:
    """Re-run the layer checks ``vote`` reports from the executor's openings. [VOTE.4]

    A vote whose witnesses (attention-update norms, which no commitment holds) or layer errors
    do not re-compute was signed without the work, or with made-up results. ``response`` must
    open the tiles of the vote's layer checks (the executor serves them to anyone).
    """
    vote.check()
    if vote.commitment_digest != signed.digest:
        raise Reject("vote is about another commitment")
    t = (thresholds or Thresholds()).require(signed.commitment.profile)
    tiles = open_tiles(signed, response)
    c = signed.commitment
    for lc in vote.layer_checks:
        re = measure_layer(auditor.model, lc.layer, lc.chunks, tiles, c.chunk_size, len(c.tokens))
        if abs(re.witness - lc.witness) > WITNESS_TOLERANCE * max(re.witness, 1e-12):
            return SpotAudit(
                False, f"layer {lc.layer} witness {lc.witness:.6g}, re-computed {re.witness:.6g}"
            )
        if abs(re.max_rel_error - lc.max_rel_error) > t.layer.accept_max:
            return SpotAudit(
                False,
                f"layer {lc.layer} error {lc.max_rel_error:.3g}, "
                f"re-computed {re.max_rel_error:.3g}",
            )
    return SpotAudit(True, f"{len(vote.layer_checks)} layer checks re-compute")

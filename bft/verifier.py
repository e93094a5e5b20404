"""The verifier's protocol core: challenge, check openings, vote. [VERIFY.1]-[VERIFY.7]

Verifiers measure, thresholds decide: the checks return measurements and :class:`Thresholds`
(configuration, with units) turns them into a verdict. Between a check's ``accept_max`` and
``reject_min`` lies a grey band that escalates to the doubled challenge, never a REJECT.
The model is injected as a :class:`LayerModel`, so this module holds no torch code.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from bft.challenge import Challenge, compute_commitment_challenge
from bft.crypto import SigningKey, is_valid_signature
from bft.errors import Ignore, Malformed, ProtocolError, Reject
from bft.limits import MAX_TOKENS
from bft.messages import (
    Evidence,
    EvidenceCheck,
    InferenceRequest,
    LayerCheck,
    OpeningResponse,
    SamplerCheck,
    SignedCommitment,
    TileRef,
    Verdict,
    Vote,
    compute_challenge_message,
)
from bft.types import Digest, ModelId, Signature

if TYPE_CHECKING:
    from bft.confirmation import Confirmation
from merkle.errors import BadProof, BadTile, MalformedProof, SketchError
from merkle.sketch import (
    SKETCH_CHUNK,
    SketchCheck,
    check_sketch_shape,
    measure_sketch,
)
from merkle.tiles import compute_leaf_index, decode_tile
from merkle.tree import check_inclusion

# Denominator floor for relative errors, in the hidden state's own units.
_NORM_FLOOR = 1e-12
# Margins are capped so that votes stay finite.
_MARGIN_CAP = 1e30
MAX_REMEMBERED_VOTES = 65536
"""Votes a verifier keeps to answer repeated asks with the same signed vote. [VOTE.3]"""


class LayerModel(Protocol):
    """What a verifier needs of its model."""

    @property
    def eos_ids(self) -> frozenset[int]:
        """Return the token ids that end generation."""
        ...

    @property
    def vocab_size(self) -> int:
        """Return the vocabulary size."""
        ...

    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return ``[len(tokens), H]`` embeddings."""
        ...

    def final_states(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the ``[len(tokens), H]`` last-boundary states of one prefill. [SKETCH.4]"""
        ...

    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return layer ``layer`` (1..L) applied to positions ``0..P-1`` of ``hidden_in``."""
        ...

    def run_layer_with_update(
        self, layer: int, hidden_in: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return :meth:`run_layer`'s output and the ``[P, H]`` attention update inside it."""
        ...

    def sampler_margin(
        self,
        hidden_last: npt.NDArray[np.float32],
        request: InferenceRequest,
        position: int,
        token: int,
    ) -> float:
        """Return the sampler margin of ``token`` at ``position`` given boundary-L state."""
        ...


DEFAULT_PROFILE = "torch-cpu-float32"
"""The reference execution profile: torch on the CPU in float32. [EXEC.5]"""


@dataclass(frozen=True, slots=True)
class Band:
    """Accept at or below ``accept_max``; reject above ``reject_min``; between: grey."""

    accept_max: float
    reject_min: float

    def classify(self, value: float) -> str:
        """Return ``"accept"``, ``"grey"`` or ``"reject"`` for ``value``."""
        if value <= self.accept_max:
            return "accept"
        return "grey" if value <= self.reject_min else "reject"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Accept/reject bands per check. [VERIFY.4]

    ``layer``: per-position ``|y' - y| / |y - x|`` (dimensionless; ``x`` the committed layer
    input, ``y`` the committed output, ``y'`` the recomputed output).
    ``embedding``: per-position ``|e' - e| / |e'|`` at boundary 0 (dimensionless).
    ``sampler``: sampler margin (logit units, [SAMPLE.5]).
    ``sequence``: sketch mismatch, the largest per-chunk fraction of top entries whose committed
    value does not match the recomputed one (dimensionless, in [0, 1], [SKETCH.4]).
    These built-in defaults are conservative round numbers for float32 on the CPU; nodes load
    the calibrated bands of their backend and dtype instead (``executor.thresholds``, written
    by ``bench/calibrate.py``, see docs/calibration.md).
    """

    layer: Band = Band(1e-5, 1e-4)
    embedding: Band = Band(1e-6, 1e-5)
    sampler: Band = Band(1e-3, 5e-2)
    sequence: Band = Band(0.05, 0.5)
    profile: str = DEFAULT_PROFILE
    """The executor profile (``<backend>-<dtype>``, [EXEC.5]) these bands are for."""
    others: tuple[Thresholds, ...] = ()
    """Bands for further admitted executor profiles (a verifier's calibration table)."""

    @property
    def profiles(self) -> tuple[str, ...]:
        """Return the executor profiles this verifier admits, its own first. [EXEC.5]"""
        return (self.profile, *(t.profile for t in self.others))

    def select(self, profile: str) -> Thresholds | None:
        """Return the bands for commitments of executor ``profile``, or ``None`` if unadmitted."""
        return next((t for t in (self, *self.others) if t.profile == profile), None)

    def require(self, profile: str) -> Thresholds:
        """Return :meth:`select`'s bands or raise :class:`ValueError` (cannot judge)."""
        t = self.select(profile)
        if t is None:
            raise ValueError(f"no calibrated bands for executor profile {profile}")
        return t


@dataclass(frozen=True, slots=True)
class Session:
    """One verification in progress: the challenge and whether it was escalated."""

    request: InferenceRequest
    signed: SignedCommitment
    challenge_signature: Signature
    challenge: Challenge
    escalated: bool = False


@dataclass(frozen=True, slots=True)
class Measurements:
    """Everything one pass of checks measured."""

    embedding_error: float
    layer_checks: tuple[LayerCheck, ...]
    sampler_checks: tuple[SamplerCheck, ...]
    sequence: SketchCheck | None = None


def compute_rel_errors(
    recomputed: npt.NDArray[np.float32],
    committed_out: npt.NDArray[np.float32],
    committed_in: npt.NDArray[np.float32],
) -> npt.NDArray[np.float64]:
    """Return per-position ``|y' - y| / max(|y - x|, floor)``. [VERIFY.3]"""
    num = np.linalg.norm(recomputed.astype(np.float64) - committed_out, axis=-1)
    den = np.linalg.norm(committed_out.astype(np.float64) - committed_in, axis=-1)
    errs: npt.NDArray[np.float64] = num / np.maximum(den, _NORM_FLOOR)
    return errs


def compute_length_violation(
    request: InferenceRequest, output: tuple[int, ...], eos_ids: frozenset[int]
) -> str | None:
    """Return how ``output`` breaks the length/EOS rule of [SAMPLE.4], or ``None``. [VERIFY.8]"""
    s = request.sampling
    if not output:
        return "no output tokens"
    if len(output) > s.max_new_tokens:
        return "more output tokens than max_new_tokens"
    if s.stop_at_eos:
        if any(t in eos_ids for t in output[:-1]):
            return "generation continued past an end-of-sequence token"
        if output[-1] not in eos_ids and len(output) != s.max_new_tokens:
            return "generation stopped early without an end-of-sequence token"
    elif len(output) != s.max_new_tokens:
        return "generation stopped before max_new_tokens with stop_at_eos off"
    return None


def open_tiles(
    signed: SignedCommitment, response: OpeningResponse, wanted: Sequence[TileRef] | None = None
) -> dict[TileRef, npt.NDArray[np.float32]]:
    """Return the decoded tiles of ``response``; raise :class:`Reject` on any bad opening. [OPEN.3]

    ``wanted`` (when given) must be a subset of the opened tiles; extra tiles are checked too.
    """
    c = signed.commitment
    by_tile = {o.tile: o for o in response.openings}
    if len(by_tile) != len(response.openings):
        raise Reject("opening response holds a tile twice")
    out = {}
    for tile, o in sorted(by_tile.items(), key=lambda kv: (kv[0].boundary, kv[0].chunk)):
        if not (0 <= tile.boundary <= c.num_layers and 0 <= tile.chunk < c.num_chunks):
            raise Reject(f"opened tile ({tile.boundary},{tile.chunk}) is outside the commitment")
        index = compute_leaf_index(tile.boundary, tile.chunk, c.num_chunks)
        if o.proof.leaf_index != index:
            raise Reject(f"tile ({tile.boundary},{tile.chunk}) opened at the wrong leaf index")
        rows = min(c.chunk_size, len(c.tokens) - tile.chunk * c.chunk_size)
        try:
            check_inclusion(c.merkle_root, c.num_leaves, o.leaf, o.proof)  # [REJECT] bad opening
            out[tile] = decode_tile(
                o.leaf, boundary=tile.boundary, chunk=tile.chunk, rows=rows, cols=c.hidden_size
            )
        except MalformedProof as exc:
            raise Malformed(str(exc)) from exc
        except (BadProof, BadTile) as exc:  # the executor signed the root and the leaf's hash
            raise Reject(str(exc)) from exc
    return out


def measure_embedding(
    model: LayerModel,
    tokens: tuple[int, ...],
    tiles: dict[TileRef, npt.NDArray[np.float32]],
    num_chunks: int,
) -> tuple[float, int]:
    """Return the largest boundary-0 error and its position. [VERIFY.3]"""
    committed = np.concatenate([tiles[TileRef(0, k)] for k in range(num_chunks)])
    expected = model.embed(tokens)
    errs = compute_rel_errors(committed, expected, np.zeros_like(expected))
    i = int(np.argmax(errs))
    return float(errs[i]), i


def measure_layer(
    model: LayerModel,
    layer: int,
    chunks: tuple[int, ...],
    tiles: dict[TileRef, npt.NDArray[np.float32]],
    chunk_size: int,
    num_tokens: int,
) -> LayerCheck:
    """Re-execute ``layer`` from the committed input and measure each challenged chunk."""
    x = np.concatenate([tiles[TileRef(layer - 1, k)] for k in range(max(chunks) + 1)])
    y_prime, update = model.run_layer_with_update(layer, x)
    worst, worst_pos, witness = 0.0, 0, 0.0
    for k in chunks:
        lo = k * chunk_size
        hi = min(lo + chunk_size, num_tokens)
        errs = compute_rel_errors(y_prime[lo:hi], tiles[TileRef(layer, k)], x[lo:hi])
        witness += float(np.linalg.norm(update[lo:hi].astype(np.float64), axis=-1).sum())
        i = int(np.argmax(errs))
        if errs[i] > worst:
            worst, worst_pos = float(errs[i]), lo + i
    return LayerCheck(layer, chunks, worst, worst_pos, min(witness, _MARGIN_CAP))


def measure_sequence(model: LayerModel, signed: SignedCommitment) -> SketchCheck:
    """Recompute the last boundary with one prefill and compare it with the sketch. [SKETCH.4]"""
    c = signed.commitment
    return measure_sketch(model.final_states(c.tokens), c.sketch)


def measure_sampler(
    model: LayerModel,
    request: InferenceRequest,
    signed: SignedCommitment,
    position: int,
    tiles: dict[TileRef, npt.NDArray[np.float32]],
) -> SamplerCheck:
    """Recompute the sampler's choice of the token at ``position``. [VERIFY.6]"""
    c = signed.commitment
    prev = position - 1
    tile = tiles[TileRef(c.num_layers, prev // c.chunk_size)]
    h = tile[prev % c.chunk_size]
    margin = model.sampler_margin(h[None], request, position, c.tokens[position])
    return SamplerCheck(position=position, margin=min(float(margin), _MARGIN_CAP))


class VerifierCore:
    """Derives challenges, checks openings against the signed root, re-executes, votes."""

    def __init__(
        self,
        key: SigningKey,
        model: LayerModel,
        model_id: ModelId,
        num_layers: int,
        hidden_size: int,
        network_id: str,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.key = key
        self.model = model
        self.model_id = model_id
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.network_id = network_id
        self.thresholds = thresholds or Thresholds()
        self._votes: OrderedDict[tuple[Digest, Digest], Vote] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, vote: Vote) -> Vote:
        """Return the vote this verifier already signed for ``vote``'s commitment, else ``vote``.

        An honest verifier signs one vote per (request, commitment): asked again (a retry, a
        second assembler) it answers with the same vote, so it can never be caught voting both
        ways. [VOTE.3]
        """
        key = (vote.request_digest, vote.commitment_digest)
        with self._lock:
            first = self._votes.setdefault(key, vote)
            self._votes.move_to_end(key)
            while len(self._votes) > MAX_REMEMBERED_VOTES:
                self._votes.popitem(last=False)
            return first

    def recall(self, request: InferenceRequest, signed: SignedCommitment) -> Vote | None:
        """Return the vote already signed on ``signed`` for ``request``, if any."""
        with self._lock:
            return self._votes.get((request.digest(), signed.digest))

    def confirm(
        self, request: InferenceRequest, signed: SignedCommitment, accusation: Vote
    ) -> Confirmation | None:
        """Audit ``accusation``'s evidence with this verifier's model; sign the finding.

        Returns ``None`` (abstain) when the claim needs a model this verifier does not hold.
        Raises :class:`ProtocolError` when the accusation is not a signed REJECT about
        ``signed`` for ``request``. [CONFIRM.2]
        """
        request.validate()
        signed.check()
        accusation.check()
        ev = accusation.evidence
        if accusation.verdict is not Verdict.REJECT or ev is None:
            raise Malformed("only a REJECT vote with evidence can be confirmed")
        if (
            accusation.network_id != self.network_id
            or accusation.request_digest != request.digest()
            or accusation.commitment_digest != signed.digest
            or ev.signed.digest != signed.digest
            or ev.request.digest() != request.digest()
        ):
            raise Reject("accusation is about another request or commitment")
        from bft.confirmation import audit_accusation, sign_confirmation
        from bft.evidence import AuditModel

        auditor = AuditModel(self.model, self.model_id, self.num_layers, self.hidden_size)
        result = audit_accusation(accusation, auditor, self.thresholds)
        if result is None:
            return None
        return sign_confirmation(self.key, accusation, result)

    # -- commitment -------------------------------------------------------------------------

    def check_commitment(
        self, request: InferenceRequest, signed: SignedCommitment
    ) -> tuple[EvidenceCheck, str] | None:
        """Return which rule ``signed`` provably breaks for ``request``, or ``None``. [VERIFY.1]

        Raises (without voting) when the signature fails: an unsigned commitment proves nothing
        about the executor.
        """
        request.validate()
        signed.check()  # [IGNORE] commitment carries a valid executor signature
        if request.network_id != self.network_id:
            raise Malformed("request is for another network")
        if request.model_id != self.model_id:
            raise Reject("request names a model this verifier does not hold")
        c = signed.commitment
        if c.network_id != request.network_id or c.request_digest != request.digest():
            # Anyone can forward an old signed commitment: this proves nothing about the
            # executor, so there is no vote at all (the assembler checks this too). [VERIFY.1]
            raise Ignore("commitment is not bound to this request")
        why = compute_commitment_problem(
            request,
            signed,
            self.num_layers,
            self.hidden_size,
            self.model.vocab_size,
            self.thresholds.profiles,
        )
        if why is not None:
            return EvidenceCheck.COMMITMENT, why
        length = compute_length_violation(
            request, signed.commitment.output_tokens, self.model.eos_ids
        )
        if length is not None:
            return EvidenceCheck.LENGTH, length
        return None

    def start(self, request: InferenceRequest, signed: SignedCommitment) -> Session | Vote:
        """Return the session to fetch openings for, or a REJECT when the commitment is wrong."""
        problem = self.check_commitment(request, signed)
        sig = self.key.sign(compute_challenge_message(self.network_id, signed.digest))
        session = Session(
            request, signed, sig, compute_commitment_challenge(sig, signed.commitment, request)
        )
        if problem is None:
            return session
        check, why = problem
        return self.compute_vote(
            session, Verdict.REJECT, why, evidence=Evidence(check, request, signed, detail=why)
        )

    # -- votes ------------------------------------------------------------------------------

    def compute_vote(
        self,
        session: Session,
        verdict: Verdict,
        reason: str,
        measurements: Measurements | None = None,
        evidence: Evidence | None = None,
    ) -> Vote:
        """Return the signed vote."""
        m = measurements or Measurements(0.0, (), ())
        unsigned = Vote(
            network_id=self.network_id,
            request_digest=session.request.digest(),
            commitment_digest=session.signed.digest,
            verifier_key=self.key.public_key,
            verdict=verdict,
            challenge_signature=session.challenge_signature,
            layer_checks=m.layer_checks,
            embedding_max_error=m.embedding_error,
            reason=reason,
            sampler_checks=m.sampler_checks,
            escalated=session.escalated,
            evidence=evidence,
            sequence_check=m.sequence,
        )
        return replace(unsigned, signature=self.key.sign(unsigned.signing_root()))

    def run(
        self,
        request: InferenceRequest,
        signed: SignedCommitment,
        fetch: Callable[[Session], OpeningResponse],
    ) -> Vote:
        """Verify ``signed`` end to end; ``fetch`` serves a session's openings. [VERIFY.2]

        ``fetch`` raises :class:`ProtocolError` when the openings cannot be had: that is an
        UNAVAILABLE vote. The loop runs at most twice (the base and the escalated challenge).
        """
        known = self.recall(request, signed)
        if known is not None:
            return known
        result = self.start(request, signed)
        while isinstance(result, Session):
            try:
                response = fetch(result)
            except ProtocolError as exc:
                return self.on_unavailable(result, f"openings not served: {exc}")
            result = self.on_openings(result, response)
        return self.remember(result)

    def on_unavailable(self, session: Session, why: str) -> Vote:
        """Return the UNAVAILABLE vote for openings not served. [VERIFY.5]"""
        return self.compute_vote(session, Verdict.UNAVAILABLE, why)

    # -- openings ---------------------------------------------------------------------------

    def on_openings(self, session: Session, response: OpeningResponse) -> Session | Vote:
        """Check ``response`` and return the vote, or an escalated session. [VERIFY.2]"""
        signed = session.signed
        c = signed.commitment
        if response.network_id != self.network_id or not is_valid_signature(
            c.executor_key, response.signing_root(), response.signature
        ):
            # Not attributable to the executor: a liveness fault, never a slash. [VERIFY.5]
            return self.on_unavailable(session, "opening response not signed by the executor")
        if response.commitment_digest != signed.digest:
            return self._on_other_root(session, response)
        wanted = session.challenge.required_tiles()
        if not set(wanted) <= {o.tile for o in response.openings}:
            return self.on_unavailable(session, "challenged tiles not served")
        try:
            tiles = open_tiles(signed, response, wanted)
        except Reject as exc:
            evidence = Evidence(
                EvidenceCheck.OPENING, session.request, signed, response, detail=str(exc)
            )
            return self.compute_vote(session, Verdict.REJECT, str(exc), evidence=evidence)
        m = self.measure(session, tiles)
        return self.decide(session, response, m)

    def _on_other_root(self, session: Session, response: OpeningResponse) -> Vote:
        other = response.commitment
        c = session.signed.commitment
        if (
            other is not None
            and other.digest == response.commitment_digest
            and other.commitment.executor_key == c.executor_key
            and other.commitment.request_digest == c.request_digest
        ):
            try:
                other.check()
            except ProtocolError as exc:  # a bad second signature is no evidence
                return self.on_unavailable(session, f"openings for another commitment ({exc})")
            why = "executor signed two different commitments for one request"
            evidence = Evidence(
                EvidenceCheck.EQUIVOCATION, session.request, session.signed, other=other, detail=why
            )
            return self.compute_vote(session, Verdict.REJECT, why, evidence=evidence)
        return self.on_unavailable(session, "openings are for another commitment")

    def measure(
        self, session: Session, tiles: dict[TileRef, npt.NDArray[np.float32]]
    ) -> Measurements:
        """Run every check of ``session``'s challenge on the opened ``tiles``."""
        c = session.signed.commitment
        emb, _ = measure_embedding(self.model, c.tokens, tiles, c.num_chunks)
        layers = tuple(
            measure_layer(self.model, lc.layer, lc.chunks, tiles, c.chunk_size, len(c.tokens))
            for lc in session.challenge.layers
        )
        samplers = tuple(
            measure_sampler(self.model, session.request, session.signed, p, tiles)
            for p in session.challenge.positions
        )
        sequence = None
        if session.challenge.sequence_check:
            sequence = measure_sequence(self.model, session.signed)
        return Measurements(emb, layers, samplers, sequence)

    def decide(
        self, session: Session, response: OpeningResponse, m: Measurements
    ) -> Session | Vote:
        """Apply the thresholds to ``m``: REJECT, escalate once on grey, or ACCEPT. [VERIFY.4]"""
        t = self.thresholds.require(session.signed.commitment.profile)
        req, signed = session.request, session.signed
        findings: list[tuple[str, Evidence, str]] = []
        cls = t.embedding.classify(m.embedding_error)
        why = f"boundary 0 differs from the token embeddings ({m.embedding_error:.3g})"
        findings.append(
            (
                cls,
                Evidence(
                    EvidenceCheck.EMBEDDING,
                    req,
                    signed,
                    response,
                    measured=m.embedding_error,
                    detail=why,
                ),
                why,
            )
        )
        for lc in m.layer_checks:
            why = f"layer {lc.layer} recomputes with error {lc.max_rel_error:.3g}"
            ev = Evidence(
                EvidenceCheck.LAYER,
                req,
                signed,
                response,
                layer=lc.layer,
                position=lc.worst_position,
                measured=lc.max_rel_error,
                detail=why,
            )
            findings.append((t.layer.classify(lc.max_rel_error), ev, why))
        for sc in m.sampler_checks:
            why = f"token at position {sc.position} is not the sampler's choice"
            why += f" (margin {sc.margin:.3g})"
            ev = Evidence(
                EvidenceCheck.SAMPLER,
                req,
                signed,
                response,
                position=sc.position,
                measured=sc.margin,
                detail=why,
            )
            findings.append((t.sampler.classify(sc.margin), ev, why))
        if m.sequence is not None:
            sq = m.sequence
            why = f"sketch chunk {sq.chunk} mismatches on {sq.mismatch:.3g} of its top entries"
            ev = Evidence(
                EvidenceCheck.SEQUENCE,
                req,
                signed,
                position=sq.chunk * SKETCH_CHUNK,
                measured=sq.mismatch,
                detail=why,
            )
            findings.append((t.sequence.classify(sq.mismatch), ev, why))
        rejects = [f for f in findings if f[0] == "reject"]
        if rejects:
            worst = max(rejects, key=lambda f: f[1].measured / _reject_scale(t, f[1].check))
            return self.compute_vote(session, Verdict.REJECT, worst[2], m, evidence=worst[1])
        if any(f[0] == "grey" for f in findings) and not session.escalated:
            challenge = compute_commitment_challenge(
                session.challenge_signature, signed.commitment, req, escalated=True
            )
            return replace(session, challenge=challenge, escalated=True)
        return self.compute_vote(session, Verdict.ACCEPT, "", m)


def _reject_scale(t: Thresholds, check: EvidenceCheck) -> float:
    band = {
        EvidenceCheck.LAYER: t.layer,
        EvidenceCheck.EMBEDDING: t.embedding,
        EvidenceCheck.SEQUENCE: t.sequence,
    }.get(check, t.sampler)
    return max(band.reject_min, 1e-30)


def compute_commitment_problem(
    request: InferenceRequest,
    signed: SignedCommitment,
    num_layers: int,
    hidden_size: int,
    vocab_size: int,
    profiles: Sequence[str] = (DEFAULT_PROFILE,),
) -> str | None:
    """Return why the signed commitment contradicts ``request`` or the model, or ``None``.

    ``profiles``: the executor profiles the network admits ([EXEC.5]); a commitment of any
    other profile is refused, since no calibrated band could judge it.
    """
    c = signed.commitment
    # The caller has checked that the commitment is bound to ``request`` (its digest); the
    # output length is the length rule's (compute_length_violation).
    problems = [
        (c.model_id != request.model_id, "commitment names another model"),
        (c.tokens[: c.prompt_len] != request.prompt_tokens, "committed prompt differs"),
        (len(c.tokens) > MAX_TOKENS, "too many tokens"),
        (max(c.tokens) >= vocab_size, "token id outside the model's vocabulary"),
        (c.num_layers != num_layers, "commitment has the wrong number of layers"),
        (c.hidden_size != hidden_size, "commitment has the wrong hidden size"),
        (c.profile not in profiles, f"execution profile {c.profile} is not admitted"),
        (_sketch_problem(c.sketch, len(c.tokens)), "sketch does not fit the committed tokens"),
    ]
    return next((why for bad, why in problems if bad), None)


def _sketch_problem(sketch: tuple[bytes, ...], num_tokens: int) -> bool:
    try:
        check_sketch_shape(sketch, num_tokens)
    except SketchError:
        return True
    return False

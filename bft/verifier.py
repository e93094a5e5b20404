"""The verifier's protocol core: challenge, check openings, vote. [VERIFY.1]-[VERIFY.7]

Verifiers measure, thresholds decide: the checks of :mod:`bft.measure` return measurements and
:class:`Thresholds` (configuration, with units) turns them into a verdict. Between a check's
``accept_max`` and ``reject_min`` lies a grey band that escalates to the doubled challenge,
never a REJECT. The model is injected as a :class:`LayerModel`, so this module holds no torch
code.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from bft.challenge import Challenge, compute_commitment_challenge
from bft.confirmation import Confirmation, audit_accusation, sign_confirmation
from bft.crypto import SigningKey, is_valid_signature
from bft.errors import Ignore, Malformed, ProtocolError, Reject
from bft.evidence import AuditModel
from bft.measure import (
    LayerModel,
    Measurements,
    Thresholds,
    Zone,
    compute_commitment_problem,
    compute_length_violation,
    measure_embedding,
    measure_layer,
    measure_sampler,
    measure_sequence,
    open_tiles,
)
from bft.messages import (
    Evidence,
    EvidenceCheck,
    InferenceRequest,
    OpeningResponse,
    SignedCommitment,
    TileRef,
    Verdict,
    Vote,
    compute_challenge_message,
)
from bft.types import Digest, ModelId, Signature
from merkle.sketch import SKETCH_CHUNK

MAX_REMEMBERED_VOTES = 65536
"""Votes a verifier keeps to answer repeated asks with the same signed vote. [VOTE.3]"""


@dataclass(frozen=True, slots=True)
class Session:
    """One verification in progress: the challenge and whether it was escalated."""

    request: InferenceRequest
    signed: SignedCommitment
    challenge_signature: Signature
    challenge: Challenge
    escalated: bool = False


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

        Returns ``None`` (abstain) when this verifier cannot judge the claim (:class:`CannotJudge`:
        no model, or no bands, for it).
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
        signed.check()  # before any lookup: nothing cached answers an unsigned call [ADMIT.2]
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
        results = compute_check_results(m)
        zones = [t.band(r.check).classify(r.measured) for r in results]
        step = DECISIONS[max(zones), session.escalated]
        if step is Step.REJECT:
            rejects = [r for r, zone in zip(results, zones, strict=True) if zone is Zone.REJECT]
            worst = max(rejects, key=lambda r: r.measured / max(t.band(r.check).reject_min, 1e-30))
            evidence = compute_evidence(session, response, worst)
            return self.compute_vote(session, Verdict.REJECT, worst.why, m, evidence=evidence)
        if step is Step.ESCALATE:
            signed, req = session.signed, session.request
            challenge = compute_commitment_challenge(
                session.challenge_signature, signed.commitment, req, escalated=True
            )
            return replace(session, challenge=challenge, escalated=True)
        return self.compute_vote(session, Verdict.ACCEPT, "", m)


class Step(enum.Enum):
    """What a verifier does after one pass of checks. [VERIFY.4], [VERIFY.7]"""

    REJECT = "reject"
    ESCALATE = "escalate"
    ACCEPT = "accept"


DECISIONS: Mapping[tuple[Zone, bool], Step] = {
    # (most severe zone among the pass's checks, challenge already escalated): next step
    (Zone.REJECT, False): Step.REJECT,
    (Zone.REJECT, True): Step.REJECT,
    (Zone.GREY, False): Step.ESCALATE,  # once, to the doubled challenge [VERIFY.7]
    (Zone.GREY, True): Step.ACCEPT,  # grey never rejects
    (Zone.ACCEPT, False): Step.ACCEPT,
    (Zone.ACCEPT, True): Step.ACCEPT,
}
"""The verifier's decision over its checks, as a table. [VERIFY.4], [VERIFY.7]

Every measured check (``layer``, ``embedding``, ``sampler``, ``sequence``) is judged by its own
band (:meth:`Thresholds.band`) and counts alike: a REJECT names the reject finding with the
largest ``measured / reject_min``.
"""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One measured check of a pass: which, its measurement, where, and the reason text."""

    check: EvidenceCheck
    measured: float
    why: str
    layer: int = 0
    position: int = 0


def compute_check_results(m: Measurements) -> tuple[CheckResult, ...]:
    """Return the checks of ``m`` in [VERIFY.4] order: embedding, layers, samplers, sequence."""
    e = m.embedding_error
    results = [
        CheckResult(
            EvidenceCheck.EMBEDDING, e, f"boundary 0 differs from the token embeddings ({e:.3g})"
        )
    ]
    results += [
        CheckResult(
            EvidenceCheck.LAYER,
            lc.max_rel_error,
            f"layer {lc.layer} recomputes with error {lc.max_rel_error:.3g}",
            layer=lc.layer,
            position=lc.worst_position,
        )
        for lc in m.layer_checks
    ]
    results += [
        CheckResult(
            EvidenceCheck.SAMPLER,
            sc.margin,
            f"token at position {sc.position} is not the sampler's choice"
            f" (margin {sc.margin:.3g})",
            position=sc.position,
        )
        for sc in m.sampler_checks
    ]
    if m.sequence is not None:
        sq = m.sequence
        why = f"sketch chunk {sq.chunk} mismatches on {sq.mismatch:.3g} of its top entries"
        results.append(
            CheckResult(EvidenceCheck.SEQUENCE, sq.mismatch, why, position=sq.chunk * SKETCH_CHUNK)
        )
    return tuple(results)


def compute_evidence(session: Session, response: OpeningResponse, r: CheckResult) -> Evidence:
    """Return the evidence of the reject finding ``r``. [EVID.1]

    A sequence claim carries no openings ([SKETCH.5]); every other carries ``response``.
    """
    return Evidence(
        r.check,
        session.request,
        session.signed,
        None if r.check is EvidenceCheck.SEQUENCE else response,
        layer=r.layer,
        position=r.position,
        measured=r.measured,
        detail=r.why,
    )

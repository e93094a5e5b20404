"""Byzantine verifiers: named ways to vote falsely, for tests and ``--byzantine-verifier``.

docs/spec/bft.md lists the modes and the guarantees they are tested against ([GUAR.1]-[GUAR.7]).

Every mode signs what it sends with its own key, so each lie is attributable:

- ``always-accept``: signs ACCEPT without fetching or checking anything (a lazy or colluding
  verifier); it reports the layers, positions and sketch check its challenge selects, with
  made-up zero measurements, so its vote is structurally valid; it refutes every accusation.
- ``always-reject``: fetches the openings, then signs REJECT with made-up evidence (a layer
  claim with an invented measurement); it confirms every accusation.
- ``silent``: never answers (a crash or a withholding verifier).
- ``double-vote``: signs an honest vote and also the opposite verdict on the same commitment
  (the Twins case: two processes behind one key); both reach the assembler.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bft.challenge import compute_commitment_challenge
from bft.confirmation import Confirmation, Finding, sign_confirmation
from bft.errors import ProtocolError, Unavailable
from bft.evidence import AuditResult
from bft.measure import Measurements
from bft.messages import (
    Evidence,
    EvidenceCheck,
    InferenceRequest,
    LayerCheck,
    OpeningResponse,
    SamplerCheck,
    SignedCommitment,
    Verdict,
    Vote,
)
from bft.verifier import Session, VerifierCore
from merkle.sketch import SketchCheck

VERIFIER_MODES = ("always-accept", "always-reject", "silent", "double-vote")

Fetch = Callable[[Session], OpeningResponse]


class AlwaysAcceptVerifier(VerifierCore):
    """Votes ACCEPT on everything without looking; refutes every accusation."""

    def run(self, request: InferenceRequest, signed: SignedCommitment, fetch: Fetch) -> Vote:
        """Sign ACCEPT with the challenge's shape and zero measurements."""
        session = self.start(request, signed)
        if isinstance(session, Vote):  # even a broken commitment gets an ACCEPT
            sig = session.challenge_signature
            ch = compute_commitment_challenge(sig, signed.commitment, request)
            session = Session(request, signed, sig, ch)
        ch = session.challenge
        m = Measurements(
            0.0,
            tuple(LayerCheck(lc.layer, lc.chunks, 0.0, 0) for lc in ch.layers),
            tuple(SamplerCheck(p, 0.0) for p in ch.positions),
            SketchCheck(0, 0.0) if ch.sequence_check else None,
        )
        return self.compute_vote(session, Verdict.ACCEPT, "", m)

    def confirm(
        self, request: InferenceRequest, signed: SignedCommitment, accusation: Vote
    ) -> Confirmation | None:
        """Refute whatever the accusation says."""
        return _finding(self, accusation, Finding.REFUTE)


class AlwaysRejectVerifier(VerifierCore):
    """Votes REJECT on everything with made-up evidence; confirms every accusation."""

    def run(self, request: InferenceRequest, signed: SignedCommitment, fetch: Fetch) -> Vote:
        """Fetch the openings (so the evidence looks complete), then invent a layer error."""
        session = self.start(request, signed)
        if isinstance(session, Vote):
            return session
        response: OpeningResponse | None
        try:
            response = fetch(session)
        except ProtocolError:  # a liar accuses even without openings
            response = None
        layer = session.challenge.layers[0].layer if session.challenge.layers else 1
        why = f"layer {layer} recomputes with error 1 (made up)"
        evidence = Evidence(
            EvidenceCheck.LAYER,
            request,
            signed,
            response,
            layer=layer,
            position=0,
            measured=1.0,
            detail=why,
        )
        return self.compute_vote(session, Verdict.REJECT, why, evidence=evidence)

    def confirm(
        self, request: InferenceRequest, signed: SignedCommitment, accusation: Vote
    ) -> Confirmation | None:
        """Confirm whatever the accusation says."""
        return _finding(self, accusation, Finding.CONFIRM)


class SilentVerifier(VerifierCore):
    """Never answers."""

    def run(self, request: InferenceRequest, signed: SignedCommitment, fetch: Fetch) -> Vote:
        """Refuse."""
        raise Unavailable("silent verifier")

    def confirm(
        self, request: InferenceRequest, signed: SignedCommitment, accusation: Vote
    ) -> Confirmation | None:
        """Refuse."""
        raise Unavailable("silent verifier")


class LateVerifier(VerifierCore):
    """Answers honestly, but only once :meth:`release` is called: past any deadline the caller
    set, as a slow or overloaded member would. Not a mode of :func:`make_byzantine_verifier`:
    a test builds it (``LateVerifier.of(honest)``) and releases it before shutting down."""

    released: threading.Event

    @classmethod
    def of(cls, honest: VerifierCore) -> LateVerifier:
        """Return a late copy of ``honest``."""
        late = cls(
            honest.key,
            honest.model,
            honest.model_id,
            honest.num_layers,
            honest.hidden_size,
            honest.network_id,
            honest.thresholds,
        )
        late.released = threading.Event()
        return late

    def release(self) -> None:
        """Let every held and later answer go."""
        self.released.set()

    def run(self, request: InferenceRequest, signed: SignedCommitment, fetch: Fetch) -> Vote:
        """Wait for :meth:`release`, then vote honestly."""
        self.released.wait()
        return super().run(request, signed, fetch)

    def confirm(
        self, request: InferenceRequest, signed: SignedCommitment, accusation: Vote
    ) -> Confirmation | None:
        """Wait for :meth:`release`, then confirm honestly."""
        self.released.wait()
        return super().confirm(request, signed, accusation)


class DoubleVoteVerifier(VerifierCore):
    """Signs an honest vote and its opposite; :meth:`run_both` returns the pair."""

    def run_both(
        self, request: InferenceRequest, signed: SignedCommitment, fetch: Fetch
    ) -> tuple[Vote, Vote]:
        """Return the honest vote and the contradicting one."""
        honest = VerifierCore.run(self, request, signed, fetch)
        opposite = "always-reject" if honest.verdict is Verdict.ACCEPT else "always-accept"
        return honest, make_byzantine_verifier(opposite, self).run(request, signed, fetch)


def make_byzantine_verifier(mode: str, honest: VerifierCore) -> VerifierCore:
    """Return a verifier with ``honest``'s key, model and thresholds that lies as ``mode``."""
    classes: dict[str, type[VerifierCore]] = {
        "always-accept": AlwaysAcceptVerifier,
        "always-reject": AlwaysRejectVerifier,
        "silent": SilentVerifier,
        "double-vote": DoubleVoteVerifier,
    }
    if mode not in classes:
        raise ValueError(
            f"unknown byzantine verifier mode {mode!r}; choose from {', '.join(VERIFIER_MODES)}"
        )
    return classes[mode](
        honest.key,
        honest.model,
        honest.model_id,
        honest.num_layers,
        honest.hidden_size,
        honest.network_id,
        honest.thresholds,
    )


def _finding(core: VerifierCore, accusation: Vote, finding: Finding) -> Confirmation:
    ev = accusation.evidence
    check = ev.check if ev is not None else EvidenceCheck.LAYER
    made_up = AuditResult(finding is Finding.CONFIRM, check, "made up")
    return sign_confirmation(core.key, accusation, made_up)

"""Confirmation rounds: the committee re-checks a REJECT's evidence. [CONFIRM.1]-[CONFIRM.5]

A REJECT accuses the executor. While the accusation is open no certificate is issued, however
many ACCEPTs there are ([CONFIRM.1]). Every committee member audits exactly the evidence the
accuser signed (the disputed tiles, the sketch, or the signed pair) with its own model and
thresholds, and signs a :class:`Confirmation`: CONFIRM when the evidence proves misbehaviour,
REFUTE when it does not. ``2f+1`` CONFIRMs slash the executor; ``2f+1`` REFUTEs penalise the
accuser and drop its REJECT, so a certificate may proceed; anything less decides nothing
([CONFIRM.3]).

Evidence that needs no model (equivocation, a bad opening) is judged by anyone on signatures
and hashes alone: the assembler checks it itself and needs no round ([CONFIRM.4]).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

from bft.crypto import SigningKey, check_signature, compute_node_id
from bft.encoding import Canonical, compute_signing_root
from bft.errors import CannotJudge, Ignore, Malformed, Reject
from bft.evidence import MODEL_FREE_CHECKS, AuditModel, AuditResult, audit_evidence
from bft.limits import MAX_TEXT, check_network_id
from bft.measure import Thresholds
from bft.messages import InferenceRequest, SignedCommitment, Verdict, Vote
from bft.types import (
    DIGEST_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Digest,
    NodeId,
    PublicKey,
    Signature,
)

TAG_CONFIRMATION = "verihive/confirmation/v1"


class Finding(enum.IntEnum):
    """A committee member's finding on an accusation."""

    CONFIRM = 1
    REFUTE = 2


def compute_accusation_digest(vote: Vote) -> Digest:
    """Return the digest that names an accusation: the REJECT vote's signing root."""
    return vote.signing_root()


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A committee member's signed finding on one accusation. [CONFIRM.2]

    ``measured`` is the member's own re-measurement of the claim (0 for model-free claims).
    """

    network_id: str
    request_digest: Digest
    commitment_digest: Digest
    accusation_digest: Digest
    verifier_key: PublicKey
    finding: Finding
    measured: float
    detail: str
    signature: Signature = field(default=Signature(b""))

    @property
    def verifier_id(self) -> NodeId:
        """Return the member's node id."""
        return compute_node_id(self.verifier_key)

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems."""
        for value, size, what in (
            (self.request_digest, DIGEST_SIZE, "request_digest"),
            (self.commitment_digest, DIGEST_SIZE, "commitment_digest"),
            (self.accusation_digest, DIGEST_SIZE, "accusation_digest"),
            (self.verifier_key, PUBLIC_KEY_SIZE, "verifier_key"),
            (self.signature, SIGNATURE_SIZE, "signature"),
        ):
            if len(value) != size:
                raise Malformed(f"confirmation {what} must be {size} bytes")
        check_network_id(self.network_id, "confirmation network_id")
        if len(self.detail) > MAX_TEXT:
            raise Malformed("confirmation detail too long")
        if not isinstance(self.finding, Finding):
            raise Malformed("unknown finding")
        if not math.isfinite(self.measured):
            raise Malformed("confirmation measurement must be finite")

    def signing_root(self) -> Digest:
        """Return the digest the member signs (every field but the signature)."""
        body = (
            Canonical()
            .bytes_(self.request_digest)
            .bytes_(self.commitment_digest)
            .bytes_(self.accusation_digest)
            .bytes_(self.verifier_key)
            .u64(int(self.finding))
            .f64(self.measured)
            .str_(self.detail)
            .build()
        )
        return compute_signing_root(TAG_CONFIRMATION, self.network_id, body)

    def check(self) -> None:
        """Raise unless well-formed and signed by ``verifier_key``."""
        self.validate()
        check_signature(self.verifier_key, self.signing_root(), self.signature, "confirmation")


def audit_accusation(
    accusation: Vote, auditor: AuditModel | None, thresholds: Thresholds | None = None
) -> AuditResult | None:
    """Return the audit of ``accusation``'s evidence, or ``None`` when it cannot be judged here.

    ``None`` means :class:`CannotJudge`: the claim needs a model, or bands for an execution
    profile, this node does not hold; it abstains. Any other error propagates. [CONFIRM.2]
    """
    if accusation.evidence is None:
        raise Malformed("an accusation is a REJECT vote with evidence")
    try:
        return audit_evidence(accusation.evidence, auditor, thresholds)
    except CannotJudge:
        return None


def sign_confirmation(key: SigningKey, accusation: Vote, result: AuditResult) -> Confirmation:
    """Return ``key``'s signed finding on ``accusation`` from its own audit ``result``."""
    unsigned = Confirmation(
        network_id=accusation.network_id,
        request_digest=accusation.request_digest,
        commitment_digest=accusation.commitment_digest,
        accusation_digest=compute_accusation_digest(accusation),
        verifier_key=key.public_key,
        finding=Finding.CONFIRM if result.proven else Finding.REFUTE,
        measured=result.measured if math.isfinite(result.measured) else 0.0,
        detail=result.detail[:MAX_TEXT],
    )
    return replace(unsigned, signature=key.sign(unsigned.signing_root()))


def is_model_free(accusation: Vote) -> bool:
    """Return whether ``accusation``'s evidence is checkable with signatures and hashes alone."""
    return accusation.evidence is not None and accusation.evidence.check in MODEL_FREE_CHECKS


class DisputeOutcome(enum.Enum):
    """Where a confirmation round stands. [CONFIRM.3]"""

    OPEN = "open"
    CONFIRMED = "confirmed"  # 2f+1 CONFIRMs: slash the executor
    REFUTED = "refuted"  # 2f+1 REFUTEs: penalise the accuser, drop its REJECT
    UNDECIDED = "undecided"  # the round closed with neither: no certificate, no slash


@dataclass(frozen=True, slots=True)
class Dispute:
    """One accusation and the committee's confirmations so far."""

    request: InferenceRequest
    signed: SignedCommitment
    accusation: Vote
    committee: tuple[PublicKey, ...]
    confirmations: tuple[Confirmation, ...] = ()
    proven_without_model: bool = False
    """Set when the evidence is model-free and proven: decided without a round. [CONFIRM.4]"""

    @property
    def digest(self) -> Digest:
        """Return the accusation digest."""
        return compute_accusation_digest(self.accusation)

    def count(self, finding: Finding) -> int:
        """Return how many distinct members found ``finding``."""
        return sum(1 for c in self.confirmations if c.finding is finding)


def open_dispute(
    request: InferenceRequest,
    signed: SignedCommitment,
    accusation: Vote,
    committee: tuple[PublicKey, ...],
) -> Dispute:
    """Return the dispute over ``accusation``; model-free evidence is judged here and now.

    The accusation must be a valid REJECT vote of the committee on ``signed`` (the caller has
    run it through ``check_vote``).
    """
    if accusation.verdict is not Verdict.REJECT or accusation.evidence is None:
        raise Malformed("only a REJECT vote with evidence opens a dispute")
    dispute = Dispute(request, signed, accusation, committee)
    if is_model_free(accusation):
        result = audit_evidence(accusation.evidence, None)
        dispute = replace(dispute, proven_without_model=result.proven)
    return dispute


def process_confirmation(dispute: Dispute, conf: Confirmation) -> Dispute:
    """Return ``dispute`` with ``conf`` added. [CONFIRM.2]

    Raises :class:`Reject` for a confirmation that is invalid or about something else and
    :class:`Ignore` for a second one by the same member.
    """
    conf.check()
    if conf.verifier_key not in dispute.committee:
        raise Reject("confirmation signed by a key outside the committee")
    if (
        conf.network_id != dispute.request.network_id
        or conf.request_digest != dispute.request.digest()
        or conf.commitment_digest != dispute.signed.digest
        or conf.accusation_digest != dispute.digest
    ):
        raise Reject("confirmation is about another accusation")
    if any(c.verifier_key == conf.verifier_key for c in dispute.confirmations):
        raise Ignore("duplicate confirmation from one member")
    return replace(dispute, confirmations=(*dispute.confirmations, conf))


def get_dispute_outcome(dispute: Dispute, closed: bool = False) -> DisputeOutcome:
    """Return the round's outcome; ``closed`` once no more confirmations will come. [CONFIRM.3]"""
    if dispute.proven_without_model:
        return DisputeOutcome.CONFIRMED
    quorum = dispute.request.quorum
    confirms, refutes = dispute.count(Finding.CONFIRM), dispute.count(Finding.REFUTE)
    if confirms >= quorum:
        return DisputeOutcome.CONFIRMED
    if refutes >= quorum:
        return DisputeOutcome.REFUTED
    missing = len(dispute.committee) - len(dispute.confirmations)
    if closed or (confirms + missing < quorum and refutes + missing < quorum):
        return DisputeOutcome.UNDECIDED
    return DisputeOutcome.OPEN

"""The assembler's protocol core: requests, tallies, outcomes, receipts. [ASM.1]-[ASM.5]"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bft.committee import compute_committee
from bft.confirmation import (
    Confirmation,
    Dispute,
    DisputeOutcome,
    compute_accusation_digest,
    get_dispute_outcome,
    open_dispute,
    process_confirmation,
)
from bft.errors import Ignore, Reject
from bft.messages import (
    InferenceRequest,
    SamplingParams,
    SignedCommitment,
    Verdict,
    Vote,
)
from bft.quorum import check_vote
from bft.receipt import Receipt
from bft.types import ModelId, NodeId, PublicKey
from bft.validators import SignedValidatorSet, ValidatorSet

DEFAULT_SEQUENCE_CHECK_PPM = 100_000
"""q = 0.1: a verifier runs the whole-sequence sketch check on 1 request in 10."""


@dataclass(frozen=True, slots=True)
class AssemblerPolicy:
    """Policy the assembler binds into every request. ``f``: tolerated faulty verifiers."""

    network_id: str
    f: int = 1
    layers_per_verifier: int = 2
    positions_per_verifier: int = 4
    sequence_check_ppm: int = DEFAULT_SEQUENCE_CHECK_PPM
    hedge: int = 1
    """Executors one request is sent to at once; the first certified answer wins. [ASM.6]"""
    hedge_verify_all: bool = False
    """Whether the other hedged executors are verified too (else their results are dropped)."""


class Outcome(enum.Enum):
    """Where an attempt stands."""

    PENDING = "pending"
    DISPUTED = "disputed"  # a REJECT's confirmation round is open: no certificate [CONFIRM.1]
    CERTIFIED = "certified"
    REJECTED = "rejected"
    FAILED = "failed"


def compute_request(
    policy: AssemblerPolicy,
    request_id: bytes,
    model_id: ModelId,
    prompt_tokens: tuple[int, ...],
    sampling: SamplingParams,
    vset: ValidatorSet,
) -> InferenceRequest:
    """Return the request for ``prompt_tokens``; ``request_id`` comes from the caller's RNG.

    The request names ``vset``'s epoch and digest: its committee is drawn from that set.
    """
    request = InferenceRequest(
        network_id=policy.network_id,
        request_id=request_id,
        epoch=vset.epoch,
        model_id=model_id,
        prompt_tokens=prompt_tokens,
        sampling=sampling,
        f=policy.f,
        layers_per_verifier=policy.layers_per_verifier,
        validator_set_digest=vset.digest(),
        positions_per_verifier=policy.positions_per_verifier,
        sequence_check_ppm=policy.sequence_check_ppm,
    )
    request.validate()
    return request


def check_commitment(
    request: InferenceRequest, signed: SignedCommitment, executor_id: NodeId
) -> None:
    """Raise unless ``signed`` is by ``executor_id`` and bound to ``request``. [ASM.2]"""
    signed.check()
    c = signed.commitment
    if c.executor_id != executor_id:
        raise Reject("commitment signed by another key than the executor asked")
    if c.request_digest != request.digest() or c.network_id != request.network_id:
        raise Reject("commitment is for another request")
    if c.tokens[: c.prompt_len] != request.prompt_tokens:
        raise Reject("committed prompt differs from the request")
    if c.model_id != request.model_id:
        raise Reject("commitment names another model")


@dataclass(frozen=True, slots=True)
class Tally:
    """Votes collected on one commitment from its committee, and the disputes they opened.

    ``double_votes`` holds pairs of conflicting votes (ACCEPT and REJECT) by one verifier:
    neither counts, and the pair is slashing evidence. [QUORUM.5]
    """

    request: InferenceRequest
    signed: SignedCommitment
    committee: tuple[PublicKey, ...]
    votes: tuple[Vote, ...] = ()
    double_votes: tuple[tuple[Vote, Vote], ...] = ()
    disputes: tuple[Dispute, ...] = ()

    def count(self, verdict: Verdict) -> int:
        """Return how many counted votes have ``verdict``."""
        return sum(1 for v in self.votes if v.verdict is verdict)

    @property
    def double_voters(self) -> frozenset[PublicKey]:
        """Return the keys caught voting both ways."""
        return frozenset(a.verifier_key for a, _ in self.double_votes)

    def dispute_of(self, vote: Vote) -> Dispute | None:
        """Return the dispute ``vote`` opened, if any."""
        digest = compute_accusation_digest(vote)
        return next((d for d in self.disputes if d.digest == digest), None)


def compute_tally(request: InferenceRequest, signed: SignedCommitment, vset: ValidatorSet) -> Tally:
    """Return an empty tally with the committee drawn for ``request``. [COMMITTEE.1]"""
    if request.validator_set_digest != vset.digest() or request.epoch != vset.epoch:
        raise Reject("request names another validator set")
    committee = compute_committee(
        vset, request.request_id, signed.commitment.executor_id, request.committee_size
    )
    return Tally(request=request, signed=signed, committee=committee)


def process_vote(tally: Tally, vote: Vote) -> Tally:
    """Return ``tally`` with ``vote`` added. [ASM.3]

    Raises :class:`Reject` for an invalid vote and :class:`Ignore` for a repeated or second
    vote by one verifier. A verifier whose second vote contradicts its first (ACCEPT against
    REJECT) loses both: the pair goes to ``double_votes``. [QUORUM.5]
    """
    check_vote(vote, tally.request, tally.signed, tally.committee)
    if vote.verifier_key in tally.double_voters:
        raise Ignore("verifier already caught voting both ways")
    prev = next((v for v in tally.votes if v.verifier_key == vote.verifier_key), None)
    if prev is None:
        return replace(tally, votes=(*tally.votes, vote))
    if prev.signing_root() == vote.signing_root():
        raise Ignore("duplicate vote from one verifier")
    if {prev.verdict, vote.verdict} != {Verdict.ACCEPT, Verdict.REJECT}:
        raise Ignore("second vote from one verifier")
    dropped = compute_accusation_digest(prev)
    return replace(
        tally,
        votes=tuple(v for v in tally.votes if v.verifier_key != vote.verifier_key),
        double_votes=(*tally.double_votes, (prev, vote)),
        disputes=tuple(d for d in tally.disputes if d.digest != dropped),
    )


def open_disputes(tally: Tally) -> Tally:
    """Return ``tally`` with a dispute for every REJECT that has none yet. [CONFIRM.1]"""
    new = tuple(
        open_dispute(tally.request, tally.signed, v, tally.committee)
        for v in tally.votes
        if v.verdict is Verdict.REJECT and tally.dispute_of(v) is None
    )
    return replace(tally, disputes=(*tally.disputes, *new)) if new else tally


def process_confirmation_vote(tally: Tally, conf: Confirmation) -> Tally:
    """Return ``tally`` with ``conf`` added to the dispute it is about. [CONFIRM.2]"""
    for i, d in enumerate(tally.disputes):
        if d.digest == conf.accusation_digest:
            updated = process_confirmation(d, conf)
            return replace(tally, disputes=(*tally.disputes[:i], updated, *tally.disputes[i + 1 :]))
    raise Ignore("confirmation about no open accusation")


def get_outcome(tally: Tally, closed: bool = False) -> Outcome:
    """Return the attempt's outcome; ``closed`` once no more votes or confirmations will come.

    [ASM.4], [CONFIRM.3]: a REJECT whose accusation 2f+1 members confirm makes the attempt
    REJECTED (and the executor slashed). While any accusation is open the attempt is DISPUTED
    and no certificate is issued, however many ACCEPTs there are. An accusation the round
    leaves undecided fails the attempt (no certificate, no slash). Refuted REJECTs no longer
    count, so the ACCEPTs may certify. CERTIFIED needs 2f+1 distinct ACCEPTs and, before the
    deadline, every committee member's vote.
    """
    quorum = tally.request.quorum
    states = []
    for vote in tally.votes:
        if vote.verdict is Verdict.REJECT:
            dispute = tally.dispute_of(vote)
            states.append(get_dispute_outcome(dispute, closed) if dispute else DisputeOutcome.OPEN)
    if DisputeOutcome.CONFIRMED in states:  # whatever order the accusations came in
        return Outcome.REJECTED
    if DisputeOutcome.OPEN in states:
        return Outcome.FAILED if closed else Outcome.DISPUTED
    if DisputeOutcome.UNDECIDED in states:
        return Outcome.FAILED
    accepts = tally.count(Verdict.ACCEPT)
    answered = len(tally.votes) + len(tally.double_votes)
    if accepts >= quorum and (closed or answered == len(tally.committee)):
        return Outcome.CERTIFIED
    if closed or accepts + len(tally.committee) - answered < quorum:
        return Outcome.FAILED
    return Outcome.PENDING


def find_disagreement(certified: tuple[Tally, ...]) -> bool:
    """Return whether certified results of one request differ in their output. [ASM.6]

    Every executor of one request samples with the same seed, so honest executors agree; two
    certified answers that differ mean one certificate is wrong (a lie the sampling missed, or
    a backend outside its calibration). Neither is served: the attempt fails and both
    certificates are kept for investigation.
    """
    return len({t.signed.commitment.output_tokens for t in certified}) > 1


def get_offenders(tally: Tally) -> frozenset[PublicKey]:
    """Return the keys ``tally`` proves guilty once closed: double voters ([QUORUM.5]) and the
    executor when an accusation is confirmed ([CONFIRM.3]). [SLASH.1]"""
    offenders = set(tally.double_voters)
    if any(get_dispute_outcome(d, closed=True) is DisputeOutcome.CONFIRMED for d in tally.disputes):
        offenders.add(tally.signed.commitment.executor_key)
    return frozenset(offenders)


def get_final_outcome(tally: Tally) -> Outcome:
    """Return the outcome once no more votes or confirmations will come. [ASM.4]"""
    return get_outcome(tally, closed=True)


def build_receipt(tally: Tally, vset: SignedValidatorSet) -> Receipt:
    """Return the receipt of a certified tally: the ACCEPT votes are the certificate. [RECEIPT.1]"""
    accepts = tuple(v for v in tally.votes if v.verdict is Verdict.ACCEPT)
    return Receipt(tally.request, tally.signed, vset, accepts)

"""The assembler's protocol core: requests, tallies, outcomes, receipts. [ASM.1]-[ASM.5]"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bft.committee import compute_committee
from bft.errors import Ignore, Reject
from bft.messages import (
    InferenceRequest,
    SamplingParams,
    SignedCommitment,
    Verdict,
    Vote,
    compute_validator_set_digest,
)
from bft.quorum import check_vote
from bft.receipt import Receipt
from bft.types import ModelId, NodeId, PublicKey

DEFAULT_SEQUENCE_CHECK_PPM = 100_000
"""q = 0.1: a verifier runs the whole-sequence sketch check on 1 request in 10."""


@dataclass(frozen=True, slots=True)
class AssemblerPolicy:
    """Policy the assembler binds into every request. ``f``: tolerated faulty verifiers."""

    network_id: str
    f: int = 1
    layers_per_verifier: int = 2
    epoch: int = 0
    positions_per_verifier: int = 4
    sequence_check_ppm: int = DEFAULT_SEQUENCE_CHECK_PPM


class Outcome(enum.Enum):
    """Where an attempt stands."""

    PENDING = "pending"
    CERTIFIED = "certified"
    REJECTED = "rejected"
    FAILED = "failed"


def compute_request(
    policy: AssemblerPolicy,
    request_id: bytes,
    model_id: ModelId,
    prompt_tokens: tuple[int, ...],
    sampling: SamplingParams,
    validators: tuple[PublicKey, ...],
) -> InferenceRequest:
    """Return the request for ``prompt_tokens``; ``request_id`` comes from the caller's RNG."""
    request = InferenceRequest(
        network_id=policy.network_id,
        request_id=request_id,
        epoch=policy.epoch,
        model_id=model_id,
        prompt_tokens=prompt_tokens,
        sampling=sampling,
        f=policy.f,
        layers_per_verifier=policy.layers_per_verifier,
        validator_set_digest=compute_validator_set_digest(policy.network_id, validators),
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
    """Votes collected on one commitment from its committee."""

    request: InferenceRequest
    signed: SignedCommitment
    committee: tuple[PublicKey, ...]
    votes: tuple[Vote, ...] = ()

    def count(self, verdict: Verdict) -> int:
        """Return how many votes have ``verdict``."""
        return sum(1 for v in self.votes if v.verdict is verdict)


def compute_tally(
    request: InferenceRequest, signed: SignedCommitment, validators: tuple[PublicKey, ...]
) -> Tally:
    """Return an empty tally with the committee drawn for ``request``. [COMMITTEE.1]"""
    committee = compute_committee(
        validators,
        request.request_id,
        request.epoch,
        signed.commitment.executor_id,
        request.committee_size,
    )
    return Tally(request=request, signed=signed, committee=committee)


def process_vote(tally: Tally, vote: Vote) -> Tally:
    """Return ``tally`` with ``vote`` added. [ASM.3]

    Raises :class:`Reject` for an invalid vote and :class:`Ignore` for a second vote by the same
    verifier (double votes are [bft]'s evidence).
    """
    check_vote(vote, tally.request, tally.signed, tally.committee)
    if any(v.verifier_key == vote.verifier_key for v in tally.votes):
        raise Ignore("duplicate vote from one verifier")
    return replace(tally, votes=(*tally.votes, vote))


def get_outcome(tally: Tally) -> Outcome:
    """Return the attempt's outcome. [ASM.4]

    CERTIFIED on 2f+1 distinct ACCEPTs and no REJECT. Any REJECT fails the attempt: a single
    honest verifier that sampled a bad layer is enough to stop a lie (the confirmation round
    that may overturn a false REJECT arrives with [bft]). FAILED when too few votes remain
    possible.
    """
    quorum = tally.request.quorum
    if tally.count(Verdict.REJECT):
        return Outcome.REJECTED
    accepts = tally.count(Verdict.ACCEPT)
    if accepts >= quorum and len(tally.votes) == len(tally.committee):
        return Outcome.CERTIFIED
    missing = len(tally.committee) - len(tally.votes)
    if accepts + missing < quorum:
        return Outcome.FAILED
    return Outcome.PENDING


def get_final_outcome(tally: Tally) -> Outcome:
    """Return the outcome once no more votes will come (deadline passed). [ASM.4]"""
    outcome = get_outcome(tally)
    if outcome is Outcome.PENDING:
        return (
            Outcome.CERTIFIED
            if tally.count(Verdict.ACCEPT) >= tally.request.quorum
            else Outcome.FAILED
        )
    return outcome


def build_receipt(tally: Tally, validators: tuple[PublicKey, ...]) -> Receipt:
    """Return the receipt of a certified tally: the ACCEPT votes are the certificate. [RECEIPT.1]"""
    accepts = tuple(v for v in tally.votes if v.verdict is Verdict.ACCEPT)
    return Receipt(tally.request, tally.signed, validators, accepts)

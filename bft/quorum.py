"""Votes and quorum certificates. [QUORUM.1]-[QUORUM.4]"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bft.challenge import compute_commitment_challenge
from bft.crypto import check_signature
from bft.errors import Reject
from bft.messages import (
    InferenceRequest,
    SignedCommitment,
    Verdict,
    Vote,
    compute_challenge_message,
)
from bft.types import NodeId, PublicKey


def check_vote(
    vote: Vote,
    request: InferenceRequest,
    signed: SignedCommitment,
    committee: Iterable[PublicKey],
) -> None:
    """Raise unless ``vote`` is a valid vote by a committee member on ``signed``. [QUORUM.2]

    Checks the signature, the binding to request and commitment, and that the layers reported
    are exactly those the verifier's own challenge signature selects.
    """
    vote.check()  # [REJECT] vote is well-formed and signed by its verifier
    if vote.network_id != request.network_id:
        raise Reject("vote is for another network")
    if vote.verifier_key not in tuple(committee):
        raise Reject("vote signed by a key outside the committee")
    if vote.request_digest != request.digest():
        raise Reject("vote is for another request")
    if vote.commitment_digest != signed.digest:
        raise Reject("vote is for another commitment")
    check_signature(
        vote.verifier_key,
        compute_challenge_message(request.network_id, signed.digest),
        vote.challenge_signature,
        "challenge",
    )
    if vote.verdict is Verdict.ACCEPT:
        expected = compute_commitment_challenge(
            vote.challenge_signature, signed.commitment, request, vote.escalated
        )
        got = tuple((lc.layer, lc.chunks) for lc in vote.layer_checks)
        want = tuple((lc.layer, lc.chunks) for lc in expected.layers)
        if got != want:
            raise Reject("ACCEPT vote does not report the layers its challenge selects")
        if tuple(sc.position for sc in vote.sampler_checks) != expected.positions:
            raise Reject("ACCEPT vote does not report the positions its challenge selects")
        if (vote.sequence_check is not None) != expected.sequence_check:
            raise Reject("ACCEPT vote does not report the sketch check its challenge selects")
    if vote.evidence is not None:
        ev = vote.evidence
        if ev.request.digest() != request.digest() or ev.signed.digest != signed.digest:
            raise Reject("REJECT evidence is about another request or commitment")


@dataclass(frozen=True, slots=True)
class QuorumCertificate:
    """2f+1 distinct ACCEPT votes from the committee on one commitment. [QUORUM.1]"""

    signed_commitment: SignedCommitment
    votes: tuple[Vote, ...]


def check_quorum_certificate(
    qc: QuorumCertificate, request: InferenceRequest, committee: tuple[PublicKey, ...]
) -> None:
    """Raise :class:`Reject` with a reason unless ``qc`` certifies its commitment. [QUORUM.3]"""
    seen: set[NodeId] = set()
    accepts = 0
    for vote in qc.votes:
        check_vote(vote, request, qc.signed_commitment, committee)
        if vote.verifier_id in seen:
            raise Reject("certificate holds two votes by one verifier")
        seen.add(vote.verifier_id)
        if vote.verdict is not Verdict.ACCEPT:
            raise Reject("certificate holds a vote that is not ACCEPT")
        accepts += 1
    if accepts < request.quorum:
        raise Reject(f"certificate has {accepts} ACCEPT votes, needs {request.quorum}")

"""Slash and penalty records: proof anyone can re-check. [SLASH.1]-[SLASH.2]

A :class:`SlashRecord` names the offender, the offence and the proof:

- executor fraud: the accusing REJECT vote (with its evidence) and ``2f+1`` committee CONFIRMs,
  or, for model-free evidence (equivocation, a bad opening), the evidence alone;
- verifier double vote: two votes by one verifier on one commitment, one ACCEPT and one
  REJECT, both validly signed.

A :class:`Penalty` is the false-accusation penalty: the REJECT vote and ``2f+1`` REFUTEs.
:func:`check_slash` and :func:`check_penalty` need the epoch's validator set (to redraw the
committee) and nothing else; ``bft-verify audit`` re-checks the evidence with a model.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bft.assembler import Tally
from bft.committee import compute_committee
from bft.confirmation import (
    Confirmation,
    DisputeOutcome,
    Finding,
    compute_accusation_digest,
    get_dispute_outcome,
    is_model_free,
)
from bft.encoding import Canonical, compute_signing_root
from bft.errors import ProtocolError, Reject
from bft.evidence import audit_evidence
from bft.messages import EvidenceCheck, InferenceRequest, SignedCommitment, Verdict, Vote
from bft.quorum import check_vote
from bft.types import Digest, PublicKey
from bft.validators import ValidatorSet

TAG_SLASH = "verihive/slash/v1"
TAG_PENALTY = "verihive/penalty/v1"


class Offence(enum.Enum):
    """What a slashed key did."""

    EXECUTOR_FRAUD = "executor-fraud"  # a computation claim confirmed by 2f+1
    EXECUTOR_EQUIVOCATION = "executor-equivocation"  # two signed roots for one request
    EXECUTOR_BAD_OPENING = "executor-bad-opening"  # a signed opening that misses its root
    VERIFIER_DOUBLE_VOTE = "verifier-double-vote"  # ACCEPT and REJECT on one commitment


@dataclass(frozen=True, slots=True)
class SlashRecord:
    """Proof that ``offender`` misbehaved. [SLASH.1]"""

    offence: Offence
    offender: PublicKey
    request: InferenceRequest
    signed: SignedCommitment
    accusation: Vote | None = None
    confirmations: tuple[Confirmation, ...] = ()
    votes: tuple[Vote, ...] = ()

    def digest(self) -> Digest:
        """Return the record's identity."""
        body = (
            Canonical()
            .str_(self.offence.value)
            .bytes_(self.offender)
            .bytes_(self.request.digest())
            .bytes_(self.signed.digest)
            .bytes_(self.accusation.signing_root() if self.accusation else b"")
            .list_(c.signing_root() for c in self.confirmations)
            .list_(v.signing_root() for v in self.votes)
            .build()
        )
        return compute_signing_root(TAG_SLASH, self.request.network_id, body)


@dataclass(frozen=True, slots=True)
class Penalty:
    """Proof that ``accuser`` made an accusation the committee refuted. [SLASH.2]"""

    accuser: PublicKey
    request: InferenceRequest
    signed: SignedCommitment
    accusation: Vote
    refutations: tuple[Confirmation, ...]

    def digest(self) -> Digest:
        """Return the record's identity."""
        body = (
            Canonical()
            .bytes_(self.accuser)
            .bytes_(self.request.digest())
            .bytes_(self.signed.digest)
            .bytes_(self.accusation.signing_root())
            .list_(c.signing_root() for c in self.refutations)
            .build()
        )
        return compute_signing_root(TAG_PENALTY, self.request.network_id, body)


def offence_of(accusation: Vote) -> Offence:
    """Return the executor offence ``accusation``'s evidence claims."""
    check = accusation.evidence.check if accusation.evidence else None
    if check is EvidenceCheck.EQUIVOCATION:
        return Offence.EXECUTOR_EQUIVOCATION
    if check is EvidenceCheck.OPENING:
        return Offence.EXECUTOR_BAD_OPENING
    return Offence.EXECUTOR_FRAUD


def _committee(
    request: InferenceRequest, signed: SignedCommitment, vset: ValidatorSet
) -> tuple[PublicKey, ...]:
    if request.validator_set_digest != vset.digest() or request.epoch != vset.epoch:
        raise Reject("record's request names another validator set")
    signed.check()
    if signed.commitment.request_digest != request.digest():
        raise Reject("record's commitment is for another request")
    return compute_committee(
        vset, request.request_id, signed.commitment.executor_id, request.committee_size
    )


def _count(
    findings: tuple[Confirmation, ...],
    want: Finding,
    accusation: Vote,
    request: InferenceRequest,
    signed: SignedCommitment,
    committee: tuple[PublicKey, ...],
) -> int:
    seen: set[PublicKey] = set()
    for c in findings:
        c.check()
        if c.verifier_key not in committee:
            raise Reject("confirmation by a key outside the committee")
        if c.verifier_key in seen:
            raise Reject("two confirmations by one member")
        if (
            c.finding is not want
            or c.request_digest != request.digest()
            or c.commitment_digest != signed.digest
            or c.accusation_digest != compute_accusation_digest(accusation)
        ):
            raise Reject("confirmation does not support this record")
        seen.add(c.verifier_key)
    return len(seen)


def check_slash(record: SlashRecord, vset: ValidatorSet) -> None:
    """Raise :class:`ProtocolError` unless ``record`` proves its offence. [SLASH.1]"""
    req, signed = record.request, record.signed
    committee = _committee(req, signed, vset)
    if record.offence is Offence.VERIFIER_DOUBLE_VOTE:
        if len(record.votes) != 2:
            raise Reject("a double vote record holds two votes")
        a, b = record.votes
        for v in (a, b):
            check_vote(v, req, signed, committee)
            if v.verifier_key != record.offender:
                raise Reject("double vote record holds another verifier's vote")
        if {a.verdict, b.verdict} != {Verdict.ACCEPT, Verdict.REJECT}:
            raise Reject("a double vote is one ACCEPT and one REJECT")
        return
    acc = record.accusation
    if acc is None or acc.evidence is None:
        raise Reject("an executor slash needs the accusing REJECT vote")
    check_vote(acc, req, signed, committee)
    if acc.verdict is not Verdict.REJECT:
        raise Reject("the accusation is not a REJECT")
    if record.offender != signed.commitment.executor_key:
        raise Reject("slash names someone other than the commitment's executor")
    if record.offence is not offence_of(acc):
        raise Reject("slash names another offence than its evidence")
    if is_model_free(acc):
        if not audit_evidence(acc.evidence, None).proven:
            raise Reject("model-free evidence does not prove the offence")
        return
    confirms = _count(record.confirmations, Finding.CONFIRM, acc, req, signed, committee)
    if confirms < req.quorum:
        raise Reject(f"slash has {confirms} confirmations, needs {req.quorum}")


def check_penalty(penalty: Penalty, vset: ValidatorSet) -> None:
    """Raise :class:`ProtocolError` unless ``penalty`` proves a refuted accusation. [SLASH.2]"""
    req, signed, acc = penalty.request, penalty.signed, penalty.accusation
    committee = _committee(req, signed, vset)
    check_vote(acc, req, signed, committee)
    if acc.verdict is not Verdict.REJECT or acc.verifier_key != penalty.accuser:
        raise Reject("penalty's accusation is not a REJECT by the accuser")
    if is_model_free(acc) and acc.evidence and audit_evidence(acc.evidence, None).proven:
        raise Reject("the accusation proves itself on signatures and hashes: no refutation counts")
    refutes = _count(penalty.refutations, Finding.REFUTE, acc, req, signed, committee)
    if refutes < req.quorum:
        raise Reject(f"penalty has {refutes} refutations, needs {req.quorum}")


def is_valid_slash(record: SlashRecord, vset: ValidatorSet) -> bool:
    """Return whether :func:`check_slash` passes."""
    try:
        check_slash(record, vset)
    except ProtocolError:
        return False
    return True


def compute_records(tally: Tally) -> tuple[tuple[SlashRecord, ...], tuple[Penalty, ...]]:
    """Return the slashes and penalties a closed tally proves. [SLASH.1], [SLASH.2]

    Double votes slash the verifier; a CONFIRMED accusation slashes the executor with the
    CONFIRMs as proof; a REFUTED one penalises the accuser with the REFUTEs. Undecided and open
    accusations prove nothing.
    """
    req, signed = tally.request, tally.signed
    slashes = [
        SlashRecord(Offence.VERIFIER_DOUBLE_VOTE, a.verifier_key, req, signed, votes=(a, b))
        for a, b in tally.double_votes
    ]
    penalties = []
    for d in tally.disputes:
        state = get_dispute_outcome(d, closed=True)
        if state is DisputeOutcome.CONFIRMED:
            confirms = tuple(c for c in d.confirmations if c.finding is Finding.CONFIRM)
            slashes.append(
                SlashRecord(
                    offence_of(d.accusation),
                    signed.commitment.executor_key,
                    req,
                    signed,
                    accusation=d.accusation,
                    confirmations=() if d.proven_without_model else confirms,
                )
            )
        elif state is DisputeOutcome.REFUTED:
            refutes = tuple(c for c in d.confirmations if c.finding is Finding.REFUTE)
            penalties.append(Penalty(d.accusation.verifier_key, req, signed, d.accusation, refutes))
    return tuple(slashes), tuple(penalties)

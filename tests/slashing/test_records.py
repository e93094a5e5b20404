"""Slash and penalty records: proof anyone can re-check with the validator set. [SLASH.1]-[SLASH.2]

Every accepted record is built by :func:`slashing.records.compute_records` from a real closed
tally (see ``conftest.py``); every refused one is such a record with one part wrong.
"""

from __future__ import annotations

import dataclasses

import pytest

from bft.assembler import Outcome, Tally, get_final_outcome, get_outcome
from bft.confirmation import Confirmation, Finding
from bft.errors import BadSignature, Reject
from bft.messages import EvidenceCheck, Verdict
from bft.types import PublicKey
from bft.validators import Validator, ValidatorSet
from simnet.verifiers import make_byzantine_verifier
from slashing.records import (
    Offence,
    Penalty,
    SlashRecord,
    check_penalty,
    check_slash,
    compute_records,
    is_valid_slash,
    offence_of,
)
from tests.support import make_key, resign_vote


def only_slash(tally: Tally) -> SlashRecord:
    slashes, penalties = compute_records(tally)
    assert len(slashes) == 1 and penalties == ()
    return slashes[0]


@pytest.fixture(scope="module")
def vset(net) -> ValidatorSet:
    return net.validator_set.vset


@pytest.fixture(scope="module")
def fraud_record(fraud) -> SlashRecord:
    return only_slash(fraud.tally)


@pytest.fixture(scope="module")
def double_record(double_vote) -> SlashRecord:
    return only_slash(double_vote[0])


@pytest.fixture(scope="module")
def penalty(false_accusation) -> Penalty:
    slashes, penalties = compute_records(false_accusation)
    assert slashes == () and len(penalties) == 1
    return penalties[0]


# --- records from real runs pass [SLASH.1]


def test_executor_fraud_record(net, vset, fraud, fraud_record):
    r = fraud_record
    assert get_final_outcome(fraud.tally) is Outcome.REJECTED
    assert r.offence is Offence.EXECUTOR_FRAUD
    assert r.offender == fraud.signed.commitment.executor_key != net.executor_key.public_key
    assert r.accusation.verdict is Verdict.REJECT and r.accusation.evidence is not None
    assert r.accusation.evidence.check is EvidenceCheck.LAYER
    assert len(r.confirmations) == 4
    assert all(c.finding is Finding.CONFIRM for c in r.confirmations)
    assert r.votes == ()
    check_slash(r, vset)
    assert is_valid_slash(r, vset)


def test_whole_run_fraud_is_slashed_on_the_first_confirmed_accusation(vset, whole_run_fraud):
    # Every member accuses; the first accusation's round confirms it and the others need no
    # round ([ASM.7]: one accusation at a time, until one is confirmed).
    tally = whole_run_fraud.tally
    assert len(tally.disputes) == 4
    first, *rest = tally.disputes
    assert len(first.confirmations) == 4 and all(d.confirmations == () for d in rest)
    slashes, penalties = compute_records(tally)
    assert len(slashes) == 1 and penalties == ()
    assert slashes[0].accusation == first.accusation
    assert slashes[0].offender == whole_run_fraud.signed.commitment.executor_key
    for r in slashes:
        assert r.offence is Offence.EXECUTOR_FRAUD
        assert r.accusation.evidence.check is EvidenceCheck.EMBEDDING
        check_slash(r, vset)


def test_model_free_record_needs_no_confirmations(vset, bad_opening):
    # [CONFIRM.4]: bad openings are proven by hashes and signatures alone.
    slashes, _ = compute_records(bad_opening.tally)
    assert slashes
    for r in slashes:
        assert r.offence is Offence.EXECUTOR_BAD_OPENING
        assert r.confirmations == ()
        check_slash(r, vset)


def test_double_vote_record(vset, run, double_vote, double_record):
    tally, i = double_vote
    r = double_record
    member = run.tally.committee[i]
    assert tally.double_voters == {member}
    assert r.offence is Offence.VERIFIER_DOUBLE_VOTE and r.offender == member
    assert {v.verdict for v in r.votes} == {Verdict.ACCEPT, Verdict.REJECT}
    assert r.accusation is None and r.confirmations == ()
    check_slash(r, vset)
    # The other three ACCEPTs still certify: the double voter only lost its own vote.
    assert get_outcome(tally) is Outcome.CERTIFIED


def test_double_vote_record_in_either_order(vset, double_record):
    a, b = double_record.votes
    check_slash(dataclasses.replace(double_record, votes=(b, a)), vset)


def test_false_accusation_penalty(vset, run, false_accusation, penalty):
    assert penalty.accuser == run.tally.committee[0]
    assert penalty.accusation.verdict is Verdict.REJECT
    assert len(penalty.refutations) == 4
    assert all(c.finding is Finding.REFUTE for c in penalty.refutations)
    check_penalty(penalty, vset)
    # The refuted REJECT no longer counts: the other three ACCEPTs certify.
    assert get_final_outcome(false_accusation) is Outcome.CERTIFIED


def test_honest_run_proves_nothing(run):
    assert compute_records(run.tally) == ((), ())


def test_undecided_and_open_accusations_prove_nothing(fraud):
    # Without its round (or with too few findings) an accusation slashes no one.
    (d,) = fraud.tally.disputes
    for confirmations in ((), d.confirmations[:2]):
        undecided = dataclasses.replace(d, confirmations=confirmations)
        tally = dataclasses.replace(fraud.tally, disputes=(undecided,))
        assert compute_records(tally) == ((), ())
    assert compute_records(dataclasses.replace(fraud.tally, disputes=())) == ((), ())


def test_record_digest_is_an_identity(fraud_record, double_record):
    assert fraud_record.digest() == dataclasses.replace(fraud_record).digest()
    assert fraud_record.digest() != double_record.digest()
    fewer = dataclasses.replace(fraud_record, confirmations=fraud_record.confirmations[:3])
    assert fewer.digest() != fraud_record.digest()


def test_offence_of_follows_the_evidence(fraud_record, bad_opening):
    assert offence_of(fraud_record.accusation) is Offence.EXECUTOR_FRAUD
    assert offence_of(bad_opening.votes[0]) is Offence.EXECUTOR_BAD_OPENING


# --- records with one part wrong are refused


def refused(record: SlashRecord, vset: ValidatorSet, match: str, error=Reject) -> None:
    with pytest.raises(error, match=match):
        check_slash(record, vset)
    assert not is_valid_slash(record, vset)


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_invalid_slash_with_too_few_confirmations(vset, fraud_record, keep):
    # 2f = 2 CONFIRMs are not enough; 2f+1 = 3 are.
    short = dataclasses.replace(fraud_record, confirmations=fraud_record.confirmations[:keep])
    refused(short, vset, "needs 3")
    check_slash(
        dataclasses.replace(fraud_record, confirmations=fraud_record.confirmations[:3]), vset
    )


def test_invalid_slash_with_a_repeated_confirmation(vset, fraud_record):
    c = fraud_record.confirmations
    refused(dataclasses.replace(fraud_record, confirmations=(c[0], c[1], c[0])), vset, "two")


def test_invalid_slash_with_confirmations_for_another_accusation(vset, whole_run_records):
    a, b, *_ = whole_run_records
    swapped = dataclasses.replace(a, confirmations=b.confirmations)
    refused(swapped, vset, "does not support")


def by_members(
    findings: tuple[Confirmation, ...], committee: tuple[PublicKey, ...]
) -> tuple[Confirmation, ...]:
    """Return the findings by members of ``committee``: findings by outsiders are refused before
    their content is read. Committees depend on the request (searched in ``conftest.py``); two
    committees of 4 among the 6 validators share at least 2 members."""
    kept = tuple(c for c in findings if c.verifier_key in committee)
    assert len(kept) >= 2
    return kept


def test_invalid_slash_with_refutations_as_confirmations(vset, fraud, fraud_record, penalty):
    refutations = by_members(penalty.refutations, fraud.tally.committee)
    refused(
        dataclasses.replace(fraud_record, confirmations=refutations),
        vset,
        "does not support",
    )


def test_invalid_slash_with_confirmations_by_outsiders(net, vset, fraud, fraud_record):
    # Validators outside the committee hold the model and audit correctly; they still do not
    # count. [CONFIRM.2]
    outsiders = [pk for pk in net.validators if pk not in fraud.tally.committee]
    extra = [
        net.verifiers[pk].confirm(fraud.request, fraud.signed, fraud_record.accusation)
        for pk in outsiders
    ]
    assert all(c is not None and c.finding is Finding.CONFIRM for c in extra)
    padded = dataclasses.replace(
        fraud_record, confirmations=(*fraud_record.confirmations[:2], *extra)
    )
    refused(padded, vset, "outside the committee")


def test_invalid_slash_with_a_tampered_confirmation(vset, fraud_record):
    c = fraud_record.confirmations
    forged = dataclasses.replace(c[0], measured=c[0].measured * 2)
    refused(
        dataclasses.replace(fraud_record, confirmations=(forged, *c[1:])),
        vset,
        "invalid signature on confirmation",
        BadSignature,
    )


def test_invalid_slash_naming_the_wrong_offender(net, vset, run, fraud_record, double_record):
    member = run.tally.committee[0]
    refused(dataclasses.replace(fraud_record, offender=member), vset, "someone other")
    refused(dataclasses.replace(fraud_record, offender=net.executor_key.public_key), vset, "other")
    executor = double_record.signed.commitment.executor_key
    refused(dataclasses.replace(double_record, offender=executor), vset, "another verifier")
    other_member = run.tally.committee[3]
    refused(dataclasses.replace(double_record, offender=other_member), vset, "another verifier")


@pytest.mark.parametrize(
    "offence",
    [Offence.EXECUTOR_EQUIVOCATION, Offence.EXECUTOR_BAD_OPENING],
)
def test_invalid_slash_naming_another_offence(vset, fraud_record, offence):
    refused(dataclasses.replace(fraud_record, offence=offence), vset, "another offence")


def test_invalid_slash_with_an_accept_as_accusation(vset, fraud, fraud_record):
    accept = next(v for v in fraud.votes if v.verdict is Verdict.ACCEPT)
    refused(dataclasses.replace(fraud_record, accusation=accept), vset, "accusing REJECT")
    refused(dataclasses.replace(fraud_record, accusation=None), vset, "accusing REJECT")


def test_invalid_model_free_slash_with_made_up_evidence(net, vset, run, bad_opening):
    # An OPENING claim against openings that do open the root proves nothing, and no
    # confirmations can stand in for it.
    record = compute_records(bad_opening.tally)[0][0]
    member = run.tally.committee[0]
    vote = next(v for v in run.votes if v.verifier_key == member)
    evidence = dataclasses.replace(
        record.accusation.evidence,
        request=run.request,
        signed=run.signed,
        response=run.responses[member],
    )
    made_up = resign_vote(
        vote,
        net.key_of(member),
        verdict=Verdict.REJECT,
        layer_checks=(),
        sampler_checks=(),
        reason="made up",
        evidence=evidence,
    )
    forged = SlashRecord(
        Offence.EXECUTOR_BAD_OPENING,
        run.signed.commitment.executor_key,
        run.request,
        run.signed,
        accusation=made_up,
    )
    refused(forged, vset, "does not prove")


def test_invalid_slash_under_another_validator_set(net, vset, fraud_record, double_record):
    heavier = ValidatorSet.of(vset.network_id, 0, (Validator(k, 101) for k in vset.keys))
    for record in (fraud_record, double_record):
        refused(record, heavier, "another validator set")


def test_invalid_slash_moved_to_another_request(net, vset, run, fraud_record):
    # The accusation and findings are bound to their request and commitment.
    moved = dataclasses.replace(fraud_record, request=run.request, signed=run.signed)
    # Committees depend on the request: the accuser may not even sit on the other one.
    member = fraud_record.accusation.verifier_key in run.tally.committee
    refused(moved, vset, "vote is for another request" if member else "outside the committee")
    other_signed = dataclasses.replace(fraud_record, signed=run.signed)
    refused(other_signed, vset, "another request")


def test_invalid_double_vote_of_two_accepts(net, vset, double_record):
    accept = next(v for v in double_record.votes if v.verdict is Verdict.ACCEPT)
    again = resign_vote(accept, net.key_of(accept.verifier_key), reason="the same, twice")
    refused(dataclasses.replace(double_record, votes=(accept, again)), vset, "one ACCEPT and one")
    refused(dataclasses.replace(double_record, votes=(accept, accept)), vset, "one ACCEPT and one")


def test_invalid_double_vote_of_accept_and_unavailable(net, vset, double_record):
    accept = next(v for v in double_record.votes if v.verdict is Verdict.ACCEPT)
    gone = resign_vote(
        accept,
        net.key_of(accept.verifier_key),
        verdict=Verdict.UNAVAILABLE,
        layer_checks=(),
        sampler_checks=(),
        reason="down",
    )
    refused(dataclasses.replace(double_record, votes=(accept, gone)), vset, "one ACCEPT and one")


def test_invalid_double_vote_of_two_verifiers(vset, run, double_record):
    # An ACCEPT by one member and a REJECT by another are two honest opinions, not an offence.
    reject = next(v for v in double_record.votes if v.verdict is Verdict.REJECT)
    other_accept = next(v for v in run.votes if v.verifier_key != reject.verifier_key)
    refused(dataclasses.replace(double_record, votes=(other_accept, reject)), vset, "another")


@pytest.mark.parametrize("count", [0, 1, 3])
def test_invalid_double_vote_record_size(vset, double_record, count):
    votes = (double_record.votes * 2)[:count]
    refused(dataclasses.replace(double_record, votes=votes), vset, "two votes")


def test_invalid_double_vote_by_an_outsider(net, vset, run, double_record):
    # Votes outside the committee are not votes on this commitment at all.
    outsider = next(pk for pk in net.validators if pk not in run.tally.committee)
    key = net.key_of(outsider)
    votes = tuple(resign_vote(v, key, verifier_key=outsider) for v in double_record.votes)
    refused(
        dataclasses.replace(double_record, offender=outsider, votes=votes),
        vset,
        "vote signed by a key outside the committee",
    )


def test_invalid_double_vote_with_a_forged_vote(vset, double_record):
    a, b = double_record.votes
    refused(
        dataclasses.replace(double_record, votes=(a, dataclasses.replace(b, reason="edited"))),
        vset,
        "invalid signature on vote",
        BadSignature,
    )


# --- penalties [SLASH.2]


@pytest.mark.parametrize("keep", [0, 2])
def test_invalid_penalty_with_too_few_refutations(vset, penalty, keep):
    short = dataclasses.replace(penalty, refutations=penalty.refutations[:keep])
    with pytest.raises(Reject, match="needs 3"):
        check_penalty(short, vset)
    check_penalty(dataclasses.replace(penalty, refutations=penalty.refutations[:3]), vset)


def test_invalid_penalty_with_confirmations(vset, run, penalty, fraud_record):
    confirmations = by_members(fraud_record.confirmations, run.tally.committee)
    with pytest.raises(Reject, match="confirmation does not support this record"):
        check_penalty(dataclasses.replace(penalty, refutations=confirmations), vset)


def test_invalid_penalty_naming_another_accuser(vset, run, penalty):
    with pytest.raises(Reject, match="not a REJECT by the accuser"):
        check_penalty(dataclasses.replace(penalty, accuser=run.tally.committee[2]), vset)


def test_invalid_penalty_with_a_repeated_refutation(vset, penalty):
    r = penalty.refutations
    with pytest.raises(Reject, match="two"):
        check_penalty(dataclasses.replace(penalty, refutations=(r[0], r[1], r[1])), vset)


def test_invalid_penalty_for_an_accept(vset, run, penalty):
    accept = next(v for v in run.votes if v.verifier_key == penalty.accuser)
    with pytest.raises(Reject, match="penalty's accusation is not a REJECT by the accuser"):
        check_penalty(dataclasses.replace(penalty, accusation=accept), vset)


def test_invalid_penalty_against_proven_model_free_evidence(net, vset, bad_opening):
    # Three always-accept members refute a bad-opening accusation that hashes alone prove.
    acc = bad_opening.votes[0]
    refuters = [
        make_byzantine_verifier("always-accept", net.verifiers[pk])
        for pk in bad_opening.tally.committee
    ]
    refutations = tuple(
        r.confirm(bad_opening.request, bad_opening.signed, acc) for r in refuters[:3]
    )
    forged = Penalty(acc.verifier_key, bad_opening.request, bad_opening.signed, acc, refutations)
    with pytest.raises(Reject, match="proves itself on signatures and hashes"):
        check_penalty(forged, vset)


def test_stranger_cannot_forge_confirmations(vset, fraud_record):
    stranger = make_key("stranger")
    c = fraud_record.confirmations[0]
    unsigned = dataclasses.replace(c, verifier_key=stranger.public_key)
    forged = dataclasses.replace(unsigned, signature=stranger.sign(unsigned.signing_root()))
    refused(
        dataclasses.replace(fraud_record, confirmations=(forged, *fraud_record.confirmations[1:3])),
        vset,
        "outside the committee",
    )

"""Votes, quorum certificates and the assembler's tally. [QUORUM.1]-[QUORUM.5], [ASM.1]-[ASM.5]

The fixtures are one honest run of the tiny model through the real executor and verifier cores
(see :mod:`tests.support`): f = 1, six validators, a committee of four, all four votes ACCEPT.
A REJECT opens a confirmation round ([CONFIRM.1]-[CONFIRM.3]); a verifier voting both ways
loses its vote ([QUORUM.5]).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bft.assembler import (
    AssemblerPolicy,
    Outcome,
    Tally,
    build_receipt,
    check_commitment,
    compute_request,
    compute_tally,
    get_final_outcome,
    get_outcome,
    open_disputes,
    process_confirmation_vote,
    process_vote,
)
from bft.confirmation import Finding
from bft.errors import BadSignature, Ignore, Malformed, Reject
from bft.measure import Band, Thresholds
from bft.messages import (
    Evidence,
    EvidenceCheck,
    SamplerCheck,
    SamplingParams,
    Verdict,
    compute_challenge_message,
)
from bft.quorum import QuorumCertificate, check_quorum_certificate, check_vote
from bft.receipt import check_receipt
from bft.types import Digest, Signature
from bft.validators import Validator, ValidatorSet
from bft.verifier import VerifierCore
from merkle.sketch import SketchCheck
from simnet.verifiers import make_byzantine_verifier
from tests.support import (
    NETWORK_ID,
    PROMPT,
    Network,
    Run,
    get_honest_run,
    get_network,
    make_key,
    resign_commitment,
    resign_vote,
    verify,
)


def committee_of(run: Run):
    return run.tally.committee


def outsider_vote(net: Network, run: Run, which: int = 0):
    """Return a valid ACCEPT vote by a validator (``which``: 0 or 1) outside the committee."""
    pk = [k for k in net.validators if k not in committee_of(run)][which]
    return verify(net.verifiers[pk], net.executor, run.request, run.signed).vote


def made_up_evidence(run: Run, **changes) -> Evidence:
    """Return a layer claim against the honest commitment of ``run`` (bound to it, but false)."""
    response = next(iter(run.responses.values()))
    evidence = Evidence(
        EvidenceCheck.LAYER, run.request, run.signed, response, layer=1, measured=1.0
    )
    return dataclasses.replace(evidence, **changes)


def as_verdict(net: Network, vote, verdict: Verdict):
    """Return ``vote`` re-signed by its verifier with ``verdict`` and no measurements.

    A REJECT carries (made-up) evidence about the honest run, as [VOTE.3] requires.
    """
    evidence = made_up_evidence(get_honest_run()) if verdict is Verdict.REJECT else None
    return resign_vote(
        vote,
        net.key_of(vote.verifier_key),
        verdict=verdict,
        layer_checks=(),
        sampler_checks=(),
        reason="x",
        evidence=evidence,
    )


# --- the honest run


def test_honest_run_is_accepted_by_the_whole_committee(net, run):
    assert len(run.votes) == 4
    assert all(v.verdict is Verdict.ACCEPT for v in run.votes)
    assert [v.verifier_key for v in run.votes] == list(committee_of(run))
    assert net.executor_key.public_key not in committee_of(run)
    for vote in run.votes:
        check_vote(vote, run.request, run.signed, committee_of(run))


def test_accept_votes_report_exactly_their_challenged_layers(run):
    for vote in run.votes:
        session = run.sessions[vote.verifier_key]
        assert not session.escalated and not vote.escalated
        assert [(c.layer, c.chunks) for c in vote.layer_checks] == [
            (lc.layer, lc.chunks) for lc in session.challenge.layers
        ]
        assert len(vote.layer_checks) == run.request.layers_per_verifier


def test_accept_votes_report_exactly_their_challenged_positions(run):
    for vote in run.votes:
        positions = run.sessions[vote.verifier_key].challenge.positions
        assert tuple(c.position for c in vote.sampler_checks) == positions
        assert len(positions) == run.request.positions_per_verifier
        c = run.signed.commitment
        assert all(c.prompt_len <= p < len(c.tokens) for p in positions)


@pytest.mark.parametrize("n", [3, 4])
def test_certificate_of_any_quorum_in_any_order_passes(run, n):
    for votes in itertools.permutations(run.votes, n):
        check_quorum_certificate(
            QuorumCertificate(run.signed, votes), run.request, committee_of(run)
        )


# --- check_vote [QUORUM.2]


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": "another-network"},
        {"request_digest": Digest(b"\x00" * 32)},
        {"commitment_digest": Digest(b"\x00" * 32)},
    ],
    ids=["network", "request", "commitment"],
)
def test_invalid_vote_bound_to_something_else(net, run, changes):
    vote = resign_vote(run.votes[0], net.key_of(run.votes[0].verifier_key), **changes)
    vote.check()  # the signature itself is fine
    with pytest.raises(Reject):
        check_vote(vote, run.request, run.signed, committee_of(run))


def test_invalid_vote_from_outside_the_committee(net, run):
    vote = outsider_vote(net, run)
    assert vote.verdict is Verdict.ACCEPT
    with pytest.raises(Reject, match="outside the committee"):
        check_vote(vote, run.request, run.signed, committee_of(run))


def test_invalid_vote_from_outside_the_validator_set(run):
    stranger = make_key("stranger")
    vote = resign_vote(run.votes[0], stranger, verifier_key=stranger.public_key)
    with pytest.raises(Reject):
        check_vote(vote, run.request, run.signed, committee_of(run))


def test_invalid_vote_with_unsigned_change(run):
    vote = dataclasses.replace(run.votes[0], embedding_max_error=0.5)
    with pytest.raises(BadSignature):
        check_vote(vote, run.request, run.signed, committee_of(run))


def test_invalid_vote_with_a_forged_challenge_signature(net, run):
    vote = run.votes[0]
    key = net.key_of(vote.verifier_key)
    forged = resign_vote(vote, key, challenge_signature=Signature(b"\x01" * 64))
    with pytest.raises(BadSignature, match="challenge"):
        check_vote(forged, run.request, run.signed, committee_of(run))
    # A genuine challenge signature, but over another commitment: the seed is not this one's.
    elsewhere = key.sign(compute_challenge_message(NETWORK_ID, Digest(b"\x02" * 32)))
    with pytest.raises(BadSignature, match="challenge"):
        check_vote(
            resign_vote(vote, key, challenge_signature=elsewhere),
            run.request,
            run.signed,
            committee_of(run),
        )


def test_invalid_vote_with_another_verifiers_challenge_signature(net, run):
    a, b = run.votes[0], run.votes[1]
    forged = resign_vote(a, net.key_of(a.verifier_key), challenge_signature=b.challenge_signature)
    with pytest.raises(BadSignature):
        check_vote(forged, run.request, run.signed, committee_of(run))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda checks: checks[:1],
        lambda checks: (),
        lambda checks: checks[::-1],
        lambda checks: (*checks, checks[0]),
        lambda checks: (dataclasses.replace(checks[0], layer=checks[0].layer % 4 + 1), checks[1]),
        lambda checks: (dataclasses.replace(checks[0], chunks=checks[0].chunks[:-1]), checks[1]),
    ],
    ids=["one-layer", "no-layers", "reordered", "extra-layer", "other-layer", "fewer-chunks"],
)
def test_invalid_accept_vote_reporting_other_layers_than_challenged(net, run, mutate):
    vote = run.votes[0]
    checks = mutate(vote.layer_checks)
    forged = resign_vote(vote, net.key_of(vote.verifier_key), layer_checks=checks)
    with pytest.raises(Reject, match="layers its challenge selects"):
        check_vote(forged, run.request, run.signed, committee_of(run))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda checks: checks[:-1],
        lambda checks: (),
        lambda checks: checks[::-1],
        lambda checks: (*checks, checks[0]),
        lambda checks: (SamplerCheck(checks[0].position - 1, 0.0), *checks[1:]),
    ],
    ids=["fewer", "none", "reordered", "extra", "other-position"],
)
def test_invalid_accept_vote_reporting_other_positions_than_challenged(net, run, mutate):
    vote = run.votes[0]
    forged = resign_vote(
        vote, net.key_of(vote.verifier_key), sampler_checks=mutate(vote.sampler_checks)
    )
    with pytest.raises(Reject, match="positions its challenge selects"):
        check_vote(forged, run.request, run.signed, committee_of(run))


def test_invalid_accept_vote_claiming_an_escalation_it_did_not_check(net, run):
    # The escalated challenge doubles k (here: every layer), so the base report no longer fits.
    vote = run.votes[0]
    forged = resign_vote(vote, net.key_of(vote.verifier_key), escalated=True)
    with pytest.raises(Reject, match="its challenge selects"):
        check_vote(forged, run.request, run.signed, committee_of(run))


# --- the whole-sequence sketch check in ACCEPT votes [SKETCH.4]


@pytest.fixture(scope="module")
def checked(net) -> Run:
    """Return an honest run whose every verifier draws the sketch check (q = 1)."""
    return net.run(net.request(request_id=b"\x34" * 16, sequence_check_ppm=1_000_000))


@pytest.fixture(scope="module")
def unchecked(net) -> Run:
    """Return an honest run where no verifier draws the sketch check (q = 0)."""
    return net.run(net.request(request_id=b"\x36" * 16, sequence_check_ppm=0))


def test_accept_votes_report_the_sketch_check_exactly_when_drawn(unchecked, checked):
    for r, drawn in ((unchecked, False), (checked, True)):
        for vote in r.votes:
            assert r.sessions[vote.verifier_key].challenge.sequence_check is drawn
            assert (vote.sequence_check is not None) is drawn
            check_vote(vote, r.request, r.signed, committee_of(r))
    qc_check(checked, checked.votes)


def test_invalid_accept_vote_without_its_drawn_sketch_check(net, checked):
    for vote in checked.votes:
        forged = resign_vote(vote, net.key_of(vote.verifier_key), sequence_check=None)
        forged.check()
        with pytest.raises(Reject, match="sketch check its challenge selects"):
            check_vote(forged, checked.request, checked.signed, committee_of(checked))
        with pytest.raises(Reject, match="sketch check"):
            qc_check(checked, (forged, *(v for v in checked.votes if v is not vote)))


def test_invalid_accept_vote_with_a_sketch_check_it_did_not_draw(net, unchecked):
    run = unchecked
    for vote in run.votes:
        assert not run.sessions[vote.verifier_key].challenge.sequence_check
        forged = resign_vote(vote, net.key_of(vote.verifier_key), sequence_check=SketchCheck(0, 0))
        with pytest.raises(Reject, match="sketch check its challenge selects"):
            check_vote(forged, run.request, run.signed, committee_of(run))


def test_invalid_escalated_accept_vote_without_the_sketch_check(net):
    # The escalated challenge always draws the sketch check, whatever q (here 0).
    request = net.request(request_id=b"\x35" * 16, sequence_check_ppm=0)
    signed = net.executor.on_execute(request)
    key = net.validator_keys[0]
    grey = VerifierCore(
        key, net.backend, net.lm.model_id, 4, 64, NETWORK_ID, Thresholds(embedding=Band(-1, 1))
    )
    vote = verify(grey, net.executor, request, signed).vote
    assert vote.verdict is Verdict.ACCEPT and vote.escalated
    assert vote.sequence_check == SketchCheck(0, 0.0)
    check_vote(vote, request, signed, (key.public_key,))
    forged = resign_vote(vote, key, sequence_check=None)
    with pytest.raises(Reject, match="sketch check its challenge selects"):
        check_vote(forged, request, signed, (key.public_key,))


@pytest.mark.parametrize("verdict", [Verdict.REJECT, Verdict.UNAVAILABLE])
@pytest.mark.parametrize("sequence_check", [None, SketchCheck(0, 0.75)])
def test_non_accept_votes_are_not_held_to_the_sketch_draw(net, run, verdict, sequence_check):
    vote = as_verdict(net, run.votes[0], verdict)
    vote = resign_vote(vote, net.key_of(vote.verifier_key), sequence_check=sequence_check)
    check_vote(vote, run.request, run.signed, committee_of(run))


@pytest.mark.parametrize("verdict", [Verdict.REJECT, Verdict.UNAVAILABLE])
def test_non_accept_votes_need_no_layer_report(net, run, verdict):
    check_vote(as_verdict(net, run.votes[0], verdict), run.request, run.signed, committee_of(run))


def test_invalid_reject_vote_with_evidence_about_another_request(net, run):
    other = net.run(net.request(request_id=b"\x31" * 16))
    for evidence in (
        made_up_evidence(other),
        made_up_evidence(run, request=other.request),
        made_up_evidence(run, signed=other.signed),
    ):
        vote = resign_vote(
            as_verdict(net, run.votes[0], Verdict.REJECT),
            net.key_of(run.votes[0].verifier_key),
            evidence=evidence,
        )
        vote.check()
        with pytest.raises(Reject, match="another request or commitment"):
            check_vote(vote, run.request, run.signed, committee_of(run))


# --- quorum certificates [QUORUM.3]


def qc_check(run: Run, votes) -> None:
    check_quorum_certificate(
        QuorumCertificate(run.signed, tuple(votes)), run.request, committee_of(run)
    )


def test_invalid_certificate_with_a_duplicate_signer(run):
    v = run.votes
    for votes in [(v[0], v[0], v[1]), (v[0], v[0], v[0]), (v[0], v[1], v[2], v[0])]:
        with pytest.raises(Reject, match="two votes by one verifier"):
            qc_check(run, votes)


def test_invalid_certificate_with_an_equivocating_signer(net, run):
    # Two different valid votes by one verifier still count once.
    v = run.votes
    other = resign_vote(v[0], net.key_of(v[0].verifier_key), reason="second opinion")
    with pytest.raises(Reject, match="two votes by one verifier"):
        qc_check(run, (v[0], other, v[1]))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_invalid_certificate_below_quorum(run, n):
    for votes in itertools.combinations(run.votes, n):
        with pytest.raises(Reject, match="needs 3"):
            qc_check(run, votes)


@pytest.mark.parametrize("verdict", [Verdict.REJECT, Verdict.UNAVAILABLE])
def test_invalid_certificate_holding_a_non_accept_vote(net, run, verdict):
    v = run.votes
    with pytest.raises(Reject, match="not ACCEPT"):
        qc_check(run, (v[0], v[1], v[2], as_verdict(net, v[3], verdict)))
    with pytest.raises(Reject, match="not ACCEPT"):
        qc_check(run, (as_verdict(net, v[0], verdict), v[1], v[2]))


def test_invalid_certificate_with_a_non_member(net, run):
    v = run.votes
    with pytest.raises(Reject, match="outside the committee"):
        qc_check(run, (v[0], v[1], outsider_vote(net, run)))
    with pytest.raises(Reject, match="outside the committee"):
        qc_check(run, (*v, outsider_vote(net, run)))


def test_invalid_certificate_for_another_commitment(net, run):
    other = resign_commitment(run.signed, net.executor_key, merkle_root=Digest(b"\x09" * 32))
    with pytest.raises(Reject, match="another commitment"):
        check_quorum_certificate(
            QuorumCertificate(other, run.votes), run.request, committee_of(run)
        )


# --- the assembler: commitments, tallies, outcomes [ASM.1]-[ASM.4]


def test_compute_request_binds_policy_and_validator_set(net):
    # The request names the set's epoch and digest: its committee is drawn from that set.
    vset = ValidatorSet.of(
        NETWORK_ID,
        7,
        (Validator(k, 10 + i) for i, k in enumerate(net.validators)),
        Digest(b"\x01" * 32),
    )
    policy = AssemblerPolicy(NETWORK_ID, f=2, layers_per_verifier=3)
    req = compute_request(policy, b"\x05" * 16, net.lm.model_id, PROMPT, SamplingParams(), vset)
    assert (req.f, req.layers_per_verifier, req.epoch, req.network_id) == (2, 3, 7, NETWORK_ID)
    assert req.validator_set_digest == vset.digest()
    assert net.request().validator_set_digest == net.validator_set.digest
    assert net.request().epoch == 0


@pytest.mark.parametrize(
    "args",
    [
        {"request_id": b"\x05" * 15},
        {"prompt_tokens": ()},
        {"sampling": SamplingParams(max_new_tokens=0)},
    ],
    ids=["request-id", "empty-prompt", "sampling"],
)
def test_invalid_compute_request(net, args):
    kwargs = {
        "request_id": b"\x05" * 16,
        "model_id": net.lm.model_id,
        "prompt_tokens": PROMPT,
        "sampling": SamplingParams(),
        "vset": net.validator_set.vset,
        **args,
    }
    with pytest.raises(Malformed):
        compute_request(net.policy, **kwargs)


def test_check_commitment_accepts_the_honest_commitment(net, run):
    check_commitment(run.request, run.signed, net.executor_key.node_id)


def test_invalid_commitment_from_another_executor(net, run):
    with pytest.raises(Reject, match="another key"):
        check_commitment(run.request, run.signed, make_key("someone").node_id)


def test_invalid_commitment_with_unsigned_change(net, run):
    tampered = dataclasses.replace(
        run.signed, commitment=dataclasses.replace(run.signed.commitment, prompt_len=19)
    )
    with pytest.raises(BadSignature):
        check_commitment(run.request, tampered, net.executor_key.node_id)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"request_digest": Digest(b"\x00" * 32)}, "another request"),
        ({"network_id": "elsewhere"}, "another request"),
        ({"tokens": (*PROMPT[:-1], 5, *range(8))}, "prompt differs"),
        ({"model_id": Digest(b"\x00" * 32)}, "another model"),
    ],
    ids=["request", "network", "prompt", "model"],
)
def test_invalid_signed_commitment_for_something_else(net, run, changes, why):
    other = resign_commitment(run.signed, net.executor_key, **changes)
    with pytest.raises(Reject, match=why):
        check_commitment(run.request, other, net.executor_key.node_id)


def tally_of(net: Network, run: Run, votes) -> Tally:
    tally = compute_tally(run.request, run.signed, net.validator_set.vset)
    for vote in votes:
        tally = process_vote(tally, vote)
    return tally


def test_tally_committee_is_drawn_without_the_executor(net, run):
    tally = compute_tally(run.request, run.signed, net.validator_set.vset)
    assert tally.committee == run.tally.committee
    assert len(tally.committee) == run.request.committee_size
    assert tally.votes == () and tally.double_votes == () and tally.disputes == ()


def test_invalid_tally_under_another_validator_set(net, run):
    # [COMMITTEE.1]: the committee is drawn from the set the request names, no other.
    vset = net.validator_set.vset
    others = [
        ValidatorSet.of_keys(NETWORK_ID, vset.keys[:-1]),
        ValidatorSet.of(NETWORK_ID, 0, (Validator(k, 7) for k in vset.keys)),
        ValidatorSet.of(NETWORK_ID, 1, vset.validators, vset.digest()),
    ]
    for other in others:
        with pytest.raises(Reject, match="another validator set"):
            compute_tally(run.request, run.signed, other)


def test_outcomes_of_accept_sequences(net, run):
    v = run.votes
    assert get_outcome(tally_of(net, run, [])) is Outcome.PENDING
    assert get_outcome(tally_of(net, run, v[:2])) is Outcome.PENDING
    # 2f+1 ACCEPTs are a quorum, but the last member may still REJECT: wait for it.
    assert get_outcome(tally_of(net, run, v[:3])) is Outcome.PENDING
    assert get_final_outcome(tally_of(net, run, v[:3])) is Outcome.CERTIFIED
    assert get_outcome(tally_of(net, run, v)) is Outcome.CERTIFIED
    assert get_final_outcome(tally_of(net, run, v[:2])) is Outcome.FAILED


def test_outcome_disputed_on_any_reject_until_its_round_is_decided(net, run):
    # [CONFIRM.1]: a REJECT blocks the certificate however many ACCEPTs there are; with no
    # confirmation round decided, closing the attempt fails it (no certificate, no slash).
    v = run.votes
    rejected = as_verdict(net, v[3], Verdict.REJECT)
    for votes in [(*v[:3], rejected), (rejected,), (rejected, v[0])]:
        tally = tally_of(net, run, votes)
        assert get_outcome(tally) is Outcome.DISPUTED
        assert get_outcome(open_disputes(tally)) is Outcome.DISPUTED
        assert get_final_outcome(tally) is Outcome.FAILED
        assert get_final_outcome(open_disputes(tally)) is Outcome.FAILED


def confirm_all(tally: Tally, confirmers) -> Tally:
    """Return ``tally`` with every open dispute's confirmations by ``confirmers``."""
    tally = open_disputes(tally)
    for d in tally.disputes:
        for core in confirmers:
            conf = core.confirm(tally.request, tally.signed, d.accusation)
            if conf is not None:
                tally = process_confirmation_vote(tally, conf)
    return tally


def liars(net: Network, tally: Tally, mode: str, which) -> list:
    """Return committee members ``which`` (indexes) as ``mode`` verifiers of simnet.verifiers."""
    return [make_byzantine_verifier(mode, net.verifiers[tally.committee[i]]) for i in which]


def test_outcome_refuted_reject_no_longer_counts(net, run):
    # Honest members re-check the made-up claim and REFUTE it: 2f+1 REFUTEs drop the REJECT,
    # so the other three ACCEPTs certify. [CONFIRM.3]
    v = run.votes
    tally = tally_of(net, run, (*v[:3], as_verdict(net, v[3], Verdict.REJECT)))
    honest = [net.verifiers[pk] for pk in tally.committee[:3]]
    refuted = confirm_all(tally, honest)
    (d,) = refuted.disputes
    assert d.count(Finding.REFUTE) == 3 and d.count(Finding.CONFIRM) == 0
    assert get_outcome(refuted) is Outcome.CERTIFIED
    receipt = build_receipt(refuted, net.validator_set)
    assert receipt.votes == v[:3]
    check_receipt(receipt)


def test_outcome_refuted_reject_still_needs_a_quorum_of_accepts(net, run):
    v = run.votes
    tally = tally_of(net, run, (v[0], as_verdict(net, v[3], Verdict.REJECT)))
    refuted = confirm_all(tally, [net.verifiers[pk] for pk in tally.committee])
    assert get_outcome(refuted) is Outcome.PENDING  # two members still to vote
    assert get_final_outcome(refuted) is Outcome.FAILED
    assert get_outcome(tally_of(net, run, ())) is Outcome.PENDING


def test_outcome_confirmed_reject_is_rejected(net, run):
    # 2f+1 CONFIRMs make the attempt REJECTED whatever the ACCEPTs (here signed by
    # always-reject members, which confirm anything).
    v = run.votes
    tally = tally_of(net, run, (*v[:3], as_verdict(net, v[3], Verdict.REJECT)))
    confirmed = confirm_all(tally, liars(net, tally, "always-reject", (0, 1, 2)))
    assert confirmed.disputes[0].count(Finding.CONFIRM) == 3
    assert get_outcome(confirmed) is Outcome.REJECTED
    assert get_final_outcome(confirmed) is Outcome.REJECTED


@pytest.mark.parametrize(
    ("confirms", "refutes", "open_outcome", "closed_outcome"),
    [
        (0, 0, Outcome.DISPUTED, Outcome.FAILED),
        (2, 0, Outcome.DISPUTED, Outcome.FAILED),  # 2f: not yet
        (0, 2, Outcome.DISPUTED, Outcome.FAILED),
        (3, 0, Outcome.REJECTED, Outcome.REJECTED),  # 2f+1
        (0, 3, Outcome.CERTIFIED, Outcome.CERTIFIED),
        (2, 1, Outcome.DISPUTED, Outcome.FAILED),
        (1, 2, Outcome.DISPUTED, Outcome.FAILED),
        (2, 2, Outcome.FAILED, Outcome.FAILED),  # undecided: neither side can reach 2f+1
        (3, 1, Outcome.REJECTED, Outcome.REJECTED),
        (1, 3, Outcome.CERTIFIED, Outcome.CERTIFIED),
        (4, 0, Outcome.REJECTED, Outcome.REJECTED),
    ],
)
def test_outcome_table_of_a_confirmation_round(
    net, run, confirms, refutes, open_outcome, closed_outcome
):
    # [CONFIRM.3] on three ACCEPTs and one REJECT (member 3).
    v = run.votes
    tally = tally_of(net, run, (*v[:3], as_verdict(net, v[3], Verdict.REJECT)))
    members = range(confirms + refutes)
    modes = ["always-reject"] * confirms + ["always-accept"] * refutes
    cores = [liars(net, tally, m, (i,))[0] for m, i in zip(modes, members, strict=True)]
    decided = confirm_all(tally, cores)
    assert get_outcome(decided) is open_outcome
    assert get_final_outcome(decided) is closed_outcome


def test_outcome_rejected_by_any_confirmed_reject(net, run):
    # Two REJECTs: one refuted, one confirmed; the confirmed one decides.
    v = run.votes
    tally = tally_of(net, run, (v[0], v[1], *(as_verdict(net, x, Verdict.REJECT) for x in v[2:])))
    tally = open_disputes(tally)
    assert len(tally.disputes) == 2
    first, second = tally.disputes
    confirmer = liars(net, tally, "always-reject", (0, 1, 2))
    refuter = liars(net, tally, "always-accept", (0, 1, 2))
    for c in refuter:
        tally = process_confirmation_vote(
            tally, c.confirm(run.request, run.signed, first.accusation)
        )
    assert get_outcome(tally) is Outcome.DISPUTED  # the second is still open
    for c in confirmer:
        tally = process_confirmation_vote(
            tally, c.confirm(run.request, run.signed, second.accusation)
        )
    assert get_outcome(tally) is Outcome.REJECTED


def test_open_disputes_is_idempotent(net, run):
    v = run.votes
    tally = open_disputes(tally_of(net, run, (*v[:3], as_verdict(net, v[3], Verdict.REJECT))))
    assert len(tally.disputes) == 1
    assert open_disputes(tally) is tally
    assert tally.dispute_of(tally.votes[3]) is tally.disputes[0]
    assert tally.dispute_of(v[0]) is None


def test_invalid_confirmation_about_no_open_accusation(net, run):
    v = run.votes
    rejected = as_verdict(net, v[3], Verdict.REJECT)
    tally = tally_of(net, run, (*v[:3], rejected))
    conf = net.verifiers[tally.committee[0]].confirm(run.request, run.signed, rejected)
    with pytest.raises(Ignore, match="no open accusation"):
        process_confirmation_vote(tally, conf)  # the round was never opened
    opened = open_disputes(tally)
    with pytest.raises(Ignore, match="duplicate"):
        process_confirmation_vote(process_confirmation_vote(opened, conf), conf)


def test_outcome_failed_when_quorum_is_out_of_reach(net, run):
    v = run.votes
    gone = [as_verdict(net, x, Verdict.UNAVAILABLE) for x in v[:2]]
    assert get_outcome(tally_of(net, run, gone[:1])) is Outcome.PENDING
    assert get_outcome(tally_of(net, run, gone)) is Outcome.FAILED
    assert get_outcome(tally_of(net, run, (*gone, v[2], v[3]))) is Outcome.FAILED
    assert get_final_outcome(tally_of(net, run, gone)) is Outcome.FAILED


def test_duplicate_vote_is_ignored(net, run):
    v = run.votes
    tally = tally_of(net, run, v[:2])
    with pytest.raises(Ignore, match="duplicate"):
        process_vote(tally, v[0])
    assert tally.votes == v[:2]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Verdict.ACCEPT, Verdict.UNAVAILABLE),
        (Verdict.UNAVAILABLE, Verdict.ACCEPT),
        (Verdict.UNAVAILABLE, Verdict.REJECT),
        (Verdict.REJECT, Verdict.UNAVAILABLE),
    ],
)
def test_second_vote_without_contradiction_is_ignored(net, run, first, second):
    # Only ACCEPT against REJECT is a double vote; any other second vote leaves the first.
    v = run.votes
    a, b = (v[1] if d is Verdict.ACCEPT else as_verdict(net, v[1], d) for d in (first, second))
    tally = tally_of(net, run, (v[0], a))
    with pytest.raises(Ignore, match="second vote"):
        process_vote(tally, b)
    assert tally.double_votes == ()


@pytest.mark.parametrize("order", ["accept-first", "reject-first"])
def test_double_vote_removes_the_verifiers_vote(net, run, order):
    # [QUORUM.5]: ACCEPT and REJECT by one key on one commitment: neither counts, the pair is
    # kept as slashing evidence, and the verifier is not heard again on this commitment.
    v = run.votes
    accept, reject = v[1], as_verdict(net, v[1], Verdict.REJECT)
    pair = (accept, reject) if order == "accept-first" else (reject, accept)
    tally = tally_of(net, run, (v[0], *pair, v[2]))
    assert tally.votes == (v[0], v[2])
    assert tally.double_votes == (pair,)
    assert tally.double_voters == {v[1].verifier_key}
    assert tally.disputes == ()
    for again in (accept, reject, as_verdict(net, v[1], Verdict.UNAVAILABLE)):
        with pytest.raises(Ignore, match="both ways"):
            process_vote(tally, again)
    # The double voter has answered (uselessly): v[3] completes the committee with 3 ACCEPTs.
    assert get_outcome(tally) is Outcome.PENDING
    assert get_outcome(process_vote(tally, v[3])) is Outcome.CERTIFIED


def test_double_vote_of_an_accuser_drops_its_dispute(net, run):
    v = run.votes
    reject = as_verdict(net, v[3], Verdict.REJECT)
    tally = open_disputes(tally_of(net, run, (*v[:3], reject)))
    assert len(tally.disputes) == 1 and get_outcome(tally) is Outcome.DISPUTED
    tally = process_vote(tally, v[3])
    assert tally.disputes == () and tally.double_votes == ((reject, v[3]),)
    assert get_outcome(tally) is Outcome.CERTIFIED  # three ACCEPTs, every member answered


def test_double_votes_can_cost_the_certificate(net, run):
    v = run.votes
    tally = tally_of(net, run, v)
    assert get_outcome(tally) is Outcome.CERTIFIED
    tally = process_vote(tally, as_verdict(net, v[0], Verdict.REJECT))
    assert tally.count(Verdict.ACCEPT) == 3 and get_outcome(tally) is Outcome.CERTIFIED
    tally = process_vote(tally, as_verdict(net, v[1], Verdict.REJECT))
    assert tally.count(Verdict.ACCEPT) == 2 and get_outcome(tally) is Outcome.FAILED
    assert build_receipt(tally, net.validator_set).votes == v[2:]


def test_invalid_vote_is_rejected_by_the_tally(net, run):
    tally = tally_of(net, run, ())
    with pytest.raises(Reject):
        process_vote(tally, outsider_vote(net, run))
    with pytest.raises(BadSignature):
        process_vote(tally, dataclasses.replace(run.votes[0], reason="edited"))
    assert tally.votes == ()


def test_build_receipt_keeps_only_accept_votes(net, run):
    v = run.votes
    tally = tally_of(net, run, (*v[:3], as_verdict(net, v[3], Verdict.UNAVAILABLE)))
    assert get_final_outcome(tally) is Outcome.CERTIFIED
    receipt = build_receipt(tally, net.validator_set)
    assert receipt.votes == v[:3]
    check_receipt(receipt)


class TallyMachine(RuleBasedStateMachine):
    """Votes arrive in any order, valid or not; the tally must follow the rules. [ASM.3]-[ASM.4]

    Invariants: no certificate without 2f+1 distinct committee ACCEPTs, a REJECT keeps the
    attempt DISPUTED while no confirmation round decides it ([CONFIRM.1]), ACCEPT and REJECT
    by one key remove both ([QUORUM.5]), a FAILED outcome never turns back into PENDING or
    CERTIFIED, a certified tally yields a receipt that passes :func:`check_receipt`, and fewer
    than 2f+1 ACCEPTs never do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = get_network()
        self.run = get_honest_run()
        self.members, self.outsiders = _vote_pool()
        vset = self.net.validator_set.vset
        self.tally = compute_tally(self.run.request, self.run.signed, vset)
        self.counted: dict[bytes, Verdict] = {}
        self.double: set[bytes] = set()
        self.has_failed = False

    @rule(member=st.integers(0, 3), verdict=st.sampled_from(Verdict))
    def member_votes(self, member, verdict):
        vote = self.members[(member, verdict)]
        key = vote.verifier_key
        before = self.tally
        first = self.counted.get(key)
        if key in self.double or (
            first is not None and {first, verdict} != {Verdict.ACCEPT, Verdict.REJECT}
        ):
            with pytest.raises(Ignore):
                process_vote(self.tally, vote)
            assert self.tally is before
        elif first is not None:
            self.tally = process_vote(self.tally, vote)
            del self.counted[key]
            self.double.add(key)
        else:
            self.tally = process_vote(self.tally, vote)
            self.counted[key] = verdict

    @rule(outsider=st.integers(0, 1))
    def outsider_votes(self, outsider):
        with pytest.raises(Reject):
            process_vote(self.tally, self.outsiders[outsider])

    @invariant()
    def outcome_follows_the_rules(self):
        assert [v.verifier_key for v in self.tally.votes] == list(self.counted)
        assert self.tally.double_voters == self.double
        accepts = sum(1 for v in self.counted.values() if v is Verdict.ACCEPT)
        rejects = sum(1 for v in self.counted.values() if v is Verdict.REJECT)
        missing = 4 - len(self.counted) - len(self.double)
        outcome = get_outcome(self.tally)
        if rejects:
            assert outcome is Outcome.DISPUTED
        elif accepts >= 3 and missing == 0:
            assert outcome is Outcome.CERTIFIED
        elif accepts + missing < 3:
            assert outcome is Outcome.FAILED
        else:
            assert outcome is Outcome.PENDING
        final = get_final_outcome(self.tally)
        assert final is (Outcome.CERTIFIED if accepts >= 3 and not rejects else Outcome.FAILED)
        if outcome is Outcome.FAILED:
            self.has_failed = True
        elif self.has_failed:
            assert outcome is Outcome.DISPUTED

    @invariant()
    def receipt_is_valid_exactly_with_a_quorum_of_accepts(self):
        receipt = build_receipt(self.tally, self.net.validator_set)
        if get_final_outcome(self.tally) is Outcome.CERTIFIED:
            assert len({v.verifier_key for v in receipt.votes}) >= 3
            check_receipt(receipt)
        if self.tally.count(Verdict.ACCEPT) < 3:
            with pytest.raises(Reject):
                check_receipt(receipt)


_POOL: list = []


def _vote_pool():
    """Return each committee member's vote under each verdict, and two outsiders' ACCEPTs."""
    if not _POOL:
        net, run = get_network(), get_honest_run()
        members = {}
        for i, vote in enumerate(run.votes):
            members[(i, Verdict.ACCEPT)] = vote
            for d in (Verdict.REJECT, Verdict.UNAVAILABLE):
                members[(i, d)] = as_verdict(net, vote, d)
        _POOL.extend([members, [outsider_vote(net, run, i) for i in range(2)]])
    return _POOL


TallyMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=8, deadline=None)
test_tally_state_machine = TallyMachine.TestCase


def test_honest_votes_measure_rounding_noise_only(run):
    # Honest float32 re-execution on the same machine agrees to rounding.
    for vote in run.votes:
        assert vote.embedding_max_error <= 1e-6
        assert vote.max_error <= 1e-6
        assert vote.reason == ""

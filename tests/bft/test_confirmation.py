"""Confirmation rounds: the committee re-checks a REJECT's evidence. [CONFIRM.1]-[CONFIRM.5]

Real evidence comes from the verifier core against byzantine executors of
:mod:`simnet.executors` on the tiny model; made-up evidence is signed by committee members
against the honest run of :mod:`tests.support`. Every honest member audits the accusation with
its own model: it CONFIRMs what is true and REFUTEs what is not. 2f+1 of either decides.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bft.assembler import Outcome, get_outcome, open_disputes, process_confirmation_vote
from bft.confirmation import (
    Confirmation,
    Dispute,
    DisputeOutcome,
    Finding,
    audit_accusation,
    compute_accusation_digest,
    get_dispute_outcome,
    is_model_free,
    open_dispute,
    process_confirmation,
    sign_confirmation,
)
from bft.crypto import SigningKey
from bft.errors import BadSignature, CannotJudge, Ignore, Malformed, Reject
from bft.evidence import AuditModel, AuditResult, audit_evidence
from bft.limits import MAX_STRING
from bft.measure import Thresholds
from bft.messages import Evidence, EvidenceCheck, InferenceRequest, Verdict, Vote
from bft.types import Digest, ModelId, PublicKey, Signature
from bft.verifier import VerifierCore
from executor.core import ExecutorCore
from proto import convert
from proto import verihive_pb2 as pb
from simnet.executors import LayerTamperExecutor, make_byzantine_executor
from simnet.verifiers import make_byzantine_verifier
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    Network,
    Run,
    check_votes_follow_challenges,
    find_one_catcher_by_layer,
    make_key,
    resign_vote,
)


def byzantine_executor(net: Network, mode: str) -> ExecutorCore:
    return make_byzantine_executor(
        mode, make_key(f"confirm-{mode}"), net.lm.model, net.lm.model_id, NETWORK_ID, CHUNK_SIZE
    )


def byzantine_run(net: Network, ex: ExecutorCore, request: InferenceRequest) -> Run:
    """Return the committee's run against ``ex``, without the confirmation round."""
    return net.run(request, ex, check_at_assembler=False, confirm=False)


@pytest.fixture(scope="module")
def perturbed(net) -> Run:
    """One layer perturbed: the member whose challenge reaches it REJECTs, three ACCEPT."""
    ex = byzantine_executor(net, "perturb-layer")
    assert isinstance(ex, LayerTamperExecutor)
    found = find_one_catcher_by_layer(net, ex, "confirm-perturbed")  # challenges: searched
    run = byzantine_run(net, ex, found.request)
    check_votes_follow_challenges(run, found)
    return run


@pytest.fixture(scope="module")
def bad_opening(net) -> Run:
    """Openings that miss the signed root: model-free evidence from every member."""
    request = net.request(request_id=b"\xc3" * 16)
    return byzantine_run(net, byzantine_executor(net, "bad-opening"), request)


def made_up_accusation(net: Network, run: Run, member: PublicKey, **claim) -> Vote:
    """Return ``member``'s REJECT of the honest ``run`` with a made-up claim (signed, valid)."""
    vote = next(v for v in run.votes if v.verifier_key == member)
    response = run.responses[member]
    fields = {"layer": vote.layer_checks[0].layer, "measured": 1.0, **claim}
    check = fields.pop("check", EvidenceCheck.LAYER)
    evidence = Evidence(check, run.request, run.signed, response, **fields)
    return resign_vote(
        vote,
        net.key_of(member),
        verdict=Verdict.REJECT,
        layer_checks=(),
        sampler_checks=(),
        reason="made up",
        evidence=evidence,
    )


@pytest.fixture(scope="module")
def accusation(net, run) -> Vote:
    return made_up_accusation(net, run, run.tally.committee[0])


@pytest.fixture(scope="module")
def dispute(run, accusation) -> Dispute:
    return open_dispute(run.request, run.signed, accusation, run.tally.committee)


def signed_finding(key: SigningKey, d: Dispute, finding: Finding, **changes) -> Confirmation:
    """Return ``key``'s signed ``finding`` on ``d`` (no audit: for counting rules)."""
    unsigned = Confirmation(
        network_id=d.request.network_id,
        request_digest=d.request.digest(),
        commitment_digest=d.signed.digest,
        accusation_digest=d.digest,
        verifier_key=key.public_key,
        finding=finding,
        measured=0.5,
        detail="counted",
    )
    unsigned = dataclasses.replace(unsigned, **changes)
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.signing_root()))


# --- the confirmation message [CONFIRM.2]

CONF = Confirmation(
    network_id="n",
    request_digest=Digest(b"\x01" * 32),
    commitment_digest=Digest(b"\x02" * 32),
    accusation_digest=Digest(b"\x03" * 32),
    verifier_key=PublicKey(SigningKey.from_seed(b"\x04" * 32).public_key),
    finding=Finding.CONFIRM,
    measured=0.25,
    detail="layer 2 recomputes with error 0.25",
    signature=Signature(b"\x00" * 64),
)
_bytes32 = st.binary(min_size=32, max_size=32)
CONF_FIELDS = {
    "network_id": st.text(min_size=1, max_size=8),
    "request_digest": _bytes32,
    "commitment_digest": _bytes32,
    "accusation_digest": _bytes32,
    "verifier_key": _bytes32,
    "finding": st.sampled_from(Finding),
    "measured": st.floats(allow_nan=False, allow_infinity=False),
    "detail": st.text(max_size=12),
}


def test_field_table_covers_every_signed_field():
    assert set(CONF_FIELDS) | {"signature"} == {f.name for f in dataclasses.fields(Confirmation)}


@given(st.data())
def test_signing_root_changes_with_any_field(data):
    name = data.draw(st.sampled_from(sorted(CONF_FIELDS)), label="field")
    value = data.draw(CONF_FIELDS[name], label="value")
    changed = dataclasses.replace(CONF, **{name: value})
    assume(changed != CONF)
    assume(not (name == "measured" and value == CONF.measured))  # 0.0 == -0.0 is one change
    assert changed.signing_root() != CONF.signing_root()


def test_signing_root_excludes_the_signature():
    other = dataclasses.replace(CONF, signature=Signature(b"\x09" * 64))
    assert other.signing_root() == CONF.signing_root()


def test_signing_root_is_domain_separated_from_votes(run):
    # A confirmation's root is never a vote's root, even over the same digests.
    roots = {v.signing_root() for v in run.votes}
    assert CONF.signing_root() not in roots


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": ""},
        {"network_id": "n" * (MAX_STRING + 1)},
        {"request_digest": b"\x00" * 31},
        {"commitment_digest": b"\x00" * 33},
        {"accusation_digest": b""},
        {"verifier_key": b"\x00" * 31},
        {"signature": b"\x00" * 63},
        {"signature": b""},
        {"detail": "d" * (4 * MAX_STRING + 1)},
        {"finding": 1},
        {"measured": math.nan},
        {"measured": math.inf},
        {"measured": -math.inf},
    ],
    ids=lambda c: repr(c)[:40],
)
def test_invalid_confirmation(changes):
    with pytest.raises(Malformed):
        dataclasses.replace(CONF, **changes).validate()


def test_confirmation_bounds_are_inclusive():
    dataclasses.replace(CONF, network_id="n" * MAX_STRING, detail="d" * (4 * MAX_STRING)).validate()
    dataclasses.replace(CONF, measured=-1.0).validate()  # a re-measurement, not a bound


def test_signed_confirmation_checks_and_any_change_breaks_it(dispute, net, run):
    key = net.key_of(run.tally.committee[1])
    conf = signed_finding(key, dispute, Finding.REFUTE)
    conf.check()
    for name, value in [("finding", Finding.CONFIRM), ("measured", 0.75), ("detail", "x")]:
        with pytest.raises(BadSignature):
            dataclasses.replace(conf, **{name: value}).check()
    stranger = make_key("stranger")
    with pytest.raises(BadSignature):  # someone else's name on it
        dataclasses.replace(conf, verifier_key=stranger.public_key).check()


def test_sign_confirmation_follows_the_audit(net, accusation):
    key = net.validator_keys[0]
    proven = sign_confirmation(key, accusation, AuditResult(True, EvidenceCheck.LAYER, "p", 0.5))
    refuted = sign_confirmation(key, accusation, AuditResult(False, EvidenceCheck.LAYER, "r"))
    assert proven.finding is Finding.CONFIRM and refuted.finding is Finding.REFUTE
    assert proven.accusation_digest == compute_accusation_digest(accusation)
    assert proven.accusation_digest == accusation.signing_root()
    assert (proven.request_digest, proven.commitment_digest) == (
        accusation.request_digest,
        accusation.commitment_digest,
    )
    assert proven.measured == 0.5 and proven.detail == "p"
    proven.check()
    refuted.check()
    odd = sign_confirmation(
        key, accusation, AuditResult(True, EvidenceCheck.LAYER, "d" * 5000, math.inf)
    )
    odd.check()  # a non-finite measurement is recorded as 0 and the detail is cut to fit
    assert odd.measured == 0.0 and len(odd.detail) == 4 * MAX_STRING


def test_confirmation_protobuf_round_trip(dispute, net, run):
    for finding in Finding:
        conf = signed_finding(net.key_of(run.tally.committee[2]), dispute, finding)
        m = pb.Confirmation.FromString(convert.confirmation_to_pb(conf).SerializeToString())
        back = convert.confirmation_from_pb(m)
        assert back == conf
        back.check()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("finding", 0),
        ("finding", 3),
        ("measured", math.nan),
        ("measured", math.inf),
        ("accusation_digest", b"\x00" * 31),
        ("verifier_key", b""),
        ("signature", b"\x00" * 65),
        ("network_id", ""),
    ],
)
def test_invalid_confirmation_protobuf(dispute, net, run, field, value):
    m = convert.confirmation_to_pb(signed_finding(net.validator_keys[0], dispute, Finding.CONFIRM))
    setattr(m, field, value)
    with pytest.raises(Malformed):
        convert.confirmation_from_pb(pb.Confirmation.FromString(m.SerializeToString()))


# --- honest members audit the accusation with their own model [CONFIRM.2]


def test_honest_members_confirm_real_evidence(net, perturbed):
    (accuser,) = [v for v in perturbed.votes if v.verdict is Verdict.REJECT]
    assert accuser.evidence.check is EvidenceCheck.LAYER
    for pk in net.validators:  # every holder of the model finds the same, members or not
        conf = net.verifiers[pk].confirm(perturbed.request, perturbed.signed, accuser)
        assert conf is not None and conf.finding is Finding.CONFIRM, conf
        assert conf.verifier_key == pk and conf.measured > 0
        conf.check()


@pytest.mark.parametrize(
    "claim",
    [
        {},  # a challenged layer that recomputes exactly
        {"layer": 5},  # no such layer
        {"check": EvidenceCheck.SAMPLER, "position": 24},
        {"check": EvidenceCheck.EMBEDDING},
        {"check": EvidenceCheck.SEQUENCE},
        {"check": EvidenceCheck.COMMITMENT},
        {"check": EvidenceCheck.LENGTH},
    ],
    ids=lambda c: repr(c)[:40],
)
def test_honest_members_refute_made_up_evidence(net, run, claim):
    accuser = run.tally.committee[1]
    acc = made_up_accusation(net, run, accuser, **claim)
    for pk in run.tally.committee:
        conf = net.verifiers[pk].confirm(run.request, run.signed, acc)
        assert conf is not None and conf.finding is Finding.REFUTE, conf.detail
        conf.check()


def test_honest_members_refute_an_always_reject_verifiers_accusation(net, run):
    # simnet.verifiers's always-reject invents a layer error against the honest executor.
    member = run.tally.committee[2]
    liar = make_byzantine_verifier("always-reject", net.verifiers[member])

    def fetch(session):
        return net.executor.on_open(run.signed.digest, session.challenge.required_tiles())

    acc = liar.run(run.request, run.signed, fetch)
    assert acc.verdict is Verdict.REJECT and acc.evidence.measured == 1.0
    d = open_dispute(run.request, run.signed, acc, run.tally.committee)
    for pk in run.tally.committee:
        d = process_confirmation(d, net.verifiers[pk].confirm(run.request, run.signed, acc))
    assert d.count(Finding.REFUTE) == 4
    assert get_dispute_outcome(d) is DisputeOutcome.REFUTED


def test_member_without_the_model_abstains(net, perturbed):
    (acc,) = [v for v in perturbed.votes if v.verdict is Verdict.REJECT]
    other = VerifierCore(
        net.validator_keys[0], net.backend, ModelId(b"\x0f" * 32), 4, 64, NETWORK_ID
    )
    assert other.confirm(perturbed.request, perturbed.signed, acc) is None
    assert audit_accusation(acc, None) is None


def test_member_without_bands_for_the_profile_abstains(net, perturbed):
    # CannotJudge ([CONFIRM.2]): bands for another execution profile only.
    (acc,) = [v for v in perturbed.votes if v.verdict is Verdict.REJECT]
    core = net.verifiers[perturbed.tally.committee[0]]
    elsewhere = Thresholds(profile="other-float16")
    with pytest.raises(CannotJudge, match="no calibrated bands"):
        audit_evidence(acc.evidence, auditor_of(core), elsewhere)
    assert audit_accusation(acc, auditor_of(core), elsewhere) is None


class BrokenModel:
    """A model whose layer re-execution fails inside numpy: a bug, not a missing model."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run_layer_with_update(self, layer, hidden_in):
        return np.add(hidden_in, np.ones((3, 1, 2)))  # operands could not be broadcast together


def auditor_of(core: VerifierCore, model=None) -> AuditModel:
    return AuditModel(model or core.model, core.model_id, core.num_layers, core.hidden_size)


def test_a_value_error_inside_the_audit_is_not_an_abstention(net, perturbed):
    # Only CannotJudge abstains: any other error on the audit path (here numpy's ValueError)
    # propagates, so a bug is never a silent abstention. [CONFIRM.2]
    (acc,) = [v for v in perturbed.votes if v.verdict is Verdict.REJECT]
    honest = net.verifiers[perturbed.tally.committee[0]]
    broken = BrokenModel(honest.model)
    with pytest.raises(ValueError, match="broadcast"):
        audit_accusation(acc, auditor_of(honest, broken))
    core = VerifierCore(
        honest.key, broken, honest.model_id, honest.num_layers, honest.hidden_size, NETWORK_ID
    )
    with pytest.raises(ValueError, match="broadcast"):
        core.confirm(perturbed.request, perturbed.signed, acc)
    assert not issubclass(CannotJudge, ValueError)


def test_invalid_confirm_of_a_vote_that_is_no_accusation(net, run):
    core = net.verifiers[run.tally.committee[0]]
    with pytest.raises(Malformed, match="REJECT"):
        core.confirm(run.request, run.signed, run.votes[0])
    with pytest.raises(Malformed):
        audit_accusation(run.votes[0], None)


def test_invalid_confirm_of_an_accusation_about_something_else(net, run, perturbed, accusation):
    core = net.verifiers[run.tally.committee[0]]
    with pytest.raises(Reject, match="another request or commitment"):
        core.confirm(perturbed.request, perturbed.signed, accusation)
    with pytest.raises(BadSignature):
        core.confirm(run.request, run.signed, dataclasses.replace(accusation, reason="edited"))


# --- counting [CONFIRM.3]


def test_open_dispute_starts_open(dispute, accusation):
    assert dispute.digest == compute_accusation_digest(accusation)
    assert not dispute.proven_without_model and dispute.confirmations == ()
    assert get_dispute_outcome(dispute) is DisputeOutcome.OPEN
    assert get_dispute_outcome(dispute, closed=True) is DisputeOutcome.UNDECIDED


@pytest.mark.parametrize(
    ("confirms", "refutes", "now", "closed"),
    [
        (0, 0, DisputeOutcome.OPEN, DisputeOutcome.UNDECIDED),
        (1, 0, DisputeOutcome.OPEN, DisputeOutcome.UNDECIDED),
        (2, 0, DisputeOutcome.OPEN, DisputeOutcome.UNDECIDED),  # 2f: not enough
        (3, 0, DisputeOutcome.CONFIRMED, DisputeOutcome.CONFIRMED),  # 2f+1
        (4, 0, DisputeOutcome.CONFIRMED, DisputeOutcome.CONFIRMED),
        (0, 2, DisputeOutcome.OPEN, DisputeOutcome.UNDECIDED),
        (0, 3, DisputeOutcome.REFUTED, DisputeOutcome.REFUTED),
        (0, 4, DisputeOutcome.REFUTED, DisputeOutcome.REFUTED),
        (1, 1, DisputeOutcome.OPEN, DisputeOutcome.UNDECIDED),
        (2, 1, DisputeOutcome.OPEN, DisputeOutcome.UNDECIDED),  # one CONFIRM still to come
        (1, 2, DisputeOutcome.OPEN, DisputeOutcome.UNDECIDED),
        (2, 2, DisputeOutcome.UNDECIDED, DisputeOutcome.UNDECIDED),  # neither can reach 3
        (3, 1, DisputeOutcome.CONFIRMED, DisputeOutcome.CONFIRMED),
        (1, 3, DisputeOutcome.REFUTED, DisputeOutcome.REFUTED),
    ],
)
def test_outcome_table_f1(net, run, dispute, confirms, refutes, now, closed):
    findings = [Finding.CONFIRM] * confirms + [Finding.REFUTE] * refutes
    d = dispute
    for pk, finding in zip(run.tally.committee, findings, strict=False):
        d = process_confirmation(d, signed_finding(net.key_of(pk), d, finding))
    assert (d.count(Finding.CONFIRM), d.count(Finding.REFUTE)) == (confirms, refutes)
    assert get_dispute_outcome(d) is now
    assert get_dispute_outcome(d, closed=True) is closed


F2_KEYS = tuple(make_key(f"f2-member-{i}") for i in range(7))


@pytest.mark.parametrize(
    ("confirms", "refutes", "now"),
    [
        (4, 0, DisputeOutcome.OPEN),  # 2f = 4
        (5, 0, DisputeOutcome.CONFIRMED),  # 2f+1 = 5
        (0, 4, DisputeOutcome.OPEN),
        (0, 5, DisputeOutcome.REFUTED),
        (4, 2, DisputeOutcome.OPEN),  # the last member could still confirm
        (3, 3, DisputeOutcome.UNDECIDED),  # one left: neither side reaches 5
        (4, 3, DisputeOutcome.UNDECIDED),
    ],
)
def test_outcome_table_f2(net, run, accusation, confirms, refutes, now):
    # A committee of seven (f = 2); the counting rule does not look at the evidence.
    request = dataclasses.replace(run.request, f=2)
    assert request.quorum == 5
    d = Dispute(request, run.signed, accusation, tuple(k.public_key for k in F2_KEYS))
    findings = [Finding.CONFIRM] * confirms + [Finding.REFUTE] * refutes
    for key, finding in zip(F2_KEYS, findings, strict=False):
        d = process_confirmation(d, signed_finding(key, d, finding))
    assert get_dispute_outcome(d) is now


@pytest.mark.parametrize("second", list(Finding))
def test_duplicate_confirmation_is_ignored(net, run, dispute, second):
    key = net.key_of(run.tally.committee[1])
    d = process_confirmation(dispute, signed_finding(key, dispute, Finding.CONFIRM))
    with pytest.raises(Ignore, match="duplicate"):
        process_confirmation(d, signed_finding(key, d, second, detail="again"))
    assert d.count(Finding.CONFIRM) == 1 and len(d.confirmations) == 1


def test_invalid_confirmation_from_outside_the_committee(net, run, dispute):
    outsider = next(pk for pk in net.validators if pk not in run.tally.committee)
    for key in (net.key_of(outsider), net.executor_key, make_key("stranger")):
        with pytest.raises(Reject, match="outside the committee"):
            process_confirmation(dispute, signed_finding(key, dispute, Finding.CONFIRM))


@pytest.mark.parametrize(
    "changes",
    [
        {"network_id": "elsewhere"},
        {"request_digest": Digest(b"\x07" * 32)},
        {"commitment_digest": Digest(b"\x07" * 32)},
        {"accusation_digest": Digest(b"\x07" * 32)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_invalid_confirmation_about_another_accusation(net, run, dispute, changes):
    key = net.key_of(run.tally.committee[1])
    with pytest.raises(Reject, match="another accusation"):
        process_confirmation(dispute, signed_finding(key, dispute, Finding.CONFIRM, **changes))


def test_invalid_confirmation_with_a_bad_signature(net, run, dispute):
    conf = signed_finding(net.key_of(run.tally.committee[1]), dispute, Finding.CONFIRM)
    with pytest.raises(BadSignature):
        process_confirmation(dispute, dataclasses.replace(conf, finding=Finding.REFUTE))


def test_accuser_confirming_its_own_accusation_counts_once(net, run, dispute, accusation):
    # The accuser is a committee member like the others: one confirmation, not more.
    key = net.key_of(accusation.verifier_key)
    d = process_confirmation(dispute, signed_finding(key, dispute, Finding.CONFIRM))
    assert get_dispute_outcome(d) is DisputeOutcome.OPEN


# --- model-free evidence: no round needed [CONFIRM.4]


def test_model_free_evidence_is_decided_without_a_round(bad_opening):
    run = bad_opening
    for acc in run.votes:
        assert acc.verdict is Verdict.REJECT and acc.evidence.check is EvidenceCheck.OPENING
        assert is_model_free(acc)
        d = open_dispute(run.request, run.signed, acc, run.tally.committee)
        assert d.proven_without_model and d.confirmations == ()
        assert get_dispute_outcome(d) is DisputeOutcome.CONFIRMED
    # The tally is REJECTED as soon as the disputes are opened, before any confirmation.
    assert get_outcome(open_disputes(run.tally)) is Outcome.REJECTED
    assert get_outcome(run.tally) is Outcome.DISPUTED


def test_model_free_claim_that_does_not_hold_needs_a_round(net, run):
    # An OPENING claim against honest openings is model-free but false: not decided at once,
    # and honest members refute it.
    acc = made_up_accusation(net, run, run.tally.committee[0], check=EvidenceCheck.OPENING)
    assert is_model_free(acc)
    d = open_dispute(run.request, run.signed, acc, run.tally.committee)
    assert not d.proven_without_model
    assert get_dispute_outcome(d) is DisputeOutcome.OPEN
    for pk in run.tally.committee[:3]:
        d = process_confirmation(d, net.verifiers[pk].confirm(run.request, run.signed, acc))
    assert get_dispute_outcome(d) is DisputeOutcome.REFUTED


def test_model_evidence_is_not_model_free(perturbed, accusation):
    (acc,) = [v for v in perturbed.votes if v.verdict is Verdict.REJECT]
    assert not is_model_free(acc) and not is_model_free(accusation)


def test_invalid_dispute_over_a_vote_that_is_no_accusation(run):
    with pytest.raises(Malformed, match="REJECT"):
        open_dispute(run.request, run.signed, run.votes[0], run.tally.committee)


# --- the round end to end [CONFIRM.1], [CONFIRM.3]


def test_single_real_reject_is_disputed_then_rejected_by_honest_confirmers(net, perturbed):
    assert [v.verdict for v in perturbed.votes].count(Verdict.ACCEPT) == 3
    assert get_outcome(perturbed.tally) is Outcome.DISPUTED  # three ACCEPTs, no certificate
    tally = open_disputes(perturbed.tally)
    (d,) = tally.disputes
    for pk in tally.committee:
        tally = process_confirmation_vote(
            tally, net.verifiers[pk].confirm(tally.request, tally.signed, d.accusation)
        )
        assert get_outcome(tally) in (Outcome.DISPUTED, Outcome.REJECTED)
    assert get_outcome(tally) is Outcome.REJECTED
    assert tally.disputes[0].count(Finding.CONFIRM) == 4

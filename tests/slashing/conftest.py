"""Real offences on the tiny model, for the slashing tests. [SLASH.1]-[SLASH.5]

Each fixture is one closed tally from :mod:`tests.support` with its confirmation round run by
the committee's own verifier cores: byzantine executors of :mod:`simnet.executors` (fraud,
model-free evidence), a double-voting verifier of :mod:`simnet.verifiers`, and a false accuser.
"""

from __future__ import annotations

import pytest

from bft.assembler import (
    Tally,
    compute_tally,
    open_disputes,
    process_confirmation_vote,
    process_vote,
)
from bft.messages import Verdict
from executor.core import ExecutorCore
from simnet.executors import LayerTamperExecutor, make_byzantine_executor
from simnet.verifiers import DoubleVoteVerifier, make_byzantine_verifier
from slashing.records import SlashRecord, compute_records
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    Network,
    Run,
    check_votes_follow_challenges,
    find_one_catcher_by_layer,
    make_key,
)


def byzantine_executor(net: Network, mode: str) -> ExecutorCore:
    return make_byzantine_executor(
        mode, make_key(f"slash-{mode}"), net.lm.model, net.lm.model_id, NETWORK_ID, CHUNK_SIZE
    )


def byzantine_run(net: Network, mode: str, request_id: bytes) -> Run:
    """Return the run against the byzantine executor ``mode``, confirmation round included."""
    ex = byzantine_executor(net, mode)
    return net.run(net.request(request_id=request_id), ex, check_at_assembler=False)


@pytest.fixture(scope="session")
def fraud(net) -> Run:
    """One perturbed layer, caught by one member and confirmed by all four."""
    ex = byzantine_executor(net, "perturb-layer")
    assert isinstance(ex, LayerTamperExecutor)
    found = find_one_catcher_by_layer(net, ex, "slash-fraud")  # challenges: searched
    run = net.run(found.request, ex, check_at_assembler=False)
    check_votes_follow_challenges(run, found)
    return run


@pytest.fixture(scope="session")
def whole_run_fraud(net) -> Run:
    """Tampered tokens: every member REJECTs with evidence; the first accusation is confirmed."""
    run = byzantine_run(net, "tamper-tokens", b"\xd1" * 16)
    assert [v.verdict for v in run.votes] == [Verdict.REJECT] * 4
    return run


@pytest.fixture(scope="session")
def whole_run_records(net, whole_run_fraud) -> tuple[SlashRecord, ...]:
    """Four records of one offender: each accusation of ``whole_run_fraud`` confirmed by the
    whole committee, as four assemblers that each asked about one of them would hold."""
    run = whole_run_fraud
    tally = run.tally
    for d in tally.disputes:
        for pk in tally.committee:
            if any(c.verifier_key == pk for c in d.confirmations):
                continue
            conf = net.verifiers[pk].confirm(run.request, run.signed, d.accusation)
            assert conf is not None
            tally = process_confirmation_vote(tally, conf)
    slashes, penalties = compute_records(tally)
    assert len(slashes) == 4 and penalties == ()
    return slashes


@pytest.fixture(scope="session")
def bad_opening(net) -> Run:
    """Signed openings that miss the signed root: model-free evidence."""
    return byzantine_run(net, "bad-opening", b"\xd3" * 16)


@pytest.fixture(scope="session")
def double_vote(net, run) -> tuple[Tally, int]:
    """The honest run's tally with committee member ``i`` voting both ways; returns (tally, i)."""
    i = 1
    member = run.tally.committee[i]
    twin = make_byzantine_verifier("double-vote", net.verifiers[member])
    assert isinstance(twin, DoubleVoteVerifier)

    def fetch(session):
        return net.executor.on_open(run.signed.digest, session.challenge.required_tiles())

    honest, other = twin.run_both(run.request, run.signed, fetch)
    assert (honest.verdict, other.verdict) == (Verdict.ACCEPT, Verdict.REJECT)
    tally = others_tally(net, run, member)
    return process_vote(process_vote(tally, honest), other), i


def others_tally(net: Network, run: Run, member: bytes) -> Tally:
    """Return a tally of ``run`` holding every honest vote but ``member``'s."""
    tally = compute_tally(run.request, run.signed, net.validator_set.vset)
    for v in run.votes:
        if v.verifier_key != member:
            tally = process_vote(tally, v)
    return tally


@pytest.fixture(scope="session")
def false_accusation(net, run) -> Tally:
    """Member 0 of the honest run REJECTs with made-up evidence; the committee refutes it."""
    member = run.tally.committee[0]
    liar = make_byzantine_verifier("always-reject", net.verifiers[member])

    def fetch(session):
        return net.executor.on_open(run.signed.digest, session.challenge.required_tiles())

    accusation = liar.run(run.request, run.signed, fetch)
    tally = open_disputes(process_vote(others_tally(net, run, member), accusation))
    (d,) = tally.disputes
    for pk in tally.committee:
        conf = net.verifiers[pk].confirm(run.request, run.signed, d.accusation)
        tally = process_confirmation_vote(tally, conf)
    return tally

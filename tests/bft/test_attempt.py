"""The attempt machine ([ASM.7]) driven in process on the tiny model: what it asks, what it
decides, and what it ignores. The stateful test (``test_bft_stateful.py``) drives one attempt
with answers in any order; these tests cover the request around it: executors one batch at a
time, hedging, disagreement, deadlines, excluded keys, refused and malformed answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.assembler import AssemblerPolicy, Outcome, build_receipt
from bft.attempt import (
    DISAGREEMENT,
    Action,
    Attempt,
    CallFailed,
    Cancel,
    CommitmentReceived,
    Confirm,
    ConfirmationReceived,
    Contact,
    Event,
    Execute,
    Finished,
    InferenceMachine,
    MalformedAnswer,
    Phase,
    Refused,
    SetTimer,
    Settled,
    TimerFired,
    Verify,
    VoteReceived,
)
from bft.confirmation import Confirmation
from bft.errors import Ignore, Unavailable
from bft.messages import SignedCommitment, Vote
from bft.receipt import check_receipt
from bft.types import PublicKey
from executor.core import ExecutorCore
from simnet.executors import make_byzantine_executor
from simnet.verifiers import make_byzantine_verifier
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    PROMPT,
    SAMPLING,
    Network,
    get_network,
    make_key,
    resign_commitment,
    verify,
)
from verihive.inprocess import Calls, Trace, drive

REQUEST_IDS = tuple(bytes([0xA0 + i]) * 16 for i in range(4))


@functools.cache
def get_liar(mode: str = "tamper-tokens") -> ExecutorCore:
    """Return a byzantine executor of the test network's model (a whole-run cheat)."""
    net = get_network()
    key = make_key(f"attempt-{mode}")
    return make_byzantine_executor(mode, key, net.lm.model, net.lm.model_id, NETWORK_ID, CHUNK_SIZE)


def contact(ex: ExecutorCore, address: str | None = None) -> Contact:
    return Contact(ex.key.public_key, address or ex.key.node_id.hex())


def machine(
    net: Network,
    executors: list[Contact],
    policy: AssemblerPolicy | None = None,
    excluded: frozenset[PublicKey] = frozenset(),
    verifiers: list[Contact] | None = None,
) -> InferenceMachine:
    return InferenceMachine(
        policy or net.policy,
        net.lm.model_id,
        net.validator_set.vset,
        PROMPT,
        SAMPLING,
        executors,
        verifiers if verifiers is not None else [c for cs in net.contacts.values() for c in cs],
        REQUEST_IDS,
        excluded,
    )


def calls_for(
    net: Network,
    cores: dict[str, ExecutorCore],
    vote: Callable[[Verify], Vote | None] | None = None,
) -> Calls:
    """Answer as the test network's honest verifiers would, for executors by address."""

    def on_execute(action: Execute) -> SignedCommitment:
        return cores[action.executor.address].on_execute(action.request)

    def on_verify(action: Verify) -> Vote | None:
        if vote is not None:
            return vote(action)
        ex = cores[action.executor.address]
        return verify(net.verifiers[action.verifier.key], ex, action.request, action.signed).vote

    def on_confirm(action: Confirm) -> Confirmation | None:
        core = net.verifiers[action.verifier.key]
        return core.confirm(action.request, action.signed, action.accusation)

    return Calls(on_execute, on_verify, on_confirm)


def finished(trace: Trace) -> Finished:
    (done,) = trace.of_type(Finished)
    return done


# --- one executor


def test_honest_executor_is_certified_as_the_test_network_certifies():
    net = get_network()
    ex = net.executor
    m = machine(net, [contact(ex)])
    trace = drive(m, calls_for(net, {contact(ex).address: ex}))
    (execute,) = trace.of_type(Execute)
    assert execute.request.request_id == REQUEST_IDS[0]
    verifies = trace.of_type(Verify)
    result = finished(trace).result
    (attempt,) = result.attempts
    assert attempt.outcome is Outcome.CERTIFIED and attempt.tally is not None
    assert [v.verifier.key for v in verifies] == list(attempt.tally.committee)  # [ASM.1]
    assert result.output_tokens == attempt.tally.signed.commitment.output_tokens
    assert result.served == attempt
    # One core: the test network's run of the same request decides the same, byte for byte.
    run = net.run(execute.request)
    assert run.tally == attempt.tally
    check_receipt(build_receipt(attempt.tally, net.validator_set))


def test_failed_executor_hands_over_to_the_next_batch_with_a_fresh_request_id():
    net = get_network()
    broken, ex = contact(net.executor, "down"), contact(net.executor, "up")

    def on_execute(action: Execute) -> SignedCommitment:
        if action.executor.address == "down":
            raise Unavailable("connection refused")
        return net.executor.on_execute(action.request)

    calls = calls_for(net, {"up": net.executor})
    trace = drive(machine(net, [broken, ex]), dataclasses.replace(calls, execute=on_execute))
    first, second = finished(trace).result.attempts
    assert first.outcome is Outcome.FAILED and first.reason.startswith("execute failed:")
    assert first.tally is None and second.outcome is Outcome.CERTIFIED
    assert [e.request.request_id for e in trace.of_type(Execute)] == list(REQUEST_IDS[:2])


def test_invalid_commitment_signed_by_another_key_is_rejected():
    # [ASM.2]: the executor asked must be the one that signed.
    net = get_network()
    asked = Contact(make_key("someone-else").public_key, "x")
    trace = drive(machine(net, [asked]), calls_for(net, {"x": net.executor}))
    (attempt,) = finished(trace).result.attempts
    assert attempt.outcome is Outcome.REJECTED and "another key" in attempt.reason
    assert trace.of_type(Verify) == [] and finished(trace).result.output_tokens is None


def test_invalid_commitment_for_another_prompt_is_rejected():
    net = get_network()
    ex = net.executor

    def on_execute(action: Execute) -> SignedCommitment:
        signed = ex.on_execute(action.request)
        c = signed.commitment
        tokens = (c.tokens[0] + 1, *c.tokens[1:])
        return resign_commitment(signed, ex.key, tokens=tokens)

    calls = dataclasses.replace(calls_for(net, {"x": ex}), execute=on_execute)
    trace = drive(machine(net, [contact(ex, "x")]), calls)
    (attempt,) = finished(trace).result.attempts
    assert attempt.outcome is Outcome.REJECTED and "prompt" in attempt.reason


def test_invalid_malformed_commitment_is_rejected():
    net = get_network()
    a = Attempt(0, net.request(), contact(net.executor), net.validator_set.vset, net.contacts)
    (execute, _timer) = a.start()
    assert isinstance(execute, Execute)
    (settled,) = a.on_event(MalformedAnswer(execute.call, "bad tile"))
    assert isinstance(settled, Settled)
    assert settled.result.outcome is Outcome.REJECTED
    assert settled.result.reason == "bad commitment: bad tile"


# --- hedging [ASM.6]


def test_hedged_batch_first_certified_wins_and_the_rest_are_cancelled():
    net = get_network()
    a, b = contact(net.executor, "a"), contact(net.executor, "b")
    m = machine(net, [a, b], dataclasses.replace(net.policy, hedge=2))
    trace = drive(m, calls_for(net, {"a": net.executor, "b": net.executor}))
    result = finished(trace).result
    # Both got the batch's one request; the first certified, the other's answers are dropped.
    assert {e.request.request_id for e in trace.of_type(Execute)} == {REQUEST_IDS[0]}
    (attempt,) = result.attempts
    assert attempt.outcome is Outcome.CERTIFIED and attempt.executor == a
    (cancel,) = trace.of_type(Cancel)
    assert cancel.calls and all(isinstance(e, VoteReceived) for e, _ in trace.ignored)
    assert {e.call for e, _ in trace.ignored} == set(cancel.calls)


def test_hedged_certified_answers_that_disagree_are_not_served():
    # A lie certified by lazy committees (more than f byzantine members: the sampling model
    # failed) disagrees with the honest answer: neither is served. [ASM.6]
    net = get_network()
    liar = get_liar()
    honest, lying = contact(net.executor, "honest"), contact(liar, "liar")
    lazy = {pk: make_byzantine_verifier("always-accept", v) for pk, v in net.verifiers.items()}

    def vote(action: Verify) -> Vote:
        if action.executor == lying:
            return lazy[action.verifier.key].run(action.request, action.signed, fetch_none)
        return verify(
            net.verifiers[action.verifier.key], net.executor, action.request, action.signed
        ).vote

    policy = dataclasses.replace(net.policy, hedge=2, hedge_verify_all=True)
    m = machine(net, [honest, lying], policy)
    trace = drive(m, calls_for(net, {"honest": net.executor, "liar": liar}, vote))
    result = finished(trace).result
    assert result.output_tokens is None and result.served is None
    assert {a.executor for a in result.attempts} == {honest, lying}
    assert all(a.outcome is Outcome.FAILED and a.reason == DISAGREEMENT for a in result.attempts)
    settled = [s.result.outcome for s in trace.of_type(Settled)]
    assert settled == [Outcome.CERTIFIED, Outcome.CERTIFIED]  # each certificate is kept


def fetch_none(_session: object) -> None:
    raise AssertionError("a lazy verifier opens nothing")


# --- excluded and proven-guilty keys [SLASH.3]


def test_tombstoned_executor_and_member_are_not_asked():
    net = get_network()
    request = net.request(request_id=REQUEST_IDS[0])
    committee = net.run(request).tally.committee
    out = committee[0]
    liar = contact(get_liar(), "liar")
    m = machine(net, [liar, contact(net.executor, "x")], excluded=frozenset({liar.key, out}))
    trace = drive(m, calls_for(net, {"x": net.executor}))
    assert [e.executor.address for e in trace.of_type(Execute)] == ["x"]
    asked = {v.verifier.key for v in trace.of_type(Verify)}
    assert asked == set(committee) - {out}
    # 3 ACCEPTs of a committee of 4 certify once the deadline closes the tally. [ASM.4]
    (attempt,) = finished(trace).result.attempts
    assert attempt.outcome is Outcome.CERTIFIED and len(attempt.votes) == 3


def test_executor_proven_guilty_is_refused_at_its_other_addresses():
    net = get_network()
    liar = get_liar()
    first, again = contact(liar, "liar-1"), contact(liar, "liar-2")
    honest = contact(net.executor, "x")
    m = machine(net, [first, again, honest])
    trace = drive(m, calls_for(net, {"liar-1": liar, "liar-2": liar, "x": net.executor}))
    result = finished(trace).result
    caught, served = result.attempts
    assert caught.outcome is Outcome.REJECTED and caught.offenders == {liar.key.public_key}
    assert served.executor == honest and served.outcome is Outcome.CERTIFIED
    assert "liar-2" not in {e.executor.address for e in trace.of_type(Execute)}


def test_double_voter_is_found_and_left_out_of_the_rounds():
    # [QUORUM.5]: one key at two addresses, ACCEPT at one and REJECT at the other.
    net = get_network()
    liar = get_liar()
    request = net.request(request_id=REQUEST_IDS[0])
    committee = net.run(request).tally.committee
    twin = committee[0]
    lazy = make_byzantine_verifier("always-accept", net.verifiers[twin])
    verifiers = [c for cs in net.contacts.values() for c in cs] + [Contact(twin, "twin")]

    def vote(action: Verify) -> Vote:
        if action.verifier.address == "twin":
            return lazy.run(action.request, action.signed, fetch_none)
        return verify(net.verifiers[action.verifier.key], liar, action.request, action.signed).vote

    m = machine(net, [contact(liar, "liar")], verifiers=verifiers)
    trace = drive(m, calls_for(net, {"liar": liar}, vote))
    (attempt,) = finished(trace).result.attempts
    assert attempt.tally is not None and attempt.tally.double_voters == {twin}
    assert attempt.offenders == {twin, liar.key.public_key}
    assert attempt.outcome is Outcome.REJECTED
    assert twin not in {c.verifier.key for c in trace.of_type(Confirm)}


# --- events the machine ignores, and deadlines


def started_attempt(net: Network) -> tuple[Attempt, list[Verify]]:
    """Return an attempt on the honest executor waiting for its votes, and its Verify calls."""
    a = Attempt(0, net.request(), contact(net.executor), net.validator_set.vset, net.contacts)
    (execute, _timer) = a.start()
    assert isinstance(execute, Execute)
    actions = a.on_event(CommitmentReceived(execute.call, net.executor.on_execute(a.request)))
    return a, [x for x in actions if isinstance(x, Verify)]


def test_invalid_events_leave_the_attempt_unchanged():
    net = get_network()
    a, verifies = started_attempt(net)
    first = verifies[0]
    vote = verify(net.verifiers[first.verifier.key], net.executor, a.request, first.signed).vote
    a.on_event(VoteReceived(first.call, vote))
    before = a.state
    for event in (
        VoteReceived(first.call, vote),  # duplicated
        VoteReceived(10_000, vote),  # a call never made
        CallFailed(first.call, "late"),
        TimerFired(10_000),  # an unknown timer
    ):
        with pytest.raises(Ignore):
            a.on_event(event)
        assert a.state is before


def test_vote_that_fails_its_checks_consumes_the_call_and_is_refused():
    net = get_network()
    a, verifies = started_attempt(net)
    first, second = verifies[0], verifies[1]
    # member 1's vote sent as member 0's answer: counted once, then refused as a repeat
    vote = verify(net.verifiers[second.verifier.key], net.executor, a.request, second.signed).vote
    assert a.on_event(VoteReceived(second.call, vote)) == []
    (refused,) = a.on_event(VoteReceived(first.call, vote))
    assert isinstance(refused, Refused) and refused.source == first.verifier
    assert not a.is_waiting_for(first.call)
    assert a.tally is not None and len(a.tally.votes) == 1


def test_deadline_closes_the_votes_and_the_attempt_settles():
    net = get_network()
    a, verifies = started_attempt(net)
    for v in verifies[:3]:
        vote = verify(net.verifiers[v.verifier.key], net.executor, a.request, v.signed).vote
        a.on_event(VoteReceived(v.call, vote))
    assert a.phase is Phase.VOTING and a.get_pending() == (verifies[3].call,)
    timer = a.timer
    assert timer is not None
    actions = a.on_event(TimerFired(timer))
    assert Cancel((verifies[3].call,)) in actions
    assert a.result is not None and a.result.outcome is Outcome.CERTIFIED  # 3 = 2f+1
    with pytest.raises(Ignore):  # the late vote
        vote = verify(
            net.verifiers[verifies[3].verifier.key], net.executor, a.request, verifies[3].signed
        ).vote
        a.on_event(VoteReceived(verifies[3].call, vote))


def test_execute_deadline_fails_the_attempt():
    net = get_network()
    a = Attempt(0, net.request(), contact(net.executor), net.validator_set.vset, net.contacts)
    (execute, timer) = a.start()
    (cancel, settled) = a.on_event(TimerFired(timer.timer))  # type: ignore[union-attr]
    assert cancel == Cancel((execute.call,))  # type: ignore[union-attr]
    assert isinstance(settled, Settled) and settled.result.outcome is Outcome.FAILED
    assert settled.result.reason == "execute failed: DEADLINE_EXCEEDED"


def test_invalid_machine_needs_a_request_id_per_batch():
    net = get_network()
    a, b = contact(net.executor, "a"), contact(net.executor, "b")
    with pytest.raises(ValueError, match="request ids"):
        InferenceMachine(
            net.policy,
            net.lm.model_id,
            net.validator_set.vset,
            PROMPT,
            SAMPLING,
            [a, b],
            [],
            REQUEST_IDS[:1],
        )


# --- the whole request under any interleaving (hypothesis)


@functools.cache
def get_answer(address: str, pk: PublicKey, request_id: bytes) -> Vote:
    """Return member ``pk``'s honest vote on the commitment of the executor at ``address``."""
    net = get_network()
    ex = net.executor if address == "honest" else get_liar()
    request = net.request(request_id=request_id)
    return verify(net.verifiers[pk], ex, request, ex.on_execute(request)).vote


@functools.cache
def get_finding(pk: PublicKey, accusation: Vote) -> Confirmation | None:
    net = get_network()
    request = net.request(request_id=REQUEST_IDS[0])
    signed = get_liar().on_execute(request)
    return net.verifiers[pk].confirm(request, signed, accusation)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False), verify_all=st.booleans(), liar_first=st.booleans())
def test_hedged_request_under_any_interleaving(rnd, verify_all, liar_first):
    # A liar (tamper-tokens, every member catches it) and an honest executor in one batch;
    # answers arrive in any order, some twice, some never, some after a deadline. Whatever
    # happens: the machine finishes once, serves only a certified honest answer, reports no
    # cancelled attempt, and serves the honest one whenever nothing was lost.
    net = get_network()
    liar, honest = contact(get_liar(), "liar"), contact(net.executor, "honest")
    cores = {"liar": get_liar(), "honest": net.executor}
    policy = dataclasses.replace(net.policy, hedge=2, hedge_verify_all=verify_all)
    m = machine(net, [liar, honest] if liar_first else [honest, liar], policy)
    pending: list[Event] = []
    timers: list[int] = []
    finishes: list[Finished] = []
    cancelled: set[int] = set()
    lost = False

    def perform(actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Execute):
                pending.append(
                    CommitmentReceived(a.call, cores[a.executor.address].on_execute(a.request))
                )
            elif isinstance(a, Verify):
                vote = get_answer(a.executor.address, a.verifier.key, a.request.request_id)
                pending.append(VoteReceived(a.call, vote))
            elif isinstance(a, Confirm):
                conf = get_finding(a.verifier.key, a.accusation)
                if conf is not None:
                    pending.append(ConfirmationReceived(a.call, conf))
            elif isinstance(a, SetTimer):
                timers.append(a.timer)
            elif isinstance(a, Cancel):
                cancelled.update(a.calls)
            elif isinstance(a, Finished):
                finishes.append(a)

    def feed(event: Event) -> None:
        with contextlib.suppress(Ignore):  # late, twice, or of a cancelled call
            perform(m.on_event(event))

    perform(m.start())
    while not m.done:
        roll = rnd.random()
        if pending and roll < 0.85:
            event = pending.pop(rnd.randrange(len(pending)))
            if rnd.random() < 0.1:
                pending.append(event)  # it will come twice
            feed(event)
        elif pending and roll < 0.9:
            pending.pop(rnd.randrange(len(pending)))
            lost = True
        else:
            assert timers, "the machine waits with no timer set"
            if any(m.is_awaited(e) for e in pending):
                lost = True  # a deadline cuts an answer short
            feed(TimerFired(timers.pop(rnd.randrange(len(timers)))))
    (done,) = finishes
    result = done.result
    served = result.served
    for a in result.attempts:
        assert a.outcome is not Outcome.CERTIFIED or a.executor == honest
    if served is not None:
        assert served.executor == honest and served.tally is not None
        assert result.output_tokens == served.tally.signed.commitment.output_tokens
        check_receipt(build_receipt(served.tally, net.validator_set))
    elif not lost:
        raise AssertionError(f"nothing lost, yet nothing served: {result.attempts}")
    reported = {a.executor for a in result.attempts}
    if verify_all:
        assert reported == {liar, honest} or lost

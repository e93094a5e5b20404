"""The assembler as a sans-I/O machine: events in, actions out. [ASM.7]

One :class:`InferenceMachine` serves one client request: it runs attempts ([ASM.1]) on the
executors, ``policy.hedge`` at a time on one request ([ASM.6]), and each :class:`Attempt`
executes, checks the commitment ([ASM.2]), asks the committee ([ASM.3]), runs the confirmation
rounds of the accusations ([CONFIRM.1]-[CONFIRM.3]) and settles ([ASM.4]). It holds no
threads, clocks, sockets or randomness: the driver performs each action it returns (a gRPC
call, a direct call into a core, a timer) and feeds what comes back as an event. The gRPC
assembler (``verihive.assembler``), the in-process driver (``verihive.inprocess``, used by the
test network and the benchmarks) and the hypothesis tests all drive this one machine.

Events for a call the machine is no longer waiting for (late, duplicated, cancelled, unknown)
raise :class:`Ignore` and leave the machine unchanged. An answer to a pending call always
consumes the call, even when its content is refused (a bad vote is answered with a
:class:`Refused` action, for the log).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bft.assembler import (
    AssemblerPolicy,
    Outcome,
    Tally,
    check_commitment,
    compute_request,
    compute_tally,
    find_disagreement,
    get_final_outcome,
    get_offenders,
    open_disputes,
    process_confirmation_vote,
    process_vote,
)
from bft.confirmation import Confirmation, DisputeOutcome, get_dispute_outcome
from bft.crypto import compute_node_id
from bft.errors import Ignore, ProtocolError
from bft.messages import InferenceRequest, SamplingParams, SignedCommitment, Vote
from bft.types import Digest, ModelId, NodeId, PublicKey
from bft.validators import ValidatorSet

DISAGREEMENT = "hedged certified outputs disagree; not served"


@dataclass(frozen=True, slots=True)
class Contact:
    """A node the assembler asks: its key and where the driver reaches it.

    One key may answer at several addresses (replicas, or Twins): each address is asked, so a
    key that signs two different verdicts is caught ([QUORUM.5]).
    """

    key: PublicKey
    address: str

    @property
    def node_id(self) -> NodeId:
        """Return the node id of ``key``."""
        return compute_node_id(self.key)


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long each step may take before the machine moves on without it. Seconds."""

    execute_s: float = 900.0
    """From Execute to the commitment."""
    verify_s: float = 180.0
    """From the Verify calls to the last vote."""
    confirm_s: float = 180.0
    """Of one confirmation round, from the Confirm calls to the last finding."""


# --- actions: what the driver does


@dataclass(frozen=True, slots=True)
class Execute:
    """Send ``request`` to ``executor``; answer with CommitmentReceived or CallFailed."""

    call: int
    executor: Contact
    request: InferenceRequest
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Verify:
    """Ask ``verifier`` for its vote on ``signed``; answer with VoteReceived or CallFailed."""

    call: int
    verifier: Contact
    request: InferenceRequest
    signed: SignedCommitment
    executor: Contact
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Confirm:
    """Ask ``verifier`` to audit ``accusation``; answer with ConfirmationReceived or CallFailed
    (an abstention is a CallFailed too)."""

    call: int
    verifier: Contact
    request: InferenceRequest
    signed: SignedCommitment
    accusation: Vote
    timeout_s: float


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Fire TimerFired(``timer``) after ``seconds``; a timer the machine no longer needs is
    ignored when it fires."""

    timer: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Cancel:
    """The answers to ``calls`` are no longer wanted: the driver may stop them."""

    calls: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """The answer to ``call`` from ``source`` was refused (for the log); the call is over."""

    call: int
    source: Contact
    reason: str


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt settled: its outcome, its tally if it got that far, and why.

    ``offenders`` are the keys its tally proves guilty (to be slashed, [SLASH.1]); the driver
    records the slashes and penalties of ``tally``.
    """

    attempt: int
    executor: Contact
    request: InferenceRequest
    outcome: Outcome
    tally: Tally | None
    reason: str
    offenders: frozenset[PublicKey] = frozenset()

    @property
    def votes(self) -> tuple[Vote, ...]:
        """Return the counted votes."""
        return self.tally.votes if self.tally else ()


@dataclass(frozen=True, slots=True)
class Settled:
    """An attempt is over: record what its tally proves."""

    result: AttemptResult


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """The answer: the certified output tokens (``None`` when no attempt was served) and every
    attempt, in the order they settled, as served (disagreeing certificates marked FAILED)."""

    output_tokens: tuple[int, ...] | None
    attempts: tuple[AttemptResult, ...]

    @property
    def served(self) -> AttemptResult | None:
        """Return the attempt whose answer is served, if any."""
        return next((a for a in self.attempts if a.outcome is Outcome.CERTIFIED), None)


@dataclass(frozen=True, slots=True)
class Finished:
    """The machine is done."""

    result: InferenceResult


Action = Execute | Verify | Confirm | SetTimer | Cancel | Refused | Settled | Finished


# --- events: what the driver feeds back


@dataclass(frozen=True, slots=True)
class CommitmentReceived:
    """The executor of ``call`` answered with ``signed``."""

    call: int
    signed: SignedCommitment


@dataclass(frozen=True, slots=True)
class VoteReceived:
    """The verifier of ``call`` answered with ``vote``."""

    call: int
    vote: Vote


@dataclass(frozen=True, slots=True)
class ConfirmationReceived:
    """The verifier of ``call`` answered with ``confirmation``."""

    call: int
    confirmation: Confirmation


@dataclass(frozen=True, slots=True)
class MalformedAnswer:
    """The peer of ``call`` answered with bytes that are no valid message (``reason``)."""

    call: int
    reason: str


@dataclass(frozen=True, slots=True)
class CallFailed:
    """``call`` got no usable answer (transport error, timeout, malformed reply, abstention)."""

    call: int
    reason: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """Timer ``timer`` has expired."""

    timer: int


Event = (
    CommitmentReceived
    | VoteReceived
    | ConfirmationReceived
    | MalformedAnswer
    | CallFailed
    | TimerFired
)


class Machine(Protocol):
    """What a driver needs of a machine: :class:`Attempt` and :class:`InferenceMachine`."""

    @property
    def done(self) -> bool:
        """Return whether the machine has nothing left to do."""
        ...

    def start(self) -> list[Action]:
        """Return the first actions."""
        ...

    def on_event(self, event: Event) -> list[Action]:
        """Return the actions ``event`` calls for; raise :class:`Ignore` to refuse it."""
        ...


class Phase(enum.Enum):
    """Where one attempt stands."""

    NEW = "new"
    EXECUTING = "executing"
    VOTING = "voting"
    CONFIRMING = "confirming"
    SETTLED = "settled"
    CANCELLED = "cancelled"


@dataclass
class Counter:
    """Hands out the ids of calls and timers, unique within one machine."""

    next: int = 0

    def take(self) -> int:
        """Return a fresh id."""
        self.next += 1
        return self.next


@dataclass(frozen=True, slots=True)
class _State:
    """An attempt's state; replaced whole by each event, so a refused event changes nothing."""

    phase: Phase = Phase.NEW
    calls: Mapping[int, Contact] = field(default_factory=dict)
    """Pending calls of the current phase, by id."""
    timer: int = 0
    tally: Tally | None = None
    members: tuple[PublicKey, ...] = ()
    """Committee members that are asked to confirm (those not caught double voting)."""
    round: Digest | None = None
    """The accusation whose confirmation round is open."""
    rounds: frozenset[Digest] = frozenset()
    """Accusations whose round has run."""
    result: AttemptResult | None = None


class Attempt:
    """One request on one executor, from Execute to its outcome. [ASM.1]

    ``verifiers`` maps a validator key to every address it answers at; ``excluded`` keys
    (tombstoned, [SLASH.3]) are not asked. ``checks_commitment=False`` skips [ASM.2]: only for
    tests that show what verifiers do with a commitment an assembler would refuse.
    """

    def __init__(
        self,
        ident: int,
        request: InferenceRequest,
        executor: Contact,
        vset: ValidatorSet,
        verifiers: Mapping[PublicKey, Sequence[Contact]],
        excluded: frozenset[PublicKey] = frozenset(),
        deadlines: Deadlines = Deadlines(),
        ids: Counter | None = None,
        checks_commitment: bool = True,
    ) -> None:
        self.ident = ident
        self.request = request
        self.executor = executor
        self.vset = vset
        self.verifiers = verifiers
        self.excluded = excluded
        self.deadlines = deadlines
        self.ids = ids if ids is not None else Counter()
        self.checks_commitment = checks_commitment
        self.state = _State()

    # -- what the driver reads

    @property
    def phase(self) -> Phase:
        """Return where the attempt stands."""
        return self.state.phase

    @property
    def done(self) -> bool:
        """Return whether the attempt is over (settled or cancelled)."""
        return self.state.phase in (Phase.SETTLED, Phase.CANCELLED)

    @property
    def tally(self) -> Tally | None:
        """Return the tally so far (``None`` before a commitment was accepted)."""
        return self.state.tally

    @property
    def result(self) -> AttemptResult | None:
        """Return the result once settled."""
        return self.state.result

    @property
    def rounds(self) -> frozenset[Digest]:
        """Return the accusations whose confirmation round has run (or is running)."""
        current = {self.state.round} if self.state.round is not None else set()
        return self.state.rounds | current

    @property
    def timer(self) -> int | None:
        """Return the timer of the step the attempt is in (``None`` once it is over)."""
        active = (Phase.EXECUTING, Phase.VOTING, Phase.CONFIRMING)
        return self.state.timer if self.state.phase in active else None

    def is_waiting_for(self, call: int) -> bool:
        """Return whether ``call`` is one this attempt waits for."""
        return call in self.state.calls

    def get_pending(self) -> tuple[int, ...]:
        """Return the calls this attempt waits for."""
        return tuple(self.state.calls)

    # -- events

    def start(self) -> list[Action]:
        """Send the request to the executor."""
        if self.state.phase is not Phase.NEW:
            raise Ignore("attempt already started")
        call, timer = self.ids.take(), self.ids.take()
        self.state = _State(Phase.EXECUTING, {call: self.executor}, timer)
        return [
            Execute(call, self.executor, self.request, self.deadlines.execute_s),
            SetTimer(timer, self.deadlines.execute_s),
        ]

    def on_event(self, event: Event) -> list[Action]:
        """Return the actions ``event`` calls for; raise :class:`Ignore` (nothing changes) for
        an event this attempt does not wait for."""
        state = self.state
        if isinstance(event, TimerFired):
            if state.phase not in (Phase.EXECUTING, Phase.VOTING, Phase.CONFIRMING):
                raise Ignore("timer of a finished attempt")
            if event.timer != state.timer:
                raise Ignore("timer of a finished step")
            try:
                return self._on_deadline()
            except BaseException:
                self.state = state
                raise
        if event.call not in state.calls:
            raise Ignore("answer to a call this attempt does not wait for")
        source = state.calls[event.call]
        remaining = {c: p for c, p in state.calls.items() if c != event.call}
        self.state = replace(state, calls=remaining)
        try:
            if state.phase is Phase.EXECUTING:
                return self._on_execute_answer(event)
            if state.phase is Phase.VOTING:
                return self._on_vote_answer(event, source)
            return self._on_confirm_answer(event, source)
        except BaseException:
            self.state = state  # a handler that fails changes nothing
            raise

    def cancel(self) -> list[Action]:
        """Stop: no result; the pending calls are cancelled."""
        if self.state.phase in (Phase.SETTLED, Phase.CANCELLED):
            raise Ignore("attempt already over")
        pending = self.get_pending()
        self.state = replace(self.state, phase=Phase.CANCELLED, calls={})
        return [Cancel(pending)] if pending else []

    # -- steps

    def _on_execute_answer(self, event: Event) -> list[Action]:
        if isinstance(event, CallFailed):
            return self._settle(Outcome.FAILED, f"execute failed: {event.reason}")
        if isinstance(event, MalformedAnswer):  # the executor signs what it sends [ASM.2]
            return self._settle(Outcome.REJECTED, f"bad commitment: {event.reason}")
        if not isinstance(event, CommitmentReceived):
            return self._settle(Outcome.FAILED, "execute answered with something else")
        signed = event.signed
        try:
            if self.checks_commitment:
                check_commitment(self.request, signed, self.executor.node_id)  # [ASM.2]
            tally = compute_tally(self.request, signed, self.vset)
        except ProtocolError as exc:
            return self._settle(Outcome.REJECTED, f"bad commitment: {exc}")
        members = tuple(k for k in tally.committee if k not in self.excluded)
        calls = self._address(members)
        actions = [
            Verify(c, p, self.request, signed, self.executor, self.deadlines.verify_s)
            for c, p in calls.items()
        ]
        self.state = replace(self.state, phase=Phase.VOTING, tally=tally)
        if not calls:
            return self._close_voting()
        return actions + self._wait(calls, self.deadlines.verify_s)

    def _on_vote_answer(self, event: Event, source: Contact) -> list[Action]:
        tally = self.state.tally
        assert tally is not None  # VOTING has a tally
        actions: list[Action] = []
        if isinstance(event, VoteReceived):
            try:
                self.state = replace(self.state, tally=process_vote(tally, event.vote))
            except ProtocolError as exc:  # [ASM.3]: an invalid or repeated vote is dropped
                actions.append(Refused(event.call, source, f"vote dropped: {exc}"))
        elif isinstance(event, ConfirmationReceived | CommitmentReceived):
            actions.append(Refused(event.call, source, "answered Verify with something else"))
        elif isinstance(event, MalformedAnswer):
            actions.append(Refused(event.call, source, f"malformed vote: {event.reason}"))
        if not self.state.calls:
            actions += self._close_voting()
        return actions

    def _on_confirm_answer(self, event: Event, source: Contact) -> list[Action]:
        tally = self.state.tally
        assert tally is not None  # CONFIRMING has a tally
        actions: list[Action] = []
        if isinstance(event, ConfirmationReceived):
            try:
                updated = process_confirmation_vote(tally, event.confirmation)
                self.state = replace(self.state, tally=updated)
            except ProtocolError as exc:  # [CONFIRM.2]
                actions.append(Refused(event.call, source, f"confirmation dropped: {exc}"))
        elif isinstance(event, VoteReceived | CommitmentReceived):
            actions.append(Refused(event.call, source, "answered Confirm with something else"))
        elif isinstance(event, MalformedAnswer):
            actions.append(Refused(event.call, source, f"malformed confirmation: {event.reason}"))
        if not self.state.calls:
            actions += self._next_round()
        return actions

    def _on_deadline(self) -> list[Action]:
        """The current step's deadline: what has not come will not count."""
        state = self.state
        pending = tuple(state.calls)
        self.state = replace(state, calls={})
        actions: list[Action] = [Cancel(pending)] if pending else []
        if state.phase is Phase.EXECUTING:
            return actions + self._settle(Outcome.FAILED, "execute failed: DEADLINE_EXCEEDED")
        if state.phase is Phase.VOTING:
            return actions + self._close_voting()
        return actions + self._next_round()

    def _close_voting(self) -> list[Action]:
        """Every vote is in (or its deadline passed): open the disputes. [CONFIRM.1]"""
        tally = self.state.tally
        assert tally is not None
        voting = tuple(k for k in tally.committee if k not in self.excluded)
        members = tuple(k for k in voting if k not in tally.double_voters)
        self.state = replace(
            self.state, phase=Phase.CONFIRMING, tally=open_disputes(tally), members=members
        )
        return self._next_round()

    def _next_round(self) -> list[Action]:
        """Open the next undecided accusation's round, or settle. [CONFIRM.1]-[CONFIRM.3]

        One accusation at a time, in the order the REJECTs came: once one is confirmed the
        executor is slashed and the others need no round.
        """
        state = self.state
        tally = state.tally
        assert tally is not None
        rounds = set(state.rounds) | ({state.round} if state.round is not None else set())
        self.state = replace(state, round=None, rounds=frozenset(rounds))
        outcomes = [get_dispute_outcome(d) for d in tally.disputes]
        if DisputeOutcome.CONFIRMED not in outcomes:
            for dispute, outcome in zip(tally.disputes, outcomes, strict=True):
                if outcome is not DisputeOutcome.OPEN or dispute.digest in rounds:
                    continue
                calls = self._address(state.members)
                if not calls:  # nobody to ask: the round decides nothing
                    rounds.add(dispute.digest)
                    continue
                self.state = replace(self.state, round=dispute.digest)
                seconds = self.deadlines.confirm_s
                actions: list[Action] = [
                    Confirm(c, p, self.request, tally.signed, dispute.accusation, seconds)
                    for c, p in calls.items()
                ]
                return actions + self._wait(calls, seconds)
            self.state = replace(self.state, rounds=frozenset(rounds))
        reasons = [v.reason for v in tally.votes if v.reason]
        return self._settle(get_final_outcome(tally), "; ".join(dict.fromkeys(reasons)))

    def _address(self, members: tuple[PublicKey, ...]) -> dict[int, Contact]:
        """Return a fresh call to every address of every key of ``members``."""
        return {self.ids.take(): peer for key in members for peer in self.verifiers.get(key, ())}

    def _wait(self, calls: dict[int, Contact], seconds: float) -> list[Action]:
        """Wait for ``calls`` under a fresh timer."""
        timer = self.ids.take()
        self.state = replace(self.state, calls=calls, timer=timer)
        return [SetTimer(timer, seconds)]

    def _settle(self, outcome: Outcome, reason: str) -> list[Action]:
        tally = self.state.tally
        offenders = get_offenders(tally) if tally is not None else frozenset()
        result = AttemptResult(
            self.ident, self.executor, self.request, outcome, tally, reason, offenders
        )
        self.state = replace(self.state, phase=Phase.SETTLED, calls={}, result=result)
        return [Settled(result)]


class InferenceMachine:
    """One client request: attempts on the executors until one is certified. [ASM.1], [ASM.6]

    Executors are taken ``policy.hedge`` at a time, in order, skipping ``excluded`` keys and
    keys an earlier attempt proved guilty; every executor of a batch runs the batch's request
    (one ``request_id`` from ``request_ids``, one per batch, drawn by the driver's CSPRNG,
    [ASM.5]). The first certified attempt wins and the others of its batch are cancelled;
    with ``hedge_verify_all`` every attempt of the batch settles and certified answers that
    disagree are not served ([ASM.6]).
    """

    def __init__(
        self,
        policy: AssemblerPolicy,
        model_id: ModelId,
        vset: ValidatorSet,
        prompt_tokens: tuple[int, ...],
        sampling: SamplingParams,
        executors: Sequence[Contact],
        verifiers: Sequence[Contact],
        request_ids: Sequence[bytes],
        excluded: frozenset[PublicKey] = frozenset(),
        deadlines: Deadlines = Deadlines(),
    ) -> None:
        self.policy = policy
        self.model_id = model_id
        self.vset = vset
        self.prompt_tokens = prompt_tokens
        self.sampling = sampling
        self.executors = tuple(executors)
        self.verifiers: dict[PublicKey, tuple[Contact, ...]] = {}
        for v in verifiers:
            self.verifiers[v.key] = (*self.verifiers.get(v.key, ()), v)
        self.excluded = excluded
        self.deadlines = deadlines
        self.ids = Counter()
        live = [e for e in self.executors if e.key not in excluded]
        step = max(1, policy.hedge)
        self.batches = tuple(tuple(live[i : i + step]) for i in range(0, len(live), step))
        if len(request_ids) < len(self.batches):
            raise ValueError(f"{len(self.batches)} batches need as many request ids")
        self.requests = tuple(
            compute_request(policy, rid, model_id, prompt_tokens, sampling, vset)
            for rid in request_ids[: len(self.batches)]
        )
        self.batch = -1
        self.running: list[Attempt] = []
        self.settled: list[AttemptResult] = []
        """Settled attempts of the running batch, in the order they settled."""
        self.attempts: list[AttemptResult] = []
        """Attempts of the finished batches, as served."""
        self.started = 0
        """Attempts started so far (their ids are 0, 1, ...)."""
        self.result: InferenceResult | None = None

    @property
    def done(self) -> bool:
        """Return whether the machine has finished."""
        return self.result is not None

    def start(self) -> list[Action]:
        """Start the first batch."""
        if self.batch != -1:
            raise Ignore("already started")
        return self._next_batch()

    def on_event(self, event: Event) -> list[Action]:
        """Return the actions ``event`` calls for; raise :class:`Ignore` (nothing changes) for
        an event no running attempt waits for."""
        if self.result is not None:
            raise Ignore("the request is finished")
        attempt = self._awaiting(event)
        if attempt is None:
            raise Ignore("no running attempt waits for this")
        actions = attempt.on_event(event)
        if attempt.result is not None:
            actions += self._on_settled(attempt.result)
        return actions

    def is_awaited(self, event: Event) -> bool:
        """Return whether a running attempt waits for ``event``."""
        return self.result is None and self._awaiting(event) is not None

    def _awaiting(self, event: Event) -> Attempt | None:
        for attempt in self.running:
            if isinstance(event, TimerFired):
                if attempt.timer == event.timer:
                    return attempt
            elif attempt.is_waiting_for(event.call):
                return attempt
        return None

    def _on_settled(self, result: AttemptResult) -> list[Action]:
        self.excluded = self.excluded | result.offenders  # refused for good [SLASH.3]
        self.settled.append(result)
        actions: list[Action] = []
        if result.outcome is Outcome.CERTIFIED and not self.policy.hedge_verify_all:
            for other in self.running:
                if other.result is None and other.phase is not Phase.CANCELLED:
                    actions += other.cancel()  # its answer is dropped
        if all(a.result is not None or a.phase is Phase.CANCELLED for a in self.running):
            actions += self._end_batch()
        return actions

    def _end_batch(self) -> list[Action]:
        results = self.settled
        certified = [r for r in results if r.outcome is Outcome.CERTIFIED and r.tally]
        tallies = tuple(r.tally for r in certified if r.tally is not None)
        if tallies and find_disagreement(tallies):
            results = [
                replace(r, outcome=Outcome.FAILED, reason=DISAGREEMENT)
                if r.outcome is Outcome.CERTIFIED
                else r
                for r in results
            ]
            tallies = ()
        self.attempts += results
        self.settled, self.running = [], []
        if tallies:
            return self._finish(tallies[0].signed.commitment.output_tokens)
        return self._next_batch()

    def _next_batch(self) -> list[Action]:
        while self.batch + 1 < len(self.batches):
            self.batch += 1
            batch = [e for e in self.batches[self.batch] if e.key not in self.excluded]
            if not batch:
                continue  # refused for good [SLASH.3]
            request = self.requests[self.batch]
            actions: list[Action] = []
            for executor in batch:
                attempt = Attempt(
                    self.started,
                    request,
                    executor,
                    self.vset,
                    self.verifiers,
                    self.excluded,
                    self.deadlines,
                    self.ids,
                )
                self.started += 1
                self.running.append(attempt)
                actions += attempt.start()
            return actions
        return self._finish(None)

    def _finish(self, output: tuple[int, ...] | None) -> list[Action]:
        self.result = InferenceResult(output, tuple(self.attempts))
        return [Finished(self.result)]

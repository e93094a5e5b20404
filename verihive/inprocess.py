"""Drive the attempt machine in one process: each action is a direct call into a core.

The test network, the benchmarks and the detection harness run requests through this driver;
the gRPC assembler drives the same machine over sockets (``verihive.assembler``). Calls are
answered one at a time, in the order the machine asked, so a run is deterministic. A call
answered with ``None`` is lost: once nothing else is left to do, the machine's timers fire, in
the order they were set, and the machine moves on without it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bft.attempt import (
    Action,
    AttemptResult,
    CallFailed,
    CommitmentReceived,
    Confirm,
    ConfirmationReceived,
    Event,
    Execute,
    Machine,
    Refused,
    SetTimer,
    Settled,
    TimerFired,
    Verify,
    VoteReceived,
)
from bft.confirmation import Confirmation
from bft.errors import Ignore, ProtocolError
from bft.messages import SignedCommitment, Vote

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Calls:
    """How this process answers the machine's calls; ``None`` is no answer (lost).

    A :class:`ProtocolError` raised by a call is the call's failure (as a gRPC error would be).
    """

    execute: Callable[[Execute], SignedCommitment | None]
    verify: Callable[[Verify], Vote | None]
    confirm: Callable[[Confirm], Confirmation | None]
    settled: Callable[[AttemptResult], None] = lambda _result: None
    """Told of every settled attempt, in order (e.g. to record its slashes)."""


@dataclass
class Trace:
    """What one drive did: every action the machine returned and every refused event."""

    actions: list[Action] = field(default_factory=list)
    ignored: list[tuple[Event, str]] = field(default_factory=list)

    def of_type(self, kind: type[T]) -> list[T]:
        """Return the actions of ``kind``, in order."""
        return [a for a in self.actions if isinstance(a, kind)]


def answer(calls: Calls, action: Action) -> Event | None:
    """Return the event that answers ``action`` (``None`` for actions that need none)."""
    if isinstance(action, Execute | Verify | Confirm):
        try:
            return _call(calls, action)
        except ProtocolError as exc:
            return CallFailed(action.call, f"{type(exc).__name__}: {exc}")
    if isinstance(action, Settled):
        calls.settled(action.result)
    elif isinstance(action, Refused):
        log.info("call %d from %s refused: %s", action.call, action.source.address, action.reason)
    return None


def _call(calls: Calls, action: Execute | Verify | Confirm) -> Event | None:
    if isinstance(action, Execute):
        signed = calls.execute(action)
        return None if signed is None else CommitmentReceived(action.call, signed)
    if isinstance(action, Verify):
        vote = calls.verify(action)
        return None if vote is None else VoteReceived(action.call, vote)
    conf = calls.confirm(action)
    return None if conf is None else ConfirmationReceived(action.call, conf)


def drive(machine: Machine, calls: Calls, deadlines: bool = True) -> Trace:
    """Run ``machine`` until it has nothing left to do; return what it did.

    ``deadlines=False`` leaves the timers unfired, so a machine waiting for a lost answer
    stays where it is (tests use it to look at an attempt mid-way).
    """
    trace = Trace()
    queue: deque[Action] = deque(machine.start())
    timers: deque[int] = deque()
    while True:
        while queue:
            action = queue.popleft()
            trace.actions.append(action)
            if isinstance(action, SetTimer):
                timers.append(action.timer)
            event = answer(calls, action)
            if event is not None:
                queue.extend(feed(machine, event, trace))
        if machine.done or not deadlines or not timers:
            return trace
        queue.extend(feed(machine, TimerFired(timers.popleft()), trace))


def feed(machine: Machine, event: Event, trace: Trace) -> list[Action]:
    """Return the actions ``machine`` takes on ``event``; an ignored event is traced."""
    try:
        return machine.on_event(event)
    except Ignore as exc:
        trace.ignored.append((event, str(exc)))
        return []

"""The assembler (gateway) node: admits requests, drives attempts, answers with receipts."""

from __future__ import annotations

import heapq
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import TypeVar

import grpc
from transformers import PreTrainedTokenizerBase

from bft.assembler import AssemblerPolicy, Outcome, Tally, build_receipt
from bft.attempt import (
    Action,
    CallFailed,
    Cancel,
    CommitmentReceived,
    Confirm,
    ConfirmationReceived,
    Contact,
    Deadlines,
    Event,
    Execute,
    InferenceMachine,
    InferenceResult,
    MalformedAnswer,
    Refused,
    SetTimer,
    Settled,
    TimerFired,
    Verify,
    VoteReceived,
)
from bft.attempt import AttemptResult as MachineAttempt
from bft.crypto import SigningKey, compute_node_id
from bft.errors import BadSignature, Ignore, Malformed, ProtocolError, Reject, Unavailable
from bft.join import (
    DEFAULT_STAMP_BITS,
    LEAVE_WINDOW_MS,
    JoinRequest,
    LeaveRequest,
    check_join,
    check_leave,
)
from bft.limits import MAX_TOKENS
from bft.messages import InferenceRequest, SamplingParams, Vote
from bft.types import ModelId, NodeId, PublicKey, short_hex
from bft.validators import SignedValidatorSet, check_validator_set
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from slashing.records import Penalty, SlashRecord
from trust.tombstones import Tombstones, process_tally
from verihive import failpoints, metrics
from verihive.rpc import (
    INFO_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    MAX_OPEN_MESSAGE_BYTES,
    call_bounded,
    check_address,
    make_channel,
)
from verihive.status import Activity
from verihive.work import make_confirm, make_execute, make_verify

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 64_000
MAX_JOINED = 256
"""Joined executors an assembler routes to at most; more joins are refused until some expire."""
VERIFY = "/verihive.v1.Verifier/Verify"
CONFIRM = "/verihive.v1.Verifier/Confirm"
DEFAULT_JOIN_TTL_S = 600.0
"""How long a join holds without being renewed, in seconds ([JOIN.2]; executors that announce
themselves renew theirs every minute by default)."""


@dataclass(frozen=True)
class Peer:
    """A node the assembler talks to, as learnt from its ``GetInfo`` over gRPC."""

    address: str
    public_key: PublicKey
    node_id: NodeId
    role: str


@dataclass(frozen=True)
class Joined:
    """A joined executor: its join and when it was last heard from (monotonic seconds)."""

    join: JoinRequest
    seen: float


@dataclass(frozen=True)
class AttemptResult:
    """One executor tried: its tally (if it got that far), the outcome and what it proved."""

    executor: Peer
    outcome: Outcome
    tally: Tally | None
    reason: str
    seconds: float
    slashes: tuple[SlashRecord, ...] = ()
    penalties: tuple[Penalty, ...] = ()
    request: InferenceRequest | None = None

    @property
    def votes(self) -> tuple[Vote, ...]:
        """Return the valid votes collected."""
        return self.tally.votes if self.tally else ()


def fetch_peer(address: str, role: str, model_id: ModelId, network_id: str) -> Peer:
    """Return the peer at ``address`` after checking its role, model and network."""
    channel = make_channel(address)
    try:
        stub = pb_grpc.ExecutorStub if role == "executor" else pb_grpc.VerifierStub
        info = stub(channel).GetInfo(pb.NodeInfoRequest(), timeout=INFO_TIMEOUT_S)
    finally:
        channel.close()
    if info.role != role or info.model_id != model_id or info.network_id != network_id:
        raise Malformed(f"{address} is not a {role} of this model and network")
    key = PublicKey(info.public_key)
    return Peer(address, key, compute_node_id(key), role)


class AssemblerNode:
    """Drives :class:`bft.attempt.InferenceMachine` over gRPC; it holds no protocol rules."""

    def __init__(
        self,
        key: SigningKey,
        policy: AssemblerPolicy,
        model_id: ModelId,
        tokenizer: PreTrainedTokenizerBase,
        executors: Sequence[Peer],
        verifiers: Sequence[Peer],
        validator_set: SignedValidatorSet,
        tombstones: Tombstones | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        check_validator_set(validator_set)  # the genesis set this node was started with
        self.key = key
        self.policy = policy
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.executors = list(executors)
        """Executors this node routes to, in the order they are tried; joins append. [JOIN.2]"""
        self.join_stamp_bits = DEFAULT_STAMP_BITS
        self.join_ttl_s = DEFAULT_JOIN_TTL_S
        """A joined executor not heard from (joined again) for this long is not routed to."""
        self.joined: dict[PublicKey, Joined] = {}
        """What each joined executor said and when it was last heard from. [JOIN.2]"""
        self._left_at_ms: dict[PublicKey, int] = {}
        self._peers_lock = threading.Lock()
        self.activity = Activity("")
        """What ``Status`` reports ([NODE.9])."""
        # One key may answer at several addresses (replicas, or Twins): every one is asked, so
        # a key that signs two different verdicts is caught. [QUORUM.5]
        self.verifiers: dict[PublicKey, list[Peer]] = {}
        for v in verifiers:
            self.verifiers.setdefault(v.public_key, []).append(v)
        self.validator_set = validator_set
        self.tombstones = tombstones if tombstones is not None else Tombstones()
        self.deadlines = deadlines or Deadlines()
        # Votes may carry evidence (opened tiles): verifier channels take the large limit.
        self._channels = {p.address: make_channel(p.address) for p in executors}
        self._channels.update(
            {p.address: make_channel(p.address, MAX_OPEN_MESSAGE_BYTES) for p in verifiers}
        )
        # Calls block on the network, not the CPU: room for several requests' calls at once.
        self._pool = futures.ThreadPoolExecutor(max_workers=4 * (len(self._channels) + 2))

    def close(self) -> None:
        """Release channels and threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for ch in self._channels.values():
            ch.close()

    def encode_prompt(self, prompt: str) -> tuple[int, ...]:
        """Return the chat-templated token ids of the user message ``prompt``."""
        if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise Malformed(f"prompt must be 1..{MAX_PROMPT_CHARS} characters")
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        if len(ids) >= MAX_TOKENS:
            raise Malformed("prompt too long")
        return tuple(int(i) for i in list(ids))

    def infer(self, prompt: str, sampling: SamplingParams) -> tuple[str, list[AttemptResult]]:
        """Run the attempt machine on ``prompt`` over gRPC; return the text and all attempts.

        The rules (hedging, committees, confirmation rounds, disagreement) are the machine's,
        :class:`bft.attempt.InferenceMachine`; this method only performs its calls. [ASM.7]
        """
        sampling.validate()
        tokens = self.encode_prompt(prompt)
        executors = self.routed_executors()
        keys = {p.public_key for p in executors} | set(self.verifiers)
        machine = InferenceMachine(
            self.policy,
            self.model_id,
            self.validator_set.vset,
            tokens,
            sampling,
            [Contact(p.public_key, p.address) for p in executors],
            [Contact(p.public_key, p.address) for ps in self.verifiers.values() for p in ps],
            [os.urandom(16) for _ in executors],  # one request_id per batch [ASM.5]
            frozenset(k for k in keys if self.tombstones.is_tombstoned(k)),
            self.deadlines,
        )
        run = _GrpcRun(self, machine, executors)
        with self.activity.serving():
            result = run.drive()
        attempts = [run.attempt_of(r) for r in result.attempts]
        for a in attempts:
            rid = a.request.request_id if a.request is not None else b""
            extra = {"request_id": rid, "peer": a.executor.address}
            log.info("attempt %s %s", a.outcome.value, a.reason, extra=extra)
            self.activity.record(a.outcome.value, rid, f"{a.executor.address} {a.reason}".strip())
        if result.output_tokens is None:
            return "", attempts
        out = list(result.output_tokens)
        return str(self.tokenizer.decode(out, skip_special_tokens=True)), attempts

    def process_join(self, join: JoinRequest) -> str:
        """Route to the executor of ``join`` once it passes [JOIN.1] and answers at its address
        as that key, model and network ([JOIN.2]); return what was done.

        Raises :class:`ProtocolError` with the reason for a refused join. A key that joins again
        (a restart at a new address) replaces its address; a tombstoned key is refused.
        """
        check_join(join, self.policy.network_id, self.model_id, self.join_stamp_bits)
        check_address(join.address)  # [RPC.4]: nothing but host:port is ever probed
        if self.tombstones.is_tombstoned(join.public_key):
            raise Reject("this key is tombstoned [SLASH.3]")
        if join.public_key in self.verifiers:
            raise Reject("a validator key cannot join as an executor")
        try:  # the reachability probe: the node at the address must be the one that signed
            peer = fetch_peer(join.address, "executor", self.model_id, self.policy.network_id)
        except grpc.RpcError as exc:
            raise Unavailable(f"{join.address} cannot be reached: {exc.code().name}") from exc
        if peer.public_key != join.public_key:
            raise Reject(f"{join.address} answers with another key")
        with self._peers_lock:
            self._prune(time.monotonic())
            known = [p for p in self.executors if p.public_key == join.public_key]
            if not known and len(self.joined) >= MAX_JOINED:
                raise Unavailable(f"this assembler routes to {MAX_JOINED} joined executors already")
            self.executors = [p for p in self.executors if p.public_key != join.public_key]
            self.executors.append(peer)
            self.joined[peer.public_key] = Joined(join, time.monotonic())
            for old in known:
                if old.address != peer.address:
                    self._forget_channel(old.address)
            if peer.address not in self._channels:
                self._channels[peer.address] = make_channel(peer.address)
        log.info("executor joined", extra={"peer": peer.address})
        return "re-joined" if known else "joined"

    def process_leave(self, leave: LeaveRequest) -> str:
        """Stop routing to the executor of ``leave`` once it passes [JOIN.3]; return what was
        done. Raises :class:`ProtocolError` with the reason for a refused leave."""
        with self._peers_lock:
            last = self._left_at_ms.get(leave.public_key, 0)
            check_leave(leave, self.policy.network_id, time.time_ns() // 1_000_000, last)
            if not any(p.public_key == leave.public_key for p in self.executors):
                raise Reject("this key is not routed to")
            self._left_at_ms[leave.public_key] = leave.issued_at_ms
            gone = [p for p in self.executors if p.public_key == leave.public_key]
            self.executors = [p for p in self.executors if p.public_key != leave.public_key]
            self.joined.pop(leave.public_key, None)
            for old in gone:
                self._forget_channel(old.address)
        log.info("executor left", extra={"peer": short_hex(compute_node_id(leave.public_key))})
        return "left"

    def _prune(self, now: float) -> None:
        """Forget joined executors silent for ``join_ttl_s`` and leaves too old to be replayed
        (call with ``_peers_lock`` held): both stay bounded by what is live. [JOIN.2]"""
        expired = {k for k, j in self.joined.items() if now - j.seen >= self.join_ttl_s}
        gone = [p for p in self.executors if p.public_key in expired]
        self.executors = [p for p in self.executors if p.public_key not in expired]
        for p in gone:
            self._forget_channel(p.address)
        for k in expired:
            del self.joined[k]
        oldest = time.time_ns() // 1_000_000 - LEAVE_WINDOW_MS
        self._left_at_ms = {k: t for k, t in self._left_at_ms.items() if t >= oldest}

    def _forget_channel(self, address: str) -> None:
        """Drop the channel to ``address`` unless another peer is there (lock held). Runs under
        way keep their own reference; the channel closes once the last one is done."""
        in_use = {p.address for p in self.executors} | {
            v.address for vs in self.verifiers.values() for v in vs
        }
        if address not in in_use:
            self._channels.pop(address, None)

    def routed_executors(self) -> list[Peer]:
        """Return the executors a new request may go to, in order: every configured one, and
        every joined one heard from within :attr:`join_ttl_s`. [JOIN.2]"""
        now = time.monotonic()
        with self._peers_lock:
            return [
                p
                for p in self.executors
                if p.public_key not in self.joined
                or now - self.joined[p.public_key].seen < self.join_ttl_s
            ]

    def peer_status(self) -> list[pb.PeerStatus]:
        """Return the executors and verifiers this node knows, for ``Status``. [NODE.9]"""
        now = time.monotonic()
        routed = {p.public_key for p in self.routed_executors()}
        peers = []
        with self._peers_lock:
            for p in self.executors:
                joined = self.joined.get(p.public_key)
                state = "routed" if p.public_key in routed else "expired"
                if self.tombstones.is_tombstoned(p.public_key):
                    state = "tombstoned"
                peers.append(
                    pb.PeerStatus(
                        role="executor",
                        address=p.address,
                        public_key=p.public_key,
                        source="joined" if joined else "config",
                        tokens_per_second=joined.join.tokens_per_second if joined else 0.0,
                        seen_s_ago=now - joined.seen if joined else 0.0,
                        state=state,
                    )
                )
        for ps in self.verifiers.values():
            for v in ps:
                state = "tombstoned" if self.tombstones.is_tombstoned(v.public_key) else "validator"
                peers.append(
                    pb.PeerStatus(
                        role="verifier",
                        address=v.address,
                        public_key=v.public_key,
                        source="genesis",
                        state=state,
                    )
                )
        return peers

    def receipt_of(self, attempt: AttemptResult) -> pb.Receipt | None:
        """Return the receipt of a certified attempt, else ``None``."""
        if attempt.outcome is not Outcome.CERTIFIED or attempt.tally is None:
            return None
        return convert.receipt_to_pb(build_receipt(attempt.tally, self.validator_set))


class _GrpcRun:
    """One :class:`InferenceMachine` driven over gRPC: calls on a thread pool, their answers
    and the timers fed back to the machine from one loop (the calling thread)."""

    def __init__(
        self, node: AssemblerNode, machine: InferenceMachine, executors: Sequence[Peer]
    ) -> None:
        self.node = node
        self.machine = machine
        self.events: queue.Queue[Event] = queue.Queue()
        self.timers: list[tuple[float, int]] = []
        self.calls: dict[int, futures.Future[None]] = {}
        self.started: dict[tuple[str, bytes], float] = {}
        self.records: dict[int, tuple[float, tuple[SlashRecord, ...], tuple[Penalty, ...]]] = {}
        self.peers = {p.address: p for p in executors}  # the machine's, not later joins
        with node._peers_lock:  # the channels of this run, whatever joins and leaves do later
            self.channels = dict(node._channels)

    def drive(self) -> InferenceResult:
        """Run the machine to its end; return its result."""
        self.perform(self.machine.start())
        while self.machine.result is None:
            timeout = max(0.0, self.timers[0][0] - time.monotonic()) if self.timers else None
            try:
                event: Event = self.events.get(timeout=timeout)
            except queue.Empty:
                event = TimerFired(heapq.heappop(self.timers)[1])
            try:
                self.perform(self.machine.on_event(event))
            except Ignore:
                continue  # late, or of a cancelled call
        return self.machine.result

    def perform(self, actions: list[Action]) -> None:
        """Start each of ``actions``."""
        for action in actions:
            if isinstance(action, Execute | Verify | Confirm):
                if isinstance(action, Execute):
                    key = (action.executor.address, action.request.request_id)
                    self.started[key] = time.monotonic()
                self.calls[action.call] = self.node._pool.submit(self.call, action)
            elif isinstance(action, SetTimer):
                heapq.heappush(self.timers, (time.monotonic() + action.seconds, action.timer))
            elif isinstance(action, Cancel):
                for call in action.calls:
                    fut = self.calls.pop(call, None)
                    if fut is not None:
                        fut.cancel()  # not started: never runs; running: its answer is ignored
            elif isinstance(action, Refused):
                log.warning("%s: %s", action.source.address, action.reason)
            elif isinstance(action, Settled):
                self.settle(action.result)

    def call(self, action: Execute | Verify | Confirm) -> None:
        """Make the gRPC call of ``action``; put its answer on the event queue."""
        peer = action.executor if isinstance(action, Execute) else action.verifier
        address = peer.address
        channel = self.channels[address]
        event: Event
        try:
            key = self.node.key
            if isinstance(action, Execute):
                run = make_execute(key, action.request)
                reply = pb_grpc.ExecutorStub(channel).Execute(run, timeout=action.timeout_s)
                try:
                    signed = convert.commitment_from_pb(reply.commitment)
                except ProtocolError as exc:
                    event = MalformedAnswer(action.call, str(exc))
                else:
                    event = CommitmentReceived(action.call, signed)
            elif isinstance(action, Verify):
                ask = make_verify(key, action.request, action.signed, action.executor.address)
                answer = call_bounded(  # bounded before parsed [RPC.6]
                    channel, VERIFY, ask, pb.Vote, action.timeout_s, MAX_OPEN_MESSAGE_BYTES
                )
                event = VoteReceived(action.call, convert.vote_from_pb(answer))
            else:
                confirm = make_confirm(key, action.request, action.signed, action.accusation)
                found = call_bounded(
                    channel, CONFIRM, confirm, pb.Confirmation, action.timeout_s, MAX_MESSAGE_BYTES
                )
                event = ConfirmationReceived(action.call, convert.confirmation_from_pb(found))
        except grpc.RpcError as exc:
            if not isinstance(action, Execute):
                log.warning("%s: %s %s", address, exc.code().name, exc.details())
            event = CallFailed(action.call, exc.code().name)
        except ProtocolError as exc:
            log.warning("%s sent a malformed answer: %s", address, exc)
            event = CallFailed(action.call, f"malformed answer: {exc}")
        self.events.put(event)

    def settle(self, result: MachineAttempt) -> None:
        """Record what a settled attempt's tally proves. [SLASH.1]-[SLASH.3]"""
        key = (result.executor.address, result.request.request_id)
        seconds = time.monotonic() - self.started.get(key, time.monotonic())
        slashes: tuple[SlashRecord, ...] = ()
        penalties: tuple[Penalty, ...] = ()
        if result.tally is not None:
            vset = self.node.validator_set.vset
            slashes, penalties = process_tally(self.node.tombstones, result.tally, vset)
        for r in slashes:
            log.info("slashed %s: %s", _node(r.offender), r.offence.value)
        self.records[result.attempt] = (seconds, slashes, penalties)

    def attempt_of(self, result: MachineAttempt) -> AttemptResult:
        """Return the shell's record of ``result``: its peer, time, slashes and reasons."""
        seconds, slashes, penalties = self.records[result.attempt]
        reasons = [result.reason] if result.reason else []
        reasons += [f"slashed {_node(r.offender)} ({r.offence.value})" for r in slashes]
        reasons += [f"penalised {_node(p.accuser)} (false accusation)" for p in penalties]
        return AttemptResult(
            self.peers[result.executor.address],
            result.outcome,
            result.tally,
            "; ".join(dict.fromkeys(reasons)),
            seconds,
            slashes,
            penalties,
            result.request,
        )


def record_metrics(attempts: Sequence[AttemptResult], accepted: bool, seconds: float) -> None:
    """Count one answered client request and its attempts. [NODE.4]"""
    metrics.REQUESTS.labels(outcome="certified" if accepted else "failed").inc()
    if accepted:
        metrics.CERTIFICATION_SECONDS.observe(seconds)
    for a in attempts:
        metrics.ATTEMPTS.labels(outcome=a.outcome.value).inc()
        metrics.DISPUTES.inc(len(a.tally.disputes) if a.tally else 0)
        for r in a.slashes:
            metrics.SLASHES.labels(offence=r.offence.value).inc()
        metrics.PENALTIES.inc(len(a.penalties))


REFUSALS = (
    ("is not a", "not-an-executor"),
    ("another network", "network"),
    ("model", "model"),
    ("stamp", "stamp"),
    ("tombstoned", "tombstoned"),
    ("validator key", "validator"),
    ("cannot be reached", "unreachable"),
    ("another key", "wrong-key"),
    ("stale", "stale"),
    ("replayed", "replayed"),
    ("not routed to", "not-routed"),
)
"""What a refusal's message says, and the ``reason`` label it is counted under ([NODE.4])."""


M = TypeVar("M")
T = TypeVar("T")


def _membership(
    convert_message: Callable[[M], T], process: Callable[[T], str], message: M
) -> pb.JoinResponse:
    """Convert a join or leave, process it and count it ([NODE.4]): a malformed message is
    raised (``INVALID_ARGUMENT``); a refusal is answered in the reply, with its reason."""
    try:
        statement = convert_message(message)
    except Malformed:
        metrics.JOINS.labels(outcome="malformed", reason="malformed").inc()
        raise
    try:
        done = process(statement)
    except ProtocolError as exc:
        return _refused(exc)
    metrics.JOINS.labels(outcome=done, reason="none").inc()
    return pb.JoinResponse(accepted=True, reason=done)


def _refused(exc: ProtocolError) -> pb.JoinResponse:
    """Count a refused join or leave by reason; return the answer that says why."""
    if isinstance(exc, BadSignature):
        reason = "signature"
    else:
        reason = next((code for text, code in REFUSALS if text in str(exc)), "other")
    metrics.JOINS.labels(outcome="refused", reason=reason).inc()
    return pb.JoinResponse(accepted=False, reason=f"{type(exc).__name__}: {exc}")


def _node(key: PublicKey) -> str:
    return short_hex(compute_node_id(key))


class AssemblerService(pb_grpc.AssemblerServicer):
    """Serves ``Infer`` for clients."""

    def __init__(self, node: AssemblerNode) -> None:
        self.node = node

    def GetInfo(self, request: pb.NodeInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        """Return this node's identity and model."""
        return pb.NodeInfo(
            public_key=self.node.key.public_key,
            role="assembler",
            model_id=self.node.model_id,
            network_id=self.node.policy.network_id,
        )

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.NodeStatus:
        """Return what this node did lately and the peers it routes to. [NODE.9]"""
        info = self.GetInfo(pb.NodeInfoRequest(), context)
        return self.node.activity.to_pb(info, self.node.peer_status())

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        """Stop routing to an executor that asks, or say why not. [JOIN.3]"""
        return _membership(convert.leave_from_pb, self.node.process_leave, request)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        """Route to a new executor, or say why not. [JOIN.1], [JOIN.2]"""
        return _membership(convert.join_from_pb, self.node.process_join, request)

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        """Answer ``request.prompt`` with a certified completion, or report every failed attempt."""
        start = time.monotonic()
        sampling = (
            convert.sampling_from_pb(request.sampling)
            if request.HasField("sampling")
            else SamplingParams()
        )
        text, attempts = self.node.infer(request.prompt, sampling)
        accepted = any(a.outcome is Outcome.CERTIFIED for a in attempts)
        if accepted:
            failpoints.reach("assembler.certified")
        record_metrics(attempts, accepted, time.monotonic() - start)
        response = pb.InferResponse(text=text, accepted=accepted)
        for a in attempts:
            response.attempts.append(
                pb.Attempt(
                    executor_id=a.executor.node_id,
                    accepted=a.outcome is Outcome.CERTIFIED,
                    votes=[convert.vote_to_pb(v) for v in a.votes],
                    reason=a.reason,
                    seconds=a.seconds,
                    outcome=a.outcome.value,
                    confirmations=[
                        convert.confirmation_to_pb(c)
                        for d in (a.tally.disputes if a.tally else ())
                        for c in d.confirmations
                    ],
                    slashes=[
                        pb.Slash(
                            key=r.offender,
                            offence=r.offence.value,
                            proof=convert.slash_to_pb(r, self.node.validator_set),
                        )
                        for r in a.slashes
                    ],
                    penalties=[
                        pb.Slash(key=p.accuser, offence="false-accusation") for p in a.penalties
                    ],
                )
            )
            if a.request is not None:
                response.attempts[-1].request.CopyFrom(convert.request_to_pb(a.request))
            if a.tally is not None:
                response.attempts[-1].commitment.CopyFrom(convert.commitment_to_pb(a.tally.signed))
            receipt = self.node.receipt_of(a)
            if receipt is not None:
                response.receipt.CopyFrom(receipt)
        response.seconds = time.monotonic() - start
        return response

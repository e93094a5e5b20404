"""An executor's membership of a network: measuring itself, joining, announcing, leaving.
[JOIN.1]-[JOIN.4]

An executor whose config names assemblers (``[executor] assemblers``) joins each of them once it
serves, joins again every ``announce_s`` seconds (so that an assembler that restarted, or dropped
it after :data:`verihive.assembler.DEFAULT_JOIN_TTL_S` of silence, routes to it again), and sends
a signed leave to each when it shuts down. ``bft-executor join`` and ``leave`` do the same once,
by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from bft.crypto import SigningKey
from bft.join import JoinRequest, compute_stamp, sign_join, sign_leave
from bft.messages import SamplingParams
from bft.types import ModelId
from executor.backend import Backend
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive.rpc import INFO_TIMEOUT_S, make_channel

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60.0
"""Deadline of a ``Join`` or ``Leave`` call: the assembler probes the joining node first."""
PROBE_PROMPT_TOKENS = 32
PROBE_NEW_TOKENS = 16


def measure_throughput(backend: Backend) -> float:
    """Return the tokens per second ``backend`` generates and proves: a greedy generation of
    :data:`PROBE_NEW_TOKENS` tokens after a fixed prompt, then its proving pass. [JOIN.1]"""
    prompt = [1 + i % (backend.info.vocab_size - 1) for i in range(PROBE_PROMPT_TOKENS)]
    params = SamplingParams(
        temperature=0.0, max_new_tokens=PROBE_NEW_TOKENS, stop_at_eos=False
    )
    started = time.perf_counter()
    out = backend.generate(prompt, params, b"\x00" * 32)
    backend.prove([*prompt, *out])
    return len(out) / max(time.perf_counter() - started, 1e-9)


def make_join(
    key: SigningKey,
    network_id: str,
    stamp_bits: int,
    address: str,
    model_id: ModelId,
    profile: str,
    tokens_per_second: float,
) -> JoinRequest:
    """Mint the stamp (the work: about ``2**stamp_bits`` hashes) and sign the join."""
    nonce = compute_stamp(network_id, key.public_key, stamp_bits)
    unsigned = JoinRequest(
        network_id, key.public_key, address, model_id, profile, tokens_per_second, nonce
    )
    return sign_join(key, unsigned)


def send_join(assembler: str, join: JoinRequest) -> pb.JoinResponse:
    """Ask ``assembler`` to route to the executor of ``join``; raise ``grpc.RpcError``."""
    channel = make_channel(assembler)
    try:
        stub = pb_grpc.AssemblerStub(channel)
        reply: pb.JoinResponse = stub.Join(convert.join_to_pb(join), timeout=JOIN_TIMEOUT_S)
        return reply
    finally:
        channel.close()


def send_leave(assembler: str, key: SigningKey, network_id: str) -> pb.JoinResponse:
    """Ask ``assembler`` to route to ``key`` no more; raise ``grpc.RpcError``. [JOIN.3]"""
    leave = sign_leave(key, network_id, time.time_ns() // 1_000_000)
    channel = make_channel(assembler)
    try:
        stub = pb_grpc.AssemblerStub(channel)
        reply: pb.JoinResponse = stub.Leave(convert.leave_to_pb(leave), timeout=INFO_TIMEOUT_S)
        return reply
    finally:
        channel.close()


@dataclass
class Announcement:
    """The last answer of one assembler to this executor's join."""

    assembler: str
    state: str = "not yet asked"
    at: float = 0.0


class Announcer:
    """Joins every assembler now and every ``every_s`` seconds; leaves them on :meth:`stop`.

    One thread; a failed or refused join is logged and tried again at the next round.
    """

    def __init__(
        self,
        key: SigningKey,
        join: JoinRequest,
        assemblers: Sequence[str],
        every_s: float,
    ) -> None:
        self.key = key
        self.join = join
        self.every_s = every_s
        self.announcements = [Announcement(a) for a in assemblers]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)

    def start(self) -> None:
        """Start announcing."""
        self._thread.start()

    def _run(self) -> None:
        while True:
            for a in self.announcements:
                if self._stop.is_set():
                    return
                self._announce(a)
            if self._stop.wait(self.every_s):
                return

    def _announce(self, a: Announcement) -> None:
        try:
            reply = send_join(a.assembler, self.join)
            state = reply.reason if reply.accepted else f"refused: {reply.reason}"
        except grpc.RpcError as exc:
            state = f"unreachable: {exc.code().name}"
        with self._lock:
            if state != a.state:
                log.info("join %s: %s", a.assembler, state, extra={"peer": a.assembler})
            a.state, a.at = state, time.monotonic()

    def peers(self) -> list[pb.PeerStatus]:
        """Return each assembler and its last answer, for ``Status``. [NODE.9]"""
        now = time.monotonic()
        with self._lock:
            return [
                pb.PeerStatus(
                    role="assembler",
                    address=a.assembler,
                    source="announced",
                    seen_s_ago=now - a.at if a.at else 0.0,
                    state=a.state,
                )
                for a in self.announcements
            ]

    def stop(self) -> None:
        """Stop announcing, then leave every assembler that had accepted the join."""
        self._stop.set()
        self._thread.join(timeout=JOIN_TIMEOUT_S)
        for a in self.announcements:
            if a.state.startswith("refused") or a.state.startswith("unreachable"):
                continue
            try:
                reply = send_leave(a.assembler, self.key, self.join.network_id)
                log.info("leave %s: %s", a.assembler, reply.reason, extra={"peer": a.assembler})
            except grpc.RpcError as exc:
                log.warning("leave %s: %s", a.assembler, exc.code().name)

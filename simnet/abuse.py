"""Attacks on running nodes, for the abuse test and ``bench/abuse.py``. [ABUSE.1]

Each attack is what an outsider (or a joined executor turned hostile) can send without any
secret of the network, repeated by a few threads until told to stop: strangers' work orders
pointed at a socket that never answers, admitted orders aimed at a stalling executor, repeats of
a genuine call with its signature forged, work orders naming a new executor address each time,
messages whose repeated fields are far over their limits, and join floods. An attack counts the
calls it made and the statuses it got back; it never needs an answer to go on.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from bft.crypto import SigningKey
from bft.messages import InferenceRequest, SignedCommitment
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from proto.wirescan import encode_field
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, make_channel
from verihive.work import make_execute, make_verify

CALL_TIMEOUT_S = 10.0
"""Deadline of each attacking call: an attacker waits no longer than this for a refusal."""


@dataclass
class Target:
    """A running network as an attacker sees it, plus one genuine exchange to mutate."""

    verifiers: list[str]
    executors: list[str]
    assembler: str
    request: InferenceRequest
    signed: SignedCommitment
    executor_address: str
    """Where the genuine commitment's openings are served."""
    admitted: SigningKey
    """The admitted assembler's key: for the attacks of a hostile joined executor, whose work
    the assembler really orders (``stalled-executor``)."""


@dataclass
class Tally:
    """What one attack did: calls made, by the status each got."""

    statuses: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str) -> None:
        with self.lock:
            self.statuses[status] += 1

    @property
    def calls(self) -> int:
        return sum(self.statuses.values())


class Sink:
    """A socket that accepts connections and never answers (a stalling peer)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        """The connections it took (and holds open, unanswered)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.accepted:
            s.close()
        self.sock.close()


def _call(address: str, service: str, method: str, message: object, tally: Tally) -> None:
    channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    try:
        stub = getattr(pb_grpc, f"{service}Stub")(channel)
        reply = getattr(stub, method)(message, timeout=CALL_TIMEOUT_S)
        refused = isinstance(reply, pb.JoinResponse) and not reply.accepted  # said in the reply
        tally.add("REFUSED" if refused else "OK")
    except grpc.RpcError as exc:
        tally.add(exc.code().name)
    finally:
        channel.close()


def stranger_verify(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """Finding 1: a stranger's ``Verify`` pointed at a socket that never answers."""
    stranger = SigningKey.from_seed(os.urandom(32))
    message = make_verify(stranger, t.request, t.signed, sink.address)
    _call(t.verifiers[i % len(t.verifiers)], "Verifier", "Verify", message, tally)


HOSTILE = SigningKey.from_seed(b"\x4b" * 32)
"""The key of the hostile joined executor of ``stalled-executor``."""


def stalled_executor(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """A hostile joined executor whose openings never come: it signs a commitment for each new
    request, and the assembler orders its verification, pointed at the executor's address."""
    request = dataclasses.replace(t.request, request_id=os.urandom(16))
    c = dataclasses.replace(
        t.signed.commitment, request_digest=request.digest(), executor_key=HOSTILE.public_key
    )
    signed = SignedCommitment(c, HOSTILE.sign(c.signing_root()))
    message = make_verify(t.admitted, request, signed, sink.address)
    _call(t.verifiers[i % len(t.verifiers)], "Verifier", "Verify", message, tally)


def many_addresses(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """Finding 3: ``Verify`` naming a new executor address every time (a channel each)."""
    stranger = SigningKey.from_seed(os.urandom(32))
    address = f"127.0.0.{1 + i % 250}:{20000 + (i * 7919) % 40000}"
    message = make_verify(stranger, t.request, t.signed, address)
    _call(t.verifiers[i % len(t.verifiers)], "Verifier", "Verify", message, tally)


def forged_repeat(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """Finding 4: the genuine ordered ``Verify`` again, its commitment signature zeroed."""
    message = make_verify(t.admitted, t.request, t.signed, t.executor_address)
    message.commitment.signature = bytes(64)
    _call(t.verifiers[i % len(t.verifiers)], "Verifier", "Verify", message, tally)


def stranger_execute(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """``Execute`` ordered by a stranger."""
    stranger = SigningKey.from_seed(os.urandom(32))
    message = make_execute(stranger, t.request)
    message.request.request_id = os.urandom(16)
    _call(t.executors[i % len(t.executors)], "Executor", "Execute", message, tally)


OVERSIZED_ITEMS = 10_000_000
"""Items in the oversized repeated fields: the finding's 10^7 (a 20 MB message)."""


@functools.cache
def _oversized_confirm() -> bytes:
    # ConfirmRequest.accusation (3) = Vote with OVERSIZED_ITEMS empty sampler_checks (11)
    return encode_field(3, encode_field(11, b"") * OVERSIZED_ITEMS)


def _raw_call(address: str, method: str, payload: bytes, tally: Tally) -> None:
    channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    try:
        channel.unary_unary(method)(payload, timeout=CALL_TIMEOUT_S)  # bytes as they are
        tally.add("OK")
    except grpc.RpcError as exc:
        tally.add(exc.code().name)
    finally:
        channel.close()


def oversized_confirm(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """Finding 2: a ``Confirm`` whose accusation holds 10^7 empty sampler checks (20 MB)."""
    address = t.verifiers[i % len(t.verifiers)]
    _raw_call(address, "/verihive.v1.Verifier/Confirm", _oversized_confirm(), tally)


def oversized_tokens(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """Finding 2: a genuine ordered ``Verify`` whose commitment gains 10^7 tokens (protobuf
    merges the appended bytes into the message: 10 MB of packed token ids)."""
    message = make_verify(t.admitted, t.request, t.signed, t.executor_address)
    # VerifyRequest.commitment (2) . commitment (1) . tokens (5, packed)
    extra = encode_field(2, encode_field(1, encode_field(5, b"\x01" * OVERSIZED_ITEMS)))
    address = t.verifiers[i % len(t.verifiers)]
    _raw_call(address, "/verihive.v1.Verifier/Verify", message.SerializeToString() + extra, tally)


def join_flood(t: Target, sink: Sink, tally: Tally, i: int) -> None:
    """Joins by fresh keys with no work in their stamp, at an address that never answers."""
    key = SigningKey.from_seed(os.urandom(32))
    message = pb.JoinRequest(
        network_id=t.request.network_id,
        public_key=key.public_key,
        address=sink.address,
        model_id=t.request.model_id,
        profile="torch-cpu-float32",
        nonce=0,
    )
    message.signature = bytes(64)
    _call(t.assembler, "Assembler", "Join", message, tally)


ATTACKS: dict[str, Callable[[Target, Sink, Tally, int], None]] = {
    "stranger-verify": stranger_verify,
    "stalled-executor": stalled_executor,
    "many-addresses": many_addresses,
    "forged-repeat": forged_repeat,
    "stranger-execute": stranger_execute,
    "oversized-confirm": oversized_confirm,
    "oversized-tokens": oversized_tokens,
    "join-flood": join_flood,
}
"""Every attack by name, in the order reports list them."""


class Attack:
    """Run one attack from ``threads`` threads until :meth:`stop`."""

    def __init__(self, name: str, target: Target, threads: int = 4) -> None:
        self.name = name
        self.target = target
        self.tally = Tally()
        self.sink = Sink()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(k, threads), daemon=True)
            for k in range(threads)
        ]

    def _run(self, k: int, step: int) -> None:
        i = k
        while not self._stop.is_set():
            ATTACKS[self.name](self.target, self.sink, self.tally, i)
            i += step

    def start(self) -> Attack:
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> Tally:
        """Stop and return what was done (waits for calls in flight, at most their deadline)."""
        self._stop.set()
        for th in self._threads:
            th.join(timeout=CALL_TIMEOUT_S + 5)
        self.sink.close()
        return self.tally

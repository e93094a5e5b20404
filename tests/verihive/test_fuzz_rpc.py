"""Property-based fuzzing of every RPC of every service, over real loopback sockets. [RPC.1]

For each method, hypothesis sends (a) arbitrary bytes as the raw request, (b) genuine messages
mutated structurally (fields cleared, bytes cut, extended or bit-flipped, integers at and beyond
:mod:`bft.limits`, repeated fields emptied, duplicated or over-long, odd unicode), re-signed
where the mutation still parses so that the checks behind each signature run too, (c) genuine
ordered calls replayed to the same and to other nodes, and (d) orders by a stranger or by the
admitted assembler over another subject ([ADMIT.2]). Every answer is either OK with a reply
that passes the project's own validating conversion, or a status of [RPC.1] (or
``PERMISSION_DENIED``, ``RESOURCE_EXHAUSTED``): never ``INTERNAL`` or ``UNKNOWN``, and no
details hold a traceback. After each test the nodes still serve, and at the end the genuine
commitments and votes are answered byte for byte as before the fuzzing.

The network's executor 0 tampers with its tokens, so the genuine messages include real
accusations for ``Confirm``. Inputs that would make a node do real model work at scale (long
prompts, many new tokens) are kept small: only what is cheap is re-signed or sent whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bft.confirmation import Confirmation, Finding
from bft.crypto import SigningKey, check_signature
from bft.errors import ProtocolError
from bft.join import (
    DEFAULT_STAMP_BITS,
    JoinRequest,
    LeaveRequest,
    compute_stamp,
    sign_join,
    sign_leave,
)
from bft.limits import (
    MAX_EPOCH,
    MAX_F,
    MAX_HIDDEN,
    MAX_LAYERS,
    MAX_LEAVES,
    MAX_OPENINGS,
    MAX_STRING,
    MAX_TEXT,
    MAX_TOKENS,
    MAX_TRUST,
    MAX_VOCAB,
    PPM,
)
from bft.measure import open_tiles
from bft.messages import (
    Evidence,
    EvidenceCheck,
    InferenceRequest,
    OpeningResponse,
    SamplingParams,
    SignedCommitment,
    TileOpening,
    TileRef,
    Verdict,
    Vote,
)
from bft.orders import NO_DIGEST, Subject, Work, sign_order
from bft.receipt import check_receipt
from bft.types import Signature
from merkle.sketch import compute_sketch
from merkle.tiles import encode_tile
from merkle.tree import MAX_PROOF_STEPS, ActivationTree
from proto import convert
from proto import verihive_pb2 as pb
from simnet.localnet import local_faults
from verihive.assembler import MAX_PROMPT_CHARS, AttemptResult
from verihive.localnet import (
    DEFAULT_NETWORK_ID,
    LocalNetConfig,
    LocalNetwork,
    start_local_network,
)
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, check_address, make_channel
from verihive.work import make_confirm, make_execute, make_verify

NET = DEFAULT_NETWORK_ID
STRANGER = SigningKey.from_seed(b"\x5f" * 32)

DOCUMENTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""The statuses a server may answer bad input with: [RPC.1], [ADMIT.1], [RPC.3], [RPC.6]."""

RAW_EXAMPLES = 30
MUTATION_EXAMPLES = 40
FORGED_EXAMPLES = 80
ORDER_EXAMPLES = 20
REPLAY_EXAMPLES = 10

fuzz_settings = settings(
    deadline=None,  # an example's time is the network's, not the code under test's
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

CHEAP_PROMPT_TOKENS = 64
CHEAP_NEW_TOKENS = 8
"""A request re-signed for a node to run holds at most this many prompt and new tokens."""
CHEAP_PROMPT_CHARS = 4096
CHEAP_INFER_TOKENS = 512
"""An ``Infer`` sent whole has a prompt of at most this many characters and tokens."""
GROWTH_BUDGET = 2 << 20
"""Bytes an over-long repeated field may add to a message (well within the transport's 8 MiB)."""


# --- The network and its genuine messages


@pytest.fixture(scope="module")
def net(tiny) -> Iterator[LocalNetwork]:
    faults = local_faults(executor="tamper-tokens")  # executor 0 lies: real accusations
    with start_local_network(tiny, LocalNetConfig(), faults=faults) as n:
        yield n


@dataclass(frozen=True)
class Genuine:
    """Real messages of one certified and one rejected attempt, and the first answers to them."""

    net: LocalNetwork
    attempts: tuple[AttemptResult, AttemptResult]
    """The liar's attempt (REJECTED, with accusations) and the honest one (CERTIFIED)."""
    accusations: tuple[Vote, ...]
    """The REJECT votes (with evidence) on the liar's commitment."""
    join: JoinRequest
    leave: LeaveRequest
    commitments: dict[int, bytes]
    """Attempt index: its executor's reply to the ordered ``Execute``, as first answered."""
    votes: dict[tuple[int, str], bytes]
    """(attempt index, verifier address): that verifier's vote, as first answered."""
    confirmations: dict[str, bytes]
    """Verifier address: its finding on the first accusation, as first answered."""

    @property
    def accusation(self) -> Vote:
        """Return the first accusation."""
        return self.accusations[0]

    @property
    def key(self) -> SigningKey:
        """Return the admitted assembler's key."""
        return self.net.assembler.key

    def request(self, i: int) -> InferenceRequest:
        tally = self.attempts[i].tally
        assert tally is not None
        return tally.request

    def signed(self, i: int) -> SignedCommitment:
        tally = self.attempts[i].tally
        assert tally is not None
        return tally.signed

    def executor(self, i: int) -> str:
        return self.attempts[i].executor.address

    def execute(self, i: int) -> pb.ExecuteRequest:
        return make_execute(self.key, self.request(i))

    def verify(self, i: int) -> pb.VerifyRequest:
        return make_verify(self.key, self.request(i), self.signed(i), self.executor(i))

    def confirm(self, j: int = 0) -> pb.ConfirmRequest:
        accusation = self.accusations[j]
        ev = accusation.evidence
        assert ev is not None
        return make_confirm(self.key, ev.request, ev.signed, accusation)

    def open(self, i: int) -> pb.OpenRequest:
        tiles = [pb.TileRef(boundary=0, chunk=0), pb.TileRef(boundary=1, chunk=0)]
        return pb.OpenRequest(commitment_digest=self.signed(i).digest, tiles=tiles)

    def infer(self) -> pb.InferRequest:
        return pb.InferRequest(
            prompt="Hello?", sampling=convert.sampling_to_pb(SamplingParams(max_new_tokens=4))
        )


@pytest.fixture(scope="module")
def genuine(net, tiny) -> Genuine:
    _, found = net.assembler.infer("Hello?", SamplingParams(max_new_tokens=4))
    caught, served = found
    assert caught.tally is not None and served.tally is not None
    accusations = tuple(v for v in caught.tally.votes if v.verdict is Verdict.REJECT)
    nonce = compute_stamp(NET, STRANGER.public_key, DEFAULT_STAMP_BITS)
    join = sign_join(
        STRANGER,
        JoinRequest(
            NET,
            STRANGER.public_key,
            net.executor_addresses[1],  # answers with another key: refused after the probe
            tiny.model_id,
            "torch-cpu-float32",
            10.0,
            nonce,
        ),
    )
    leave = sign_leave(STRANGER, NET, time.time_ns() // 1_000_000)
    g = Genuine(net, (caught, served), accusations, join, leave, {}, {}, {})
    for i in (0, 1):
        reply = call(g.executor(i), EXECUTE, g.execute(i).SerializeToString())
        assert isinstance(reply, bytes)
        assert (
            reply
            == pb.ExecuteResponse(
                commitment=convert.commitment_to_pb(g.signed(i))
            ).SerializeToString()
        )
        g.commitments[i] = reply
        for address in net.verifier_addresses:
            vote = call(address, VERIFY, g.verify(i).SerializeToString())
            assert isinstance(vote, bytes)
            g.votes[(i, address)] = vote
    for address in net.verifier_addresses:
        conf = call(address, CONFIRM, g.confirm().SerializeToString())
        assert isinstance(conf, bytes)
        assert pb.Confirmation.FromString(conf).finding == pb.FINDING_CONFIRM  # it was slashed
        g.confirmations[address] = conf
    return g


# --- Calls and the property every answer has


_channels: dict[str, grpc.Channel] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_channels() -> Iterator[None]:
    yield
    for channel in _channels.values():
        channel.close()
    _channels.clear()


def call(address: str, rpc: Rpc, payload: bytes) -> bytes | grpc.RpcError:
    """Send ``payload`` as the raw request of ``rpc`` to ``address``; return the raw reply."""
    channel = _channels.get(address)
    if channel is None:
        channel = _channels[address] = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    try:
        return channel.unary_unary(rpc.path)(payload, timeout=60)  # bytes in, bytes out
    except grpc.RpcError as exc:
        return exc


def answer_of(rpc: Rpc, outcome: bytes | grpc.RpcError) -> object:
    """Return the validated reply of ``outcome``, or its status; fail on any other answer.

    The property of [RPC.1]: OK with a reply that passes the project's own validating
    conversion, or a documented status with details that hold no traceback.
    """
    if isinstance(outcome, grpc.RpcError):
        code, details = outcome.code(), outcome.details() or ""
        assert code in DOCUMENTED, f"{rpc.path} answered {code.name}: {details}"
        assert "Traceback" not in details
        return code
    return rpc.check(outcome)


def send(address: str, rpc: Rpc, payload: bytes) -> object:
    """Send ``payload`` to ``address`` and return its checked answer (see :func:`answer_of`)."""
    return answer_of(rpc, call(address, rpc, payload))


def _node_info(role: str) -> Callable[[bytes], object]:
    def check(raw: bytes) -> pb.NodeInfo:
        info = pb.NodeInfo.FromString(raw)
        assert len(info.public_key) == 32 and info.role == role and info.network_id == NET
        return info

    return check


def _node_status(role: str) -> Callable[[bytes], object]:
    def check(raw: bytes) -> pb.NodeStatus:
        status = pb.NodeStatus.FromString(raw)
        _node_info(role)(status.info.SerializeToString())
        assert all("Traceback" not in e.detail for e in status.recent)
        return status

    return check


def _execute_reply(raw: bytes) -> SignedCommitment:
    signed = convert.commitment_from_pb(pb.ExecuteResponse.FromString(raw).commitment)
    signed.check()
    return signed


def _open_reply(raw: bytes) -> object:
    response = convert.opening_response_from_pb(pb.OpenResponse.FromString(raw))
    assert response.commitment is not None
    response.commitment.check()
    assert response.commitment_digest == response.commitment.digest
    key = response.commitment.commitment.executor_key
    check_signature(key, response.signing_root(), response.signature, "opening")
    open_tiles(response.commitment, response)  # the executor's own openings open its root
    return response


def _vote_reply(raw: bytes) -> Vote:
    vote = convert.vote_from_pb(pb.Vote.FromString(raw))
    vote.check()
    return vote


def _confirm_reply(raw: bytes) -> object:
    conf = convert.confirmation_from_pb(pb.Confirmation.FromString(raw))
    conf.check()
    return conf


def _infer_reply(raw: bytes) -> pb.InferResponse:
    m = pb.InferResponse.FromString(raw)
    for a in m.attempts:
        assert a.outcome in {"certified", "rejected", "failed"}
        assert "Traceback" not in a.reason
        for v in a.votes:
            convert.vote_from_pb(v).check()
        for c in a.confirmations:
            convert.confirmation_from_pb(c).check()
        for s in a.slashes:
            convert.slash_from_pb(s.proof)
        if a.HasField("request"):
            convert.request_from_pb(a.request)
        if a.HasField("commitment"):
            convert.commitment_from_pb(a.commitment).check()
    assert m.accepted == any(a.accepted for a in m.attempts)
    if m.accepted:
        check_receipt(convert.receipt_from_pb(m.receipt))
    return m


def _join_reply(raw: bytes) -> pb.JoinResponse:
    m = pb.JoinResponse.FromString(raw)
    assert "Traceback" not in m.reason
    assert m.accepted or m.reason
    return m


@dataclass(frozen=True)
class Rpc:
    """One method: its service, name, request type and the check of an OK reply."""

    service: str
    name: str
    request: type[Message]
    check: Callable[[bytes], object]

    @property
    def path(self) -> str:
        return f"/verihive.v1.{self.service}/{self.name}"

    def __repr__(self) -> str:
        return f"{self.service}.{self.name}"


EXECUTE = Rpc("Executor", "Execute", pb.ExecuteRequest, _execute_reply)
OPEN = Rpc("Executor", "Open", pb.OpenRequest, _open_reply)
VERIFY = Rpc("Verifier", "Verify", pb.VerifyRequest, _vote_reply)
CONFIRM = Rpc("Verifier", "Confirm", pb.ConfirmRequest, _confirm_reply)
INFER = Rpc("Assembler", "Infer", pb.InferRequest, _infer_reply)
JOIN = Rpc("Assembler", "Join", pb.JoinRequest, _join_reply)
LEAVE = Rpc("Assembler", "Leave", pb.LeaveRequest, _join_reply)
INFO = {
    s: Rpc(s, "GetInfo", pb.NodeInfoRequest, _node_info(s.lower()))
    for s in ("Executor", "Verifier", "Assembler")
}
STATUS = {
    s: Rpc(s, "Status", pb.StatusRequest, _node_status(s.lower()))
    for s in ("Executor", "Verifier", "Assembler")
}
ALL_RPCS = (
    INFO["Executor"],
    STATUS["Executor"],
    EXECUTE,
    OPEN,
    INFO["Verifier"],
    STATUS["Verifier"],
    VERIFY,
    CONFIRM,
    INFO["Assembler"],
    STATUS["Assembler"],
    INFER,
    JOIN,
    LEAVE,
)


def addresses(net: LocalNetwork, service: str) -> list[str]:
    """Return the addresses of ``service``'s nodes."""
    return {
        "Executor": net.executor_addresses,
        "Verifier": net.verifier_addresses,
        "Assembler": [net.assembler_address],
    }[service]


def assert_serving(g: Genuine, service: str) -> None:
    """Check that every node of ``service`` answers ``GetInfo`` and ``Status`` (nothing left in
    flight), and that one real ordered request is served as before."""
    for address in addresses(g.net, service):
        send(address, INFO[service], b"")
        status = send(address, STATUS[service], b"")
        assert isinstance(status, pb.NodeStatus) and status.in_flight == 0
    if service == "Executor":
        for i in (0, 1):
            reply = call(g.executor(i), EXECUTE, g.execute(i).SerializeToString())
            assert reply == g.commitments[i]
    elif service == "Verifier":
        address = g.net.verifier_addresses[1]
        assert call(address, VERIFY, g.verify(1).SerializeToString()) == g.votes[(1, address)]
    else:
        reply = send(g.net.assembler_address, INFER, g.infer().SerializeToString())
        assert isinstance(reply, pb.InferResponse) and reply.accepted


# --- Strategies: raw bytes


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def wire_records(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Return protobuf wire records: plausible tags and values, invalid wire types, lengths
    past the end, over-long varints, groups and nested records."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        number = draw(st.integers(1, 16) | st.sampled_from([0, 19000, (1 << 29) - 1]))
        kind = draw(st.integers(0, 7))
        parts.append(_varint(number << 3 | kind))
        if kind == 0:
            parts.append(
                draw(
                    st.integers(0, (1 << 64) - 1).map(_varint)
                    | st.just(b"\xff" * 10 + b"\x01")  # an 11-byte varint
                    | st.just(b"\x80")  # cut short
                )
            )
        elif kind == 1:
            parts.append(draw(st.binary(min_size=8, max_size=8)))
        elif kind == 5:
            parts.append(draw(st.binary(min_size=4, max_size=4)))
        elif kind == 2:
            body = draw(wire_records(depth + 1)) if depth < 2 else b""
            body = draw(st.just(body) | st.binary(max_size=48))
            length = len(body) + draw(st.sampled_from([0, 0, 0, 1, -1, 1 << 20]))
            parts.append(_varint(max(0, length)) + body)
        else:  # groups (3, 4) and the undefined wire types 6, 7
            parts.append(draw(st.binary(max_size=8)))
    return b"".join(parts)


@st.composite
def damaged(draw: st.DrawFn, payload: bytes) -> bytes:
    """Return ``payload`` cut, extended or with a bit flipped."""
    op = draw(st.sampled_from(["cut", "extend", "flip", "prefix"]))
    if op == "cut" or not payload:
        return payload[: draw(st.integers(0, max(0, len(payload) - 1)))]
    if op == "extend":
        return payload + draw(st.binary(min_size=1, max_size=32) | wire_records())
    if op == "prefix":
        return draw(wire_records()) + payload
    bit = draw(st.integers(0, 8 * len(payload) - 1))
    out = bytearray(payload)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def raw_requests(genuine_payload: bytes) -> st.SearchStrategy[bytes]:
    """Return arbitrary bytes, wire records and damaged genuine requests."""
    return st.one_of(
        st.binary(max_size=256),
        wire_records(),
        damaged(genuine_payload),
    )


# --- Strategies: structural mutations of a valid message

U32_EDGES = sorted(
    {
        0,
        1,
        2,
        MAX_F,
        MAX_F + 1,
        MAX_LAYERS,
        MAX_LAYERS + 1,
        MAX_TOKENS,
        MAX_TOKENS + 1,
        MAX_HIDDEN,
        MAX_HIDDEN + 1,
        MAX_LEAVES,
        MAX_LEAVES + 1,
        MAX_VOCAB - 1,
        MAX_VOCAB,
        MAX_OPENINGS,
        MAX_OPENINGS + 1,
        PPM,
        PPM + 1,
        MAX_TRUST,
        MAX_TRUST + 1,
        (1 << 31) - 1,
        1 << 31,
        (1 << 32) - 1,
    }
)
U64_EDGES = sorted({*U32_EDGES, MAX_EPOCH, MAX_EPOCH + 1, (1 << 64) - 1})
DOUBLES = (
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    0.0,
    5e-324,
    -1.0,
    1.0,
    1.0000000000000002,
    100.0,
    100.00000000000001,
    1e308,
)
ENUMS = (0, 1, 2, 3, 4, 7, 8, 9, 99, -1, (1 << 31) - 1, -(1 << 31))
ODD_TEXT = (
    "",
    " ",
    "\x00",
    "\u202e\u202d",
    "\ufeff",
    "\u200b",
    "e\u0301" * 3,
    "\U0001f600" * 65,  # 65 code points, 260 UTF-8 bytes
    "é" * 128,  # 256 UTF-8 bytes
    "é" * 129,
    "a" * (MAX_STRING + 1),
    "a" * (MAX_TEXT + 1),
    "\u3000\t\n",
    "ǅ",
    "\U0010ffff",
    "<|im_end|>",
)
ODD_ADDRESSES = (
    "127.0.0.1:²",  # str.isdigit() holds, int() refuses
    "127.0.0.1:١٢",  # Arabic-Indic digits
    "127.0.0.1:0",
    "127.0.0.1:1",
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    "127.0.0.1:\x00",
    "127.0.0.1:" + "9" * 300,
    "127.0.0.1",
    ":1",
    "[::1]:1",
)
OVER_LONG = {
    "prompt_tokens": MAX_TOKENS + 1,
    "tokens": MAX_TOKENS + 1,
    "tiles": MAX_OPENINGS + 1,
    "openings": MAX_OPENINGS + 1,
    "layer_checks": MAX_LAYERS + 1,
    "sampler_checks": MAX_TOKENS + 1,
    "steps": MAX_PROOF_STEPS + 1,
}
"""Items that make a repeated field one over its limit."""

Path = tuple[Message, FieldDescriptor, str]


def _paths(message: Message, prefix: str = "") -> Iterator[Path]:
    """Yield every field of ``message`` and of its set sub-messages (two items per list)."""
    for fd in message.DESCRIPTOR.fields:
        name = f"{prefix}{fd.name}"
        yield message, fd, name
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            for i, item in enumerate(list(getattr(message, fd.name))[:2]):
                yield from _paths(item, f"{name}[{i}].")
        elif message.HasField(fd.name):
            yield from _paths(getattr(message, fd.name), f"{name}.")


@st.composite
def _bytes_value(draw: st.DrawFn, value: bytes) -> bytes:
    op = draw(st.sampled_from(["empty", "cut", "extend", "flip", "resize", "zeros"]))
    if op == "empty" or (not value and op in ("cut", "flip", "zeros")):
        return b""
    if op == "cut":
        return value[: draw(st.integers(0, len(value) - 1))]
    if op == "extend":
        return value + draw(st.binary(min_size=1, max_size=64))
    if op == "zeros":
        return bytes(len(value))
    if op == "flip":
        bit = draw(st.integers(0, 8 * len(value) - 1))
        out = bytearray(value)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    size = draw(st.sampled_from([1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1024]))
    return draw(st.binary(min_size=size, max_size=size))


def _scalar(fd: FieldDescriptor, value: object) -> st.SearchStrategy[object]:
    """Return a strategy of adversarial values for a scalar field ``fd`` now holding ``value``."""
    t = fd.type
    if t == FieldDescriptor.TYPE_BYTES:
        assert isinstance(value, bytes)
        return _bytes_value(value)
    if t == FieldDescriptor.TYPE_STRING:
        assert isinstance(value, str)
        extra = ODD_ADDRESSES if "address" in fd.name else (value + "x", value[:-1], value.upper())
        return st.one_of(
            st.sampled_from(ODD_TEXT + extra),
            st.text(st.characters(exclude_categories=("Cs",)), max_size=24),
        )
    if t == FieldDescriptor.TYPE_BOOL:
        return st.just(not value)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from(ENUMS)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.sampled_from(DOUBLES) | st.floats()
    assert isinstance(value, int)
    top = (1 << 64) - 1 if t == FieldDescriptor.TYPE_UINT64 else (1 << 32) - 1
    edges = U64_EDGES if t == FieldDescriptor.TYPE_UINT64 else U32_EDGES
    near = [v for v in (value - 1, value + 1) if 0 <= v <= top]
    return st.sampled_from(edges) | st.sampled_from(near or [0]) | st.integers(0, top)


def _mutate_repeated(draw: st.DrawFn, message: Message, fd: FieldDescriptor) -> None:
    items = getattr(message, fd.name)
    op = draw(st.sampled_from(["clear", "duplicate", "drop", "over-long", "item"]))
    composite = fd.message_type is not None
    if op == "clear" or (op in ("drop", "item") and not items):
        del items[:]
    elif op == "drop":
        del items[draw(st.integers(0, len(items) - 1))]
    elif op == "item" and not composite:
        i = draw(st.integers(0, len(items) - 1))
        items[i] = draw(_scalar(fd, items[i]))
    elif op == "item":  # a sub-message's fields are mutated through their own paths
        items[draw(st.integers(0, len(items) - 1))].Clear()
    else:
        template: Any
        if composite:
            template = GetMessageClass(fd.message_type)()
            if items:
                template.CopyFrom(items[0])
            size = template.ByteSize() + 4
        else:
            empty = {FieldDescriptor.TYPE_BYTES: b"", FieldDescriptor.TYPE_STRING: ""}
            template = items[0] if items else empty.get(fd.type, 0)
            size = len(template) + 2 if isinstance(template, bytes | str) else 10
        if op == "duplicate":
            want = max(1, len(items))
        else:
            want = max(OVER_LONG.get(fd.name, 2 * len(items) + 1) - len(items), 1)
        items.extend([template] * min(want, GROWTH_BUDGET // max(size, 8)))


@st.composite
def mutated(draw: st.DrawFn, message: Message) -> tuple[Message, frozenset[str]]:
    """Return a copy of ``message`` with 1 to 3 structural mutations and the touched paths."""
    out = type(message)()
    out.CopyFrom(message)
    touched = set()
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(out))
        if not paths:
            break
        container, fd, name = draw(st.sampled_from(paths))
        touched.add(name)
        if fd.is_repeated:
            _mutate_repeated(draw, container, fd)
        elif fd.message_type is not None:
            container.ClearField(fd.name)
            if draw(st.booleans()):
                getattr(container, fd.name).SetInParent()  # present and empty
        else:
            value = draw(_scalar(fd, getattr(container, fd.name)))
            try:
                setattr(container, fd.name, value)
            except ValueError:  # not encodable (e.g. an enum out of int32): nothing sent
                continue
    return out, frozenset(touched)


def _touches(touched: frozenset[str], field: str) -> bool:
    return any(p == field or p.startswith(f"{field}.") for p in touched)


# --- Re-signing: what a mutation leaves parseable is signed again, so deeper checks run


def is_cheap(request: InferenceRequest) -> bool:
    """Return whether an executor may run ``request`` in this file's time."""
    return (
        len(request.prompt_tokens) <= CHEAP_PROMPT_TOKENS
        and request.sampling.max_new_tokens <= CHEAP_NEW_TOKENS
    )


def is_local(address: str) -> bool:
    """Return whether a node asked to dial ``address`` stays on this machine (or never dials:
    the address is refused first)."""
    try:
        check_address(address)
    except ProtocolError:
        return True
    return address.startswith("127.0.0.1:")


def ordered(key: SigningKey, subject: Subject) -> pb.Order:
    """Return ``key``'s order for ``subject`` as protobuf."""
    return convert.order_to_pb(sign_order(key, subject))


def _parse(fn: Callable[[Any], object], m: object) -> Any:
    """Return ``fn(m)``, or ``None`` when ``m`` does not parse (``ProtocolError``)."""
    try:
        return fn(m)
    except ProtocolError:
        return None


def resign_execute(g: Genuine, m: pb.ExecuteRequest) -> None:
    """Sign ``m``'s order as the admitted assembler, when its request parses and is cheap."""
    request = _parse(convert.request_from_pb, m.request) if m.HasField("request") else None
    if isinstance(request, InferenceRequest) and is_cheap(request):
        m.order.CopyFrom(ordered(g.key, Subject(NET, Work.EXECUTE, request.digest())))


def _signing_key(g: Genuine, public_key: bytes) -> SigningKey | None:
    for s in g.net.executor_services:
        if s.core.key.public_key == public_key:
            return s.core.key
    for v in g.net.verifier_services:
        if v.core.key.public_key == public_key:
            return v.core.key
    return None


def resign_commitment(
    g: Genuine, m: pb.SignedCommitment, request: InferenceRequest | None
) -> SignedCommitment | None:
    """Sign ``m`` again with its executor's key (bound to ``request`` when given)."""
    signed = _parse(convert.commitment_from_pb, m)
    if not isinstance(signed, SignedCommitment):
        return None
    c = signed.commitment
    key = _signing_key(g, c.executor_key)
    if key is None:
        return signed
    if request is not None:
        c = dataclasses.replace(c, request_digest=request.digest())
    signed = SignedCommitment(c, key.sign(c.signing_root()))
    m.CopyFrom(convert.commitment_to_pb(signed))
    return signed


def resign_verify(g: Genuine, m: pb.VerifyRequest, commitment: bool, rebind: bool) -> None:
    """Sign ``m``'s commitment (if ``commitment``; bound to its request if ``rebind``) with
    its executor's key, then its order as the admitted assembler, as far as ``m`` parses."""
    request = _parse(convert.request_from_pb, m.request) if m.HasField("request") else None
    request = request if isinstance(request, InferenceRequest) else None
    signed: object = None
    if m.HasField("commitment"):
        if commitment:
            signed = resign_commitment(g, m.commitment, request if rebind else None)
        else:
            signed = _parse(convert.commitment_from_pb, m.commitment)
    if (
        request is None
        or not isinstance(signed, SignedCommitment)
        or len(m.executor_address) > MAX_STRING
        or not is_local(m.executor_address)
    ):
        return
    subject = Subject(NET, Work.VERIFY, request.digest(), signed.digest, m.executor_address)
    m.order.CopyFrom(ordered(g.key, subject))


def resign_confirm(g: Genuine, m: pb.ConfirmRequest, inner: bool, rebind: bool) -> None:
    """Sign the accusation's evidence (if ``inner``: its commitments and openings with the
    executor's key) and the accusation (with its verifier's key; bound to the evidence if
    ``rebind``), then the order, as far as ``m`` parses."""
    if not m.HasField("accusation"):
        return
    acc = m.accusation
    if inner and acc.HasField("evidence"):
        ev = acc.evidence
        request = _parse(convert.request_from_pb, ev.request) if ev.HasField("request") else None
        request = request if isinstance(request, InferenceRequest) else None
        for name in ("commitment", "other"):
            if ev.HasField(name):
                resign_commitment(g, getattr(ev, name), request if rebind else None)
        signed = _parse(convert.commitment_from_pb, ev.commitment)
        key = _signing_key(g, signed.commitment.executor_key) if signed else None
        if ev.HasField("response") and isinstance(signed, SignedCommitment) and key is not None:
            if rebind:
                ev.response.commitment_digest = signed.digest
            response = _parse(convert.opening_response_from_pb, ev.response)
            if isinstance(response, OpeningResponse):
                ev.response.signature = key.sign(response.signing_root())
    vote = _parse(convert.vote_from_pb, acc)
    if not isinstance(vote, Vote):
        return
    key = _signing_key(g, vote.verifier_key)
    if key is not None and vote.evidence is not None:
        if rebind:
            vote = dataclasses.replace(
                vote,
                network_id=vote.evidence.request.network_id,
                request_digest=vote.evidence.request.digest(),
                commitment_digest=vote.evidence.signed.digest,
            )
        vote = dataclasses.replace(vote, signature=key.sign(vote.signing_root()))
        acc.CopyFrom(convert.vote_to_pb(vote))
    if vote.evidence is None:
        return
    ev = vote.evidence
    subject = Subject(
        NET,
        Work.CONFIRM,
        ev.request.digest(),
        ev.signed.digest,
        accusation_digest=vote.signing_root(),
    )
    m.order.CopyFrom(ordered(g.key, subject))


def costs_little(g: Genuine, m: pb.InferRequest) -> bool:
    """Return whether the assembler may answer ``m`` in this file's time: it is refused before
    any work, or asks for a short prompt and a few new tokens."""
    prompt = m.prompt
    if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        return True  # refused: [ASM.5]
    sampling = SamplingParams()
    if m.HasField("sampling"):
        parsed = _parse(convert.sampling_from_pb, m.sampling)
        if not isinstance(parsed, SamplingParams):
            return True  # refused: [REQ.2]
        sampling = parsed
    if len(prompt) > CHEAP_PROMPT_CHARS:
        return False
    tokens = _parse(g.net.assembler.encode_prompt, prompt)
    if tokens is None or len(tokens) + sampling.max_new_tokens > MAX_TOKENS:
        return True  # refused: too long
    return len(tokens) <= CHEAP_INFER_TOKENS and sampling.max_new_tokens <= 4 * CHEAP_NEW_TOKENS


def resign_join(m: pb.JoinRequest) -> None:
    """Sign ``m`` again with the stranger's key when it parses as the stranger's join at a
    loopback address (the assembler probes the address: nothing leaves this machine)."""
    join = _parse(convert.join_from_pb, m)
    if (
        join is not None
        and join.public_key == STRANGER.public_key
        and join.address.startswith("127.0.0.1:")
    ):
        m.signature = STRANGER.sign(join.signing_root())


def resign_leave(m: pb.LeaveRequest) -> None:
    """Sign ``m`` again with the stranger's key when it parses as the stranger's leave."""
    leave = _parse(convert.leave_from_pb, m)
    if leave is not None and leave.public_key == STRANGER.public_key:
        m.signature = STRANGER.sign(leave.signing_root())


@contextmanager
def short_openings(net: LocalNetwork) -> Iterator[None]:
    """Let ``net``'s verifiers wait at most 2 s for openings while fuzzed addresses are dialed."""
    for s in net.verifier_services:
        s.open_timeout_s = 2.0
    try:
        yield
    finally:
        for s in net.verifier_services:
            s.open_timeout_s = type(s).open_timeout_s


def genuine_payload(g: Genuine, rpc: Rpc) -> bytes:
    """Return a genuine request of ``rpc``, serialized."""
    message: Message = {
        EXECUTE: lambda: g.execute(1),
        OPEN: lambda: g.open(1),
        VERIFY: lambda: g.verify(1),
        CONFIRM: g.confirm,
        INFER: g.infer,
        JOIN: lambda: convert.join_to_pb(g.join),
        LEAVE: lambda: convert.leave_to_pb(g.leave),
    }.get(rpc, lambda: rpc.request())()
    return message.SerializeToString()


def _parses_as(cls: type[Message], payload: bytes) -> Message | None:
    try:
        return cls.FromString(payload)
    except DecodeError:
        return None


# --- (a) Arbitrary bytes, to every method


@pytest.mark.parametrize("rpc", ALL_RPCS, ids=repr)
def test_fuzz_raw_bytes(genuine, rpc):
    """Bytes that may not parse at all: ``INVALID_ARGUMENT`` or an answer, never ``INTERNAL``."""
    g = genuine

    @settings(fuzz_settings, max_examples=RAW_EXAMPLES)
    @given(
        payload=raw_requests(genuine_payload(g, rpc)),
        node=st.sampled_from(addresses(g.net, rpc.service)),
    )
    def run(payload: bytes, node: str) -> None:
        if rpc is INFER:
            parsed = _parses_as(pb.InferRequest, payload)
            assume(parsed is None or costs_little(g, parsed))
        send(node, rpc, payload)

    with short_openings(g.net):
        run()
    assert_serving(g, rpc.service)


# --- (b) Valid messages, mutated structurally (and re-signed where they still parse)


def test_fuzz_execute_mutated(genuine):
    g = genuine

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m, touched = data.draw(mutated(g.execute(data.draw(st.sampled_from([0, 1])))))
        if not _touches(touched, "order") and data.draw(st.booleans(), label="re-sign"):
            resign_execute(g, m)
        send(data.draw(st.sampled_from(g.net.executor_addresses)), EXECUTE, m.SerializeToString())

    run()
    assert_serving(g, "Executor")


def test_fuzz_open_mutated(genuine):
    g = genuine

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m, _ = data.draw(mutated(g.open(data.draw(st.sampled_from([0, 1])))))
        send(data.draw(st.sampled_from(g.net.executor_addresses)), OPEN, m.SerializeToString())

    run()
    assert_serving(g, "Executor")


def test_fuzz_verify_mutated(genuine):
    g = genuine

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m, touched = data.draw(mutated(g.verify(data.draw(st.sampled_from([0, 1])))))
        if not _touches(touched, "order") and data.draw(st.booleans(), label="re-sign"):
            commitment = data.draw(st.booleans(), label="re-sign the commitment")
            resign_verify(g, m, commitment, rebind=data.draw(st.booleans(), label="rebind"))
        send(data.draw(st.sampled_from(g.net.verifier_addresses)), VERIFY, m.SerializeToString())

    with short_openings(g.net):
        run()
    assert_serving(g, "Verifier")


def addresses_to_aim_at() -> st.SearchStrategy[str]:
    """Return ``host:port`` strings with odd hosts and ports: unicode digits (``²``, ``١``),
    signs, out of range, empty."""
    digits = st.characters(categories=["Nd", "No", "Nl"])
    ports = st.text(digits, min_size=1, max_size=6) | st.integers(-1, 70000).map(str)
    hosts = st.sampled_from(["127.0.0.1", "", "localhost", "[::1]"]) | st.text(max_size=12)
    return st.sampled_from(ODD_ADDRESSES[:-4]) | st.builds("{}:{}".format, hosts, ports)


def test_fuzz_verify_re_aimed(genuine):
    """An admitted order for the genuine commitment, aimed at any address: refused as
    ``INVALID_ARGUMENT`` when it is no ``host:port`` ([RPC.4]), else the vote the verifier
    signed, byte for byte ([VOTE.3]: nothing is dialed)."""
    g = genuine

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES)
    @given(address=addresses_to_aim_at(), node=st.sampled_from(g.net.verifier_addresses))
    def run(address: str, node: str) -> None:
        m = make_verify(g.key, g.request(1), g.signed(1), address)
        raw = call(node, VERIFY, m.SerializeToString())
        answer = answer_of(VERIFY, raw)
        assert raw == g.votes[(1, node)] or answer is grpc.StatusCode.INVALID_ARGUMENT

    run()
    assert_serving(g, "Verifier")


def test_fuzz_confirm_mutated(genuine):
    g = genuine

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m, touched = data.draw(mutated(g.confirm()))
        if not _touches(touched, "order") and data.draw(st.booleans(), label="re-sign"):
            inner = data.draw(st.booleans(), label="re-sign the evidence")
            resign_confirm(g, m, inner, rebind=data.draw(st.booleans(), label="rebind"))
        send(data.draw(st.sampled_from(g.net.verifier_addresses)), CONFIRM, m.SerializeToString())

    run()
    assert_serving(g, "Verifier")


def test_fuzz_infer_mutated(genuine):
    g = genuine

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m, _ = data.draw(mutated(g.infer()))
        assume(costs_little(g, m))
        send(g.net.assembler_address, INFER, m.SerializeToString())

    run()
    assert_serving(g, "Assembler")


@pytest.mark.parametrize("rpc", [JOIN, LEAVE], ids=repr)
def test_fuzz_join_and_leave_mutated(genuine, rpc):
    """No stranger's join or leave, however mutated, changes whom the assembler routes to."""
    g = genuine
    routed = [p.address for p in g.net.assembler.routed_executors()]
    base = convert.join_to_pb(g.join) if rpc is JOIN else convert.leave_to_pb(g.leave)

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m, touched = data.draw(mutated(base))
        if "signature" not in touched and data.draw(st.booleans(), label="re-sign"):
            (resign_join if rpc is JOIN else resign_leave)(m)
        reply = send(g.net.assembler_address, rpc, m.SerializeToString())
        assert not isinstance(reply, pb.JoinResponse) or not reply.accepted

    run()
    assert [p.address for p in g.net.assembler.routed_executors()] == routed
    assert_serving(g, "Assembler")


def forge_confirm(
    g: Genuine, num_layers: int, hidden: int, oov: bool, check: EvidenceCheck, at: int
) -> pb.ConfirmRequest:
    """Return an admitted ``Confirm`` of a ``check`` claim at layer or position ``at``, by
    verifier 0, about a commitment the liar signed with ``num_layers`` layers of ``hidden``
    values (its last token outside the vocabulary if ``oov``), every tile opened."""
    request, genuine_c = g.request(0), g.signed(0).commitment
    executor = g.net.executor_services[0].core.key
    vocab = g.net.verifier_services[0].core.model.vocab_size
    tokens = (*request.prompt_tokens, 5, 6, vocab + 5 if oov else 7)
    chunks = -(-len(tokens) // genuine_c.chunk_size)
    rng = np.random.default_rng(0)
    tiles = [TileRef(b, k) for b in range(num_layers + 1) for k in range(chunks)]
    leaves = [
        encode_tile(
            t.boundary,
            t.chunk,
            rng.standard_normal(
                (min(genuine_c.chunk_size, len(tokens) - t.chunk * genuine_c.chunk_size), hidden)
            ).astype(np.float32),
        )
        for t in tiles
    ]
    tree = ActivationTree(leaves)
    c = dataclasses.replace(
        genuine_c,
        tokens=tokens,
        num_layers=num_layers,
        hidden_size=hidden,
        merkle_root=tree.root,
        num_leaves=tree.size,
        sketch=compute_sketch(rng.standard_normal((len(tokens), 8)).astype(np.float32)),
    )
    signed = SignedCommitment(c, executor.sign(c.signing_root()))
    openings = tuple(TileOpening(t, tree.get_leaf(i), tree.prove(i)) for i, t in enumerate(tiles))
    response = OpeningResponse(NET, signed.digest, openings, Signature(b""))
    response = dataclasses.replace(response, signature=executor.sign(response.signing_root()))
    evidence = Evidence(
        check,
        request,
        signed,
        None if check is EvidenceCheck.SEQUENCE else response,
        layer=at,
        position=at,
    )
    accuser = g.net.verifier_services[0].core
    accusation = dataclasses.replace(
        g.accusation,
        verifier_key=accuser.key.public_key,
        commitment_digest=signed.digest,
        evidence=evidence,
    )
    accusation = dataclasses.replace(
        accusation, signature=accuser.key.sign(accusation.signing_root())
    )
    return make_confirm(g.key, request, signed, accusation)


CHECKS = (
    pb.CHECK_COMMITMENT,
    pb.CHECK_LENGTH,
    pb.CHECK_OPENING,
    pb.CHECK_EMBEDDING,
    pb.CHECK_LAYER,
    pb.CHECK_SAMPLER,
    pb.CHECK_EQUIVOCATION,
    pb.CHECK_SEQUENCE,
)


@st.composite
def forged_confirms(draw: st.DrawFn, g: Genuine) -> pb.ConfirmRequest:
    """Return an admitted ``Confirm`` of an accusation a committee verifier forged about a
    commitment its colluding executor signed: any claim, at any layer and position, over a
    genuine commitment with fields at the model's edges and openings cut, repeated or swapped,
    or over new tiles of any shape; every signature (executor, accuser, order) is valid."""
    model = g.net.verifier_services[0].core
    if draw(st.booleans(), label="new tiles"):  # a whole new commitment, tree and openings
        size = len(g.request(0).prompt_tokens) + 3
        return forge_confirm(
            g,
            draw(st.sampled_from([1, model.num_layers - 1, model.num_layers, 8])),
            draw(st.sampled_from([1, model.hidden_size - 1, model.hidden_size, 65])),
            draw(st.booleans()),
            draw(st.sampled_from(list(EvidenceCheck))),
            draw(st.sampled_from([0, 1, model.num_layers, model.num_layers + 1, size - 1, size])),
        )
    vote = convert.vote_to_pb(draw(st.sampled_from(g.accusations)))
    ev = vote.evidence
    c = ev.commitment.commitment
    vocab, size = model.model.vocab_size, len(c.tokens)
    ev.check = draw(st.sampled_from(CHECKS))
    ev.layer = draw(st.sampled_from([0, 1, model.num_layers, model.num_layers + 1, MAX_LAYERS]))
    ev.position = draw(st.sampled_from([0, c.prompt_len - 1, c.prompt_len, size - 1, size]))
    edits = draw(
        st.sets(
            st.sampled_from(
                ["token", "shape", "chunk", "prompt", "sketch", "openings", "response", "other"]
            ),
            max_size=2,
        )
    )
    if "token" in edits:
        at = draw(st.integers(0, size - 1))
        c.tokens[at] = draw(st.sampled_from([vocab - 1, vocab, MAX_VOCAB - 1]))
    if "shape" in edits:  # the leaf count follows, so the commitment still parses
        c.num_layers = draw(st.sampled_from([1, model.num_layers - 1, model.num_layers + 1]))
        c.hidden_size = draw(st.sampled_from([1, model.hidden_size - 1, model.hidden_size + 1]))
        c.num_leaves = (c.num_layers + 1) * -(-size // c.chunk_size)
    if "chunk" in edits:
        c.chunk_size = draw(st.sampled_from([1, 8, 32, MAX_TOKENS]))
        c.num_leaves = (c.num_layers + 1) * -(-size // c.chunk_size)
    if "prompt" in edits:
        c.prompt_len = draw(st.sampled_from([1, size - 1, size]))
    if "sketch" in edits:
        c.sketch[0] = draw(_bytes_value(c.sketch[0]))
    if "openings" in edits and ev.response.openings:
        openings = ev.response.openings
        i, j = (draw(st.integers(0, len(openings) - 1)) for _ in range(2))
        op = draw(st.sampled_from(["drop", "repeat", "swap-leaves"]))
        if op == "drop":
            del openings[i]
        elif op == "repeat":
            openings.add().CopyFrom(openings[i])
        else:
            openings[i].leaf, openings[j].leaf = openings[j].leaf, openings[i].leaf
    if "response" in edits:
        ev.ClearField("response")
    if "other" in edits:  # a second root for the same request: equivocation, if it differs
        ev.other.CopyFrom(ev.commitment)
        ev.other.commitment.merkle_root = draw(_bytes_value(c.merkle_root))
    m = pb.ConfirmRequest(accusation=vote)
    resign_confirm(g, m, inner=True, rebind=True)
    return m


def test_fuzz_confirm_of_forged_evidence(genuine):
    """A byzantine verifier and a colluding executor sign whatever evidence they like: an
    honest verifier answers a finding or a documented status, never ``INTERNAL``."""
    g = genuine

    @settings(fuzz_settings, max_examples=FORGED_EXAMPLES)
    @given(m=forged_confirms(g), node=st.sampled_from(g.net.verifier_addresses))
    def run(m: pb.ConfirmRequest, node: str) -> None:
        send(node, CONFIRM, m.SerializeToString())

    run()
    assert_serving(g, "Verifier")


@st.composite
def cheap_requests(draw: st.DrawFn, g: Genuine) -> InferenceRequest:
    """Return a valid request with its policy and sampling at their limits, and a short prompt
    and output: what an admitted assembler may order."""
    vocab = g.net.verifier_services[0].core.model.vocab_size
    token = st.sampled_from([0, 1, 2, vocab - 1]) | st.integers(0, vocab - 1)
    sampling = SamplingParams(
        temperature=draw(st.sampled_from([0.0, 5e-324, 1e-3, 1.0, 100.0])),
        top_k=draw(st.sampled_from([0, 1, 2, vocab - 1, vocab, MAX_VOCAB])),
        top_p=draw(st.sampled_from([5e-324, 1e-3, 0.5, 1.0])),
        max_new_tokens=draw(st.integers(1, CHEAP_NEW_TOKENS)),
        stop_at_eos=draw(st.booleans()),
    )
    return dataclasses.replace(
        g.request(1),
        request_id=draw(st.binary(min_size=16, max_size=16)),
        epoch=draw(st.sampled_from([0, 1, MAX_EPOCH])),
        prompt_tokens=tuple(draw(st.lists(token, min_size=1, max_size=24))),
        sampling=sampling,
        f=draw(st.sampled_from([0, 1, MAX_F])),
        layers_per_verifier=draw(st.sampled_from([1, 2, 4, 5, MAX_LAYERS])),
        positions_per_verifier=draw(st.sampled_from([0, 1, 8, MAX_TOKENS])),
        sequence_check_ppm=draw(st.sampled_from([0, 1, PPM])),
    )


def test_fuzz_execute_then_verify_at_the_limits(genuine):
    """Valid requests with policy and sampling at their limits are executed and verified:
    a signed commitment, then a signed vote; the honest executor's is never a REJECT."""
    g = genuine

    @settings(fuzz_settings, max_examples=MUTATION_EXAMPLES // 2)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        request = data.draw(cheap_requests(g))
        i = data.draw(st.sampled_from([0, 1]), label="executor")
        executor = g.net.executor_addresses[i]
        signed = send(executor, EXECUTE, make_execute(g.key, request).SerializeToString())
        assert isinstance(signed, SignedCommitment)
        verifier = data.draw(st.sampled_from(g.net.verifier_addresses))
        ask = make_verify(g.key, request, signed, executor)
        vote = send(verifier, VERIFY, ask.SerializeToString())
        assert isinstance(vote, Vote) and vote.commitment_digest == signed.digest
        if i == 1:
            assert vote.verdict is not Verdict.REJECT, vote.reason

    run()
    assert_serving(g, "Executor")
    assert_serving(g, "Verifier")


# --- (c) Replays: a genuine call sent again, to the same node and to others


@pytest.mark.parametrize("rpc", [EXECUTE, OPEN, VERIFY, CONFIRM, JOIN, LEAVE], ids=repr)
def test_fuzz_replays(genuine, rpc):
    """A replayed call asks for work already done: the same node answers as it did, byte for
    byte ([COMMIT.5], [VOTE.3], [ADMIT.1]); another node answers on its own."""
    g = genuine

    @settings(fuzz_settings, max_examples=REPLAY_EXAMPLES)
    @given(
        i=st.sampled_from([0, 1]),
        nodes=st.lists(st.sampled_from(addresses(g.net, rpc.service)), min_size=1, max_size=4),
    )
    def run(i: int, nodes: list[str]) -> None:
        message: Message = {
            EXECUTE: lambda: g.execute(i),
            OPEN: lambda: g.open(i),
            VERIFY: lambda: g.verify(i),
            CONFIRM: g.confirm,
            JOIN: lambda: convert.join_to_pb(g.join),
            LEAVE: lambda: convert.leave_to_pb(g.leave),
        }[rpc]()
        payload = message.SerializeToString()
        first: dict[str, bytes | grpc.StatusCode] = {}
        for node in nodes + nodes:
            raw = call(node, rpc, payload)
            answer = answer_of(rpc, raw)
            seen = raw if isinstance(raw, bytes) else answer
            assert first.setdefault(node, seen) == seen
            if rpc is EXECUTE:
                assert isinstance(answer, SignedCommitment)
                assert answer.commitment.request_digest == g.request(i).digest()
                assert node != g.executor(i) or raw == g.commitments[i]
            elif rpc is VERIFY:
                assert raw == g.votes[(i, node)]
            elif rpc is OPEN:
                if node == g.executor(i):
                    assert isinstance(answer, OpeningResponse)
                else:
                    assert answer is grpc.StatusCode.NOT_FOUND
            elif rpc is CONFIRM:
                assert not isinstance(answer, grpc.StatusCode)
            else:
                assert isinstance(answer, pb.JoinResponse) and not answer.accepted

    run()
    assert_serving(g, rpc.service)


# --- (d) Orders by a stranger, or by the admitted assembler over another subject


def genuine_subject(g: Genuine, rpc: Rpc, i: int) -> Subject:
    """Return what the genuine order of ``rpc`` for attempt ``i`` is about."""
    if rpc is EXECUTE:
        return Subject(NET, Work.EXECUTE, g.request(i).digest())
    if rpc is VERIFY:
        return Subject(NET, Work.VERIFY, g.request(i).digest(), g.signed(i).digest, g.executor(i))
    ev = g.accusation.evidence
    assert ev is not None
    return Subject(
        NET,
        Work.CONFIRM,
        ev.request.digest(),
        ev.signed.digest,
        accusation_digest=g.accusation.signing_root(),
    )


@st.composite
def other_subjects(draw: st.DrawFn, g: Genuine, subject: Subject) -> Subject:
    """Return ``subject`` with one to three of its parts replaced."""
    digests = [NO_DIGEST, *(g.request(i).digest() for i in (0, 1))]
    digests += [g.signed(i).digest for i in (0, 1)] + [g.accusation.signing_root()]
    digest = st.sampled_from(digests) | st.binary(min_size=32, max_size=32)
    parts = {
        "network_id": st.sampled_from([NET + "x", "é" * 128, "verihive-local ", "\x00"]),
        "work": st.sampled_from(list(Work)),
        "request_digest": digest,
        "commitment_digest": digest,
        "executor_address": st.sampled_from(
            ["", *g.net.executor_addresses, *ODD_ADDRESSES[:-4], "x" * MAX_STRING]
        ),
        "accusation_digest": digest,
    }
    names = draw(st.sets(st.sampled_from(sorted(parts)), min_size=1, max_size=3))
    return dataclasses.replace(subject, **{n: draw(parts[n]) for n in names})


@pytest.mark.parametrize("rpc", [EXECUTE, VERIFY, CONFIRM], ids=repr)
def test_fuzz_orders(genuine, rpc):
    """[ADMIT.2]: an order by a key the network does not admit is ``PERMISSION_DENIED``; the
    admitted key's order over anything but the call's own contents is ``UNAUTHENTICATED``."""
    g = genuine

    @settings(fuzz_settings, max_examples=ORDER_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        i = data.draw(st.sampled_from([0, 1]))
        subject = genuine_subject(g, rpc, i)
        message: pb.ExecuteRequest | pb.VerifyRequest | pb.ConfirmRequest = {
            EXECUTE: lambda: g.execute(i),
            VERIFY: lambda: g.verify(i),
            CONFIRM: g.confirm,
        }[rpc]()
        if data.draw(st.booleans(), label="stranger"):
            seed = data.draw(st.binary(min_size=32, max_size=32))
            key = SigningKey.from_seed(seed)
            other = data.draw(st.just(subject) | other_subjects(g, subject))
            expected = grpc.StatusCode.PERMISSION_DENIED
        else:
            key = g.key
            other = data.draw(other_subjects(g, subject))
            expected = grpc.StatusCode.UNAUTHENTICATED
        message.order.CopyFrom(ordered(key, other))
        node = data.draw(st.sampled_from(addresses(g.net, rpc.service)))
        answer = send(node, rpc, message.SerializeToString())
        if key is g.key and other == subject:
            assert not isinstance(answer, grpc.StatusCode)
        else:
            assert answer is expected

    run()
    assert_serving(g, rpc.service)


# --- Findings


def test_invalid_verify_to_a_port_of_unicode_digits(genuine):
    """Finding: ``check_address`` took ``"²"`` for a port (``str.isdigit``) and ``int`` then
    raised: an ordered ``Verify`` naming such an address was answered ``INTERNAL``."""
    g = genuine
    for port in ("²", "١٢", "𝟗"):
        message = make_verify(g.key, g.request(1), g.signed(1), f"127.0.0.1:{port}")
        answer = send(g.net.verifier_addresses[0], VERIFY, message.SerializeToString())
        assert answer is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ProtocolError):
        check_address("127.0.0.1:²")


@pytest.mark.parametrize(
    ("layers", "hidden", "oov", "check", "at"),
    [
        (8, 64, False, EvidenceCheck.LAYER, 6),
        (4, 65, False, EvidenceCheck.LAYER, 1),
        (4, 65, False, EvidenceCheck.EMBEDDING, 0),
        (4, 65, False, EvidenceCheck.SAMPLER, 0),
        (4, 64, True, EvidenceCheck.EMBEDDING, 0),
        (4, 64, True, EvidenceCheck.SEQUENCE, 0),
    ],
    ids=["layers", "hidden-layer", "hidden-embedding", "hidden-sampler", "vocab", "vocab-seq"],
)
def test_invalid_confirm_of_evidence_the_model_cannot_rerun(
    genuine, layers, hidden, oov, check, at
):
    """Finding: a claim that needs the model, about a commitment whose layers, hidden size or
    tokens do not fit it, made the audit index the model out of its shape (``IndexError``,
    ``ValueError``, a tensor size mismatch): ``Confirm`` answered ``INTERNAL``. It is not
    proven now: an honest accuser makes a commitment claim there. [EVID.3]"""
    g = genuine
    assert g.net.verifier_services[0].core.num_layers == 4
    if check is EvidenceCheck.SAMPLER:
        at = len(g.request(0).prompt_tokens) + 1
    message = forge_confirm(g, layers, hidden, oov, check, at)
    conf = send(g.net.verifier_addresses[1], CONFIRM, message.SerializeToString())
    assert isinstance(conf, Confirmation)
    assert conf.finding is Finding.REFUTE and "a commitment claim" in conf.detail


# --- After the fuzzing: the genuine records stand


def test_fuzzing_leaves_the_genuine_records_unchanged(genuine):
    """The executors answer the genuine ``Execute`` and ``Open`` with the commitments they
    signed, the verifiers the genuine ``Verify`` with their first votes and the genuine
    ``Confirm`` with their first findings, byte for byte; the assembler still certifies."""
    g = genuine
    for i in (0, 1):
        assert call(g.executor(i), EXECUTE, g.execute(i).SerializeToString()) == g.commitments[i]
        response = send(g.executor(i), OPEN, g.open(i).SerializeToString())
        assert isinstance(response, OpeningResponse)
        assert response.commitment == g.signed(i)
    for (i, address), vote in g.votes.items():
        assert call(address, VERIFY, g.verify(i).SerializeToString()) == vote
    for address, conf in g.confirmations.items():
        assert call(address, CONFIRM, g.confirm().SerializeToString()) == conf
    for service in ("Executor", "Verifier", "Assembler"):
        assert_serving(g, service)

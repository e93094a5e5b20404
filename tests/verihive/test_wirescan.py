"""Requests and replies bounded before they are parsed, over real gRPC. [RPC.6]

The attacks of the [hardening] finding "decoding before bounding": before the pre-scan, a
20 MB ``Confirm`` of 10^7 empty sampler checks took 24 s and 1.3 GiB on the node before its
INVALID_ARGUMENT; now each is refused after reading at most a limit's worth of items, and the
same node serves a normal request right after.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from bft.errors import Malformed
from bft.limits import MAX_OPENINGS
from bft.messages import SamplingParams, Verdict
from proto import convert
from proto import verihive_pb2 as pb
from proto.wirescan import encode_varint
from tests import maximal
from tests.support import run_together
from verihive.assembler import AttemptResult
from verihive.localnet import LocalNetConfig, LocalNetwork, start_local_network
from verihive.rpc import (
    MAX_MESSAGE_BYTES,
    MAX_OPEN_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    call_bounded,
    make_channel,
)
from verihive.work import make_verify

CLEAR_REFS = Path("/proc/self/clear_refs")
VERIFY_BYTES = MAX_REQUEST_BYTES["/verihive.v1.Verifier/Verify"]


def delimited(tag: int, payload: bytes) -> bytes:
    """Return the length-delimited field of key byte ``tag`` holding ``payload``."""
    return bytes([tag]) + encode_varint(len(payload)) + payload


@pytest.fixture(scope="module")
def net(tiny) -> Iterator[LocalNetwork]:
    with start_local_network(tiny, LocalNetConfig()) as n:
        yield n


@pytest.fixture(scope="module")
def served(net) -> AttemptResult:
    """A certified attempt: its request is a valid one to build attacks around."""
    _, attempts = net.assembler.infer("Hello?", SamplingParams(max_new_tokens=4))
    assert attempts[-1].tally is not None
    return attempts[-1]


def raw_call(address: str, method: str, payload: bytes) -> grpc.RpcError:
    """Send ``payload`` as the request of ``method``; return the error it must end with."""
    channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    try:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(method)(payload, timeout=60)
        return info.value
    finally:
        channel.close()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def peak_growth_bytes(run: Callable[[], object]) -> int | None:
    """Return how far this process's resident memory peaked above where it stood before
    ``run()`` (the nodes run in this process); ``None`` where Linux cannot say."""
    try:
        CLEAR_REFS.write_text("5")  # resets the peak (VmHWM) to the current size
        before = _status_kib("VmRSS")
    except (OSError, LookupError):
        run()
        return None
    run()
    return (_status_kib("VmHWM") - before) * 1024


def confirm_of(vote: bytes) -> bytes:
    """Return a ``ConfirmRequest`` accusing with the wire bytes ``vote``."""
    return delimited(0x1A, b"\x28\x02" + vote)  # accusation = 3; verdict REJECT


def tokens(n: int) -> bytes:
    """Return a ``SignedCommitment`` whose commitment holds ``n`` zero tokens (packed)."""
    return delimited(0x0A, delimited(0x2A, bytes(n)))


ATTACKS: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    # name: method, request bytes (from a valid inference request), what the refusal names
    "confirm-1e7-sampler-checks": (
        "/verihive.v1.Verifier/Confirm",
        lambda _: confirm_of(b"\x5a\x00" * 10**7),
        "Vote.sampler_checks: more than 8192 items",
    ),
    "confirm-3e7-layer-check-chunks": (
        "/verihive.v1.Verifier/Confirm",
        lambda _: confirm_of(delimited(0x3A, delimited(0x12, bytes(3 * 10**7)))),
        "LayerCheck.chunks: more than 8192 items",
    ),
    "verify-1e7-commitment-tokens": (
        "/verihive.v1.Verifier/Verify",
        lambda request: delimited(0x0A, request) + delimited(0x12, tokens(10**7)),
        rf"VerifyRequest: \d+ bytes, more than {VERIFY_BYTES}$",
    ),
    "verify-1e5-commitment-tokens": (  # within the byte limit: the scan refuses it
        "/verihive.v1.Verifier/Verify",
        lambda request: delimited(0x0A, request) + delimited(0x12, tokens(10**5)),
        "Commitment.tokens: more than 8192 items",
    ),
    "confirm-1e7-evidence-commitment-tokens": (
        "/verihive.v1.Verifier/Confirm",
        lambda _: confirm_of(delimited(0x6A, delimited(0x1A, tokens(10**7)))),
        "Commitment.tokens: more than 8192 items",
    ),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_invalid_oversized_counts_refused_before_parsing(net, served, name):
    method, build, needle = ATTACKS[name]
    payload = build(convert.request_to_pb(served.tally.request).SerializeToString())
    errors: list[grpc.RpcError] = []
    growth = peak_growth_bytes(
        lambda: errors.append(raw_call(net.verifier_addresses[0], method, payload))
    )
    assert errors[0].code() is grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(needle, errors[0].details() or ""), errors[0].details()
    if growth is not None:
        # The request's bytes in flight (client and server side, a few copies: measured 0 to
        # 3 times its size) and nothing per item; before the scan, the first three attacks
        # took 15 to 70 times their size (docs/decisions.md, [hardening]).
        assert growth < 6 * len(payload) + (64 << 20), f"peak grew by {growth >> 20} MiB"
    # The node keeps serving: a normal request certifies right after.
    _, attempts = net.assembler.infer("Hello again?", SamplingParams(max_new_tokens=4))
    assert attempts[-1].tally is not None and attempts[-1].outcome.name == "CERTIFIED"


def test_four_attacks_at_once_leave_the_node_serving(net):
    method, build, needle = ATTACKS["confirm-1e7-sampler-checks"]
    payload = build(b"")
    errors: list[grpc.RpcError] = []

    def attack() -> None:
        errors.append(raw_call(net.verifier_addresses[0], method, payload))

    growth = peak_growth_bytes(lambda: run_together([attack] * 4))
    assert [e.code() for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT] * 4
    assert all(needle in (e.details() or "") for e in errors)
    if growth is not None:
        assert growth < 4 * (6 * len(payload)) + (64 << 20), f"peak grew by {growth >> 20} MiB"
    _, attempts = net.assembler.infer("Hello at last?", SamplingParams(max_new_tokens=4))
    assert attempts[-1].outcome.name == "CERTIFIED"


# --- Byte limits per method


def test_every_method_has_a_byte_limit():
    methods = {
        f"/{service.full_name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == set(MAX_REQUEST_BYTES)


@pytest.mark.parametrize("method", sorted(MAX_REQUEST_BYTES))
def test_maximal_legal_requests_fit_their_method(method):
    # Less than a third of the limit: room for fields a later version adds.
    size = maximal.requests()[method].ByteSize()
    assert 3 * size < MAX_REQUEST_BYTES[method], f"{method}: {size} bytes"


def test_no_request_limit_above_what_the_transport_takes():
    assert max(MAX_REQUEST_BYTES.values()) == MAX_OPEN_MESSAGE_BYTES
    assert MAX_REQUEST_BYTES["/verihive.v1.Executor/Execute"] < MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("address", "method"),
    [
        ("executor", "/verihive.v1.Executor/Execute"),
        ("executor", "/verihive.v1.Executor/GetInfo"),
        ("assembler", "/verihive.v1.Assembler/Join"),
    ],
)
def test_invalid_request_over_its_method_byte_limit(net, address, method):
    where = net.executor_addresses[0] if address == "executor" else net.assembler_address
    limit = MAX_REQUEST_BYTES[method]
    payload = delimited(0xFA, bytes(limit))  # an unknown field 31 as large as the limit
    error = raw_call(where, method, payload)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than {limit}" in (error.details() or "")
    channel = make_channel(where)
    try:  # still serving
        service = method.split("/")[1]
        info = channel.unary_unary(f"/{service}/GetInfo")(b"", timeout=30)
        assert pb.NodeInfo.FromString(info).network_id
    finally:
        channel.close()


# --- Replies: the verifier's Open calls, the assembler's Verify and Confirm calls


@pytest.fixture
def fake_executor() -> Iterator[tuple[str, list[bytes]]]:
    """Serve ``Open`` with whatever bytes the test puts in the list (the last ones)."""
    replies: list[bytes] = [b""]

    def open_(request: bytes, context: grpc.ServicerContext) -> bytes:
        return replies[-1]

    handler = grpc.method_handlers_generic_handler(
        "verihive.v1.Executor", {"Open": grpc.unary_unary_rpc_method_handler(open_)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_send_message_length", MAX_OPEN_MESSAGE_BYTES)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", replies
    finally:
        server.stop(None)


def test_an_open_reply_over_its_counts_is_no_answer(net, served, fake_executor):
    address, replies = fake_executor
    replies.append(b"\x1a\x00" * (MAX_OPENINGS + 1))  # 65537 empty openings: 131 kB
    request = dataclasses.replace(served.tally.request, request_id=b"\x6b" * 16)
    signed = net.executor_services[1].core.on_execute(request)
    message = make_verify(net.assembler.key, request, signed, address)
    channel = make_channel(net.verifier_addresses[1], MAX_OPEN_MESSAGE_BYTES)
    try:
        reply = call_bounded(
            channel, "/verihive.v1.Verifier/Verify", message, pb.Vote, 120, MAX_OPEN_MESSAGE_BYTES
        )
    finally:
        channel.close()
    vote = convert.vote_from_pb(reply)
    assert vote.verdict is Verdict.UNAVAILABLE  # [VERIFY.5]
    assert "OpenResponse.openings: more than 65536 items" in vote.reason


def test_call_bounded_parses_a_good_reply_and_refuses_a_bad_one(fake_executor):
    address, replies = fake_executor
    good = pb.OpenResponse(network_id="n", openings=[pb.TileOpening()] * 3)
    replies.append(good.SerializeToString())
    channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    try:
        ask = pb.OpenRequest()
        method = "/verihive.v1.Executor/Open"
        assert call_bounded(channel, method, ask, pb.OpenResponse, 30, 1 << 20) == good
        replies.append(b"\x1a\x00" * (MAX_OPENINGS + 1))
        with pytest.raises(Malformed, match=r"OpenResponse\.openings: more than 65536 items"):
            call_bounded(channel, method, ask, pb.OpenResponse, 30, 1 << 20)
        with pytest.raises(Malformed, match=r"OpenResponse: \d+ bytes, more than 1000"):
            call_bounded(channel, method, ask, pb.OpenResponse, 30, 1000)
        replies.append(b"\xff\xff")
        with pytest.raises(Malformed, match="malformed wire data"):
            call_bounded(channel, method, ask, pb.OpenResponse, 30, 1 << 20)
    finally:
        channel.close()

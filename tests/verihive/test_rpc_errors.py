"""Bad input over a real loopback socket gets a clear status, and the node keeps serving. [RPC.1]"""

from __future__ import annotations

import contextlib
import os

import grpc
import pytest

from bft.assembler import AssemblerPolicy, compute_request
from bft.crypto import SigningKey
from bft.errors import CannotJudge, Malformed, ProtocolError, Reject, Unavailable
from bft.messages import SamplingParams, SignedCommitment
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive.localnet import LocalNetConfig, start_local_network
from verihive.rpc import MAX_MESSAGE_BYTES, compute_status, make_channel
from verihive.work import make_execute, make_verify


@pytest.fixture(scope="module")
def net(tiny):
    with start_local_network(tiny, LocalNetConfig()) as n:
        yield n


@pytest.fixture(scope="module")
def good_request(net, tiny):
    vset = net.assembler.validator_set.vset
    return compute_request(
        AssemblerPolicy(net.assembler.policy.network_id),
        os.urandom(16),
        tiny.model_id,
        (1, 9690, 198, 2683),
        SamplingParams(max_new_tokens=4),
        vset,
    )


def _raw_call(address: str, method: str, payload: bytes) -> grpc.RpcError | bytes:
    channel = make_channel(address)
    try:
        call = channel.unary_unary(method)  # bytes in, bytes out
        return call(payload, timeout=30)
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()


def _execute(net, request_pb: pb.InferenceRequest) -> pb.ExecuteResponse:
    """Send ``Execute`` as the network's assembler would: ordered, when the request parses."""
    message = pb.ExecuteRequest(request=request_pb)
    with contextlib.suppress(ProtocolError):  # malformed: refused before its order is read
        message = make_execute(net.assembler.key, convert.request_from_pb(request_pb))
    channel = make_channel(net.executor_addresses[0])
    try:
        return pb_grpc.ExecutorStub(channel).Execute(message, timeout=60)
    finally:
        channel.close()


def _signed(message: pb.SignedCommitment) -> SignedCommitment:
    return convert.commitment_from_pb(message)


def _code(result: grpc.RpcError | bytes) -> grpc.StatusCode:
    assert isinstance(result, grpc.RpcError), "call unexpectedly succeeded"
    return result.code()


def test_invalid_garbage_bytes_then_good_request(net, good_request):
    for method in (
        "/verihive.v1.Executor/Execute",
        "/verihive.v1.Verifier/Verify",
        "/verihive.v1.Executor/Open",
        "/verihive.v1.Assembler/Infer",
    ):
        address = {
            "Executor": net.executor_addresses[0],
            "Verifier": net.verifier_addresses[0],
            "Assembler": net.assembler_address,
        }[method.split(".")[2].split("/")[0]]
        result = _raw_call(address, method, b"\xff\xff\xff\xff garbage")
        assert _code(result) == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in result.details()
    reply = _execute(net, convert.request_to_pb(good_request))
    assert reply.commitment.commitment.tokens[:4] == [1, 9690, 198, 2683]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("request_id", b"short", "request_id"),
        ("model_id", b"\x00" * 31, "model_id"),
        ("prompt_tokens", [], "empty prompt"),
        ("prompt_tokens", [1 << 25], "token id"),
        ("f", 99, "f must"),
    ],
)
def test_invalid_request_fields(net, good_request, field, value, needle):
    m = convert.request_to_pb(good_request)
    if field == "prompt_tokens":
        del m.prompt_tokens[:]
        m.prompt_tokens.extend(value)
    else:
        setattr(m, field, value)
    with pytest.raises(grpc.RpcError) as info:
        _execute(net, m)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()


def test_invalid_nan_temperature(net, good_request):
    m = convert.request_to_pb(good_request)
    m.sampling.temperature = float("nan")
    with pytest.raises(grpc.RpcError) as info:
        _execute(net, m)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_oversized_message(net):
    result = _raw_call(
        net.executor_addresses[0],
        "/verihive.v1.Executor/Execute",
        b"\x00" * (MAX_MESSAGE_BYTES + 1024),
    )
    assert _code(result) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_invalid_unknown_commitment_is_not_found(net):
    channel = make_channel(net.executor_addresses[0])
    try:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ExecutorStub(channel).Open(
                pb.OpenRequest(commitment_digest=b"\x01" * 32, tiles=[pb.TileRef()]), timeout=10
            )
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_invalid_commitment_signature_is_unauthenticated(net, good_request):
    reply = _execute(net, convert.request_to_pb(good_request))
    forged = pb.SignedCommitment()
    forged.CopyFrom(reply.commitment)
    forged.signature = bytes(64)
    channel = make_channel(net.verifier_addresses[0])
    try:
        stub = pb_grpc.VerifierStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Verify(
                make_verify(
                    net.assembler.key,
                    good_request,
                    _signed(forged),
                    net.executor_addresses[0],
                ),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The verifier keeps serving: the genuine commitment gets a real ACCEPT.
        vote = stub.Verify(
            make_verify(
                net.assembler.key,
                good_request,
                _signed(reply.commitment),
                net.executor_addresses[0],
            ),
            timeout=30,
        )
    finally:
        channel.close()
    assert vote.verdict == pb.ACCEPT


def test_invalid_commitment_from_stranger_key(net, good_request):
    reply = _execute(net, convert.request_to_pb(good_request))
    signed = convert.commitment_from_pb(reply.commitment)
    stranger = SigningKey.generate()
    from dataclasses import replace

    c = replace(signed.commitment, executor_key=stranger.public_key)
    resigned = type(signed)(c, stranger.sign(c.signing_root()))
    channel = make_channel(net.verifier_addresses[1])
    try:
        vote = pb_grpc.VerifierStub(channel).Verify(
            make_verify(
                net.assembler.key,
                good_request,
                _signed(convert.commitment_to_pb(resigned)),
                net.executor_addresses[0],
            ),
            timeout=30,
        )
    finally:
        channel.close()
    # The executor at that address holds no such commitment: openings are not served.
    assert vote.verdict == pb.UNAVAILABLE


def test_invalid_executor_address(net, good_request):
    reply = _execute(net, convert.request_to_pb(good_request))
    channel = make_channel(net.verifier_addresses[0])
    try:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.VerifierStub(channel).Verify(
                make_verify(
                    net.assembler.key,
                    good_request,
                    _signed(reply.commitment),
                    "no-port",
                ),
                timeout=30,
            )
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_empty_prompt_to_assembler(net):
    channel = make_channel(net.assembler_address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.AssemblerStub(channel).Infer(pb.InferRequest(prompt="   "), timeout=30)
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CannotJudge("no model for the claim"), grpc.StatusCode.UNAVAILABLE),
        (Unavailable("not ready"), grpc.StatusCode.UNAVAILABLE),
        (Reject("bad root"), grpc.StatusCode.FAILED_PRECONDITION),
        (Malformed("bad field"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_status_of_protocol_errors(error, code):
    # [RPC.1]: a node that cannot judge a claim abstains (the caller asks another); it is
    # neither the caller's fault nor our bug (INTERNAL).
    assert compute_status(error) is code

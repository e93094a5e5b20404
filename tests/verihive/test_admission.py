"""Admission before work, checks in a fixed order and bounded work per peer, over real
loopback sockets. [ADMIT.1], [ADMIT.2], [RPC.7]

Executors and verifiers work only on orders signed by an assembler their network admits; the
order and every signature are checked before any journal, cache or model work, and a verifier
dials only the executor address the assembler signed.
"""

from __future__ import annotations

import dataclasses
import threading

import grpc
import pytest

from bft.crypto import SigningKey
from bft.messages import Verdict, Vote
from proto import convert
from proto import verihive_pb2 as pb
from simnet.abuse import Sink
from tests.verihive.conftest import call, refused
from verihive.services import MAX_CHANNELS, MAX_VERIFIES_PER_EXECUTOR
from verihive.work import make_confirm, make_execute, make_verify

STRANGER = SigningKey.from_seed(b"\x5e" * 32)


def test_invalid_verify_ordered_by_a_stranger_dials_nobody(net, attempts):
    """Finding 1: a stranger's Verify pointed at a socket that never answers used to hold a
    worker for the whole openings deadline; now it is refused before anything is dialed."""
    _, served = attempts
    listener = Sink()
    service = net.verifier_services[1]
    votes_before = dict(service.activity.to_pb(pb.NodeInfo()).counts)
    try:
        message = make_verify(STRANGER, served.tally.request, served.tally.signed, listener.address)
        error = refused(net.verifier_addresses[1], "Verifier", "Verify", message)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "does not admit" in (error.details() or "")
        assert listener.accepted == []  # never dialed
    finally:
        listener.close()
    assert dict(service.activity.to_pb(pb.NodeInfo()).counts) == votes_before  # no vote


def test_invalid_verify_without_an_order(net, attempts):
    _, served = attempts
    message = make_verify(
        net.assembler.key, served.tally.request, served.tally.signed, served.executor.address
    )
    message.ClearField("order")
    error = refused(net.verifier_addresses[0], "Verifier", "Verify", message)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "needs an order" in (error.details() or "")


def test_invalid_order_moved_to_another_executor_address(net, attempts):
    """An admitted order cannot be re-aimed: the address is part of what the assembler signed."""
    _, served = attempts
    listener = Sink()
    try:
        message = make_verify(
            net.assembler.key, served.tally.request, served.tally.signed, served.executor.address
        )
        message.executor_address = listener.address
        error = refused(net.verifier_addresses[2], "Verifier", "Verify", message)
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert listener.accepted == []
    finally:
        listener.close()


def test_invalid_execute_ordered_by_a_stranger(net, attempts):
    _, served = attempts
    service = net.executor_services[1]
    before = dict(service.activity.to_pb(pb.NodeInfo()).counts)
    request = dataclasses.replace(served.tally.request, request_id=b"\x71" * 16)
    error = refused(
        net.executor_addresses[1], "Executor", "Execute", make_execute(STRANGER, request)
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert dict(service.activity.to_pb(pb.NodeInfo()).counts) == before  # nothing executed
    # The admitted assembler's order for the same request is served.
    reply = call(
        net.executor_addresses[1], "Executor", "Execute", make_execute(net.assembler.key, request)
    )
    assert (
        convert.commitment_from_pb(reply.commitment).commitment.request_digest == request.digest()
    )


def test_invalid_confirm_ordered_by_a_stranger(net, attempts):
    caught, _ = attempts
    assert caught.tally is not None
    acc: Vote = next(v for v in caught.tally.votes if v.verdict is Verdict.REJECT)
    assert acc.evidence is not None
    ev = acc.evidence
    message = make_confirm(STRANGER, ev.request, ev.signed, acc)
    error = refused(net.verifier_addresses[3], "Verifier", "Confirm", message)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    good = make_confirm(net.assembler.key, ev.request, ev.signed, acc)
    assert call(net.verifier_addresses[3], "Verifier", "Confirm", good)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda sig: bytes(64), grpc.StatusCode.UNAUTHENTICATED),
        (lambda sig: bytes([sig[0] ^ 1]) + sig[1:], grpc.StatusCode.UNAUTHENTICATED),
        (lambda sig: sig[:63], grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["zeroed", "flipped", "short"],
)
def test_invalid_commitment_signature_is_refused_even_when_a_vote_is_cached(
    net, attempts, change, code
):
    """Finding 4: a repeat with the commitment's signature zeroed, flipped or cut used to get
    the cached ACCEPT; the signature is now checked before any cache or journal lookup."""
    _, served = attempts
    tally = served.tally
    member = next(
        i
        for i, s in enumerate(net.verifier_services)
        if s.core.key.public_key in {v.verifier_key for v in tally.votes}
    )
    address = net.verifier_addresses[member]
    good = make_verify(net.assembler.key, tally.request, tally.signed, served.executor.address)
    cached = call(address, "Verifier", "Verify", good)  # the vote it holds for this commitment
    forged = pb.VerifyRequest()
    forged.CopyFrom(good)
    forged.commitment.signature = change(bytes(good.commitment.signature))
    assert refused(address, "Verifier", "Verify", forged).code() is code
    again = call(address, "Verifier", "Verify", good)
    assert again.SerializeToString() == cached.SerializeToString()


def test_a_stalled_executor_costs_a_few_slots_never_the_node(net, attempts):
    """[RPC.7]: an admitted executor whose openings never come (a joined stranger stalling on
    purpose) holds at most MAX_VERIFIES_PER_EXECUTOR of a verifier's slots; more calls for it
    are refused at once, and the verifier keeps answering cheap calls and verifying others."""
    _, served = attempts
    tally = served.tally
    listener = Sink()
    service = net.verifier_services[2]
    service.open_timeout_s = 5.0
    address = net.verifier_addresses[2]
    outcomes: list[object] = []
    try:

        def stalled(i: int) -> None:
            request = dataclasses.replace(tally.request, request_id=bytes([0x40 + i]) * 16)
            signed = net.executor_services[1].core.on_execute(request)
            message = make_verify(net.assembler.key, request, signed, listener.address)
            try:
                outcomes.append(call(address, "Verifier", "Verify", message))
            except grpc.RpcError as exc:
                outcomes.append(exc)

        stalls = 2 * MAX_VERIFIES_PER_EXECUTOR
        threads = [threading.Thread(target=stalled, args=(i,)) for i in range(stalls)]
        for t in threads:
            t.start()
        while (
            sum(isinstance(o, grpc.RpcError) for o in outcomes) < stalls - MAX_VERIFIES_PER_EXECUTOR
        ):
            threading.Event().wait(0.01)  # the refusals come at once; the rest wait on the listener
        busy = [o for o in outcomes if isinstance(o, grpc.RpcError)]
        assert all(
            e.code() is grpc.StatusCode.UNAVAILABLE and "busy" in (e.details() or "") for e in busy
        )
        # While the stalled ones wait: a cheap call and a real verification are served.
        assert call(address, "Verifier", "GetInfo", pb.NodeInfoRequest())
        good = make_verify(net.assembler.key, tally.request, tally.signed, served.executor.address)
        vote = convert.vote_from_pb(call(address, "Verifier", "Verify", good))
        assert vote.verdict is Verdict.ACCEPT  # the honest executor's commitment
        assert len(outcomes) == stalls - MAX_VERIFIES_PER_EXECUTOR  # the others still wait
        for t in threads:
            t.join()
        stalled_votes = [convert.vote_from_pb(o) for o in outcomes if isinstance(o, pb.Vote)]
        assert len(stalled_votes) == MAX_VERIFIES_PER_EXECUTOR
        assert all(v.verdict is Verdict.UNAVAILABLE for v in stalled_votes)
    finally:
        service.open_timeout_s = type(service).open_timeout_s
        listener.close()


def test_executor_channels_are_a_bounded_lru(net):
    """Finding 3: every distinct executor address used to add a channel for good; now at most
    MAX_CHANNELS are kept, the least recently used closed first. [RPC.7]"""
    service = net.verifier_services[3]
    addresses = [f"127.0.0.1:{20000 + i}" for i in range(3 * MAX_CHANNELS)]
    first = service._channel(addresses[0])
    for a in addresses[1:]:
        service._channel(a)
        assert len(service._channels) <= MAX_CHANNELS
    assert addresses[0] not in service._channels  # evicted long ago
    with pytest.raises(ValueError):  # and closed: a closed channel refuses new calls
        first.unary_unary("/verihive.v1.Executor/GetInfo")(b"", timeout=1)
    recent = addresses[-1]
    assert service._channel(recent) is service._channels[recent]  # reused, not reopened

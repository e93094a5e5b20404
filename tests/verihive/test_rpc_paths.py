"""Every server path a peer can reach with bad input, over real loopback sockets. [RPC.1]

Each bad call gets a clear status and the node keeps serving: the same node answers a good call
right after. The network's executor 0 tampers with its tokens, so the first attempt yields real
accusations (REJECT votes with evidence) for the ``Confirm`` paths.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import grpc
import pytest

from bft.crypto import SigningKey
from bft.join import sign_leave
from bft.limits import MAX_OPENINGS
from bft.messages import Verdict, Vote
from proto import convert
from proto import verihive_pb2 as pb
from tests.verihive.conftest import call
from tests.verihive.conftest import refused as refused_call
from verihive.assembler import AttemptResult
from verihive.localnet import (
    DEFAULT_NETWORK_ID,
)
from verihive.work import make_confirm, make_verify


def refused(address: str, service: str, method: str, message: object) -> grpc.StatusCode:
    return refused_call(address, service, method, message).code()


def accusation(caught: AttemptResult) -> Vote:
    assert caught.tally is not None
    return next(v for v in caught.tally.votes if v.verdict is Verdict.REJECT)


# --- Executor


def test_invalid_execute_without_a_request(net):
    address = net.executor_addresses[1]
    assert refused(address, "Executor", "Execute", pb.ExecuteRequest()) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert call(address, "Executor", "GetInfo", pb.NodeInfoRequest())  # still serving


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"commitment_digest": b"\x01" * 31}, "digest"),
        ({"tiles": [pb.TileRef(boundary=0, chunk=i) for i in range(MAX_OPENINGS + 1)]}, "more"),
        ({"tiles": [pb.TileRef(boundary=99, chunk=0)]}, "outside"),
        ({"tiles": [pb.TileRef(boundary=0, chunk=0)] * 2}, "duplicate"),
    ],
    ids=["short-digest", "too-many-tiles", "tile-outside", "duplicate-tile"],
)
def test_invalid_open(net, attempts, change, needle):
    _, served = attempts
    signed = served.tally.signed
    message = pb.OpenRequest(commitment_digest=signed.digest, tiles=[pb.TileRef()])
    for field, value in change.items():
        message.ClearField(field)
        if isinstance(value, list):
            getattr(message, field).extend(value)
        else:
            setattr(message, field, value)
    address = served.executor.address
    with pytest.raises(grpc.RpcError) as info:
        call(address, "Executor", "Open", message)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")
    good = pb.OpenRequest(commitment_digest=signed.digest, tiles=[pb.TileRef()])
    assert call(address, "Executor", "Open", good)  # still serving that commitment


# --- Verifier: Verify


@pytest.mark.parametrize("missing", ["request", "commitment"])
def test_invalid_verify_with_a_missing_field(net, attempts, missing):
    _, served = attempts
    message = make_verify(
        net.assembler.key, served.tally.request, served.tally.signed, served.executor.address
    )
    message.ClearField(missing)
    address = net.verifier_addresses[0]
    assert refused(address, "Verifier", "Verify", message) is grpc.StatusCode.INVALID_ARGUMENT
    assert call(address, "Verifier", "GetInfo", pb.NodeInfoRequest())


def test_verify_pointed_at_an_address_that_hangs_votes_unavailable(net, attempts):
    # A listener that accepts and never answers: the openings' deadline passes, the vote is
    # UNAVAILABLE ([VERIFY.5]) and the verifier keeps serving.
    _, served = attempts
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        hang.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(hang.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    service = net.verifier_services[1]
    service.open_timeout_s = 2.0
    try:
        request = dataclasses.replace(served.tally.request, request_id=b"\x5a" * 16)
        signed = net.executor_services[1].core.on_execute(request)
        hanging = f"127.0.0.1:{hang.getsockname()[1]}"
        message = make_verify(net.assembler.key, request, signed, hanging)
        vote = convert.vote_from_pb(call(net.verifier_addresses[1], "Verifier", "Verify", message))
        assert vote.verdict is Verdict.UNAVAILABLE
        assert "openings not served" in vote.reason
    finally:
        service.open_timeout_s = type(service).open_timeout_s
        stop.set()
        thread.join()
        for s in accepted:
            s.close()
        hang.close()
    assert call(net.verifier_addresses[1], "Verifier", "GetInfo", pb.NodeInfoRequest())


# --- Verifier: Confirm


def test_confirm_of_a_real_accusation(net, attempts):
    caught, _ = attempts
    acc = accusation(caught)
    message = make_confirm(net.assembler.key, acc.evidence.request, acc.evidence.signed, acc)
    address = net.verifier_addresses[2]
    conf = convert.confirmation_from_pb(call(address, "Verifier", "Confirm", message))
    assert conf.accusation_digest == acc.signing_root()


def test_invalid_confirm_without_an_accusation(net):
    code = refused(net.verifier_addresses[2], "Verifier", "Confirm", pb.ConfirmRequest())
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_confirm_of_an_accept(net, attempts):
    _, served = attempts
    vote = next(v for v in served.tally.votes if v.verdict is Verdict.ACCEPT)
    message = pb.ConfirmRequest(accusation=convert.vote_to_pb(vote))
    code = refused(net.verifier_addresses[2], "Verifier", "Confirm", message)
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_confirm_of_a_forged_accusation(net, attempts):
    caught, _ = attempts
    acc = accusation(caught)
    sig = bytearray(acc.signature)
    sig[0] ^= 0x01
    forged = dataclasses.replace(acc, signature=bytes(sig))
    message = make_confirm(net.assembler.key, acc.evidence.request, acc.evidence.signed, forged)
    code = refused(net.verifier_addresses[2], "Verifier", "Confirm", message)
    assert code is grpc.StatusCode.UNAUTHENTICATED


def test_invalid_confirm_of_another_networks_accusation(net, attempts):
    caught, _ = attempts
    acc = accusation(caught)
    member = next(
        s.core for s in net.verifier_services if s.core.key.public_key == acc.verifier_key
    )
    unsigned = dataclasses.replace(acc, network_id="another-network")
    moved = dataclasses.replace(unsigned, signature=member.key.sign(unsigned.signing_root()))
    ev = acc.evidence
    message = make_confirm(net.assembler.key, ev.request, ev.signed, moved)
    code = refused(net.verifier_addresses[2], "Verifier", "Confirm", message)
    assert code is grpc.StatusCode.FAILED_PRECONDITION  # [CONFIRM.2]: about something else
    test_confirm_of_a_real_accusation(net, attempts)  # still serving


# --- Assembler: Leave and Status [JOIN.3], [NODE.9]


def test_invalid_leave_malformed_forged_or_unknown(net):
    assembler = net.assembler_address
    assert refused(assembler, "Assembler", "Leave", pb.LeaveRequest()) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    key = SigningKey.generate()
    leave = sign_leave(key, DEFAULT_NETWORK_ID, time.time_ns() // 1_000_000)
    short = dataclasses.replace(leave, signature=leave.signature[:10])
    code = refused(assembler, "Assembler", "Leave", convert.leave_to_pb(short))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    # Someone else's key on a leave they signed: no proof of possession.
    victim = net.assembler.executors[0].public_key
    forged = dataclasses.replace(leave, public_key=victim)
    reply = call(assembler, "Assembler", "Leave", convert.leave_to_pb(forged))
    assert not reply.accepted and reply.reason.startswith("BadSignature")
    assert any(p.public_key == victim for p in net.assembler.routed_executors())
    reply = call(assembler, "Assembler", "Leave", convert.leave_to_pb(leave))
    assert not reply.accepted and "not routed to" in reply.reason


def test_status_of_every_node_after_bad_calls(net, attempts):
    for service, addresses in (
        ("Executor", net.executor_addresses),
        ("Verifier", net.verifier_addresses),
        ("Assembler", [net.assembler_address]),
    ):
        for address in addresses:
            status = call(address, service, "Status", pb.StatusRequest())
            assert status.info.role == service.lower() and status.in_flight == 0
    assembler = call(net.assembler_address, "Assembler", "Status", pb.StatusRequest())
    assert assembler.counts["rejected"] >= 1 and assembler.counts["certified"] >= 1

"""What a node signed survives a restart, a SIGKILL included. [NODE.1]

A journal keeps every commitment an executor signs and every vote a verifier signs on disk before
the answer leaves the process; after a restart a repeat gets the stored record, byte for byte,
without computing (hence without any chance to sign a second root or a contradicting vote).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from bft.measure import open_tiles
from bft.messages import TileRef, Verdict
from executor.core import ExecutorCore
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from tests.support import ADMITTED, ASSEMBLER_KEY, NETWORK_ID, get_network, resign_vote
from verihive.journal import Journal, JournalError
from verihive.rpc import (
    MAX_OPEN_MESSAGE_BYTES,
    add_bounded_servicer,
    make_channel,
    make_server,
)
from verihive.services import ExecutorService, VerifierService
from verihive.work import make_execute, make_verify

ROOT = Path(__file__).resolve().parents[2]


def fresh_executor() -> ExecutorCore:
    """Return the test network's executor as a new process would have it: same key, no memory,
    and no right to execute (a repeat must come from the journal)."""
    net = get_network()
    core = ExecutorCore(net.executor_key, net.backend, net.lm.model_id, NETWORK_ID, 8)

    def refuse(*_args: object) -> None:
        raise AssertionError("executed again after the restart")

    core.execute_fresh = refuse  # type: ignore[method-assign,assignment]
    return core


@contextmanager
def serving(service: ExecutorService) -> Iterator[str]:
    server = make_server(max_message_bytes=MAX_OPEN_MESSAGE_BYTES)
    add_bounded_servicer(service, server, "verihive.v1.Executor")
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


def execute(service: ExecutorService, request_id: bytes) -> pb.ExecuteResponse:
    request = get_network().request(request_id=request_id)
    return service.Execute(make_execute(ASSEMBLER_KEY, request), None)  # type: ignore[arg-type]


# --- the journal itself


def test_journal_keeps_the_first_record_and_survives_reopening(tmp_path):
    net = get_network()
    run = net.run(net.request(request_id=b"\x61" * 16))
    other = net.run(net.request(request_id=b"\x62" * 16))
    path = tmp_path / "journal.db"
    j = Journal(path)
    assert j.get_commitment(run.request.digest()) is None
    assert j.keep_commitment(run.signed) == run.signed
    vote = run.votes[0]
    assert j.keep_vote(vote) == vote
    # A second record under one key is not stored: the first answers.
    again = other.votes[0]
    forged = type(again)(**{**again.__dict__}) if False else again
    assert j.keep_vote(forged) == forged  # another commitment: its own key
    j.close()
    j = Journal(path)
    assert j.get_commitment(run.request.digest()) == run.signed
    assert j.get_commitment_by_digest(run.signed.digest) == run.signed
    assert j.get_vote(vote.request_digest, vote.commitment_digest) == vote
    j.close()


def test_journal_first_vote_wins(tmp_path):
    net = get_network()
    run = net.run(net.request(request_id=b"\x63" * 16))
    first = run.votes[0]
    second = resign_vote(first, net.key_of(first.verifier_key), reason="a second thought")
    assert second != first and second.commitment_digest == first.commitment_digest
    j = Journal(tmp_path / "j.db")
    assert j.keep_vote(first) == first
    assert j.keep_vote(second) == first
    assert j.get_vote(first.request_digest, first.commitment_digest) == first


def test_invalid_journal_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "not-a-db"
    path.write_bytes(b"this is no database" * 100)
    with pytest.raises(JournalError, match="not-a-db"):
        Journal(path).get_commitment(b"\x00" * 32)  # type: ignore[arg-type]


def test_invalid_tampered_record_is_refused(tmp_path):
    net = get_network()
    run = net.run(net.request(request_id=b"\x64" * 16))
    path = tmp_path / "j.db"
    j = Journal(path)
    j.keep_commitment(run.signed)
    j.close()
    db = sqlite3.connect(path)
    blob = bytearray(db.execute("SELECT signed FROM commitments").fetchone()[0])
    blob[-3] ^= 0x01  # a bit of the signature
    db.execute("UPDATE commitments SET signed = ?", (bytes(blob),))
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="fails its checks"):
        Journal(path).get_commitment(run.request.digest())


# --- a restart in process: a new core, the same journal


def test_executor_answers_a_repeat_after_a_restart_from_its_journal(tmp_path):
    net = get_network()
    path = tmp_path / "executor.db"
    first = ExecutorService(net.executor, journal=Journal(path), admitted=ADMITTED)
    before = execute(first, b"\x65" * 16)
    restarted = ExecutorService(fresh_executor(), journal=Journal(path), admitted=ADMITTED)
    after = execute(restarted, b"\x65" * 16)
    assert after.SerializeToString() == before.SerializeToString()
    # The restarted executor opens it: the tree is recomputed from the committed tokens.
    signed = convert.commitment_from_pb(after.commitment)
    tiles = [pb.TileRef(boundary=1, chunk=0)]
    response = restarted.Open(pb.OpenRequest(commitment_digest=signed.digest, tiles=tiles), None)  # type: ignore[arg-type]
    opened = convert.opening_response_from_pb(response)
    assert set(open_tiles(signed, opened)) == {TileRef(1, 0)}  # [OPEN.3]: under the signed root


def test_executor_without_a_journal_forgets(tmp_path):
    # The control: the same restart without a journal computes again.
    net = get_network()
    execute(ExecutorService(net.executor, admitted=ADMITTED), b"\x66" * 16)
    with pytest.raises(AssertionError, match="executed again"):
        execute(ExecutorService(fresh_executor(), admitted=ADMITTED), b"\x66" * 16)


def test_verifier_answers_a_repeat_after_a_restart_without_fetching(tmp_path):
    net = get_network()
    request = net.request(request_id=b"\x67" * 16)
    signed = net.executor.on_execute(request)
    pk = net.run(request).tally.committee[0]
    path = tmp_path / "verifier.db"
    with serving(ExecutorService(net.executor, admitted=ADMITTED)) as address:
        ask = make_verify(ASSEMBLER_KEY, request, signed, address)
        first = VerifierService(
            net.verifiers[pk], "torch", journal=Journal(path), admitted=ADMITTED
        )
        vote = first.Verify(ask, None)  # type: ignore[arg-type]
        first.close()
    assert convert.vote_from_pb(vote).verdict is Verdict.ACCEPT
    # The executor is gone: a verifier that computed again would vote UNAVAILABLE.
    core = type(net.verifiers[pk])(net.key_of(pk), net.backend, net.lm.model_id, 4, 64, NETWORK_ID)
    restarted = VerifierService(core, "torch", journal=Journal(path), admitted=ADMITTED)
    again = restarted.Verify(ask, None)  # type: ignore[arg-type]
    assert again.SerializeToString() == vote.SerializeToString()
    forgetful = VerifierService(
        type(core)(net.key_of(pk), net.backend, net.lm.model_id, 4, 64, NETWORK_ID),
        "torch",
        admitted=ADMITTED,
    )
    other = convert.vote_from_pb(forgetful.Verify(ask, None))  # type: ignore[arg-type]
    assert other.verdict is Verdict.UNAVAILABLE  # the control: no journal, no executor


# --- SIGKILL: a real process, killed, restarted on the same journal


@contextmanager
def child(role: str, journal: Path, *flags: str) -> Iterator[str]:
    """Run :mod:`tests.verihive.journal_child` and yield its address; SIGKILL it after."""
    cmd = [sys.executable, "-m", "tests.verihive.journal_child", role, str(journal), *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()  # blocks until it serves; empty if it died
        assert port.isdigit(), f"the node process exited with {proc.wait()} before serving"
        yield f"127.0.0.1:{port.decode()}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_executor_killed_after_answering_keeps_its_commitment(tmp_path):
    net = get_network()
    request = net.request(request_id=b"\x68" * 16)
    message = make_execute(ASSEMBLER_KEY, request)
    path = tmp_path / "executor.db"
    with child("executor", path) as address:
        channel = make_channel(address)
        before = pb_grpc.ExecutorStub(channel).Execute(message, timeout=120)
        channel.close()
    # SIGKILLed; the restarted process may not execute: it answers from the journal.
    with child("executor", path, "--no-execute") as address:
        channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
        stub = pb_grpc.ExecutorStub(channel)
        after = stub.Execute(message, timeout=120)
        assert after.SerializeToString() == before.SerializeToString()
        signed = convert.commitment_from_pb(after.commitment)
        tiles = [pb.TileRef(boundary=0, chunk=0)]
        raw = stub.Open(pb.OpenRequest(commitment_digest=signed.digest, tiles=tiles), timeout=120)
        opened = open_tiles(signed, convert.opening_response_from_pb(raw))
        assert set(opened) == {TileRef(0, 0)}
        other = make_execute(ASSEMBLER_KEY, net.request(request_id=b"\x69" * 16))
        with pytest.raises(grpc.RpcError) as err:  # a new request needs execution: refused
            stub.Execute(other, timeout=120)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        channel.close()


def test_verifier_killed_after_voting_keeps_its_vote(tmp_path):
    net = get_network()
    request = net.request(request_id=b"\x6a" * 16)
    signed = net.executor.on_execute(request)
    member = net.run(request).tally.committee[0]
    index = str(net.validators.index(member))
    path = tmp_path / "verifier.db"
    with serving(ExecutorService(net.executor, admitted=ADMITTED)) as executor:
        ask = make_verify(ASSEMBLER_KEY, request, signed, executor)
        with child("verifier", path, "--validator", index) as address:
            channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
            before = pb_grpc.VerifierStub(channel).Verify(ask, timeout=120)
            channel.close()
    with child("verifier", path, "--validator", index, "--no-verify") as address:
        channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
        after = pb_grpc.VerifierStub(channel).Verify(ask, timeout=120)
        channel.close()
    assert after.SerializeToString() == before.SerializeToString()
    assert convert.vote_from_pb(after).verifier_key == member

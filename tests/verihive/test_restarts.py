"""Each kind of node killed with SIGKILL in the middle of a request, then restarted, on a
7-process testnet (tiny model). [NODE.1], [NODE.8]

A node started with ``VERIHIVE_FAILPOINT`` kills itself at that point of a request (after signing,
before the journal; after the journal, before the answer leaves; for the assembler, after
certifying, before answering the client). The tests check what the issue asks: nothing the node
signed is forgotten (the journal holds it and the restarted node answers a repeat with it byte
for byte), the assembler goes on to another executor or certifies without the lost vote, every
request ends certified or with a clear error, and no honest node is accused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bft.crypto import SigningKey, compute_node_id
from bft.types import PublicKey
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive import failpoints, nodecli, testnet
from verihive.cli import infer_main
from verihive.journal import Journal
from verihive.node import load_node_key
from verihive.rpc import INFER_TIMEOUT_S, MAX_OPEN_MESSAGE_BYTES, make_channel
from verihive.work import make_execute, make_verify

START_S = 120.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, testnet.Node]]:
    """A 7-process testnet of the tiny model: 4 verifiers (f = 1), 2 executors, an assembler."""
    out = tmp_path_factory.mktemp("restarts") / "net"
    assert nodecli.testnet_main(["init", "--out", str(out), "--model", "tiny"]) == 0
    nodes = {n.name: n for n in testnet.get_nodes(out)}
    try:
        testnet.up(out, START_S)
        yield nodes
    finally:
        testnet.down(out)


def _kill(node: testnet.Node) -> None:
    """SIGKILL ``node`` and wait until it is gone."""
    pid = int((node.home / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    while testnet._alive(pid):
        time.sleep(0.05)


def _start(node: testnet.Node, failpoint: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``node`` (armed with ``failpoint``); return once it serves."""
    proc = testnet.start_node(node, {failpoints.ENV: failpoint} if failpoint else {})
    testnet.wait_until_serving(node, proc, START_S)
    return proc


def _infer(node: testnet.Node) -> pb.InferResponse:
    channel = make_channel(node.address, MAX_OPEN_MESSAGE_BYTES)
    try:
        sampling = pb.SamplingParams(max_new_tokens=4, top_p=1.0, stop_at_eos=True)
        ask = pb.InferRequest(prompt="Hello?", sampling=sampling)
        reply: pb.InferResponse = pb_grpc.AssemblerStub(channel).Infer(
            ask, timeout=INFER_TIMEOUT_S
        )
        return reply
    finally:
        channel.close()


def _assembler_key(net: dict[str, testnet.Node]) -> SigningKey:
    """Return the testnet assembler's key: the tests act as it does ([ADMIT.1])."""
    return load_node_key(net["assembler"].home / "node_key")


def _node_id(node: testnet.Node) -> bytes:
    return bytes(compute_node_id(PublicKey(load_node_key(node.home / "node_key").public_key)))


def _assert_nobody_accused(reply: pb.InferResponse) -> None:
    """No REJECT, slash or penalty in any attempt: every node here is honest."""
    for a in reply.attempts:
        assert not a.slashes and not a.penalties, a.reason
        assert all(v.verdict == pb.ACCEPT for v in a.votes), a.reason


@pytest.mark.parametrize(
    ("point", "kept"), [("executor.signed", False), ("executor.journaled", True)]
)
def test_executor_killed_mid_request_is_replaced_and_remembers_what_left_its_journal(
    net, point, kept
):
    ex0 = net["executor-0"]
    _kill(ex0)
    proc = _start(ex0, point)
    reply = _infer(net["assembler"])
    assert proc.wait(timeout=60) == -signal.SIGKILL  # it died where it was told to
    assert reply.accepted  # the assembler went on to executor-1 [ASM.1]
    failed, served = reply.attempts
    assert failed.executor_id == _node_id(ex0) and failed.outcome == "failed"
    assert served.outcome == "certified" and served.executor_id == _node_id(net["executor-1"])
    _assert_nobody_accused(reply)
    request = convert.request_from_pb(failed.request)
    journal = Journal(ex0.home / "journal.db")
    try:
        stored = [
            c for c in journal.list_commitments() if c.commitment.request_digest == request.digest()
        ]
    finally:
        journal.close()
    assert len(stored) == (1 if kept else 0)
    _start(ex0)
    channel = make_channel(ex0.address, MAX_OPEN_MESSAGE_BYTES)
    try:
        stub = pb_grpc.ExecutorStub(channel)
        ask = make_execute(_assembler_key(net), request)
        again = stub.Execute(ask, timeout=60).commitment
        if kept:  # signed and on disk before the crash: that very commitment [NODE.1]
            kept_bytes = convert.commitment_to_pb(stored[0]).SerializeToString()
            assert again.SerializeToString() == kept_bytes
            tile = pb.TileRef(boundary=0, chunk=0)
            opened = stub.Open(
                pb.OpenRequest(commitment_digest=stored[0].digest, tiles=[tile]), timeout=60
            )
            assert len(opened.openings) == 1  # and it can still open it ([COMMIT.7])
        assert convert.commitment_from_pb(again).commitment.request_digest == request.digest()
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("point", "kept"), [("verifier.signed", False), ("verifier.journaled", True)]
)
def test_verifier_killed_mid_request_leaves_a_quorum_and_keeps_its_vote(net, point, kept):
    v0 = net["verifier-0"]
    v0_key = load_node_key(v0.home / "node_key").public_key
    _kill(v0)
    proc = _start(v0, point)
    reply = _infer(net["assembler"])
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert reply.accepted  # 3 of the committee of 4 are a quorum (2f + 1) [QUORUM.1]
    *failed, certified = reply.attempts
    assert all(a.outcome == "failed" for a in failed)  # a channel still reconnecting, if any
    executor = next(n for n in net.values() if _node_id(n) == certified.executor_id)
    voters = {bytes(v.verifier_key) for v in certified.votes}
    assert len(voters) == 3 and v0_key not in voters
    _assert_nobody_accused(reply)
    request = convert.request_from_pb(certified.request)
    signed = convert.commitment_from_pb(certified.commitment)
    journal = Journal(v0.home / "journal.db")
    try:
        stored = journal.get_vote(request.digest(), signed.digest)
    finally:
        journal.close()
    assert (stored is not None) == kept
    _start(v0)
    channel = make_channel(v0.address, MAX_OPEN_MESSAGE_BYTES)
    try:
        ask = make_verify(_assembler_key(net), request, signed, executor.address)
        vote = pb_grpc.VerifierStub(channel).Verify(ask, timeout=120)
    finally:
        channel.close()
    assert vote.verdict == pb.ACCEPT
    if stored is not None:  # the vote it signed before the crash, byte for byte [NODE.1]
        assert vote.SerializeToString() == convert.vote_to_pb(stored).SerializeToString()


def test_assembler_killed_before_answering_gives_a_clear_error_then_serves(net, capsys):
    assembler = net["assembler"]
    _kill(assembler)
    proc = _start(assembler, "assembler.certified")
    capsys.readouterr()
    code = infer_main(["--assembler", assembler.address, "--max-new-tokens", "4", "Hello?"])
    assert proc.wait(timeout=60) == -signal.SIGKILL
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: {assembler.address}: UNAVAILABLE") and "\n" not in err
    _start(assembler)
    reply = _infer(assembler)
    assert reply.accepted
    _assert_nobody_accused(reply)


def test_unknown_failpoint_refuses_to_start(net):
    env = {**os.environ, failpoints.ENV: "nowhere"}
    home = net["verifier-1"].home  # serving: the refused start must not disturb it
    done = subprocess.run(
        [sys.executable, "-m", "verihive.nodecli", "serve", "--home", str(home)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert b"is not a failpoint" in done.stderr
    assert testnet.is_serving(net["verifier-1"].address)

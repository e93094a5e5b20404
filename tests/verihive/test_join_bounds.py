"""What an assembler keeps of joins stays bounded by what is live. [JOIN.2], [JOIN.3]

Joined executors silent past ``join_ttl_s`` are forgotten (with their channels) at the next join,
the joined set has a ceiling, a re-join at a new address drops the old address's channel, and
leaves older than the replay window are forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bft.crypto import SigningKey
from bft.errors import Malformed, Unavailable
from bft.join import LEAVE_WINDOW_MS, sign_leave
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from proto import verihive_pb2_grpc as pb_grpc
from verihive import assembler as assembler_module
from verihive.localnet import DEFAULT_NETWORK_ID, LocalNetConfig, LocalNetwork, start_local_network
from verihive.membership import make_join
from verihive.rpc import make_server
from verihive.services import ExecutorService


@pytest.fixture(scope="module")
def net(tiny) -> Iterator[LocalNetwork]:
    with start_local_network(tiny, LocalNetConfig()) as n:
        n.assembler.join_stamp_bits = 0  # no minting work in these tests
        yield n


@contextmanager
def executor(net: LocalNetwork, tiny, seed: int) -> Iterator[tuple[SigningKey, str]]:
    """Serve one more executor of the network; yield its key and address."""
    key = SigningKey.from_seed(bytes([seed]) * 32)
    core = ExecutorCore(key, TorchBackend(tiny.model), tiny.model_id, DEFAULT_NETWORK_ID, 16)
    server = make_server()
    admitted = frozenset({net.assembler.key.public_key})
    pb_grpc.add_ExecutorServicer_to_server(ExecutorService(core, admitted=admitted), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield key, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


def join(net: LocalNetwork, tiny, key: SigningKey, address: str) -> str:
    request = make_join(
        key, DEFAULT_NETWORK_ID, 0, address, tiny.model_id, "torch-cpu-float32", 1.0
    )
    return net.assembler.process_join(request)


def test_silent_joins_are_forgotten_with_their_channels(net, tiny):
    node = net.assembler
    with executor(net, tiny, 0x31) as (first, a1), executor(net, tiny, 0x32) as (second, a2):
        assert join(net, tiny, first, a1) == "joined"
        node.join_ttl_s = 0.2
        try:
            time.sleep(0.3)  # first falls silent past its TTL
            assert first.public_key not in {p.public_key for p in node.routed_executors()}
            assert join(net, tiny, second, a2) == "joined"  # pruned on the way
            assert first.public_key not in node.joined and a1 not in node._channels
            assert first.public_key not in {p.public_key for p in node.executors}
        finally:
            node.join_ttl_s = assembler_module.DEFAULT_JOIN_TTL_S
        assert join(net, tiny, first, a1) == "joined"  # a fresh join, not a re-join


def test_the_joined_set_has_a_ceiling(net, tiny, monkeypatch):
    node = net.assembler
    monkeypatch.setattr(assembler_module, "MAX_JOINED", len(node.joined))
    with executor(net, tiny, 0x33) as (key, address):
        with pytest.raises(Unavailable, match="joined executors already"):
            join(net, tiny, key, address)
        known = next(iter(node.joined))  # one already joined may still re-join
        assert known != key.public_key


def test_a_rejoin_at_a_new_address_drops_the_old_channel(net, tiny):
    node = net.assembler
    with executor(net, tiny, 0x34) as (key, old), executor(net, tiny, 0x34) as (_, new):
        assert join(net, tiny, key, old) in ("joined", "re-joined")
        assert old in node._channels
        assert join(net, tiny, key, new) == "re-joined"
        assert old not in node._channels and new in node._channels


def test_leaves_older_than_the_replay_window_are_forgotten(net, tiny):
    node = net.assembler
    with executor(net, tiny, 0x35) as (key, address):
        join(net, tiny, key, address)
        now = time.time_ns() // 1_000_000
        assert node.process_leave(sign_leave(key, DEFAULT_NETWORK_ID, now)) == "left"
        assert key.public_key in node._left_at_ms
        with node._peers_lock:
            node._left_at_ms[key.public_key] = now - LEAVE_WINDOW_MS - 1  # as if long ago
        join(net, tiny, key, address)  # any join prunes
        assert key.public_key not in node._left_at_ms


@pytest.mark.parametrize("address", ["no-port", "127.0.0.1:0", "127.0.0.1:99999", "h:²"])
def test_invalid_join_address_is_refused_before_any_probe(net, tiny, address):
    """[RPC.4]: a join's address must be host:port; nothing else is ever dialed."""
    key = SigningKey.from_seed(b"\x36" * 32)
    with pytest.raises(Malformed, match="host:port"):
        join(net, tiny, key, address)

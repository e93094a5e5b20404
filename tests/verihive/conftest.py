"""What the tests of running servers share: an embedded network whose executor 0 lies (so that
real accusations exist), its two attempts, and calls over real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from bft.messages import SamplingParams
from proto import verihive_pb2_grpc as pb_grpc
from simnet.localnet import local_faults
from verihive.assembler import AttemptResult
from verihive.localnet import LocalNetConfig, LocalNetwork, start_local_network
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, make_channel


@pytest.fixture(scope="module")
def net(tiny) -> Iterator[LocalNetwork]:
    """An embedded network whose executor 0 tampers with its tokens, per test module."""
    faults = local_faults(executor="tamper-tokens")
    with start_local_network(tiny, LocalNetConfig(), faults=faults) as n:
        yield n


@pytest.fixture(scope="module")
def attempts(net) -> tuple[AttemptResult, AttemptResult]:
    """The liar's attempt (REJECTED, four accusations) and the honest one (CERTIFIED)."""
    _, found = net.assembler.infer("Hello?", SamplingParams(max_new_tokens=4))
    caught, served = found
    assert caught.tally is not None and served.tally is not None
    return caught, served


def call(address: str, service: str, method: str, message: object) -> object:
    """Return the answer of ``service.method(message)`` at ``address``."""
    channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    try:
        stub = getattr(pb_grpc, f"{service}Stub")(channel)
        return getattr(stub, method)(message, timeout=60)
    finally:
        channel.close()


def refused(address: str, service: str, method: str, message: object) -> grpc.RpcError:
    """Return the error of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(address, service, method, message)
    return info.value

"""The byzantine modes as faults of the embedded network (``bft-infer --byzantine-*``)."""

from __future__ import annotations

import pytest

from simnet.executors import ReplayExecutor
from simnet.localnet import local_faults
from simnet.verifiers import VERIFIER_MODES, AlwaysRejectVerifier, SilentVerifier
from tests.support import make_key
from verihive.localnet import NO_FAULTS, LocalNetConfig


def test_no_modes_are_no_faults():
    assert local_faults() == NO_FAULTS


def test_executor_mode_builds_executor_zero(tiny):
    config = LocalNetConfig(chunk_size=8)
    key = make_key("localnet-replay")
    fault = local_faults(executor="replay").executor
    assert fault is not None
    core = fault(key, tiny, config)
    assert isinstance(core, ReplayExecutor)
    assert core.key == key and core.model_id == tiny.model_id
    assert (core.network_id, core.chunk_size) == (config.policy.network_id, 8)


@pytest.mark.parametrize("mode", VERIFIER_MODES)
def test_verifier_mode_replaces_verifier_zero(net, mode):
    honest = next(iter(net.verifiers.values()))
    fault = local_faults(verifier=mode).verifier
    assert fault is not None
    cores = fault(honest)
    assert all(c.key == honest.key for c in cores)  # one key, however many servers
    if mode == "double-vote":  # the honest server and a lying twin
        assert cores[0] is honest and isinstance(cores[1], AlwaysRejectVerifier)
    else:
        (liar,) = cores
        assert liar is not honest
        assert mode != "silent" or isinstance(liar, SilentVerifier)


def test_invalid_unknown_modes():
    with pytest.raises(ValueError, match="unknown byzantine mode"):
        local_faults(executor="polite")
    with pytest.raises(ValueError, match="unknown byzantine verifier mode"):
        local_faults(verifier="polite")

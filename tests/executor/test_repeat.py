"""An executor signs one commitment per request, however often it is asked. [COMMIT.5]"""

from __future__ import annotations

import os

import numpy as np

from bft.assembler import AssemblerPolicy, compute_request
from bft.crypto import SigningKey
from bft.messages import SamplingParams
from bft.validators import ValidatorSet
from executor.backend import TorchBackend
from executor.core import ExecutorCore


class NonReproducibleExecutor(ExecutorCore):
    """An honest executor whose kernels differ run to run in the last bits."""

    calls = 0

    def compute_states(self, tokens):
        self.calls += 1
        states = super().compute_states(tokens).copy()
        states[-1, -1, 0] += np.float32(1e-7) * self.calls
        return states


def test_repeated_request_gets_the_same_commitment(tiny):
    ex = NonReproducibleExecutor(
        SigningKey.generate(), TorchBackend(tiny.model), tiny.model_id, "t"
    )
    vset = ValidatorSet.of_keys("t", (SigningKey.generate().public_key for _ in range(4)))
    request = compute_request(
        AssemblerPolicy("t"),
        os.urandom(16),
        tiny.model_id,
        (1, 2, 3),
        SamplingParams(max_new_tokens=3),
        vset,
    )
    first = ex.on_execute(request)
    again = ex.on_execute(request)
    assert again == first and ex.calls == 1
    other = compute_request(
        AssemblerPolicy("t"),
        os.urandom(16),
        tiny.model_id,
        (1, 2, 3),
        SamplingParams(max_new_tokens=3),
        vset,
    )
    assert ex.on_execute(other).digest != first.digest and ex.calls == 2

"""One execution per request under concurrency: the executor core's single flight.
[COMMIT.5], [COMMIT.6], [EXEC.8]

The backend here is the tiny torch backend made non-reproducible, as a GPU engine may be: every
proof it returns differs from the last in one value, so two executions of one request would
sign two roots. Overlapping calls for one request must still get one signed commitment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bft.errors import Unavailable
from bft.messages import InferenceRequest, SamplingParams, SignedCommitment
from executor.backend import TorchBackend
from executor.batching import ExecutionBatcher
from executor.core import ExecutorCore
from simnet.executors import EquivocateExecutor
from tests.support import CHUNK_SIZE, NETWORK_ID, get_network, get_tiny, make_key, run_together

SAMPLED = SamplingParams(temperature=1.0, max_new_tokens=4, stop_at_eos=False)
THREADS = 16
HOLD_S = 0.3
"""How long the first generation of a test is held, so that the other calls overlap it."""


class NoisyBackend:
    """The tiny torch backend, but no two proofs are equal; counts and can hold or fail runs.

    While ``release`` is clear, generations (of ``hold_only`` alone, if set) wait for it, at
    most ``hold_s``; ``fail`` makes the next that many generations raise ``RuntimeError``.
    """

    def __init__(self, inner: TorchBackend) -> None:
        self.inner = inner
        self.info = inner.info
        self.generations: list[tuple[int, ...]] = []
        self.proofs = 0
        self.fail = 0
        self.release = threading.Event()
        self.release.set()
        self.hold_only: tuple[int, ...] | None = None
        self.hold_s = HOLD_S
        self._lock = threading.Lock()

    def generate(self, prompt: Sequence[int], params: SamplingParams, seed: bytes) -> list[int]:
        with self._lock:
            self.generations.append(tuple(prompt))
            failing = self.fail > 0
            self.fail -= failing
        if self.hold_only in (None, tuple(prompt)):
            self.release.wait(self.hold_s)
        if failing:
            raise RuntimeError("engine failed")
        return self.inner.generate(prompt, params, seed)

    def prove(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        with self._lock:
            self.proofs += 1
            n = self.proofs
        states = self.inner.prove(tokens).copy()
        states[-1, -1, 0] += np.float32(n * 1e-3)  # not bit-reproducible: a new root each time
        return states

    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        return self.inner.embed(tokens)

    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.inner.run_layer(layer, hidden_in)


class NoisyBatchBackend(NoisyBackend):
    """:class:`NoisyBackend` with ``generate_many`` (one request after another), like vLLM's."""

    def generate_many(
        self, items: Sequence[tuple[Sequence[int], SamplingParams, bytes]]
    ) -> list[list[int]]:
        return [self.generate(*item) for item in items]


def make_core(label: str, backend_type: type[NoisyBackend] = NoisyBackend) -> ExecutorCore:
    lm, inner = get_tiny()
    backend = backend_type(inner)
    return ExecutorCore(make_key(label), backend, lm.model_id, NETWORK_ID, CHUNK_SIZE)


def noisy(core: ExecutorCore) -> NoisyBackend:
    assert isinstance(core.backend, NoisyBackend)
    return core.backend


def make_request(tag: int, prompt: tuple[int, ...] = tuple(range(100, 120))) -> InferenceRequest:
    return get_network().request(
        request_id=bytes([tag]) * 16, prompt=prompt, sampling=SAMPLED, sequence_check_ppm=0
    )


def held(core: ExecutorCore, calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` together while the first generation is held ``HOLD_S``, so they overlap."""
    noisy(core).release.clear()
    try:
        return run_together(calls)
    finally:
        noisy(core).release.set()


def test_concurrent_calls_for_one_request_get_one_commitment():
    # [COMMIT.5], [COMMIT.6]: the first call executes, the others wait for its commitment.
    core = make_core("flight-a")
    request = make_request(1)
    got = held(core, [lambda: core.on_execute(request)] * THREADS)
    assert all(isinstance(s, SignedCommitment) for s in got), got
    digests = {s.digest for s in got}
    assert len(digests) == 1, f"{len(digests)} roots signed for one request"
    assert len(noisy(core).generations) == 1 and noisy(core).proofs == 1
    assert core.on_execute(request) == got[0]  # and later calls get it from memory
    assert core.get_in_flight_count() == 0


def test_a_request_in_flight_does_not_hold_up_other_requests():
    core = make_core("flight-b")
    slow, fast = make_request(2), make_request(3, prompt=tuple(range(200, 210)))
    backend = noisy(core)
    backend.hold_only, backend.hold_s = slow.prompt_tokens, 60.0
    backend.release.clear()
    out: list[SignedCommitment] = []
    waiter = threading.Thread(target=lambda: out.append(core.on_execute(slow)))
    waiter.start()
    try:
        while not backend.generations:  # the slow request is now held in its generation
            time.sleep(0.001)
        quick = core.on_execute(fast)
        assert not out and core.get_in_flight_count() == 1
    finally:
        backend.release.set()
        waiter.join(timeout=60)
    assert quick.commitment.request_digest == fast.digest()
    assert out and out[0].commitment.request_digest == slow.digest()
    assert core.get_in_flight_count() == 0


def test_a_failed_execution_is_not_remembered():
    # [COMMIT.6]: nothing was signed, so the next call executes the request afresh.
    core = make_core("flight-c")
    request = make_request(4)
    noisy(core).fail = 1
    with pytest.raises(RuntimeError, match="engine failed"):
        core.on_execute(request)
    assert core.get_in_flight_count() == 0
    signed = core.on_execute(request)
    assert signed.commitment.request_digest == request.digest()
    assert len(noisy(core).generations) == 2 and noisy(core).proofs == 1
    assert core.on_execute(request) == signed


def test_waiters_of_a_failed_execution_get_unavailable_and_a_retry_executes():
    # [COMMIT.6]: the call that ran the execution gets its failure, the calls that waited on it
    # get Unavailable; the digest is not poisoned.
    core = make_core("flight-d")
    request = make_request(5)
    noisy(core).fail = 1
    got = held(core, [lambda: core.on_execute(request)] * THREADS)
    failures = [r for r in got if isinstance(r, RuntimeError)]
    assert len(failures) == 1
    unavailable = [r for r in got if isinstance(r, Unavailable)]
    assert all(isinstance(r.__cause__, RuntimeError) for r in unavailable)
    # A call that came after the failure (a slow thread) executed afresh: that is a retry.
    signed = [r for r in got if isinstance(r, SignedCommitment)]
    assert len(failures) + len(unavailable) + len(signed) == THREADS
    assert core.get_in_flight_count() == 0
    retry = core.on_execute(request)
    assert {s.digest for s in signed} <= {retry.digest}
    assert noisy(core).proofs == 1


@pytest.mark.parametrize("backend_type", [NoisyBackend, NoisyBatchBackend])
def test_one_by_one_and_batched_calls_share_one_execution(backend_type):
    # [EXEC.8]: execute_many joins an execution in flight and the other way round, whether the
    # backend generates batches or not.
    core = make_core(f"flight-e-{backend_type.__name__}", backend_type)
    a, b = make_request(6), make_request(7, prompt=tuple(range(300, 316)))
    one: Callable[[], Any] = lambda: [core.on_execute(a)]  # noqa: E731
    many: Callable[[], Any] = lambda: core.execute_many([a, b, a])  # noqa: E731
    got = held(core, [one, many] * (THREADS // 2))
    assert all(isinstance(r, list) for r in got), got
    want = {a.digest(): core.on_execute(a), b.digest(): core.on_execute(b)}
    for r in got:
        for s in r:
            assert s == want[s.commitment.request_digest]
    assert sorted(noisy(core).generations) == sorted({a.prompt_tokens, b.prompt_tokens})
    assert noisy(core).proofs == 2
    assert core.get_in_flight_count() == 0


def test_a_batcher_and_direct_calls_share_one_execution():
    core = make_core("flight-g", NoisyBatchBackend)
    request = make_request(8)
    batcher = ExecutionBatcher(core, max_batch=4, max_wait_s=0.01)
    try:
        calls: list[Callable[[], Any]] = [
            lambda: batcher.on_execute(request),
            lambda: core.on_execute(request),
        ]
        got = held(core, calls * (THREADS // 2))
    finally:
        batcher.close()
    assert len({s.digest for s in got}) == 1
    assert len(noisy(core).generations) == 1


def test_a_batch_failure_fails_its_flights_and_keeps_serving():
    core = make_core("flight-h", NoisyBatchBackend)
    a, b = make_request(9), make_request(10, prompt=tuple(range(400, 412)))
    noisy(core).fail = 1
    with pytest.raises(RuntimeError):
        core.execute_many([a, b])
    assert core.get_in_flight_count() == 0
    signed = core.execute_many([a, b])
    assert [s.commitment.request_digest for s in signed] == [a.digest(), b.digest()]


def test_equivocating_executor_still_signs_two_roots():
    # Byzantine executors keep their lies: equivocate signs a second commitment on purpose.
    lm, backend = get_tiny()
    core = EquivocateExecutor(make_key("flight-i"), backend, lm.model_id, NETWORK_ID, CHUNK_SIZE)
    request = make_request(11)
    first = core.on_execute(request)
    second = core._second[first.digest]
    assert second != first.digest
    assert core.get_run(second).signed.commitment.request_digest == request.digest()

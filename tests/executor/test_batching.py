"""Concurrent requests gathered into one batched generation. [EXEC.8]"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch

from bft.errors import Malformed, Unavailable
from bft.messages import SamplingParams
from executor.backend import BatchingBackend, TorchBackend
from executor.batching import ExecutionBatcher
from executor.core import ExecutorCore
from tests.support import CHUNK_SIZE, NETWORK_ID, get_network, make_key, run_together

SAMPLED = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=6, stop_at_eos=False)


class BatchBackend(TorchBackend):
    """The torch backend with ``generate_many`` (one request after another), recording calls."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: list[int] = []
        self.fail = False

    def generate_many(
        self, items: Sequence[tuple[Sequence[int], SamplingParams, bytes]]
    ) -> list[list[int]]:
        self.batches.append(len(items))
        if self.fail:
            raise RuntimeError("engine failed")
        return [self.generate(*item) for item in items]


def make_core(label: str) -> tuple[ExecutorCore, BatchBackend]:
    net = get_network()
    backend = BatchBackend(net.lm.model)
    return ExecutorCore(make_key(label), backend, net.lm.model_id, NETWORK_ID, CHUNK_SIZE), backend


def test_a_backend_batches_iff_it_has_generate_many():
    # One protocol type instead of attribute probes: the executor core and the local network
    # hand whole batches to a BatchingBackend only. [EXEC.8]
    net = get_network()
    assert isinstance(BatchBackend(net.lm.model), BatchingBackend)
    assert not isinstance(net.backend, BatchingBackend)
    core, backend = make_core("batching-protocol")
    reqs = requests(2, 9)
    items = [(list(q.prompt_tokens), q.sampling, q.sampling_seed()) for q in reqs]
    assert core.generate_all(reqs) == [net.backend.generate(*item) for item in items]
    assert backend.batches == [2]


def requests(n: int, tag: int) -> list:
    net = get_network()
    return [
        net.request(request_id=bytes([tag, i]) * 8, sampling=SAMPLED, sequence_check_ppm=0)
        for i in range(n)
    ]


def run_concurrently(batcher: ExecutionBatcher, reqs: list) -> list:
    return run_together([lambda r=r: batcher.on_execute(r) for r in reqs], timeout_s=120)


def test_concurrent_requests_become_one_batch_with_the_same_commitments():
    core, backend = make_core("batching-a")
    reference, _ = make_core("batching-a")  # same key and model: the same signatures
    reqs = requests(6, 1)
    batcher = ExecutionBatcher(core, max_batch=6, max_wait_s=30.0)  # waits for all six
    try:
        got = run_concurrently(batcher, reqs)
    finally:
        batcher.close()
    assert backend.batches == [6] and batcher.batch_sizes == [6]
    for request, signed in zip(reqs, got, strict=True):
        assert signed.commitment.request_digest == request.digest()
        assert signed.digest == reference.on_execute(request).digest
        assert core.get_run(signed.digest).signed == signed  # openings are served


def test_a_batch_is_cut_at_max_batch_and_a_repeat_is_answered_from_memory():
    core, backend = make_core("batching-b")
    reqs = requests(3, 2)
    batcher = ExecutionBatcher(core, max_batch=2, max_wait_s=30.0)
    try:
        first = run_concurrently(batcher, reqs[:2])
        batcher.max_wait_s = 0.0  # single calls from here on: no waiting for company
        again = batcher.on_execute(reqs[0])  # [COMMIT.5]: no second generation
        last = batcher.on_execute(reqs[2])
    finally:
        batcher.close()
    assert again == first[0]
    assert last.commitment.request_digest == reqs[2].digest()
    assert backend.batches == [2, 1]  # the repeat generated nothing


def test_malformed_requests_are_refused_in_the_callers_thread():
    core, backend = make_core("batching-c")
    batcher = ExecutionBatcher(core, max_wait_s=0.0)
    try:
        bad = dataclasses.replace(requests(1, 3)[0], network_id="elsewhere")
        with pytest.raises(Malformed, match="another network"):
            batcher.on_execute(bad)
    finally:
        batcher.close()
    assert backend.batches == [] and batcher.batch_sizes == []


def test_an_engine_failure_reaches_every_caller_and_the_batcher_keeps_serving():
    core, backend = make_core("batching-d")
    batcher = ExecutionBatcher(core, max_batch=3, max_wait_s=30.0)
    try:
        backend.fail = True
        got = run_concurrently(batcher, requests(3, 4))
        assert all(isinstance(r, RuntimeError) for r in got)
        backend.fail = False
        batcher.max_wait_s = 0.0
        ok = batcher.on_execute(requests(1, 5)[0])
        assert ok.commitment.output_tokens
    finally:
        batcher.close()


def test_a_closed_batcher_refuses_new_requests():
    core, _ = make_core("batching-e")
    batcher = ExecutionBatcher(core)
    batcher.close()
    with pytest.raises(Unavailable):
        batcher.on_execute(requests(1, 6)[0])
    with pytest.raises(ValueError):
        ExecutionBatcher(core, max_batch=0)


def test_a_local_network_batches_a_generate_many_backend_over_grpc():
    from verihive.localnet import LocalNetConfig, start_local_network

    net = get_network()
    backend = BatchBackend(net.lm.model)
    with start_local_network(net.lm, LocalNetConfig(num_executors=1), backend) as local:
        assert local.executor_services[0].batcher is not None
        _, attempts = local.assembler.infer("Hi", SamplingParams(max_new_tokens=4))
    assert attempts[-1].outcome.value == "certified", attempts[-1].reason
    assert backend.batches == [1]


def test_a_local_network_refuses_an_unadmitted_executor_backend():
    from verihive.localnet import LocalNetConfig, start_local_network

    net = get_network()
    bf16 = BatchBackend(net.lm.model, dtype=torch.bfloat16)
    start = start_local_network(net.lm, LocalNetConfig(num_executors=1), bf16)
    with pytest.raises(ValueError, match="torch-cpu-bfloat16 is not admitted"), start:
        pass

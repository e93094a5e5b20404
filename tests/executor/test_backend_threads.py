"""Backends called from several threads at once give what they give alone, bit for bit. [EXEC.9]

The local network shares one torch backend among its executors and another among its
verifiers, both over the same model modules, and calls them from gRPC worker threads. Each test
runs the same calls once one after another and once from several threads released together by
a barrier, on ONE shared backend, and compares every result exactly (same process, same
machine: exact equality is the claim). The hooked code these backends replaced is kept here as
the reference of the single-threaded results ([EXEC.1], [SAMPLE.6]).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
import torch
from transformers import DynamicCache

from bft.encoding import sha256
from bft.messages import SamplingParams
from executor.backend import STATEFUL_ROPE_TYPES, TorchBackend
from executor.model import LoadedModel
from tests.support import get_tiny

THREADS = 4
CALLS = 10
"""Generations per thread (``THREADS * CALLS`` in all, compared one by one)."""
LAYER_CALLS = 50
"""Layer runs per thread (cheap: many, so that overlaps are many)."""
SAMPLED = SamplingParams(temperature=1.0, max_new_tokens=16, stop_at_eos=False)
GREEDY = SamplingParams(max_new_tokens=16, stop_at_eos=False)

T = TypeVar("T")


def run_threads(jobs: Sequence[Callable[[], T]], threads: int = THREADS) -> list[T]:
    """Run ``jobs`` on ``threads`` threads (job ``j`` on thread ``j % threads``), started together.

    Each thread runs its jobs in order, so with jobs listed round-robin the threads run the
    k-th job of each at about the same time.
    """
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        barrier.wait()
        try:
            for j in range(t, len(jobs), threads):
                results[j] = jobs[j]()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=300)
    if errors:
        raise errors[0]
    assert not any(th.is_alive() for th in pool)
    return results


def generation_jobs(backend: TorchBackend, n: int, length: int = 20) -> list[Callable[[], Any]]:
    """Return ``n`` generations with distinct prompts and seeds, sampled and greedy."""
    jobs = []
    for j in range(n):
        prompt = [(100 + 37 * j + i) % backend.vocab_size for i in range(length + j % 5)]
        params = SAMPLED if j % 4 == 3 else GREEDY  # greedy: more decoder passes per second
        seed = sha256(b"threads" + bytes([j]))
        jobs.append(lambda p=prompt, s=params, d=seed: backend.generate(p, s, d))
    return jobs


def layer_jobs(backend: TorchBackend, n: int, rows: int = 28) -> list[Callable[[], Any]]:
    """Return ``n`` ``run_layer_with_update`` calls; the k-th of each thread on one layer."""
    rng = np.random.default_rng(11)
    jobs = []
    for j in range(n):
        x = rng.standard_normal((rows + j % 3, backend.info.hidden_size)).astype(np.float32)
        layer = 1 + (j // THREADS) % backend.info.num_layers
        jobs.append(lambda b=layer, h=x: backend.run_layer_with_update(b, h))
    return jobs


def count_different(want: Sequence[Any], got: Sequence[Any]) -> int:
    """Return how many results differ (token lists, or tuples of float32 arrays) bit for bit."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, tuple):
            return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        return bool(a == b)

    return sum(not same(a, b) for a, b in zip(want, got, strict=True))


@pytest.fixture(scope="module")
def tiny_model() -> LoadedModel:
    return get_tiny()[0]


def test_concurrent_generations_are_the_sequential_ones(tiny_model):
    backend = TorchBackend(tiny_model.model)
    jobs = generation_jobs(backend, THREADS * CALLS)
    want = [job() for job in jobs]
    got = run_threads(jobs)
    wrong = count_different(want, got)
    assert wrong == 0, f"{wrong} of {len(jobs)} generations differ from a sequential run"


def test_concurrent_layer_witnesses_are_the_sequential_ones(tiny_model):
    backend = TorchBackend(tiny_model.model)
    jobs = layer_jobs(backend, THREADS * LAYER_CALLS)
    want = [job() for job in jobs]
    got = run_threads(jobs)
    wrong = count_different(want, got)
    assert wrong == 0, f"{wrong} of {len(jobs)} layer runs (output, update) differ"


def test_executors_and_verifiers_over_one_model_do_not_see_each_other(tiny_model):
    # As in the local network: an executor backend and a verifier backend over the same
    # modules, each shared by several threads, generating and re-executing at once.
    executor, verifier = TorchBackend(tiny_model.model), TorchBackend(tiny_model.model)
    gen, lay = generation_jobs(executor, 2 * CALLS), layer_jobs(verifier, 2 * CALLS)
    jobs = [job for pair in zip(gen, lay, strict=True) for job in pair]
    want = [job() for job in jobs]
    got = run_threads(jobs)
    wrong = count_different(want, got)
    assert wrong == 0, f"{wrong} of {len(jobs)} calls differ from a sequential run"


@pytest.mark.slow
def test_smollm2_concurrent_calls_are_the_sequential_ones(smollm2):
    backend = TorchBackend(smollm2.model)
    short = SamplingParams(temperature=1.0, max_new_tokens=4, stop_at_eos=False)
    gen = [
        lambda j=j: backend.generate([1, 504, 3000 + j, 17, 9000], short, bytes(32))
        for j in range(THREADS)
    ]
    jobs = [job for pair in zip(gen, layer_jobs(backend, THREADS), strict=True) for job in pair]
    want = [job() for job in jobs]
    got = run_threads(jobs)
    wrong = count_different(want, got)
    assert wrong == 0, f"{wrong} of {len(jobs)} calls differ from a sequential run"


# The hooked implementations these backends used before [EXEC.9], kept as single-threaded
# references: the per-call code must give exactly what they gave.


@torch.inference_mode()
def hooked_generate(
    backend: TorchBackend, prompt: Sequence[int], params: SamplingParams, seed: bytes
) -> tuple[list[int], list[npt.NDArray[np.float32]]]:
    """Return the tokens and boundary-L states of generation through the model's own decoder."""
    boundary: list[torch.Tensor] = []
    hook = backend.model.model.norm.register_forward_pre_hook(
        lambda _m, args: boundary.append(args[0][0, -1])
    )
    states = []
    try:
        cache = DynamicCache(config=backend.model.config)
        ids = torch.tensor([list(prompt)])
        backend.model.model(input_ids=ids, past_key_values=cache, use_cache=True)
        tokens: list[int] = []
        for i in range(params.max_new_tokens):
            h = boundary.pop()
            states.append(h.to(torch.float32).numpy().copy())
            tok = backend._sample(backend._head_logits(h), params, seed, len(prompt) + i)
            tokens.append(tok)
            if i + 1 == params.max_new_tokens:
                break
            ids = torch.tensor([[tok]])
            backend.model.model(input_ids=ids, past_key_values=cache, use_cache=True)
    finally:
        hook.remove()
    return tokens, states


@torch.inference_mode()
def hooked_update(
    backend: TorchBackend, layer: int, hidden_in: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Return the self-attention output of ``layer``, captured by a hook during ``run_layer``."""
    captured: list[torch.Tensor] = []
    block = backend.model.model.layers[layer - 1]
    hook = block.self_attn.register_forward_hook(lambda _m, _i, o: captured.append(o[0]))
    try:
        backend.run_layer(layer, hidden_in)
    finally:
        hook.remove()
    return captured[0][0].to(torch.float32).numpy()


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def any_dtype(request, tiny_model) -> TorchBackend:
    dtype = torch.float32 if request.param == "float32" else torch.bfloat16
    return TorchBackend(tiny_model.model, dtype=dtype)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED])
def test_generation_is_the_hooked_generation_bit_for_bit(any_dtype, params):
    # [EXEC.9], [SAMPLE.6]: the decoder run layer by layer gives the states the model's own
    # decoder gives (transformers' LlamaModel), so the same tokens.
    last = any_dtype.model.model.layers[-1]
    for j in range(3):
        prompt = list(range(100 + j, 120 + 3 * j))
        seed = sha256(bytes([j]))
        recorded: list[npt.NDArray[np.float32]] = []
        hook = last.register_forward_hook(
            lambda _m, _i, o, r=recorded: r.append(o[0, -1].to(torch.float32).numpy().copy())
        )
        try:
            got = any_dtype.generate(prompt, params, seed)
        finally:
            hook.remove()
        want, states = hooked_generate(any_dtype, prompt, params, seed)
        assert got == want
        # One decoder pass per sampled token but the last; each gives the newest state.
        assert len(recorded) == len(states) == params.max_new_tokens
        assert all(np.array_equal(a, b) for a, b in zip(recorded, states, strict=True))


def test_layer_update_is_the_hooked_update_and_the_output_is_run_layers(any_dtype):
    # [EXEC.1], [EXEC.9]: the witness is the self_attn output, the output is run_layer's.
    rng = np.random.default_rng(3)
    states = any_dtype.prove(list(range(100, 128)))
    for layer in range(1, any_dtype.info.num_layers + 1):
        for x in (states[layer - 1], rng.standard_normal(states[0].shape).astype(np.float32)):
            out, update = any_dtype.run_layer_with_update(layer, x)
            assert out.dtype == update.dtype == np.float32
            assert np.array_equal(out, any_dtype.run_layer(layer, x))
            assert np.array_equal(update, hooked_update(any_dtype, layer, x))


@pytest.mark.parametrize("rope_type", sorted(STATEFUL_ROPE_TYPES))
def test_invalid_stateful_rope_type_is_refused(rope_type):
    # [EXEC.9]: a rotary embedding that rewrites its frequencies during a call is not re-entrant.
    lm, _ = get_tiny()
    model = copy.deepcopy(lm.model)
    model.model.rotary_emb.rope_type = rope_type
    with pytest.raises(ValueError, match="not re-entrant"):
        TorchBackend(model)

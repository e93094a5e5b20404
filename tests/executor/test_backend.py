"""The torch backend on the tiny model, checked against the model's own forward. [EXEC.1]-[EXEC.3],
[SAMPLE.4]"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bft.messages import InferenceRequest, SamplingParams
from bft.types import Digest, ModelId
from executor.backend import TorchBackend
from executor.sampler import compute_sampler_margin, sample_token
from tests.support import get_tiny

TOKENS = list(range(100, 128))  # 28 positions
PROMPT = TOKENS[:20]
SEED = b"\x07" * 32


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return get_tiny()[1]


@pytest.fixture(scope="module")
def states(backend) -> np.ndarray:
    return backend.prove(TOKENS)


@torch.inference_mode()
def reference_logits(backend: TorchBackend, tokens: list[int]) -> np.ndarray:
    """Return the model's own forward logits ``[T, V]`` (no cache, its own attention mask)."""
    return backend.model(input_ids=torch.tensor([tokens])).logits[0].float().numpy()


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_info_describes_the_model(backend):
    cfg = backend.model.config
    assert backend.info.name == "torch-cpu"
    assert backend.info.dtype == "float32"
    assert (backend.info.num_layers, backend.info.hidden_size, backend.info.vocab_size) == (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
    )
    assert backend.eos_ids == frozenset({2})
    assert backend.vocab_size == cfg.vocab_size


def test_prove_shape_is_boundaries_by_positions_by_hidden(backend, states):
    assert states.shape == (backend.info.num_layers + 1, len(TOKENS), backend.info.hidden_size)
    assert states.dtype == np.float32
    assert np.isfinite(states).all()


def test_prove_is_deterministic(backend, states):
    assert np.array_equal(backend.prove(TOKENS), states)


def test_final_boundary_gives_the_models_logits(backend, states):
    logits = backend.final_logits(states[-1])
    assert logits.shape == (len(TOKENS), backend.info.vocab_size)
    assert rel_error(logits, reference_logits(backend, TOKENS)) < 1e-5


def test_boundaries_match_the_models_hidden_states(backend, states):
    # transformers' own hidden_states: embeddings, then each layer's output (the last one after
    # the final norm, which prove() leaves out).
    with torch.inference_mode():
        out = backend.model(input_ids=torch.tensor([TOKENS]), output_hidden_states=True)
    hidden = [h[0].float().numpy() for h in out.hidden_states]
    for b in range(backend.info.num_layers):
        assert rel_error(states[b], hidden[b]) < 1e-5, b


def test_embed_is_boundary_zero(backend, states):
    emb = backend.embed(TOKENS)
    assert emb.dtype == np.float32
    assert np.array_equal(emb, states[0])
    weights = backend.model.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(emb, weights[TOKENS])


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_run_layer_reproduces_the_proving_prefill(backend, states, layer):
    out = backend.run_layer(layer, states[layer - 1])
    assert out.shape == states[layer].shape
    assert out.dtype == np.float32
    assert rel_error(out, states[layer]) < 1e-6


@pytest.mark.parametrize("layer", [1, 4])
@pytest.mark.parametrize("prefix", [1, 5, 16, 27])
def test_run_layer_on_a_prefix_is_causal(backend, states, layer, prefix):
    # [EXEC.3]: positions < P do not depend on later ones; the verifier's error measure
    # ([VERIFY.3]) stays far below its 1e-4 threshold.
    out = backend.run_layer(layer, states[layer - 1][:prefix])
    update = np.linalg.norm(states[layer][:prefix] - states[layer - 1][:prefix], axis=-1)
    err = np.linalg.norm(out - states[layer][:prefix], axis=-1) / update
    assert err.max() < 1e-5


def test_run_layer_sees_its_input(backend, states):
    # Not a constant function: a changed input changes the output.
    x = states[1].copy()
    x[3] += 0.5
    assert not np.allclose(backend.run_layer(2, x)[3:], states[2][3:])
    assert np.array_equal(backend.run_layer(2, x)[:3], backend.run_layer(2, states[1])[:3])


@pytest.mark.parametrize("layer", [0, 5, -1])
def test_invalid_run_layer_index(backend, states, layer):
    with pytest.raises(ValueError):
        backend.run_layer(layer, states[0])


def test_greedy_generation_is_deterministic_and_follows_the_argmax(backend):
    params = SamplingParams(max_new_tokens=8)
    out = backend.generate(PROMPT, params, SEED)
    assert out == backend.generate(PROMPT, params, b"\x00" * 32)  # greedy ignores the seed
    assert len(out) == 8
    logits = reference_logits(backend, PROMPT + out)
    for i, tok in enumerate(out):
        assert tok == int(np.argmax(logits[len(PROMPT) + i - 1])), i


def test_sampled_generation_follows_the_sampler_at_each_position(backend):
    # [SAMPLE.4]: position len(prompt) + i is sampled from the logits after prompt + output[:i].
    params = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=8)
    out = backend.generate(PROMPT, params, SEED)
    assert out == backend.generate(PROMPT, params, SEED)
    assert out != backend.generate(PROMPT, params, b"\x08" * 32)
    logits = reference_logits(backend, PROMPT + out)
    for i, tok in enumerate(out):
        p = len(PROMPT) + i
        assert tok == sample_token(logits[p - 1], params, SEED, p), i


@pytest.mark.parametrize("max_new_tokens", [1, 3])
def test_generation_stops_at_max_new_tokens(backend, max_new_tokens):
    out = backend.generate(PROMPT, SamplingParams(max_new_tokens=max_new_tokens), SEED)
    assert len(out) == max_new_tokens


class EosBackend(TorchBackend):
    """The same model with other end-of-sequence ids."""

    def __init__(self, model, eos_ids: frozenset[int]) -> None:
        super().__init__(model)
        self._declared_eos = eos_ids

    @property
    def eos_ids(self) -> frozenset[int]:
        return self._declared_eos


def test_generation_stops_right_after_eos_and_keeps_it(backend):
    params = SamplingParams(max_new_tokens=6)
    first = backend.generate(PROMPT, params, SEED)[0]
    # The same model with that first token declared as EOS.
    eos_backend = EosBackend(backend.model, frozenset({first}))
    assert eos_backend.eos_ids == frozenset({first})
    assert eos_backend.generate(PROMPT, params, SEED) == [first]
    no_stop = dataclasses.replace(params, stop_at_eos=False)
    assert len(eos_backend.generate(PROMPT, no_stop, SEED)) == 6


def test_sampler_margin_is_the_sampler_margin_of_the_final_logits(backend, states):
    # [SAMPLE.5] from the last boundary: 0 for the generated tokens, > 0 for another one.
    params = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=8)
    request = InferenceRequest(
        network_id="n",
        request_id=b"\x03" * 16,
        epoch=0,
        model_id=ModelId(b"\x00" * 32),
        prompt_tokens=tuple(PROMPT),
        sampling=params,
        f=1,
        layers_per_verifier=2,
        validator_set_digest=Digest(b"\x00" * 32),
    )
    out = backend.generate(PROMPT, params, request.sampling_seed())
    last = backend.prove(PROMPT + out)[-1]
    logits = backend.final_logits(last)
    for i, tok in enumerate(out):
        p = len(PROMPT) + i
        margin = backend.sampler_margin(last[p - 1 : p], request, p, tok)
        want = compute_sampler_margin(logits[p - 1], params, request.sampling_seed(), p, tok)
        assert margin == want == 0.0, i
        assert backend.sampler_margin(last[p - 1 : p], request, p, (tok + 1) % 49152) > 0.1

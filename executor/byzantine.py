"""Byzantine executors: named ways to lie, reused by tests, the CLI and (later) simnet.

Every mode produces a validly *signed* commitment: the lie must be caught by the verifiers'
checks, never by a flag the liar sets. Modes:

- ``int8-weights``: every linear weight of every decoder layer fake-quantised to int8
  (symmetric, per output channel) - a cheaper model served as the real one.
- ``other-model``: a model of the same shape with seeded random weights.
- ``tamper-tokens``: output tokens altered after the activations were captured.
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaForCausalLM

from bft.crypto import SigningKey
from bft.types import ModelId
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from executor.model import build_random_model

MODES = ("int8-weights", "other-model", "tamper-tokens")


def fake_quantize_(weight: torch.Tensor, bits: int) -> None:
    """Round ``weight`` in place to ``bits``-bit symmetric integers per output row."""
    qmax = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
    weight.copy_((weight / scale).round().clamp(-qmax, qmax) * scale)


def build_quantized_model(model: LlamaForCausalLM, bits: int) -> LlamaForCausalLM:
    """Return a copy of ``model`` whose decoder-layer linear weights are fake-quantised."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        for layer in q.model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    fake_quantize_(module.weight, bits)
    return q.eval()


class TamperTokensExecutor(ExecutorCore):
    """Commits to honest activations but swaps output tokens afterwards."""

    def compute_committed_tokens(self, prompt: list[int], output: list[int]) -> list[int]:
        """Return prompt + output with every output token replaced by its successor id."""
        vocab = self.backend.info.vocab_size
        return prompt + [(t + 1) % vocab for t in output]


def make_byzantine_executor(
    mode: str,
    key: SigningKey,
    model: LlamaForCausalLM,
    model_id: ModelId,
    network_id: str,
    chunk_size: int,
) -> ExecutorCore:
    """Return an executor that lies as ``mode`` while claiming ``model_id``."""
    if mode == "int8-weights":
        backend = TorchBackend(build_quantized_model(model, 8))
        return ExecutorCore(key, backend, model_id, network_id, chunk_size)
    if mode == "other-model":
        backend = TorchBackend(build_random_model(model.config, seed=1234))
        return ExecutorCore(key, backend, model_id, network_id, chunk_size)
    if mode == "tamper-tokens":
        return TamperTokensExecutor(key, TorchBackend(model), model_id, network_id, chunk_size)
    raise ValueError(f"unknown byzantine mode {mode!r}; choose from {', '.join(MODES)}")

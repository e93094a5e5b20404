"""Byzantine executors: named ways to lie, for tests, benchmarks and ``--byzantine-executor``.

Every mode signs what it sends: a lie must be caught by the verifiers' checks, never by a flag
the liar sets. Whole-run cheats change every layer or every position and must be caught on
every request; partial cheats are caught with the probability the sampling gives
(docs/detection.md).
"""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import LlamaForCausalLM

from bft.crypto import SigningKey
from bft.encoding import sha256
from bft.errors import Unavailable
from bft.messages import InferenceRequest, SignedCommitment, TileOpening, TileRef
from bft.types import Digest, ModelId
from executor.backend import TorchBackend
from executor.core import CommittedRun, ExecutorCore
from executor.model import build_random_model
from merkle.sketch import compute_sketch

WHOLE_RUN_MODES = (
    "int8-weights",
    "int4-weights",
    "bf16-compute",
    "fp16-compute",
    "other-model",
    "alter-prompt",
    "tamper-tokens",
    "replay",
    "bad-opening",
    "equivocate",
    "withhold",
)
PARTIAL_MODES = (
    "skip-layer",
    "perturb-layer",
    "selective",
    "wrong-sampler",
    "smart-tamper-tokens",
    "bad-sketch",
)
MODES = WHOLE_RUN_MODES + PARTIAL_MODES

PERTURB_SCALE = 0.05
"""Noise added by ``perturb-layer``, relative to the RMS of the layer's own update."""
SELECTIVE_REQUEST_RATE = 0.5
"""Fraction of requests on which ``selective`` lies (on one random layer)."""


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


class LayerTamper(torch.nn.Module):
    """Wraps a decoder layer; when ``mode`` is set it skips the layer or perturbs its output."""

    def __init__(self, inner: torch.nn.Module, seed: int) -> None:
        super().__init__()
        self.inner = inner
        self.seed = seed
        self.mode: str | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the layer, then apply the tamper."""
        if self.mode == "skip":
            return hidden_states
        out: torch.Tensor = self.inner(hidden_states, *args, **kwargs)
        if self.mode == "perturb":
            # Noise per absolute position, so that generation (KV cache, one position at a
            # time) and the proving prefill tell the same lie: only the layer check sees it.
            positions = kwargs["position_ids"][0].tolist()
            noise = torch.stack([self._noise(p, out.shape[-1]) for p in positions])[None]
            rms = (out - hidden_states).pow(2).mean(dim=-1, keepdim=True).sqrt()
            out = out + PERTURB_SCALE * rms * noise.to(device=out.device, dtype=out.dtype)
        return out

    def _noise(self, position: int, hidden: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        return torch.randn(hidden, generator=gen)


def build_tampered_model(
    model: LlamaForCausalLM, seed: int
) -> tuple[LlamaForCausalLM, list[LayerTamper]]:
    """Return a copy of ``model`` with every decoder layer wrapped in an inactive tamper."""
    m = copy.deepcopy(model)
    wrappers = [LayerTamper(layer, seed + i) for i, layer in enumerate(m.model.layers)]
    m.model.layers = torch.nn.ModuleList(wrappers)
    return m.eval(), wrappers


class LayerTamperExecutor(ExecutorCore):
    """Skips or perturbs chosen layers; ``choose`` picks (layers, mode) per request."""

    def __init__(
        self,
        *args: Any,
        wrappers: list[LayerTamper],
        choose: Callable[[InferenceRequest], tuple[list[int], str | None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wrappers = wrappers
        self.choose = choose
        self._tamper_lock = threading.Lock()
        self.lied_layers: list[list[int]] = []
        """1-based layers tampered on each request, in order (for benchmarks)."""

    def on_execute(self, request: InferenceRequest) -> SignedCommitment:
        """Tamper the chosen layers for this request only."""
        layers, mode = self.choose(request)
        with self._tamper_lock:
            for i, w in enumerate(self.wrappers):
                w.mode = mode if i + 1 in layers else None
            try:
                signed = super().on_execute(request)
            finally:
                for w in self.wrappers:
                    w.mode = None
            self.lied_layers.append(layers if mode else [])
        return signed


class TamperTokensExecutor(ExecutorCore):
    """Commits to honest activations but swaps every output token afterwards."""

    def compute_committed_tokens(self, prompt: list[int], output: list[int]) -> list[int]:
        """Return prompt + output with every output token replaced by its successor id."""
        vocab = self.backend.info.vocab_size
        return prompt + [(t + 1) % vocab for t in output]


class SmartTamperTokensExecutor(ExecutorCore):
    """Alters the last output token and recomputes the activations for the altered sequence.

    Embeddings and every layer then check out; only the sampler check at that position sees it.
    """

    def compute_states(self, tokens: list[int]) -> npt.NDArray[np.float32]:
        """Prove the altered sequence."""
        return self.backend.prove(self._alter(tokens))

    def compute_committed_tokens(self, prompt: list[int], output: list[int]) -> list[int]:
        """Commit the altered sequence."""
        return self._alter(prompt + output)

    def _alter(self, tokens: list[int]) -> list[int]:
        return [*tokens[:-1], (tokens[-1] + 1) % self.backend.info.vocab_size]


class AlterPromptExecutor(ExecutorCore):
    """Runs on a prompt whose first third (after token 0) is blanked; claims the real prompt."""

    def on_execute(self, request: InferenceRequest) -> SignedCommitment:
        """Execute the altered prompt, then commit as if it were the requested one."""
        self._real_prompt = list(request.prompt_tokens)
        return super().on_execute(request)

    def compute_states(self, tokens: list[int]) -> npt.NDArray[np.float32]:
        """Prove with the altered prompt."""
        n = len(self._real_prompt)
        cut = max(2, n // 3)
        altered = [tokens[0], *([198] * (cut - 1)), *tokens[cut:]]  # 198: newline in SmolLM2
        return self.backend.prove(altered[: len(tokens)])


class WrongSamplerExecutor(ExecutorCore):
    """Samples with its own seed instead of the request's."""

    def on_execute(self, request: InferenceRequest) -> SignedCommitment:
        """Execute with a seed of the executor's choosing."""
        return super().on_execute(_OwnSeedRequest.wrap(request))


class _OwnSeedRequest(InferenceRequest):
    """A request whose sampling seed the executor chose (everything else unchanged)."""

    __slots__ = ()

    @classmethod
    def wrap(cls, request: InferenceRequest) -> InferenceRequest:
        return cls(**{f: getattr(request, f) for f in InferenceRequest.__dataclass_fields__})

    def sampling_seed(self) -> bytes:
        return sha256(b"my own seed" + self.request_id)


class ReplayExecutor(ExecutorCore):
    """Answers every request with the commitment it made for an earlier one."""

    _old: SignedCommitment | None = None

    def on_execute(self, request: InferenceRequest) -> SignedCommitment:
        """Return the stored commitment (made once, for a request with another id)."""
        if self._old is None:
            earlier = replace(request, request_id=bytes(b ^ 0xFF for b in request.request_id))
            self._old = super().on_execute(earlier)
        return self._old


class BadOpeningExecutor(ExecutorCore):
    """Serves boundary-0 leaves with a flipped byte: they no longer open the signed root."""

    def compute_opening(self, run: CommittedRun, tile: TileRef, index: int) -> TileOpening:
        """Return the opening with its leaf altered."""
        o = super().compute_opening(run, tile, index)
        if tile.boundary != 0:
            return o
        leaf = bytearray(o.leaf)
        leaf[-1] ^= 0x01
        return replace(o, leaf=bytes(leaf))


class EquivocateExecutor(ExecutorCore):
    """Signs a second commitment for the same request and serves openings against it."""

    def on_execute(self, request: InferenceRequest) -> SignedCommitment:
        """Commit twice; hand the first to the assembler, keep the second for openings."""
        first = super().on_execute(request)
        self._equivocating = True
        try:
            second = self.execute_fresh(request)
        finally:
            self._equivocating = False
        self._second = {first.digest: second.digest}
        return first

    def compute_states(self, tokens: list[int]) -> npt.NDArray[np.float32]:
        """Nudge the last boundary on the second run, so its root differs."""
        states = super().compute_states(tokens)
        if getattr(self, "_equivocating", False):
            states = states.copy()
            states[-1, -1, 0] += 1e-3
        return states

    def on_open(self, commitment_digest: Digest, tiles: tuple[TileRef, ...]):  # type: ignore[no-untyped-def]
        """Open the second commitment instead of the one asked for."""
        other = getattr(self, "_second", {}).get(commitment_digest, commitment_digest)
        return super().on_open(other, tiles)


class BadSketchExecutor(ExecutorCore):
    """Commits honest tiles but a sketch of the boundary before the last one.

    Only the whole-sequence sketch check sees it, so it is caught when a verifier draws that
    check (probability ``q`` per verifier) or escalates.
    """

    def compute_sketch(self, states: npt.NDArray[np.float32]) -> tuple[bytes, ...]:
        """Return the sketch of boundary ``L - 1`` instead of ``L``."""
        return compute_sketch(states[-2])


class WithholdExecutor(ExecutorCore):
    """Never serves openings."""

    def on_open(self, commitment_digest: Digest, tiles: tuple[TileRef, ...]):  # type: ignore[no-untyped-def]
        """Refuse."""
        raise Unavailable("openings withheld")


def make_byzantine_executor(
    mode: str,
    key: SigningKey,
    model: LlamaForCausalLM,
    model_id: ModelId,
    network_id: str,
    chunk_size: int,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ExecutorCore:
    """Return an executor that lies as ``mode`` while claiming ``model_id``.

    It claims the execution profile of an honest torch executor on ``device`` in ``dtype``
    ([EXEC.5]); the cheats that compute otherwise (lower precision, other weights) still sign
    that profile.
    """
    honest = TorchBackend(model, device=device, dtype=dtype)
    args = (key,)
    kw: dict[str, Any] = {"model_id": model_id, "network_id": network_id, "chunk_size": chunk_size}
    num_layers = model.config.num_hidden_layers
    rng = random.Random(seed)

    def claiming(fresh: LlamaForCausalLM, compute: torch.dtype = dtype) -> TorchBackend:
        # ``fresh`` is this executor's own copy: move it in place (wrappers keep pointing at
        # its layers), then sign the honest profile whatever it computes in.
        fresh.to(device=honest.device, dtype=compute)
        backend = TorchBackend(fresh, device=device, dtype=compute)
        backend.info = honest.info
        return backend

    if mode in ("int8-weights", "int4-weights"):
        bits = 8 if mode == "int8-weights" else 4
        return ExecutorCore(*args, backend=claiming(build_quantized_model(model, bits)), **kw)
    if mode in ("bf16-compute", "fp16-compute"):
        low = torch.bfloat16 if mode == "bf16-compute" else torch.float16
        return ExecutorCore(*args, backend=claiming(copy.deepcopy(model), low), **kw)
    if mode == "other-model":
        other = build_random_model(model.config, seed=1234 + seed)
        return ExecutorCore(*args, backend=claiming(other), **kw)
    if mode in ("skip-layer", "perturb-layer", "selective"):
        tampered, wrappers = build_tampered_model(model, seed)
        fixed = rng.randrange(1, num_layers + 1)

        def choose(request: InferenceRequest) -> tuple[list[int], str | None]:
            if mode == "skip-layer":
                return [fixed], "skip"
            if mode == "perturb-layer":
                return [fixed], "perturb"
            if rng.random() < SELECTIVE_REQUEST_RATE:
                return [rng.randrange(1, num_layers + 1)], "perturb"
            return [], None

        return LayerTamperExecutor(
            *args, backend=claiming(tampered), wrappers=wrappers, choose=choose, **kw
        )
    classes: dict[str, type[ExecutorCore]] = {
        "tamper-tokens": TamperTokensExecutor,
        "smart-tamper-tokens": SmartTamperTokensExecutor,
        "alter-prompt": AlterPromptExecutor,
        "wrong-sampler": WrongSamplerExecutor,
        "replay": ReplayExecutor,
        "bad-opening": BadOpeningExecutor,
        "equivocate": EquivocateExecutor,
        "withhold": WithholdExecutor,
        "bad-sketch": BadSketchExecutor,
    }
    if mode in classes:
        return classes[mode](*args, backend=honest, **kw)
    raise ValueError(f"unknown byzantine mode {mode!r}; choose from {', '.join(MODES)}")

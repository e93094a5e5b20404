"""Model backends behind one interface. [EXEC.1]-[EXEC.3], [EXEC.9]

A backend generates with the protocol's sampler, runs the *proving prefill* (hidden state at
every layer boundary), and re-executes single layers for verifiers. The torch backend runs on
the CPU or a CUDA GPU in float32, bfloat16 or float16; the vLLM backend
(:mod:`executor.vllm_backend`) generates with vLLM on a GPU and proves with the torch backend.
Backends are called from several threads at once, over modules they share with other backends:
no call leaves state on a module (no hooks).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask

from bft.messages import InferenceRequest, SamplingParams
from executor.sampler import compute_sampler_margin, sample_token
from executor.sampler_torch import sample_token_torch


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a backend records in commitments. [EXEC.5], [EXEC.6]

    ``name`` and ``dtype`` make the execution profile ``<name>-<dtype>`` that selects the
    verifier's bands; ``settings`` says how it ran (device, versions, kernels, parallelism).
    """

    name: str
    dtype: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    settings: str = ""

    @property
    def profile(self) -> str:
        """Return the execution profile ``<name>-<dtype>``."""
        return f"{self.name}-{self.dtype}"


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""Compute dtypes a backend may run in, by their names in commitments."""


def get_dtype_name(dtype: torch.dtype) -> str:
    """Return the commitment name of torch ``dtype``."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported compute dtype {dtype}")


def describe_settings(model: torch.nn.Module, device: torch.device) -> str:
    """Return the [EXEC.6] settings string of a torch model on ``device`` (<= 256 chars)."""
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or "default"
    parts = [f"torch={torch.__version__}", f"attn={attn}", "tp=1"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts += [
            f"device={props.name}",
            f"cc={props.major}.{props.minor}",
            f"fp32_matmul={torch.get_float32_matmul_precision()}",
            "bf16_reduced_reduction="
            + str(int(torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)),
        ]
    else:  # no thread count: it varies by host and is calibrated as honest noise
        parts.append(f"device={device.type}")
    return ";".join(parts)[:256]


class Backend(Protocol):
    """The interface every executor/verifier backend implements."""

    info: BackendInfo

    def generate(self, prompt: Sequence[int], params: SamplingParams, seed: bytes) -> list[int]:
        """Return the output tokens for ``prompt`` sampled with ``params`` under ``seed``."""
        ...

    def prove(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return hidden states ``[L+1, len(tokens), H]`` at every layer boundary."""
        ...

    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return boundary 0 (``[len(tokens), H]``) for ``tokens``."""
        ...

    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return layer ``layer`` (1-based) applied to positions ``0..P-1`` of ``hidden_in``."""
        ...


GenerationItem = tuple[Sequence[int], SamplingParams, bytes]
"""One request to generate: prompt tokens, sampling parameters, sampling seed."""


@runtime_checkable
class BatchingBackend(Protocol):
    """A backend that generates several requests as one batch (vLLM). [EXEC.8]

    A capability beside :class:`Backend`: ``isinstance(backend, BatchingBackend)`` says whether
    an executor can hand it whole batches (:class:`executor.batching.ExecutionBatcher`).
    """

    def generate_many(self, items: Sequence[GenerationItem]) -> list[list[int]]:
        """Return the output tokens of each of ``items``, in order, as :meth:`generate` would."""
        ...


STATEFUL_ROPE_TYPES = frozenset({"dynamic", "longrope"})
"""RoPE types whose rotary embedding rewrites its frequencies during a call: not re-entrant,
so a backend refuses them ([EXEC.9])."""


class TorchBackend:
    """A HuggingFace Llama-family model run with torch, on the CPU or a CUDA GPU. [EXEC.4]

    The proving prefill and single-layer re-execution share one code path with an explicit
    causal mask, so that prover and verifier compute each layer the same way. The decoder
    layers run in ``dtype``; hidden states cross the interface as float32 (tiles are float32
    whatever the compute dtype), and the final norm and LM head always run in float32
    ([SAMPLE.6]), so that every profile samples from the same function of the boundary-L state.
    Every method is safe to call from several threads, also with other backends over the same
    modules: what a call captures stays in the call ([EXEC.9]).
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        name: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
        if rope_type in STATEFUL_ROPE_TYPES:
            raise ValueError(f"RoPE type {rope_type!r} is not re-entrant; unsupported [EXEC.9]")
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        first = next(model.parameters())
        want = dtype or first.dtype
        # [SAMPLE.6]: the head runs in float32 in every profile, with the caller's weights (taken
        # before any narrowing); the norm is always this backend's own float32 copy.
        source_norm, source_head = model.model.norm, model.lm_head
        self._head_norm = copy.deepcopy(source_norm).to(device=dev, dtype=torch.float32)
        if source_head.weight.device == dev and source_head.weight.dtype == torch.float32:
            self._head = source_head
        else:
            self._head = copy.deepcopy(source_head).to(device=dev, dtype=torch.float32)
        if first.device != dev or first.dtype != want:
            model = copy.deepcopy(model).to(device=dev, dtype=want)
        self.model = model.eval()
        self.device = dev
        self.dtype = want
        cfg = model.config
        self.info = BackendInfo(
            name=name or f"torch-{dev.type}",
            dtype=get_dtype_name(want),
            num_layers=cfg.num_hidden_layers,
            hidden_size=cfg.hidden_size,
            vocab_size=cfg.vocab_size,
            settings=describe_settings(self.model, dev),
        )
        eos = cfg.eos_token_id
        self._eos_ids = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @property
    def eos_ids(self) -> frozenset[int]:
        """Return the token ids that end generation."""
        return self._eos_ids

    @property
    def vocab_size(self) -> int:
        """Return the vocabulary size."""
        return self.info.vocab_size

    def _ids(self, tokens: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(tokens)], dtype=torch.long, device=self.device)

    def _hidden(self, hidden: npt.NDArray[np.float32]) -> torch.Tensor:
        h = torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32))
        return h.to(device=self.device, dtype=self.dtype)

    def _head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Return float32 logits of boundary-L states ``h`` (final norm + LM head). [SAMPLE.6]"""
        h32 = h.to(torch.float32)
        return self._head(self._head_norm(h32))  # type: ignore[no-any-return]

    @torch.inference_mode()
    def generate(self, prompt: Sequence[int], params: SamplingParams, seed: bytes) -> list[int]:
        """Return output tokens, sampled position by position with a KV cache.

        The logits come from the boundary-L state of the newest position (the last decoder
        layer's output, :meth:`_decode`) through :meth:`_head_logits`, as a verifier computes
        them. [SAMPLE.6], [EXEC.9]
        """
        cache = DynamicCache(config=self.model.config)
        state = self._decode(prompt, cache)
        tokens: list[int] = []
        for i in range(params.max_new_tokens):
            tok = self._sample(self._head_logits(state), params, seed, len(prompt) + i)
            tokens.append(tok)
            if params.stop_at_eos and tok in self.eos_ids:
                break
            if i + 1 == params.max_new_tokens:
                break
            state = self._decode([tok], cache)
        return tokens

    def _decode(self, tokens: Sequence[int], cache: DynamicCache) -> torch.Tensor:
        """Return the boundary-L state of the last of ``tokens``, appended to ``cache``. [EXEC.9]

        The decoder step of transformers' ``LlamaModel.forward`` (embedding, causal mask,
        position ids and rotary embedding after the cached positions, every decoder layer),
        the same operations, without its final norm: the last layer's output is the state,
        held by this call alone (no hook on a shared module).
        """
        m = self.model.model
        h = m.embed_tokens(self._ids(tokens))
        past = cache.get_seq_length()
        pos = (torch.arange(h.shape[1], device=h.device) + past).unsqueeze(0)
        mask = create_causal_mask(
            config=m.config,
            inputs_embeds=h,
            attention_mask=None,
            past_key_values=cache,
            position_ids=pos,
        )
        rope = m.rotary_emb(h, position_ids=pos)
        for layer in m.layers[: m.config.num_hidden_layers]:
            h = layer(
                h,
                attention_mask=mask,
                position_embeddings=rope,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            )
        state: torch.Tensor = h[0, -1]
        return state

    def _sample(self, logits: torch.Tensor, params: SamplingParams, seed: bytes, pos: int) -> int:
        """Return the protocol's token from float32 ``logits`` on this backend's device.

        On the CPU, NumPy's :func:`sample_token`; on a GPU, the same rule on the device
        ([SAMPLE.7]), so that a step copies no logits to the host.
        """
        if self.device.type == "cpu":
            return sample_token(_to_numpy(logits), params, seed, pos)
        return sample_token_torch(logits, params, seed, pos)

    @torch.inference_mode()
    def prove(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return ``[L+1, T, H]`` raw decoder-layer outputs (boundary L precedes the final norm)."""
        h = self.model.model.embed_tokens(self._ids(tokens))
        states = [h[0]]
        mask, pos, rope = self._attention_inputs(h)
        for layer in self.model.model.layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            states.append(h[0])
        return _to_numpy(torch.stack(states))

    @torch.inference_mode()
    def final_states(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the ``[T, H]`` boundary-L states of one prefill (the sketch check's input)."""
        h = self.model.model.embed_tokens(self._ids(tokens))
        mask, pos, rope = self._attention_inputs(h)
        for layer in self.model.model.layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
        return _to_numpy(h[0])

    @torch.inference_mode()
    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the embedding rows of ``tokens``."""
        return _to_numpy(self.model.model.embed_tokens(self._ids(tokens))[0])

    @torch.inference_mode()
    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return decoder layer ``layer`` (1..L) applied to ``hidden_in`` (``[P, H]``)."""
        if not 1 <= layer <= self.info.num_layers:
            raise ValueError(f"layer {layer} outside 1..{self.info.num_layers}")
        h = self._hidden(hidden_in)[None]
        mask, pos, rope = self._attention_inputs(h)
        out = self.model.model.layers[layer - 1](
            h, attention_mask=mask, position_ids=pos, position_embeddings=rope
        )
        return _to_numpy(out[0])

    @torch.inference_mode()
    def run_layer_with_update(
        self, layer: int, hidden_in: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return :meth:`run_layer`'s output and the attention update inside the layer.

        The layer's sub-steps run here, in the order of the decoder layer's own forward, so the
        update (the ``self_attn`` output) stays in this call and the output is
        :meth:`run_layer`'s, bit for bit. [EXEC.1], [EXEC.9]
        """
        if not 1 <= layer <= self.info.num_layers:
            raise ValueError(f"layer {layer} outside 1..{self.info.num_layers}")
        block = self.model.model.layers[layer - 1]
        h = self._hidden(hidden_in)[None]
        mask, pos, rope = self._attention_inputs(h)
        update, _ = block.self_attn(
            hidden_states=block.input_layernorm(h),
            attention_mask=mask,
            position_ids=pos,
            past_key_values=None,
            use_cache=False,
            position_embeddings=rope,
        )
        h = h + update
        out = h + block.mlp(block.post_attention_layernorm(h))
        return _to_numpy(out[0]), _to_numpy(update[0])

    @torch.inference_mode()
    def final_logits(self, hidden_last: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return float32 LM-head logits for boundary-L states ``[P, H]``. [SAMPLE.6]"""
        h = torch.from_numpy(np.ascontiguousarray(hidden_last, dtype=np.float32))
        return _to_numpy(self._head_logits(h.to(self.device)))

    def sampler_margin(
        self,
        hidden_last: npt.NDArray[np.float32],
        request: InferenceRequest,
        position: int,
        token: int,
    ) -> float:
        """Return the [SAMPLE.5] margin of ``token`` at ``position`` from ``hidden_last``."""
        logits = self.final_logits(hidden_last)[-1]
        return compute_sampler_margin(
            logits, request.sampling, request.sampling_seed(), position, token
        )

    def _attention_inputs(
        self, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        t = h.shape[1]
        pos = torch.arange(t, dtype=torch.long, device=h.device)[None]
        mask = torch.full((t, t), float("-inf"), dtype=h.dtype, device=h.device).triu(1)
        rope = self.model.model.rotary_emb(h, pos)
        return mask[None, None], pos, rope


def _to_numpy(t: torch.Tensor) -> npt.NDArray[np.float32]:
    return np.asarray(t.detach().to(torch.float32).cpu().numpy(), dtype=np.float32)

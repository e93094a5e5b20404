"""Model backends behind one interface. [EXEC.1]-[EXEC.3]

A backend generates with the protocol's sampler, runs the *proving prefill* (hidden state at
every layer boundary), and re-executes single layers for verifiers. The torch backend runs on
the CPU in float32; the vLLM backend arrives with issue [gpu].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache, LlamaForCausalLM

from bft.messages import InferenceRequest, SamplingParams
from executor.sampler import compute_sampler_margin, sample_token


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a backend records in commitments: its name and activation dtype."""

    name: str
    dtype: str
    num_layers: int
    hidden_size: int
    vocab_size: int


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


class TorchBackend:
    """A HuggingFace Llama-family model run with torch, float32.

    The proving prefill and single-layer re-execution share one code path
    (:meth:`_run_layers`) with an explicit causal mask, so that prover and verifier compute
    each layer the same way.
    """

    def __init__(self, model: LlamaForCausalLM, name: str = "torch-cpu") -> None:
        self.model = model.eval()
        cfg = model.config
        self.info = BackendInfo(
            name=name,
            dtype="float32",
            num_layers=cfg.num_hidden_layers,
            hidden_size=cfg.hidden_size,
            vocab_size=cfg.vocab_size,
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

    @torch.inference_mode()
    def generate(self, prompt: Sequence[int], params: SamplingParams, seed: bytes) -> list[int]:
        """Return output tokens, sampled position by position with a KV cache."""
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tokens: list[int] = []
        for i in range(params.max_new_tokens):
            logits = out.logits[0, -1].float().numpy()
            tok = sample_token(logits, params, seed, len(prompt) + i)
            tokens.append(tok)
            if params.stop_at_eos and tok in self.eos_ids:
                break
            if i + 1 == params.max_new_tokens:
                break
            out = self.model(
                input_ids=torch.tensor([[tok]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return tokens

    @torch.inference_mode()
    def prove(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return ``[L+1, T, H]`` raw decoder-layer outputs (boundary L precedes the final norm)."""
        h = self.model.model.embed_tokens(torch.tensor([list(tokens)], dtype=torch.long))
        states = [h[0]]
        layers = self.model.model.layers
        mask, pos, rope = self._attention_inputs(h)
        for layer in layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            states.append(h[0])
        return np.asarray(torch.stack(states).float().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def final_states(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the ``[T, H]`` boundary-L states of one prefill (the sketch check's input)."""
        h = self.model.model.embed_tokens(torch.tensor([list(tokens)], dtype=torch.long))
        mask, pos, rope = self._attention_inputs(h)
        for layer in self.model.model.layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
        return np.asarray(h[0].float().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the embedding rows of ``tokens``."""
        ids = torch.tensor(list(tokens), dtype=torch.long)
        return np.asarray(self.model.model.embed_tokens(ids).float().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return decoder layer ``layer`` (1..L) applied to ``hidden_in`` (``[P, H]``)."""
        if not 1 <= layer <= self.info.num_layers:
            raise ValueError(f"layer {layer} outside 1..{self.info.num_layers}")
        h = torch.from_numpy(np.ascontiguousarray(hidden_in, dtype=np.float32))[None]
        mask, pos, rope = self._attention_inputs(h)
        out = self.model.model.layers[layer - 1](
            h, attention_mask=mask, position_ids=pos, position_embeddings=rope
        )
        return np.asarray(out[0].float().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def run_layer_with_update(
        self, layer: int, hidden_in: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return :meth:`run_layer`'s output and the attention update inside the layer."""
        if not 1 <= layer <= self.info.num_layers:
            raise ValueError(f"layer {layer} outside 1..{self.info.num_layers}")
        captured: list[torch.Tensor] = []
        block = self.model.model.layers[layer - 1]
        hook = block.self_attn.register_forward_hook(lambda _m, _i, o: captured.append(o[0]))
        try:
            out = self.run_layer(layer, hidden_in)
        finally:
            hook.remove()
        return out, np.asarray(captured[0][0].float().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def final_logits(self, hidden_last: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return LM-head logits for boundary-L states ``[P, H]`` (final norm applied)."""
        h = torch.from_numpy(np.ascontiguousarray(hidden_last, dtype=np.float32))
        logits = self.model.lm_head(self.model.model.norm(h))
        return np.asarray(logits.float().numpy(), dtype=np.float32)

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
        pos = torch.arange(t, dtype=torch.long)[None]
        mask = torch.full((t, t), float("-inf"), dtype=h.dtype).triu(1)[None, None]
        rope = self.model.model.rotary_emb(h, pos)
        return mask, pos, rope

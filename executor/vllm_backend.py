"""The vLLM executor backend: generation by vLLM on a CUDA GPU, proofs by torch. [EXEC.7]

vLLM generates (continuous batching, paged attention, CUDA graphs); the protocol's seeded
sampler runs inside it as a logits processor (:class:`VerihiveSampler`): each protocol row is
rewritten so that vLLM's greedy argmax emits exactly the token :func:`sample_token` picks from
vLLM's float32 logits (greedy protocol requests need no rewrite). The commitment's hidden
states come from a proving prefill by :class:`TorchBackend` on the same GPU in the same dtype
(decision in docs/decisions.md: one prefill with hooks on HF decoder layers is simple and
exact; vLLM's fused residual layout would need model-specific hooks). The commitment records
``backend = "vllm-cuda"``; its layer, embedding and sketch bands are those of the torch prover,
its sampler band covers vLLM's logits against the verifier's float32 head.

Import this module only on a host with vLLM (``pip install '.[gpu]'``); nothing else imports it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import LlamaForCausalLM

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the sampler state is in-process
# vLLM's sampler would import FlashInfer at engine start; the protocol's token is forced by the
# logits processor and vLLM only takes an argmax, so FlashInfer is neither needed nor shipped.
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")

import vllm
from vllm import LLM
from vllm import SamplingParams as VllmSamplingParams
from vllm.inputs import TokensPrompt
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from bft.messages import InferenceRequest, SamplingParams
from executor.backend import BackendInfo, TorchBackend, get_dtype_name
from executor.sampler_torch import (
    ProtocolSamplerRows,
    SamplerRow,
    decode_protocol_args,
    encode_protocol_args,
    prompt_length,
)

BACKEND_NAME = "vllm-cuda"


class VerihiveSampler(LogitsProcessor):  # type: ignore[misc]
    """vLLM v1 logits processor that applies the protocol's seeded sampler. [SAMPLE.7]"""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows = ProtocolSamplerRows()

    @classmethod
    def validate_params(cls, sampling_params: VllmSamplingParams) -> None:
        """Refuse malformed protocol args (``ValueError``) before the request enters the batch."""
        decode_protocol_args(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        """Sampled protocol rows change the argmax (they force the protocol's token)."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Track which batch row holds which protocol request."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.remove(index)
        for index, params, prompt, output in batch_update.added:
            decoded = decode_protocol_args(params.extra_args)
            row = None
            if decoded is not None:
                row = SamplerRow(decoded[0], decoded[1], prompt_length(prompt), output)
            self.rows.add(index, row)
        for a, b, direction in batch_update.moved:
            self.rows.move(a, b, direction == MoveDirectionality.SWAP)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Force each sampled protocol row to its protocol token."""
        return self.rows.apply(logits)


class VllmBackend:
    """A CUDA executor backend: vLLM generates, :class:`TorchBackend` proves. [EXEC.7]

    ``model_dir`` holds the HF files (config, safetensors, tokenizer) of the same weights as
    ``model`` (the model id is computed from ``model``). ``dtype`` is the compute dtype of both.
    """

    def __init__(
        self,
        model_dir: Path,
        model: LlamaForCausalLM,
        *,
        dtype: torch.dtype = torch.bfloat16,
        gpu_memory_utilization: float = 0.4,
        enforce_eager: bool = False,
        async_scheduling: bool = False,
        max_model_len: int = 4096,
        max_num_seqs: int = 256,
    ) -> None:
        if async_scheduling:  # the processor reads live output lists: exact only when synchronous
            raise ValueError("the protocol sampler needs async scheduling off ([EXEC.7])")
        self.prover = TorchBackend(model, BACKEND_NAME, device="cuda", dtype=dtype)
        self.llm = LLM(
            model=str(model_dir),
            dtype=get_dtype_name(dtype),
            seed=0,
            skip_tokenizer_init=True,
            generation_config="vllm",
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            async_scheduling=async_scheduling,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            logits_processors=[VerihiveSampler],
            # The safetensors cache's config.json names no architecture (converted from GGUF);
            # without this vLLM would build the headless LlamaModel.
            hf_overrides={"architectures": [type(model).__name__]},
        )
        self.batch_invariant = os.environ.get("VLLM_BATCH_INVARIANT", "0") == "1"
        settings = ";".join(
            [
                f"vllm={vllm.__version__}",
                f"eager={int(enforce_eager)}",
                f"async={int(async_scheduling)}",
                f"batch_invariant={int(self.batch_invariant)}",
                f"prover[{self.prover.info.settings}]",
            ]
        )[:256]
        p = self.prover.info
        self.info = BackendInfo(
            BACKEND_NAME, p.dtype, p.num_layers, p.hidden_size, p.vocab_size, settings
        )

    @property
    def eos_ids(self) -> frozenset[int]:
        """Return the token ids that end generation."""
        return self.prover.eos_ids

    @property
    def vocab_size(self) -> int:
        """Return the vocabulary size."""
        return self.info.vocab_size

    def to_vllm(self, params: SamplingParams, seed: bytes) -> VllmSamplingParams:
        """Return vLLM sampling parameters that realise the protocol's ``params``."""
        return VllmSamplingParams(
            temperature=0.0,  # vLLM's argmax emits the token the processor leaves
            max_tokens=params.max_new_tokens,
            ignore_eos=True,  # stopping is the protocol's rule, on our EOS ids
            stop_token_ids=sorted(self.eos_ids) if params.stop_at_eos else None,
            detokenize=False,
            extra_args=encode_protocol_args(params, seed),
        )

    def generate(self, prompt: Sequence[int], params: SamplingParams, seed: bytes) -> list[int]:
        """Return the output tokens of one request."""
        return self.generate_many([(prompt, params, seed)])[0]

    def generate_many(
        self, items: Sequence[tuple[Sequence[int], SamplingParams, bytes]]
    ) -> list[list[int]]:
        """Return the output tokens of several requests, generated as one vLLM batch."""
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p, _, _ in items]
        sampling = [self.to_vllm(params, seed) for _, params, seed in items]
        outs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def prove(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the proving prefill's ``[L+1, T, H]`` states (torch on the same GPU)."""
        return self.prover.prove(tokens)

    def final_states(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the boundary-L states of one prefill."""
        return self.prover.final_states(tokens)

    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return boundary 0 for ``tokens``."""
        return self.prover.embed(tokens)

    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return decoder layer ``layer`` applied to ``hidden_in``."""
        return self.prover.run_layer(layer, hidden_in)

    def run_layer_with_update(
        self, layer: int, hidden_in: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return the layer output and its attention update."""
        return self.prover.run_layer_with_update(layer, hidden_in)

    def final_logits(self, hidden_last: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return float32 logits of boundary-L states."""
        return self.prover.final_logits(hidden_last)

    def sampler_margin(
        self,
        hidden_last: npt.NDArray[np.float32],
        request: InferenceRequest,
        position: int,
        token: int,
    ) -> float:
        """Return the [SAMPLE.5] margin of ``token`` at ``position``."""
        return self.prover.sampler_margin(hidden_last, request, position, token)

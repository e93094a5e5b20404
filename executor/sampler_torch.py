"""The protocol's sampler on torch tensors, for backends whose logits live on a GPU. [SAMPLE.7]

:func:`sample_token_torch` picks the token :func:`executor.sampler.sample_token` picks, with the
arithmetic on the logits' device in float64: the Gumbel noise is the same NumPy Philox draw
(computed on the CPU and copied over), the filters follow the same rules. Float64 on another
device may round a cumulative probability differently at an exact top-p edge; the verifier's
sampler margin (slack at the edges, [SAMPLE.5]) absorbs that.

:class:`ProtocolSamplerRows` keeps the per-row state a batched engine (vLLM) needs: which row
is which request, its prompt length and its growing output.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from bft.errors import Malformed
from bft.messages import SamplingParams
from executor.sampler import compute_gumbel_noise


def compute_allowed_torch(scaled: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Return the mask of tokens surviving top-k then top-p (``compute_allowed`` on torch)."""
    return compute_allowed_rows(scaled[None], [params])[0]


def compute_allowed_rows(scaled: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Return, for each row of ``scaled`` ``[R, V]``, the tokens surviving its top-k then top-p.

    One batched pass: rows with different rules cost about the kernel launches of one row.
    """
    dev, vocab = scaled.device, scaled.shape[1]
    allowed = torch.ones_like(scaled, dtype=torch.bool)
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(ks):
        top = torch.topk(scaled, max(ks), dim=1, sorted=True).values
        idx = torch.tensor([max(k, 1) - 1 for k in ks], device=dev)
        kth = top.gather(1, idx[:, None])
        has_k = torch.tensor([k > 0 for k in ks], device=dev)[:, None]
        allowed &= ~has_k | (scaled >= kth)
    top_ps = [p.top_p for p in params]
    if any(tp < 1.0 for tp in top_ps):
        masked = torch.where(allowed, scaled, torch.full_like(scaled, float("-inf")))
        order = torch.sort(-masked, dim=1, stable=True).indices
        ordered = scaled.gather(1, order)
        probs = torch.exp(ordered - ordered[:, :1])
        probs = torch.where(allowed.gather(1, order), probs, torch.zeros_like(probs))
        probs = probs / probs.sum(dim=1, keepdim=True)
        tp = torch.tensor(top_ps, dtype=torch.float64, device=dev)[:, None]
        keep = torch.cumsum(probs, dim=1) - probs < tp
        nucleus = torch.zeros_like(allowed).scatter(1, order, keep)
        allowed &= (tp >= 1.0) | nucleus
    return allowed


def sample_token_torch(
    logits: torch.Tensor,
    params: SamplingParams,
    seed: bytes,
    position: int,
    noise: npt.NDArray[np.float64] | None = None,
) -> int:
    """Return the token the protocol samples from the 1-d ``logits`` at ``position``.

    ``noise``: the position's Gumbel draws if already computed (:class:`GumbelPrefetch`).
    """
    if params.temperature == 0.0:
        return int(torch.argmax(logits))  # first maximum: ties go to the lowest id, as NumPy
    vocab = logits.shape[0]
    if noise is None:
        noise = compute_gumbel_noise(seed, position, vocab)
    elif noise.shape != (vocab,):
        raise ValueError(f"noise of shape {noise.shape} for {vocab} logits")
    return sample_tokens_torch(logits[None], [params], noise[None])[0]


def sample_tokens_torch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    noise: npt.NDArray[np.float64],
) -> list[int]:
    """Return the protocol's tokens for the rows of ``logits`` ``[R, V]``, all sampled at once.

    Row ``r`` has sampling parameters ``params[r]`` (temperature > 0) and Gumbel draws
    ``noise[r]`` (``[R, V]``, [SAMPLE.2]): [SAMPLE.3] row by row, as one sequence of batched
    tensor operations in float64 on the logits' device.
    """
    rows, vocab = logits.shape
    if len(params) != rows or noise.shape != (rows, vocab):
        raise ValueError(f"{len(params)} params and noise {noise.shape} for logits {rows}x{vocab}")
    if any(p.temperature == 0.0 for p in params):
        raise ValueError("greedy rows take the argmax; they have no noise")
    dev = logits.device
    x = logits.to(torch.float64)
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float64, device=dev)
    scaled = (x - x.max(dim=1, keepdim=True).values) / temps[:, None]
    allowed = compute_allowed_rows(scaled, params)
    gumbel = torch.from_numpy(noise).to(dev)
    scores = torch.where(allowed, scaled + gumbel, torch.full_like(scaled, float("-inf")))
    return [int(t) for t in torch.argmax(scores, dim=1).tolist()]


class GumbelPrefetch:
    """Computes the Gumbel noise of (seed, position) on worker threads, ahead of need.

    The noise of one position is a NumPy Philox stream over the whole vocabulary ([SAMPLE.2]),
    about half a millisecond of CPU per row for 49,152 tokens: in a batch of sampled requests
    that would stall every decoding step. NumPy fills and ufuncs release the GIL, so a pool
    computes the rows in parallel, and the next position's noise is asked for as soon as a
    token is chosen, while the GPU runs the next step. Results are the very arrays
    :func:`compute_gumbel_noise` returns. One engine thread drives it (the vLLM backend runs one
    generation at a time, [EXEC.9]); the workers only run that pure function.
    """

    def __init__(self, workers: int = 8, keep: int = 1024) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verihive-noise")
        self._futures: OrderedDict[tuple[bytes, int, int], Future[npt.NDArray[np.float64]]] = (
            OrderedDict()
        )
        self._keep = keep

    def request(self, seed: bytes, position: int, vocab: int) -> None:
        """Start computing the noise of (``seed``, ``position``) unless already under way."""
        key = (seed, position, vocab)
        if key not in self._futures:
            self._futures[key] = self._pool.submit(compute_gumbel_noise, seed, position, vocab)
            while len(self._futures) > self._keep:  # rows that stopped never ask again
                self._futures.popitem(last=False)[1].cancel()

    def forget(self, seed: bytes) -> None:
        """Drop what was computed ahead for the request of ``seed`` (it left the batch)."""
        for key in [k for k in self._futures if k[0] == seed]:
            self._futures.pop(key).cancel()

    def get(self, seed: bytes, position: int, vocab: int) -> npt.NDArray[np.float64]:
        """Return the noise of (``seed``, ``position``), computing it now if not prefetched."""
        self.request(seed, position, vocab)
        return self._futures.pop((seed, position, vocab)).result()

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class SamplerRow:
    """One request in a batch: its sampling rule, seed, prompt length and live output list."""

    params: SamplingParams
    seed: bytes
    prompt_len: int
    output: list[int]

    @property
    def position(self) -> int:
        """Return the sequence position of the token being sampled now."""
        return self.prompt_len + len(self.output)


class ProtocolSamplerRows:
    """Per-row protocol sampling state of a batched engine, and the logits rewrite.

    ``apply`` replaces each protocol row of a ``[B, V]`` logits batch by ``-inf`` everywhere
    except the token the protocol samples (0 there), so that the engine's own greedy argmax
    emits exactly that token. Rows without state (plain requests) are left alone; greedy
    protocol rows need no rewrite (the engine's argmax is the protocol's rule).
    """

    def __init__(self, prefetch: GumbelPrefetch | None = None) -> None:
        self.rows: dict[int, SamplerRow] = {}
        self.prefetch = prefetch or GumbelPrefetch()

    def add(self, index: int, row: SamplerRow | None) -> None:
        """Put ``row`` at batch ``index`` (``None``: a request that is not the protocol's)."""
        self.remove(index)
        if row is not None:
            self.rows[index] = row

    def remove(self, index: int) -> None:
        """Forget the request at batch ``index`` and the noise computed ahead for it."""
        row = self.rows.pop(index, None)
        if row is not None:
            self.prefetch.forget(row.seed)

    def move(self, a: int, b: int, swap: bool) -> None:
        """Move the request at ``a`` to ``b`` (``swap``: exchange the two)."""
        ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
        if ra is not None:
            self.rows[b] = ra
        if swap and rb is not None:
            self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``logits`` with every sampled protocol row forced to its protocol token."""
        vocab = logits.shape[1]
        sampled = [
            (index, row)
            for index, row in self.rows.items()
            if row.params.temperature != 0.0 and index < logits.shape[0]
        ]
        if not sampled:
            return logits
        positions = [row.position for _, row in sampled]
        for (_, row), position in zip(sampled, positions, strict=True):  # all rows in parallel
            self.prefetch.request(row.seed, position, vocab)
        noise = np.stack(
            [
                self.prefetch.get(row.seed, position, vocab)
                for (_, row), position in zip(sampled, positions, strict=True)
            ]
        )
        index = torch.tensor([i for i, _ in sampled], device=logits.device)
        tokens = sample_tokens_torch(logits[index], [row.params for _, row in sampled], noise)
        logits[index] = float("-inf")
        logits[index, torch.tensor(tokens, device=logits.device)] = 0.0
        for (_, row), position in zip(sampled, positions, strict=True):
            self.prefetch.request(row.seed, position + 1, vocab)  # the row's next step
        return logits


def decode_protocol_args(extra: dict[str, object] | None) -> tuple[SamplingParams, bytes] | None:
    """Return the protocol sampling rule carried in a request's ``extra_args``, if any."""
    if not extra or "verihive" not in extra:
        return None
    arg = extra["verihive"]
    if not isinstance(arg, dict):
        raise ValueError("verihive sampling args must be a dict")
    try:
        params = SamplingParams(
            temperature=float(arg["temperature"]),
            top_k=int(arg["top_k"]),
            top_p=float(arg["top_p"]),
            max_new_tokens=int(arg["max_new_tokens"]),
            stop_at_eos=bool(arg["stop_at_eos"]),
        )
        params.validate()
        seed = bytes.fromhex(str(arg["seed"]))
    except (KeyError, TypeError, ValueError, Malformed) as exc:
        raise ValueError(f"bad verihive sampling args: {exc}") from None
    return params, seed


def encode_protocol_args(params: SamplingParams, seed: bytes) -> dict[str, object]:
    """Return the ``extra_args`` entry that :func:`decode_protocol_args` reads."""
    return {
        "verihive": {
            "temperature": params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "stop_at_eos": params.stop_at_eos,
            "seed": seed.hex(),
        }
    }


def prompt_length(prompt: Sequence[int] | None) -> int:
    """Return the length of a prompt token list an engine reports (``None``: unknown)."""
    if prompt is None:
        raise ValueError("protocol sampling needs the prompt token ids")
    return len(prompt)

"""The protocol's seeded sampler. [SAMPLE.1]-[SAMPLE.4]

The executor never chooses randomness: the noise for the token at sequence position ``p`` is
drawn from NumPy's Philox4x64-10 generator keyed by ``sha256(seed || u64(p))[:16]`` (seed from
the request id). Sampling is Gumbel-max: ``argmax((logits - max) / T + g)`` over the tokens
that survive top-k and top-p filtering, with ``g = -log(-log(u))``. Temperature 0 is greedy
argmax (ties go to the lowest token id).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import numpy.typing as npt

from bft.messages import SamplingParams

_TINY = np.finfo(np.float64).tiny


def compute_position_key(seed: bytes, position: int) -> int:
    """Return the 128-bit Philox key for sequence ``position`` under ``seed``."""
    digest = hashlib.sha256(seed + position.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:16], "big")


def compute_gumbel_noise(seed: bytes, position: int, vocab: int) -> npt.NDArray[np.float64]:
    """Return the ``vocab`` Gumbel(0, 1) draws for ``position``."""
    gen = np.random.Generator(np.random.Philox(key=compute_position_key(seed, position)))
    u = np.clip(gen.random(vocab), _TINY, 1.0 - 1e-16)
    return -np.log(-np.log(u))


EDGE_SLACK_LOGIT = 1e-3
"""Logit units by which a token may miss the top-k edge and still count as allowed. [SAMPLE.5]"""
EDGE_SLACK_PROB = 1e-3
"""Probability mass by which a token may miss the top-p edge and still count as allowed."""


def compute_allowed(
    scaled: npt.NDArray[np.float64],
    params: SamplingParams,
    slack_scaled: float = 0.0,
    slack_prob: float = 0.0,
) -> npt.NDArray[np.bool_]:
    """Return the mask of tokens that survive top-k then top-p on ``scaled`` logits.

    ``slack_scaled`` (in units of ``scaled``) and ``slack_prob`` widen the two edges; the
    sampler itself uses none.
    """
    allowed = np.ones(scaled.shape[0], dtype=bool)
    if 0 < params.top_k < scaled.shape[0]:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        allowed &= scaled >= kth - slack_scaled
    if params.top_p < 1.0:
        order = np.argsort(-np.where(allowed, scaled, -np.inf), kind="stable")
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs = np.where(allowed[order], probs, 0.0)
        probs /= probs.sum()
        keep = np.cumsum(probs) - probs < params.top_p + slack_prob  # prefix reaching top_p
        nucleus = np.zeros_like(allowed)
        nucleus[order[keep]] = True
        allowed &= nucleus
    return allowed


def compute_sure(
    scaled: npt.NDArray[np.float64],
    params: SamplingParams,
    slack_scaled: float,
    slack_prob: float,
) -> npt.NDArray[np.bool_]:
    """Return the mask of tokens that survive the filters in every view within the slack.

    A token is surely in the top k when it beats the (k+1)-th largest scaled logit by more than
    ``slack_scaled``, and surely in the nucleus when it is in the prefix reaching
    ``top_p - slack_prob``. Honest logit noise can move a token across an edge, never a sure one.
    """
    sure = np.ones(scaled.shape[0], dtype=bool)
    if 0 < params.top_k < scaled.shape[0]:
        next_one = np.partition(scaled, -(params.top_k + 1))[-(params.top_k + 1)]
        sure &= scaled > next_one + slack_scaled
    if params.top_p < 1.0:
        order = np.argsort(-np.where(sure, scaled, -np.inf), kind="stable")
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs = np.where(sure[order], probs, 0.0)
        total = probs.sum()
        if total > 0:
            probs /= total
            keep = np.cumsum(probs) - probs < params.top_p - slack_prob
            nucleus = np.zeros_like(sure)
            nucleus[order[keep]] = True
            sure &= nucleus
    return sure


def sample_token(
    logits: npt.NDArray[np.floating], params: SamplingParams, seed: bytes, position: int
) -> int:
    """Return the token the protocol samples from ``logits`` at sequence ``position``."""
    x = np.asarray(logits, dtype=np.float64)
    if params.temperature == 0.0:
        return int(np.argmax(x))
    with np.errstate(over="ignore"):  # a subnormal T sends non-maximal logits to -inf: intended
        scaled = (x - x.max()) / params.temperature
    allowed = compute_allowed(scaled, params)
    scores = np.where(allowed, scaled + compute_gumbel_noise(seed, position, x.shape[0]), -np.inf)
    return int(np.argmax(scores))


def compute_sampler_margin(
    logits: npt.NDArray[np.floating],
    params: SamplingParams,
    seed: bytes,
    position: int,
    token: int,
) -> float:
    """Return how far ``token`` is from being the sampler's choice, in logit units. [SAMPLE.5]

    0 when ``token`` is exactly what :func:`sample_token` picks. Greedy: ``max(x) - x[token]``.
    Otherwise, when ``token`` survives the filters with the edges widened by
    :data:`EDGE_SLACK_LOGIT` and :data:`EDGE_SLACK_PROB`: ``T * max(0, best - score of
    token)``, the best taken over the tokens that *surely* survive them (:func:`compute_sure`:
    the edges narrowed by the same slack), so honest logit noise at a top-k/top-p edge, which
    can swap an edge token in or out, costs nothing. For a token outside even the widened
    filters: that, plus ``T`` times the gap between its scaled logit and the lowest surviving
    one. Honest logit noise
    gives margins near 0; a token chosen by another rule gives margins of the order of the
    logit spread.
    """
    x = np.asarray(logits, dtype=np.float64)
    if not 0 <= token < x.shape[0]:
        return float("inf")
    t = params.temperature
    if t == 0.0 or not math.isfinite(EDGE_SLACK_LOGIT / t):
        # Greedy, or a temperature so small that the edge slack overflows (below ~5.6e-312):
        # the sampler picks the largest logit, and the widened edges would let every token in.
        return float(x.max() - x[token])
    with np.errstate(over="ignore"):
        scaled = (x - x.max()) / t
    allowed = compute_allowed(scaled, params)
    scores = scaled + compute_gumbel_noise(seed, position, x.shape[0])
    if (
        allowed[token]
        or compute_allowed(scaled, params, EDGE_SLACK_LOGIT / t, EDGE_SLACK_PROB)[token]
    ):
        sure = compute_sure(scaled, params, EDGE_SLACK_LOGIT / t, EDGE_SLACK_PROB)
        best_sure = float(np.max(np.where(sure, scores, -np.inf), initial=-np.inf))
        return float(t * max(0.0, best_sure - scores[token]))
    best = float(np.max(np.where(allowed, scores, -np.inf)))
    gap = float(np.min(scaled[allowed]) - scaled[token])
    return float(t * (max(0.0, gap) + max(0.0, best - scores[token])))

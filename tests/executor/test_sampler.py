"""The protocol's seeded sampler and its margin. [SAMPLE.2]-[SAMPLE.3], [SAMPLE.5]"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bft.errors import Malformed
from bft.messages import SamplingParams
from executor.sampler import (
    compute_allowed,
    compute_gumbel_noise,
    compute_position_key,
    compute_sampler_margin,
    sample_token,
)
from tests.stats import chi2_critical, chi2_sf, chi2_statistic
from tests.support import get_tiny

SEED = hashlib.sha256(b"sampler-seed").digest()
GREEDY = SamplingParams()
logit_vectors = hnp.arrays(
    np.float64,
    st.integers(2, 40),
    elements=st.floats(-30, 30, allow_nan=False),
)

# --- [SAMPLE.2] the noise, from the spec's own words

_M0, _M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157
_W0, _W1 = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B
_MASK = (1 << 64) - 1


def philox4x64_10(counter: list[int], key: tuple[int, int]) -> list[int]:
    """Return one Philox4x64-10 block (Random123), written from the published round function."""
    c, k = list(counter), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + _W0) & _MASK, (k[1] + _W1) & _MASK]
        p0, p1 = _M0 * c[0], _M1 * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k[0], p1 & _MASK, (p0 >> 64) ^ c[3] ^ k[1], p0 & _MASK]
    return c


def reference_uniforms(seed: bytes, position: int, vocab: int) -> np.ndarray:
    """Return the ``u_j`` of [SAMPLE.2] steps 1-3 before clamping."""
    key_int = int.from_bytes(
        hashlib.sha256(seed + position.to_bytes(8, "big")).digest()[:16], "big"
    )
    key = (key_int & _MASK, key_int >> 64)
    counter, words = [0, 0, 0, 0], []
    while len(words) < vocab:
        for i in range(4):  # increment word 0 first, carrying upward
            counter[i] = (counter[i] + 1) & _MASK
            if counter[i]:
                break
        words += philox4x64_10(counter, key)
    return np.array([(w >> 11) * 2.0**-53 for w in words[:vocab]])


def test_philox_reference_matches_the_random123_known_answer():
    # Random123's kat_vectors: philox4x64_10 with counter and key all ones bits.
    out = philox4x64_10([_MASK] * 4, (_MASK, _MASK))
    assert [f"{w:016x}" for w in out] == [
        "87b092c3013fe90b",
        "438c3c67be8d0224",
        "9cc7d7c69cd777b6",
        "a09caebf594f0ba0",
    ]


def test_position_key_is_the_first_16_digest_bytes():
    d = hashlib.sha256(SEED + (300).to_bytes(8, "big")).digest()
    assert compute_position_key(SEED, 300) == int.from_bytes(d[:16], "big")


@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**63 - 1), st.integers(1, 30))
def test_noise_matches_the_spec_definition(seed, position, vocab):
    u = np.clip(reference_uniforms(seed, position, vocab), 2.0**-1022, 1.0 - 1e-16)
    expected = -np.log(-np.log(u))
    assert np.array_equal(compute_gumbel_noise(seed, position, vocab), expected)


def test_noise_is_a_prefix_across_vocabulary_sizes():
    # Token j always gets the j-th draw, whatever V is.
    assert np.array_equal(
        compute_gumbel_noise(SEED, 7, 10), compute_gumbel_noise(SEED, 7, 100)[:10]
    )


def test_noise_is_standard_gumbel():
    # Mean 0.5772 (Euler-Mascheroni), variance pi^2/6; 6-sigma bounds on 20000 draws.
    g = compute_gumbel_noise(SEED, 0, 20000)
    var = math.pi**2 / 6
    assert abs(g.mean() - 0.5772156649) < 6 * math.sqrt(var / g.size)
    assert abs(g.var() - var) < 6 * math.sqrt((2.4 * var**2) / g.size)  # Gumbel kurtosis 5.4


# --- [SAMPLE.3] the choice


@given(logit_vectors, st.binary(min_size=32, max_size=32), st.integers(0, 10_000))
def test_greedy_is_argmax_lowest_id_on_ties(logits, seed, position):
    tok = sample_token(logits, GREEDY, seed, position)
    assert logits[tok] == logits.max()
    assert tok == min(np.flatnonzero(logits == logits.max()))


def test_greedy_accepts_float32_logits():
    logits = np.array([0.1, 3.0, 3.0, -1.0], dtype=np.float32)
    assert sample_token(logits, GREEDY, SEED, 0) == 1


@given(logit_vectors, st.integers(0, 10_000))
def test_same_seed_and_position_give_the_same_token(logits, position):
    params = SamplingParams(temperature=1.0)
    assert sample_token(logits, params, SEED, position) == sample_token(
        logits, params, SEED, position
    )


def test_different_positions_and_seeds_vary():
    logits = np.zeros(50)
    params = SamplingParams(temperature=1.0)
    by_position = {sample_token(logits, params, SEED, p) for p in range(40)}
    by_seed = {sample_token(logits, params, bytes([s]) * 32, 3) for s in range(40)}
    assert len(by_position) > 15
    assert len(by_seed) > 15


@given(logit_vectors, st.floats(0.01, 100), st.integers(0, 1000))
def test_top_k_1_is_greedy(logits, temperature, position):
    # Greedy over s = x / T: nearly equal logits can round to a tie in s, and [SAMPLE.3] lets
    # every id tied at the cut survive top-k, so only a unique maximum is deterministic.
    scaled = logits / temperature
    assume((scaled == scaled.max()).sum() == 1)
    params = SamplingParams(temperature=temperature, top_k=1)
    assert sample_token(logits, params, SEED, position) == int(np.argmax(scaled))


@given(logit_vectors, st.floats(0.01, 100), st.integers(0, 1000))
def test_tiny_top_p_is_greedy(logits, temperature, position):
    # The nucleus is the first id in (s descending, id ascending) order: argmax of s.
    params = SamplingParams(temperature=temperature, top_p=1e-9)
    assert sample_token(logits, params, SEED, position) == int(np.argmax(logits / temperature))


def test_top_k_1_with_distinct_logits_is_the_logit_argmax():
    logits = np.array([0.3, 2.5, -1.0, 2.4])
    for t in (0.01, 1.0, 50.0):
        for p in range(20):
            assert sample_token(logits, SamplingParams(temperature=t, top_k=1), SEED, p) == 1
            assert sample_token(logits, SamplingParams(temperature=t, top_p=1e-9), SEED, p) == 1


@given(
    logit_vectors,
    st.floats(0.05, 10),
    st.integers(0, 50),
    st.floats(0.01, 1.0),
    st.integers(0, 1000),
)
def test_sample_stays_inside_top_k_and_nucleus(logits, temperature, top_k, top_p, position):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    scaled = (logits - logits.max()) / temperature  # [SAMPLE.3]: shift, then scale
    tok = sample_token(logits, params, SEED, position)
    allowed = compute_allowed(scaled, params)
    assert allowed[tok]
    assert allowed.any()
    if 0 < top_k < len(logits):
        # top-k keeps ids with s >= the k-th largest value (ties at the cut all survive).
        assert scaled[tok] >= np.sort(scaled)[::-1][top_k - 1]


def reference_allowed(s: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Return the surviving ids of [SAMPLE.3], step by step as the spec words it."""
    v = len(s)
    keep = np.ones(v, dtype=bool)
    if 0 < top_k < v:
        tau = sorted(s, reverse=True)[top_k - 1]
        keep = s >= tau
    if top_p < 1:
        survivors = sorted((j for j in range(v) if keep[j]), key=lambda j: (-s[j], j))
        order = survivors + [j for j in range(v) if not keep[j]]
        q = [math.exp(s[j] - s[order[0]]) if keep[j] else 0.0 for j in order]
        total = sum(q)
        q = [x / total for x in q]
        nucleus, c = np.zeros(v, dtype=bool), 0.0
        for j, qi in zip(order, q, strict=True):
            c += qi
            if c - qi < top_p:
                nucleus[j] = True
        keep &= nucleus
    return keep


@settings(max_examples=200)
@given(logit_vectors, st.floats(0.05, 10), st.integers(0, 50), st.floats(0.01, 1.0))
def test_filtering_matches_the_spec_definition(logits, temperature, top_k, top_p):
    scaled = logits / temperature
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    got = compute_allowed(scaled, params)
    want = reference_allowed(scaled, top_k, top_p)
    # cumsum and a left-to-right sum may differ in the last bit exactly at the top_p boundary.
    q = np.exp(np.sort(scaled)[::-1] - scaled.max())
    c = np.cumsum(q / q.sum())
    borderline = np.isclose(c, top_p, rtol=0, atol=1e-12).any()
    assert np.array_equal(got, want) or borderline


@given(logit_vectors, st.floats(0.05, 10), st.integers(0, 1000))
def test_sample_is_argmax_of_scaled_logits_plus_noise(logits, temperature, position):
    params = SamplingParams(temperature=temperature)
    scores = logits / temperature + compute_gumbel_noise(SEED, position, len(logits))
    assert sample_token(logits, params, SEED, position) == int(np.argmax(scores))


# --- the empirical distribution is the softmax

LOGITS = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
N_DRAWS = 6000
FALSE_ALARM = 1e-6  # per test; deterministic seeds, so it can only fail on a real change


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize(
    ("params", "probs"),
    [
        (SamplingParams(temperature=1.0), softmax(LOGITS)),
        (SamplingParams(temperature=0.5), softmax(LOGITS / 0.5)),
        (SamplingParams(temperature=2.0), softmax(LOGITS / 2.0)),
        (
            SamplingParams(temperature=1.0, top_k=3),
            softmax(np.where(LOGITS >= 0.5, LOGITS, -np.inf)),
        ),
    ],
    ids=["T=1", "T=0.5", "T=2", "T=1,top_k=3"],
)
@pytest.mark.parametrize("vary", ["seed", "position"])
def test_empirical_distribution_matches_softmax(params, probs, vary):
    counts = np.zeros(len(LOGITS), dtype=int)
    for i in range(N_DRAWS):
        if vary == "seed":
            tok = sample_token(LOGITS, params, hashlib.sha256(i.to_bytes(4, "big")).digest(), 17)
        else:
            tok = sample_token(LOGITS, params, SEED, i)
        counts[tok] += 1
    support = probs > 0
    assert counts[~support].sum() == 0
    stat = chi2_statistic(counts[support].tolist(), probs[support].tolist())
    assert stat < chi2_critical(int(support.sum()) - 1, FALSE_ALARM)


def test_chi2_helpers_match_tables():
    # Standard table values (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.4).
    assert chi2_critical(1, 0.05) == pytest.approx(3.841, abs=1e-3)
    assert chi2_critical(4, 0.05) == pytest.approx(9.488, abs=1e-3)
    assert chi2_critical(5, 0.05) == pytest.approx(11.070, abs=1e-3)
    assert chi2_critical(10, 0.01) == pytest.approx(23.209, abs=1e-3)
    assert chi2_sf(0.0, 3) == 1.0


# --- bounds


@pytest.mark.parametrize("temperature", [5e-324, 1e-310])
def test_tiny_positive_temperature_is_greedy_or_refused(temperature):
    # A temperature that validate() accepts must not turn sampling into "always token 0".
    logits = np.array([0.25, 3.0, 1.0, -2.0])
    for params in (
        SamplingParams(temperature=temperature),
        SamplingParams(temperature=temperature, top_p=0.9),
    ):
        try:
            params.validate()
        except Malformed:
            continue
        assert sample_token(logits, params, SEED, 0) == 1
        assert compute_sampler_margin(logits, params, SEED, 0, 1) == 0.0


@pytest.mark.parametrize("temperature", [5e-324, 1e-315, 5e-312])
@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (1, 1.0), (0, 0.5), (3, 0.9)])
def test_tiny_temperature_margin_is_the_greedy_gap(temperature, top_k, top_p):
    # Found by tests/verihive/test_fuzz_rpc.py: below ~5.6e-312 the edge slack 0.001 / T
    # overflows, the widened edges let every token in and every token got margin 0, so a lying
    # executor's token passed the sampler check. The sampler is greedy there: so is the margin.
    logits = np.array([0.25, 3.0, 1.0, -2.0, 2.5])
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    params.validate()
    assert sample_token(logits, params, SEED, 0) == 1
    margins = [compute_sampler_margin(logits, params, SEED, 0, t) for t in range(5)]
    assert margins == [2.75, 0.0, 2.0, 5.0, 0.5]


# --- [SAMPLE.5] the sampler margin

OTHER_SEED = hashlib.sha256(b"not-the-request-seed").digest()
_temperatures = st.floats(0.05, 10)
_top_k = st.integers(0, 50)
_top_p = st.floats(0.01, 1.0)


@settings(max_examples=200)
@given(logit_vectors, _temperatures, _top_k, _top_p, st.integers(0, 1000))
def test_margin_of_the_samplers_choice_is_zero(logits, temperature, top_k, top_p, position):
    for params in (
        GREEDY,
        SamplingParams(temperature=temperature),
        SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p),
    ):
        tok = sample_token(logits, params, SEED, position)
        assert compute_sampler_margin(logits, params, SEED, position, tok) == 0.0


@given(logit_vectors, st.integers(0, 1000))
def test_greedy_margin_is_the_logit_gap_to_the_maximum(logits, position):
    for tok in range(len(logits)):
        margin = compute_sampler_margin(logits, GREEDY, SEED, position, tok)
        assert margin == logits.max() - logits[tok]


@settings(max_examples=200)
@given(
    logit_vectors,
    _temperatures,
    _top_k,
    st.integers(0, 1000),
    st.integers(0, 2**32 - 1),
)
def test_margin_stays_small_under_tiny_logit_noise(logits, temperature, top_k, position, noise):
    # The verifier recomputes logits that differ from the executor's by rounding; a margin
    # of honest noise must stay far below any threshold. Noise of 1e-6 per logit moves a
    # Gumbel-max score gap by at most 2e-6 / T, i.e. the margin by 2e-6.
    noisy = logits + np.random.default_rng(noise).uniform(-1e-6, 1e-6, logits.shape)
    for params in (
        GREEDY,
        SamplingParams(temperature=temperature),
        SamplingParams(temperature=temperature, top_k=top_k),
    ):
        if params.top_k and not np.array_equal(
            compute_allowed((logits - logits.max()) / temperature, params),
            compute_allowed((noisy - noisy.max()) / temperature, params),
        ):
            continue  # noise moved the top-k edge: the known bug pinned by the test below
        tok = sample_token(logits, params, SEED, position)
        assert compute_sampler_margin(noisy, params, SEED, position, tok) < 1e-3


@pytest.mark.parametrize(
    ("logits", "noisy", "top_k"),
    [
        ([1e-7, 0.0], [0.0, 1e-7], 1),  # the top two tie to 1e-7, below rounding noise
        ([5.0, 1e-7, 0.0], [5.0, 0.0, 1e-7], 2),  # the 2nd and 3rd tie
    ],
    ids=["top_k=1", "top_k=2"],
)
def test_margin_stays_small_under_tiny_logit_noise_at_the_top_k_edge(logits, noisy, top_k):
    params = SamplingParams(temperature=1.0, top_k=top_k)
    x, y = np.array(logits), np.array(noisy)
    margins = [
        compute_sampler_margin(y, params, SEED, p, sample_token(x, params, SEED, p))
        for p in range(16)
    ]
    assert max(margins) < 1e-3, margins


def test_margin_stays_small_under_tiny_logit_noise_at_the_top_p_edge():
    # Token 1 is the last one inside the nucleus: the mass before it (p0) is just below top_p.
    # 1e-6 of honest logit noise pushes p0 over top_p and drops token 1 from the nucleus; its
    # margin must still reflect that tiny change, not the whole logit gap to token 0.
    logits = np.array([0.0, -1.0])
    p0 = float(softmax(logits)[0])
    params = SamplingParams(temperature=1.0, top_p=p0 + 1e-9)
    position = next(p for p in range(100) if sample_token(logits, params, SEED, p) == 1)
    assert compute_sampler_margin(logits, params, SEED, position, 1) == 0.0
    noisy = logits + np.array([1e-6, 0.0])
    assert compute_sampler_margin(noisy, params, SEED, position, 1) < 1e-3


def test_margin_of_a_token_outside_the_vocabulary_is_infinite():
    logits = np.array([0.5, 0.25, -1.0])
    for tok in (-1, 3):
        assert compute_sampler_margin(logits, GREEDY, SEED, 0, tok) == math.inf


def test_margin_of_a_token_filtered_out_adds_its_gap_to_the_nucleus():
    # top_k = 1 keeps token 2 only; token 0 is 1.5 below it, scaled by T and added to its score
    # gap, so the margin is at least T * 1.5 / T.
    logits = np.array([0.5, -1.0, 2.0])
    params = SamplingParams(temperature=0.5, top_k=1)
    assert compute_sampler_margin(logits, params, SEED, 3, 2) == 0.0
    assert compute_sampler_margin(logits, params, SEED, 3, 0) >= 1.5


@pytest.fixture(scope="module")
def tiny_logits() -> np.ndarray:
    """Return the tiny model's next-token logits after each of 32 positions."""
    backend = get_tiny()[1]
    return backend.final_logits(backend.prove(list(range(100, 132)))[-1])


@pytest.mark.parametrize(
    "params",
    [
        GREEDY,
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=50, top_p=0.9),
        SamplingParams(temperature=1.5, top_p=0.95),
    ],
    ids=["greedy", "T=1", "T=0.7,top_k=50,top_p=0.9", "T=1.5,top_p=0.95"],
)
def test_margin_on_the_tiny_model_separates_the_choice_from_other_tokens(tiny_logits, params):
    positions = range(1, len(tiny_logits) + 1)  # logits row p - 1 gives the token at p
    wrong_seed = []
    for p in positions:
        x = tiny_logits[p - 1]
        tok = sample_token(x, params, SEED, p)
        assert compute_sampler_margin(x, params, SEED, p, tok) == 0.0
        assert compute_sampler_margin(x, params, SEED, p, (tok + 1) % len(x)) > 0.1
        other = sample_token(x, params, OTHER_SEED, p)
        wrong_seed.append(compute_sampler_margin(x, params, SEED, p, other))
    if params.temperature > 0:  # a token drawn with another seed is caught on most positions
        assert sum(m > 0.1 for m in wrong_seed) >= 0.9 * len(wrong_seed)
    else:  # greedy ignores the seed
        assert wrong_seed == [0.0] * len(wrong_seed)

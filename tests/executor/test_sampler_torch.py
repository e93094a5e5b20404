"""The protocol sampler on torch tensors and the batched row state of a GPU engine. [SAMPLE.7]

:func:`sample_token_torch` must pick exactly the token :func:`executor.sampler.sample_token`
picks, for every sampling rule; :class:`ProtocolSamplerRows` must rewrite each sampled protocol
row of a ``[B, V]`` logits batch so that an engine's greedy argmax emits that token, at the
position given by the row's live output list, and leave every other row alone.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bft.messages import SamplingParams
from executor.sampler import compute_gumbel_noise, sample_token
from executor.sampler_torch import (
    GumbelPrefetch,
    ProtocolSamplerRows,
    SamplerRow,
    compute_allowed_torch,
    decode_protocol_args,
    encode_protocol_args,
    sample_token_torch,
    sample_tokens_torch,
)

SEEDS = tuple(hashlib.sha256(f"torch-sampler-{i}".encode()).digest() for i in range(3))
TEMPERATURES = (0.3, 0.8, 1.5)
TOP_KS = (0, 1, 5, 50)
TOP_PS = (1.0, 0.9, 0.5)
SAMPLED = tuple(
    SamplingParams(temperature=t, top_k=k, top_p=p)
    for t, k, p in itertools.product(TEMPERATURES, TOP_KS, TOP_PS)
)
GREEDY = SamplingParams()
RULES = (GREEDY, *SAMPLED)


def random_logits(rng: np.random.Generator, vocab: int, kind: str) -> np.ndarray:
    """Return float32 logits of one of a few shapes (flat, peaked, heavy ties, masked)."""
    if kind == "normal":
        x = rng.standard_normal(vocab) * rng.choice([0.5, 2.0, 6.0])
    elif kind == "peaked":  # a few large logits: top-p cuts deep
        x = rng.standard_normal(vocab)
        x[rng.choice(vocab, 5, replace=False)] += rng.uniform(4, 12, 5)
    elif kind == "ties":  # few distinct values: top-k and top-p edges fall inside ties
        x = np.round(rng.standard_normal(vocab) * 2) / 2
    else:  # "masked": some tokens already -inf (another processor, a padded vocabulary)
        x = rng.standard_normal(vocab) * 3
        x[rng.choice(vocab, vocab // 10, replace=False)] = -np.inf
    return np.asarray(x, dtype=np.float32)


def check_rules_on(rng: np.random.Generator, vocab: int, rows: int) -> tuple[int, int]:
    """Assert both samplers agree on ``rows`` logits per rule; return (sampled, off-argmax)."""
    sampled = off_argmax = 0
    kinds = ("normal", "peaked", "ties", "masked")
    for n in range(rows):
        x = random_logits(rng, vocab, kinds[n % len(kinds)])
        t = torch.from_numpy(x)
        for params in RULES:
            seed = SEEDS[int(rng.integers(len(SEEDS)))]
            position = int(rng.integers(0, 5000))
            want = sample_token(x, params, seed, position)
            got = sample_token_torch(t, params, seed, position)
            assert got == want, (vocab, n, params, position)
            if params.temperature > 0:
                sampled += 1
                off_argmax += want != int(np.argmax(x))
    return sampled, off_argmax


def test_torch_sampler_equals_the_numpy_sampler_on_a_small_vocabulary():
    sampled, off_argmax = check_rules_on(np.random.default_rng(1), vocab=1000, rows=40)
    # The comparison means something only if sampling often leaves the argmax.
    assert off_argmax > sampled // 4, (off_argmax, sampled)


def test_torch_sampler_equals_the_numpy_sampler_on_the_smollm2_vocabulary():
    sampled, off_argmax = check_rules_on(np.random.default_rng(2), vocab=49152, rows=8)
    assert off_argmax > sampled // 4, (off_argmax, sampled)


rules = st.builds(
    SamplingParams,
    temperature=st.sampled_from((0.0, *TEMPERATURES, 0.05, 4.0)),
    top_k=st.sampled_from((*TOP_KS, 2, 999)),
    top_p=st.sampled_from((*TOP_PS, 0.99, 0.01)),
)


@settings(max_examples=200, deadline=None)
@given(
    logits=hnp.arrays(
        np.float32, st.integers(2, 300), elements=st.floats(-30, 30, width=32, allow_nan=False)
    ),
    params=rules,
    seed=st.binary(min_size=1, max_size=32),
    position=st.integers(0, 2**20),
)
def test_torch_sampler_equals_the_numpy_sampler_on_any_logits(logits, params, seed, position):
    want = sample_token(logits, params, seed, position)
    assert sample_token_torch(torch.from_numpy(logits), params, seed, position) == want


@pytest.mark.parametrize("vocab", [1000, 49152])
def test_greedy_tie_goes_to_the_lowest_id(vocab):
    x = np.zeros(vocab, dtype=np.float32)
    x[[vocab - 1, 17, 400, 900]] = 5.0
    assert sample_token(x, GREEDY, SEEDS[0], 3) == 17
    assert sample_token_torch(torch.from_numpy(x), GREEDY, SEEDS[0], 3) == 17


def test_compute_allowed_torch_keeps_ties_at_the_top_k_edge():
    scaled = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0], dtype=torch.float64)
    params = SamplingParams(temperature=1.0, top_k=2)
    assert compute_allowed_torch(scaled, params).tolist() == [True, False, True, True, False]


def test_sampler_draws_depend_on_seed_and_position():
    # Flat logits: the token is the argmax of the noise, so it moves with seed and position.
    x = torch.zeros(1000)
    params = SamplingParams(temperature=1.0)
    by_position = {sample_token_torch(x, params, SEEDS[0], p) for p in range(20)}
    by_seed = {sample_token_torch(x, params, s, 7) for s in SEEDS}
    assert len(by_position) > 10
    assert len(by_seed) == len(SEEDS)


# --- ProtocolSamplerRows: bookkeeping


def row(params: SamplingParams = SAMPLED[4], prompt_len: int = 10, tag: int = 0) -> SamplerRow:
    return SamplerRow(params, SEEDS[tag % len(SEEDS)], prompt_len, [])


def test_add_remove_and_none():
    rows = ProtocolSamplerRows()
    a, b = row(tag=0), row(tag=1)
    rows.add(0, a)
    rows.add(3, b)
    assert rows.rows == {0: a, 3: b}
    rows.add(3, None)  # a plain request now sits at 3
    assert rows.rows == {0: a}
    rows.remove(0)
    rows.remove(5)  # nothing there: no error
    assert rows.rows == {}


def test_add_replaces_the_row_at_an_index():
    rows = ProtocolSamplerRows()
    a, b = row(tag=0), row(tag=1)
    rows.add(2, a)
    rows.add(2, b)
    assert rows.rows == {2: b}


def test_one_way_move():
    rows = ProtocolSamplerRows()
    a = row(tag=0)
    rows.add(4, a)
    rows.move(4, 1, swap=False)
    assert rows.rows == {1: a}


def test_one_way_move_overwrites_the_target_and_drops_it():
    rows = ProtocolSamplerRows()
    a, b = row(tag=0), row(tag=1)
    rows.add(4, a)
    rows.add(1, b)
    rows.move(4, 1, swap=False)
    assert rows.rows == {1: a}


def test_one_way_move_of_an_empty_slot_clears_the_target():
    rows = ProtocolSamplerRows()
    b = row(tag=1)
    rows.add(1, b)
    rows.move(4, 1, swap=False)  # a plain request moved onto 1
    assert rows.rows == {}


def test_swap_exchanges_rows():
    rows = ProtocolSamplerRows()
    a, b = row(tag=0), row(tag=1)
    rows.add(0, a)
    rows.add(2, b)
    rows.move(0, 2, swap=True)
    assert rows.rows == {2: a, 0: b}


def test_swap_with_an_empty_slot():
    rows = ProtocolSamplerRows()
    a = row(tag=0)
    rows.add(0, a)
    rows.move(0, 2, swap=True)
    assert rows.rows == {2: a}
    rows.move(1, 2, swap=True)  # a plain request at 1 swaps with ours
    assert rows.rows == {1: a}


# --- ProtocolSamplerRows.apply


def batch(rng: np.random.Generator, b: int, vocab: int) -> torch.Tensor:
    return torch.from_numpy((rng.standard_normal((b, vocab)) * 2).astype(np.float32))


def assert_forced_to(logits: torch.Tensor, index: int, token: int) -> None:
    r = logits[index]
    assert int(torch.argmax(r)) == token
    assert r[token] == 0.0
    others = torch.cat([r[:token], r[token + 1 :]])
    assert torch.isneginf(others).all()


def test_apply_forces_each_sampled_row_to_the_protocol_token():
    rng = np.random.default_rng(3)
    logits = batch(rng, 6, 1000)
    original = logits.clone()
    rows = ProtocolSamplerRows()
    sampled = {0: SAMPLED[1], 2: SAMPLED[20], 5: SAMPLED[35]}
    for index, params in sampled.items():
        rows.add(index, SamplerRow(params, SEEDS[index % 3], 12 + index, [5] * index))
    rows.add(3, SamplerRow(GREEDY, SEEDS[0], 12, []))  # greedy protocol row
    rows.add(9, SamplerRow(SAMPLED[1], SEEDS[0], 12, []))  # beyond this batch (padding gone)
    out = rows.apply(logits)
    assert out.shape == original.shape
    changed = 0
    for index, params in sampled.items():
        r = rows.rows[index]
        want = sample_token(original[index].numpy(), params, r.seed, 12 + index + index)
        assert_forced_to(out, index, want)
        changed += want != int(torch.argmax(original[index]))
    for index in (1, 3, 4):  # no state, greedy, no state
        assert torch.equal(out[index], original[index]), index
    assert changed >= 1  # at least one row was steered off its own argmax


def test_apply_follows_the_live_output_list():
    # The engine appends each emitted token to the list it handed over: the next apply samples
    # the next position, with no call to the row state in between. Flat logits make the token
    # the argmax of the noise, which moves with the position, so a stale position shows.
    rng = np.random.default_rng(4)
    params = SamplingParams(temperature=1.0)
    output: list[int] = []
    rows = ProtocolSamplerRows()
    rows.add(1, SamplerRow(params, SEEDS[2], 7, output))
    for step in range(6):
        logits = batch(rng, 3, 1000)
        logits[1] = 0.0
        original = logits.clone()
        rows.apply(logits)
        want = sample_token(original[1].numpy(), params, SEEDS[2], 7 + step)
        assert_forced_to(logits, 1, want)
        assert torch.equal(logits[0], original[0])
        assert torch.equal(logits[2], original[2])
        output.append(want)
    assert len(set(output)) == len(output)  # a new draw at every position


def test_apply_after_a_swap_uses_the_moved_rows():
    rng = np.random.default_rng(5)
    a = SamplerRow(SAMPLED[2], SEEDS[0], 4, [1, 2])
    b = SamplerRow(SAMPLED[30], SEEDS[1], 9, [])
    rows = ProtocolSamplerRows()
    rows.add(0, a)
    rows.add(1, b)
    rows.move(0, 1, swap=True)
    logits = batch(rng, 2, 1000)
    original = logits.clone()
    rows.apply(logits)
    assert_forced_to(logits, 1, sample_token(original[1].numpy(), a.params, a.seed, 6))
    assert_forced_to(logits, 0, sample_token(original[0].numpy(), b.params, b.seed, 9))


def test_apply_on_an_empty_state_is_the_identity():
    logits = batch(np.random.default_rng(6), 4, 100)
    original = logits.clone()
    assert torch.equal(ProtocolSamplerRows().apply(logits), original)


# --- protocol args in a request's extra_args


@pytest.mark.parametrize(
    "params",
    [
        GREEDY,
        SamplingParams(temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=5, stop_at_eos=False),
        SamplingParams(temperature=1e-3, top_k=1, top_p=1e-6, max_new_tokens=4096),
    ],
)
def test_protocol_args_round_trip(params):
    seed = SEEDS[1]
    extra = encode_protocol_args(params, seed)
    assert set(extra) == {"verihive"}
    assert decode_protocol_args(extra) == (params, seed)
    assert decode_protocol_args({**extra, "other": 1}) == (params, seed)


@pytest.mark.parametrize("extra", [None, {}, {"other": {"temperature": 1.0}}])
def test_no_protocol_args_decodes_to_none(extra):
    assert decode_protocol_args(extra) is None


@pytest.mark.parametrize("arg", [3, "x", [1, 2], None])
def test_malformed_protocol_args_raise_value_error(arg):
    with pytest.raises(ValueError):
        decode_protocol_args({"verihive": arg})


def test_protocol_args_with_a_bad_seed_or_missing_field_raise():
    arg = encode_protocol_args(SAMPLED[0], SEEDS[0])["verihive"]
    assert isinstance(arg, dict)
    with pytest.raises(ValueError):
        decode_protocol_args({"verihive": {**arg, "seed": "not hex"}})
    with pytest.raises(ValueError):
        decode_protocol_args({"verihive": {**arg, "temperature": "hot"}})
    missing = {k: v for k, v in arg.items() if k != "top_p"}
    with pytest.raises((KeyError, ValueError)):
        decode_protocol_args({"verihive": missing})


# --- [SAMPLE.7] noise computed ahead, on worker threads


def test_prefetched_noise_is_the_protocol_noise():
    pre = GumbelPrefetch(workers=2)
    try:
        for position in (0, 7, 1000):
            pre.request(b"\x05" * 32, position, 1000)
        for position in (1000, 0, 7, 8):  # 8 was never asked for: computed on demand
            got = pre.get(b"\x05" * 32, position, 1000)
            assert np.array_equal(got, compute_gumbel_noise(b"\x05" * 32, position, 1000))
    finally:
        pre.close()


def test_prefetch_keeps_a_bounded_number_of_pending_rows():
    pre = GumbelPrefetch(workers=1, keep=3)
    try:
        for position in range(10):
            pre.request(b"\x01" * 32, position, 50)
        assert len(pre._futures) == 3
        want = compute_gumbel_noise(b"\x01" * 32, 2, 50)
        assert np.array_equal(pre.get(b"\x01" * 32, 2, 50), want)
    finally:
        pre.close()


def test_apply_asks_for_each_sampled_rows_next_position():
    rows = ProtocolSamplerRows(GumbelPrefetch(workers=2))
    params = SamplingParams(temperature=0.7, top_p=0.9)
    output: list[int] = []
    rows.add(0, SamplerRow(params, b"\x02" * 32, 5, output))
    rows.add(1, SamplerRow(SamplingParams(), b"\x03" * 32, 5, []))  # greedy: no noise at all
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(1))
    original = logits.clone()
    rows.apply(logits)
    assert list(rows.prefetch._futures) == [(b"\x02" * 32, 6, 300)]
    token = int(torch.argmax(logits[0]))
    assert token == sample_token(original[0].numpy(), params, b"\x02" * 32, 5)
    output.append(token)
    logits = original.clone()
    rows.apply(logits)  # uses the prefetched noise of position 6
    want = sample_token(original[0].numpy(), params, b"\x02" * 32, 6)
    assert int(torch.argmax(logits[0])) == want
    rows.prefetch.close()


def test_noise_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="noise of shape"):
        sample_token_torch(torch.zeros(10), SamplingParams(temperature=1.0), b"", 0, np.zeros(9))


@pytest.mark.parametrize("vocab", [1000, 49152])
def test_batched_rows_with_mixed_rules_pick_the_numpy_tokens(vocab):
    # [SAMPLE.7]: one batched pass over rows with different temperatures, top-k and top-p.
    rules = [
        SamplingParams(temperature=t, top_k=k, top_p=p)
        for t, k, p in itertools.product((0.3, 1.5), (0, 1, 5, 50), (1.0, 0.9, 0.5))
    ]
    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(len(rules), vocab, generator=gen) * 4).to(torch.float32)
    seeds = [bytes([i]) * 32 for i in range(len(rules))]
    noise = np.stack([compute_gumbel_noise(seeds[i], 40 + i, vocab) for i in range(len(rules))])
    got = sample_tokens_torch(logits, rules, noise)
    want = [
        sample_token(logits[i].numpy(), rule, seeds[i], 40 + i) for i, rule in enumerate(rules)
    ]
    assert got == want
    assert len(set(got)) > 1


def test_batched_sampler_refuses_greedy_rows_and_wrong_shapes():
    logits = torch.zeros(2, 10)
    sampled = SamplingParams(temperature=1.0)
    with pytest.raises(ValueError, match="greedy"):
        sample_tokens_torch(logits, [sampled, SamplingParams()], np.zeros((2, 10)))
    with pytest.raises(ValueError, match="noise"):
        sample_tokens_torch(logits, [sampled, sampled], np.zeros((2, 9)))
    with pytest.raises(ValueError, match="params"):
        sample_tokens_torch(logits, [sampled], np.zeros((2, 10)))


def test_a_request_leaving_the_batch_drops_its_prefetched_noise():
    rows = ProtocolSamplerRows(GumbelPrefetch(workers=1))
    params = SamplingParams(temperature=1.0)
    rows.add(0, SamplerRow(params, b"\x0a" * 32, 3, []))
    rows.add(1, SamplerRow(params, b"\x0b" * 32, 3, []))
    rows.apply(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)))
    assert {k[0] for k in rows.prefetch._futures} == {b"\x0a" * 32, b"\x0b" * 32}
    rows.remove(0)
    assert {k[0] for k in rows.prefetch._futures} == {b"\x0b" * 32}
    rows.add(1, None)  # replaced by a request that is not the protocol's
    assert not rows.prefetch._futures
    rows.prefetch.close()

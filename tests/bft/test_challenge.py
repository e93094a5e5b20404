"""Challenge derivation: sampled layers and the tiles to open. [CHAL.1]-[CHAL.4]"""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.challenge import (
    Challenge,
    LayerChallenge,
    compute_challenge,
    compute_commitment_challenge,
    compute_sample,
    compute_seed,
    draw_sequence_check,
)
from bft.crypto import SigningKey
from bft.messages import TileRef, compute_challenge_message
from bft.types import Digest, Signature
from tests.stats import chi2_critical, chi2_statistic
from tests.support import get_honest_run, get_network, make_key

seeds = st.binary(min_size=32, max_size=32)
signatures = st.binary(min_size=64, max_size=64).map(Signature)


def reference_sample(seed: bytes, label: str, population: int, k: int) -> tuple[int, ...]:
    """Return the sample as [CHAL.4] words it, written out independently of the library."""
    if population <= 0 or k <= 0:
        return ()
    limit = 2**64 - 2**64 % population
    chosen: set[int] = set()
    i = 0
    while len(chosen) < min(k, population):
        x = int.from_bytes(
            hashlib.sha256(seed + label.encode() + i.to_bytes(4, "big")).digest()[:8]
        )
        i += 1
        if x < limit:
            chosen.add(x % population)
    return tuple(sorted(chosen))


@settings(deadline=None)
@given(seeds, st.text(max_size=8), st.integers(-3, 200), st.integers(-3, 250))
def test_sample_is_distinct_sorted_in_range_and_deterministic(seed, label, population, k):
    out = compute_sample(seed, label, population, k)
    want = min(k, population) if population > 0 and k > 0 else 0
    assert len(out) == want
    assert list(out) == sorted(set(out))
    assert all(0 <= v < population for v in out)
    assert compute_sample(seed, label, population, k) == out


@settings(deadline=None)
@given(seeds, st.sampled_from(["layers", "chunks", ""]), st.integers(1, 100), st.integers(1, 20))
def test_sample_matches_the_reference_definition(seed, label, population, k):
    assert compute_sample(seed, label, population, k) == reference_sample(
        seed, label, population, k
    )


@given(seeds, st.integers(1, 60), st.integers(0, 40))
def test_sample_larger_than_population_is_clipped_to_everything(seed, population, extra):
    assert compute_sample(seed, "layers", population, population + extra) == tuple(
        range(population)
    )


def test_sample_depends_on_seed_and_label():
    base = compute_sample(b"\x00" * 32, "layers", 1000, 5)
    assert compute_sample(b"\x01" + b"\x00" * 31, "layers", 1000, 5) != base
    assert compute_sample(b"\x00" * 32, "chunks", 1000, 5) != base
    picks = {compute_sample(bytes([i]) * 32, "layers", 30, 2) for i in range(40)}
    assert len(picks) > 10


def test_sample_prefix_property():
    # Asking for more picks extends the same draw: a smaller sample is a subset of a larger one.
    seed = hashlib.sha256(b"prefix").digest()
    small, large = compute_sample(seed, "x", 50, 5), compute_sample(seed, "x", 50, 20)
    assert set(small) <= set(large)


def test_sample_is_uniform():
    # One pick from 6 over 3000 seeds; false-alarm probability of the bound: 1e-6.
    population, n = 6, 3000
    counts = [0] * population
    for i in range(n):
        (v,) = compute_sample(
            hashlib.sha256(i.to_bytes(4, "big")).digest(), "layers", population, 1
        )
        counts[v] += 1
    stat = chi2_statistic(counts, [1 / population] * population)
    assert stat < chi2_critical(population - 1, 1e-6)


@given(signatures, st.integers(1, 40), st.integers(1, 10), st.integers(1, 50))
def test_challenge_samples_distinct_layers_with_every_chunk(
    sig, num_layers, num_chunks, per_verifier
):
    ch = compute_challenge(sig, num_layers, num_chunks, per_verifier)
    layers = [lc.layer for lc in ch.layers]
    assert len(layers) == min(per_verifier, num_layers)
    assert layers == sorted(set(layers))
    assert all(1 <= b <= num_layers for b in layers)
    assert all(lc.chunks == tuple(range(num_chunks)) for lc in ch.layers)
    assert ch.num_chunks == num_chunks
    assert ch.seed == compute_seed(sig) == hashlib.sha256(sig).digest()
    assert tuple(b - 1 for b in layers) == compute_sample(
        ch.seed, "layers", num_layers, per_verifier
    )
    assert compute_challenge(sig, num_layers, num_chunks, per_verifier) == ch


@given(
    signatures,
    st.integers(1, 40),
    st.integers(1, 20),
    st.integers(0, 30),
    st.integers(0, 12),
    st.integers(1, 16),
)
def test_challenge_samples_distinct_output_positions(
    sig, prompt_len, outputs, per_verifier, layers_k, chunk_size
):
    # [CHAL.5]: m distinct output positions p in prompt_len..num_tokens-1, ascending.
    num_tokens = prompt_len + outputs
    ch = compute_challenge(
        sig,
        4,
        -(-num_tokens // chunk_size),
        max(1, layers_k),
        prompt_len=prompt_len,
        num_tokens=num_tokens,
        chunk_size=chunk_size,
        positions_per_verifier=per_verifier,
    )
    assert len(ch.positions) == min(per_verifier, outputs)
    assert list(ch.positions) == sorted(set(ch.positions))
    assert all(prompt_len <= p < num_tokens for p in ch.positions)
    offsets = compute_sample(ch.seed, "positions", outputs, per_verifier)
    assert ch.positions == tuple(prompt_len + o for o in offsets)
    assert (ch.num_layers, ch.chunk_size) == (4, chunk_size)


def test_challenge_without_outputs_or_m_has_no_positions():
    sig = Signature(b"\x01" * 64)
    assert compute_challenge(sig, 4, 2, 2).positions == ()
    no_output = compute_challenge(
        sig, 4, 2, 2, prompt_len=9, num_tokens=9, chunk_size=8, positions_per_verifier=4
    )
    assert no_output.positions == ()
    no_m = compute_challenge(sig, 4, 2, 2, prompt_len=9, num_tokens=12, chunk_size=8)
    assert no_m.positions == ()


@given(signatures, st.integers(1, 40), st.integers(1, 10), st.integers(0, 30), st.integers(0, 8))
def test_escalated_challenge_doubles_and_contains_the_base_one(sig, num_layers, k, outputs, m):
    # [VERIFY.7]: the draws are sequential, so the doubled sample extends the base sample.
    kw = {"prompt_len": 5, "num_tokens": 5 + outputs, "chunk_size": 4, "positions_per_verifier": m}
    base = compute_challenge(sig, num_layers, 3, max(k, 1), **kw)
    more = compute_challenge(sig, num_layers, 3, max(k, 1), escalated=True, **kw)
    assert more.seed == base.seed
    assert {lc.layer for lc in base.layers} <= {lc.layer for lc in more.layers}
    assert len(more.layers) == min(2 * max(k, 1), num_layers)
    assert set(base.positions) <= set(more.positions)
    assert len(more.positions) == min(2 * m, outputs)
    assert set(base.required_tiles()) <= set(more.required_tiles())


def test_commitment_challenge_reads_shape_from_the_commitment_and_policy_from_the_request():
    run = get_honest_run()
    c, req = run.signed.commitment, run.request
    sig = Signature(b"\x02" * 64)
    for escalated in (False, True):
        want = compute_challenge(
            sig,
            c.num_layers,
            c.num_chunks,
            req.layers_per_verifier,
            prompt_len=c.prompt_len,
            num_tokens=len(c.tokens),
            chunk_size=c.chunk_size,
            positions_per_verifier=req.positions_per_verifier,
            escalated=escalated,
        )
        assert compute_commitment_challenge(sig, c, req, escalated) == want
    assert len(want.positions) == min(2 * req.positions_per_verifier, len(c.output_tokens))


def test_challenge_depends_on_the_signature():
    picks = {
        tuple(lc.layer for lc in compute_challenge(Signature(bytes([i]) * 64), 30, 4, 2).layers)
        for i in range(40)
    }
    assert len(picks) > 10


def reference_tiles(challenge: Challenge) -> set[tuple[int, int]]:
    """Return the tiles [CHAL.3] requires, as (boundary, chunk) pairs."""
    tiles = {(0, c) for c in range(challenge.num_chunks)}
    for lc in challenge.layers:
        tiles |= {(lc.layer - 1, c) for c in range(max(lc.chunks) + 1)}
        tiles |= {(lc.layer, c) for c in lc.chunks}
    # A sampled position p is checked from the last boundary at the position before it.
    tiles |= {(challenge.num_layers, (p - 1) // challenge.chunk_size) for p in challenge.positions}
    return tiles


@st.composite
def challenges(draw):
    num_chunks = draw(st.integers(1, 8))
    layers = draw(
        st.lists(
            st.builds(
                LayerChallenge,
                layer=st.integers(1, 12),
                chunks=st.sets(st.integers(0, num_chunks - 1), min_size=1).map(
                    lambda s: tuple(sorted(s))
                ),
            ),
            max_size=4,
        )
    )
    chunk_size = draw(st.integers(1, 5))
    last = num_chunks * chunk_size - 1
    positions = draw(st.sets(st.integers(1, last), max_size=4)) if last >= 1 else set()
    return Challenge(
        seed=b"\x00" * 32,
        layers=tuple(layers),
        num_chunks=num_chunks,
        positions=tuple(sorted(positions)),
        num_layers=12,
        chunk_size=chunk_size,
    )


@given(challenges())
def test_required_tiles_are_exactly_the_reference_set_sorted_without_duplicates(ch):
    tiles = ch.required_tiles()
    pairs = [(t.boundary, t.chunk) for t in tiles]
    assert pairs == sorted(set(pairs))
    assert set(pairs) == reference_tiles(ch)


def test_required_tiles_boundary_zero_prefix_and_output_chunks():
    ch = Challenge(seed=b"", layers=(LayerChallenge(3, (1,)),), num_chunks=4)
    assert ch.required_tiles() == (
        TileRef(0, 0),
        TileRef(0, 1),
        TileRef(0, 2),
        TileRef(0, 3),
        TileRef(2, 0),
        TileRef(2, 1),
        TileRef(3, 1),
    )


def test_required_tiles_add_the_last_boundary_before_each_sampled_position():
    # p = 9 needs position 8 (chunk 1); p = 16 needs position 15, still chunk 1; p = 17: chunk 2.
    base = Challenge(seed=b"", layers=(LayerChallenge(3, (1,)),), num_chunks=4)
    for positions, extra in [((9,), {1}), ((9, 16), {1}), ((8, 17), {0, 2})]:
        ch = Challenge(
            seed=b"",
            layers=base.layers,
            num_chunks=4,
            positions=positions,
            num_layers=4,
            chunk_size=8,
        )
        added = set(ch.required_tiles()) - set(base.required_tiles())
        assert added == {TileRef(4, c) for c in extra}


def test_required_tiles_of_layer_one_reuse_boundary_zero():
    ch = Challenge(seed=b"", layers=(LayerChallenge(1, (0, 2)),), num_chunks=3)
    assert ch.required_tiles() == (
        TileRef(0, 0),
        TileRef(0, 1),
        TileRef(0, 2),
        TileRef(1, 0),
        TileRef(1, 2),
    )


@given(signatures, st.integers(1, 16), st.integers(1, 6), st.integers(1, 4))
def test_required_tiles_of_a_computed_challenge_cover_whole_boundaries(sig, layers, chunks, k):
    ch = compute_challenge(sig, layers, chunks, k)
    tiles = set(ch.required_tiles())
    for b in {0} | {lc.layer for lc in ch.layers} | {lc.layer - 1 for lc in ch.layers}:
        assert {TileRef(b, c) for c in range(chunks)} <= tiles
    boundaries = {t.boundary for t in tiles}
    assert boundaries == {0} | {lc.layer for lc in ch.layers} | {lc.layer - 1 for lc in ch.layers}


@given(signatures, st.integers(1, 6), st.integers(1, 20), st.integers(1, 8))
def test_required_tiles_of_sampled_positions_are_last_boundary_tiles(sig, k, outputs, m):
    prompt_len, chunk_size = 7, 4
    num_tokens = prompt_len + outputs
    num_chunks = -(-num_tokens // chunk_size)
    kw = {"prompt_len": prompt_len, "num_tokens": num_tokens, "chunk_size": chunk_size}
    without = compute_challenge(sig, 6, num_chunks, k, **kw)
    ch = compute_challenge(sig, 6, num_chunks, k, positions_per_verifier=m, **kw)
    added = set(ch.required_tiles()) - set(without.required_tiles())
    want = {TileRef(6, (p - 1) // chunk_size) for p in ch.positions}
    assert added <= want <= set(ch.required_tiles())
    assert all(0 <= t.chunk < num_chunks for t in ch.required_tiles())


# --- the whole-sequence sketch check [SKETCH.4]

ppms = st.integers(0, 1_000_000)


def reference_draw(seed: bytes, ppm: int) -> bool:
    """Return the draw as [SKETCH.4] words it: u64(sha256(seed || "sequence")[:8]) < q * 2**64."""
    x = int.from_bytes(hashlib.sha256(seed + b"sequence").digest()[:8], "big")
    return x * 1_000_000 < ppm * 2**64


@given(seeds, ppms)
def test_sequence_draw_matches_the_reference_definition(seed, ppm):
    assert draw_sequence_check(seed, ppm) is reference_draw(seed, ppm)
    assert draw_sequence_check(seed, ppm) is draw_sequence_check(seed, ppm)


@given(seeds)
def test_sequence_draw_at_q_zero_never_and_at_q_one_always(seed):
    assert draw_sequence_check(seed, 0) is False
    assert draw_sequence_check(seed, 1_000_000) is True


@given(seeds, ppms, ppms)
def test_sequence_draw_is_monotone_in_q(seed, a, b):
    # One threshold per seed: a larger q only adds draws.
    lo, hi = sorted((a, b))
    assert not draw_sequence_check(seed, lo) or draw_sequence_check(seed, hi)


@pytest.mark.parametrize("ppm", [1_000, 100_000, 500_000, 900_000])
def test_sequence_draw_has_probability_q(ppm):
    # 4000 seeds; the bound is the binomial's at a two-sided false-alarm probability of 1e-6.
    n, q = 4000, ppm / 1e6
    hits = sum(
        draw_sequence_check(hashlib.sha256(b"q" + i.to_bytes(4, "big")).digest(), ppm)
        for i in range(n)
    )
    assert abs(hits - n * q) <= 4.9 * math.sqrt(n * q * (1 - q)) + 1


@given(signatures, ppms)
def test_challenge_draws_the_sequence_check_from_its_seed(sig, ppm):
    base = compute_challenge(sig, 4, 2, 2, sequence_check_ppm=ppm)
    assert base.sequence_check is draw_sequence_check(compute_seed(sig), ppm)
    assert compute_challenge(sig, 4, 2, 2, sequence_check_ppm=ppm) == base
    # The draw adds no tiles: the verifier recomputes the last boundary with its own prefill.
    assert base.required_tiles() == compute_challenge(sig, 4, 2, 2).required_tiles()


@given(signatures, ppms)
def test_escalated_challenge_always_checks_the_sequence(sig, ppm):
    assert compute_challenge(sig, 4, 2, 2, escalated=True, sequence_check_ppm=ppm).sequence_check
    assert compute_challenge(sig, 4, 2, 2, escalated=True).sequence_check  # q = 0 too


def test_challenge_without_q_never_checks_the_sequence():
    assert not any(
        compute_challenge(Signature(bytes([i]) * 64), 4, 2, 2).sequence_check for i in range(64)
    )


@pytest.mark.parametrize("ppm", [0, 1_000_000])
def test_commitment_challenge_takes_q_from_the_request(ppm):
    net = get_network()
    request = net.request(request_id=b"\x31" * 16, sequence_check_ppm=ppm)
    signed = net.executor.on_execute(request)
    for i in range(8):
        sig = Signature(bytes([i]) * 64)
        assert compute_commitment_challenge(sig, signed.commitment, request).sequence_check is (
            ppm > 0
        )
        assert compute_commitment_challenge(sig, signed.commitment, request, True).sequence_check


def test_verifiers_draw_the_sequence_check_independently():
    # Each verifier's seed is its own challenge signature: at q = 1/2 some draw it, some do not.
    # The draws hang on the commitment digest (its float bits), so 32 verifiers: all agree with
    # probability 2 / 2**32.
    net = get_network()
    request = net.request(request_id=b"\x32" * 16, sequence_check_ppm=500_000)
    signed = net.executor.on_execute(request)
    message = compute_challenge_message(request.network_id, signed.digest)
    draws = [
        compute_commitment_challenge(
            make_key(f"sequence-draw-{i}").sign(message), signed.commitment, request
        ).sequence_check
        for i in range(32)
    ]
    assert set(draws) == {True, False}


# --- the spec's worked examples


def test_spec_example_sample():
    # [CHAL.4] example.
    assert compute_sample(b"\x00" * 32, "layers", 30, 2) == (3, 10)


def test_spec_example_challenge():
    # [CHAL.2] example: key of seed 00 x 32, network testnet, commitment digest 00 x 32.
    message = compute_challenge_message("testnet", Digest(b"\x00" * 32))
    assert message.hex() == "d1d0ad294ed18aea09d610f20f5fdd140ba6f36c4a79258dbbf03100923d49bf"
    signature = SigningKey.from_seed(b"\x00" * 32).sign(message)
    assert signature.hex().startswith("06c37df5932d7047")
    ch = compute_challenge(signature, num_layers=30, num_chunks=1, layers_per_verifier=2)
    assert ch.seed.hex() == "26476879dd36c6b82bf683588ea0d3932fbe2b4f74e8d0614d1fb89a3756bfc4"
    assert [lc.layer for lc in ch.layers] == [4, 11]

"""The whole-sequence sketch of the last boundary. [SKETCH.1]-[SKETCH.4]

Per 32 positions: the 128 entries of largest magnitude, rounded to bfloat16, committed as the
coefficients of the polynomial over GF(65521) from each entry's flat index to its bit pattern.
The properties here are the ones the verifier relies on: the executor's own states always
match their sketch, honest float noise stays far inside the tolerance, and a changed chunk is
found and named.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from merkle.errors import MerkleError, SketchError
from merkle.sketch import (
    SKETCH_CHUNK,
    SKETCH_PRIME,
    SKETCH_TOLERANCE,
    SKETCH_TOP_K,
    SketchCheck,
    check_sketch_shape,
    compute_sketch,
    count_sketch_chunks,
    decode_chunk,
    encode_chunk,
    evaluate,
    from_bf16_bits,
    interpolate,
    measure_sketch,
    select_top,
    to_bf16_bits,
)

P = SKETCH_PRIME
MAX_H_WITHOUT_COLLISIONS = (P - 1) // SKETCH_CHUNK  # 2047: 32 rows * 2047 < 65521


def test_constants_are_the_specified_ones():
    # [SKETCH.2]: 32 positions per chunk, 128 entries, the largest prime below 2**16.
    assert (SKETCH_CHUNK, SKETCH_TOP_K, SKETCH_PRIME, SKETCH_TOLERANCE) == (32, 128, 65521, 2**-7)
    assert all(P % d for d in range(2, 256))  # prime (256**2 > P)
    assert all(any(q % d == 0 for d in range(2, 256)) for q in range(P + 1, 1 << 16))
    assert P > 0xFF80  # every finite bfloat16 pattern, sign included, is a field element


@pytest.mark.parametrize(("tokens", "chunks"), [(1, 1), (31, 1), (32, 1), (33, 2), (64, 2)])
def test_count_sketch_chunks(tokens, chunks):
    assert count_sketch_chunks(tokens) == chunks


# --- the field polynomial


def reference_interpolate(xs: list[int], ys: list[int]) -> list[int]:
    """Return the Lagrange interpolating polynomial's coefficients, lowest first (Python ints)."""
    n = len(xs)
    out = [0] * n
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        basis, denom = [1], 1  # prod_{j != i} (X - xj), lowest first
        for j, xj in enumerate(xs):
            if j == i:
                continue
            basis = [(a - xj * b) % P for a, b in zip([0, *basis], [*basis, 0], strict=True)]
            denom = denom * (xi - xj) % P
        scale = yi * pow(denom, P - 2, P) % P
        out = [(o + scale * b) % P for o, b in zip(out, basis, strict=True)]
    return out


@st.composite
def field_points(draw, max_size: int = SKETCH_TOP_K):
    xs = draw(st.lists(st.integers(0, P - 1), min_size=1, max_size=max_size, unique=True))
    ys = draw(st.lists(st.integers(0, P - 1), min_size=len(xs), max_size=len(xs)))
    return np.array(xs, dtype=np.int64), np.array(ys, dtype=np.int64)


@settings(deadline=None)
@given(field_points())
def test_interpolate_then_evaluate_returns_the_values(points):
    xs, ys = points
    coeffs = interpolate(xs, ys)
    assert coeffs.shape == xs.shape
    assert ((coeffs >= 0) & (coeffs < P)).all()
    assert evaluate(coeffs, xs).tolist() == ys.tolist()


@given(field_points(max_size=12))
def test_interpolate_matches_the_lagrange_reference(points):
    # The polynomial of degree < n through n points is unique.
    xs, ys = points
    assert interpolate(xs, ys).tolist() == reference_interpolate(xs.tolist(), ys.tolist())


@given(st.lists(st.integers(0, P - 1), max_size=8), st.lists(st.integers(0, P - 1), max_size=8))
def test_evaluate_is_horner_mod_p(coeffs, xs):
    got = evaluate(np.array(coeffs, dtype=np.int64), np.array(xs, dtype=np.int64))
    want = [sum(c * pow(x, i, P) for i, c in enumerate(coeffs)) % P for x in xs]
    assert got.tolist() == want


# --- bfloat16 bit patterns


def torch_bf16_bits(values: np.ndarray) -> list[int]:
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return (t.view(torch.int16).to(torch.int32) & 0xFFFF).tolist()


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(hnp.arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_bf16_rounding_is_torchs(values):
    # [SKETCH.2]: round to nearest even, as torch's float32 -> bfloat16 cast (overflow to inf).
    bits = to_bf16_bits(values)
    assert bits.tolist() == torch_bf16_bits(values)
    back = from_bf16_bits(bits)
    assert back.dtype == np.float32
    want = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    assert back.tobytes() == want.tobytes()


@given(hnp.arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_bf16_patterns_of_finite_values_are_field_elements(values):
    bits = to_bf16_bits(values)
    assert ((bits >= 0) & (bits < P)).all()


@given(hnp.arrays(np.int64, st.integers(1, 64), elements=st.integers(0, 0xFFFF)))
def test_bf16_patterns_round_trip(bits):
    finite = (bits & 0x7FFF) < 0x7F80
    bits = bits[finite]
    assert to_bf16_bits(from_bf16_bits(bits)).tolist() == bits.tolist()


@given(st.floats(width=32, min_value=2.0**-126, max_value=2.0**126))
def test_bf16_rounding_error_is_within_the_tolerance(x):
    # bfloat16 keeps 8 significant bits: normal float32 values move by at most half a unit in
    # the last place, 2**-8 relative (the unit roundoff), half the tolerance.
    back = float(from_bf16_bits(to_bf16_bits(np.array([x], dtype=np.float32)))[0])
    assert abs(back - x) <= 2.0**-8 * abs(x) <= SKETCH_TOLERANCE * abs(x) / 2


# --- selection [SKETCH.2]


def test_select_top_takes_the_largest_magnitudes_and_ties_go_to_the_lower_index():
    flat = np.array([1.0, -3.0, 3.0, 2.0, -3.0, 0.5], dtype=np.float32)
    assert select_top(flat, 3).tolist() == [1, 2, 4]
    assert select_top(flat, 4).tolist() == [1, 2, 4, 3]
    assert select_top(flat, 100).tolist() == [1, 2, 4, 3, 0, 5]
    assert select_top(np.array([-0.0, 0.0, 0.0], dtype=np.float32), 2).tolist() == [0, 1]


def test_select_top_default_is_128_with_lower_indices_on_ties():
    flat = np.ones(300, dtype=np.float32)
    flat[::2] *= -1
    assert select_top(flat).tolist() == list(range(128))
    flat[250] = 2.0
    assert select_top(flat).tolist() == [250, *range(127)]


@given(hnp.arrays(np.float32, st.integers(1, 400), elements=finite32))
def test_select_top_matches_a_stable_sort(flat):
    want = sorted(range(flat.size), key=lambda i: (-abs(float(flat[i])), i))[:SKETCH_TOP_K]
    assert select_top(flat).tolist() == want


def test_worked_example_of_one_chunk():
    # Top entries by magnitude: index 1 (-2.0 = 0xC000), 2 (1.0 = 0x3F80), 0 (0.5 = 0x3F00).
    # The polynomial through (0, 16128), (1, 49152), (2, 16256) over GF(65521) is
    # 16128 + 463 X + 32561 X^2 (by hand: c1 + c2 = 33024, c1 + 2 c2 = 64).
    data = encode_chunk(np.array([0.5, -2.0, 1.0], dtype=np.float32))
    assert data == bytes.fromhex("003f cf01 317f")
    assert decode_chunk(data).tolist() == [16128, 463, 32561]
    assert compute_sketch(np.array([[0.5, -2.0, 1.0]], dtype=np.float32)) == (data,)


# --- the sketch of [N, H] states [SKETCH.1], [SKETCH.2]

# Normal float32 magnitudes, below bfloat16's overflow. Outside this range bfloat16 rounding is
# not within the tolerance, so a top value below 2**-127 (subnormal in bfloat16) or one that
# rounds to infinity does not match itself; hidden states are never there.
normal32 = st.floats(width=32, min_value=-(2.0**126), max_value=2.0**126, allow_subnormal=False)


def states_arrays(max_rows: int = 70, max_h: int = 12, elements=normal32):
    return hnp.arrays(
        np.float32, st.tuples(st.integers(1, max_rows), st.integers(1, max_h)), elements=elements
    )


@settings(deadline=None, max_examples=60)
@given(states_arrays())
def test_same_states_match_exactly(states):
    # [SKETCH.4]: the executor's own states measure 0 against their sketch, whatever the ties.
    sketch = compute_sketch(states)
    assert len(sketch) == count_sketch_chunks(states.shape[0])
    check_sketch_shape(sketch, states.shape[0])
    assert measure_sketch(states, sketch) == SketchCheck(chunk=0, mismatch=0.0)


@settings(deadline=None, max_examples=40)
@given(states_arrays(max_rows=100, max_h=40, elements=finite32))
def test_chunk_size_is_two_bytes_per_entry_without_collisions(states):
    # H <= 2047: 32 rows hold fewer than 65521 entries, so no two indices collide.
    rows, h = states.shape
    sketch = compute_sketch(states)
    for j, data in enumerate(sketch):
        chunk_rows = min(SKETCH_CHUNK, rows - j * SKETCH_CHUNK)
        assert len(data) == 2 * min(SKETCH_TOP_K, chunk_rows * h)


def test_each_chunk_depends_only_on_its_own_positions():
    rng = np.random.default_rng(1)
    states = rng.standard_normal((80, 16)).astype(np.float32)
    base = compute_sketch(states)
    assert len(base) == 3 and len(base[2]) == 2 * 128  # 16 rows * 16 = 256 entries
    changed = states.copy()
    changed[40] *= 2
    other = compute_sketch(changed)
    assert (other[0], other[2]) == (base[0], base[2]) and other[1] != base[1]
    assert compute_sketch(states[:64]) == base[:2]  # a prefix of whole chunks


def test_sketch_commits_to_the_bf16_values_of_the_top_entries():
    rng = np.random.default_rng(2)
    states = rng.standard_normal((32, 64)).astype(np.float32)
    (data,) = compute_sketch(states)
    flat = states.reshape(-1)
    idx = select_top(flat)
    assert evaluate(decode_chunk(data), idx % P).tolist() == to_bf16_bits(flat[idx]).tolist()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_invalid_non_finite_states(bad):
    states = np.ones((40, 8), dtype=np.float32)
    states[35, 3] = bad
    with pytest.raises(ValueError, match="finite"):
        compute_sketch(states)


@pytest.mark.parametrize("shape", [(8,), (2, 4, 8)])
def test_invalid_states_shape(shape):
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        compute_sketch(np.ones(shape, dtype=np.float32))


# --- index collisions modulo the prime (H > 2047)


def test_large_hidden_size_states_match_their_sketch():
    # 32 rows * 4096 = 131072 entries: indices i and i + 65521 share a field point.
    rng = np.random.default_rng(3)
    states = rng.standard_normal((40, 4096)).astype(np.float32)
    sketch = compute_sketch(states)
    assert [len(d) for d in sketch] == [256, 256]
    assert measure_sketch(states, sketch) == SketchCheck(0, 0.0)


def collided_states(second: float) -> tuple[np.ndarray, int]:
    """Return [40, 4096] states whose two largest entries share a field point, and the point."""
    rng = np.random.default_rng(3)  # no collision among the top entries of the noise itself
    states = rng.standard_normal((40, 4096)).astype(np.float32)
    assert [len(d) for d in compute_sketch(states)] == [256, 256]
    flat = states.reshape(-1)  # a view
    flat[5], flat[5 + P] = 100.0, second
    return states, 5


def test_colliding_entries_keep_the_first_largest_one():
    states, point = collided_states(90.0)
    (first, last) = compute_sketch(states)
    assert len(first) == 2 * 127  # one entry dropped: its point is taken
    assert len(last) == 2 * 128  # 8 rows: no collisions
    coeffs = decode_chunk(first)
    assert (
        evaluate(coeffs, np.array([point])).tolist() == to_bf16_bits(np.float32([100.0])).tolist()
    )


def test_colliding_entries_with_equal_values_still_match():
    states, _ = collided_states(100.0)
    assert measure_sketch(states, compute_sketch(states)) == SketchCheck(0, 0.0)


def test_colliding_entries_with_different_values_still_match_the_same_states():
    # [SKETCH.2]: the committed chunk leaves out the smaller of two colliding entries, so the
    # verifier must leave it out too; otherwise the executor's own states mismatch.
    states, _ = collided_states(90.0)
    assert measure_sketch(states, compute_sketch(states)) == SketchCheck(0, 0.0)


# --- measurement [SKETCH.4]


@pytest.fixture(scope="module")
def two_chunks() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)


def test_scaling_one_chunk_mismatches_all_of_its_entries_and_names_it(two_chunks):
    sketch = compute_sketch(two_chunks)
    for j in (0, 1):
        changed = two_chunks.copy()
        changed[j * 32 : (j + 1) * 32] *= 1.05  # 5 % > the 2**-7 tolerance, same top set
        assert measure_sketch(changed, sketch) == SketchCheck(chunk=j, mismatch=1.0)


def test_scaling_one_row_mismatches_exactly_its_top_entries(two_chunks):
    sketch = compute_sketch(two_chunks)
    row = 40  # chunk 1
    changed = two_chunks.copy()
    changed[row] *= 1.05
    top = select_top(changed[32:].reshape(-1))
    want = np.mean(top // 64 == row - 32)
    assert 0 < want < 1
    assert measure_sketch(changed, sketch) == SketchCheck(chunk=1, mismatch=float(want))


def test_noise_of_five_percent_of_the_top_magnitude_is_a_large_mismatch(two_chunks):
    sketch = compute_sketch(two_chunks)
    rng = np.random.default_rng(6)
    changed = two_chunks.copy()
    top = float(np.abs(changed[32:]).max())
    changed[32:] += (0.05 * top * rng.standard_normal((32, 64))).astype(np.float32)
    check = measure_sketch(changed, sketch)
    assert check.chunk == 1 and check.mismatch > 0.5  # the default reject_min


def test_another_boundary_mismatches_almost_everything(two_chunks):
    # What bad-sketch commits: the sketch of other states of the same shape.
    other = np.random.default_rng(7).standard_normal((64, 64)).astype(np.float32)
    check = measure_sketch(two_chunks, compute_sketch(other))
    assert check.mismatch > 0.9


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**32 - 1), st.integers(1, 70), st.integers(1, 64))
def test_honest_float_noise_is_far_inside_the_tolerance(seed, rows, h):
    # Relative noise of 1e-6 (far above the float32 noise between honest runs) never moves a
    # value by 2**-7; only a swap at the 128th place could, and that is one entry of 128.
    rng = np.random.default_rng(seed)
    states = (rng.standard_normal((rows, h)) * rng.uniform(0.1, 100)).astype(np.float32)
    sketch = compute_sketch(states)
    noisy = (states * (1 + 1e-6 * rng.standard_normal(states.shape))).astype(np.float32)
    assert measure_sketch(noisy, sketch).mismatch <= 2 / SKETCH_TOP_K


def test_the_largest_rounding_error_still_matches():
    # 2**21 * (1 + 2**-8) is halfway between two bfloat16 values and rounds to even, 2**21:
    # a relative error of 2**-8 / (1 + 2**-8), about 0.0039.
    x = np.float32(2**21 * (1 + 2**-8))
    assert from_bf16_bits(to_bf16_bits(np.array([x])))[0] == 2**21
    states = np.full((1, 1), x, dtype=np.float32)
    assert measure_sketch(states, compute_sketch(states)) == SketchCheck(0, 0.0)


def test_a_value_at_the_tolerance_edge():
    # One entry of one: committed 1.0; recomputed values around it.
    (data,) = compute_sketch(np.array([[1.0]], dtype=np.float32))
    for value, mismatch in [(1.0, 0.0), (1.007, 0.0), (0.993, 0.0), (1.01, 1.0), (0.99, 1.0)]:
        states = np.array([[value]], dtype=np.float32)
        assert measure_sketch(states, (data,)).mismatch == mismatch, value


def test_a_committed_nan_or_infinity_never_matches():
    states = np.array([[1.0]], dtype=np.float32)
    for pattern in (0x7F80, 0xFF80, 0x7FC0, 0x7F81):  # +inf, -inf, NaNs (constant polynomials)
        data = pattern.to_bytes(2, "little")
        assert measure_sketch(states, (data,)) == SketchCheck(0, 1.0)


def test_a_zero_chunk_matches_its_sketch():
    states = np.zeros((33, 8), dtype=np.float32)
    sketch = compute_sketch(states)
    assert measure_sketch(states, sketch) == SketchCheck(0, 0.0)
    states[32, 0] = 1.0
    assert measure_sketch(states, sketch) == SketchCheck(1, 1 / 8)


# --- malformed sketches [SKETCH.3]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x01\x00\x02", b"\x01\x00" * 129, b"\xf1\xff", b"\x00\x00" * 5 + b"\xff\xff"],
    ids=["empty", "one-byte", "odd", "129-coefficients", "prime", "above-prime"],
)
def test_invalid_sketch_chunk(data):
    with pytest.raises(SketchError):
        decode_chunk(data)
    with pytest.raises(SketchError):
        check_sketch_shape((data,), 10)
    states = np.ones((10, 4), dtype=np.float32)
    with pytest.raises(SketchError):
        measure_sketch(states, (data,))


def test_sketch_chunk_bounds_are_inclusive():
    assert decode_chunk(b"\x01\x00").tolist() == [1]
    assert decode_chunk(b"\xf0\xff" * 128).tolist() == [P - 1] * 128


@pytest.mark.parametrize(("tokens", "chunks"), [(10, 0), (10, 2), (33, 1), (64, 3), (1, 2)])
def test_invalid_sketch_chunk_count(tokens, chunks):
    sketch = (b"\x01\x00",) * chunks
    with pytest.raises(SketchError, match="number of chunks"):
        check_sketch_shape(sketch, tokens)
    with pytest.raises(SketchError, match="number of chunks"):
        measure_sketch(np.ones((tokens, 4), dtype=np.float32), sketch)


def test_sketch_error_is_a_value_error():
    assert issubclass(SketchError, MerkleError) and issubclass(SketchError, ValueError)

"""Encoding of activation tiles as Merkle leaves. [TILE.1]-[TILE.3]

Every rejection here is a ``BadTile`` (a ``Reject`` in the core, tests/bft/test_verifier.py): the
leaf bytes reach the decoder only after their hash was found under the executor's signed root, so
whatever is wrong with them is the executor's doing.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from merkle.errors import BadTile
from merkle.tiles import (
    DTYPE_CODES,
    HEADER_SIZE,
    MAGIC,
    compute_leaf_index,
    compute_num_chunks,
    decode_tile,
    encode_tile,
)

HEADER = struct.Struct(">4sIIBBII")

tiles = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 16), st.integers(1, 8)),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)
BASE = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def decode(leaf: bytes, boundary: int = 2, chunk: int = 5, rows: int = 3, cols: int = 4):
    return decode_tile(leaf, boundary=boundary, chunk=chunk, rows=rows, cols=cols)


def with_header(leaf: bytes, **fields) -> bytes:
    names = ("magic", "boundary", "chunk", "code", "ndim", "rows", "cols")
    values = dict(zip(names, HEADER.unpack_from(leaf), strict=True))
    values.update(fields)
    return HEADER.pack(*(values[n] for n in names)) + leaf[HEADER_SIZE:]


@given(tiles, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_round_trip_is_bit_exact(tile, boundary, chunk):
    leaf = encode_tile(boundary, chunk, tile)
    rows, cols = tile.shape
    out = decode_tile(leaf, boundary=boundary, chunk=chunk, rows=rows, cols=cols)
    assert out.dtype == np.float32
    assert out.shape == tile.shape
    assert out.tobytes() == tile.tobytes()  # bit-exact, -0.0 included


def test_leaf_layout_matches_the_documented_format():
    leaf = encode_tile(2, 5, BASE)
    assert HEADER_SIZE == 22
    assert leaf[:4] == MAGIC == b"VHT1"
    assert HEADER.unpack_from(leaf) == (b"VHT1", 2, 5, DTYPE_CODES["float32"], 2, 3, 4)
    assert leaf[HEADER_SIZE:] == BASE.astype("<f4").tobytes()
    assert len(leaf) == HEADER_SIZE + 3 * 4 * 4


def test_non_contiguous_and_big_endian_input_encode_like_the_plain_array():
    plain = encode_tile(0, 0, BASE)
    assert encode_tile(0, 0, np.asfortranarray(BASE)) == plain
    wide = np.zeros((3, 8), dtype=np.float32)
    wide[:, ::2] = BASE
    assert encode_tile(0, 0, wide[:, ::2]) == plain


@pytest.mark.parametrize(
    "tile",
    [BASE.astype(np.float64), BASE.astype(np.float16), BASE.reshape(-1), BASE.reshape(1, 3, 4)],
    ids=["float64", "float16", "1-d", "3-d"],
)
def test_invalid_encode_input(tile):
    with pytest.raises(ValueError):
        encode_tile(0, 0, tile)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"boundary": 3},
        {"chunk": 4},
        {"boundary": 5, "chunk": 2},
        {"rows": 2},
        {"cols": 5},
        {"rows": 4, "cols": 3},
    ],
    ids=repr,
)
def test_invalid_other_tile_than_asked(kwargs):
    with pytest.raises(BadTile):
        decode(encode_tile(2, 5, BASE), **kwargs)


@pytest.mark.parametrize(
    "fields",
    [
        {"magic": b"VHT2"},
        {"magic": b"\x00\x00\x00\x00"},
        {"ndim": 3},
        {"ndim": 1},
        {"code": 0},
        {"code": 9},
        {"code": DTYPE_CODES["bfloat16"]},
        {"code": DTYPE_CODES["float16"]},
        {"rows": 6},  # header and body disagree with the request
    ],
    ids=repr,
)
def test_invalid_header(fields):
    with pytest.raises(BadTile):
        decode(with_header(encode_tile(2, 5, BASE), **fields))


@pytest.mark.parametrize("delta", [-4, -1, 1, 4, 48])
def test_invalid_body_length(delta):
    leaf = encode_tile(2, 5, BASE)
    leaf = leaf[:delta] if delta < 0 else leaf + b"\x00" * delta
    with pytest.raises(BadTile):
        decode(leaf)


def test_invalid_half_precision_body_with_matching_length():
    # A float16 body of the right size is still refused: this verifier checks float32 only.
    body = BASE.astype("<f2").tobytes()
    leaf = HEADER.pack(MAGIC, 2, 5, DTYPE_CODES["float16"], 2, 3, 4) + body
    with pytest.raises(BadTile):
        decode(leaf)


@pytest.mark.parametrize("size", [0, 1, HEADER_SIZE - 1])
def test_invalid_shorter_than_header(size):
    # The leaf's hash is signed and in the signed root, so even a truncated leaf is provable.
    with pytest.raises(BadTile, match="shorter than its header"):
        decode(encode_tile(2, 5, BASE)[:size])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [(0, 0), (1, 2), (2, 3)])
def test_invalid_non_finite_values(value, position):
    tile = BASE.copy()
    tile[position] = value
    with pytest.raises(BadTile, match="non-finite"):
        decode(encode_tile(2, 5, tile))


def test_decoded_array_is_writable_and_independent_of_the_leaf():
    leaf = encode_tile(2, 5, BASE)
    out = decode(leaf)
    out[0, 0] = 42.0
    assert np.array_equal(decode(leaf), BASE)


@given(st.integers(1, 50), st.integers(1, 20))
def test_leaf_index_is_a_boundary_major_bijection(num_boundaries, num_chunks):
    indices = [
        compute_leaf_index(b, c, num_chunks)
        for b in range(num_boundaries)
        for c in range(num_chunks)
    ]
    assert indices == list(range(num_boundaries * num_chunks))


@given(st.integers(0, 10_000), st.integers(1, 100))
def test_num_chunks_is_ceiling_division(positions, chunk_size):
    n = compute_num_chunks(positions, chunk_size)
    assert n * chunk_size >= positions
    assert (n - 1) * chunk_size < positions or n == 0

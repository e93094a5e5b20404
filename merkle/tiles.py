"""Encoding of activation tiles as Merkle leaves. [TILE.1]-[TILE.3]

A tile is the hidden state at one layer boundary ``b`` for one chunk of ``C`` consecutive
positions. Leaf bytes are a fixed header followed by the tensor in little-endian row-major
order::

    magic  b"VHT1"
    u32    boundary           (big-endian)
    u32    chunk
    u8     dtype code         (1 float32, 2 bfloat16, 3 float16)
    u8     ndim (= 2)
    u32    rows               (positions in this chunk, <= C)
    u32    cols               (hidden size)
    ...    rows * cols * itemsize bytes
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from merkle.errors import BadTile

MAGIC = b"VHT1"
_HEADER = struct.Struct(">4sIIBBII")
HEADER_SIZE = _HEADER.size

DTYPE_CODES = {"float32": 1, "bfloat16": 2, "float16": 3}
_ITEMSIZE = {1: 4, 2: 2, 3: 2}


def compute_num_chunks(num_positions: int, chunk_size: int) -> int:
    """Return how many chunks of ``chunk_size`` cover ``num_positions``."""
    return -(-num_positions // chunk_size)


def compute_leaf_index(boundary: int, chunk: int, num_chunks: int) -> int:
    """Return the 0-based leaf index of tile (``boundary``, ``chunk``): boundary-major. [TILE.2]"""
    return boundary * num_chunks + chunk


def encode_tile(boundary: int, chunk: int, tile: npt.NDArray[np.float32]) -> bytes:
    """Return the leaf bytes of a float32 ``tile`` (rows x hidden) at (``boundary``, ``chunk``)."""
    if tile.ndim != 2 or tile.dtype != np.float32:
        raise ValueError(f"tile must be 2-d float32, got {tile.dtype} {tile.shape}")
    rows, cols = tile.shape
    header = _HEADER.pack(MAGIC, boundary, chunk, DTYPE_CODES["float32"], 2, rows, cols)
    return header + np.ascontiguousarray(tile, dtype="<f4").tobytes()


def decode_tile(
    leaf: bytes, *, boundary: int, chunk: int, rows: int, cols: int
) -> npt.NDArray[np.float32]:
    """Return the float32 array in ``leaf`` after checking its header. [TILE.3]

    Raises :class:`BadTile` when the leaf describes another tile than the one asked for, is
    not a tile, or holds non-finite values (the executor signed it, so the core makes that a
    provable ``Reject``).
    """
    if len(leaf) < HEADER_SIZE:  # the executor signed this leaf's hash: provable
        raise BadTile("tile shorter than its header")
    magic, b, c, code, ndim, r, k = _HEADER.unpack_from(leaf)
    if magic != MAGIC or ndim != 2 or code not in _ITEMSIZE:
        raise BadTile("tile header is not a verihive tile")
    if (b, c) != (boundary, chunk):
        raise BadTile(f"tile header says ({b},{c}), expected ({boundary},{chunk})")
    if (r, k) != (rows, cols):
        raise BadTile(f"tile shape {r}x{k}, expected {rows}x{cols}")
    if code != DTYPE_CODES["float32"]:
        raise BadTile("only float32 tiles are supported by this verifier")
    body = leaf[HEADER_SIZE:]
    if len(body) != r * k * _ITEMSIZE[code]:
        raise BadTile(f"tile body has {len(body)} bytes, header implies {r * k * _ITEMSIZE[code]}")
    arr = np.frombuffer(body, dtype="<f4").reshape(r, k).astype(np.float32)
    if not np.isfinite(arr).all():
        raise BadTile(f"tile ({b},{c}) holds non-finite values")
    return arr

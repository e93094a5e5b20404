"""Whole-sequence sketch of the final hidden states, TOPLOC-style. [SKETCH.1]-[SKETCH.5]

Per chunk of ``SKETCH_CHUNK`` positions, the executor takes the ``SKETCH_TOP_K`` entries of
largest magnitude of the flattened last-boundary states, rounds their values to bfloat16 and
commits to them as the coefficients of the polynomial over GF(``SKETCH_PRIME``) that maps each
entry's flat index to its value's bit pattern. The indices need no bytes: a verifier that
recomputes the states finds its own top entries and evaluates the polynomial there, so a chunk
costs two bytes per entry (256 bytes for 32 positions). The idea is TOPLOC's (Ong et al.,
2025); the encoding, the tie rule and the measurement are this project's (docs/spec/sketch.md).

Only numpy: the executor and the verifier share this module and it holds no torch code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from merkle.errors import SketchError

SKETCH_CHUNK = 32
"""Positions per sketch chunk."""
SKETCH_TOP_K = 128
"""Entries per chunk (fewer when a chunk has fewer entries or indices collide mod the prime)."""
SKETCH_PRIME = 65521
"""The largest prime below 2**16; every finite bfloat16 bit pattern is below it."""
SKETCH_TOLERANCE = 2.0**-7
"""An entry matches when ``|committed - recomputed| <= SKETCH_TOLERANCE * |recomputed|``.

bfloat16 keeps 8 significant bits, so rounding alone moves a value by at most ``2**-8``
relative; ``2**-7`` is twice that, which leaves room for honest float32 noise orders of
magnitude larger than measured (docs/calibration.md).
"""

_BF16_NAN_MIN = 0x7F81  # bit patterns at or above 0x7F81 (sign stripped) are NaN
_U64 = np.uint64


@dataclass(frozen=True, slots=True)
class SketchCheck:
    """What a verifier measured against a commitment's sketch. [SKETCH.4]

    ``mismatch`` is the largest, over chunks, fraction of the verifier's own top entries whose
    committed value does not match; ``chunk`` is the chunk where it was largest.
    """

    chunk: int
    mismatch: float


def count_sketch_chunks(num_tokens: int) -> int:
    """Return how many sketch chunks cover ``num_tokens`` positions."""
    return -(-num_tokens // SKETCH_CHUNK)


def to_bf16_bits(values: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Return the bfloat16 bit patterns of float32 ``values`` (round to nearest even)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


def from_bf16_bits(bits: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Return the float32 values of bfloat16 bit patterns."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def select_top(flat: npt.NDArray[np.float32], k: int = SKETCH_TOP_K) -> npt.NDArray[np.int64]:
    """Return the flat indices of the ``k`` entries of largest magnitude. [SKETCH.2]

    Ties in magnitude go to the lower index, so the choice is a function of the values alone.
    """
    mag = np.abs(flat.astype(np.float64))
    order = np.lexsort((np.arange(flat.size), -mag))
    return order[: min(k, flat.size)].astype(np.int64)


def select_points(
    flat: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return the top entries' flat indices and field points, colliding points left out.

    An entry whose point (index mod the prime) an earlier, larger entry already holds is not
    committed; executor and verifier drop it alike. [SKETCH.2]
    """
    idx = select_top(flat)
    points = idx % SKETCH_PRIME
    _, first = np.unique(points, return_index=True)
    keep = np.sort(first)
    return idx[keep], points[keep]


def _inverse(a: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Return ``a**(p-2) mod p`` element-wise (Fermat), for ``a`` not divisible by p."""
    result = np.ones_like(a)
    base = a % SKETCH_PRIME
    e = SKETCH_PRIME - 2
    while e:
        if e & 1:
            result = result * base % SKETCH_PRIME
        base = base * base % SKETCH_PRIME
        e >>= 1
    return result


_INVERSES = _inverse(np.arange(SKETCH_PRIME, dtype=np.int64))
"""``_INVERSES[a]`` is the inverse of ``a`` modulo the prime (``_INVERSES[0]`` is unused)."""


def interpolate(xs: npt.NDArray[np.int64], ys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Return coefficients ``c[0..n-1]`` (lowest first) of the polynomial through the points.

    ``xs`` must be distinct field elements. Newton's divided differences, then the Newton
    form expanded into monomials; all arithmetic is modulo ``SKETCH_PRIME``.
    """
    p = SKETCH_PRIME
    n = xs.size
    dd = ys.astype(np.int64) % p
    for j in range(1, n):
        num = (dd[j:] - dd[j - 1 : -1]) % p
        den = (xs[j:] - xs[: n - j]) % p
        dd = np.concatenate([dd[:j], num * _INVERSES[den] % p])
    coeffs = np.zeros(n, dtype=np.int64)
    for j in range(n - 1, -1, -1):
        # coeffs = coeffs * (X - xs[j]) + dd[j], keeping degree < n
        shifted = np.concatenate([[0], coeffs[:-1]])
        coeffs = (shifted - xs[j] * coeffs) % p
        coeffs[0] = (coeffs[0] + dd[j]) % p
    return coeffs


def evaluate(coeffs: npt.NDArray[np.int64], xs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Return the polynomial with ``coeffs`` (lowest first) at each of ``xs``, mod p (Horner)."""
    acc = np.zeros(xs.size, dtype=np.int64)
    for c in coeffs[::-1]:
        acc = (acc * xs + c) % SKETCH_PRIME
    return acc


def encode_chunk(flat: npt.NDArray[np.float32]) -> bytes:
    """Return one chunk's sketch: the coefficients as little-endian uint16. [SKETCH.2]

    Entries whose index collides modulo the prime with a larger entry's are left out.
    """
    idx, points = select_points(flat)
    coeffs = interpolate(points, to_bf16_bits(flat[idx]))
    return coeffs.astype("<u2").tobytes()


def compute_sketch(final_states: npt.NDArray[np.float32]) -> tuple[bytes, ...]:
    """Return the sketch of ``[N, H]`` last-boundary states: one entry per chunk. [SKETCH.1]"""
    if final_states.ndim != 2 or not np.isfinite(final_states).all():
        raise ValueError("final states must be a finite [N, H] array")
    n = final_states.shape[0]
    return tuple(
        encode_chunk(final_states[lo : lo + SKETCH_CHUNK].reshape(-1))
        for lo in range(0, n, SKETCH_CHUNK)
    )


def decode_chunk(data: bytes) -> npt.NDArray[np.int64]:
    """Return a chunk's coefficients; raise :class:`SketchError` when malformed. [SKETCH.3]"""
    if not data or len(data) % 2 or len(data) > 2 * SKETCH_TOP_K:
        raise SketchError("sketch chunk must hold 1 to 128 two-byte coefficients")
    coeffs = np.frombuffer(data, dtype="<u2").astype(np.int64)
    if (coeffs >= SKETCH_PRIME).any():
        raise SketchError("sketch coefficient outside the field")
    return coeffs


def check_sketch_shape(sketch: tuple[bytes, ...], num_tokens: int) -> None:
    """Raise :class:`SketchError` unless ``sketch`` fits ``num_tokens`` positions."""
    if len(sketch) != count_sketch_chunks(num_tokens):
        raise SketchError("sketch has the wrong number of chunks")
    for data in sketch:
        decode_chunk(data)


def measure_chunk(flat: npt.NDArray[np.float32], data: bytes) -> float:
    """Return the fraction of our own top entries whose committed value does not match."""
    coeffs = decode_chunk(data)
    idx, points = select_points(flat)
    committed = evaluate(coeffs, points)
    finite = (committed & 0x7FFF) < _BF16_NAN_MIN
    values = from_bf16_bits(np.where(finite, committed, 0)).astype(np.float64)
    own = flat[idx].astype(np.float64)
    ok = finite & (np.abs(values - own) <= SKETCH_TOLERANCE * np.abs(own))
    return float(1.0 - ok.mean())


def measure_sketch(final_states: npt.NDArray[np.float32], sketch: tuple[bytes, ...]) -> SketchCheck:
    """Compare recomputed ``[N, H]`` last-boundary states with a sketch. [SKETCH.4]

    Raises :class:`SketchError` when the sketch does not fit the states.
    """
    check_sketch_shape(sketch, final_states.shape[0])
    worst, worst_chunk = 0.0, 0
    for j, data in enumerate(sketch):
        lo = j * SKETCH_CHUNK
        m = measure_chunk(final_states[lo : lo + SKETCH_CHUNK].reshape(-1), data)
        if m > worst:
            worst, worst_chunk = m, j
    return SketchCheck(chunk=worst_chunk, mismatch=worst)

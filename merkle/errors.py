"""Errors of the Merkle layer: trees, proofs, tiles and sketches.

``merkle`` imports nothing of the protocol's, so it raises its own errors; the protocol core
translates them at its boundary (:mod:`bft.measure`, :mod:`bft.messages`, :mod:`proto.convert`):
:class:`MalformedProof` and :class:`SketchError` there become ``Malformed``, :class:`BadProof`
and :class:`BadTile` become ``Reject``. All are :class:`ValueError`: bad input to a function of
this layer.
"""

from __future__ import annotations


class MerkleError(ValueError):
    """Root of every error this layer raises on input it cannot accept."""


class MalformedProof(MerkleError):
    """An inclusion proof that is structurally impossible (index, step count, bit, length)."""


class BadProof(MerkleError):
    """A well-formed inclusion proof that does not put the leaf under the root and size given."""


class BadTile(MerkleError):
    """Leaf bytes that are not the tile asked for (header, shape, dtype, length, values)."""


class SketchError(MerkleError):
    """A sketch that cannot be decoded (wrong length, coefficient outside the field)."""

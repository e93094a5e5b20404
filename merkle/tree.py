"""RFC 6962 Merkle trees over activation tiles, built with pymerkle. [MERKLE.1]-[MERKLE.3]

Leaves are hashed as ``sha256(0x00 || leaf)`` and inner nodes as ``sha256(0x01 || l || r)``
(RFC 6962 / RFC 9162 prefixes, pymerkle's "security" mode). Leaf indices are 0-based here and
1-based inside pymerkle. Digests are plain 32-byte ``bytes``; errors are this layer's own
(:mod:`merkle.errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pymerkle import InclusionProof, InmemoryTree, InvalidProof

from merkle.errors import BadProof, MalformedProof

HASH_ALGORITHM = "sha256"
HASH_SIZE = 32
"""Bytes of a SHA-256 digest: every leaf hash, inner node and root."""
MAX_PROOF_STEPS = 64


@dataclass(frozen=True, slots=True)
class ProofStep:
    """One step of an inclusion path: the digest and pymerkle's resolution bit (0 or 1)."""

    bit: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class MerkleProof:
    """Inclusion proof of leaf ``leaf_index`` (0-based) in a tree of ``tree_size`` leaves.

    ``steps[0]`` carries the leaf hash; the rest are the audit path, bottom up.
    """

    leaf_index: int
    tree_size: int
    steps: tuple[ProofStep, ...]

    def validate(self) -> None:
        """Raise :class:`MalformedProof` if the proof is structurally impossible."""
        if not 0 <= self.leaf_index < self.tree_size:
            raise MalformedProof(
                f"leaf index {self.leaf_index} outside tree of {self.tree_size}"
            )
        if not 1 <= len(self.steps) <= MAX_PROOF_STEPS:
            raise MalformedProof(f"proof has {len(self.steps)} steps")
        for step in self.steps:
            if step.bit not in (0, 1) or len(step.digest) != HASH_SIZE:
                raise MalformedProof("proof step has a bad bit or digest length")


def compute_leaf_hash(leaf: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``sha256(0x00 || leaf)``."""
    return bytes(_HASHER.hash_buff(leaf))


class ActivationTree:
    """A Merkle tree over encoded tiles, in leaf order. Holds the leaves for openings."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a tree needs at least one leaf")
        self._tree = InmemoryTree(algorithm=HASH_ALGORITHM)
        self._tree.append_entries(leaves)
        self._leaves = list(leaves)
        self.root = bytes(self._tree.get_root())

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._leaves)

    def get_leaf(self, index: int) -> bytes:
        """Return the encoded leaf at 0-based ``index``."""
        return self._leaves[index]

    def prove(self, index: int) -> MerkleProof:
        """Return the inclusion proof of the leaf at 0-based ``index``."""
        proof = self._tree.prove_inclusion(index + 1)
        steps = tuple(
            ProofStep(bit=int(bit), digest=bytes(d))
            for bit, d in zip(proof.rule, proof.path, strict=True)
        )
        return MerkleProof(leaf_index=index, tree_size=self.size, steps=steps)


def check_inclusion(root: bytes, tree_size: int, leaf: bytes, proof: MerkleProof) -> None:
    """Raise unless ``proof`` puts ``leaf`` in the tree of ``root`` and ``tree_size``. [MERKLE.3]

    :class:`MalformedProof` when the proof is structurally impossible, :class:`BadProof` when
    it is well-formed but does not hold.
    """
    proof.validate()
    if proof.tree_size != tree_size:
        raise BadProof(
            f"proof is for a tree of {proof.tree_size} leaves, commitment says {tree_size}"
        )
    pm_proof = InclusionProof(
        HASH_ALGORITHM,
        True,
        proof.tree_size,
        proof.leaf_index + 1,
        [s.bit for s in proof.steps],
        [bytes(s.digest) for s in proof.steps],
    )
    try:
        pm_proof.verify(compute_leaf_hash(leaf), root, algorithm=HASH_ALGORITHM, security=True)
    except InvalidProof as exc:
        raise BadProof(f"inclusion proof of leaf {proof.leaf_index} fails: {exc}") from exc


_HASHER = InmemoryTree(algorithm=HASH_ALGORITHM)

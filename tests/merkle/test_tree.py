"""RFC 6962 Merkle trees over tiles and their inclusion proofs. [MERKLE.1]-[MERKLE.3]"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from merkle.errors import BadProof, MalformedProof, MerkleError
from merkle.tree import (
    MAX_PROOF_STEPS,
    ActivationTree,
    MerkleProof,
    ProofStep,
    check_inclusion,
    compute_leaf_hash,
)

# --- RFC 6962 section 2.1, written out from the RFC text


def rfc_leaf(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def rfc_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """Return the largest power of two smaller than ``n`` (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rfc_mth(leaves: list[bytes]) -> bytes:
    """Return MTH(D[n])."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return rfc_leaf(leaves[0])
    k = split_point(n)
    return rfc_node(rfc_mth(leaves[:k]), rfc_mth(leaves[k:]))


def rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """Return PATH(m, D[n]), the audit path, leaf-side sibling first."""
    n = len(leaves)
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return [*rfc_path(m, leaves[:k]), rfc_mth(leaves[k:])]
    return [*rfc_path(m - k, leaves[k:]), rfc_mth(leaves[:k])]


def rfc9162_verify(index: int, size: int, leaf_hash: bytes, path: list[bytes], root: bytes) -> bool:
    """Return whether ``path`` proves ``leaf_hash`` at ``index`` (RFC 9162 section 2.1.3.2)."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = rfc_node(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = rfc_node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def make_leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [salt + b"tile-%d" % i for i in range(n)]


@pytest.fixture(scope="module")
def trees() -> dict[int, ActivationTree]:
    return {n: ActivationTree(make_leaves(n)) for n in range(1, 71)}


sizes_and_indices = st.integers(1, 70).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1))
)


def test_leaf_hash_is_rfc6962():
    for leaf in [b"", b"a", b"\x00" * 100]:
        assert compute_leaf_hash(leaf) == hashlib.sha256(b"\x00" + leaf).digest()


def test_root_matches_rfc6962_mth(trees):
    for n, tree in trees.items():
        assert tree.root == rfc_mth(make_leaves(n)), n
        assert tree.size == n


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=40))
def test_root_matches_rfc6962_mth_for_any_leaves(leaves):
    assert ActivationTree(leaves).root == rfc_mth(leaves)


def test_rfc6962_reference_is_itself_right():
    # The independent construction agrees with hand-computed small trees.
    a, b, c = b"a", b"b", b"c"
    assert rfc_mth([a]) == rfc_leaf(a)
    assert rfc_mth([a, b]) == rfc_node(rfc_leaf(a), rfc_leaf(b))
    assert rfc_mth([a, b, c]) == rfc_node(rfc_node(rfc_leaf(a), rfc_leaf(b)), rfc_leaf(c))
    assert [split_point(n) for n in (2, 3, 4, 5, 8, 9)] == [1, 2, 2, 4, 4, 8]


@settings(deadline=None)
@given(sizes_and_indices)
def test_every_honest_proof_verifies(trees, n_index):
    n, index = n_index
    tree = trees[n]
    proof = tree.prove(index)
    assert (proof.leaf_index, proof.tree_size) == (index, n)
    assert tree.get_leaf(index) == make_leaves(n)[index]
    check_inclusion(tree.root, n, tree.get_leaf(index), proof)


@settings(deadline=None)
@given(sizes_and_indices)
def test_proof_is_the_rfc6962_audit_path(trees, n_index):
    n, index = n_index
    proof = trees[n].prove(index)
    leaves = make_leaves(n)
    assert proof.steps[0].digest == rfc_leaf(leaves[index])
    path = [s.digest for s in proof.steps[1:]]
    assert path == rfc_path(index, leaves)
    assert rfc9162_verify(index, n, rfc_leaf(leaves[index]), path, trees[n].root)


def test_leaf_prefixes_stop_second_preimages():
    # An inner node's preimage (left || right) is not a leaf of a one-leaf tree with that root.
    leaves = make_leaves(2)
    tree = ActivationTree(leaves)
    forged = rfc_leaf(leaves[0]) + rfc_leaf(leaves[1])
    assert ActivationTree([forged]).root != tree.root
    with pytest.raises(MerkleError):
        check_inclusion(tree.root, 1, forged, ActivationTree([forged]).prove(0))


def test_empty_tree_is_refused():
    with pytest.raises(ValueError):
        ActivationTree([])


# --- tampering: every part of (root, size, leaf, proof) is bound


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@settings(deadline=None)
@given(sizes_and_indices, st.integers(0, 10_000))
def test_invalid_tampered_leaf_byte(trees, n_index, bit):
    n, index = n_index
    tree = trees[n]
    leaf = tree.get_leaf(index)
    with pytest.raises(BadProof):
        check_inclusion(tree.root, n, _flip(leaf, bit), tree.prove(index))


@settings(deadline=None)
@given(sizes_and_indices, st.data())
def test_invalid_tampered_proof_digest(trees, n_index, data):
    n, index = n_index
    tree = trees[n]
    proof = tree.prove(index)
    i = data.draw(st.integers(0, len(proof.steps) - 1))
    bit = data.draw(st.integers(0, 255))
    steps = list(proof.steps)
    steps[i] = ProofStep(steps[i].bit, _flip(steps[i].digest, bit))
    with pytest.raises(BadProof):
        check_inclusion(
            tree.root, n, tree.get_leaf(index), dataclasses.replace(proof, steps=tuple(steps))
        )


@settings(deadline=None)
@given(sizes_and_indices, st.data())
def test_invalid_tampered_proof_bit(trees, n_index, data):
    n, index = n_index
    tree = trees[n]
    proof = tree.prove(index)
    i = data.draw(st.integers(0, len(proof.steps) - 1))
    new_bit = data.draw(st.sampled_from([1 - proof.steps[i].bit, 2, -1]))
    steps = list(proof.steps)
    steps[i] = ProofStep(new_bit, steps[i].digest)
    expected = BadProof if new_bit in (0, 1) else MalformedProof
    with pytest.raises(expected):
        check_inclusion(
            tree.root, n, tree.get_leaf(index), dataclasses.replace(proof, steps=tuple(steps))
        )


@settings(deadline=None)
@given(
    st.integers(2, 70).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n - 1))
    )
)
def test_invalid_tampered_index(trees, n_i_j):
    n, i, j = n_i_j
    assume(i != j)
    tree = trees[n]
    moved = dataclasses.replace(tree.prove(i), leaf_index=j)
    with pytest.raises(BadProof):
        check_inclusion(tree.root, n, tree.get_leaf(i), moved)
    # Nor does a genuine proof of leaf i vouch for the leaf at j.
    with pytest.raises(BadProof):
        check_inclusion(tree.root, n, tree.get_leaf(j), tree.prove(i))


@given(sizes_and_indices, st.integers(0, 5))
def test_invalid_index_outside_the_tree(trees, n_index, extra):
    n, index = n_index
    tree = trees[n]
    with pytest.raises(MalformedProof):
        check_inclusion(
            tree.root,
            n,
            tree.get_leaf(index),
            dataclasses.replace(tree.prove(index), leaf_index=n + extra),
        )
    with pytest.raises(MalformedProof):
        check_inclusion(
            tree.root,
            n,
            tree.get_leaf(index),
            dataclasses.replace(tree.prove(index), leaf_index=-1),
        )


@settings(deadline=None)
@given(sizes_and_indices, st.integers(1, 80))
def test_invalid_tampered_tree_size(trees, n_index, other):
    n, index = n_index
    assume(other != n and other > index)
    tree = trees[n]
    proof = tree.prove(index)
    leaf = tree.get_leaf(index)
    # The proof claims another size than the commitment, or the other way round. (When both
    # name the same wrong size a path can still fit the root, as in RFC 9162: a root means
    # something only together with its size, which the signed commitment fixes.)
    with pytest.raises(BadProof):
        check_inclusion(tree.root, n, leaf, dataclasses.replace(proof, tree_size=other))
    with pytest.raises(BadProof):
        check_inclusion(tree.root, other, leaf, proof)


@settings(deadline=None)
@given(sizes_and_indices, st.integers(0, 255))
def test_invalid_tampered_root(trees, n_index, bit):
    n, index = n_index
    tree = trees[n]
    with pytest.raises(BadProof):
        check_inclusion(_flip(tree.root, bit), n, tree.get_leaf(index), tree.prove(index))


@settings(deadline=None)
@given(sizes_and_indices)
def test_invalid_root_of_another_tree(trees, n_index):
    n, index = n_index
    other = ActivationTree(make_leaves(n, salt=b"x"))
    with pytest.raises(BadProof):
        check_inclusion(other.root, n, trees[n].get_leaf(index), trees[n].prove(index))


@settings(deadline=None)
@given(sizes_and_indices, st.sampled_from(["drop-first", "drop-last", "append", "duplicate"]))
def test_invalid_proof_length(trees, n_index, how):
    n, index = n_index
    tree = trees[n]
    proof = tree.prove(index)
    steps = proof.steps
    steps = {
        "drop-first": steps[1:],
        "drop-last": steps[:-1],
        "append": (*steps, ProofStep(0, b"\x00" * 32)),
        "duplicate": (*steps, steps[-1]),
    }[how]
    with pytest.raises((BadProof, MalformedProof)):
        check_inclusion(tree.root, n, tree.get_leaf(index), dataclasses.replace(proof, steps=steps))


@pytest.mark.parametrize(
    "steps",
    [
        (),
        (ProofStep(0, b"\x00" * 31),),
        (ProofStep(0, b"\x00" * 33),),
        tuple(ProofStep(0, b"\x00" * 32) for _ in range(MAX_PROOF_STEPS + 1)),
    ],
    ids=["empty", "short-digest", "long-digest", "too-long"],
)
def test_invalid_malformed_proof(trees, steps):
    tree = trees[5]
    proof = MerkleProof(leaf_index=0, tree_size=5, steps=steps)
    with pytest.raises(MalformedProof):
        check_inclusion(tree.root, 5, tree.get_leaf(0), proof)


def test_invalid_zero_size_tree():
    proof = MerkleProof(leaf_index=0, tree_size=0, steps=(ProofStep(0, b"\x00" * 32),))
    with pytest.raises(MalformedProof):
        check_inclusion(b"\x00" * 32, 0, b"", proof)


def test_distinct_leaves_give_distinct_roots(trees):
    roots = {tree.root for tree in trees.values()}
    assert len(roots) == len(trees)
    one_changed = make_leaves(9)
    one_changed[4] += b"!"
    assert ActivationTree(one_changed).root != trees[9].root


def test_spec_example_proof():
    # [MERKLE.2] example: n = 3, i = 2 -> [(1, H(l2)), (0, MTH(l0, l1))].
    leaves = [b"l0", b"l1", b"l2"]
    proof = ActivationTree(leaves).prove(2)
    assert proof.steps == (
        ProofStep(1, rfc_leaf(b"l2")),
        ProofStep(0, rfc_mth(leaves[:2])),
    )
    one = ActivationTree([b"only"]).prove(0)
    assert one.steps == (ProofStep(0, rfc_leaf(b"only")),)


@settings(deadline=None)
@given(sizes_and_indices)
def test_proof_bits_follow_the_spec(trees, n_index):
    # [MERKLE.2]: bit j is 1 iff the node at height j on the leaf's path is a right child; the
    # last bit is 0.
    n, index = n_index
    bits = [s.bit for s in trees[n].prove(index).steps]
    lo, hi, path = 0, n, []
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            path.append(0)
            hi = lo + k
        else:
            path.append(1)
            lo += k
    assert bits == [*path[::-1], 0]  # leaf first, then upward; the last slot is 0

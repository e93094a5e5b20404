"""A remembered commitment stays openable after its tree was evicted. [COMMIT.4], [COMMIT.7]

An executor keeps 64 trees but remembers 16384 commitments ([COMMIT.5]); a request repeated
after its tree left must not get a commitment its executor can no longer open.
"""

from __future__ import annotations

import pytest

from bft.errors import NotFound, Unavailable
from bft.messages import TileRef
from bft.types import Digest
from executor.core import ExecutorCore
from merkle.tiles import compute_leaf_index
from merkle.tree import check_inclusion
from tests.executor.test_concurrency import NoisyBackend, make_request
from tests.support import CHUNK_SIZE, NETWORK_ID, get_tiny, make_key

KEPT = 2


def make_executor(label: str, noisy: bool = False) -> ExecutorCore:
    lm, backend = get_tiny()
    chosen = NoisyBackend(backend) if noisy else backend
    return ExecutorCore(make_key(label), chosen, lm.model_id, NETWORK_ID, CHUNK_SIZE, KEPT)


def open_every_tile(ex: ExecutorCore, digest: Digest) -> None:
    """Open every tile of ``digest`` and check each proof against the signed root."""
    c = ex.get_run(digest).signed.commitment
    tiles = tuple(
        TileRef(b, k) for b in range(c.num_layers + 1) for k in range(c.num_chunks)
    )
    response = ex.on_open(digest, tiles)
    assert len(response.openings) == c.num_leaves
    for opening in response.openings:
        index = compute_leaf_index(opening.tile.boundary, opening.tile.chunk, c.num_chunks)
        assert opening.proof.leaf_index == index
        check_inclusion(c.merkle_root, c.num_leaves, opening.leaf, opening.proof)  # raises


def test_repeated_request_after_eviction_is_opened_from_recomputed_tiles():
    ex = make_executor("evict-a")
    first = ex.on_execute(make_request(40))
    for tag in range(41, 41 + KEPT):  # push the first tree out
        ex.on_execute(make_request(tag))
    assert first.digest not in {s.digest for s in ex.get_held_commitments()}
    again = ex.on_execute(make_request(40))
    assert again == first  # [COMMIT.5]: the same signed commitment, no second root
    open_every_tile(ex, first.digest)  # [COMMIT.7]: recomputed, root checked, kept again
    assert ex.get_held_commitments()[-1] == first


def test_invalid_evicted_tiles_that_do_not_recompute_are_unavailable():
    # A backend that does not reproduce its own bits cannot restore the tree: Unavailable,
    # never a tree under another root.
    ex = make_executor("evict-b", noisy=True)
    first = ex.on_execute(make_request(50))
    for tag in range(51, 51 + KEPT):
        ex.on_execute(make_request(tag))
    with pytest.raises(Unavailable, match="do not recompute"):
        ex.on_open(first.digest, (TileRef(0, 0),))
    assert first.digest not in {s.digest for s in ex.get_held_commitments()}


def test_invalid_unknown_commitment_is_not_found():
    ex = make_executor("evict-c")
    with pytest.raises(NotFound, match="no commitment"):
        ex.on_open(Digest(b"\x07" * 32), (TileRef(0, 0),))

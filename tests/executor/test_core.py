"""The executor's protocol core against real verifiers, honest and byzantine.

[COMMIT.3]-[COMMIT.4], [OPEN.1]-[OPEN.3], [VERIFY.2], [GUAR.2]
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bft.assembler import Outcome, build_receipt, get_outcome
from bft.challenge import Challenge
from bft.crypto import is_valid_signature
from bft.errors import Malformed, NotFound, Reject
from bft.messages import InferenceRequest, SamplingParams, TileRef, Verdict
from bft.receipt import check_receipt
from bft.types import Digest, ModelId
from executor.core import ExecutorCore, compute_tiles
from merkle.tiles import compute_leaf_index, decode_tile
from merkle.tree import ActivationTree, check_inclusion
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    PROMPT,
    Network,
    find_execution,
    make_key,
)


def request_of(net: Network, n: int) -> InferenceRequest:
    return net.request(request_id=n.to_bytes(16, "big"))


# --- execution and commitment [COMMIT.3]


def test_commitment_is_what_the_executor_computed(net, run):
    c = run.signed.commitment
    run.signed.check()
    assert c.tokens[: c.prompt_len] == PROMPT
    assert 1 <= len(c.output_tokens) <= run.request.sampling.max_new_tokens
    assert (c.dtype, c.backend) == ("float32", "torch-cpu")
    assert (c.num_layers, c.hidden_size, c.chunk_size) == (4, 64, CHUNK_SIZE)
    assert c.num_leaves == 5 * c.num_chunks == 5 * 4
    assert c.executor_key == net.executor_key.public_key
    assert c.request_digest == run.request.digest()
    assert c.model_id == net.lm.model_id
    expected_output = net.backend.generate(
        list(PROMPT), run.request.sampling, run.request.sampling_seed()
    )
    assert list(c.output_tokens) == expected_output
    leaves = compute_tiles(net.backend.prove(list(c.tokens)), CHUNK_SIZE)
    assert ActivationTree(leaves).root == c.merkle_root


def test_execution_is_deterministic(net, run):
    again = net.executor.on_execute(run.request)
    assert again == run.signed


def test_tiles_cover_every_boundary_and_chunk_in_order(net, run):
    states = net.backend.prove(list(run.signed.commitment.tokens))
    leaves = compute_tiles(states, CHUNK_SIZE)
    n = run.signed.commitment.num_chunks
    assert len(leaves) == 5 * n
    for b in range(5):
        for ch in range(n):
            rows = min(CHUNK_SIZE, states.shape[1] - ch * CHUNK_SIZE)
            leaf = leaves[compute_leaf_index(b, ch, n)]
            tile = decode_tile(leaf, boundary=b, chunk=ch, rows=rows, cols=64)
            assert np.array_equal(tile, states[b, ch * CHUNK_SIZE : ch * CHUNK_SIZE + rows])


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"network_id": "elsewhere"}, Malformed),
        ({"model_id": ModelId(b"\x00" * 32)}, Reject),
        ({"prompt_tokens": (1, 49152)}, Malformed),
        ({"request_id": b"\x00"}, Malformed),
    ],
    ids=["network", "model", "token-outside-vocab", "malformed"],
)
def test_invalid_request_to_execute(net, run, changes, error):
    with pytest.raises(error):
        net.executor.on_execute(dataclasses.replace(run.request, **changes))


# --- openings [OPEN.1]-[OPEN.2]


def test_openings_are_signed_and_prove_each_requested_tile(net, run):
    c = run.signed.commitment
    tiles = (TileRef(3, 1), TileRef(0, 0), TileRef(4, 3))  # request order is kept
    resp = net.executor.on_open(run.signed.digest, tiles)
    assert is_valid_signature(c.executor_key, resp.signing_root(), resp.signature)
    assert (resp.network_id, resp.commitment_digest) == (NETWORK_ID, run.signed.digest)
    assert tuple(o.tile for o in resp.openings) == tiles
    assert resp.commitment == run.signed  # [OPEN.4]: the signed root travels with its openings
    for o in resp.openings:
        assert o.proof.leaf_index == compute_leaf_index(o.tile.boundary, o.tile.chunk, 4)
        check_inclusion(c.merkle_root, c.num_leaves, o.leaf, o.proof)


def test_empty_opening_request_is_answered(net, run):
    resp = net.executor.on_open(run.signed.digest, ())
    assert resp.openings == ()
    assert is_valid_signature(net.executor_key.public_key, resp.signing_root(), resp.signature)


def test_invalid_open_for_an_unknown_commitment(net):
    with pytest.raises(NotFound):
        net.executor.on_open(Digest(b"\x00" * 32), (TileRef(0, 0),))


def test_invalid_open_with_a_duplicate_tile(net, run):
    with pytest.raises(Malformed, match="duplicate"):
        net.executor.on_open(run.signed.digest, (TileRef(0, 0), TileRef(1, 1), TileRef(0, 0)))


@pytest.mark.parametrize(
    "tile",
    [TileRef(5, 0), TileRef(0, 4), TileRef(-1, 0), TileRef(0, -1), TileRef(1024, 1 << 20)],
    ids=repr,
)
def test_invalid_open_outside_the_commitment(net, run, tile):
    with pytest.raises(Malformed, match="outside the commitment"):
        net.executor.on_open(run.signed.digest, (TileRef(0, 0), tile))


def test_old_commitments_are_evicted_after_max_stored(net):
    # [COMMIT.4]: the executor keeps the newest max_stored runs, oldest evicted first.
    ex = ExecutorCore(net.executor_key, net.backend, net.lm.model_id, NETWORK_ID, CHUNK_SIZE, 2)
    short = SamplingParams(max_new_tokens=1)
    signed = [ex.on_execute(net.request(bytes([i]) * 16, PROMPT[:4], short)) for i in range(3)]
    assert ex.get_held_commitments() == signed[1:]
    for s in signed[1:]:
        ex.on_open(s.digest, (TileRef(0, 0),))
    # [COMMIT.7]: an evicted but remembered commitment is recomputed, kept as the newest
    # (evicting the next oldest), and opened; one never signed here is NotFound.
    ex.on_open(signed[0].digest, (TileRef(0, 0),))
    assert ex.get_held_commitments() == [signed[2], signed[0]]
    with pytest.raises(NotFound):
        ex.on_open(Digest(b"\x01" * 32), (TileRef(0, 0),))


# --- honest and byzantine executors against the verifiers


def test_honest_executor_gets_accept_from_all_four_verifiers(net, run):
    assert len(run.votes) == 4
    assert [v.verdict for v in run.votes] == [Verdict.ACCEPT] * 4
    assert get_outcome(run.tally) is Outcome.CERTIFIED
    check_receipt(build_receipt(run.tally, net.validator_set), trusted_validators=net.validators)


class OneLayerLiar(ExecutorCore):
    """Commits honest states except at one boundary, shifted by a constant."""

    boundary = 2

    def compute_states(self, tokens):
        states = super().compute_states(tokens).copy()
        states[self.boundary] += 0.05
        return states


def test_invalid_one_boundary_lie_is_caught_by_exactly_the_verifiers_sampling_it(net):
    # Boundary b is layer b's output and layer b+1's input: a verifier that re-executes either
    # layer sees the lie, one that samples neither cannot. [GUAR.2]
    ex = OneLayerLiar(make_key("one-layer-liar"), net.backend, net.lm.model_id, NETWORK_ID, 8)
    lied = {OneLayerLiar.boundary, OneLayerLiar.boundary + 1}

    def exposed(challenge: Challenge) -> bool:
        return bool({lc.layer for lc in challenge.layers} & lied)

    # A request whose committee holds both cases: a member samples neither layer 2 nor 3 (k = 2
    # of 4) with probability 1/6, independently, so the four agree with probability
    # (5/6)**4 + (1/6)**4 < 0.49.
    assert net.policy.layers_per_verifier == 2
    found = find_execution(
        net,
        ex,
        "one-layer-liar",
        1 - (5 / 6) ** 4 - (1 / 6) ** 4,
        lambda f: {exposed(ch) for ch in f.challenges.values()} == {True, False},
    )
    run = net.run(found.request, ex)
    seen = set()
    for vote in run.votes:
        challenge = run.sessions[vote.verifier_key].challenge
        assert vote.verdict is (Verdict.REJECT if exposed(challenge) else Verdict.ACCEPT), challenge
        seen.add(exposed(challenge))
    assert seen == {True, False}  # both cases were exercised


class ShortLeafExecutor(ExecutorCore):
    """Commits to leaves that are not tiles at all (2 bytes each)."""

    def on_execute(self, request):
        signed = super().on_execute(request)
        run = self.get_run(signed.digest)
        tree = ActivationTree([b"xx"] * run.tree.size)
        c = dataclasses.replace(signed.commitment, merkle_root=tree.root)
        forged = dataclasses.replace(
            signed, commitment=c, signature=self.key.sign(c.signing_root())
        )
        self._runs[forged.digest] = dataclasses.replace(run, signed=forged, tree=tree)
        return forged


def test_invalid_short_signed_leaves_get_reject(net):
    # The leaf is under the signed root and its hash is in the signed response: provable.
    ex = ShortLeafExecutor(make_key("short-leaf"), net.backend, net.lm.model_id, NETWORK_ID, 8)
    run = net.run(request_of(net, 300), ex)
    assert [v.verdict for v in run.votes] == [Verdict.REJECT] * 4
    assert all("shorter than its header" in v.reason for v in run.votes)

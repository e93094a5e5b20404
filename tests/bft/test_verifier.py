"""The verifier's protocol core on the tiny model. [VERIFY.1]-[VERIFY.6]"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bft.errors import BadSignature, Malformed, Reject
from bft.messages import OpeningResponse, TileOpening, TileRef, Verdict
from bft.quorum import check_vote
from bft.types import Digest, ModelId, Signature
from bft.verifier import Thresholds, VerifierCore, compute_rel_errors
from executor.core import ExecutorCore
from tests.support import (
    NETWORK_ID,
    Network,
    Run,
    get_honest_run,
    get_network,
    make_key,
    resign_commitment,
)


@pytest.fixture(scope="module")
def net() -> Network:
    return get_network()


@pytest.fixture(scope="module")
def run() -> Run:
    return get_honest_run()


@pytest.fixture(scope="module")
def member(run) -> bytes:
    return run.tally.committee[0]


def test_rel_error_is_update_normalised():
    recomputed = np.array([[3.0, 4.0], [1.0, 1.0]], dtype=np.float32)
    out = np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    inp = np.array([[0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    errs = compute_rel_errors(recomputed, out, inp)
    assert errs.dtype == np.float64
    assert errs.tolist() == [2.5, 0.0]  # |(3,4)| / |(0,-2)|; 0 / floor
    assert compute_rel_errors(out[1:] + 1, out[1:], inp[1:])[0] == pytest.approx(np.sqrt(2) / 1e-12)


# --- [VERIFY.1] the commitment against the request


def test_honest_commitment_has_no_problem(net, run, member):
    assert net.verifiers[member].check_commitment(run.request, run.signed) is None


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"network_id": "elsewhere"}, "another network"),
        ({"request_digest": Digest(b"\x00" * 32)}, "another request"),
        ({"model_id": ModelId(b"\x00" * 32)}, "another model"),
        ({"tokens": (1, *range(101, 128))}, "prompt differs"),
        ({"tokens": (*range(100, 120), *range(9))}, "max_new_tokens"),
        ({"num_layers": 3, "num_leaves": 16}, "number of layers"),
        ({"hidden_size": 32}, "hidden size"),
        ({"dtype": "bfloat16"}, "not checkable"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_invalid_commitment_problems_are_named(net, run, member, changes, why):
    other = resign_commitment(run.signed, net.executor_key, **changes)
    problem = net.verifiers[member].check_commitment(run.request, other)
    assert problem is not None and why in problem


def test_invalid_unsigned_commitment_gets_no_vote(net, run, member):
    c = dataclasses.replace(run.signed.commitment, hidden_size=32)
    with pytest.raises(BadSignature):
        net.verifiers[member].check_commitment(
            run.request, dataclasses.replace(run.signed, commitment=c)
        )


def test_invalid_request_for_another_network_or_model(net, run, member):
    v = net.verifiers[member]
    with pytest.raises(Malformed):
        v.check_commitment(dataclasses.replace(run.request, network_id="elsewhere"), run.signed)
    with pytest.raises(Reject):
        v.check_commitment(
            dataclasses.replace(run.request, model_id=ModelId(b"\x01" * 32)), run.signed
        )


# --- [VERIFY.2] openings


def vote_on(net: Network, run: Run, member: bytes, response: OpeningResponse, verifier=None):
    verifier = verifier or net.verifiers[member]
    vote = verifier.on_openings(run.request, run.signed, run.tickets[member], response)
    check_vote(vote, run.request, run.signed, run.tally.committee)  # every verdict is a valid vote
    return vote


def resign_response(net: Network, response: OpeningResponse, **changes) -> OpeningResponse:
    unsigned = dataclasses.replace(response, **changes)
    return dataclasses.replace(unsigned, signature=net.executor_key.sign(unsigned.signing_root()))


def test_honest_openings_get_accept(net, run, member):
    vote = vote_on(net, run, member, run.responses[member])
    assert vote.verdict is Verdict.ACCEPT
    assert vote.reason == ""
    assert [c.layer for c in vote.layer_checks] == sorted(c.layer for c in vote.layer_checks)


def test_measurement_equal_to_threshold_passes(net, run, member):
    # Honest full-prefix re-execution measures exactly 0 here; thresholds of 0 still ACCEPT.
    strict = VerifierCore(
        net.key_of(member), net.backend, net.lm.model_id, 4, 64, NETWORK_ID, Thresholds(0.0, 0.0)
    )
    vote = vote_on(net, run, member, run.responses[member], strict)
    assert vote.max_error == 0.0 and vote.embedding_max_error == 0.0
    assert vote.verdict is Verdict.ACCEPT


@pytest.mark.parametrize(
    "changes",
    [
        {"commitment_digest": Digest(b"\x00" * 32)},
        {"network_id": "elsewhere"},
        {"signature": Signature(b"\x00" * 64)},
        {"signature": Signature(b"")},
    ],
    ids=["commitment", "network", "bad-signature", "no-signature"],
)
def test_unattributable_response_gets_unavailable(net, run, member, changes):
    # [VERIFY.5]: nothing here proves the executor wrong.
    vote = vote_on(net, run, member, dataclasses.replace(run.responses[member], **changes))
    assert vote.verdict is Verdict.UNAVAILABLE
    assert vote.layer_checks == () and vote.embedding_max_error == 0.0


def test_unsigned_edit_of_a_leaf_gets_unavailable(net, run, member):
    response = run.responses[member]
    o = response.openings[0]
    edited = (dataclasses.replace(o, leaf=o.leaf[:-1] + b"\x00"), *response.openings[1:])
    vote = vote_on(net, run, member, dataclasses.replace(response, openings=edited))
    assert vote.verdict is Verdict.UNAVAILABLE


def _with_flipped_proof_step(response: OpeningResponse) -> OpeningResponse:
    o = response.openings[-1]
    step = o.proof.steps[-1]
    bad_step = dataclasses.replace(
        step, digest=Digest(bytes([step.digest[0] ^ 1]) + step.digest[1:])
    )
    proof = dataclasses.replace(o.proof, steps=(*o.proof.steps[:-1], bad_step))
    return dataclasses.replace(
        response, openings=(*response.openings[:-1], dataclasses.replace(o, proof=proof))
    )


def test_unsigned_edit_of_a_proof_gets_unavailable(net, run, member):
    # [OPEN.1]: proofs are signed, so a proof altered in transit is not pinned on the executor.
    vote = vote_on(net, run, member, _with_flipped_proof_step(run.responses[member]))
    assert vote.verdict is Verdict.UNAVAILABLE


def test_invalid_signed_bad_proof_gets_reject(net, run, member):
    response = _with_flipped_proof_step(run.responses[member])
    vote = vote_on(net, run, member, resign_response(net, response))
    assert vote.verdict is Verdict.REJECT
    assert "inclusion proof" in vote.reason


@pytest.mark.parametrize("how", ["missing", "extra"])
def test_invalid_signed_response_with_other_tiles(net, run, member, how):
    response = run.responses[member]
    if how == "missing":
        openings = response.openings[:-1]
    else:
        c = run.signed.commitment
        used = {o.tile for o in response.openings}
        extra = next(
            TileRef(b, ch) for b in range(5) for ch in range(4) if TileRef(b, ch) not in used
        )
        extra_opening = net.executor.on_open(run.signed.digest, (extra,)).openings[0]
        assert c.num_chunks == 4
        openings = (*response.openings, extra_opening)
    vote = vote_on(net, run, member, resign_response(net, response, openings=openings))
    assert vote.verdict is Verdict.REJECT
    assert "exactly the challenged tiles" in vote.reason
    assert vote.layer_checks == () and vote.embedding_max_error == 0.0


def test_invalid_signed_response_with_a_leaf_of_another_tile(net, run, member):
    response = run.responses[member]
    a, b = response.openings[0], response.openings[1]
    swapped = (TileOpening(a.tile, b.leaf, b.proof), *response.openings[1:])
    vote = vote_on(net, run, member, resign_response(net, response, openings=swapped))
    assert vote.verdict is Verdict.REJECT
    assert "wrong leaf index" in vote.reason


def test_invalid_signed_response_with_a_leaf_outside_the_tree(net, run, member):
    response = run.responses[member]
    o = response.openings[-1]
    forged = (*response.openings[:-1], dataclasses.replace(o, leaf=o.leaf[:-4] + b"\x00" * 4))
    vote = vote_on(net, run, member, resign_response(net, response, openings=forged))
    assert vote.verdict is Verdict.REJECT
    assert "inclusion proof" in vote.reason


class EmbeddingNudger(ExecutorCore):
    """Commits boundary 0 scaled by 1 + 1e-3: far below any changed token, far above noise."""

    def compute_states(self, tokens):
        states = super().compute_states(tokens).copy()
        states[0] *= 1.001
        return states


def test_invalid_embedding_nudge_gets_reject(net):
    ex = EmbeddingNudger(make_key("nudger"), net.backend, net.lm.model_id, NETWORK_ID, 8)
    other = net.run(net.request(request_id=b"\x56" * 16), ex)
    for vote in other.votes:
        assert vote.verdict is Verdict.REJECT
        assert "boundary 0" in vote.reason
        assert vote.embedding_max_error == pytest.approx(1e-3, rel=1e-2)


def test_invalid_scaled_states_reject_naming_the_worst_layer(net, run, member):
    # Inflate every committed state past boundary 0 by 1 %: each sampled layer's output changes.
    class Scaled(ExecutorCore):
        def compute_states(self, tokens):
            states = super().compute_states(tokens).copy()
            states[1:] *= 1.01
            return states

    ex = Scaled(make_key("scaled"), net.backend, net.lm.model_id, NETWORK_ID, 8)
    other = net.run(net.request(request_id=b"\x55" * 16), ex)
    for vote in other.votes:
        assert vote.verdict is Verdict.REJECT
        worst = max(vote.layer_checks, key=lambda c: c.max_rel_error)
        assert f"layer {worst.layer} " in vote.reason
        assert worst.max_rel_error > 1e-4
        lo, hi = 0, len(other.signed.commitment.tokens)
        assert all(lo <= c.worst_position < hi for c in vote.layer_checks)

"""The verifier's protocol core on the tiny model. [VERIFY.1]-[VERIFY.6]"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bft.challenge import Challenge, compute_commitment_challenge
from bft.errors import BadSignature, Ignore, Malformed, Reject, Unavailable
from bft.measure import (
    Band,
    Thresholds,
    Zone,
    compute_length_violation,
    compute_rel_errors,
    open_tiles,
)
from bft.messages import (
    EvidenceCheck,
    OpeningResponse,
    SamplingParams,
    TileOpening,
    TileRef,
    Verdict,
    Vote,
    compute_challenge_message,
)
from bft.quorum import check_vote
from bft.types import Digest, ModelId, Signature
from bft.verifier import DECISIONS, Session, Step, VerifierCore
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from merkle.tiles import HEADER_SIZE
from merkle.tree import ActivationTree
from proto import convert
from simnet.executors import make_byzantine_executor
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    PROMPT,
    SAMPLING,
    Execution,
    Network,
    Run,
    find_execution,
    make_key,
    resign_commitment,
    resign_response,
    resign_vote,
    search_bound,
    verify,
)


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
    "changes", [{"network_id": "elsewhere"}, {"request_digest": Digest(b"\x00" * 32)}]
)
def test_invalid_commitment_not_bound_to_the_request_gets_no_vote(net, run, member, changes):
    # Anyone can forward an old signed commitment: no evidence against the executor. [VERIFY.1]
    other = resign_commitment(run.signed, net.executor_key, **changes)
    with pytest.raises(Ignore, match="not bound to this request"):
        net.verifiers[member].start(run.request, other)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"model_id": ModelId(b"\x00" * 32)}, "another model"),
        ({"tokens": (1, *range(101, 128))}, "prompt differs"),
        ({"num_layers": 3, "num_leaves": 16}, "number of layers"),
        ({"hidden_size": 32}, "hidden size"),
        ({"dtype": "bfloat16"}, "profile torch-cpu-bfloat16 is not admitted"),
        ({"backend": "torch-cuda"}, "profile torch-cuda-float32 is not admitted"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_invalid_commitment_problems_are_named(net, run, member, changes, why):
    other = resign_commitment(run.signed, net.executor_key, **changes)
    verifier = net.verifiers[member]
    problem = verifier.check_commitment(run.request, other)
    assert problem is not None
    assert problem[0] is EvidenceCheck.COMMITMENT and why in problem[1]
    # start() turns the problem into a REJECT without openings, with the evidence for it.
    vote = verifier.start(run.request, other)
    assert isinstance(vote, Vote) and vote.verdict is Verdict.REJECT
    assert why in vote.reason
    assert vote.layer_checks == () and vote.sampler_checks == ()
    ev = vote.evidence
    assert ev is not None and ev.check is EvidenceCheck.COMMITMENT
    assert (ev.request, ev.signed, ev.response, ev.detail) == (run.request, other, None, problem[1])
    check_vote(vote, run.request, other, run.tally.committee)


def test_start_returns_the_session_of_the_signed_challenge(net, run, member):
    verifier = net.verifiers[member]
    session = verifier.start(run.request, run.signed)
    assert isinstance(session, Session)
    assert (session.request, session.signed, session.escalated) == (run.request, run.signed, False)
    message = compute_challenge_message(NETWORK_ID, run.signed.digest)
    assert session.challenge_signature == net.key_of(member).sign(message)
    want = compute_commitment_challenge(
        session.challenge_signature, run.signed.commitment, run.request
    )
    assert session.challenge == want
    assert session == run.sessions[member]


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


# --- [VERIFY.8] the length rule


EOS = 2  # the tiny model's end-of-sequence id


@pytest.mark.parametrize(
    ("output", "sampling", "why"),
    [
        ((5, 6, 7), SamplingParams(max_new_tokens=3), None),
        ((5, EOS), SamplingParams(max_new_tokens=3), None),
        ((EOS,), SamplingParams(max_new_tokens=3), None),
        ((5, 6, EOS), SamplingParams(max_new_tokens=3), None),
        ((5, 6), SamplingParams(max_new_tokens=2, stop_at_eos=False), None),
        ((5, EOS, 6), SamplingParams(max_new_tokens=3, stop_at_eos=False), None),
        ((), SamplingParams(max_new_tokens=3), "no output"),
        ((5, 6, 7, 8), SamplingParams(max_new_tokens=3), "more output tokens"),
        ((5, EOS, 6), SamplingParams(max_new_tokens=3), "past an end-of-sequence"),
        ((EOS, EOS), SamplingParams(max_new_tokens=3), "past an end-of-sequence"),
        ((5, 6), SamplingParams(max_new_tokens=3), "stopped early"),
        ((5, EOS), SamplingParams(max_new_tokens=3, stop_at_eos=False), "stop_at_eos off"),
    ],
    ids=repr,
)
def test_length_rule(run, output, sampling, why):
    request = dataclasses.replace(run.request, sampling=sampling)
    got = compute_length_violation(request, output, frozenset({EOS}))
    assert got is None if why is None else why in got


class EditedBackend(TorchBackend):
    """Generates with the protocol's sampler, then edits the output (proved honestly)."""

    def __init__(self, model, edit) -> None:
        super().__init__(model)
        self.edit = edit

    def generate(self, prompt, params, seed):
        return self.edit(super().generate(prompt, params, seed))


def _length_liar(net: Network, how: str) -> ExecutorCore:
    model = net.lm.model
    backend = {
        "eos-in-the-middle": lambda: EditedBackend(model, lambda out: [*out[:3], EOS, *out[4:]]),
        "early-stop-without-eos": lambda: EditedBackend(model, lambda out: out[:5]),
    }[how]()
    return ExecutorCore(make_key(f"length-{how}"), backend, net.lm.model_id, NETWORK_ID, 8)


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("eos-in-the-middle", "past an end-of-sequence token"),
        ("early-stop-without-eos", "stopped early without an end-of-sequence token"),
    ],
)
def test_invalid_length_gets_reject_with_length_evidence(net, how, why):
    ex = _length_liar(net, how)
    other = net.run(net.request(request_id=b"\x57" * 16), ex)
    other.signed.check()
    for vote in other.votes:
        assert vote.verdict is Verdict.REJECT
        assert why in vote.reason
        assert vote.evidence is not None and vote.evidence.check is EvidenceCheck.LENGTH
        assert vote.evidence.detail == vote.reason and vote.evidence.response is None
    assert other.responses == {}  # decided without openings


def test_invalid_too_long_output_gets_length_evidence(net, run, member):
    # One output token more than max_new_tokens breaks the length rule of [SAMPLE.4]
    # (compute_length_violation names it), so the evidence should say LENGTH.
    output = (*run.signed.commitment.output_tokens, 7)
    assert len(output) == SAMPLING.max_new_tokens + 1
    longer = resign_commitment(run.signed, net.executor_key, tokens=(*PROMPT, *output))
    assert "max_new_tokens" in compute_length_violation(run.request, output, frozenset({EOS}))
    vote = net.verifiers[member].start(run.request, longer)
    assert isinstance(vote, Vote) and vote.verdict is Verdict.REJECT
    assert "more output tokens than max_new_tokens" in vote.reason
    assert vote.evidence is not None
    assert vote.evidence.check is EvidenceCheck.LENGTH, vote.evidence.check


# --- [VERIFY.2] openings


def vote_on(net: Network, run: Run, member: bytes, response: OpeningResponse, verifier=None):
    verifier = verifier or net.verifiers[member]
    vote = verifier.on_openings(run.sessions[member], response)
    assert isinstance(vote, Vote)
    check_vote(vote, run.request, run.signed, run.tally.committee)  # every verdict is a valid vote
    assert (vote.evidence is not None) is (vote.verdict is Verdict.REJECT)
    return vote


def resign(net: Network, response: OpeningResponse, **changes) -> OpeningResponse:
    return resign_response(response, net.executor_key, **changes)


def test_honest_openings_get_accept(net, run, member):
    vote = vote_on(net, run, member, run.responses[member])
    assert vote.verdict is Verdict.ACCEPT
    assert vote.reason == "" and vote.evidence is None and not vote.escalated
    assert [c.layer for c in vote.layer_checks] == sorted(c.layer for c in vote.layer_checks)
    challenge = run.sessions[member].challenge
    assert tuple(c.position for c in vote.sampler_checks) == challenge.positions
    assert vote.max_margin == 0.0  # the committed tokens are exactly the sampler's choices


def test_required_tiles_hold_the_last_boundary_before_each_sampled_position(run, member):
    challenge = run.sessions[member].challenge
    tiles = set(challenge.required_tiles())
    assert {o.tile for o in run.responses[member].openings} == tiles
    for p in challenge.positions:
        assert TileRef(4, (p - 1) // CHUNK_SIZE) in tiles


def test_measurement_equal_to_threshold_passes(net, run, member):
    # Honest full-prefix re-execution measures exactly 0 here; thresholds of 0 still ACCEPT.
    zero = Band(0.0, 0.0)
    strict = VerifierCore(
        net.key_of(member),
        net.backend,
        net.lm.model_id,
        4,
        64,
        NETWORK_ID,
        Thresholds(layer=zero, embedding=zero, sampler=zero),
    )
    vote = vote_on(net, run, member, run.responses[member], strict)
    assert vote.max_error == 0.0 and vote.embedding_max_error == 0.0 and vote.max_margin == 0.0
    assert vote.verdict is Verdict.ACCEPT


def test_band_classifies_with_inclusive_edges():
    band = Band(1e-5, 1e-4)
    assert [band.classify(x) for x in (0.0, 1e-5, 2e-5, 1e-4, 1.1e-4, float("inf"))] == [
        Zone.ACCEPT,
        Zone.ACCEPT,
        Zone.GREY,
        Zone.GREY,
        Zone.REJECT,
        Zone.REJECT,
    ]
    assert band.classify(float("nan")) is Zone.REJECT  # fail closed


MEASURED = (
    EvidenceCheck.LAYER,
    EvidenceCheck.EMBEDDING,
    EvidenceCheck.SAMPLER,
    EvidenceCheck.SEQUENCE,
)


def test_each_measured_check_has_its_own_band():
    t = Thresholds(Band(1, 2), Band(3, 4), Band(5, 6), Band(7, 8))
    assert [t.band(c) for c in MEASURED] == [t.layer, t.embedding, t.sampler, t.sequence]
    with pytest.raises(KeyError):
        t.band(EvidenceCheck.OPENING)


@pytest.mark.parametrize("escalated", [False, True])
@pytest.mark.parametrize("zone", list(Zone))
def test_decision_table(zone, escalated):
    # [VERIFY.4]: any reject finding rejects; [VERIFY.7]: grey escalates once and never rejects.
    step = DECISIONS[zone, escalated]
    if zone is Zone.REJECT:
        assert step is Step.REJECT
    elif zone is Zone.GREY and not escalated:
        assert step is Step.ESCALATE
    else:
        assert step is Step.ACCEPT
    assert len(DECISIONS) == 2 * len(Zone)


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
    assert vote.sampler_checks == () and vote.evidence is None


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


def assert_opening_reject(vote: Vote, response: OpeningResponse, why: str) -> None:
    assert vote.verdict is Verdict.REJECT
    assert why in vote.reason
    assert vote.layer_checks == () and vote.embedding_max_error == 0.0
    ev = vote.evidence
    assert ev is not None and ev.check is EvidenceCheck.OPENING
    assert ev.response == response and why in ev.detail


def test_invalid_signed_bad_proof_gets_reject(net, run, member):
    response = resign(net, _with_flipped_proof_step(run.responses[member]))
    vote = vote_on(net, run, member, response)
    assert_opening_reject(vote, response, "inclusion proof")


@pytest.mark.parametrize("which", [0, -1])
def test_signed_response_missing_a_challenged_tile_gets_unavailable(net, run, member, which):
    # Withholding part of the challenge is a liveness fault: nothing opened is wrong. [VERIFY.5]
    response = run.responses[member]
    openings = list(response.openings)
    del openings[which]
    vote = vote_on(net, run, member, resign(net, response, openings=tuple(openings)))
    assert vote.verdict is Verdict.UNAVAILABLE
    assert "not served" in vote.reason
    assert vote.layer_checks == () and vote.sampler_checks == ()


def _unused_tiles(challenge: Challenge) -> list[TileRef]:
    assert (challenge.num_layers, challenge.num_chunks) == (4, 4)
    used = set(challenge.required_tiles())
    return [TileRef(b, ch) for b in range(5) for ch in range(4) if TileRef(b, ch) not in used]


@pytest.fixture(scope="module")
def spare(net) -> tuple[Run, bytes]:
    """Return an honest run and a member whose challenge leaves some tile unopened.

    Layers {2, 4} open every boundary whole, the only such draw of k = 2 of 4 (probability
    1/6); a request where all four members draw it has probability 6**-4: searched.
    """
    assert net.policy.layers_per_verifier == 2
    found = find_execution(
        net,
        net.executor,
        "unused-tile",
        1 - 6**-4,
        lambda f: any(_unused_tiles(ch) for ch in f.challenges.values()),
    )
    run = net.run(found.request)
    return run, next(pk for pk, ch in found.challenges.items() if _unused_tiles(ch))


def _unused_tile(run: Run, member: bytes) -> TileRef:
    unused = _unused_tiles(run.sessions[member].challenge)
    used = {o.tile for o in run.responses[member].openings}
    assert unused and used.isdisjoint(unused)
    return unused[0]


def test_signed_response_with_an_extra_valid_tile_is_judged_on_the_challenge(net, spare):
    run, member = spare
    response = run.responses[member]
    extra = net.executor.on_open(run.signed.digest, (_unused_tile(run, member),)).openings[0]
    vote = vote_on(net, run, member, resign(net, response, openings=(*response.openings, extra)))
    honest = vote_on(net, run, member, response)
    assert vote.verdict is Verdict.ACCEPT
    assert (vote.layer_checks, vote.sampler_checks) == (honest.layer_checks, honest.sampler_checks)


def test_invalid_signed_response_with_an_extra_tile_that_does_not_open(net, spare):
    # Extra tiles are checked too: a signed opening that does not open the root is provable.
    run, member = spare
    response = run.responses[member]
    extra = net.executor.on_open(run.signed.digest, (_unused_tile(run, member),)).openings[0]
    bad = dataclasses.replace(extra, leaf=extra.leaf[:-1] + bytes([extra.leaf[-1] ^ 1]))
    forged = resign(net, response, openings=(*response.openings, bad))
    assert_opening_reject(vote_on(net, run, member, forged), forged, "inclusion proof")


def test_invalid_signed_response_with_a_tile_twice(net, run, member):
    response = run.responses[member]
    forged = resign(net, response, openings=(*response.openings, response.openings[0]))
    assert_opening_reject(vote_on(net, run, member, forged), forged, "twice")


def test_invalid_signed_response_with_a_leaf_of_another_tile(net, run, member):
    response = run.responses[member]
    a, b = response.openings[0], response.openings[1]
    swapped = (TileOpening(a.tile, b.leaf, b.proof), *response.openings[1:])
    forged = resign(net, response, openings=swapped)
    assert_opening_reject(vote_on(net, run, member, forged), forged, "wrong leaf index")


def test_invalid_signed_response_with_a_leaf_outside_the_tree(net, run, member):
    response = run.responses[member]
    o = response.openings[-1]
    leaf = dataclasses.replace(o, leaf=o.leaf[:-4] + b"\x00" * 4)
    forged = resign(net, response, openings=(*response.openings[:-1], leaf))
    assert_opening_reject(vote_on(net, run, member, forged), forged, "inclusion proof")


def test_invalid_openings_of_a_second_signed_root_get_reject_as_equivocation(net, run, member):
    # The executor serves openings against another commitment it signed for this request.
    other = resign_commitment(run.signed, net.executor_key, merkle_root=Digest(b"\x09" * 32))
    response = resign(net, run.responses[member], commitment_digest=other.digest, commitment=other)
    vote = vote_on(net, run, member, response)
    assert vote.verdict is Verdict.REJECT
    ev = vote.evidence
    assert ev is not None and ev.check is EvidenceCheck.EQUIVOCATION
    assert (ev.signed, ev.other) == (run.signed, other)


def test_invalid_tile_under_the_signed_root_is_a_reject(net, run):
    # merkle raises its own BadTile; at the core's boundary a tile whose hash the executor
    # signed into its root is provable: Reject, as [TILE.3] and [OPEN.3] say.
    c = run.signed.commitment
    every = tuple(TileRef(b, k) for b in range(c.num_layers + 1) for k in range(c.num_chunks))
    leaves = [o.leaf for o in net.executor.on_open(run.signed.digest, every).openings]
    leaves[0] = leaves[0][: HEADER_SIZE - 1]
    tree = ActivationTree(leaves)
    signed = resign_commitment(run.signed, net.executor_key, merkle_root=Digest(tree.root))
    opening = TileOpening(TileRef(0, 0), leaves[0], tree.prove(0))
    response = OpeningResponse(NETWORK_ID, signed.digest, (opening,), Signature(b""))
    with pytest.raises(Reject, match="shorter than its header"):
        open_tiles(signed, response)


def test_invalid_proof_at_the_core_is_malformed_or_reject(run, member):
    # merkle's MalformedProof is Malformed at the core, its BadProof a Reject. [MERKLE.3]
    response = run.responses[member]
    o = response.openings[0]
    shapeless = dataclasses.replace(
        o.proof, steps=(dataclasses.replace(o.proof.steps[0], bit=2), *o.proof.steps[1:])
    )
    bad = dataclasses.replace(response, openings=(dataclasses.replace(o, proof=shapeless),))
    with pytest.raises(Malformed, match="bad bit"):
        open_tiles(run.signed, bad)
    with pytest.raises(Reject, match="inclusion proof"):
        open_tiles(run.signed, _with_flipped_proof_step(response))


@pytest.mark.parametrize("how", ["no-commitment", "unsigned", "other-request", "other-executor"])
def test_openings_of_another_root_without_a_provable_second_commitment_get_unavailable(
    net, run, member, how
):
    stranger = make_key("stranger")
    other = {
        "no-commitment": None,
        "unsigned": dataclasses.replace(
            run.signed,
            commitment=dataclasses.replace(run.signed.commitment, merkle_root=Digest(b"\x09" * 32)),
        ),
        "other-request": resign_commitment(
            run.signed, net.executor_key, request_digest=Digest(b"\x01" * 32)
        ),
        "other-executor": resign_commitment(run.signed, stranger, executor_key=stranger.public_key),
    }[how]
    digest = other.digest if other is not None else Digest(b"\x07" * 32)
    response = resign(net, run.responses[member], commitment_digest=digest, commitment=other)
    vote = vote_on(net, run, member, response)
    assert vote.verdict is Verdict.UNAVAILABLE


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
        ev = vote.evidence
        assert ev is not None and ev.check is EvidenceCheck.EMBEDDING
        assert ev.measured == vote.embedding_max_error
        assert ev.response == other.responses[vote.verifier_key]


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
        ev = vote.evidence
        assert ev is not None and ev.check is EvidenceCheck.LAYER
        assert (ev.layer, ev.position, ev.measured) == (
            worst.layer,
            worst.worst_position,
            worst.max_rel_error,
        )


# --- [VERIFY.6] the sampler check


def test_invalid_token_that_is_not_the_samplers_choice_is_caught_where_sampled(net):
    # The last output token is changed and every activation recomputed for it: only the sampler
    # check at that position can see it.
    ex = make_byzantine_executor(
        "smart-tamper-tokens", make_key("tamperer"), net.lm.model, net.lm.model_id, NETWORK_ID, 8
    )

    def both_cases(found: Execution) -> bool:
        last = len(found.signed.commitment.tokens) - 1
        return {last in ch.positions for ch in found.challenges.values()} == {True, False}

    # A request whose committee holds both cases: each member samples m = 4 of the 8 output
    # positions, so the last one with probability 1/2, independently; all four agree with
    # probability 2 / 2**4.
    assert (SAMPLING.max_new_tokens, net.policy.positions_per_verifier) == (8, 4)
    found = find_execution(net, ex, "smart-tamper", 1 - 2 / 2**4, both_cases)
    other = net.run(found.request, ex)
    last = len(other.signed.commitment.tokens) - 1
    seen = set()
    for vote in other.votes:
        assert vote.embedding_max_error == 0.0 and vote.max_error == 0.0
        exposed = last in other.sessions[vote.verifier_key].challenge.positions
        seen.add(exposed)
        if not exposed:
            assert vote.verdict is Verdict.ACCEPT
            continue
        assert vote.verdict is Verdict.REJECT
        ev = vote.evidence
        assert ev is not None and ev.check is EvidenceCheck.SAMPLER
        assert ev.position == last and ev.measured == vote.max_margin > 5e-2
        assert f"position {last}" in vote.reason
    assert seen == {True, False}


# --- [VERIFY.7] the grey band: one escalation, never a REJECT from grey alone


class LayerNudger(ExecutorCore):
    """Scales the update of layer ``layer`` by ``1 + rel`` (boundary ``layer`` only)."""

    def __init__(self, *args, layer: int, rel: float, lie_at: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.layer, self.rel, self.lie_at = layer, rel, lie_at

    def compute_states(self, tokens):
        states = super().compute_states(tokens).copy()
        x, y = states[self.layer - 1], states[self.layer]
        states[self.layer] = x + (1 + self.rel) * (y - x)
        if self.lie_at is not None:  # and a plain lie at another boundary
            states[self.lie_at] += 0.05
        return states


def _nudger(net: Network, lie_at: int | None = None) -> LayerNudger:
    return LayerNudger(
        make_key(f"nudger-{lie_at}"),
        net.backend,
        net.lm.model_id,
        NETWORK_ID,
        8,
        layer=4,
        rel=3e-5,
        lie_at=lie_at,
    )


@pytest.fixture(scope="module")
def grey(net) -> Thresholds:
    """Thresholds whose layer band has the nudged layer's measured error in its middle."""
    ex = _nudger(net)
    request = net.request(request_id=b"\x70" * 16, layers_per_verifier=4)
    signed = ex.on_execute(request)
    vote = verify(net.verifiers[net.validators[0]], ex, request, signed).vote
    errors = {c.layer: c.max_rel_error for c in vote.layer_checks}
    assert errors[4] > 0 and all(errors[b] == 0.0 for b in (1, 2, 3)), errors
    return Thresholds(layer=Band(errors[4] / 3, errors[4] * 3))


def grey_verifier(net: Network, key, thresholds: Thresholds) -> VerifierCore:
    return VerifierCore(key, net.backend, net.lm.model_id, 4, 64, NETWORK_ID, thresholds)


def assert_escalated(first: Session, second: Session, request) -> None:
    assert second.escalated and not first.escalated
    assert second.challenge_signature == first.challenge_signature
    base, more = first.challenge, second.challenge
    assert {lc.layer for lc in base.layers} < {lc.layer for lc in more.layers}
    assert len(more.layers) == min(2 * request.layers_per_verifier, 4)
    assert set(base.positions) <= set(more.positions)
    outputs = len(first.signed.commitment.output_tokens)
    assert len(more.positions) == min(2 * request.positions_per_verifier, outputs)
    assert set(base.required_tiles()) <= set(more.required_tiles())


def test_grey_layer_escalates_once_then_accepts(net, grey):
    ex = _nudger(net)
    request = net.request(request_id=b"\x71" * 16, positions_per_verifier=2)
    signed = ex.on_execute(request)
    seen: set[bool] = set()
    # Each key samples layer 4 (k = 2 of 4) with probability 1/2, independently: the first n
    # keys all agree with probability 2 / 2**n, below 1e-9 for n = 32.
    for i in range(32):
        if seen == {True, False}:
            break
        verifier = grey_verifier(net, make_key(f"grey-{i}"), grey)
        session = verifier.start(request, signed)
        assert isinstance(session, Session)
        response = ex.on_open(signed.digest, session.challenge.required_tiles())
        result = verifier.on_openings(session, response)
        sampled = 4 in {lc.layer for lc in session.challenge.layers}
        seen.add(sampled)
        if not sampled:  # nothing grey: a plain ACCEPT
            assert isinstance(result, Vote) and result.verdict is Verdict.ACCEPT
            assert not result.escalated
            continue
        assert isinstance(result, Session)
        assert_escalated(session, result, request)
        response = ex.on_open(signed.digest, result.challenge.required_tiles())
        vote = verifier.on_openings(result, response)
        assert isinstance(vote, Vote)  # grey again on the escalated pass: no second escalation
        assert vote.verdict is Verdict.ACCEPT and vote.escalated and vote.evidence is None
        assert [c.layer for c in vote.layer_checks] == [1, 2, 3, 4]
        assert tuple(c.position for c in vote.sampler_checks) == result.challenge.positions
        check_vote(vote, request, signed, (verifier.key.public_key,))
    assert seen == {True, False}


def test_grey_embedding_escalates_every_verifier_once(net, run, member):
    # Boundary 0 is always checked: with its honest error (0) in the grey band, every verifier
    # escalates, and the escalated pass ACCEPTs.
    thresholds = Thresholds(embedding=Band(-1.0, 1.0))
    verifier = grey_verifier(net, net.key_of(member), thresholds)
    v = verify(verifier, net.executor, run.request, run.signed)
    assert len(v.responses) == 2
    assert_escalated(run.sessions[member], v.session, run.request)
    assert v.vote.verdict is Verdict.ACCEPT and v.vote.escalated
    check_vote(v.vote, run.request, run.signed, run.tally.committee)


def test_invalid_lie_found_by_the_escalated_challenge_gets_reject(net, grey):
    # Layer 4 is grey; boundary 2 is a plain lie, seen by layers 2 and 3. A verifier whose base
    # challenge is layers {1, 4} sees only grey, escalates to every layer, and finds the lie.
    ex = _nudger(net, lie_at=2)
    request = net.request(request_id=b"\x72" * 16)
    signed = ex.on_execute(request)
    # A key draws layers {1, 4} (2 of 4) with probability 1/6: none of n keys does with
    # probability (5/6)**n, below 1e-9 for n = search_bound(1/6) = 114.
    bound = search_bound(1 / 6)
    for i in range(bound):
        verifier = grey_verifier(net, make_key(f"escalate-{i}"), grey)
        session = verifier.start(request, signed)
        if [lc.layer for lc in session.challenge.layers] == [1, 4]:
            break
    else:
        raise AssertionError(f"no key with base challenge {{1, 4}} among {bound}")
    v = verify(verifier, ex, request, signed)
    assert len(v.responses) == 2 and v.session.escalated
    vote = v.vote
    assert vote.verdict is Verdict.REJECT and vote.escalated
    assert vote.evidence is not None and vote.evidence.check is EvidenceCheck.LAYER
    assert vote.evidence.layer in (2, 3)
    assert vote.evidence.response == v.responses[-1]
    check_vote(vote, request, signed, (verifier.key.public_key,))


def test_run_drives_a_session_to_a_vote(net, run):
    member = run.tally.committee[0]

    def fetch(session):
        return net.executor.on_open(run.signed.digest, session.challenge.required_tiles())

    def refuse(session):
        raise Unavailable("down")

    # Fresh cores: run() remembers its vote [VOTE.3], so the shared ones would answer from memory.
    assert fresh_core(net, member).run(run.request, run.signed, fetch).verdict is Verdict.ACCEPT
    vote = fresh_core(net, member).run(run.request, run.signed, refuse)
    assert vote.verdict is Verdict.UNAVAILABLE and "openings not served: down" in vote.reason


def fresh_core(net: Network, member: bytes) -> VerifierCore:
    """Return a new core with ``member``'s key and the shared model (nothing remembered)."""
    return VerifierCore(
        net.key_of(member),
        net.backend,
        net.lm.model_id,
        4,
        64,
        NETWORK_ID,
        net.verifiers[member].thresholds,
    )


# --- one vote per request and commitment [VOTE.3]


def test_asked_twice_a_verifier_returns_the_same_signed_vote(net, run, member):
    core = fresh_core(net, member)
    calls = []

    def fetch(session):
        calls.append(session)
        return net.executor.on_open(run.signed.digest, session.challenge.required_tiles())

    first = core.run(run.request, run.signed, fetch)
    again = core.run(run.request, run.signed, fetch)
    assert first.verdict is Verdict.ACCEPT
    assert again is first and len(calls) == 1  # answered from memory, nothing re-fetched
    assert convert.vote_to_pb(again).SerializeToString() == (
        convert.vote_to_pb(first).SerializeToString()
    )
    assert core.recall(run.request, run.signed) is first


def test_remembered_vote_stands_when_the_openings_change(net, run, member):
    # The executor serves bad openings (or none) the second time: the verifier does not look
    # again, so it cannot be made to sign a second, contradicting vote.
    core = fresh_core(net, member)
    liar = make_byzantine_executor(
        "bad-opening", net.executor_key, net.lm.model, net.lm.model_id, NETWORK_ID, CHUNK_SIZE
    )
    liar.on_execute(run.request)

    def honest(session):
        return net.executor.on_open(run.signed.digest, session.challenge.required_tiles())

    def lying(session):
        return liar.on_open(run.signed.digest, session.challenge.required_tiles())

    def refusing(session):
        raise Unavailable("gone")

    first = core.run(run.request, run.signed, honest)
    assert first.verdict is Verdict.ACCEPT
    for fetch in (lying, refusing):
        assert core.run(run.request, run.signed, fetch) is first
    # A core without the memory would now vote otherwise on the same commitment.
    assert fresh_core(net, member).run(run.request, run.signed, refusing).verdict is (
        Verdict.UNAVAILABLE
    )


def test_remember_keeps_the_first_vote_per_request_and_commitment(net, run, member):
    core = fresh_core(net, member)
    key = net.key_of(member)
    vote = run.votes[list(run.tally.committee).index(member)]
    other = resign_vote(vote, key, reason="second thoughts")
    assert core.recall(run.request, run.signed) is None
    assert core.remember(vote) is vote
    assert core.remember(other) is vote
    assert core.recall(run.request, run.signed) is vote
    # Another commitment is another question.
    elsewhere = resign_vote(vote, key, commitment_digest=Digest(b"\x05" * 32))
    assert core.remember(elsewhere) is elsewhere


def test_votes_on_different_requests_are_remembered_apart(net, run, member):
    core = fresh_core(net, member)
    request = net.request(request_id=b"\x7b" * 16)
    signed = net.executor.on_execute(request)

    def fetch_for(s):
        return lambda session: net.executor.on_open(s.digest, session.challenge.required_tiles())

    a = core.run(run.request, run.signed, fetch_for(run.signed))
    b = core.run(request, signed, fetch_for(signed))
    assert a.commitment_digest == run.signed.digest and b.commitment_digest == signed.digest
    assert core.recall(run.request, run.signed) is a and core.recall(request, signed) is b


# --- witnesses: work only a verifier that ran the layer knows [VOTE.4]


def test_honest_votes_carry_positive_witnesses(run):
    for vote in run.votes:
        assert vote.layer_checks
        assert all(lc.witness > 0 and np.isfinite(lc.witness) for lc in vote.layer_checks)


def test_witness_is_deterministic_and_differs_by_layer(net, run, member):
    # Two cores with one key and one model re-run the same layers: the same witnesses.
    vote = run.votes[list(run.tally.committee).index(member)]
    again = verify(fresh_core(net, member), net.executor, run.request, run.signed).vote
    assert [lc.witness for lc in again.layer_checks] == [lc.witness for lc in vote.layer_checks]
    witnesses = {lc.witness for v in run.votes for lc in v.layer_checks}
    layers = {(lc.layer, lc.chunks) for v in run.votes for lc in v.layer_checks}
    assert len(witnesses) == len(layers)

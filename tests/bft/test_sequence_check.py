"""The whole-sequence sketch check on the tiny model. [SKETCH.1], [SKETCH.3]-[SKETCH.5]

The executor commits a sketch of its last boundary; a verifier whose challenge draws the check
(probability q, always when escalated) recomputes the last boundary with one prefill and
compares. The check sees lies that no opened tile shows: ``bad-sketch`` commits honest tiles
with the sketch of boundary L - 1, and only this check can catch it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from bft.assembler import Outcome, get_final_outcome
from bft.errors import BadSignature, CannotJudge, Malformed
from bft.evidence import AuditModel, audit_evidence
from bft.measure import Band, Thresholds, compute_commitment_problem, measure_sequence
from bft.messages import Evidence, EvidenceCheck, Verdict, Vote
from bft.quorum import check_vote
from bft.verifier import VerifierCore
from executor.core import ExecutorCore
from merkle.sketch import (
    SKETCH_CHUNK,
    SketchCheck,
    compute_sketch,
    count_sketch_chunks,
    measure_sketch,
)
from simnet.executors import BadSketchExecutor, LayerTamperExecutor, make_byzantine_executor
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    SAMPLING,
    Execution,
    Network,
    Run,
    find_execution,
    make_key,
    resign_commitment,
    resign_vote,
    sees_layer_lie,
    verify,
)

ALWAYS = {"sequence_check_ppm": 1_000_000}
NEVER = {"sequence_check_ppm": 0}
EVERY_LAYER_AND_POSITION = {"layers_per_verifier": 4, "positions_per_verifier": 8}
LONG_PROMPT = tuple(range(100, 140))  # 40 + 8 tokens: two sketch chunks


@pytest.fixture(scope="module")
def auditor(net) -> AuditModel:
    return AuditModel(net.backend, net.lm.model_id, 4, 64)


@pytest.fixture(scope="module")
def bad_sketch(net) -> ExecutorCore:
    ex = make_byzantine_executor(
        "bad-sketch", make_key("sketch-liar"), net.lm.model, net.lm.model_id, NETWORK_ID, 8
    )
    assert isinstance(ex, BadSketchExecutor)
    return ex


@pytest.fixture(scope="module")
def checked(net) -> Run:
    """Return an honest run whose every verifier draws the sketch check (q = 1)."""
    return net.run(net.request(request_id=b"\x80" * 16, **ALWAYS))


@pytest.fixture(scope="module")
def caught(net, bad_sketch) -> Run:
    """Return bad-sketch's run with q = 1."""
    return net.run(net.request(request_id=b"\x81" * 16, **ALWAYS), bad_sketch)


def test_default_band_of_the_sketch_check():
    assert Thresholds().sequence == Band(0.05, 0.5)


# --- [SKETCH.1] the commitment holds the sketch of the last boundary


def test_commitment_holds_the_sketch_of_the_last_boundary(net, checked):
    c = checked.signed.commitment
    tokens = list(c.tokens)
    assert len(c.sketch) == count_sketch_chunks(len(tokens)) == 1  # 28 tokens
    states = net.backend.prove(tokens)
    assert c.sketch == compute_sketch(states[-1])
    assert c.sketch != compute_sketch(states[-2])
    # The verifier's own prefill gives the same last boundary, so the same sketch.
    assert c.sketch == compute_sketch(net.backend.final_states(tokens))


def test_sketch_is_signed(net, checked):
    signed = checked.signed
    other = dataclasses.replace(
        signed, commitment=dataclasses.replace(signed.commitment, sketch=(b"\x01\x00",))
    )
    other.commitment.validate()  # well-formed, but not what the executor signed
    assert other.commitment.signing_root() != signed.commitment.signing_root()
    with pytest.raises(BadSignature):
        other.check()


def test_bad_sketch_commits_honest_tiles_and_the_sketch_of_boundary_l_minus_1(
    net, bad_sketch, caught
):
    honest = net.executor.on_execute(caught.request).commitment
    c = caught.signed.commitment
    assert (c.tokens, c.merkle_root) == (honest.tokens, honest.merkle_root)
    assert c.sketch != honest.sketch
    assert c.sketch == compute_sketch(net.backend.prove(list(c.tokens))[-2])


# --- [SKETCH.4] the check and the vote


def test_honest_executor_passes_the_sketch_check(net, checked):
    accept_max = Thresholds().sequence.accept_max
    assert [v.verdict for v in checked.votes] == [Verdict.ACCEPT] * 4
    assert get_final_outcome(checked.tally) is Outcome.CERTIFIED
    for vote in checked.votes:
        assert checked.sessions[vote.verifier_key].challenge.sequence_check
        assert vote.sequence_check is not None
        assert 0.0 <= vote.sequence_check.mismatch <= accept_max
        assert vote.sequence_check == SketchCheck(0, 0.0)  # the same prefill: bit-exact
        check_vote(vote, checked.request, checked.signed, checked.tally.committee)


def test_vote_reports_the_verifiers_own_measurement(net, checked):
    want = measure_sequence(net.backend, checked.signed)
    assert want == measure_sketch(
        net.backend.final_states(checked.signed.commitment.tokens), checked.signed.commitment.sketch
    )
    assert {v.sequence_check for v in checked.votes} == {want}


def test_no_sketch_check_at_q_zero(net):
    run = net.run(net.request(request_id=b"\x82" * 16, **NEVER))
    for vote in run.votes:
        assert not run.sessions[vote.verifier_key].challenge.sequence_check
        assert vote.verdict is Verdict.ACCEPT and vote.sequence_check is None


def test_invalid_bad_sketch_is_rejected_by_every_verifier_that_checks(caught, auditor):
    reject_min = Thresholds().sequence.reject_min
    assert [v.verdict for v in caught.votes] == [Verdict.REJECT] * 4
    assert get_final_outcome(caught.tally) is Outcome.REJECTED
    for vote in caught.votes:
        check_vote(vote, caught.request, caught.signed, caught.tally.committee)
        sq = vote.sequence_check
        assert sq is not None and sq.chunk == 0 and sq.mismatch > reject_min
        assert "sketch chunk 0" in vote.reason
        # Every other check passes: the tiles are honest.
        assert vote.max_error == 0.0 and vote.embedding_max_error == 0.0
        assert vote.max_margin == 0.0
        ev = vote.evidence
        assert ev is not None and ev.check is EvidenceCheck.SEQUENCE
        assert ev.response is None  # [SKETCH.5] no openings needed
        assert (ev.position, ev.measured) == (0, sq.mismatch)
        assert (ev.request, ev.signed) == (caught.request, caught.signed)
        result = audit_evidence(ev, auditor)  # [SKETCH.5]
        assert result.proven, result.detail
        assert result.check is EvidenceCheck.SEQUENCE
        assert result.measured == sq.mismatch > reject_min


def test_bad_sketch_is_accepted_when_no_verifier_checks_the_sequence(net, bad_sketch):
    # The detection class: the tiles, the embedding and the sampler are honest, so a challenge
    # of every layer and every output position without the sketch check sees nothing.
    request = net.request(request_id=b"\x83" * 16, **NEVER, **EVERY_LAYER_AND_POSITION)
    run = net.run(request, bad_sketch)
    assert [v.verdict for v in run.votes] == [Verdict.ACCEPT] * 4
    assert get_final_outcome(run.tally) is Outcome.CERTIFIED
    assert all(v.sequence_check is None for v in run.votes)


def test_invalid_bad_sketch_is_caught_by_exactly_the_verifiers_that_draw_the_check(net, bad_sketch):
    # A request whose committee holds both cases: at q = 1/2 each member draws the check with
    # probability 1/2, independently, so the four agree with probability 2 / 2**4.
    found = find_execution(
        net,
        bad_sketch,
        "bad-sketch-half",
        1 - 2 / 2**4,
        lambda f: {ch.sequence_check for ch in f.challenges.values()} == {True, False},
        sequence_check_ppm=500_000,
    )
    run = net.run(found.request, bad_sketch, check_at_assembler=False)
    seen = set()
    for vote in run.votes:
        drawn = run.sessions[vote.verifier_key].challenge.sequence_check
        seen.add(drawn)
        assert vote.verdict is (Verdict.REJECT if drawn else Verdict.ACCEPT)
        assert (vote.sequence_check is not None) is drawn
    assert seen == {True, False}


def test_invalid_skipped_layer_is_seen_by_the_sketch_check_whatever_layer_is_sampled(net, auditor):
    # A lie in one layer carries through every later one to the last boundary, so the sketch
    # check sees it even when the verifier samples another layer (k = 1 here).
    ex = make_byzantine_executor(
        "skip-layer", make_key("sequence-skip-layer"), net.lm.model, net.lm.model_id, NETWORK_ID, 8
    )
    assert isinstance(ex, LayerTamperExecutor)

    def someone_misses(found: Execution) -> bool:
        sampled = (sees_layer_lie(ch, found.lied_layers, False) for ch in found.challenges.values())
        return not all(sampled)

    # A request where some member samples another layer: each member samples the skipped one
    # (k = 1 of 4) with probability 1/4, independently, so all four do with probability 4**-4.
    found = find_execution(
        net, ex, "sketch-skip-layer", 1 - 4**-4, someone_misses, layers_per_verifier=1, **ALWAYS
    )
    run = net.run(found.request, ex, check_at_assembler=False)
    lied = found.lied_layers
    missed = 0
    for vote in run.votes:
        assert vote.verdict is Verdict.REJECT
        sampled = {lc.layer for lc in run.sessions[vote.verifier_key].challenge.layers}
        if sampled & lied:
            continue
        missed += 1
        assert vote.evidence is not None and vote.evidence.check is EvidenceCheck.SEQUENCE
        assert audit_evidence(vote.evidence, auditor).proven
    assert missed > 0


def grey_verifier(net: Network, key, thresholds: Thresholds) -> VerifierCore:
    return VerifierCore(key, net.backend, net.lm.model_id, 4, 64, NETWORK_ID, thresholds)


def test_invalid_bad_sketch_is_caught_by_an_escalated_challenge_at_q_zero(net, bad_sketch):
    # Boundary 0's honest error (0) in the grey band escalates every verifier; the escalated
    # challenge always includes the sketch check. [SKETCH.4], [VERIFY.7]
    request = net.request(request_id=b"\x85" * 16, **NEVER)
    signed = bad_sketch.on_execute(request)
    verifier = grey_verifier(net, net.validator_keys[0], Thresholds(embedding=Band(-1.0, 1.0)))
    v = verify(verifier, bad_sketch, request, signed)
    assert len(v.responses) == 2 and v.session.escalated
    assert v.session.challenge.sequence_check
    vote = v.vote
    assert vote.verdict is Verdict.REJECT and vote.escalated
    assert vote.evidence is not None and vote.evidence.check is EvidenceCheck.SEQUENCE
    check_vote(vote, request, signed, (verifier.key.public_key,))


def test_grey_sketch_mismatch_escalates_once_then_accepts(net, checked):
    # The honest mismatch (0) in the grey band: one escalation, then ACCEPT on the grey again.
    verifier = grey_verifier(net, net.validator_keys[0], Thresholds(sequence=Band(-1.0, 1.0)))
    v = verify(verifier, net.executor, checked.request, checked.signed)
    assert len(v.responses) == 2 and v.session.escalated
    assert v.vote.verdict is Verdict.ACCEPT and v.vote.escalated
    assert v.vote.sequence_check == SketchCheck(0, 0.0)
    check_vote(v.vote, checked.request, checked.signed, (verifier.key.public_key,))


class ChunkLiar(ExecutorCore):
    """Commits the sketch of its last boundary with the positions of one chunk scaled by 5 %."""

    def __init__(self, *args, chunk: int, **kw):
        super().__init__(*args, **kw)
        self.chunk = chunk

    def compute_sketch(self, states):
        last = states[-1].copy()
        last[self.chunk * SKETCH_CHUNK : (self.chunk + 1) * SKETCH_CHUNK] *= 1.05
        return compute_sketch(last)


@pytest.mark.parametrize("chunk", [0, 1])
def test_invalid_lie_in_one_chunk_is_named_by_its_first_position(net, auditor, chunk):
    ex = ChunkLiar(
        make_key(f"chunk-liar-{chunk}"),
        net.backend,
        net.lm.model_id,
        NETWORK_ID,
        CHUNK_SIZE,
        chunk=chunk,
    )
    request = net.request(request_id=bytes([0x86, chunk]) * 8, prompt=LONG_PROMPT, **ALWAYS)
    run = net.run(request, ex)
    assert len(run.signed.commitment.tokens) == len(LONG_PROMPT) + SAMPLING.max_new_tokens
    assert len(run.signed.commitment.sketch) == 2
    for vote in run.votes:
        assert vote.verdict is Verdict.REJECT
        assert vote.sequence_check == SketchCheck(chunk, 1.0)  # every top entry is off by 5 %
        ev = vote.evidence
        assert ev is not None and ev.check is EvidenceCheck.SEQUENCE
        assert (ev.position, ev.measured) == (chunk * SKETCH_CHUNK, 1.0)
        assert f"sketch chunk {chunk} " in vote.reason
        assert audit_evidence(ev, auditor).proven


def test_honest_two_chunk_sequence_matches(net):
    run = net.run(net.request(request_id=b"\x87" * 16, prompt=LONG_PROMPT, **ALWAYS))
    assert len(run.signed.commitment.sketch) == 2
    assert all(v.sequence_check == SketchCheck(0, 0.0) for v in run.votes)
    assert get_final_outcome(run.tally) is Outcome.CERTIFIED


# --- [SKETCH.3] a sketch that does not fit the tokens


@pytest.mark.parametrize(
    "sketch",
    [(), (b"\x01\x00", b"\x01\x00"), (b"\x01",), (b"\xf1\xff",), (b"\x01\x00" * 129,)],
    ids=["no-chunk", "two-chunks", "odd", "outside-the-field", "too-long"],
)
def test_invalid_sketch_that_does_not_fit_the_tokens(net, checked, sketch):
    bad = dataclasses.replace(
        checked.signed, commitment=dataclasses.replace(checked.signed.commitment, sketch=sketch)
    )
    problem = compute_commitment_problem(checked.request, bad, 4, 64, net.backend.vocab_size)
    assert problem == "sketch does not fit the committed tokens"
    # Signed by the executor, it is malformed: no vote, no evidence. [SKETCH.3]
    with pytest.raises(Malformed):
        bad.commitment.validate()
    with pytest.raises(Malformed):
        net.verifiers[net.validators[0]].start(
            checked.request,
            resign_commitment(checked.signed, net.executor_key, sketch=sketch),
        )


def test_honest_commitment_sketch_has_no_problem(net, checked):
    vocab = net.backend.vocab_size
    assert compute_commitment_problem(checked.request, checked.signed, 4, 64, vocab) is None


# --- [SKETCH.5] evidence and audit


def sequence_claim(run: Run, **kw) -> Evidence:
    return Evidence(EvidenceCheck.SEQUENCE, run.request, run.signed, **kw)


@pytest.mark.parametrize("position", [0, 32, 1000])
def test_made_up_sequence_claim_against_an_honest_executor_is_not_proven(
    checked, auditor, position
):
    evidence = sequence_claim(checked, position=position, measured=1.0, detail="made up")
    result = audit_evidence(evidence, auditor)
    assert not result.proven, result.detail
    assert result.check is EvidenceCheck.SEQUENCE and result.measured == 0.0


def test_made_up_sequence_claim_with_openings_is_not_proven(checked, auditor):
    response = next(iter(checked.responses.values()))
    assert not audit_evidence(sequence_claim(checked, response=response), auditor).proven


def test_sequence_audit_ignores_the_accusers_numbers(caught, auditor):
    # [EVID.3]: the auditor re-runs its own prefill; the claimed mismatch and chunk are not used.
    ev = caught.votes[0].evidence
    assert ev is not None
    for changes in ({"measured": 0.0, "detail": ""}, {"position": 4096}):
        assert audit_evidence(dataclasses.replace(ev, **changes), auditor).proven


def test_sequence_audit_uses_the_auditors_thresholds(caught, auditor):
    ev = caught.votes[0].evidence
    assert ev is not None
    strict = Thresholds(sequence=Band(0.0, ev.measured))  # reject only above what it measures
    assert not audit_evidence(ev, auditor, strict).proven
    lenient = Thresholds(sequence=Band(0.0, math.nextafter(ev.measured, 0.0)))
    assert audit_evidence(ev, auditor, lenient).proven


def test_sequence_audit_needs_the_model(caught):
    ev = caught.votes[0].evidence
    assert ev is not None
    with pytest.raises(CannotJudge, match="needs the model"):
        audit_evidence(ev, None)


# --- the vote's sequence check [SKETCH.4]


def test_sequence_check_is_signed_by_the_vote(checked):
    vote = checked.votes[0]
    changed = dataclasses.replace(vote, sequence_check=SketchCheck(0, 0.5))
    changed.validate()
    assert changed.signing_root() != vote.signing_root()
    with pytest.raises(BadSignature):
        changed.check()
    absent = dataclasses.replace(vote, sequence_check=None)
    assert absent.signing_root() != vote.signing_root()


@pytest.mark.parametrize(
    "check",
    [
        SketchCheck(0, math.nan),
        SketchCheck(0, math.inf),
        SketchCheck(0, -0.25),
        SketchCheck(0, 1.0 + 1e-9),
        SketchCheck(-1, 0.0),
        SketchCheck(1 << 32, 0.0),
    ],
    ids=repr,
)
def test_invalid_vote_sequence_check(net, checked, check):
    vote = checked.votes[0]
    with pytest.raises(Malformed):
        resign_vote(vote, net.key_of(vote.verifier_key), sequence_check=check).check()


@pytest.mark.parametrize("check", [SketchCheck(0, 0.0), SketchCheck((1 << 32) - 1, 1.0)])
def test_vote_sequence_check_bounds_are_inclusive(net, checked, check):
    vote = checked.votes[0]
    resigned: Vote = resign_vote(vote, net.key_of(vote.verifier_key), sequence_check=check)
    resigned.check()


def test_sketch_mismatch_is_a_fraction_of_128(caught):
    # Measured over one chunk's 128 top entries (28 positions * 64 > 128): a multiple of 1/128.
    for vote in caught.votes:
        assert vote.sequence_check is not None
        assert (vote.sequence_check.mismatch * 128).is_integer()

"""Evidence and its audit: a REJECT proves misbehaviour to anyone, and nothing else does.

[EVID.1]-[EVID.4]. Proven evidence comes from the real verifier core against the real byzantine
executors of :mod:`simnet.executors` (and two local ones for the commitment and length rules);
made-up evidence is built from the honest run of :mod:`tests.support`.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest

from bft.assembler import check_commitment
from bft.errors import BadSignature, CannotJudge, Ignore, Reject
from bft.evidence import (
    MODEL_FREE_CHECKS,
    WITNESS_TOLERANCE,
    AuditModel,
    audit_evidence,
    spot_audit_vote,
)
from bft.measure import Thresholds
from bft.messages import Evidence, EvidenceCheck, OpeningResponse, TileRef, Verdict
from bft.quorum import check_vote
from bft.types import Digest, ModelId
from executor.core import ExecutorCore
from simnet.executors import make_byzantine_executor
from simnet.verifiers import make_byzantine_verifier
from tests.support import (
    NETWORK_ID,
    Network,
    Run,
    get_network,
    make_key,
    resign_commitment,
    resign_response,
    resign_vote,
    verify,
)

EOS = 2  # the tiny model's end-of-sequence id
MODEL_CHECKS = frozenset(EvidenceCheck) - MODEL_FREE_CHECKS


@pytest.fixture(scope="module")
def auditor(net) -> AuditModel:
    return AuditModel(net.backend, net.lm.model_id, 4, 64)


def test_model_free_checks_are_equivocation_and_opening():
    assert {EvidenceCheck.EQUIVOCATION, EvidenceCheck.OPENING} == MODEL_FREE_CHECKS


# --- evidence the verifiers produce against lying executors is proven


class EditedExecutor(ExecutorCore):
    """Commits an edited token sequence and proves it honestly (the activations fit)."""

    def edit(self, tokens: list[int]) -> list[int]:
        raise NotImplementedError

    def compute_states(self, tokens):
        return super().compute_states(self.edit(tokens))

    def compute_committed_tokens(self, prompt, output):
        return self.edit(prompt + output)


class PromptSwapExecutor(EditedExecutor):
    """Answers another prompt (its first token changed) under the request's digest."""

    def edit(self, tokens):
        return [tokens[0] + 1, *tokens[1:]]


class EosInTheMiddleExecutor(EditedExecutor):
    """Puts an end-of-sequence token in the middle of the output and goes on."""

    def edit(self, tokens):
        return [*tokens[:-4], EOS, *tokens[-3:]]


# case -> (executor, the check the evidence names); every layer and position is challenged and
# the sketch check is not drawn (q = 0), so every verifier's challenge is the same whatever its
# seed: with the sketch check drawn, a whole-run lie's worst finding could be its SEQUENCE one.
CASES = {
    "prompt-swap": (PromptSwapExecutor, EvidenceCheck.COMMITMENT),
    "eos-in-the-middle": (EosInTheMiddleExecutor, EvidenceCheck.LENGTH),
    "bad-opening": ("bad-opening", EvidenceCheck.OPENING),
    "tamper-tokens": ("tamper-tokens", EvidenceCheck.EMBEDDING),
    "int8-weights": ("int8-weights", EvidenceCheck.LAYER),
    "skip-layer": ("skip-layer", EvidenceCheck.LAYER),
    "wrong-sampler": ("wrong-sampler", EvidenceCheck.SAMPLER),
    "smart-tamper-tokens": ("smart-tamper-tokens", EvidenceCheck.SAMPLER),
    "equivocate": ("equivocate", EvidenceCheck.EQUIVOCATION),
}


def make_executor(net: Network, how) -> ExecutorCore:
    key = make_key(f"evidence-{how if isinstance(how, str) else how.__name__}")
    if isinstance(how, str):
        return make_byzantine_executor(how, key, net.lm.model, net.lm.model_id, NETWORK_ID, 8)
    return how(key, net.backend, net.lm.model_id, NETWORK_ID, 8)


@functools.cache
def verifier_evidence(case: str) -> Evidence:
    """Return the evidence of one verifier's REJECT against the executor of ``case``."""
    net = get_network()
    ex = make_executor(net, CASES[case][0])
    request = net.request(
        request_id=b"\x44" * 16,
        layers_per_verifier=4,
        positions_per_verifier=8,
        sequence_check_ppm=0,
    )
    signed = ex.on_execute(request)
    v = verify(net.verifiers[net.validators[0]], ex, request, signed)
    assert len(v.session.challenge.layers) == 4 and not v.session.challenge.sequence_check
    assert len(v.session.challenge.positions) == len(signed.commitment.output_tokens)
    vote = v.vote
    assert vote.verdict is Verdict.REJECT, vote.reason
    assert vote.evidence is not None
    return vote.evidence


def reject_min(check: EvidenceCheck) -> float:
    t = Thresholds()
    return {
        EvidenceCheck.LAYER: t.layer.reject_min,
        EvidenceCheck.EMBEDDING: t.embedding.reject_min,
        EvidenceCheck.SAMPLER: t.sampler.reject_min,
    }[check]


@pytest.mark.parametrize("case", CASES)
def test_verifier_evidence_against_a_liar_is_proven(auditor, case):
    evidence = verifier_evidence(case)
    want = CASES[case][1]
    assert evidence.check is want
    result = audit_evidence(evidence, auditor)
    assert result.proven, result.detail
    assert result.check is want
    if want in (EvidenceCheck.LAYER, EvidenceCheck.EMBEDDING, EvidenceCheck.SAMPLER):
        assert result.measured > reject_min(want)
        assert evidence.measured > reject_min(want)
    if want is EvidenceCheck.LAYER:
        assert f"layer {evidence.layer} " in result.detail
    if want is EvidenceCheck.SAMPLER:
        assert f"position {evidence.position}" in result.detail


@pytest.mark.parametrize("case", CASES)
def test_audit_re_measures_and_ignores_the_accusers_numbers(auditor, case):
    # [EVID.3]: the auditor's own measurement decides; the claimed number is not trusted.
    evidence = dataclasses.replace(verifier_evidence(case), measured=0.0, detail="")
    assert audit_evidence(evidence, auditor).proven


@pytest.mark.parametrize("case", CASES)
def test_audit_needs_the_model_exactly_for_model_claims(net, auditor, case):
    evidence = verifier_evidence(case)
    other_model = dataclasses.replace(auditor, model_id=ModelId(b"\x01" * 32))
    if evidence.check in MODEL_FREE_CHECKS:
        assert audit_evidence(evidence, None).proven
        assert audit_evidence(evidence, other_model).proven
        return
    with pytest.raises(CannotJudge, match="needs the model"):
        audit_evidence(evidence, None)
    with pytest.raises(CannotJudge, match="needs the model"):
        audit_evidence(evidence, other_model)


def test_replayed_commitment_gets_no_vote_and_no_evidence(net):
    # A commitment signed for another request proves nothing against its signer (anyone can
    # forward an old one): the assembler refuses it and a verifier casts no vote. [VERIFY.1]
    ex = make_executor(net, "replay")
    request = net.request(request_id=b"\x45" * 16)
    signed = ex.on_execute(request)
    signed.check()
    with pytest.raises(Reject, match="another request"):
        check_commitment(request, signed, ex.key.node_id)
    with pytest.raises(Ignore, match="not bound to this request"):
        net.verifiers[net.validators[0]].start(request, signed)


# --- evidence made up against the honest executor is not proven


@pytest.fixture(scope="module")
def member(run) -> bytes:
    return run.tally.committee[0]


@pytest.fixture(scope="module")
def response(run, member) -> OpeningResponse:
    return run.responses[member]


def claim(run: Run, response: OpeningResponse | None, check: EvidenceCheck, **kw) -> Evidence:
    return Evidence(check, run.request, run.signed, response, measured=1.0, **kw)


def assert_not_proven(evidence: Evidence, auditor: AuditModel, why: str = "") -> None:
    result = audit_evidence(evidence, auditor)
    assert not result.proven, result.detail
    assert result.check is evidence.check
    assert why in result.detail


def test_made_up_layer_claims_are_not_proven(run, member, response, auditor):
    for lc in run.sessions[member].challenge.layers:
        evidence = claim(run, response, EvidenceCheck.LAYER, layer=lc.layer)
        result = audit_evidence(evidence, auditor)
        assert not result.proven and result.measured == 0.0


def test_made_up_layer_claims_without_the_tiles_are_not_proven(net, run, member, response, auditor):
    # A layer is auditable only with its output tiles and all its input tiles. With every
    # boundary-2 tile left out of the (executor-signed) openings, layers 2 and 3 are not.
    kept = tuple(o for o in response.openings if o.tile.boundary != 2)
    partial = resign_response(response, net.executor_key, openings=kept)
    for layer in (0, 5, 2, 3):
        evidence = claim(run, partial, EvidenceCheck.LAYER, layer=layer)
        assert_not_proven(evidence, auditor, "needs the input and output tiles")
    for layer in (0, 5):
        evidence = claim(run, response, EvidenceCheck.LAYER, layer=layer)
        assert_not_proven(evidence, auditor, "needs the input and output tiles")


def test_made_up_sampler_claims_are_not_proven(run, member, response, auditor):
    for p in run.sessions[member].challenge.positions:
        evidence = claim(run, response, EvidenceCheck.SAMPLER, position=p)
        result = audit_evidence(evidence, auditor)
        assert not result.proven and result.measured == 0.0


def test_made_up_sampler_claims_outside_the_opened_output_are_not_proven(
    net, run, response, auditor
):
    c = run.signed.commitment
    for p in (0, c.prompt_len - 1, len(c.tokens)):
        evidence = claim(run, response, EvidenceCheck.SAMPLER, position=p)
        assert_not_proven(evidence, auditor, "outside the output")
    # Every last-boundary tile left out: no output position can be checked.
    kept = tuple(o for o in response.openings if o.tile.boundary != c.num_layers)
    partial = resign_response(response, net.executor_key, openings=kept)
    for p in range(c.prompt_len, len(c.tokens)):
        evidence = claim(run, partial, EvidenceCheck.SAMPLER, position=p)
        assert_not_proven(evidence, auditor, "needs the last-boundary tile")


@pytest.mark.parametrize(
    "check",
    [
        EvidenceCheck.EMBEDDING,
        EvidenceCheck.OPENING,
        EvidenceCheck.COMMITMENT,
        EvidenceCheck.LENGTH,
    ],
)
def test_made_up_claims_of_each_kind_are_not_proven(run, response, auditor, check):
    assert_not_proven(claim(run, response, check), auditor)
    assert_not_proven(claim(run, None, check, detail="made up"), auditor)


def test_made_up_embedding_claim_without_every_boundary_zero_tile_is_not_proven(
    run, response, auditor
):
    partial = resign_response(response, get_network().executor_key, openings=response.openings[1:])
    assert_not_proven(claim(run, partial, EvidenceCheck.EMBEDDING), auditor, "boundary-0")


def test_computation_claims_without_openings_are_not_proven(run, auditor):
    for check in (EvidenceCheck.EMBEDDING, EvidenceCheck.LAYER, EvidenceCheck.SAMPLER):
        assert_not_proven(claim(run, None, check, layer=1, position=25), auditor, "openings")


def test_made_up_equivocation_is_not_proven(net, run, auditor):
    stranger = make_key("stranger")
    other_request = net.request(request_id=b"\x46" * 16)
    cases = [
        (None, "needs a second commitment"),
        (run.signed, "are the same"),
        (
            resign_commitment(
                run.signed,
                stranger,
                executor_key=stranger.public_key,
                merkle_root=Digest(b"\x09" * 32),
            ),
            "different executors",
        ),
        (
            resign_commitment(run.signed, stranger, merkle_root=Digest(b"\x09" * 32)),
            "not validly signed",
        ),
        (net.executor.on_execute(other_request), "different requests"),
    ]
    for other, why in cases:
        evidence = Evidence(EvidenceCheck.EQUIVOCATION, run.request, run.signed, other=other)
        assert_not_proven(evidence, auditor, why)
        assert not audit_evidence(evidence, None).proven  # judged without a model


@pytest.mark.parametrize("check", list(EvidenceCheck))
def test_claims_about_an_unsigned_commitment_are_not_proven(run, response, auditor, check):
    # An edit the executor never signed accuses nobody, whatever the claim.
    c = dataclasses.replace(run.signed.commitment, tokens=(*run.signed.commitment.tokens[:-1], 5))
    unsigned = dataclasses.replace(run.signed, commitment=c)
    evidence = dataclasses.replace(
        claim(run, response, check, layer=1, position=25), signed=unsigned, other=run.signed
    )
    assert_not_proven(evidence, auditor, "not validly signed")
    assert not audit_evidence(evidence, None).proven  # no model needed to see that


def test_claims_about_a_commitment_of_another_request_are_not_proven(net, run, response, auditor):
    other_request = net.request(request_id=b"\x47" * 16)
    for check in EvidenceCheck:
        evidence = dataclasses.replace(
            claim(run, response, check, layer=1, position=25), request=other_request
        )
        assert_not_proven(evidence, auditor, "not signed for the request")


def _flip_a_leaf(response: OpeningResponse) -> OpeningResponse:
    o = response.openings[0]
    leaf = o.leaf[:-1] + bytes([o.leaf[-1] ^ 1])
    return dataclasses.replace(
        response, openings=(dataclasses.replace(o, leaf=leaf), *response.openings[1:])
    )


@pytest.mark.parametrize(
    "check", [EvidenceCheck.OPENING, EvidenceCheck.EMBEDDING, EvidenceCheck.LAYER]
)
def test_openings_not_signed_by_the_accused_prove_nothing(
    net, run, member, response, auditor, check
):
    # A bad leaf the executor never signed (edited in transit, or re-signed by someone else)
    # cannot frame it; an honest opening re-signed by someone else is not the accused's either.
    stranger = make_key("stranger")
    layer = run.sessions[member].challenge.layers[0].layer
    for forged in (
        _flip_a_leaf(response),
        resign_response(_flip_a_leaf(response), stranger),
        resign_response(response, stranger),
    ):
        evidence = claim(run, forged, check, layer=layer)
        assert_not_proven(evidence, auditor, "not signed by the accused")


def test_openings_of_another_commitment_prove_nothing(net, run, auditor):
    # The accused's own, validly signed openings, but of another commitment.
    other = net.run(net.request(request_id=b"\x48" * 16))
    for check in (EvidenceCheck.OPENING, EvidenceCheck.LAYER):
        evidence = claim(run, next(iter(other.responses.values())), check, layer=1)
        assert_not_proven(evidence, auditor, "another commitment")


def test_everything_re_signed_by_an_impostor_accuses_only_the_impostor(run, response, auditor):
    # Someone re-signs the honest commitment and openings as their own: a consistent claim
    # against the impostor (not the honest executor), and the numbers are honest: not proven.
    impostor = make_key("impostor")
    signed = resign_commitment(run.signed, impostor, executor_key=impostor.public_key)
    forged = resign_response(response, impostor, commitment_digest=signed.digest, commitment=signed)
    for check in (EvidenceCheck.OPENING, EvidenceCheck.EMBEDDING, EvidenceCheck.LAYER):
        evidence = dataclasses.replace(claim(run, forged, check, layer=1), signed=signed)
        assert evidence.executor_key == impostor.public_key
        assert_not_proven(evidence, auditor)


@pytest.mark.parametrize("check", list(EvidenceCheck))
def test_made_up_claims_need_the_model_exactly_for_model_claims(run, response, check):
    evidence = claim(run, response, check, layer=1, position=25)
    if check in MODEL_CHECKS:
        with pytest.raises(CannotJudge, match="needs the model"):
            audit_evidence(evidence, None)
    else:
        assert not audit_evidence(evidence, None).proven


# --- spot audits of votes: lazy or lying ACCEPTs are caught [VOTE.4]


def vote_of(run: Run, member: bytes):
    return next(v for v in run.votes if v.verifier_key == member)


def test_spot_audit_passes_every_honest_vote(run, auditor):
    for vote in run.votes:
        audit = spot_audit_vote(vote, run.signed, run.responses[vote.verifier_key], auditor)
        assert audit.ok, audit.detail
        assert f"{len(vote.layer_checks)} layer checks" in audit.detail


def test_spot_audit_passes_an_honest_vote_from_openings_the_auditor_fetches(
    net, run, member, auditor
):
    # The executor serves any tiles to anyone: an auditor fetches those the vote names.
    vote = vote_of(run, member)
    tiles = tuple(
        dict.fromkeys(t for lc in vote.layer_checks for t in _layer_tiles(lc.layer, lc.chunks))
    )
    response = net.executor.on_open(run.signed.digest, tiles)
    assert spot_audit_vote(vote, run.signed, response, auditor).ok


def _layer_tiles(layer: int, chunks: tuple[int, ...]) -> list[TileRef]:
    return [TileRef(layer - 1, k) for k in range(max(chunks) + 1)] + [
        TileRef(layer, k) for k in chunks
    ]


def test_spot_audit_fails_a_lazy_always_accept_vote(net, run, member, response, auditor):
    # simnet.verifiers's always-accept signs the right shape with made-up zero measurements.
    lazy = make_byzantine_verifier("always-accept", net.verifiers[member])
    vote = lazy.run(run.request, run.signed, lambda s: pytest.fail("a lazy verifier fetches"))
    assert vote.verdict is Verdict.ACCEPT
    check_vote(vote, run.request, run.signed, run.tally.committee)  # structurally valid
    audit = spot_audit_vote(vote, run.signed, response, auditor)
    assert not audit.ok and "witness" in audit.detail


@pytest.mark.parametrize("factor", [1.01, 0.99, 0.0, 2.0])
def test_spot_audit_fails_a_tampered_witness_resigned_by_the_verifier(
    net, run, member, response, auditor, factor
):
    vote = vote_of(run, member)
    first, *rest = vote.layer_checks
    tampered = dataclasses.replace(first, witness=first.witness * factor)
    forged = resign_vote(vote, net.key_of(member), layer_checks=(tampered, *rest))
    forged.check()
    audit = spot_audit_vote(forged, run.signed, response, auditor)
    assert not audit.ok and f"layer {first.layer} witness" in audit.detail


def test_spot_audit_tolerates_rounding_in_the_witness(net, run, member, response, auditor):
    vote = vote_of(run, member)
    first, *rest = vote.layer_checks
    nudged = dataclasses.replace(first, witness=first.witness * (1 + WITNESS_TOLERANCE / 10))
    forged = resign_vote(vote, net.key_of(member), layer_checks=(nudged, *rest))
    assert spot_audit_vote(forged, run.signed, response, auditor).ok


def test_spot_audit_fails_a_made_up_layer_error(net, run, member, response, auditor):
    # The witness is right but the reported error is not what the layer re-computes to.
    vote = vote_of(run, member)
    first, *rest = vote.layer_checks
    made_up = first.max_rel_error + 2 * Thresholds().layer.accept_max
    forged = resign_vote(
        vote,
        net.key_of(member),
        layer_checks=(dataclasses.replace(first, max_rel_error=made_up), *rest),
    )
    audit = spot_audit_vote(forged, run.signed, response, auditor)
    assert not audit.ok and f"layer {first.layer} error" in audit.detail


def test_invalid_spot_audit_of_a_vote_about_another_commitment(net, run, member, auditor):
    other = net.run(net.request(request_id=b"\x46" * 16), confirm=False)
    vote = vote_of(run, member)
    with pytest.raises(Reject, match="another commitment"):
        spot_audit_vote(vote, other.signed, next(iter(other.responses.values())), auditor)


def test_invalid_spot_audit_of_an_unsigned_change(run, member, response, auditor):
    vote = dataclasses.replace(vote_of(run, member), reason="edited")
    with pytest.raises(BadSignature):
        spot_audit_vote(vote, run.signed, response, auditor)

"""The byzantine executors on the tiny model: every lie is signed and caught as designed.

Whole-run cheats change every layer or position and are never certified; partial cheats are
caught by exactly the verifiers whose challenge reaches the lie, so a challenge of every layer
(k = L), every output position (m = number of output tokens) and the sketch (q = 1) catches
them on every request.
"""

from __future__ import annotations

import pytest

from bft.assembler import Outcome, check_commitment, get_final_outcome
from bft.errors import Ignore, Reject
from bft.evidence import AuditModel, audit_evidence
from bft.messages import InferenceRequest, Verdict
from executor.core import ExecutorCore
from simnet.executors import (
    MODES,
    PARTIAL_MODES,
    SELECTIVE_REQUEST_RATE,
    WHOLE_RUN_MODES,
    LayerTamperExecutor,
    make_byzantine_executor,
)
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    SAMPLING,
    Execution,
    Network,
    Run,
    find_execution,
    make_key,
    sees_layer_lie,
)

REQUESTS = 2  # per mode; each is a fresh request id
EVERYTHING = {
    "layers_per_verifier": 4,
    "positions_per_verifier": SAMPLING.max_new_tokens,
    "sequence_check_ppm": 1_000_000,
}


@pytest.fixture(scope="module")
def auditor(net) -> AuditModel:
    return AuditModel(net.backend, net.lm.model_id, 4, 64)


def executor_for(net: Network, mode: str) -> ExecutorCore:
    key = make_key(f"byzantine-{mode}")
    return make_byzantine_executor(mode, key, net.lm.model, net.lm.model_id, NETWORK_ID, CHUNK_SIZE)


def request_of(net: Network, mode: str, n: int, **policy) -> InferenceRequest:
    request_id = bytes([0xB0 + MODES.index(mode), n]) * 8
    assert SAMPLING.temperature > 0  # wrong-sampler is only a lie when sampling is random
    return net.request(request_id=request_id, **policy)


def run_of(net: Network, ex: ExecutorCore, request: InferenceRequest) -> Run:
    """Return the committee's run; the assembler's own check is left to the caller."""
    return net.run(request, ex, check_at_assembler=False)


def assert_rejected_with_proven_evidence(run: Run, auditor: AuditModel) -> None:
    assert [v.verdict for v in run.votes] == [Verdict.REJECT] * 4, [v.reason for v in run.votes]
    assert get_final_outcome(run.tally) is Outcome.REJECTED
    for vote in run.votes:
        assert vote.evidence is not None
        result = audit_evidence(vote.evidence, auditor)
        assert result.proven, (vote.evidence.check, result.detail)


def test_modes_are_the_issues_two_classes():
    assert set(WHOLE_RUN_MODES).isdisjoint(PARTIAL_MODES)
    assert MODES == WHOLE_RUN_MODES + PARTIAL_MODES
    named = {
        "skip-layer", "int8-weights", "int4-weights", "bf16-compute", "fp16-compute",
        "other-model", "perturb-layer", "tamper-tokens", "alter-prompt", "wrong-sampler",
        "replay", "bad-opening", "equivocate", "withhold", "selective", "smart-tamper-tokens",
        "bad-sketch",  # ours: a sketch that does not match the tiles [SKETCH.4]
    }  # fmt: skip
    assert set(MODES) == named


def test_invalid_unknown_byzantine_mode(net):
    with pytest.raises(ValueError, match="unknown byzantine mode"):
        make_byzantine_executor("polite", make_key("x"), net.lm.model, net.lm.model_id, "n", 8)


@pytest.mark.parametrize("mode", WHOLE_RUN_MODES)
def test_invalid_whole_run_cheat_is_never_certified(net, auditor, mode):
    ex = executor_for(net, mode)
    for n in range(REQUESTS):
        request = request_of(net, mode, n)
        if mode == "replay":  # an old commitment: the assembler refuses it, verifiers ignore it
            signed = ex.on_execute(request)
            signed.check()
            with pytest.raises(Reject, match="another request"):
                check_commitment(request, signed, ex.key.node_id)
            for pk in net.validators[:4]:
                with pytest.raises(Ignore, match="not bound to this request"):
                    net.verifiers[pk].start(request, signed)
            continue
        run = run_of(net, ex, request)
        run.signed.check()  # validly signed: the lie is in the numbers, not the envelope
        assert get_final_outcome(run.tally) is not Outcome.CERTIFIED
        assert Verdict.ACCEPT not in [v.verdict for v in run.votes]
        check_commitment(request, run.signed, ex.key.node_id)
        if mode == "withhold":  # a liveness fault, never a slash [VERIFY.5]
            assert [v.verdict for v in run.votes] == [Verdict.UNAVAILABLE] * 4
            assert get_final_outcome(run.tally) is Outcome.FAILED
            continue
        assert_rejected_with_proven_evidence(run, auditor)


@pytest.mark.parametrize("mode", PARTIAL_MODES)
def test_invalid_partial_cheat_is_signed_and_caught_by_a_full_challenge(net, auditor, mode):
    ex = executor_for(net, mode)
    lied_on = []
    for n in range(REQUESTS + 2 * (mode == "selective")):
        request = request_of(net, mode, n, **EVERYTHING)
        run = run_of(net, ex, request)
        run.signed.check()
        check_commitment(request, run.signed, ex.key.node_id)  # the envelope is honest
        lied = not isinstance(ex, LayerTamperExecutor) or bool(ex.lied_layers[-1])
        lied_on.append(lied)
        if lied:
            assert_rejected_with_proven_evidence(run, auditor)
        else:  # selective told the truth this time: nothing to catch
            assert [v.verdict for v in run.votes] == [Verdict.ACCEPT] * 4
            assert get_final_outcome(run.tally) is Outcome.CERTIFIED
    assert True in lied_on
    if mode == "selective":
        assert False in lied_on


@pytest.mark.parametrize("mode", ["skip-layer", "perturb-layer", "selective"])
def test_invalid_layer_cheat_is_caught_by_exactly_the_verifiers_sampling_its_layer(net, mode):
    # With the default k = 2 of 4 layers, later layers are recomputed honestly from the tampered
    # state, so only a challenge of the tampered layer itself sees the lie. [GUAR.2]
    ex = executor_for(net, mode)
    assert isinstance(ex, LayerTamperExecutor)

    def both_cases(found: Execution) -> bool:
        exposed = {sees_layer_lie(ch, found.lied_layers) for ch in found.challenges.values()}
        return exposed == {True, False}

    # A request whose committee holds both cases. The executor lies on it with probability 1
    # (``selective``: 1/2); each member then samples the lied layer (k = 2 of 4) with
    # probability 1/2, independently, so the four agree with probability 2 / 2**4.
    assert net.policy.layers_per_verifier == 2 and SELECTIVE_REQUEST_RATE >= 0.5
    lies = SELECTIVE_REQUEST_RATE if mode == "selective" else 1.0
    # q = 0: the whole-sequence sketch check would see a lie in any layer [SKETCH.4]
    found = find_execution(
        net, ex, f"layer-cheat-{mode}", lies * (1 - 2 / 2**4), both_cases, sequence_check_ppm=0
    )
    run = run_of(net, ex, found.request)  # the same commitment, whatever ``selective`` draws now
    lied = found.lied_layers
    for vote in run.votes:
        layers = {lc.layer for lc in run.sessions[vote.verifier_key].challenge.layers}
        exposed = bool(layers & lied)
        assert vote.verdict is (Verdict.REJECT if exposed else Verdict.ACCEPT), (lied, layers)

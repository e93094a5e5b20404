"""Execution profiles on the CPU: the torch backend in bfloat16, settings in the commitment,
batched execution, admission and per-profile bands. [EXEC.4]-[EXEC.6], [SAMPLE.6], [CAL.2]

The tiny model is used throughout; the executor profiles differ only in the compute dtype.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from bft import thresholds as thresholds_module
from bft.errors import CannotJudge, Malformed, ProtocolError
from bft.evidence import AuditModel, audit_evidence
from bft.measure import DEFAULT_PROFILE, Band, Thresholds, Zone
from bft.messages import EvidenceCheck, InferenceRequest, SamplingParams, SignedCommitment, Verdict
from bft.thresholds import get_thresholds_path, is_admitted, load_thresholds, read_thresholds
from bft.verifier import VerifierCore
from executor import backend as backend_module
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from executor.model import LoadedModel, compute_model_id
from executor.sampler import compute_sampler_margin, sample_token
from tests.support import CHUNK_SIZE, NETWORK_ID, Network, get_tiny, make_key, verify

TOKENS = list(range(100, 128))  # 28 positions
PROMPT = TOKENS[:20]
SEED = b"\x0b" * 32
BF16 = "torch-cpu-bfloat16"
FP32 = "torch-cpu-float32"
ACCEPT_ALL = Band(math.inf, math.inf)
WIDE_OPEN = Thresholds(ACCEPT_ALL, ACCEPT_ALL, ACCEPT_ALL, ACCEPT_ALL)
"""Bands that accept any measurement: to show which profile's bands a verifier applies."""


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return get_tiny()[0]


@pytest.fixture(scope="module")
def fp32() -> TorchBackend:
    return get_tiny()[1]


@pytest.fixture(scope="module")
def bf16(lm) -> TorchBackend:
    return TorchBackend(lm.model, dtype=torch.bfloat16)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def backend(request, fp32, bf16) -> TorchBackend:
    return fp32 if request.param == "float32" else bf16


@pytest.fixture(scope="module")
def norm_model(lm) -> torch.nn.Module:
    """The tiny model with a random (non-unit) final-norm weight.

    With unit weights RMSNorm is idempotent, so logits taken after the norm once too often
    would look right; random weights make the final norm's placement visible.
    """
    m = copy.deepcopy(lm.model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        m.model.norm.weight.copy_(torch.rand(m.config.hidden_size, generator=gen) * 1.5 + 0.25)
    return m.eval()


def bf16_representable(x: np.ndarray) -> bool:
    t = torch.from_numpy(x)
    return bool(torch.equal(t.to(torch.bfloat16).to(torch.float32), t))


# --- [EXEC.4] the backend in another dtype


def test_bf16_backend_names_its_profile_and_settings(bf16, fp32):
    info = bf16.info
    assert (info.name, info.dtype) == ("torch-cpu", "bfloat16")
    assert info.profile == BF16
    assert fp32.info.profile == FP32
    assert (info.num_layers, info.hidden_size, info.vocab_size) == (4, 64, 49152)
    assert info.settings
    assert len(info.settings) <= 256
    assert f"torch={torch.__version__}" in info.settings.split(";")
    assert "device=cpu" in info.settings.split(";")
    assert info.settings == fp32.info.settings  # dtype is in the profile, not the settings


def test_unsupported_dtype_is_refused(lm):
    with pytest.raises(ValueError):
        TorchBackend(lm.model, dtype=torch.float64)


def test_bf16_prove_returns_float32_states_computed_in_bf16(bf16, fp32):
    states = bf16.prove(TOKENS)
    assert states.dtype == np.float32
    assert states.shape == (5, len(TOKENS), 64)
    assert np.isfinite(states).all()
    # Widened exactly from bfloat16, and not the float32 computation.
    assert bf16_representable(states)
    reference = fp32.prove(TOKENS)
    assert not bf16_representable(reference)
    assert not np.array_equal(states, reference)
    rel = np.abs(states - reference).max() / np.abs(reference).max()
    assert 0 < rel < 0.1  # the same model, in lower precision


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_run_layer_reproduces_the_prefill_bit_for_bit(backend, layer):
    states = backend.prove(TOKENS)
    out = backend.run_layer(layer, states[layer - 1])
    assert out.dtype == np.float32
    assert np.array_equal(out, states[layer]), backend.info.profile


def test_embed_is_boundary_zero(backend):
    assert np.array_equal(backend.embed(TOKENS), backend.prove(TOKENS)[0])


def test_building_a_bf16_backend_leaves_the_model_alone(lm):
    before = lm.model.model.layers[0].mlp.up_proj.weight.detach().clone()
    TorchBackend(lm.model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert torch.equal(lm.model.model.layers[0].mlp.up_proj.weight, before)
    assert compute_model_id(lm.model, lm.model.config) == lm.model_id


# --- [SAMPLE.6] the float32 head


def test_head_is_the_same_float32_function_in_every_profile(bf16, fp32):
    # [SAMPLE.6]: executor and verifier of different profiles sample from the same function of
    # the boundary-L state, so the bf16 profile's head must be the float32 model's head.
    h = fp32.prove(TOKENS)[-1]
    logits = bf16.final_logits(h)
    assert logits.dtype == np.float32
    assert np.array_equal(logits, fp32.final_logits(h))


def test_head_runs_in_float32_on_states_of_any_precision(bf16):
    h = get_tiny()[1].prove(TOKENS)[-1]  # float32 values that bfloat16 cannot hold
    rounded = torch.from_numpy(h).to(torch.bfloat16).to(torch.float32).numpy()
    assert not np.array_equal(bf16.final_logits(h), bf16.final_logits(rounded))


SAMPLINGS = [SamplingParams(max_new_tokens=10), SamplingParams(temperature=1.0, max_new_tokens=10)]


class Recorder:
    """Records, for each step of ``generate``, the boundary-L state and the sampler's logits."""

    def __init__(self, backend: TorchBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.states: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        real = backend_module.sample_token

        def sample(logits, params, seed, position):
            self.logits.append(np.array(logits, copy=True))
            return real(logits, params, seed, position)

        def capture(_module, _args, out):
            self.states.append(out[0, -1].detach().to(torch.float32).numpy().copy())

        monkeypatch.setattr(backend_module, "sample_token", sample)
        # The boundary-L state: the last decoder layer's output (single-threaded test code may
        # hook the shared modules; the backend itself does not, [EXEC.9]).
        self.hook = backend.model.model.layers[-1].register_forward_hook(capture)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("params", SAMPLINGS)
def test_generate_samples_from_the_float32_head_of_the_boundary_state(
    norm_model, dtype, params, monkeypatch
):
    # [SAMPLE.6]: each step's logits are final_logits (float32 norm + head) of the state that
    # leaves the last decoder layer (the model's final norm's input), at the newest position.
    backend = TorchBackend(norm_model, dtype=dtype)
    rec = Recorder(backend, monkeypatch)
    try:
        out = backend.generate(PROMPT, params, SEED)
    finally:
        rec.hook.remove()
    assert len(out) == len(rec.logits) == len(rec.states) == params.max_new_tokens
    for i, (h, logits) in enumerate(zip(rec.states, rec.logits, strict=True)):
        assert logits.dtype == np.float32
        assert np.array_equal(logits, backend.final_logits(h[None])[0]), i
        assert out[i] == sample_token(logits, params, SEED, len(PROMPT) + i)


@pytest.mark.parametrize("params", SAMPLINGS)
def test_fp32_generation_is_the_sampler_on_the_proved_boundary(norm_model, params):
    # What a verifier recomputes: the head applied to the committed boundary-L state.
    backend = TorchBackend(norm_model)
    out = backend.generate(PROMPT, params, SEED)
    logits = backend.final_logits(backend.prove(PROMPT + out)[-1])
    for i, tok in enumerate(out):
        p = len(PROMPT) + i
        assert tok == sample_token(logits[p - 1], params, SEED, p), i


@pytest.mark.parametrize("params", SAMPLINGS)
def test_bf16_generation_is_the_sampler_on_the_proved_boundary_up_to_cache_rounding(
    norm_model, params, monkeypatch
):
    # In bfloat16 the KV-cache decode and the proving prefill round differently, so at a near
    # tie the proved logits may prefer another token (honest noise, calibrated by [CAL.2]).
    # A token may differ from the proof's choice only where the two logit vectors' difference
    # explains it: its sampler margin is at most twice their largest difference.
    backend = TorchBackend(norm_model, dtype=torch.bfloat16)
    rec = Recorder(backend, monkeypatch)
    try:
        out = backend.generate(PROMPT, params, SEED)
    finally:
        rec.hook.remove()
    proved = backend.final_logits(backend.prove(PROMPT + out)[-1])
    same = 0
    for i, tok in enumerate(out):
        p = len(PROMPT) + i
        diff = float(np.abs(proved[p - 1].astype(np.float64) - rec.logits[i]).max())
        margin = compute_sampler_margin(proved[p - 1], params, SEED, p, tok)
        print(f"position {p}: token {tok} margin {margin:.3g} cache-vs-prefill {diff:.3g}")
        assert margin <= 2 * diff, i
        same += tok == sample_token(proved[p - 1], params, SEED, p)
    assert same >= len(out) // 2


@pytest.mark.parametrize("prompt", [PROMPT, [1, 504, 3000, 17, 9000, 12]])
def test_fp32_greedy_generation_is_the_models_own(norm_model, prompt):
    # The model's own forward (its own final norm and head), step by step, without a cache.
    backend = TorchBackend(norm_model)
    out = backend.generate(prompt, SamplingParams(max_new_tokens=12), SEED)
    want = []
    with torch.inference_mode():
        for i in range(len(out)):
            logits = norm_model(input_ids=torch.tensor([prompt + out[:i]])).logits[0, -1]
            want.append(int(torch.argmax(logits)))
    assert out == want


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smollm2_generation_samples_from_the_float32_head(smollm2, dtype, monkeypatch):
    # The real model's final norm has trained (non-unit) weights; in float32 the generation is
    # also the model's own greedy continuation.
    prompt = list(
        smollm2.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Name a colour."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    backend = TorchBackend(smollm2.model, dtype=dtype)
    params = SamplingParams(max_new_tokens=8, stop_at_eos=False)
    rec = Recorder(backend, monkeypatch)
    try:
        out = backend.generate(prompt, params, SEED)
    finally:
        rec.hook.remove()
    for i, (h, logits) in enumerate(zip(rec.states, rec.logits, strict=True)):
        assert np.array_equal(logits, backend.final_logits(h[None])[0]), i
    if dtype == torch.float32:
        want = []
        with torch.inference_mode():
            for i in range(len(out)):
                logits = smollm2.model(input_ids=torch.tensor([prompt + out[:i]])).logits[0, -1]
                want.append(int(torch.argmax(logits)))
        assert out == want


# --- [EXEC.6] the executor signs its profile and settings


@pytest.fixture(scope="module")
def bf16_executor(net, bf16) -> ExecutorCore:
    return ExecutorCore(make_key("bf16-executor"), bf16, net.lm.model_id, NETWORK_ID, CHUNK_SIZE)


@pytest.fixture(scope="module")
def bf16_request(net) -> InferenceRequest:
    return net.request(request_id=b"\xbf" * 16)


@pytest.fixture(scope="module")
def bf16_signed(bf16_executor, bf16_request) -> SignedCommitment:
    return bf16_executor.on_execute(bf16_request)


def test_commitment_carries_the_profile_and_settings(bf16_signed, bf16):
    bf16_signed.check()
    c = bf16_signed.commitment
    assert (c.backend, c.dtype) == ("torch-cpu", "bfloat16")
    assert c.profile == BF16
    assert c.settings == bf16.info.settings


def test_settings_are_signed(bf16_signed):
    c = bf16_signed.commitment
    forged = SignedCommitment(
        dataclasses.replace(c, settings=c.settings + ";tp=2"), bf16_signed.signature
    )
    assert forged.digest != bf16_signed.digest
    with pytest.raises(ProtocolError):
        forged.check()


# --- batched execution


class CountingBackend:
    """A backend that records generation calls; optionally with ``generate_many``."""

    def __init__(self, inner: TorchBackend, batched: bool) -> None:
        self.inner = inner
        self.info = inner.info
        self.calls: list[object] = []
        if batched:
            self.generate_many = self._generate_many

    def generate(self, prompt, params, seed):
        self.calls.append("generate")
        return self.inner.generate(prompt, params, seed)

    def _generate_many(self, items):
        self.calls.append(("generate_many", len(items)))
        return [self.inner.generate(*item) for item in items]

    def prove(self, tokens):
        return self.inner.prove(tokens)


BATCH_SAMPLING = (
    SamplingParams(max_new_tokens=6),
    SamplingParams(temperature=1.0, top_k=50, max_new_tokens=7),
    SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=5),
)


@pytest.fixture(scope="module")
def batch(net) -> list[InferenceRequest]:
    return [
        net.request(
            request_id=bytes([0xBA, i]) * 8,
            prompt=tuple(range(200 + i, 215 + 2 * i)),
            sampling=s,
        )
        for i, s in enumerate(BATCH_SAMPLING)
    ]


@pytest.fixture(scope="module")
def one_by_one(net, fp32, batch) -> list[SignedCommitment]:
    core = ExecutorCore(make_key("batch-executor"), fp32, net.lm.model_id, NETWORK_ID, CHUNK_SIZE)
    return [core.on_execute(r) for r in batch]


@pytest.mark.parametrize("batched", [False, True])
def test_execute_many_commits_as_one_by_one(net, fp32, batch, one_by_one, batched):
    backend = CountingBackend(fp32, batched)
    core = ExecutorCore(
        make_key("batch-executor"), backend, net.lm.model_id, NETWORK_ID, CHUNK_SIZE
    )
    signed = core.execute_many(batch)
    assert [s.digest for s in signed] == [s.digest for s in one_by_one]
    assert signed == one_by_one
    if batched:
        assert backend.calls == [("generate_many", len(batch))]
    else:
        assert backend.calls == ["generate"] * len(batch)
    for s in signed:  # every commitment is held for openings
        assert core.get_run(s.digest).signed == s
    lengths = [len(s.commitment.output_tokens) for s in signed]
    assert lengths == [s.max_new_tokens for s in BATCH_SAMPLING]


def test_execute_many_checks_every_request_before_generating(net, fp32, batch):
    backend = CountingBackend(fp32, batched=True)
    core = ExecutorCore(make_key("batch-executor"), backend, net.lm.model_id, NETWORK_ID)
    foreign = dataclasses.replace(batch[1], network_id="another-network")
    with pytest.raises(Malformed):
        core.execute_many([batch[0], foreign])
    assert backend.calls == []


def test_execute_many_remembers_its_commitments(net, fp32, batch, one_by_one):
    # [COMMIT.5]: a request seen before gets the commitment already signed for it, whichever
    # path executed it; a second execution on a non-reproducible backend (vLLM) would sign a
    # second root for one request, which is equivocation.
    backend = CountingBackend(fp32, batched=True)
    core = ExecutorCore(
        make_key("batch-executor"), backend, net.lm.model_id, NETWORK_ID, CHUNK_SIZE
    )
    signed = core.execute_many(batch)
    backend.calls.clear()
    assert core.on_execute(batch[0]) == signed[0]
    assert backend.calls == []


# --- [EXEC.5] admission


@pytest.fixture(scope="module")
def auditor(net) -> AuditModel:
    return AuditModel(net.backend, net.lm.model_id, 4, 64)


def verifier_with(net: Network, label: str, thresholds: Thresholds) -> VerifierCore:
    return VerifierCore(
        make_key(label), net.backend, net.lm.model_id, 4, 64, NETWORK_ID, thresholds
    )


def test_default_verifiers_refuse_an_unadmitted_profile(net, bf16_executor, auditor):
    request = net.request(request_id=b"\xbe" * 16)
    run = net.run(request, bf16_executor)
    assert run.signed.commitment.profile == BF16
    assert net.verifiers[run.tally.committee[0]].thresholds.profiles == (DEFAULT_PROFILE,)
    assert len(run.votes) == 4
    for vote in run.votes:
        assert vote.verdict is Verdict.REJECT
        assert vote.reason == f"execution profile {BF16} is not admitted"
        assert vote.evidence is not None
        assert vote.evidence.check is EvidenceCheck.COMMITMENT
        result = audit_evidence(vote.evidence, auditor)
        assert result.proven, result.detail
        # An auditor that admits the profile finds nothing wrong with the commitment.
        admitting = Thresholds(others=(Thresholds(profile=BF16),))
        assert not audit_evidence(vote.evidence, auditor, admitting).proven


def test_a_verifier_that_admits_the_profile_judges_it(
    net, bf16_executor, bf16_request, bf16_signed
):
    t = Thresholds(others=(Thresholds(profile=BF16),))
    assert t.profiles == (FP32, BF16)
    v = verify(verifier_with(net, "admits-bf16", t), bf16_executor, bf16_request, bf16_signed)
    assert "not admitted" not in v.vote.reason
    assert v.responses  # it went on to challenge and measure
    if v.vote.evidence is not None:
        assert v.vote.evidence.check is not EvidenceCheck.COMMITMENT


def test_verifier_applies_the_bands_of_the_commitments_profile(
    net, bf16_executor, bf16_request, bf16_signed, auditor
):
    # Own (float32) bands tight, bf16 bands open: the bf16 commitment is accepted.
    lenient = Thresholds(others=(dataclasses.replace(WIDE_OPEN, profile=BF16),))
    v = verify(verifier_with(net, "lenient-bf16", lenient), bf16_executor, bf16_request,
               bf16_signed)
    assert v.vote.verdict is Verdict.ACCEPT, v.vote.reason
    # Own bands open, bf16 bands tight (the float32 defaults): float32 re-execution of bfloat16
    # arithmetic is far outside them, so the same commitment is rejected.
    strict = dataclasses.replace(WIDE_OPEN, others=(Thresholds(profile=BF16),))
    v = verify(verifier_with(net, "strict-bf16", strict), bf16_executor, bf16_request,
               bf16_signed)
    assert v.vote.verdict is Verdict.REJECT
    ev = v.vote.evidence
    assert ev is not None
    assert ev.check in (EvidenceCheck.EMBEDDING, EvidenceCheck.LAYER, EvidenceCheck.SAMPLER,
                        EvidenceCheck.SEQUENCE)
    # Auditors judge with the accused profile's bands, and cannot judge an unheld profile.
    assert audit_evidence(ev, auditor, strict).proven
    assert not audit_evidence(ev, auditor, lenient).proven
    with pytest.raises(CannotJudge):
        audit_evidence(ev, auditor, Thresholds())


def test_calibrated_bf16_bands_accept_an_honest_bf16_executor(
    net, bf16_executor, bf16_request, bf16_signed
):
    # [CAL.2]: the pair's bands accept honest bfloat16 work; [EXEC.5]: the pair is not admitted
    # (cheats escape every check across that precision gap), so the shipped table refuses it.
    path = get_thresholds_path(BF16, FP32)
    data = json.loads(path.read_text())
    assert data["admitted"] is False and data["uncovered"]
    shipped = load_thresholds(FP32)
    assert BF16 not in shipped.profiles
    shipped_verifier = verifier_with(net, "shipped", shipped)
    refused = verify(shipped_verifier, bf16_executor, bf16_request, bf16_signed)
    assert refused.vote.verdict is Verdict.REJECT
    assert "not admitted" in refused.vote.reason
    own = load_thresholds(FP32)
    table = dataclasses.replace(own, others=(*own.others, read_thresholds(path, BF16)))
    v = verify(verifier_with(net, "calibrated", table), bf16_executor, bf16_request, bf16_signed)
    assert v.vote.verdict is Verdict.ACCEPT, v.vote.reason


# --- Thresholds tables


def test_thresholds_select_and_require():
    a = Thresholds(profile="a-float32", layer=Band(1.0, 2.0))
    b = Thresholds(profile="b-bfloat16", layer=Band(3.0, 4.0))
    t = Thresholds(others=(a, b))
    assert t.profiles == (FP32, "a-float32", "b-bfloat16")
    assert t.select(FP32) is t
    assert t.select("b-bfloat16") is b
    assert t.require("a-float32") is a
    assert t.select("c-float16") is None
    with pytest.raises(CannotJudge, match="no calibrated bands"):
        t.require("c-float16")
    assert Thresholds().profiles == (DEFAULT_PROFILE,) == (FP32,)


CHECKS = ("layer", "embedding", "sampler", "sequence")


def band_file(scale: float, **overrides: dict[str, float]) -> str:
    """Return a calibration file with band ``i`` = ``(scale * (i + 1), scale * (i + 2))``."""
    bands = {
        name: {"accept_max": scale * (i + 1), "reject_min": scale * (i + 2)}
        for i, name in enumerate(CHECKS)
    }
    bands.update(overrides)
    return json.dumps({"backend": "x", "dtype": "y", "safety_factor": 10.0, **bands})


def band(scale: float, check: str) -> Band:
    i = CHECKS.index(check)
    return Band(scale * (i + 1), scale * (i + 2))


def test_load_thresholds_reads_own_and_other_profiles(tmp_path, monkeypatch):
    monkeypatch.setattr(thresholds_module, "THRESHOLDS_DIR", tmp_path)
    folder = tmp_path / "v-float32"
    folder.mkdir()
    (folder / "v-float32.json").write_text(band_file(1e-6))
    (folder / "e-bfloat16.json").write_text(band_file(1e-3))
    (tmp_path / "elsewhere").mkdir()  # another verifier profile's table is not read
    (tmp_path / "elsewhere" / "z-float16.json").write_text(band_file(1.0))
    t = load_thresholds("v-float32")
    assert t.profile == "v-float32"
    assert t.profiles == ("v-float32", "e-bfloat16")
    assert [getattr(t, c) for c in CHECKS] == [band(1e-6, c) for c in CHECKS]
    other = t.require("e-bfloat16")
    assert other.profile == "e-bfloat16"
    assert [getattr(other, c) for c in CHECKS] == [band(1e-3, c) for c in CHECKS]
    assert get_thresholds_path("e-bfloat16", "v-float32") == folder / "e-bfloat16.json"
    assert get_thresholds_path("v-float32") == folder / "v-float32.json"


def test_load_thresholds_without_own_file_is_refused_except_for_the_reference(
    tmp_path, monkeypatch
):
    # [EXEC.5]: a verifier profile with no calibration of its own kind admits nothing; only the
    # reference profile falls back to the built-in bands.
    monkeypatch.setattr(thresholds_module, "THRESHOLDS_DIR", tmp_path)
    (tmp_path / "v-bfloat16").mkdir()
    (tmp_path / "v-bfloat16" / "e-float32.json").write_text(band_file(1e-4))
    with pytest.raises(FileNotFoundError, match="v-bfloat16"):
        load_thresholds("v-bfloat16")
    with pytest.raises(FileNotFoundError):
        load_thresholds("nobody-float32")
    t = load_thresholds(DEFAULT_PROFILE)
    assert t.profiles == (DEFAULT_PROFILE,)
    assert (t.layer, t.embedding, t.sampler, t.sequence) == (
        Thresholds().layer,
        Thresholds().embedding,
        Thresholds().sampler,
        Thresholds().sequence,
    )


def test_a_band_with_accept_above_reject_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(thresholds_module, "THRESHOLDS_DIR", tmp_path)
    folder = tmp_path / "v-float32"
    folder.mkdir()
    bad = band_file(1e-6, layer={"accept_max": 2e-5, "reject_min": 1e-5})
    (folder / "e-bfloat16.json").write_text(bad)
    (folder / "v-float32.json").write_text(band_file(1e-6))
    with pytest.raises(ValueError):
        read_thresholds(folder / "e-bfloat16.json", "e-bfloat16")
    with pytest.raises(ValueError):
        load_thresholds("v-float32")


def test_a_null_band_switches_a_check_off_for_the_pair(tmp_path):
    # [CAL.2]: a check with no cheat within its reach for a profile pair always accepts.
    path = tmp_path / "e-bfloat16.json"
    path.write_text(band_file(1e-3, layer={"accept_max": None, "reject_min": None}))
    t = read_thresholds(path, "e-bfloat16")
    assert t.layer == Band(math.inf, math.inf)
    assert t.layer.classify(1e300) is Zone.ACCEPT
    assert t.sampler == band(1e-3, "sampler")


@pytest.mark.parametrize(
    "bounds",
    [
        {"accept_max": "1e-3", "reject_min": 1.0},
        {"accept_max": None, "reject_min": 1.0},  # off cannot sit below a reject bound
        {"accept_max": -1.0, "reject_min": 1.0},
    ],
)
def test_malformed_band_bounds_are_refused(tmp_path, bounds):
    path = tmp_path / "e-bfloat16.json"
    path.write_text(band_file(1e-3, sampler=bounds))
    with pytest.raises(ValueError):
        read_thresholds(path, "e-bfloat16")


def test_shipped_table_admits_the_reference_profile():
    t = load_thresholds()
    assert t.profile == DEFAULT_PROFILE == FP32
    assert FP32 in t.profiles
    data = json.loads(get_thresholds_path(FP32).read_text())
    assert t.layer == Band(data["layer"]["accept_max"], data["layer"]["reject_min"])
    assert t.sampler == Band(data["sampler"]["accept_max"], data["sampler"]["reject_min"])


def test_every_shipped_calibration_file_is_valid_and_filed_by_profile():
    files = sorted(thresholds_module.THRESHOLDS_DIR.glob("*/*.json"))
    assert files
    for path in files:
        data = json.loads(path.read_text())
        executor = data.get("executor_profile") or f"{data['backend']}-{data['dtype']}"
        assert path.stem == executor, path
        if "verifier_profile" in data:
            assert path.parent.name == data["verifier_profile"], path
        t = read_thresholds(path, path.stem)
        assert t.profile == path.stem
        marked = data.get("admitted", True) is not False
        try:
            admitted = path.stem in load_thresholds(path.parent.name).profiles
        except FileNotFoundError:  # the verifier profile does not admit its own kind
            own = path.parent / f"{path.parent.name}.json"
            assert own.exists() and not is_admitted(own), path
            continue
        assert admitted is marked, path


def test_a_pair_not_admitted_is_left_out_of_the_table(tmp_path, monkeypatch):
    # [EXEC.5]: calibration marks a pair not admitted when a cheat escapes every check; its file
    # documents the pair but admits nothing, for another profile or the verifier's own.
    monkeypatch.setattr(thresholds_module, "THRESHOLDS_DIR", tmp_path)
    folder = tmp_path / "v-float32"
    folder.mkdir()
    (folder / "v-float32.json").write_text(band_file(1e-6))
    refused = json.loads(band_file(1e-4))
    (folder / "e-bfloat16.json").write_text(json.dumps({**refused, "admitted": False}))
    (folder / "f-float16.json").write_text(json.dumps({**refused, "admitted": True}))
    assert load_thresholds("v-float32").profiles == ("v-float32", "f-float16")
    (folder / "v-float32.json").write_text(json.dumps({**refused, "admitted": False}))
    with pytest.raises(FileNotFoundError, match="own verifiers"):
        load_thresholds("v-float32")

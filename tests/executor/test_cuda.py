"""The torch backend on a CUDA GPU: profiles, bit-exact re-execution within a profile, the float32
head, the torch sampler on the device, and a GPU network of executor and verifiers.
[EXEC.4], [EXEC.5], [EXEC.6], [SAMPLE.6], [SAMPLE.7]

Needs a CUDA GPU (marker ``gpu``); skipped without one. The tiny model throughout.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from bft.assembler import Outcome, get_final_outcome
from bft.evidence import AuditModel, audit_evidence
from bft.measure import Thresholds, compute_rel_errors
from bft.messages import EvidenceCheck, InferenceRequest, SamplingParams, Verdict
from bft.thresholds import get_thresholds_path, load_thresholds
from bft.verifier import VerifierCore
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from executor.model import LoadedModel
from executor.sampler import sample_token
from executor.sampler_torch import ProtocolSamplerRows, SamplerRow, sample_token_torch
from simnet.executors import make_byzantine_executor
from tests.support import CHUNK_SIZE, NETWORK_ID, Network, get_network, get_tiny, make_key

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOKENS = list(range(100, 140))  # 40 positions
PROMPT = TOKENS[:24]
SEED = b"\x0c" * 32
CUDA_BF16 = "torch-cuda-bfloat16"
EVERYTHING = {"layers_per_verifier": 4, "positions_per_verifier": 8, "sequence_check_ppm": 10**6}


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return get_tiny()[0]


@pytest.fixture(scope="module")
def cpu() -> TorchBackend:
    return get_tiny()[1]


@pytest.fixture(scope="module")
def bf16(lm) -> TorchBackend:
    return TorchBackend(lm.model, device="cuda", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def fp32(lm) -> TorchBackend:
    return TorchBackend(lm.model, device="cuda")


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def backend(request, fp32, bf16) -> TorchBackend:
    return fp32 if request.param == "float32" else bf16


def bf16_representable(x: np.ndarray) -> bool:
    t = torch.from_numpy(x)
    return bool(torch.equal(t.to(torch.bfloat16).to(torch.float32), t))


# --- [EXEC.4], [EXEC.6] profile and settings


def test_cuda_backends_name_their_profiles(bf16, fp32, lm):
    assert bf16.info.profile == CUDA_BF16
    assert fp32.info.profile == "torch-cuda-float32"
    assert bf16.device.type == "cuda"
    assert next(bf16.model.parameters()).device.type == "cuda"
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    # The caller's model stays where and what it was.
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in lm.model.parameters())
    parts = bf16.info.settings.split(";")
    print("settings:", bf16.info.settings)
    assert len(bf16.info.settings) <= 256
    assert f"torch={torch.__version__}" in parts
    assert f"device={torch.cuda.get_device_name(bf16.device)}" in parts
    major, minor = torch.cuda.get_device_capability(bf16.device)
    assert f"cc={major}.{minor}" in parts


def test_prove_returns_float32_states_in_the_compute_dtype(backend):
    states = backend.prove(TOKENS)
    assert states.dtype == np.float32
    assert states.shape == (5, len(TOKENS), 64)
    assert np.isfinite(states).all()
    assert bf16_representable(states) == (backend.info.dtype == "bfloat16")
    assert np.array_equal(backend.prove(TOKENS), states)  # deterministic


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_run_layer_reproduces_the_prefill_bit_for_bit(backend, layer):
    states = backend.prove(TOKENS)
    assert np.array_equal(backend.run_layer(layer, states[layer - 1]), states[layer])


def test_embed_and_final_states_match_the_prefill(backend):
    states = backend.prove(TOKENS)
    assert np.array_equal(backend.embed(TOKENS), states[0])
    assert np.array_equal(backend.final_states(TOKENS), states[-1])


def test_cpu_float32_re_execution_of_gpu_bf16_layers(bf16, fp32, cpu):
    # A float32 CPU verifier re-executing a GPU executor's layers: a finite, reported error
    # (the bands for the pair come from calibration, [CAL.2]).
    for gpu in (bf16, fp32):
        states = gpu.prove(TOKENS)
        errs = []
        for b in range(1, 5):
            rel = compute_rel_errors(cpu.run_layer(b, states[b - 1]), states[b], states[b - 1])
            errs.append(float(rel.max()))
        emb = compute_rel_errors(states[0], cpu.embed(TOKENS), np.zeros_like(states[0]))
        print(f"{gpu.info.profile} re-executed by {cpu.info.profile}: layer errors", errs,
              f"embedding {float(emb.max()):.3g}")
        assert all(np.isfinite(errs))
        if gpu is bf16:
            assert min(errs) > 0  # another arithmetic: the profiles do differ


# --- [SAMPLE.6] the float32 head on the GPU


def test_head_is_the_float32_models_in_every_cuda_profile(bf16, fp32, cpu):
    h = fp32.prove(TOKENS)[-1]
    logits = bf16.final_logits(h)
    assert logits.dtype == np.float32
    assert np.array_equal(logits, fp32.final_logits(h))
    ref = cpu.final_logits(h)
    rel = float(np.abs(logits - ref).max() / np.abs(ref).max())
    print(f"cuda vs cpu float32 head: relative difference {rel:.3g}")
    assert np.isfinite(rel)


@pytest.mark.parametrize(
    "params", [SamplingParams(max_new_tokens=8), SamplingParams(temperature=1.0, max_new_tokens=8)]
)
def test_generation_on_the_gpu_is_reproducible(backend, params):
    out = backend.generate(PROMPT, params, SEED)
    assert len(out) == 8
    assert backend.generate(PROMPT, params, SEED) == out
    logits = backend.final_logits(backend.prove(PROMPT + out)[-1])
    agree = sum(
        tok == sample_token(logits[len(PROMPT) + i - 1], params, SEED, len(PROMPT) + i)
        for i, tok in enumerate(out)
    )
    print(f"{backend.info.profile} {params.temperature}: {agree}/8 tokens are the proof's choice")


# --- [SAMPLE.7] the torch sampler on the device


def test_torch_sampler_on_cuda_equals_the_numpy_sampler():
    rng = np.random.default_rng(11)
    rules = [SamplingParams()] + [
        SamplingParams(temperature=t, top_k=k, top_p=p)
        for t, k, p in itertools.product((0.3, 0.8, 1.5), (0, 1, 5, 50), (1.0, 0.9, 0.5))
    ]
    for n in range(4):
        x = (rng.standard_normal(49152) * (1 + 2 * n)).astype(np.float32)
        on_gpu = torch.from_numpy(x).cuda()
        for params in rules:
            pos = int(rng.integers(0, 4096))
            assert sample_token_torch(on_gpu, params, SEED, pos) == sample_token(
                x, params, SEED, pos
            ), (n, params)


def test_protocol_rows_apply_on_a_cuda_batch():
    rng = np.random.default_rng(12)
    logits = torch.from_numpy(rng.standard_normal((3, 49152)).astype(np.float32)).cuda()
    original = logits.clone()
    params = SamplingParams(temperature=0.8, top_p=0.9)
    rows = ProtocolSamplerRows()
    rows.add(1, SamplerRow(params, SEED, 30, [1, 2, 3]))
    rows.apply(logits)
    want = sample_token(original[1].cpu().numpy(), params, SEED, 33)
    assert int(torch.argmax(logits[1])) == want
    assert torch.isneginf(logits[1]).sum() == 49152 - 1
    assert torch.equal(logits[0], original[0])
    assert torch.equal(logits[2], original[2])


# --- [EXEC.5] a network of GPU executor and GPU verifiers


def cuda_bands() -> Thresholds | None:
    """Return the calibrated table of a torch-cuda-bfloat16 verifier, if shipped."""
    if not get_thresholds_path(CUDA_BF16).exists():
        return None
    table = load_thresholds(CUDA_BF16)
    assert table.profile == CUDA_BF16
    return table


def gpu_network(backend: TorchBackend, thresholds: Thresholds) -> Network:
    base = get_network()
    lm = base.lm
    verifiers = {
        k.public_key: VerifierCore(k, backend, lm.model_id, 4, 64, NETWORK_ID, thresholds)
        for k in base.validator_keys
    }
    key = make_key("cuda-executor")
    executor = ExecutorCore(key, backend, lm.model_id, NETWORK_ID, CHUNK_SIZE)
    return dataclasses.replace(
        base, backend=backend, verifiers=verifiers, executor_key=key, executor=executor
    )


SAMPLINGS = (
    SamplingParams(max_new_tokens=8),
    SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8),
)


def requests_of(net: Network, tag: int, n: int, **policy: int) -> list[InferenceRequest]:
    return [
        net.request(request_id=bytes([tag, i]) * 8, sampling=SAMPLINGS[i % 2], **policy)
        for i in range(n)
    ]


def test_honest_cuda_bf16_run_is_certified(bf16):
    table = cuda_bands()
    if table is None:
        pytest.skip(f"no calibration {get_thresholds_path(CUDA_BF16)} yet")
    net = gpu_network(bf16, table)
    for request in requests_of(net, 0xC0, 3, **EVERYTHING):
        run = net.run(request)
        assert run.signed.commitment.profile == CUDA_BF16
        assert run.signed.commitment.settings == bf16.info.settings
        assert [v.verdict for v in run.votes] == [Verdict.ACCEPT] * 4, [
            v.reason for v in run.votes
        ]
        assert get_final_outcome(run.tally) is Outcome.CERTIFIED


def test_perturbed_layer_on_cuda_is_rejected(bf16, lm):
    # Calibrated bands if shipped, else the built-in ones for this profile: honest
    # re-execution within the profile is bit-exact, and the check must name the layer.
    table = cuda_bands() or Thresholds(profile=CUDA_BF16)
    net = gpu_network(bf16, table)
    ex = make_byzantine_executor(
        "perturb-layer",
        make_key("cuda-perturb"),
        lm.model,
        lm.model_id,
        NETWORK_ID,
        CHUNK_SIZE,
        device="cuda",
        dtype=torch.bfloat16,
    )
    auditor = AuditModel(bf16, lm.model_id, 4, 64)
    layer_rejects = 0
    for request in requests_of(net, 0xC1, 3):
        run = net.run(request, ex)
        assert run.signed.commitment.profile == CUDA_BF16
        rejects = [v for v in run.votes if v.verdict is Verdict.REJECT]
        for vote in rejects:
            # The layer check, or the sketch check when drawn (the lie reaches boundary L).
            assert vote.evidence is not None
            assert vote.evidence.check in (EvidenceCheck.LAYER, EvidenceCheck.SEQUENCE)
            assert audit_evidence(vote.evidence, auditor, table).proven, vote.reason
            layer_rejects += vote.evidence.check is EvidenceCheck.LAYER
        if rejects:
            assert get_final_outcome(run.tally) is Outcome.REJECTED
    assert layer_rejects >= 1

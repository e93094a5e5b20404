"""The vLLM executor backend on SmolLM2: batched generation with the protocol's sampler inside
vLLM, torch proofs on the same GPU, and the commitments it signs. [EXEC.7], [SAMPLE.7], [EXEC.6]

Needs vLLM (``pip install '.[gpu]'``) and a CUDA GPU; skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The processor's row state lives in this process (executor.vllm_backend sets this too, but
# importorskip below imports vLLM first).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
vllm = pytest.importorskip("vllm")

from bft.measure import compute_length_violation  # noqa: E402
from bft.messages import InferenceRequest, SamplingParams, Verdict  # noqa: E402
from bft.thresholds import get_thresholds_path, load_thresholds  # noqa: E402
from bft.verifier import VerifierCore  # noqa: E402
from executor.core import ExecutorCore  # noqa: E402
from executor.model import LoadedModel, get_smollm2_dir  # noqa: E402
from executor.sampler_torch import encode_protocol_args  # noqa: E402
from executor.vllm_backend import VllmBackend  # noqa: E402
from tests.support import NETWORK_ID, Network, get_network, make_key, verify  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "vllm-cuda-bfloat16"
VERIFIER_PROFILE = "torch-cuda-bfloat16"
QUESTIONS = (
    "Write a short poem about the sea.",
    "Explain how a bicycle stays upright.",
    "What is the capital of France? Answer in one word.",
    "Name three primary colours, nothing else.",
)
GREEDY = SamplingParams(max_new_tokens=16, stop_at_eos=False)
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=16, stop_at_eos=False)


def chat_prompt(lm: LoadedModel, text: str) -> list[int]:
    ids = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return [int(i) for i in ids]


# --- [SAMPLE.7] exactness of the processor inside vLLM (its own engine, in its own process)

EXACTNESS_WORKER = r"""
import json, sys
import numpy as np
spec = json.loads(sys.argv[1])
from executor.vllm_backend import VerihiveSampler  # sets VLLM_ENABLE_V1_MULTIPROCESSING=0
from vllm import LLM
from vllm import SamplingParams as VllmSamplingParams
from vllm.inputs import TokensPrompt
from bft.messages import SamplingParams
from executor.sampler import sample_token
from executor.sampler_torch import encode_protocol_args
try:
    llm = LLM(
        model=spec["model_dir"], dtype="bfloat16", seed=0, skip_tokenizer_init=True,
        generation_config="vllm", gpu_memory_utilization=0.25, enforce_eager=True,
        max_model_len=1024, logprobs_mode="raw_logits", max_logprobs=-1,
        logits_processors=[VerihiveSampler],
        hf_overrides={"architectures": ["LlamaForCausalLM"]},
    )
except (TypeError, ValueError) as exc:  # engine arguments of another vLLM release
    print(json.dumps({"skip": f"vLLM refuses raw-logit logprobs of the whole vocabulary: {exc}"}))
    sys.exit(0)
cases = spec["cases"]
params = [SamplingParams(**c["params"]) for c in cases]
seeds = [bytes.fromhex(c["seed"]) for c in cases]
vparams = [
    VllmSamplingParams(
        temperature=0.0, max_tokens=p.max_new_tokens, ignore_eos=True, detokenize=False,
        logprobs=-1, extra_args=encode_protocol_args(p, s),
    )
    for p, s in zip(params, seeds)
]
prompts = [TokensPrompt(prompt_token_ids=c["prompt"]) for c in cases]
outs = llm.generate(prompts, vparams, use_tqdm=False)
vocab = spec["vocab"]
checked, off_argmax, mismatches, short_rows = 0, 0, [], 0
for c, p, s, o in zip(cases, params, seeds, outs):
    tokens = list(o.outputs[0].token_ids)
    rows = o.outputs[0].logprobs
    if rows is None or len(rows) != len(tokens):
        print(json.dumps({"skip": "vLLM returned no per-token logprobs"}))
        sys.exit(0)
    for i, (tok, row) in enumerate(zip(tokens, rows)):
        logits = np.full(vocab, -np.inf, dtype=np.float32)
        for tid, lp in row.items():
            if tid < vocab:
                logits[tid] = lp.logprob
        short_rows += len(row) < vocab
        pos = len(c["prompt"]) + i
        want = sample_token(logits, p, s, pos)
        checked += 1
        off_argmax += want != int(np.argmax(logits))
        if tok != want:
            mismatches.append({"case": c["name"], "i": i, "emitted": tok, "protocol": want})
print(json.dumps({"checked": checked, "off_argmax": off_argmax, "mismatches": mismatches,
                  "short_rows": short_rows}))
"""


def test_processor_emits_the_protocol_token_from_vllms_own_logits(smollm2):
    # Placed first: its engine runs in a child process while this one holds no vLLM engine.
    prompts = [chat_prompt(smollm2, q) for q in QUESTIONS]
    cases = [
        {"name": f"{kind}-{n}", "prompt": prompts[n], "params": dataclasses.asdict(p),
         "seed": bytes([n, len(kind)]).hex() * 16}
        for n in range(2)
        for kind, p in (("greedy", GREEDY), ("sampled", SAMPLED))
    ]
    spec = {"model_dir": str(get_smollm2_dir()), "vocab": smollm2.model.config.vocab_size,
            "cases": cases}
    proc = subprocess.run(
        [sys.executable, "-c", EXACTNESS_WORKER, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(ROOT)},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    print("exactness inside vLLM:", result)
    assert result["short_rows"] == 0  # every row held the whole vocabulary
    assert result["checked"] == 4 * 16
    assert result["off_argmax"] > 0  # sampled rows were steered off vLLM's own argmax
    assert result["mismatches"] == []


# --- the backend


@pytest.fixture(scope="module")
def backend(smollm2):
    b = VllmBackend(get_smollm2_dir(), smollm2.model, dtype=torch.bfloat16)
    yield b
    del b.llm
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def net(smollm2, backend) -> Network:
    """The test network with SmolLM2 and verifiers of profile torch-cuda-bfloat16 (no bands yet:
    tests that judge give them theirs)."""
    base = get_network()
    key = make_key("vllm-executor")
    executor = ExecutorCore(key, backend, smollm2.model_id, NETWORK_ID, 16)
    return dataclasses.replace(base, lm=smollm2, executor_key=key, executor=executor)


@pytest.fixture(scope="module")
def requests(smollm2, net) -> list[InferenceRequest]:
    """Four requests: two prompts, each greedy and sampled (fixed length, 16 tokens)."""
    prompts = [chat_prompt(smollm2, q) for q in QUESTIONS[:2]]
    return [
        net.request(request_id=bytes([0x70, n, k]) * 5 + b"\x00", prompt=tuple(prompts[n]),
                    sampling=s)
        for n in range(2)
        for k, s in enumerate((GREEDY, SAMPLED))
    ]


@pytest.fixture(scope="module")
def outputs(backend, requests) -> list[list[int]]:
    items = [(list(r.prompt_tokens), r.sampling, r.sampling_seed()) for r in requests]
    return backend.generate_many(items)


def test_backend_names_its_profile_and_settings(backend):
    info = backend.info
    assert info.name == "vllm-cuda"
    assert info.profile == PROFILE
    assert (info.num_layers, info.hidden_size, info.vocab_size) == (30, 576, 49152)
    assert len(info.settings) <= 256
    assert info.settings.startswith(f"vllm={vllm.__version__};")
    assert "vllm=0.24" in info.settings
    assert "prover[torch=" in info.settings
    print("settings:", info.settings)


def test_vllm_parameters_carry_the_protocol_rule(backend):
    seed = b"\x01" * 32
    sp = backend.to_vllm(SAMPLED, seed)
    assert sp.temperature == 0.0
    assert sp.max_tokens == 16
    assert sp.ignore_eos
    assert not sp.stop_token_ids
    assert sp.extra_args == encode_protocol_args(SAMPLED, seed)
    stopping = backend.to_vllm(dataclasses.replace(SAMPLED, stop_at_eos=True), seed)
    assert list(stopping.stop_token_ids) == sorted(backend.eos_ids)


def test_generate_many_returns_every_token(requests, outputs):
    assert [len(o) for o in outputs] == [16] * 4
    for r, out in zip(requests, outputs, strict=True):
        assert compute_length_violation(r, tuple(out), frozenset()) is None


def test_generation_stops_right_after_an_end_of_sequence_token(smollm2, net, backend):
    sampling = [
        SamplingParams(max_new_tokens=64),
        SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=64),
    ]
    reqs = [
        net.request(request_id=bytes([0x71, n, k]) * 5 + b"\x00",
                    prompt=tuple(chat_prompt(smollm2, q)), sampling=s)
        for n, q in enumerate(QUESTIONS[2:])
        for k, s in enumerate(sampling)
    ]
    outs = backend.generate_many([(list(r.prompt_tokens), r.sampling, r.sampling_seed())
                                  for r in reqs])
    ended = 0
    for r, out in zip(reqs, outs, strict=True):
        assert compute_length_violation(r, tuple(out), backend.eos_ids) is None, out
        assert not any(t in backend.eos_ids for t in out[:-1])
        ended += out[-1] in backend.eos_ids
    assert ended >= 1  # short answers: the stop rule was exercised


def test_sampler_margins_of_vllms_tokens_on_the_proof(backend, requests, outputs):
    # The verifier recomputes each token's margin from the committed boundary-L state through
    # the float32 head ([SAMPLE.6]); vLLM sampled from its own logits.
    margins = {"greedy": [], "sampled": []}
    for r, out in zip(requests, outputs, strict=True):
        prompt = list(r.prompt_tokens)
        last = backend.prove(prompt + out)[-1]
        for i, tok in enumerate(out):
            p = len(prompt) + i
            kind = "greedy" if r.sampling.temperature == 0 else "sampled"
            margins[kind].append(backend.sampler_margin(last[p - 1][None], r, p, tok))
    worst = max(max(m) for m in margins.values())
    print({k: f"max {max(v):.3g}, nonzero {sum(x > 0 for x in v)}/{len(v)}"
           for k, v in margins.items()})
    path = get_thresholds_path(PROFILE, VERIFIER_PROFILE)
    if not path.exists():
        pytest.skip(f"no calibration {path} yet (largest margin {worst:.3g})")
    band = load_thresholds(VERIFIER_PROFILE).require(PROFILE).sampler
    assert worst <= band.accept_max, (worst, band)


def test_executor_signs_the_vllm_profile(net, backend, requests, outputs):
    signed = net.executor.execute_many(requests[:2])
    for s, r in zip(signed, requests[:2], strict=True):
        s.check()
        c = s.commitment
        assert (c.backend, c.dtype) == ("vllm-cuda", "bfloat16")
        assert c.profile == PROFILE
        assert c.settings == backend.info.settings
        assert "vllm=0.24" in c.settings
        assert len(c.output_tokens) == 16
        assert c.request_digest == r.digest()


def test_a_calibrated_torch_cuda_verifier_accepts_honest_vllm_commitments(
    smollm2, net, backend, requests
):
    if not get_thresholds_path(PROFILE, VERIFIER_PROFILE).exists():
        pytest.skip(f"no calibration for {PROFILE} judged by {VERIFIER_PROFILE} yet")
    table = load_thresholds(VERIFIER_PROFILE)
    cfg = smollm2.model.config
    verifier = VerifierCore(
        make_key("vllm-judge"),
        backend.prover,  # torch on the same GPU in bfloat16: a torch-cuda-bfloat16 verifier
        smollm2.model_id,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        NETWORK_ID,
        table,
    )
    for r in requests:
        signed = net.executor.on_execute(r)
        v = verify(verifier, net.executor, r, signed)
        assert v.vote.verdict is Verdict.ACCEPT, v.vote.reason

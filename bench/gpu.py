"""Verified generation on a GPU against plain generation on the same GPU. Issue [gpu].

For each backend (``torch``: :class:`TorchBackend` on CUDA; ``vllm``: :class:`VllmBackend`),
batch size and temperature, on the same model, GPU, dtype, prompts and output length:

- *plain*: generation alone, by the library's own sampler (HF ``generate`` for torch; vLLM
  without the protocol's logits processor, in a separate process, once with vLLM's defaults and
  once with the settings the verified path uses, async scheduling off);
- *verified*: ``ExecutorCore.execute_many``: generation with the protocol's seeded sampler, then
  for each request the proving prefill, tiles, Merkle tree, sketch and signature;
- overhead ratio = verified / plain (target <= 1.05), throughput (output tokens/s), latency;
- the commitment's share of generation; per-verifier verification time (a committee of four
  verifiers of the executor's own profile on the same GPU, and one torch CPU float32 verifier)
  as a fraction of generation, with their verdicts.

Run on the GPU machine: ``python3 -m bench.gpu [--backends torch vllm] [--batches 1 8 32]``.
It also runs on a CPU (``--device cpu --model tiny --backends torch``) as a smoke test.
Prints a table and writes ``bench/results/gpu-<device name>-<backends>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy, compute_request
from bft.crypto import SigningKey
from bft.measure import Thresholds
from bft.messages import InferenceRequest, SamplingParams, SignedCommitment, Vote
from bft.thresholds import get_thresholds_path, load_thresholds, read_thresholds
from bft.validators import ValidatorSet
from bft.verifier import Session, VerifierCore
from executor.backend import DTYPES, Backend, BatchingBackend, TorchBackend
from executor.core import ExecutorCore
from executor.model import LoadedModel, get_smollm2_dir, load_smollm2, load_tiny

NETWORK = "bench-gpu"
PROMPTS = [
    "Write a long story about a lighthouse keeper and the sea.",
    "Explain how a steam engine works, step by step.",
    "Describe the water cycle to a ten-year-old.",
    "List the planets of the solar system and one fact about each.",
    "What are the main causes of the French Revolution?",
    "Give me a detailed recipe for sourdough bread.",
    "Summarise the plot of Hamlet.",
    "How do vaccines train the immune system?",
]


def describe_gpu() -> dict[str, Any]:
    """Return the GPU, driver and library versions (empty without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    out: dict[str, Any] = {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        )
        out["driver"] = smi.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        import vllm

        out["vllm"] = vllm.__version__
    except ImportError:
        out["vllm"] = None
    return out


def sync() -> None:
    """Wait for the GPU (device work is asynchronous)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_prompts(loaded: LoadedModel, batch: int) -> list[list[int]]:
    """Return ``batch`` chat prompts (cycling through :data:`PROMPTS`, numbered)."""
    out = []
    for i in range(batch):
        text = PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" (variant {i})")
        ids = loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        out.append(list(ids))
    return out


def make_requests(
    loaded: LoadedModel,
    prompts: Sequence[list[int]],
    sampling: SamplingParams,
    validators: ValidatorSet,
) -> list[InferenceRequest]:
    """Return one request per prompt (fresh ids, so nothing is answered from memory)."""
    policy = AssemblerPolicy(NETWORK)
    return [
        compute_request(policy, os.urandom(16), loaded.model_id, tuple(p), sampling, validators)
        for p in prompts
    ]


def sampling_for(temperature: float, tokens: int) -> SamplingParams:
    """Return the protocol sampling parameters of a run (fixed length: no EOS stop)."""
    top_p = 1.0 if temperature == 0 else 0.95
    return SamplingParams(temperature, 0, top_p, tokens, stop_at_eos=False)


# -- plain generation ------------------------------------------------------------------------


@torch.inference_mode()
def plain_torch(
    model: Any, prompts: Sequence[list[int]], sampling: SamplingParams, device: torch.device
) -> float:
    """Return the seconds HF ``generate`` takes for ``prompts`` one by one (no verification)."""
    t0 = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p], device=device)
        kwargs: dict[str, Any] = {"do_sample": False}
        if sampling.temperature > 0:
            kwargs = {"do_sample": True, "temperature": sampling.temperature, "top_p": 0.95}
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.max_new_tokens,
            pad_token_id=model.config.eos_token_id,
            **kwargs,
        )
    sync()
    return time.perf_counter() - t0


def plain_vllm_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time plain vLLM (no logits processor) on ``spec``'s batches; runs in its own process."""
    from vllm import LLM
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = {}
    if spec["async_scheduling"] is not None:
        kwargs["async_scheduling"] = spec["async_scheduling"]
    llm = LLM(
        model=spec["model_dir"],
        dtype=spec["dtype"],
        seed=0,
        skip_tokenizer_init=True,
        generation_config="vllm",
        gpu_memory_utilization=spec["gpu_memory_utilization"],
        max_model_len=4096,
        hf_overrides={"architectures": ["LlamaForCausalLM"]},
        **kwargs,
    )
    times: dict[str, list[float]] = {}
    for case in spec["cases"]:
        params = VllmSamplingParams(
            temperature=case["temperature"],
            top_p=1.0 if case["temperature"] == 0 else 0.95,
            max_tokens=case["tokens"],
            ignore_eos=True,
            detokenize=False,
            seed=None,
        )
        prompts = [TokensPrompt(prompt_token_ids=p) for p in case["prompts"]]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        runs = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            runs.append(time.perf_counter() - t0)
            assert all(len(o.outputs[0].token_ids) == case["tokens"] for o in outs)
        times[case["key"]] = runs
    return {"times": times}


def plain_vllm(spec: dict[str, Any]) -> dict[str, list[float]]:
    """Run :func:`plain_vllm_worker` in a fresh process and return its timings."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--plain-vllm-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"plain vLLM worker failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    return dict(json.loads(line)["times"])


# -- verified generation ---------------------------------------------------------------------


def timed_execute_many(
    executor: ExecutorCore, requests: Sequence[InferenceRequest]
) -> tuple[float, float, list[SignedCommitment]]:
    """Return (generation s, commitment s, commitments) of one batched verified execution."""
    items = [(list(r.prompt_tokens), r.sampling, r.sampling_seed()) for r in requests]
    backend = executor.backend
    t0 = time.perf_counter()
    if isinstance(backend, BatchingBackend):
        outputs = backend.generate_many(items)
    else:
        outputs = [backend.generate(*item) for item in items]
    sync()
    t1 = time.perf_counter()
    signed = [executor.commit(r, out) for r, out in zip(requests, outputs, strict=True)]
    sync()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, signed


def verify_once(
    verifier: VerifierCore,
    executor: ExecutorCore,
    request: InferenceRequest,
    signed: SignedCommitment,
) -> tuple[float, Vote]:
    """Return the verifier's own seconds (openings excluded) and its vote."""
    t0 = time.perf_counter()
    result = verifier.start(request, signed)
    spent = time.perf_counter() - t0
    while isinstance(result, Session):
        response = executor.on_open(signed.digest, result.challenge.required_tiles())
        t1 = time.perf_counter()
        result = verifier.on_openings(result, response)
        sync()
        spent += time.perf_counter() - t1
    return spent, result


def make_verifiers(
    loaded: LoadedModel, backend: Backend, thresholds: Thresholds, n: int
) -> list[VerifierCore]:
    """Return ``n`` verifier cores on ``backend`` with ``thresholds``."""
    return [
        VerifierCore(
            SigningKey.generate(),
            backend,  # type: ignore[arg-type]
            loaded.model_id,
            backend.info.num_layers,
            backend.info.hidden_size,
            NETWORK,
            thresholds,
        )
        for _ in range(n)
    ]


def get_bands(verifier_profile: str, executor_profile: str) -> tuple[Thresholds, str]:
    """Return a verifier table that admits ``executor_profile``, and where its bands come from.

    ``"admitted"``: the shipped table admits the pair; ``"calibrated, not admitted"``: the pair's
    calibration file exists but marks it not admitted, and its bands are used so the cost and
    the verdicts can still be measured; ``"uncalibrated"``: the built-in bands, verdicts
    meaningless.
    """
    try:
        table = load_thresholds(verifier_profile)
    except FileNotFoundError:
        table = Thresholds(profile=verifier_profile)
    if executor_profile in table.profiles:
        return table, "admitted"
    path = get_thresholds_path(executor_profile, verifier_profile)
    if path.exists():
        extra, source = read_thresholds(path, executor_profile), "calibrated, not admitted"
    else:
        extra, source = Thresholds(profile=executor_profile), "uncalibrated"
    if executor_profile == verifier_profile:
        return extra, source
    return replace(table, others=(*table.others, extra)), source


def build_backend(name: str, loaded: LoadedModel, args: argparse.Namespace) -> Backend:
    """Return the executor backend ``name`` on the benchmark's device and dtype."""
    dtype = DTYPES[args.dtype]
    if name == "torch":
        return TorchBackend(loaded.model, device=args.device, dtype=dtype)
    from executor.vllm_backend import VllmBackend

    return VllmBackend(
        get_smollm2_dir(),
        loaded.model,
        dtype=dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )


def run_backend(name: str, loaded: LoadedModel, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Return the result rows of backend ``name`` over every batch size and temperature."""
    batches = [1] if name == "torch" else args.batches  # torch generates one request at a time
    cases = [(b, t) for b in batches for t in args.temperatures]
    plain: dict[str, dict[str, list[float]]] = {}
    if name == "vllm":  # first, while this process holds no GPU memory yet
        spec_cases = []
        for b, t in cases:
            prompts = make_prompts(loaded, b)
            spec_cases.append(
                {"key": f"{b}/{t}", "temperature": t, "tokens": args.tokens, "prompts": prompts}
            )
        base = {
            "model_dir": str(get_smollm2_dir()),
            "dtype": args.dtype,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "repeats": args.repeats,
            "cases": spec_cases,
        }
        plain["defaults"] = plain_vllm({**base, "async_scheduling": None})
        plain["async off"] = plain_vllm({**base, "async_scheduling": False})
    backend = build_backend(name, loaded, args)
    profile = backend.info.profile
    keys = [SigningKey.generate() for _ in range(4)]
    validators = ValidatorSet.of_keys(NETWORK, (k.public_key for k in keys))
    executor = ExecutorCore(SigningKey.generate(), backend, loaded.model_id, NETWORK)
    same, same_bands = get_bands(profile.replace("vllm-", "torch-"), profile)
    gpu_verifiers = make_verifiers(loaded, TorchBackend(
        loaded.model, device=args.device, dtype=DTYPES[args.dtype]
    ), same, 4)
    cpu_table, cpu_bands = get_bands("torch-cpu-float32", profile)
    cpu_verifier = make_verifiers(loaded, TorchBackend(loaded.model), cpu_table, 1)[0]
    rows = []
    for b, t in cases:
        prompts = make_prompts(loaded, b)
        sampling = sampling_for(t, args.tokens)
        timed_execute_many(executor, make_requests(loaded, prompts, sampling, validators))
        gen, com, walls = [], [], []
        signed: list[SignedCommitment] = []
        requests: list[InferenceRequest] = []
        for _ in range(args.repeats):
            requests = make_requests(loaded, prompts, sampling, validators)
            g, c, signed = timed_execute_many(executor, requests)
            gen.append(g)
            com.append(c)
            walls.append(g + c)
        row: dict[str, Any] = {
            "backend": name,
            "profile": profile,
            "settings": backend.info.settings,
            "batch": b,
            "temperature": t,
            "tokens": args.tokens,
            "verified_generate_s": statistics.median(gen),
            "verified_commit_s": statistics.median(com),
            "verified_s": statistics.median(walls),
        }
        if name == "torch":
            model = backend.model  # type: ignore[attr-defined]
            plain_torch(model, prompts, sampling, torch.device(args.device))  # warm-up
            runs = [
                plain_torch(model, prompts, sampling, torch.device(args.device))
                for _ in range(args.repeats)
            ]
            row["plain_s"] = {"HF generate": statistics.median(runs)}
        else:
            row["plain_s"] = {k: statistics.median(v[f"{b}/{t}"]) for k, v in plain.items()}
        row["overhead"] = {k: row["verified_s"] / v for k, v in row["plain_s"].items()}
        row["tokens_per_s"] = b * args.tokens / row["verified_s"]
        row["plain_tokens_per_s"] = {k: b * args.tokens / v for k, v in row["plain_s"].items()}
        row["commit_fraction"] = row["verified_commit_s"] / row["verified_generate_s"]
        # Verification of the batch's first commitment, against the batch's generation time
        # (the request's latency) and against its share of it (the throughput view).
        gen_one = row["verified_generate_s"]
        g_times, g_votes = [], []
        for v in gpu_verifiers:
            spent, vote = verify_once(v, executor, requests[0], signed[0])
            g_times.append(spent)
            g_votes.append(vote.verdict.name)
        c_spent, c_vote = verify_once(cpu_verifier, executor, requests[0], signed[0])
        row |= {
            "verify_gpu_s": statistics.mean(g_times),
            "verify_gpu_fraction": statistics.mean(g_times) / gen_one,
            "verify_gpu_fraction_amortised": statistics.mean(g_times) * b / gen_one,
            "verify_gpu_votes": g_votes,
            "verify_gpu_bands": same_bands,
            "verify_cpu_s": c_spent,
            "verify_cpu_fraction": c_spent / gen_one,
            "verify_cpu_fraction_amortised": c_spent * b / gen_one,
            "verify_cpu_vote": c_vote.verdict.name,
            "verify_cpu_reason": c_vote.reason,
            "verify_cpu_bands": cpu_bands,
        }
        rows.append(row)
        print_row(row, flush=True)
    del executor, backend
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def print_row(r: dict[str, Any], flush: bool = False) -> None:
    """Print one result row."""
    plain = "  ".join(f"{k} {v:.3f}s x{r['overhead'][k]:.3f}" for k, v in r["plain_s"].items())
    print(
        f"{r['backend']:>5} B={r['batch']:<3} T={r['temperature']:<4} "
        f"verified {r['verified_s']:.3f}s ({r['tokens_per_s']:.0f} tok/s, "
        f"commit/gen {r['commit_fraction']:.3f})  plain: {plain}  "
        f"verify gpu {r['verify_gpu_fraction']:.3f} {'/'.join(r['verify_gpu_votes'])}  "
        f"cpu {r['verify_cpu_fraction']:.3f} {r['verify_cpu_vote']}",
        flush=flush,
    )


def main() -> None:
    """Run the benchmark, print the table, write JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--plain-vllm-worker", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--backends", nargs="+", choices=("torch", "vllm"), default=["torch", "vllm"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.8])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = p.parse_args()
    if args.plain_vllm_worker:
        print(json.dumps(plain_vllm_worker(json.loads(args.plain_vllm_worker))), flush=True)
        return
    loaded = load_smollm2() if args.model == "smollm2" else load_tiny()
    start = time.time()
    rows = []
    for name in args.backends:
        if name == "vllm" and args.model != "smollm2":
            raise SystemExit("the vLLM backend serves SmolLM2 only")
        rows += run_backend(name, loaded, args)
    gpu = describe_gpu()
    device_name = re.sub(r"[^A-Za-z0-9]+", "-", gpu.get("gpu", "cpu")).strip("-").lower()
    path = write_results(
        f"gpu-{device_name}-{'-'.join(args.backends)}",
        {
            "machine": describe_machine() | gpu,
            "model": loaded.name,
            "model_id": loaded.model_id.hex(),
            "args": {k: v for k, v in vars(args).items() if k != "plain_vllm_worker"},
            "date": time.strftime("%Y-%m-%d"),
            "wall_s": time.time() - start,
            "results": rows,
        },
    )
    print(f"model {loaded.name}, {args.dtype}, {args.tokens} tokens, median of {args.repeats}")
    for r in rows:
        print_row(r)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

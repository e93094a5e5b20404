"""Calibrate the verifier's checks: honest noise against the weakest cheat, per check.

Honest noise sources (each against the standard verifier: torch CPU, float32, 2 threads, sdpa,
fresh prefill): the executor's proving prefill with 1 thread; inside a right-padded batch;
states captured during KV-cache decoding instead of a proving prefill; eager attention; in a
separate process; a long prompt; and, for CPU profiles, every ordered pair (X, Y) of the CPU
kernel sets this CPU offers (``bench.kernels``: avx512, avx2, default), the executor generating
and proving in a process under X and the verifier measuring in a process under Y. Every layer,
every position, every output token.

Cheat signals: the same measurements on executors from ``simnet.executors``.

Writes ``bench/results/calibration.json``, ``docs/calibration.md`` and the thresholds file
``bft/thresholds/<verifier>/<executor>.json`` (``accept_max = F x honest max``,
``reject_min = weakest cheat / F``; F = ``--safety``).

Run: ``./dev python -m bench.calibrate [--requests 4] [--tokens 24] [--safety 10]``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy, compute_request
from bft.crypto import SigningKey
from bft.measure import DEFAULT_PROFILE, compute_rel_errors
from bft.messages import InferenceRequest, SamplingParams
from bft.thresholds import get_thresholds_path
from bft.validators import ValidatorSet
from executor.backend import DTYPES, TorchBackend
from executor.model import LoadedModel, load_smollm2
from merkle.sketch import SKETCH_CHUNK, compute_sketch, measure_chunk
from simnet.executors import make_byzantine_executor

NETWORK = "calibrate"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis to a child.",
    "List three prime numbers and explain why they are prime.",
    "Translate 'good morning' into Spanish and German.",
    "Give me a recipe for pancakes.",
]
LONG_PROMPT = (
    " ".join(
        ["The history of the lighthouse keepers of the northern coast is long and full of storms."]
        * 30
    )
    + " Summarise it."
)

States = np.ndarray
REPORTED_ONLY = {("fp16-compute", "sequence")}
"""fp16 arithmetic moves the last boundary by less than the sketch's bfloat16 tolerance; the
layer and embedding checks catch it on every request (docs/detection.md), so it must not drag
the sketch's reject threshold down to honest territory."""
CHECKS = ("layer", "embedding", "sampler", "sequence")
FLOORS = {"layer": 1e-7, "embedding": 1e-8, "sampler": 1e-5, "sequence": 1 / 128}
"""Smallest ``accept_max`` per check; for the sketch: one entry of 128 (a near-tie at the top-k
edge can swap one entry between executor and verifier)."""


def measure(
    backend: TorchBackend,
    request: InferenceRequest,
    tokens: list[int],
    states: States,
    sketch: tuple[bytes, ...] | None = None,
) -> dict[str, np.ndarray]:
    """Return every check's per-position measurements of committed ``states``.

    ``sketch`` is the one the executor committed; by default, the sketch of ``states``.
    """
    num_layers = states.shape[0] - 1
    emb = compute_rel_errors(states[0], backend.embed(tokens), np.zeros_like(states[0]))
    layers = np.stack(
        [
            compute_rel_errors(backend.run_layer(b, states[b - 1]), states[b], states[b - 1])
            for b in range(1, num_layers + 1)
        ]
    )  # [L, T]
    p0 = len(request.prompt_tokens)
    margins = np.array(
        [
            backend.sampler_margin(states[num_layers][p - 1][None], request, p, tokens[p])
            for p in range(p0, len(tokens))
        ]
    )
    final = backend.final_states(tokens)
    sketch = sketch if sketch is not None else compute_sketch(states[num_layers])
    sequence = np.array(
        [
            measure_chunk(final[j * SKETCH_CHUNK : (j + 1) * SKETCH_CHUNK].reshape(-1), data)
            for j, data in enumerate(sketch)
        ]
    )  # [chunks]
    return {"embedding": emb, "layer": layers, "sampler": margins, "sequence": sequence}


# -- honest sources --------------------------------------------------------------------------


def prove_threads_1(backend: TorchBackend, tokens: list[int]) -> States:
    """Prove ``tokens`` with one CPU thread instead of the default."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return backend.prove(tokens)
    finally:
        torch.set_num_threads(old)


@torch.inference_mode()
def prove_padded_batch(backend: TorchBackend, tokens: list[int]) -> States:
    """Prove ``tokens`` as row 0 of a right-padded batch whose row 1 is longer."""
    model, dev = backend.model, backend.device
    other = [1] + [(t * 7 + 11) % backend.info.vocab_size for t in tokens] + tokens[:8]
    t_max = len(other)
    ids = torch.tensor([tokens + [2] * (t_max - len(tokens)), other], device=dev)
    h = model.model.embed_tokens(ids)
    pos = torch.arange(t_max, device=dev)[None].expand(2, -1)
    mask = torch.full((t_max, t_max), float("-inf"), dtype=h.dtype, device=dev).triu(1)
    mask = mask[None, None].expand(2, 1, -1, -1)
    rope = model.model.rotary_emb(h, pos)
    out = [h[0, : len(tokens)]]
    for layer in model.model.layers:
        h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
        out.append(h[0, : len(tokens)])
    return torch.stack(out).float().cpu().numpy()


@torch.inference_mode()
def prove_kv_decode(model: Any, tokens: list[int], prompt_len: int) -> States:
    """Return states captured while decoding with a KV cache (prompt pass, then token by token)."""
    from transformers import DynamicCache

    captured: list[list[torch.Tensor]] = [[] for _ in range(model.config.num_hidden_layers + 1)]
    hooks = [
        model.model.embed_tokens.register_forward_hook(lambda _m, _i, o: captured[0].append(o[0]))
    ]
    for i, layer in enumerate(model.model.layers):
        hooks.append(
            layer.register_forward_hook(
                lambda _m, _i, o, i=i: captured[i + 1].append(
                    (o[0] if isinstance(o, tuple) else o)[0]
                )
            )
        )
    dev = next(model.parameters()).device
    try:
        cache = DynamicCache(config=model.config)
        prompt = torch.tensor([tokens[:prompt_len]], device=dev)
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        for t in tokens[prompt_len:]:
            model(input_ids=torch.tensor([[t]], device=dev), past_key_values=cache, use_cache=True)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([torch.cat(c) for c in captured]).float().cpu().numpy()


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def prove_subprocess(tokens: list[int], device: str, dtype: str) -> States:
    """Prove ``tokens`` in a fresh Python process on ``device`` in ``dtype``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "states.npy"
        code = (
            "import sys, json, numpy as np\n"
            "from executor.model import load_smollm2\n"
            "from executor.backend import DTYPES, TorchBackend\n"
            f"b = TorchBackend(load_smollm2().model, device={device!r}, dtype=DTYPES[{dtype!r}])\n"
            f"np.save({str(out)!r}, b.prove(json.loads(sys.argv[1])))\n"
        )
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(tokens)],
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
        )
        return np.load(out)


def measure_cross_kernel(
    requests: list[InferenceRequest], args: Any
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Return the measurements of executors and verifiers on other CPU kernel sets. [CAL.3]

    For each kernel set X this CPU offers (:mod:`bench.kernels`), a process under X generates
    and proves ``requests``; for every other set Y a process under Y measures those states with
    its own kernels, as a verifier on another CPU would. Keys: ``"kernels X -> Y"``.
    """
    from bench.kernels import encode_requests, get_kernel_sets, run_worker

    sets = get_kernel_sets()
    dtype = ["--dtype", args.executor_dtype]
    vdtype = ["--dtype", args.verifier_dtype]
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        req_path = Path(tmp) / "requests.txt"
        req_path.write_text(encode_requests(requests))
        for x in sets:
            run_worker(x, ["prove", *dtype, str(req_path), f"{tmp}/proofs-{x}.npz"])
        for x, y in itertools.permutations(sets, 2):
            path = f"{tmp}/measured-{x}-{y}.npz"
            run_worker(y, ["measure", *vdtype, str(req_path), f"{tmp}/proofs-{x}.npz", path])
            m = np.load(path)
            out[f"{CROSS_KERNEL_SOURCE} {x} -> {y}"] = {
                c: [np.ravel(m[f"{c}_{i}"]) for i in range(len(requests))] for c in CHECKS
            }
    return out


def summarize(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64).ravel()
    return {"max": float(v.max()), "p99.9": float(np.percentile(v, 99.9)), "n": int(v.size)}


CROSS_KERNEL_SOURCE = "kernels"
PRESCRIBED_SOURCES = (
    "fresh prefill",
    "1 thread",
    "separate process",
    "long prompt",
    CROSS_KERNEL_SOURCE,
)
"""Honest sources that follow the prescribed path of [EXEC.2] (one unpadded proving prefill
with the profile's attention); the others (padded batch, KV-cache states, eager attention) are
other kernel paths. Another CPU's kernel set (``kernels X -> Y``) is the prescribed path on
other hardware."""


def is_prescribed(source: str) -> bool:
    """Return whether honest ``source`` follows the prescribed path."""
    return source.startswith(PRESCRIBED_SOURCES)


def compute_reach(
    honest_max: dict[str, float],
    signal: dict[str, dict[str, float]],
    plan: list[tuple[str, tuple[str, ...]]],
    f: float,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Return the bands per check and the cheats no check reaches. [CAL.2], [EXEC.5]

    ``accept_max = max(F x honest max, floor)``; a cheat whose weakest signal / F does not
    exceed it is beyond the check's reach; the weakest of the others sets ``reject_min``. A
    check with no cheat in reach is off (null bands). A cheat is uncovered when every check it
    could be caught by leaves it beyond reach.
    """
    thresholds: dict[str, dict[str, Any]] = {}
    for check in CHECKS:
        h = honest_max[check]
        accept_max = max(f * h, FLOORS[check])
        caught = {m: c for m, c in signal[check].items() if c / f > accept_max}
        weakest = min(caught.values()) if caught else None
        thresholds[check] = {
            "accept_max": accept_max if caught else None,
            "reject_min": weakest / f if weakest is not None else None,
            "honest_max": h,
            "weakest_cheat": weakest,
            "beyond_reach": sorted(set(signal[check]) - set(caught)),
        }
    uncovered = sorted(
        mode
        for mode, checks in plan
        if all(mode in thresholds[c]["beyond_reach"] for c in checks)
        and any((mode, c) not in REPORTED_ONLY for c in checks)
    )
    return thresholds, uncovered


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=4, help="requests per source")
    p.add_argument("--tokens", type=int, default=24, help="generated tokens per request")
    p.add_argument("--safety", type=float, default=10.0, help="safety factor F on both sides")
    p.add_argument(
        "--executor-backend",
        choices=("torch", "vllm"),
        default="torch",
        help="vllm: generation by vLLM (CUDA), proofs by torch on the same GPU [EXEC.7]",
    )
    p.add_argument("--executor-device", default="cpu", help="cpu or cuda")
    p.add_argument("--executor-dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--verifier-device", default="cpu", help="cpu or cuda")
    p.add_argument("--verifier-dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument(
        "--no-cross-kernel",
        dest="cross_kernel",
        action="store_false",
        help="skip the executor/verifier pairs on other CPU kernel sets (bench/kernels.py)",
    )
    args = p.parse_args()
    start = time.time()
    loaded: LoadedModel = load_smollm2()
    edev, edt = args.executor_device, DTYPES[args.executor_dtype]
    vdt = DTYPES[args.verifier_dtype]
    backend = TorchBackend(loaded.model, device=args.verifier_device, dtype=vdt)
    prover = TorchBackend(loaded.model, device=edev, dtype=edt)
    exe: Any = prover
    if args.executor_backend == "vllm":
        from executor.model import get_smollm2_dir
        from executor.vllm_backend import VllmBackend

        exe = VllmBackend(get_smollm2_dir(), loaded.model, dtype=edt)
        prover = exe.prover
    eager_model = copy.deepcopy(loaded.model)
    eager_model.set_attn_implementation("eager")
    eager = TorchBackend(eager_model, device=edev, dtype=edt)
    decode_model = copy.deepcopy(prover.model)
    pair = (exe.info.profile, backend.info.profile)
    print(f"executor {pair[0]}  verifier {pair[1]}", flush=True)
    keys = ValidatorSet.of_keys(NETWORK, (SigningKey.generate().public_key for _ in range(4)))
    policy = AssemblerPolicy(NETWORK)

    def make_request(i: int, prompt: str) -> InferenceRequest:
        ids = tuple(
            loaded.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        temperature = 0.0 if i % 2 == 0 else 0.8
        sampling = SamplingParams(
            temperature=temperature,
            top_p=0.95 if i % 4 == 3 else 1.0,
            max_new_tokens=args.tokens,
            stop_at_eos=False,
        )
        return compute_request(policy, os.urandom(16), loaded.model_id, ids, sampling, keys)

    requests = [make_request(i, PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)]
    sources: dict[str, Callable[[InferenceRequest, list[int]], States]] = {
        "fresh prefill (baseline)": lambda r, t: exe.prove(t),
        "1 thread vs 2": lambda r, t: prove_threads_1(prover, t),
        "inside a padded batch": lambda r, t: prove_padded_batch(prover, t),
        "KV-cache decoding": lambda r, t: prove_kv_decode(decode_model, t, len(r.prompt_tokens)),
        "eager vs sdpa attention": lambda r, t: eager.prove(t),
        "separate process": lambda r, t: prove_subprocess(t, edev, args.executor_dtype),
    }
    if prover.device.type != "cpu":
        del sources["1 thread vs 2"]
    honest: dict[str, dict[str, dict[str, float]]] = {}
    all_honest: dict[str, list[np.ndarray]] = {c: [] for c in CHECKS}

    def run_source(name: str, reqs: list[InferenceRequest], prove: Callable) -> None:
        acc: dict[str, list[np.ndarray]] = {c: [] for c in CHECKS}
        for r in reqs:
            output = exe.generate(list(r.prompt_tokens), r.sampling, r.sampling_seed())
            tokens = list(r.prompt_tokens) + output
            m = measure(backend, r, tokens, prove(r, tokens))
            for k, v in m.items():
                acc[k].append(np.ravel(v))
                all_honest[k].append(np.ravel(v))
        honest[name] = {k: summarize(np.concatenate(v)) for k, v in acc.items()}
        print(
            f"honest  {name:28s} "
            + "  ".join(f"{k} max {s['max']:.2e}" for k, s in honest[name].items()),
            flush=True,
        )

    for name, prove in sources.items():
        run_source(name, requests[:2] if name == "separate process" else requests, prove)
    if args.cross_kernel and {prover.device.type, backend.device.type} == {"cpu"}:
        for name, measured in measure_cross_kernel(requests, args).items():
            honest[name] = {k: summarize(np.concatenate(v)) for k, v in measured.items()}
            for k, v in measured.items():
                all_honest[k].extend(v)
            print(
                f"honest  {name:28s} "
                + "  ".join(f"{k} max {s['max']:.2e}" for k, s in honest[name].items()),
                flush=True,
            )
    long_req = make_request(0, LONG_PROMPT)
    run_source(
        f"long prompt ({len(long_req.prompt_tokens)} tokens)",
        [long_req],
        sources["fresh prefill (baseline)"],
    )

    # -- cheats ---------------------------------------------------------------------------------
    cheats: dict[str, dict[str, float]] = {}
    signal: dict[str, dict[str, float]] = {c: {} for c in CHECKS}
    key = SigningKey.generate()
    # (mode, checks it must be caught by): its weakest signal on each such check counts, except
    # for the pairs in REPORTED_ONLY, which are measured and shown but set no threshold.
    plan = [
        ("int8-weights", ("layer", "sequence")),
        ("int4-weights", ("layer", "sequence")),
        ("bf16-compute", ("layer", "embedding", "sequence")),
        ("fp16-compute", ("layer", "embedding", "sequence")),  # sequence: reported only
        ("perturb-layer", ("layer", "sequence")),
        ("skip-layer", ("layer", "sequence")),
        ("other-model", ("layer", "embedding", "sequence")),
        ("tamper-tokens", ("embedding", "sequence")),
        ("alter-prompt", ("embedding", "sequence")),
        ("wrong-sampler", ("sampler",)),
        ("smart-tamper-tokens", ("sampler",)),
        ("bad-sketch", ("sequence",)),
    ]
    if edt != torch.float32:  # lower precision than the claim is no cheat for such a profile
        plan = [(m, c) for m, c in plan if m not in ("bf16-compute", "fp16-compute")]
    for mode, checks in plan:
        ex = make_byzantine_executor(
            mode, key, loaded.model, loaded.model_id, NETWORK, 16, device=edev, dtype=edt
        )
        values: dict[str, list[float]] = {c: [] for c in checks}
        for r in requests[: max(2, args.requests // 2)]:
            if mode == "wrong-sampler" and r.sampling.temperature == 0:
                continue
            signed = ex.on_execute(r)
            c = signed.commitment
            run = ex.get_run(signed.digest)
            states = np.stack(
                [
                    np.concatenate(
                        [
                            _decode(run.tree.get_leaf(b * c.num_chunks + k), c)
                            for k in range(c.num_chunks)
                        ]
                    )
                    for b in range(c.num_layers + 1)
                ]
            )
            m = measure(backend, r, list(c.tokens), states, c.sketch)
            if "sequence" in checks:  # caught when any chunk mismatches
                values["sequence"].append(float(m["sequence"].max()))
            if "layer" in checks:
                per_layer = m["layer"].max(axis=1)
                lied = getattr(ex, "lied_layers", None)
                rows = per_layer[[b - 1 for b in lied[-1]]] if lied and lied[-1] else per_layer
                values["layer"].append(float(rows.min()))
            if "embedding" in checks:
                values["embedding"].append(float(m["embedding"].max()))
            if "sampler" in checks:
                values["sampler"].extend(float(x) for x in m["sampler"][m["sampler"] > 0])
        for check in checks:
            vals = values[check]
            weakest = float(np.percentile(vals, 5)) if check == "sampler" else float(min(vals))
            cheats[f"{mode} / {check}"] = {"check": check, "weakest": weakest, "n": len(vals)}
            if (mode, check) not in REPORTED_ONLY:
                signal[check][mode] = weakest
            print(f"cheat   {mode:28s} {check} weakest {weakest:.2e}", flush=True)
        del ex

    f = args.safety
    default = pair == (DEFAULT_PROFILE, DEFAULT_PROFILE)
    honest_max = {c: float(np.concatenate(all_honest[c]).max()) for c in CHECKS}
    thresholds, uncovered = compute_reach(honest_max, signal, plan, f)
    for check, t in thresholds.items():
        if default and t["weakest_cheat"] is None:
            raise SystemExit(f"{check}: no cheat exceeds honest x F = {t['honest_max'] * f:.2e}")
    # The alternative policy of docs/gpu.md: only the deviations an executor following the
    # prescribed path can have (threads, process, prompt length) count as honest noise.
    prescribed = {
        c: max(s[c]["max"] for name, s in honest.items() if is_prescribed(name)) for c in CHECKS
    }
    alt_thresholds, alt_uncovered = compute_reach(prescribed, signal, plan, f)
    meta = {
        "admitted": not uncovered,
        "uncovered": uncovered,
        "executor_profile": pair[0],
        "verifier_profile": pair[1],
        "executor_settings": exe.info.settings,
        "verifier_settings": backend.info.settings,
        "safety_factor": f,
        "model": loaded.name,
        "machine": describe_machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    path = get_thresholds_path(*pair)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, **thresholds}, indent=2, sort_keys=True) + "\n")
    alt = {"thresholds": alt_thresholds, "uncovered": alt_uncovered}
    write_results(
        "calibration" if default else f"calibration-{pair[0]}--{pair[1]}",
        {
            **meta,
            "honest": honest,
            "cheats": cheats,
            "thresholds": thresholds,
            "prescribed_path_only": alt,
            "args": vars(args),
        },
    )
    write_markdown(meta, honest, cheats, thresholds, alt, args)
    print(f"wrote {path} in {time.time() - start:.0f}s")


def _decode(leaf: bytes, c: Any) -> np.ndarray:
    from merkle.tiles import HEADER_SIZE

    return np.frombuffer(leaf[HEADER_SIZE:], dtype="<f4").reshape(-1, c.hidden_size)


def threshold_rows(thresholds: dict[str, dict[str, Any]]) -> list[str]:
    """Return the markdown table of ``thresholds`` (one row per check)."""
    lines = [
        "| check | honest max | accept_max | reject_min | weakest cheat "
        "| margin (cheat / honest) | beyond reach (cheat / F <= honest x F) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for check, t in thresholds.items():
        if t["weakest_cheat"] is None:
            lines.append(
                f"| {check} | {t['honest_max']:.2e} | off | off | - | - | "
                f"{', '.join(t['beyond_reach'])} |"
            )
            continue
        ratio = t["weakest_cheat"] / t["honest_max"] if t["honest_max"] > 0 else float("inf")
        lines.append(
            f"| {check} | {t['honest_max']:.2e} | {t['accept_max']:.2e} | "
            f"{t['reject_min']:.2e} | {t['weakest_cheat']:.2e} | {ratio:.3g} | "
            f"{', '.join(t['beyond_reach']) or '-'} |"
        )
    return lines


def write_markdown(
    meta: dict[str, Any],
    honest: dict[str, Any],
    cheats: dict[str, Any],
    thresholds: dict[str, dict[str, Any]],
    alt: dict[str, Any],
    args: Any,
) -> None:
    """Write the calibration's markdown page."""
    ep, vp = meta["executor_profile"], meta["verifier_profile"]
    default = (ep, vp) == (DEFAULT_PROFILE, DEFAULT_PROFILE)
    flags = "" if default else (
        f" --executor-backend {args.executor_backend}"
        f" --executor-device {args.executor_device} --executor-dtype {args.executor_dtype}"
        f" --verifier-device {args.verifier_device} --verifier-dtype {args.verifier_dtype}"
    )
    name = "calibration" if default else f"calibration-{ep}--{vp}"
    lines = [
        f"# Calibration: executor {ep}, verifier {vp}",
        "",
        "Produced by `./dev python -m bench.calibrate` "
        f"(--requests {args.requests} --tokens {args.tokens} --safety {args.safety:g}{flags}) on "
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, torch "
        f"{meta['machine']['torch']}, {meta['date']}; model {meta['model']}.",
        f"Executor settings: `{meta['executor_settings']}`; verifier settings: "
        f"`{meta['verifier_settings']}`.",
        f"Raw numbers: `bench/results/{name}.json`. Thresholds file: "
        f"`bft/thresholds/{vp}/{ep}.json` (loaded by every verifier of profile {vp}).",
        "",
        "Units: *layer* is the per-position `|y' - y| / |y - x|` of a re-executed layer; "
        "*embedding* the per-position `|e' - e| / |e'|` at boundary 0; *sampler* the margin of "
        "[SAMPLE.5] in logit units; *sequence* the per-chunk fraction of the verifier's top-128 "
        "entries that do not match the sketch the executor would commit ([SKETCH.4], "
        f"dimensionless, steps of 1/128). The verifier is {vp}, sdpa, fresh prefill; the "
        f"executor ({ep}) varies by the sources below.",
        "",
        "## Honest noise (every layer, position and output token)",
        "",
        "| source | layer max | layer p99.9 | embedding max | embedding p99.9 | sampler max "
        "| sampler p99.9 | sequence max | sequence p99.9 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in honest.items():
        lines.append(
            f"| {name} | {s['layer']['max']:.2e} | {s['layer']['p99.9']:.2e} | "
            f"{s['embedding']['max']:.2e} | {s['embedding']['p99.9']:.2e} | "
            f"{s['sampler']['max']:.2e} | {s['sampler']['p99.9']:.2e} | "
            f"{s['sequence']['max']:.2e} | {s['sequence']['p99.9']:.2e} |"
        )
    if any(name.startswith(CROSS_KERNEL_SOURCE) for name in honest):
        lines += [
            "",
            "`kernels X -> Y`: executor and verifier in processes on other CPU kernel sets "
            "([CAL.3], `bench/kernels.py`); whole honest requests across those pairs, verified "
            "with these bands: `docs/crosskernel.md`.",
        ]
    lines += [
        "",
        "## Weakest signal of each cheat",
        "",
        "Layer cheats: the smallest per-layer maximum over the tampered layers; embedding "
        "cheats: the largest boundary-0 error; sampler cheats: the 5th percentile of the "
        "non-zero margins; sequence: the smallest per-request mismatch (largest over chunks).",
        "",
        "| cheat | check | weakest signal | samples |",
        "|---|---|---:|---:|",
    ]
    for mode, c in cheats.items():
        note = " (reported only)" if tuple(mode.split(" / ")) in REPORTED_ONLY else ""
        lines.append(f"| {mode}{note} | {c['check']} | {c['weakest']:.2e} | {c['n']} |")
    f = meta["safety_factor"]
    verdict = (
        f"**Admitted**: every cheat is within reach of at least one check, so verifiers of "
        f"profile {vp} accept commitments of profile {ep} with these bands."
        if meta["admitted"]
        else f"**Not admitted**: no check reaches {', '.join(meta['uncovered'])}; verifiers of "
        f"profile {vp} refuse commitments of profile {ep} ([EXEC.5]). The bands are recorded "
        "for reference only."
    )
    lines += [
        "",
        "## Admission",
        "",
        verdict,
        "",
        f"## Thresholds (safety factor F = {f:g} on both sides)",
        "",
        "`accept_max = F x honest max` (floored), `reject_min = weakest cheat / F`. "
        "Between them lies the grey band: the verifier escalates to the doubled "
        "challenge, never rejects on grey alone.",
        "",
    ]
    lines += threshold_rows(thresholds)
    alt_verdict = (
        "every cheat would be within reach"
        if not alt["uncovered"]
        else f"still beyond every check: {', '.join(alt['uncovered'])}"
    )
    lines += [
        "",
        "## Reach if only the prescribed path counted as honest",
        "",
        "The alternative policy of docs/gpu.md: the kernel path is part of the profile, so only "
        "the deviations an executor following [EXEC.2] can have count as honest noise (sources "
        f"starting with: {', '.join(PRESCRIBED_SOURCES)}). Not used by verifiers; "
        f"{alt_verdict}.",
        "",
    ]
    lines += threshold_rows(alt["thresholds"])
    docs = Path(__file__).resolve().parent.parent / "docs"
    out = docs / "calibration.md" if default else docs / "calibration" / f"{ep}--{vp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

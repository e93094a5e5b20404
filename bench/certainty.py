"""The cost of certainty: verification work per request against the chance to catch a lie.

Measures on SmolLM2 (CPU, float32) the unit costs of verification for one request with
``--tokens`` output tokens: one verifier's fixed work (commitment and challenge, proof checks,
embedding check, m sampler checks) plus the re-execution of one layer, and one whole proving
prefill (the cost of a whole-sequence check). Then tabulates, for k = 1..L and a few q (the
probability that a verifier also runs the whole-sequence check):

- work per request, all n verifiers together, as a fraction of generation time;
- the probability to catch a cheat confined to one layer, ``1 - ((L-k)/L * (1-q))^n``;
- the number of requests after which a persistent one-layer cheater is caught with
  probability >= 1 - 1e-6.

Writes ``bench/results/certainty.json`` and the plot ``docs/certainty.svg``.
Run: ``./dev python -m bench.certainty``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy, compute_request
from bft.crypto import SigningKey
from bft.messages import SamplingParams
from bft.thresholds import load_thresholds
from bft.validators import ValidatorSet
from bft.verifier import Session, VerifierCore
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from executor.model import load_smollm2

N_VERIFIERS = 4
QS = (0.0, 0.05, 0.1, 0.25)
TARGET = 1e-6


def measure_costs(tokens: int, repeats: int = 5) -> dict[str, Any]:
    loaded = load_smollm2()
    backend = TorchBackend(loaded.model)
    info = backend.info
    prompt = tuple(
        loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Write a long story about the sea."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    keys = [SigningKey.generate() for _ in range(2)]
    validators = ValidatorSet.of_keys(
        "certainty",
        tuple(k.public_key for k in keys)
        + tuple(SigningKey.generate().public_key for _ in range(2)),
    )
    sampling = SamplingParams(max_new_tokens=tokens, stop_at_eos=False)
    ex = ExecutorCore(SigningKey.generate(), backend, loaded.model_id, "certainty")
    verify_times: dict[int, list[float]] = {}
    gen_times, prefill_times = [], []
    for kk in (1, 2, 4, 8):
        policy = AssemblerPolicy("certainty", layers_per_verifier=kk)
        verifier = VerifierCore(
            keys[0],
            backend,
            loaded.model_id,
            info.num_layers,
            info.hidden_size,
            "certainty",
            load_thresholds(),
        )
        for _ in range(repeats if kk in (1, 8) else 2):
            req = compute_request(
                policy, os.urandom(16), loaded.model_id, prompt, sampling, validators
            )
            t = time.perf_counter()
            signed = ex.on_execute(req)
            gen_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            backend.prove(list(signed.commitment.tokens))
            prefill_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = verifier.start(req, signed)
            while isinstance(result, Session):
                result = verifier.on_openings(
                    result, ex.on_open(signed.digest, result.challenge.required_tiles())
                )
            verify_times.setdefault(kk, []).append(time.perf_counter() - t)
    med = {kk: statistics.median(v) for kk, v in verify_times.items()}
    per_layer = (med[8] - med[1]) / 7
    fixed = med[1] - per_layer
    # on_execute includes the proving prefill; generation alone is the difference.
    generation = statistics.median(gen_times) - statistics.median(prefill_times)
    return {
        "tokens": tokens,
        "num_layers": info.num_layers,
        "generation_s": generation,
        "verifier_fixed_s": fixed,
        "per_layer_s": per_layer,
        "prefill_s": statistics.median(prefill_times),
        "verify_median_s": med,
    }


def tabulate(costs: dict[str, Any]) -> list[dict[str, float]]:
    big_l = costs["num_layers"]
    rows = []
    for q in QS:
        for k in range(1, big_l + 1):
            work = N_VERIFIERS * (
                costs["verifier_fixed_s"] + k * costs["per_layer_s"] + q * costs["prefill_s"]
            )
            escape = ((big_l - k) / big_l * (1 - q)) ** N_VERIFIERS
            p = 1 - escape
            n_req = (
                math.inf
                if p <= 0
                else (1 if escape == 0 else math.ceil(math.log(TARGET) / math.log(escape)))
            )
            rows.append(
                {
                    "q": q,
                    "k": k,
                    "work_fraction": work / costs["generation_s"],
                    "p_catch": p,
                    "requests_to_1e-6": n_req,
                }
            )
    return rows


def plot(rows: list[dict[str, float]], path: Path) -> None:
    """Write an SVG of catch probability against verification work, one line per q."""
    w, h, pad = 640, 400, 56
    xmax = max(r["work_fraction"] for r in rows) * 1.05
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]

    def xy(r: dict[str, float]) -> tuple[float, float]:
        return (
            pad + (w - 2 * pad) * r["work_fraction"] / xmax,
            h - pad - (h - 2 * pad) * r["p_catch"],
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 16}" text-anchor="middle">verification work per request'
        " / generation time (4 verifiers)</text>",
        f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">'
        "P(catch a one-layer cheat) per request</text>",
    ]
    for i in range(6):
        y = h - pad - (h - 2 * pad) * i / 5
        parts.append(f'<text x="{pad - 6}" y="{y + 4}" text-anchor="end">{i / 5:.1f}</text>')
        x = pad + (w - 2 * pad) * i / 5
        parts.append(
            f'<text x="{x}" y="{h - pad + 16}" text-anchor="middle">{xmax * i / 5:.2f}</text>'
        )
    for ci, q in enumerate(QS):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(r) for r in rows if r["q"] == q))
        parts.append(
            f'<polyline points="{pts}" fill="none" stroke="{colors[ci]}" stroke-width="2"/>'
        )
        parts.append(
            f'<text x="{w - pad - 70}" y="{pad + 16 * ci + 180}" '
            f'fill="{colors[ci]}">q = {q:g}</text>'
        )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    costs = measure_costs(64)
    rows = tabulate(costs)
    root = Path(__file__).resolve().parent.parent
    plot(rows, root / "docs" / "certainty.svg")
    write_results(
        "certainty",
        {
            "machine": describe_machine(),
            "costs": costs,
            "rows": rows,
            "n_verifiers": N_VERIFIERS,
            "target": TARGET,
        },
    )
    print(
        f"generation {costs['generation_s']:.3f}s  verifier fixed {costs['verifier_fixed_s']:.4f}s"
        f"  per layer {costs['per_layer_s']:.4f}s  prefill {costs['prefill_s']:.3f}s"
    )
    print(f"{'q':>5} {'k':>3} {'work/gen':>9} {'P(catch)':>9} {'requests to 1e-6':>17}")
    for r in rows:
        if r["k"] in (1, 2, 3, 4, 6, 8, 10, 15, 20, 30):
            print(
                f"{r['q']:>5g} {r['k']:>3d} {r['work_fraction']:>9.4f} {r['p_catch']:>9.4f} "
                f"{r['requests_to_1e-6']:>17}"
            )


if __name__ == "__main__":
    main()

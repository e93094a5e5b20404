"""Render ``docs/detection.md`` from ``bench/results/detection.json`` and ``certainty.json``.

Run: ``./dev python -m bench.report`` after ``bench.detection`` and ``bench.certainty``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _machine(m: dict[str, Any]) -> str:
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}"


def render_detection(d: dict[str, Any]) -> list[str]:
    s = d["sampling"]
    lines = [
        "## Detection rates (`bench/detection.py`)",
        "",
        f"Model {d['model']}; {d['modes'][0]['requests'] if d['modes'] else 0} requests per mode; "
        f"policy k = {d['policy']['k']} layers and m = {d['policy']['m']} sampler positions per "
        f"verifier, n = {d['policy']['n']} verifiers (f = {d['policy']['f']}); temperature "
        f"{s['temperature']}, {s['max_new_tokens']} output tokens; calibrated thresholds. "
        f"Machine: {_machine(d['machine'])}. A request is caught when it gets no certificate.",
        "",
        "| mode | class | caught | rate | 95% interval | model prediction | z | evidence kinds |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for r in d["modes"]:
        lo, hi = r["ci95"]
        pred = f"{r['predicted']:.3f}" if "predicted" in r else "1 (every request)"
        z = f"{r['z']:+.2f}" if "z" in r else ""
        ev = ", ".join(f"{k} {v}" for k, v in sorted(r["evidence"].items())) or "none (see below)"
        cls = "partial" if r["partial"] else "whole-run"
        lines.append(
            f"| {r['mode']} | {cls} | {r['caught']}/{r['requests']} | {r['rate']:.3f} | "
            f"[{lo:.3f}, {hi:.3f}] | {pred} | {z} | {ev} |"
        )
    lines += [
        "",
        "`replay` is refused by the assembler itself (a commitment signed for another request), "
        "so no verifier votes; `withhold` gets UNAVAILABLE votes (a liveness fault: the attempt "
        "fails, nobody is accused). The model prediction for partial cheats is computed per "
        "request from ground truth (the layers actually tampered; the output positions whose "
        "sampler margin exceeds reject_min) and averaged; z is (measured - predicted) / its "
        "standard error, so |z| < 2 means the measured rate matches the model.",
        "",
    ]
    h = d["honest"]
    if h["total"]:
        lines += [
            f"### Honest runs: {h['false_rejects']} false rejects in {h['total']}",
            "",
            "| noise source | runs | false rejects | escalated votes |",
            "|---|---:|---:|---:|",
        ]
        for name, x in h["by_source"].items():
            lines.append(f"| {name} | {x['runs']} | {x['false_rejects']} | {x['escalated']} |")
        lines.append("")
    else:
        lines += ["### Honest runs", "", "Not measured in this run (`--honest 0`).", ""]
    return lines


def render_certainty(c: dict[str, Any]) -> list[str]:
    k = c["costs"]
    lines = [
        "## The cost of certainty (`bench/certainty.py`)",
        "",
        f"Unit costs measured on {_machine(c['machine'])}, SmolLM2, {k['tokens']} output tokens: "
        f"generation {k['generation_s']:.3f} s; one verifier's fixed work "
        f"{k['verifier_fixed_s']:.4f} s (commitment and challenge, proofs, embedding check, "
        f"sampler checks); re-executing one layer {k['per_layer_s']:.4f} s; one whole proving "
        f"prefill {k['prefill_s']:.3f} s (the cost "
        "of a whole-sequence check, charged with probability q per verifier; that check, a "
        "TOPLOC-style sketch, is not implemented yet, so the q > 0 rows are a costed plan).",
        "",
        f"Work is for all {c['n_verifiers']} verifiers, as a fraction of generation. P is the "
        "chance one request catches a cheat confined to one layer, "
        "`1 - ((L-k)/L (1-q))^n`; N is the number of requests after which a persistent "
        f"one-layer cheater is caught with probability >= 1 - {c['target']:g}.",
        "",
        "| q | k | work / generation | P(catch) per request | N requests |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in c["rows"]:
        if r["k"] in (1, 2, 3, 4, 6, 8, 10, 15, 20, 30):
            lines.append(
                f"| {r['q']:g} | {r['k']} | {r['work_fraction']:.3f} | "
                f"{r['p_catch']:.3f} | {r['requests_to_1e-6']} |"
            )
    lines += ["", "![catch probability against verification work](certainty.svg)", ""]
    return lines


def main() -> None:
    det = json.loads((RESULTS / "detection.json").read_text())
    cer = json.loads((RESULTS / "certainty.json").read_text())
    lines = [
        "# Detection",
        "",
        "Every number below is produced by the scripts named and stored under `bench/results/`; "
        "this page is rendered by `./dev python -m bench.report`. The detection model and the "
        "byzantine modes are specified in `docs/spec/detection.md`; the thresholds come from "
        "`docs/calibration.md`.",
        "",
        *render_detection(det),
        *render_certainty(cer),
        "## Defaults and why",
        "",
        "k = 2 layers and m = 4 sampler positions per verifier, q = 0 until the sketch exists. "
        "Verification then costs the 4 verifiers together a small fraction of generation "
        "(table above), while a cheat confined to one layer of 30 (saving at most 1/30 of the "
        "work) is caught on about a quarter of requests and, persisting, within a few dozen "
        "requests with probability 1 - 1e-6; every whole-run cheat is caught on every request. "
        "One catch costs the cheater its identity for good ([bft]), so the expected loss of "
        "cheating exceeds its gain at any positive reputation. Larger k buys certainty linearly "
        "in work; the whole-sequence check (q) buys it at one prefill per check.",
        "",
    ]
    (ROOT / "docs" / "detection.md").write_text("\n".join(lines))
    print("wrote docs/detection.md")


if __name__ == "__main__":
    main()

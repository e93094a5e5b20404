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


def render_detection(
    d: dict[str, Any], title: str = "## Detection rates (`bench/detection.py`)", note: str = ""
) -> list[str]:
    s = d["sampling"]
    lines = [
        title,
        "",
        *([note, ""] if note else []),
        f"Model {d['model']}; {d['modes'][0]['requests'] if d['modes'] else 0} requests per mode; "
        f"policy k = {d['policy']['k']} layers and m = {d['policy']['m']} sampler positions per "
        f"verifier, sketch check with probability q = {d['policy'].get('q', 0):g} per verifier, "
        f"n = {d['policy']['n']} verifiers (f = {d['policy']['f']}); temperature "
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
        "standard error, so |z| < 2 means the measured rate matches the model. "
        "The bench runs the protocol cores without confirmation rounds ([CONFIRM.1]): a "
        "REJECT already denies the certificate; that an honest committee then confirms it "
        "and slashes the executor is tested in tests/bft/test_bft_stateful.py.",
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


def render_rerun(before: dict[str, Any]) -> list[str]:
    """Return the section of ``detection-cal3.json``: the re-run after the [CAL.3] bands."""
    path = RESULTS / "detection-cal3.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    old, new = before["thresholds"], d["thresholds"]
    changed = "; ".join(
        f"{c} {bound} {old[c][bound]:.3g} -> {new[c][bound]:.3g}"
        for c in ("layer", "embedding", "sampler", "sequence")
        for bound in ("accept_max", "reject_min")
        if abs(new[c][bound] - old[c][bound]) > 1e-3 * max(abs(old[c][bound]), 1e-30)
    )
    partial_ok = all(abs(r["z"]) < 2 for r in d["modes"] if "z" in r)
    whole_ok = all(r["caught"] == r["requests"] for r in d["modes"] if not r["partial"])
    cost = (
        "Cost: none measurable: "
        if partial_ok and whole_ok and d["honest"]["false_rejects"] == 0
        else "Cost: "
    ) + (
        f"every partial cheat within |z| < 2 of the model: {'yes' if partial_ok else 'no'}; "
        f"every whole-run cheat caught on every request: {'yes' if whole_ok else 'no'}; "
        f"{d['honest']['false_rejects']} false rejects in {d['honest']['total']} honest runs."
    )
    note = (
        "The cross-kernel calibration ([CAL.3], `docs/calibration.md`) widened a band, so the "
        "modes the changed bands judge (the one-layer cheats, the weakest whole-run layer "
        "cheats and the sampler cheats) and honest runs were measured again with the new bands "
        f"({changed}). {cost} "
        "Raw numbers: `bench/results/detection-cal3.json`."
    )
    title = "## Re-run with the cross-kernel bands (`bench/detection.py --out detection-cal3`)"
    return render_detection(d, title, note)


def render_reshape() -> list[str]:
    """Return the section comparing the detection table before and after [reshape] ([ASM.7])."""
    before_path = RESULTS / "detection-reshape-before.json"
    after_path = RESULTS / "detection-reshape-after.json"
    if not (before_path.exists() and after_path.exists()):
        return []
    before = json.loads(before_path.read_text())
    after = json.loads(after_path.read_text())
    old = {r["mode"]: r for r in before["modes"]}
    lines = [
        "## The same table through the attempt machine (`--seed 0`, [reshape])",
        "",
        "The assembler's rules became one machine ([ASM.7]) that this benchmark now drives, "
        "confirmation rounds included (before, it tallied the votes with a copy of its own). "
        "Both versions ran with the same seed, hence the same keys, request ids and commitments, "
        f"{after['modes'][0]['requests']} requests per mode and {after['honest']['total']} honest "
        f"runs, on {_machine(after['machine'])}. `same` compares the caught count and the "
        "evidence kinds. Run times are not compared: the two runs shared the machine with "
        "other jobs (the raw files keep them); the confirmation round a caught request now gets "
        "adds the committee's audits of one accusation.",
        "",
        "| mode | caught before | caught after | evidence before | evidence after | same |",
        "|---|---|---|---|---|---|",
    ]
    for r in after["modes"]:
        o = old.get(r["mode"])
        if o is None:
            continue
        same = o["caught"] == r["caught"] and o["evidence"] == r["evidence"]
        lines.append(
            f"| {r['mode']} | {o['caught']}/{o['requests']} | {r['caught']}/{r['requests']} | "
            f"{_evidence(o['evidence'])} | {_evidence(r['evidence'])} | "
            f"{'yes' if same else 'NO'} |"
        )
    hb, ha = before["honest"], after["honest"]
    lines += [
        "",
        f"Honest runs: {hb['false_rejects']} false rejects in {hb['total']} before, "
        f"{ha['false_rejects']} in {ha['total']} after. Raw numbers: "
        "`bench/results/detection-reshape-before.json`, `detection-reshape-after.json`.",
        "",
    ]
    return lines


def _evidence(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


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
        "of the whole-sequence sketch check, charged with probability q per verifier; "
        "`bench/sketch.py` measures the check itself, prefill and comparison, below). The "
        "model credits the sketch check with every one-layer cheat, as measured below "
        "(skip-layer and perturb-layer: every request).",
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


def render_sketch(k: dict[str, Any]) -> list[str]:
    lines = [
        "## The whole-sequence sketch (`bench/sketch.py`)",
        "",
        f"SmolLM2 on {_machine(k['machine'])}; {k['modes'][0]['requests']} requests per mode, "
        f"temperature {k['sampling']['temperature']}, {k['sampling']['max_new_tokens']} output "
        "tokens. The executor commits the sketch ([SKETCH.1]); an honest verifier recomputes the "
        "last boundary with one prefill and measures the mismatch ([SKETCH.4]); caught means "
        f"mismatch > reject_min = {k['sequence_band']['reject_min']:.4f} (calibrated). "
        f"TOPLOC column: PyPI toploc {k['toploc']} built from source against torch 2.13, its "
        "proofs built from the same committed last-boundary states (bfloat16) and verified "
        "against the same recomputation with the TOPLOC experiments' acceptance rule (per "
        "chunk of 32: exponent mismatches <= 90 of 128, mantissa error mean <= 10, median <= 8).",
        "",
        "| output tokens | sketch bytes (chunks) | bytes per 32 positions | TOPLOC bytes | build "
        "| check (prefill + compare) | check / generation |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in k["costs"]:
        lines.append(
            f"| {c['output_tokens']} | {c['sketch_bytes']} ({c['chunks']}) | "
            f"{c['bytes_per_full_chunk']} | {c.get('toploc_bytes', '-')} | "
            f"{c['build_s'] * 1e3:.1f} ms | {c['check_s'] * 1e3:.0f} ms | "
            f"{c['check_over_generation']:.3f} |"
        )
    lines += [
        "",
        "These timings were taken while test runs shared the 2-core machine; the check's "
        "prefill (0.198 s at 64 tokens) agrees with the uncontended 0.205 s prefill of the "
        "certainty bench above.",
        "",
        "| mode | caught by the sketch alone | smallest mismatch | caught by TOPLOC 0.1.6 |",
        "|---|---:|---:|---:|",
    ]
    for r in k["modes"]:
        t = f"{r['toploc_caught']}/{r['requests']}" if "toploc_caught" in r else "-"
        if r["mode"] == "bad-sketch":
            t = "n/a (no sketch of its own)"
        lines.append(
            f"| {r['mode']} | {r['caught']}/{r['requests']} | {r['mismatch_min']:.3f} | {t} |"
        )
    lines += [
        "",
        "What it catches: every cheat that moves the last boundary beyond the bfloat16 "
        "tolerance, whichever layer it is in, for one prefill: quantised weights, bf16 "
        "compute, another model, an altered prompt or tokens, a skipped or perturbed layer "
        "(selective: on the requests it lies on). It does not see fp16 compute (its error "
        "stays below the tolerance; the layer and embedding checks catch it on every "
        "request), a token chosen by another sampling rule (wrong-sampler, smart-tamper: "
        "their states are honest for their tokens; the sampler check's job), nor openings "
        "and equivocation (the signatures' job).",
        "",
        "Decision: our own sketch, not the `toploc` package. Same size (256 bytes per 32 "
        "positions against 258: the field is GF(65521) and the chunk needs no modulus "
        "header), it takes float32 states (toploc raises on float32 and its builder then "
        "returns empty proofs), it compares sign and value within 2^-7 instead of exponent "
        "and mantissa statistics, so it catches int8 weights, bf16 compute and a perturbed "
        "layer that toploc's rule lets through, and its decoder refuses malformed input with "
        "a clear error where toploc's C++ verifier crashes the process on a zero modulus "
        "(SIGFPE) or a proof with no coefficients (segfault), which any executor could send. "
        "toploc's wheel does not import with torch 2.13 and its source build takes about "
        "2.5 minutes; the sketch is 220 lines of numpy.",
        "",
    ]
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
        *render_rerun(det),
        *render_reshape(),
        *render_certainty(cer),
        *render_sketch(json.loads((RESULTS / "sketch.json").read_text())),
        "## Defaults and why",
        "",
        "k = 2 layers and m = 4 sampler positions per verifier, and the sketch check with "
        "q = 0.1 per verifier. Verification then costs the 4 verifiers together about 9% of "
        "generation (6.9% for k = 2 plus 4 x 0.1 x one prefill), while a cheat confined to one "
        "layer of 30 (saving at most 1/30 of the work) is caught on about half of the requests "
        "(0.50 against 0.24 with q = 0: the sketch doubles the catch rate for a third more "
        "work) and, persisting, within 20 requests with probability 1 - 1e-6; every whole-run "
        "cheat is caught on every request. "
        "One catch costs the cheater its identity for good ([bft]), so the expected loss of "
        "cheating exceeds its gain at any positive reputation. Larger k buys certainty linearly "
        "in work; the whole-sequence check (q) buys it at one prefill per check.",
        "",
    ]
    (ROOT / "docs" / "detection.md").write_text("\n".join(lines))
    print("wrote docs/detection.md")


if __name__ == "__main__":
    main()

"""The whole-sequence sketch: size, cost, and what it catches, next to PyPI ``toploc``.

For every byzantine mode, ``--requests`` requests (SmolLM2, temperature 0.7, ``--tokens``
output tokens): the executor commits, an honest verifier recomputes the last boundary with one
prefill and measures the sketch ([SKETCH.4]); *caught* means mismatch > the calibrated
``sequence.reject_min``. Honest executors give the false-reject count. Costs: sketch build and
check (one prefill + compare) next to generation, for 64 and 256 output tokens, median of 3.

``--toploc`` also runs TOPLOC 0.1.6 (``import toploc``; build it from source, see
docs/detection.md) on the same states: its proofs are built from the executor's committed
last-boundary states cast to bfloat16 and verified against the verifier's recomputation with
the acceptance rule of the TOPLOC experiments (per chunk: exponent mismatches <= 90 of 128,
mantissa error mean <= 10 and median <= 8).

Run: ``./dev python -m bench.sketch [--requests 20] [--tokens 16] [--toploc]``; writes
``bench/results/sketch.json``; docs/detection.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from bench.calibrate import PROMPTS
from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy, compute_request
from bft.crypto import SigningKey
from bft.messages import InferenceRequest, SamplingParams, SignedCommitment
from bft.thresholds import load_thresholds
from bft.validators import ValidatorSet
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from executor.model import load_smollm2
from merkle.sketch import SKETCH_CHUNK, compute_sketch, measure_sketch
from merkle.tiles import HEADER_SIZE
from simnet.executors import MODES, make_byzantine_executor

NETWORK = "sketch"
TOPLOC_EXP_MAX, TOPLOC_MEAN_MAX, TOPLOC_MEDIAN_MAX = 90, 10.0, 8.0
SKIP = ("replay", "withhold")  # no commitment for this request / nothing to compare


def committed_final(ex: ExecutorCore, signed: SignedCommitment) -> np.ndarray:
    """Return the executor's committed last-boundary states, decoded from its tiles."""
    c = signed.commitment
    run = ex.get_run(signed.digest)
    base = c.num_layers * c.num_chunks
    return np.concatenate(
        [
            np.frombuffer(run.tree.get_leaf(base + k)[HEADER_SIZE:], "<f4").reshape(
                -1, c.hidden_size
            )
            for k in range(c.num_chunks)
        ]
    )


class Toploc:
    """TOPLOC's build and verify on ``[N, H]`` states, chunks of 32 positions."""

    def __init__(self) -> None:
        import toploc  # optional: built from source

        self.lib = toploc
        self.version = getattr(toploc, "__version__", "unknown")

    def build(self, states: np.ndarray) -> list[bytes]:
        t = torch.from_numpy(np.ascontiguousarray(states)).to(torch.bfloat16)
        proofs: list[bytes] = self.lib.build_proofs_bytes(t, 32, 128, skip_prefill=True)
        return proofs

    def caught(self, recomputed: np.ndarray, proofs: list[bytes]) -> bool:
        t = torch.from_numpy(np.ascontiguousarray(recomputed)).to(torch.bfloat16)
        results = self.lib.verify_proofs_bytes(t, proofs, 32, 128, skip_prefill=True)
        if len(results) != -(-recomputed.shape[0] // 32):
            return True
        return any(
            r.exp_mismatches > TOPLOC_EXP_MAX
            or r.mant_err_mean > TOPLOC_MEAN_MAX
            or r.mant_err_median > TOPLOC_MEDIAN_MAX
            for r in results
        )


def median_time(fn: Any, *args: Any, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20, help="requests per mode")
    p.add_argument("--tokens", type=int, default=16, help="output tokens per request")
    p.add_argument("--toploc", action="store_true", help="also run PyPI toploc")
    args = p.parse_args()
    start = time.time()
    loaded = load_smollm2()
    backend = TorchBackend(loaded.model)
    thresholds = load_thresholds()
    reject_min = thresholds.sequence.reject_min
    top = Toploc() if args.toploc else None
    keys = ValidatorSet.of_keys(NETWORK, (SigningKey.generate().public_key for _ in range(4)))
    policy = AssemblerPolicy(NETWORK)
    sampling = SamplingParams(temperature=0.7, max_new_tokens=args.tokens, stop_at_eos=False)

    def request(i: int, s: SamplingParams = sampling) -> InferenceRequest:
        ids = loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return compute_request(policy, os.urandom(16), loaded.model_id, tuple(ids), s, keys)

    # -- cost ----------------------------------------------------------------------------------
    costs = []
    for n_out in (64, 256):
        r = request(0, SamplingParams(max_new_tokens=n_out, stop_at_eos=False))
        prompt = list(r.prompt_tokens)
        output = backend.generate(prompt, r.sampling, r.sampling_seed())
        tokens = prompt + output
        t0 = time.perf_counter()
        backend.generate(prompt, r.sampling, r.sampling_seed())
        gen = time.perf_counter() - t0
        final = backend.final_states(tokens)
        sketch = compute_sketch(final)
        build = median_time(compute_sketch, final)
        check = median_time(lambda t, s: measure_sketch(backend.final_states(t), s), tokens, sketch)
        compare = median_time(measure_sketch, final, sketch)
        row: dict[str, Any] = {
            "output_tokens": n_out,
            "tokens": len(tokens),
            "chunks": len(sketch),
            "sketch_bytes": sum(len(b) for b in sketch),
            "bytes_per_full_chunk": len(sketch[0]),
            "generation_s": gen,
            "build_s": build,
            "check_s": check,
            "compare_s": compare,
            "build_over_generation": build / gen,
            "check_over_generation": check / gen,
        }
        if top is not None:
            proofs = top.build(final)
            row["toploc_bytes"] = sum(len(b) for b in proofs)
            row["toploc_build_s"] = median_time(top.build, final)
            row["toploc_compare_s"] = median_time(top.caught, final, proofs)
        costs.append(row)
        print(
            f"{n_out:4d} out: {row['sketch_bytes']} B in {row['chunks']} chunks, build "
            f"{build * 1e3:.1f} ms, check {check * 1e3:.0f} ms ({check / gen:.3f} of "
            f"generation {gen:.2f} s)",
            flush=True,
        )

    # -- what it catches -----------------------------------------------------------------------
    rows = []
    for mode in ("honest", *(m for m in MODES if m not in SKIP)):
        key = SigningKey.generate()
        if mode == "honest":
            ex = ExecutorCore(
                key, backend, model_id=loaded.model_id, network_id=NETWORK, chunk_size=16
            )
        else:
            ex = make_byzantine_executor(
                mode, key, loaded.model, loaded.model_id, NETWORK, 16, seed=len(rows)
            )
        ours, theirs, mismatches = 0, 0, []
        for i in range(args.requests):
            signed = ex.on_execute(request(i))
            c = signed.commitment
            recomputed = backend.final_states(c.tokens)
            sq = measure_sketch(recomputed, c.sketch)
            mismatches.append(sq.mismatch)
            ours += sq.mismatch > reject_min
            if top is not None:
                theirs += top.caught(recomputed, top.build(committed_final(ex, signed)))
        row = {
            "mode": mode,
            "requests": args.requests,
            "caught": ours,
            "mismatch_min": min(mismatches),
            "mismatch_median": statistics.median(mismatches),
        }
        if top is not None:
            row["toploc_caught"] = theirs
        rows.append(row)
        extra = f"  toploc {theirs}/{args.requests}" if top is not None else ""
        print(
            f"{mode:20s} caught {ours:3d}/{args.requests}  mismatch min {min(mismatches):.3f}"
            f"{extra}",
            flush=True,
        )
        del ex
    write_results(
        "sketch",
        {
            "machine": describe_machine(),
            "model": loaded.name,
            "sampling": {"temperature": 0.7, "max_new_tokens": args.tokens},
            "chunk": SKETCH_CHUNK,
            "sequence_band": {
                "accept_max": thresholds.sequence.accept_max,
                "reject_min": reject_min,
            },
            "toploc": top.version if top is not None else None,
            "costs": costs,
            "modes": rows,
            "seconds": time.time() - start,
        },
    )


if __name__ == "__main__":
    main()

"""Cost of the protocol's sampler inside a batched engine, per decoding step. [SAMPLE.7]

Times :meth:`ProtocolSamplerRows.apply` on a ``[B, V]`` float32 logits batch (V = 49,152, the
SmolLM2 vocabulary) for batch sizes B, every row sampled (temperature 0.8, top-p 0.95), over
consecutive positions as in decoding: with the noise computed on the spot (one worker thread,
no prefetch) and with the worker pool and the next position prefetched between steps. A pause
between steps stands in for the engine's forward pass (``--step-ms``), during which prefetched
noise is computed. Greedy rows cost nothing and are not measured.

Run: ``./dev python -m bench.sampler [--device cpu|cuda] [--batches 1 8 32] [--steps 20]``.
Prints a table and writes ``bench/results/sampler-<device>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from bench.common import describe_machine, write_results
from bft.messages import SamplingParams
from executor.sampler_torch import GumbelPrefetch, ProtocolSamplerRows, SamplerRow

VOCAB = 49152


def measure(
    device: str, batch: int, steps: int, workers: int, prefetch: bool, step_ms: float
) -> float:
    """Return the median milliseconds of one ``apply`` over ``steps`` decoding steps."""
    rows = ProtocolSamplerRows(GumbelPrefetch(workers=workers))
    params = SamplingParams(temperature=0.8, top_p=0.95)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    for i in range(batch):
        rows.add(i, SamplerRow(params, bytes([i]) * 32, 16, outputs[i]))
    gen = torch.Generator().manual_seed(batch)
    base = torch.randn(batch, VOCAB, generator=gen).to(device) * 3
    times = []
    for _ in range(steps):
        logits = base.clone()
        if not prefetch:  # forget what was prefetched: every row computes its noise now
            rows.prefetch._futures.clear()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rows.apply(logits)
        tokens = logits.argmax(dim=1).tolist()  # the engine's greedy pick (syncs the device)
        times.append((time.perf_counter() - t0) * 1e3)
        for out, tok in zip(outputs, tokens, strict=True):
            out.append(int(tok))
        time.sleep(step_ms / 1e3)  # the engine's forward pass
    rows.prefetch.close()
    return statistics.median(times[1:] if steps > 1 else times)


def main() -> None:
    """Run the benchmark, print the table, write JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--step-ms", type=float, default=10.0, help="pause standing in for a forward")
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    print(f"{'batch':>5} {'on the spot, 1 thread ms':>25} {'pool + prefetch ms':>19}")
    for b in args.batches:
        spot = measure(args.device, b, args.steps, 1, False, args.step_ms)
        pre = measure(args.device, b, args.steps, args.workers, True, args.step_ms)
        rows.append({"batch": b, "on_the_spot_ms": spot, "prefetched_ms": pre})
        print(f"{b:>5} {spot:>25.2f} {pre:>19.2f}", flush=True)
    path = write_results(
        f"sampler-{args.device}",
        {"machine": describe_machine(), "args": vars(args), "vocab": VOCAB, "results": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Load on a multi-process testnet: N concurrent clients, verified answers against the executors
alone.

Starts a ``bft-testnet`` on this machine (4 verifiers, 2 executors, 1 assembler, one process
each), then for each client count sends ``--requests`` prompts per client:

- *verified*: ``Infer`` to the assembler (execute, commit, the committee's votes, a receipt);
- *executors alone*: ``Execute`` straight to the executors (generation, proving prefill,
  commitment; no verification), round robin, the baseline a verified answer costs more than.

Every request is a distinct prompt (a fresh request id either way). Reports requests per second,
latency p50/p95/p99 and errors (target 0). All nodes share this machine's cores, so the verified
numbers include the verifiers' work competing with the executors'.

Run: ``./dev python -m bench.load [--model smollm2|tiny] [--clients 1 2 4] [--requests 8]
[--tokens 16]``. Prints a table and writes ``bench/results/load-<model>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy, compute_request
from bft.messages import SamplingParams
from executor.model import load_smollm2, load_tiny
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive import testnet
from verihive.node import load_genesis, load_node_key
from verihive.rpc import INFER_TIMEOUT_S, MAX_OPEN_MESSAGE_BYTES, make_channel
from verihive.work import make_execute

TOPICS = ("the sea", "a lighthouse", "bread", "rain", "a violin", "trains", "bees", "snow")


def prompt(i: int) -> str:
    """Return the ``i``-th distinct prompt."""
    return f"In one sentence, request {i}: tell me something about {TOPICS[i % len(TOPICS)]}."


def percentile(values: list[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run_load(clients: int, total: int, call: Callable[[int], None]) -> dict[str, Any]:
    """Run ``total`` calls from ``clients`` threads; return throughput, latency and errors."""
    latencies: list[float] = []
    errors: list[str] = []

    def one(i: int) -> None:
        t = time.perf_counter()
        try:
            call(i)
        except (grpc.RpcError, RuntimeError) as exc:
            errors.append(str(exc)[:200])
            return
        latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    with futures.ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(total)))
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": total,
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": wall,
        "rps": len(latencies) / wall,
        "p50_s": percentile(latencies, 0.5) if latencies else None,
        "p95_s": percentile(latencies, 0.95) if latencies else None,
        "p99_s": percentile(latencies, 0.99) if latencies else None,
        "mean_s": statistics.mean(latencies) if latencies else None,
    }


def main() -> None:
    """Run the benchmark, print the table, write JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--tokens", type=int, default=16, help="output tokens per request")
    args = p.parse_args()
    sampling = SamplingParams(max_new_tokens=args.tokens, stop_at_eos=False)
    loaded = load_smollm2() if args.model == "smollm2" else load_tiny()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "net"
        policy = AssemblerPolicy("verihive-load")
        testnet.init_testnet(out, 4, 2, args.model, policy)
        nodes = {n.name: n for n in testnet.up(out)}
        try:
            _, _, validators = load_genesis(out / "genesis.json")
            assembler_key = load_node_key(out / "assembler" / "node_key")
            channel = make_channel(nodes["assembler"].address, MAX_OPEN_MESSAGE_BYTES)
            assembler = pb_grpc.AssemblerStub(channel)
            executors = [
                pb_grpc.ExecutorStub(make_channel(nodes[f"executor-{i}"].address))
                for i in range(2)
            ]

            def verified(i: int) -> None:
                reply = assembler.Infer(
                    pb.InferRequest(prompt=prompt(i), sampling=convert.sampling_to_pb(sampling)),
                    timeout=INFER_TIMEOUT_S,
                )
                if not reply.accepted:
                    raise RuntimeError(f"not certified: {[a.reason for a in reply.attempts]}")

            def alone(i: int) -> None:
                tokens = tuple(
                    loaded.tokenizer.apply_chat_template(
                        [{"role": "user", "content": prompt(i)}],
                        add_generation_prompt=True,
                        tokenize=True,
                        return_dict=False,
                    )
                )
                request = compute_request(
                    policy, os.urandom(16), loaded.model_id, tokens, sampling, validators.vset
                )
                message = make_execute(assembler_key, request)  # as the assembler orders it
                executors[i % 2].Execute(message, timeout=INFER_TIMEOUT_S)

            verified(10_000)  # warm both paths once (first-call allocations)
            alone(10_001)
            base = 0
            for clients in args.clients:
                total = clients * args.requests
                for name, call in (("verified", verified), ("executors alone", alone)):
                    row = run_load(clients, total, lambda i, c=call, b=base: c(b + i))
                    row["mode"] = name
                    rows.append(row)
                    print(_line(row), flush=True)
                    base += total
            channel.close()
        finally:
            testnet.down(out)
    print(_header())
    for row in rows:
        print(_line(row))
    path = write_results(
        f"load-{args.model}",
        {
            "machine": describe_machine(),
            "model": loaded.name,
            "tokens": args.tokens,
            "requests_per_client": args.requests,
            "nodes": {"verifiers": 4, "executors": 2, "assemblers": 1},
            "rows": rows,
        },
    )
    print(f"wrote {path}")


def _header() -> str:
    return (
        f"{'mode':16s} {'clients':>7} {'ok':>4} {'errors':>6} {'req/s':>7} "
        f"{'p50 s':>7} {'p95 s':>7} {'p99 s':>7}"
    )


def _line(r: dict[str, Any]) -> str:
    def f(x: float | None) -> str:
        return f"{x:7.2f}" if x is not None else "      -"

    return (
        f"{r['mode']:16s} {r['clients']:>7} {r['ok']:>4} {r['errors']:>6} {r['rps']:7.2f} "
        f"{f(r['p50_s'])} {f(r['p95_s'])} {f(r['p99_s'])}"
    )


if __name__ == "__main__":
    main()

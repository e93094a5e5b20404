"""Honest requests under attack: latency and node memory per attack vs without. [ABUSE.1]

Starts a ``bft-testnet`` on this machine (4 verifiers, 2 executors, 1 assembler, one process
each), measures ``--requests`` honest ``Infer`` calls without an attack, then the same under each
attack of :mod:`simnet.abuse` (``--threads`` attacking threads in this process, started a second
before the honest calls and stopped after them). Memory is each node process's resident set
(``VmRSS``), sampled every 50 ms while the honest calls run; the table shows the largest sample
per role and the growth over the baseline.

Run: ``./dev python -m bench.abuse [--model tiny|smollm2] [--requests 8] [--threads 4]
[--attacks NAME ...]``. Prints a table and writes ``bench/results/abuse-<model>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy
from bft.crypto import compute_node_id
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from simnet.abuse import ATTACKS, Attack, Target
from verihive import testnet
from verihive.node import load_node_key
from verihive.rpc import INFER_TIMEOUT_S, MAX_OPEN_MESSAGE_BYTES, make_channel

ROLES = ("verifier", "executor", "assembler")


def read_rss_mib(pid: int) -> float:
    """Return the resident set of process ``pid`` in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@contextmanager
def sample_memory(nodes: list[testnet.Node]) -> Iterator[dict[str, float]]:
    """Yield a dict that ends up holding the largest RSS seen per role while the block ran."""
    pids = {n.name: (n.role, int((n.home / "pid").read_text())) for n in nodes}
    peak = dict.fromkeys(ROLES, 0.0)
    stop = threading.Event()

    def run() -> None:
        while True:
            for role, pid in pids.values():
                peak[role] = max(peak[role], read_rss_mib(pid))
            if stop.wait(0.05):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def honest(assembler: str, requests: int) -> tuple[list[float], list[str], pb.InferResponse]:
    """Send ``requests`` honest prompts one after another; return latencies, failures and the
    last certified answer."""
    latencies: list[float] = []
    failures: list[str] = []
    last = pb.InferResponse()
    channel = make_channel(assembler, MAX_OPEN_MESSAGE_BYTES)
    try:
        stub = pb_grpc.AssemblerStub(channel)
        for i in range(requests):
            ask = pb.InferRequest(prompt=f"Honest question {i}: what is {i} + {i}?")
            ask.sampling.max_new_tokens = 8
            ask.sampling.top_p = 1.0
            t = time.perf_counter()
            try:
                reply = stub.Infer(ask, timeout=INFER_TIMEOUT_S)
            except grpc.RpcError as exc:  # a failed honest call is reported, not raised
                failures.append(f"{exc.code().name}: {exc.details()}"[:200])
                continue
            if reply.accepted:
                latencies.append(time.perf_counter() - t)
                last = reply
            else:
                failures.append("; ".join(a.reason for a in reply.attempts)[:200])
    finally:
        channel.close()
    return latencies, failures, last


def percentile(values: list[float], q: float) -> float | None:
    """Return the ``q`` quantile of ``values`` (nearest rank), or ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def make_target(nodes: dict[str, testnet.Node], reply: pb.InferResponse) -> Target:
    """Return the network as an attacker sees it, with one genuine certified exchange."""
    certified = reply.attempts[-1]
    by_id = {
        compute_node_id(load_node_key(n.home / "node_key").public_key): n.address
        for n in nodes.values()
    }
    return Target(
        verifiers=[n.address for n in nodes.values() if n.role == "verifier"],
        executors=[n.address for n in nodes.values() if n.role == "executor"],
        assembler=nodes["assembler"].address,
        request=convert.request_from_pb(certified.request),
        signed=convert.commitment_from_pb(certified.commitment),
        executor_address=by_id[bytes(certified.executor_id)],
        admitted=load_node_key(nodes["assembler"].home / "node_key"),
    )


def measure(
    name: str,
    nodes: dict[str, testnet.Node],
    requests: int,
    start_attack: Callable[[], Attack | None],
) -> dict[str, Any]:
    """Run the honest requests while ``start_attack``'s attack (if any) runs; return the row."""
    attack = start_attack()
    if attack is not None:
        time.sleep(1.0)  # the attack is under way before the first honest request
    with sample_memory(list(nodes.values())) as peak:
        latencies, failures, last = honest(nodes["assembler"].address, requests)
    tally = attack.stop() if attack is not None else None
    return {
        "attack": name,
        "attack_calls": tally.calls if tally else 0,
        "attack_statuses": dict(tally.statuses) if tally else {},
        "honest_ok": len(latencies),
        "honest_failed": len(failures),
        "failure_samples": failures[:3],
        "p50_s": percentile(latencies, 0.5),
        "p95_s": percentile(latencies, 0.95),
        "max_s": max(latencies) if latencies else None,
        "rss_mib": {role: round(v, 1) for role, v in peak.items()},
        "_last": last,
    }


def main() -> None:
    """Run the benchmark, print the table, write JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("smollm2", "tiny"), default="tiny")
    p.add_argument("--requests", type=int, default=8, help="honest requests per row")
    p.add_argument("--threads", type=int, default=4, help="attacking threads")
    p.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(ATTACKS))
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "net"
        testnet.init_testnet(out, 4, 2, args.model, AssemblerPolicy("verihive-testnet"))
        nodes = {n.name: n for n in testnet.up(out)}
        try:
            honest(nodes["assembler"].address, 1)  # warm every path once
            base = measure("none", nodes, args.requests, lambda: None)
            rows.append(base)
            target = make_target(nodes, base["_last"])
            for name in args.attacks:
                row = measure(
                    name,
                    nodes,
                    args.requests,
                    lambda n=name: Attack(n, target, args.threads).start(),
                )
                rows.append(row)
                print(format_row(row, base), flush=True)
        finally:
            testnet.down(out)
    for r in rows:
        r.pop("_last", None)
    print(format_table(rows))
    write_results(
        f"abuse-{args.model}",
        {
            "machine": describe_machine(),
            "model": args.model,
            "requests": args.requests,
            "threads": args.threads,
            "rows": rows,
        },
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_row(r: dict[str, Any], base: dict[str, Any]) -> str:
    """Return one table line for row ``r`` (memory growth against ``base``)."""
    rss = r["rss_mib"]
    grow = {role: rss[role] - base["rss_mib"][role] for role in ROLES}
    statuses = ",".join(f"{k}:{v}" for k, v in sorted(r["attack_statuses"].items())) or "-"
    return (
        f"{r['attack']:18s} {r['attack_calls']:7d} {statuses[:38]:38s} "
        f"{r['honest_ok']:3d}/{r['honest_ok'] + r['honest_failed']:<3d} "
        f"{_fmt(r['p50_s']):>6s} {_fmt(r['p95_s']):>6s} "
        + " ".join(f"{rss[role]:7.0f}({grow[role]:+5.0f})" for role in ROLES)
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """Return the whole table."""
    head = (
        f"{'attack':18s} {'calls':>7s} {'statuses':38s} {'ok':>7s} {'p50 s':>6s} {'p95 s':>6s} "
        + " ".join(f"{role + ' MiB':>13s}" for role in ROLES)
    )
    return "\n".join([head, *(format_row(r, rows[0]) for r in rows)])


if __name__ == "__main__":
    main()

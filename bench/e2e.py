"""End-to-end costs of verified generation on the CPU, with the real model.

Measures, for each output length: generation time, commitment overhead (proving prefill +
tile encoding + Merkle hashing + signing) as a fraction of generation, per-verifier
verification time (challenge, proof checks, re-execution of k layers, embedding check) as a
fraction of generation, the executor's time to serve the openings, the bytes a verifier
downloads, and the receipt size. Also one full request over loopback gRPC per length.

Run: ``./dev python -m bench.e2e [--model smollm2|tiny] [--tokens 64 256] [--repeats 3]``.
Prints a table and writes ``bench/results/e2e-<model>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy, Outcome, Tally, build_receipt, compute_request
from bft.attempt import Attempt, Contact, Verify
from bft.crypto import SigningKey
from bft.messages import InferenceRequest, SamplingParams, SignedCommitment, Vote
from bft.types import PublicKey
from bft.validators import ValidatorSet, make_genesis
from bft.verifier import Session, VerifierCore
from executor.backend import TorchBackend
from executor.core import ExecutorCore, compute_tiles
from executor.model import load_smollm2, load_tiny
from merkle.tree import ActivationTree
from proto import convert
from verihive.inprocess import Calls, drive
from verihive.receipts import receipt_to_json

PROMPT = "Write a long story about a lighthouse keeper and the sea."
NETWORK = "bench"


def verify_timed(
    request: InferenceRequest,
    signed: SignedCommitment,
    executor: ExecutorCore,
    verifiers: dict[PublicKey, VerifierCore],
    validators: ValidatorSet,
) -> tuple[Tally, list[float], list[float], list[int]]:
    """Return the certified tally of ``signed`` through the attempt machine ([ASM.7]), with each
    verifier's time, the executor's time to open, and the bytes opened, per verifier."""
    v_times: list[float] = []
    o_times: list[float] = []
    o_bytes: list[int] = []

    def on_verify(action: Verify) -> Vote:
        """Verify as the gRPC service does, timing the verifier and the executor apart."""
        verifier = verifiers[action.verifier.key]
        opened = 0
        t0 = time.perf_counter()
        result = verifier.start(action.request, action.signed)
        verify_s, open_s = time.perf_counter() - t0, 0.0
        while isinstance(result, Session):  # the base challenge, and an escalation if any
            t1 = time.perf_counter()
            response = executor.on_open(signed.digest, result.challenge.required_tiles())
            t2 = time.perf_counter()
            result = verifier.on_openings(result, response)
            t3 = time.perf_counter()
            verify_s += t3 - t2
            open_s += t2 - t1
            opened += convert.opening_response_to_pb(response).ByteSize()
        v_times.append(verify_s)
        o_times.append(open_s)
        o_bytes.append(opened)
        return result

    attempt = Attempt(
        0,
        request,
        Contact(executor.key.public_key, "executor"),
        validators,
        {pk: (Contact(pk, pk.hex()),) for pk in verifiers},
    )
    calls = Calls(
        lambda _action: signed,  # executed above, timed step by step
        on_verify,
        lambda a: verifiers[a.verifier.key].confirm(a.request, a.signed, a.accusation),
    )
    drive(attempt, calls)
    assert attempt.result is not None and attempt.result.outcome is Outcome.CERTIFIED
    tally = attempt.result.tally
    assert tally is not None
    return tally, v_times, o_times, o_bytes


def measure(loaded: Any, n_tokens: int, repeats: int, k: int) -> dict[str, Any]:
    """Return median timings for ``n_tokens`` generated tokens."""
    backend = TorchBackend(loaded.model)
    vkeys = [SigningKey.generate() for _ in range(4)]
    genesis = make_genesis(NETWORK, vkeys)
    validators = genesis.vset
    verifiers = {
        v.public_key: VerifierCore(
            v, backend, loaded.model_id, backend.info.num_layers, backend.info.hidden_size, NETWORK
        )
        for v in vkeys
    }
    prompt = tuple(
        loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    sampling = SamplingParams(max_new_tokens=n_tokens, stop_at_eos=False)
    policy = AssemblerPolicy(NETWORK, layers_per_verifier=k)
    key = SigningKey.generate()
    executor = ExecutorCore(key, backend, loaded.model_id, NETWORK)
    rows: dict[str, list[float]] = {
        "generate_s": [],
        "prove_s": [],
        "tiles_s": [],
        "merkle_s": [],
        "sign_s": [],
        "commit_total_s": [],
        "verify_s": [],
        "open_s": [],
        "opened_bytes": [],
        "receipt_json_bytes": [],
        "receipt_pb_bytes": [],
    }
    for _ in range(repeats):
        request = compute_request(
            policy, os.urandom(16), loaded.model_id, prompt, sampling, validators
        )
        t0 = time.perf_counter()
        output = backend.generate(list(prompt), sampling, request.sampling_seed())
        t1 = time.perf_counter()
        states = backend.prove(list(prompt) + output)
        t2 = time.perf_counter()
        leaves = compute_tiles(states, executor.chunk_size)
        t3 = time.perf_counter()
        ActivationTree(leaves)
        t4 = time.perf_counter()
        signed = executor.on_execute(request)  # the real path, to get a commitment to verify
        t5 = time.perf_counter()
        key.sign(signed.commitment.signing_root())
        t6 = time.perf_counter()
        assert len(signed.commitment.output_tokens) == n_tokens
        rows["generate_s"].append(t1 - t0)
        rows["prove_s"].append(t2 - t1)
        rows["tiles_s"].append(t3 - t2)
        rows["merkle_s"].append(t4 - t3)
        rows["sign_s"].append(t6 - t5)
        rows["commit_total_s"].append((t2 - t1) + (t3 - t2) + (t4 - t3) + (t6 - t5))
        tally, v_times, o_times, o_bytes = verify_timed(
            request, signed, executor, verifiers, validators
        )
        rows["verify_s"].append(statistics.mean(v_times))
        rows["open_s"].append(statistics.mean(o_times))
        rows["opened_bytes"].append(statistics.mean(o_bytes))
        receipt = convert.receipt_to_pb(build_receipt(tally, genesis))
        rows["receipt_json_bytes"].append(len(receipt_to_json(receipt).encode()))
        rows["receipt_pb_bytes"].append(receipt.ByteSize())
    med = {name: statistics.median(vals) for name, vals in rows.items()}
    med["commit_fraction"] = med["commit_total_s"] / med["generate_s"]
    med["verify_fraction"] = med["verify_s"] / med["generate_s"]
    med["tokens"] = n_tokens
    med["prompt_tokens"] = len(prompt)
    return med


def measure_grpc(loaded: Any, n_tokens: int) -> float:
    """Return the wall time of one certified request over loopback gRPC."""
    from verihive.localnet import LocalNetConfig, start_local_network

    with start_local_network(loaded, LocalNetConfig()) as net:
        t = time.perf_counter()
        _, attempts = net.assembler.infer(
            PROMPT, SamplingParams(max_new_tokens=n_tokens, stop_at_eos=False)
        )
        elapsed = time.perf_counter() - t
    assert attempts[-1].outcome.value == "certified", attempts[-1].reason
    return elapsed


def main() -> None:
    """Run the benchmark, print the table, write JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=2, help="layers per verifier")
    args = p.parse_args()
    loaded = load_smollm2() if args.model == "smollm2" else load_tiny()
    results = []
    for n in args.tokens:
        row = measure(loaded, n, args.repeats, args.k)
        row["grpc_request_s"] = measure_grpc(loaded, n)
        results.append(row)
    header = (
        f"{'tokens':>6} {'generate s':>10} {'commit s':>9} {'commit/gen':>10} "
        f"{'verify s':>9} {'verify/gen':>10} {'open s':>7} {'opened MB':>9} "
        f"{'receipt B':>9} {'gRPC req s':>10}"
    )
    print(f"model {loaded.name}, k={args.k}, 4 verifiers, median of {args.repeats}")
    print(header)
    for r in results:
        print(
            f"{r['tokens']:>6} {r['generate_s']:>10.3f} {r['commit_total_s']:>9.3f} "
            f"{r['commit_fraction']:>10.3f} {r['verify_s']:>9.4f} {r['verify_fraction']:>10.4f} "
            f"{r['open_s']:>7.3f} {r['opened_bytes'] / 1e6:>9.2f} {r['receipt_json_bytes']:>9.0f} "
            f"{r['grpc_request_s']:>10.2f}"
        )
    path = write_results(
        f"e2e-{args.model}",
        {
            "machine": describe_machine(),
            "model": loaded.name,
            "model_id": loaded.model_id.hex(),
            "k": args.k,
            "repeats": args.repeats,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

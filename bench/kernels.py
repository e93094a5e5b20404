"""CPU kernel sets as honest-noise sources: executor and verifier in processes on other kernels.

A *kernel set* caps every CPU math library torch uses at one instruction set, the way another
CPU would run them: ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``), MKL's BLAS
(``MKL_ENABLE_INSTRUCTIONS``) and oneDNN (``ONEDNN_MAX_CPU_ISA``). These variables are read when
the libraries load, so each set runs in a process of its own. [CAL.3]

Worker commands (run by :mod:`bench.calibrate` and :mod:`bench.crosskernel`, each under one
kernel set's environment; requests travel as the protocol's own protobuf bytes):

- ``prove [--dtype D] REQUESTS OUT``: generate every request, prove it, save tokens and
  states (``.npz``);
- ``measure [--dtype D] REQUESTS PROOFS OUT``: measure every check of
  :func:`bench.calibrate.measure` on those states with this process's kernels;
- ``executor``: serve an honest executor over gRPC on loopback (prints ``PORT <n>``; stops when
  its standard input closes);
- ``verify ADDRESS RUNS OUT``: run ``RUNS`` requests against that executor through a committee
  of 4 verifiers with the calibrated bands, fetching openings over gRPC; write every vote.

Run: ``./dev python -m bench.kernels sets`` lists the sets this CPU offers, widest first;
``env SET`` prints a set's environment; ``SET check`` checks that torch takes it
(``tools/ci/kernels.sh`` re-runs tests under every set but the widest with these).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

KERNEL_SETS: dict[str, dict[str, Any]] = {
    "avx512": {
        "cpu_flags": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
        "env": {
            "ATEN_CPU_CAPABILITY": "avx512",
            "MKL_ENABLE_INSTRUCTIONS": "AVX512",
            "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        },
        "aten": "AVX512",
    },
    "avx2": {
        "cpu_flags": ("avx2", "fma"),
        "env": {
            "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
        },
        "aten": "AVX2",
    },
    "default": {
        "cpu_flags": (),
        "env": {
            "ATEN_CPU_CAPABILITY": "default",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
        },
        "aten": "DEFAULT",
    },
}
"""Kernel sets, widest first: the CPU flags each needs, its environment, ATen's name for it."""


def get_cpu_flags() -> frozenset[str]:
    """Return this CPU's feature flags (empty where ``/proc/cpuinfo`` has none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def get_kernel_sets() -> list[str]:
    """Return the kernel sets this CPU can run, widest first (``default`` always)."""
    flags = get_cpu_flags()
    return [name for name, s in KERNEL_SETS.items() if set(s["cpu_flags"]) <= flags]


def compute_kernel_env(name: str) -> dict[str, str]:
    """Return this process's environment with kernel set ``name`` applied."""
    return {**os.environ, **KERNEL_SETS[name]["env"]}


def check_kernel_set(name: str) -> None:
    """Raise unless torch in this process runs ATen kernel set ``name``."""
    import torch

    got = torch.backends.cpu.get_cpu_capability()
    if got != KERNEL_SETS[name]["aten"]:
        raise SystemExit(f"kernel set {name}: torch runs {got} (environment not applied?)")


def run_worker(
    kernel_set: str, args: Sequence[str], **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m bench.kernels KERNEL_SET ARGS`` under kernel set ``kernel_set``."""
    return subprocess.run(
        [sys.executable, "-m", "bench.kernels", kernel_set, *args],
        check=True,
        cwd=ROOT,
        env=compute_kernel_env(kernel_set),
        **kw,
    )


def start_worker(kernel_set: str, args: Sequence[str]) -> subprocess.Popen[str]:
    """Start ``python -m bench.kernels KERNEL_SET ARGS`` under ``kernel_set``; pipes on stdio."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.kernels", kernel_set, *args],
        cwd=ROOT,
        env=compute_kernel_env(kernel_set),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def encode_requests(requests: Sequence[Any]) -> str:
    """Return ``requests`` as JSON lines of base64 protobuf bytes."""
    from proto import convert

    return "\n".join(
        base64.b64encode(convert.request_to_pb(r).SerializeToString()).decode() for r in requests
    )


def decode_requests(text: str) -> list[Any]:
    """Return the requests of :func:`encode_requests`'s ``text``, validated."""
    from proto import convert
    from proto import verihive_pb2 as pb

    out = []
    for line in text.splitlines():
        m = pb.InferenceRequest()
        m.ParseFromString(base64.b64decode(line))
        out.append(convert.request_from_pb(m))
    return out


# -- worker commands -------------------------------------------------------------------------


def cmd_prove(requests_path: str, out_path: str, dtype: str) -> None:
    """Generate and prove every request in ``dtype``; save ``tokens_i`` and ``states_i``."""
    import numpy as np

    from executor.backend import DTYPES, TorchBackend
    from executor.model import load_smollm2

    backend = TorchBackend(load_smollm2().model, dtype=DTYPES[dtype])
    arrays: dict[str, Any] = {}
    for i, r in enumerate(decode_requests(Path(requests_path).read_text())):
        tokens = list(r.prompt_tokens) + backend.generate(
            list(r.prompt_tokens), r.sampling, r.sampling_seed()
        )
        arrays[f"tokens_{i}"] = np.array(tokens, dtype=np.int64)
        arrays[f"states_{i}"] = backend.prove(tokens)
    np.savez(out_path, **arrays)


def cmd_measure(requests_path: str, proofs_path: str, out_path: str, dtype: str) -> None:
    """Measure every check of every proof with this process's kernels, a ``dtype`` verifier."""
    import numpy as np

    from bench.calibrate import measure
    from executor.backend import DTYPES, TorchBackend
    from executor.model import load_smollm2

    backend = TorchBackend(load_smollm2().model, dtype=DTYPES[dtype])
    proofs = np.load(proofs_path)
    out: dict[str, Any] = {}
    for i, r in enumerate(decode_requests(Path(requests_path).read_text())):
        m = measure(backend, r, proofs[f"tokens_{i}"].tolist(), proofs[f"states_{i}"])
        out |= {f"{check}_{i}": v for check, v in m.items()}
    np.savez(out_path, **out)


NETWORK = "crosskernel"
ORDERING_SEED = hashlib.sha256(b"crosskernel-assembler").digest()
"""Seed of the key this bench orders its executor's work with, as an assembler does [ADMIT.1]."""
HELD_OUT_PROMPTS = [
    "Name two rivers in Africa and the seas they flow into.",
    "Write a limerick about a cat who learns to code.",
    "Why is the sky blue? Answer in two sentences.",
    "Give three tips for keeping houseplants alive in winter.",
    "What is the difference between weather and climate?",
    "Describe how a bicycle gear works to a ten-year-old.",
    "Summarise the plot of a heist film you invent, in three lines.",
    "Convert 72 degrees Fahrenheit to Celsius and show the steps.",
]
"""Prompts of the cross-kernel runs: none of them is one the bands were calibrated on."""


def verifier_keys(seed: str) -> list[Any]:
    """Return the 4 committee keys of the cross-kernel runs for ``seed``."""
    from bft.crypto import SigningKey

    return [
        SigningKey.from_seed(hashlib.sha256(f"{NETWORK}-verifier-{seed}-{i}".encode()).digest())
        for i in range(4)
    ]


def cmd_executor(seed: str) -> None:
    """Serve one honest executor on loopback until standard input closes."""
    from bft.crypto import SigningKey
    from executor.backend import TorchBackend
    from executor.core import ExecutorCore
    from executor.model import load_smollm2
    from verihive.rpc import add_bounded_servicer, make_server
    from verihive.services import ExecutorService

    ORDERING_KEY = SigningKey.from_seed(ORDERING_SEED)

    loaded = load_smollm2()
    key = SigningKey.from_seed(hashlib.sha256(f"{NETWORK}-executor-{seed}".encode()).digest())
    core = ExecutorCore(key, TorchBackend(loaded.model), loaded.model_id, NETWORK)
    server = make_server(max_workers=4)
    admitted = frozenset({ORDERING_KEY.public_key})  # this bench orders its own requests
    add_bounded_servicer(ExecutorService(core, admitted=admitted), server, "verihive.v1.Executor")
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes the pipe
    finally:
        server.stop(grace=1.0).wait()


def cmd_verify(address: str, runs: int, out_path: str, seed: str, label: str) -> None:
    """Run ``runs`` requests on the executor at ``address``; write each verifier's vote."""
    import grpc

    from bench.detection import Harness
    from bft.assembler import AssemblerPolicy
    from bft.crypto import SigningKey
    from bft.errors import Unavailable
    from bft.messages import OpeningResponse, SamplingParams
    from bft.types import PublicKey
    from bft.verifier import Session
    from proto import convert
    from proto import verihive_pb2 as pb
    from proto import verihive_pb2_grpc as pb_grpc
    from verihive.rpc import (
        EXECUTE_TIMEOUT_S,
        INFO_TIMEOUT_S,
        MAX_OPEN_MESSAGE_BYTES,
        OPEN_TIMEOUT_S,
        make_channel,
    )
    from verihive.work import make_execute

    ORDERING_KEY = SigningKey.from_seed(ORDERING_SEED)

    # Every verifier draws the whole-sequence check (q = 1): all four checks on every run.
    policy = AssemblerPolicy(NETWORK, sequence_check_ppm=1_000_000)
    h = Harness(NETWORK, verifier_keys(seed), policy, HELD_OUT_PROMPTS)
    channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    stub = pb_grpc.ExecutorStub(channel)
    info = stub.GetInfo(pb.NodeInfoRequest(), timeout=INFO_TIMEOUT_S)
    executor_key = PublicKey(info.public_key)
    results = []
    for i in range(runs):
        sampling = SamplingParams(
            temperature=0.0 if i % 2 == 0 else 0.7,
            top_p=0.95 if i % 4 == 3 else 1.0,
            max_new_tokens=16,
            stop_at_eos=False,
        )
        rid = hashlib.sha256(f"{NETWORK}-{seed}-{label}-{i}".encode()).digest()[:16]
        request = h.request(i, sampling, request_id=rid)
        raw = stub.Execute(make_execute(ORDERING_KEY, request), timeout=EXECUTE_TIMEOUT_S)
        signed = convert.commitment_from_pb(raw.commitment)

        def fetch(session: Session, digest: bytes = signed.digest) -> OpeningResponse:
            tiles = [convert.tile_to_pb(t) for t in session.challenge.required_tiles()]
            m = pb.OpenRequest(commitment_digest=digest, tiles=tiles)
            try:
                return convert.opening_response_from_pb(stub.Open(m, timeout=OPEN_TIMEOUT_S))
            except grpc.RpcError as exc:
                raise Unavailable(exc.code().name) from exc

        certified, votes = h.verify(request, signed, executor_key, fetch)
        results.append(
            {
                "run": i,
                "certified": certified,
                "votes": [
                    {
                        "verdict": vote.verdict.name,
                        "escalated": vote.escalated,
                        "layer": vote.max_error,
                        "embedding": vote.embedding_max_error,
                        "sampler": vote.max_margin,
                        "sequence": vote.sequence_check.mismatch if vote.sequence_check else None,
                        "reason": vote.reason,
                    }
                    for vote in votes
                ],
            }
        )
    channel.close()
    Path(out_path).write_text(json.dumps(results) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "sets":
        print(" ".join(get_kernel_sets()))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "env":  # KEY=VALUE lines, for shell scripts
        print("\n".join(f"{k}={v}" for k, v in KERNEL_SETS[sys.argv[2]]["env"].items()))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kernel_set", choices=sorted(KERNEL_SETS))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prove")
    s.add_argument("--dtype", default="float32")
    s.add_argument("requests")
    s.add_argument("out")
    s = sub.add_parser("measure")
    s.add_argument("--dtype", default="float32")
    s.add_argument("requests")
    s.add_argument("proofs")
    s.add_argument("out")
    sub.add_parser("check", help="only check that torch runs this kernel set")
    s = sub.add_parser("executor")
    s.add_argument("--seed", default="0")
    s = sub.add_parser("verify")
    s.add_argument("address")
    s.add_argument("runs", type=int)
    s.add_argument("out")
    s.add_argument("--seed", default="0")
    s.add_argument("--label", default="")
    args = p.parse_args()
    check_kernel_set(args.kernel_set)
    if args.cmd == "prove":
        cmd_prove(args.requests, args.out, args.dtype)
    elif args.cmd == "measure":
        cmd_measure(args.requests, args.proofs, args.out, args.dtype)
    elif args.cmd == "check":
        return
    elif args.cmd == "executor":
        cmd_executor(args.seed)
    else:
        cmd_verify(args.address, args.runs, args.out, args.seed, args.label)


if __name__ == "__main__":
    main()

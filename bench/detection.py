"""Detection rates of every byzantine mode, against the sampling model; honest false rejects.

For each mode in ``simnet.executors.MODES``: ``--requests`` requests with the default policy
(k = 2 layers and m = 4 sampler positions per verifier, the sketch check with probability
q = 0.1 per verifier, committee of n = 4, f = 1), SmolLM2,
temperature 0.7, 8 output tokens (fixed length; ``--tokens``), run through the real protocol
cores (the gRPC path is covered by the tests). A request is *caught* when it gets no certificate.

For partial cheats each request also gets the model's catch probability, from ground truth
measured on the committed states: a lie on the layer set S escapes one verifier with
``C(L-|S|, k) / C(L, k)``; a lie at d of the n_out output positions (d = positions whose sampler
margin exceeds reject_min) escapes one verifier with ``C(n_out-d, m) / C(n_out, m)``; a request
escapes when all n verifiers miss; a verifier that draws the sketch check (probability q) sees
every lie that changes the last boundary (measured per commitment). Measured and predicted
rates are compared with a z-score.

``--honest`` runs honest executors whose states come from each noise source of
``bench.calibrate`` in turn, and counts false rejects.

Run: ``./dev python -m bench.detection [--requests 100] [--honest 1000] [--modes a,b]
[--out NAME] [--seed S]``; writes ``bench/results/detection.json`` (``NAME.json``);
``docs/detection.md`` quotes it. Keys and request ids come from ``--seed`` (default 0), so a
re-run on one machine gives the same table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.calibrate import PROMPTS, prove_kv_decode, prove_padded_batch, prove_threads_1
from bench.common import describe_machine, write_results
from bft.assembler import AssemblerPolicy, Outcome, compute_request
from bft.attempt import Attempt, Confirm, Contact, Verify
from bft.confirmation import Confirmation
from bft.crypto import SigningKey
from bft.encoding import sha256
from bft.messages import InferenceRequest, OpeningResponse, SamplingParams, SignedCommitment, Vote
from bft.thresholds import load_thresholds
from bft.types import PublicKey
from bft.validators import ValidatorSet
from bft.verifier import Session, VerifierCore
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from executor.model import load_smollm2
from merkle.sketch import measure_sketch
from merkle.tiles import HEADER_SIZE
from simnet.executors import MODES, PARTIAL_MODES, make_byzantine_executor
from verihive.inprocess import Calls, drive

RESULT_PATH = Path(__file__).resolve().parent / "results" / "detection.json"
NETWORK = "detection"
SAMPLING = SamplingParams(temperature=0.7, max_new_tokens=8, stop_at_eos=False)


class Harness:
    """A committee of verifiers over SmolLM2 and a request factory."""

    def __init__(
        self,
        network: str = NETWORK,
        keys: list[SigningKey] | None = None,
        policy: AssemblerPolicy | None = None,
        prompts: list[str] = PROMPTS,
        seed: int = 0,
    ) -> None:
        """Build the committee of ``keys`` (4 seeded ones by default) under ``policy``."""
        self.loaded = load_smollm2()
        self.backend = TorchBackend(self.loaded.model)
        self.thresholds = load_thresholds()
        self.seed = seed
        self.rng = random.Random(seed)
        keys = keys or [self.key(f"verifier-{i}") for i in range(4)]
        self.validators = ValidatorSet.of_keys(network, (k.public_key for k in keys))
        info = self.backend.info
        self.verifiers = {
            k.public_key: VerifierCore(
                k,
                self.backend,
                self.loaded.model_id,
                info.num_layers,
                info.hidden_size,
                network,
                self.thresholds,
            )
            for k in keys
        }
        self.policy = policy or AssemblerPolicy(network)
        self.prompts = [
            tuple(
                self.loaded.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
            )
            for p in prompts
        ]

    def request(
        self, i: int, sampling: SamplingParams = SAMPLING, request_id: bytes | None = None
    ) -> InferenceRequest:
        """Return request ``i`` (prompt ``i`` mod their number); a seeded id by default."""
        return compute_request(
            self.policy,
            request_id or self.rng.randbytes(16),
            self.loaded.model_id,
            self.prompts[i % len(self.prompts)],
            sampling,
            self.validators,
        )

    def key(self, label: str) -> SigningKey:
        """Return the key named ``label`` under this harness's seed."""
        return SigningKey.from_seed(sha256(f"detection/{self.seed}/{label}".encode()))

    def run(self, ex: ExecutorCore, request: InferenceRequest) -> tuple[bool, list[Vote], Any]:
        """Return (certified, votes, signed commitment) for one request on ``ex``."""
        signed = ex.on_execute(request)
        certified, votes = self.verify(
            request,
            signed,
            ex.key.public_key,
            lambda s: ex.on_open(signed.digest, s.challenge.required_tiles()),
        )
        return certified, votes, signed

    def verify(
        self,
        request: InferenceRequest,
        signed: SignedCommitment,
        executor_key: PublicKey,
        fetch: Callable[[Session], OpeningResponse],
    ) -> tuple[bool, list[Vote]]:
        """Return (certified, votes) of the committee on ``signed``, which ``executor_key`` was
        asked for; ``fetch`` opens tiles. The assembler's attempt machine decides ([ASM.7]):
        [ASM.2], the votes, and the confirmation round of any REJECT."""
        votes: list[Vote] = []

        def on_verify(action: Verify) -> Vote:
            vote = self.verifiers[action.verifier.key].run(action.request, action.signed, fetch)
            votes.append(vote)
            return vote

        def on_confirm(action: Confirm) -> Confirmation | None:
            core = self.verifiers[action.verifier.key]
            return core.confirm(action.request, action.signed, action.accusation)

        attempt = Attempt(
            0,
            request,
            Contact(executor_key, "executor"),
            self.validators,
            {pk: (Contact(pk, pk.hex()),) for pk in self.verifiers},
        )
        drive(attempt, Calls(lambda _action: signed, on_verify, on_confirm))
        assert attempt.result is not None  # every call is answered: the attempt settles
        return attempt.result.outcome is Outcome.CERTIFIED, votes

    def committed_states(self, ex: ExecutorCore, signed: Any) -> np.ndarray:
        c = signed.commitment
        run = ex.get_run(signed.digest)
        return np.stack(
            [
                np.concatenate(
                    [
                        np.frombuffer(
                            run.tree.get_leaf(b * c.num_chunks + k)[HEADER_SIZE:], "<f4"
                        ).reshape(-1, c.hidden_size)
                        for k in range(c.num_chunks)
                    ]
                )
                for b in range(c.num_layers + 1)
            ]
        )

    def predicted_catch(
        self, mode: str, ex: ExecutorCore, request: InferenceRequest, signed: Any
    ) -> float:
        """Return the model's probability that this request is caught.

        One verifier misses the lie when its k layers (or m positions) miss it and it does
        not draw the sketch check (probability 1 - q), or draws it and the sketch cannot see
        the lie (measured: the sketch check's mismatch on this commitment <= reject_min).
        """
        c = signed.commitment
        n = request.committee_size
        q = request.sequence_check_ppm / 1e6
        sketch = self.sketch_sees(signed)
        if mode in ("skip-layer", "perturb-layer", "selective"):
            lied = ex.lied_layers[-1]  # type: ignore[attr-defined]
            big_l, k = c.num_layers, request.layers_per_verifier
            escape = math.comb(big_l - len(lied), k) / math.comb(big_l, k)
        elif mode == "bad-sketch":
            escape = 1.0
        else:
            states = self.committed_states(ex, signed)
            n_out, m = len(c.output_tokens), request.positions_per_verifier
            bad = 0
            for p in range(c.prompt_len, len(c.tokens)):
                h = states[-1][p - 1][None]
                margin = self.backend.sampler_margin(h, request, p, c.tokens[p])
                bad += margin > self.thresholds.sampler.reject_min
            escape = math.comb(n_out - bad, m) / math.comb(n_out, m)
        escape *= 1.0 - q * sketch
        return 1.0 - escape**n

    def sketch_sees(self, signed: Any) -> bool:
        """Return whether the sketch check rejects ``signed`` (ground truth for the model)."""
        c = signed.commitment
        sq = measure_sketch(self.backend.final_states(c.tokens), c.sketch)
        return sq.mismatch > self.thresholds.sequence.reject_min


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


class NoisyExecutor(ExecutorCore):
    """An honest executor whose proving prefill comes from one noise source."""

    def __init__(self, *args: Any, prove: Callable[[list[int], int], np.ndarray], **kw: Any):
        super().__init__(*args, **kw)
        self.prove = prove
        self._prompt_len = 0

    def on_execute(self, request: InferenceRequest):  # type: ignore[no-untyped-def]
        self._prompt_len = len(request.prompt_tokens)
        return super().on_execute(request)

    def compute_states(self, tokens: list[int]) -> np.ndarray:
        return self.prove(tokens, self._prompt_len)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--honest", type=int, default=1000)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--tokens", type=int, default=SAMPLING.max_new_tokens, help="output tokens")
    p.add_argument(
        "--out",
        default="detection",
        help="result name: bench/results/<out>.json (a partial re-run keeps the full table)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of keys and request ids")
    args = p.parse_args()
    sampling = dataclasses.replace(SAMPLING, max_new_tokens=args.tokens)
    h = Harness(seed=args.seed)
    start = time.time()
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        ex = make_byzantine_executor(
            mode,
            h.key(f"executor-{mode}"),
            h.loaded.model,
            h.loaded.model_id,
            NETWORK,
            16,
            seed=len(rows),
        )
        caught, predicted, checks = 0, [], {}
        t0 = time.time()
        for i in range(args.requests):
            request = h.request(i, sampling)
            certified, votes, signed = h.run(ex, request)
            caught += not certified
            for v in votes:
                if v.evidence is not None:
                    checks[v.evidence.check.value] = checks.get(v.evidence.check.value, 0) + 1
            if mode in PARTIAL_MODES:
                predicted.append(h.predicted_catch(mode, ex, request, signed))
        n = args.requests
        row: dict[str, Any] = {
            "mode": mode,
            "partial": mode in PARTIAL_MODES,
            "requests": n,
            "caught": caught,
            "rate": caught / n,
            "ci95": wilson(caught, n),
            "evidence": checks,
            "seconds": time.time() - t0,
        }
        if predicted:
            mean = float(np.mean(predicted))
            sd = math.sqrt(sum(q * (1 - q) for q in predicted)) / n
            row.update(predicted=mean, z=(caught / n - mean) / sd if sd > 0 else 0.0)
        rows.append(row)
        extra = f" predicted {row['predicted']:.3f} z {row['z']:+.2f}" if predicted else ""
        print(f"{mode:20s} caught {caught:3d}/{n} ({caught / n:.3f}){extra}  {checks}", flush=True)
        del ex
    modes_run = [m for m in args.modes.split(",") if m]
    result_path = RESULT_PATH.with_name(f"{args.out}.json")
    if not modes_run and result_path.exists():  # an honest-only run keeps the measured modes
        previous = json.loads(result_path.read_text())
        rows, sampling = previous["modes"], SamplingParams(**previous["sampling"])
    honest = run_honest(h, args.honest)
    write_results(
        args.out,
        {
            "machine": describe_machine(),
            "model": h.loaded.name,
            "sampling": dataclasses.asdict(sampling),
            "policy": {
                "k": h.policy.layers_per_verifier,
                "m": h.policy.positions_per_verifier,
                "q": h.policy.sequence_check_ppm / 1e6,
                "n": 3 * h.policy.f + 1,
                "f": h.policy.f,
            },
            "thresholds": {
                name: dataclasses.asdict(band)
                for name, band in (
                    ("layer", h.thresholds.layer),
                    ("embedding", h.thresholds.embedding),
                    ("sampler", h.thresholds.sampler),
                    ("sequence", h.thresholds.sequence),
                )
            },
            "modes": rows,
            "honest": honest,
            "seed": args.seed,
            "seconds": time.time() - start,
        },
    )


def run_honest(h: Harness, total: int) -> dict[str, Any]:
    """Run ``total`` honest requests cycling over the noise sources; count false rejects."""
    sources: dict[str, Callable[[list[int], int], np.ndarray]] = {
        "fresh prefill": lambda t, _p: h.backend.prove(t),
        "1 thread": lambda t, _p: prove_threads_1(h.backend, t),
        "padded batch": lambda t, _p: prove_padded_batch(h.backend, t),
        "KV-cache decoding": lambda t, p: prove_kv_decode(h.backend.model, t, p),
    }
    per: dict[str, dict[str, int]] = {}
    executors = {
        name: NoisyExecutor(
            h.key(f"honest-{name}"), h.backend, h.loaded.model_id, NETWORK, prove=prove
        )
        for name, prove in sources.items()
    }
    names = list(sources)
    for i in range(total):
        name = names[i % len(names)]
        sampling = SamplingParams(
            temperature=0.0 if i % 3 == 0 else 0.8,
            top_p=0.9 if i % 5 == 0 else 1.0,
            max_new_tokens=8,
        )
        certified, votes, _ = h.run(executors[name], h.request(i, sampling))
        s = per.setdefault(name, {"runs": 0, "false_rejects": 0, "votes": 0, "escalated": 0})
        s["runs"] += 1
        s["false_rejects"] += not certified
        s["votes"] += len(votes)
        s["escalated"] += sum(v.escalated for v in votes)
        if (i + 1) % 100 == 0:
            print(
                f"honest {i + 1}/{total}: false rejects "
                f"{sum(x['false_rejects'] for x in per.values())}",
                flush=True,
            )
    return {
        "total": total,
        "false_rejects": sum(x["false_rejects"] for x in per.values()),
        "by_source": per,
    }


if __name__ == "__main__":
    main()

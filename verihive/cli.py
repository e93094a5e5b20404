"""Command-line entry points: ``bft-infer`` and ``bft-verify``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bft.crypto import compute_node_id
from bft.errors import Malformed, ProtocolError
from bft.messages import SamplingParams, Verdict
from bft.receipt import check_receipt
from bft.types import PublicKey, short_hex
from executor.byzantine import MODES
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive.receipts import receipt_from_json, receipt_to_json, receipt_to_obj
from verihive.rpc import INFER_TIMEOUT_S, make_channel


def _vote_obj(v: pb.Vote) -> dict[str, Any]:
    return {
        "verifier": compute_node_id(PublicKey(v.verifier_key)).hex(),
        "verdict": Verdict(v.verdict).name,
        "layers": [c.layer for c in v.layer_checks],
        "max_error": max((c.max_rel_error for c in v.layer_checks), default=0.0),
        "embedding_error": v.embedding_max_error,
        "reason": v.reason,
    }


def build_result(
    reply: pb.InferResponse, model_name: str, model_id: bytes, seconds: float
) -> dict[str, Any]:
    """Return the ``--json`` object for ``reply``."""
    accepted_attempt = next((a for a in reply.attempts if a.accepted), None)
    c = reply.receipt.commitment.commitment
    return {
        "text": reply.text,
        "accepted": reply.accepted,
        "model": model_name,
        "model_id": model_id.hex(),
        "executor": accepted_attempt.executor_id.hex() if accepted_attempt else None,
        "merkle_root": c.merkle_root.hex() if reply.accepted else None,
        "output_tokens": len(c.tokens) - c.prompt_len if reply.accepted else 0,
        "votes": [_vote_obj(v) for v in accepted_attempt.votes] if accepted_attempt else [],
        "receipt": receipt_to_obj(reply.receipt) if reply.accepted else None,
        "attempts": [
            {
                "executor": a.executor_id.hex(),
                "accepted": a.accepted,
                "verdicts": [Verdict(v.verdict).name for v in a.votes],
                "votes": [_vote_obj(v) for v in a.votes],
                "reason": a.reason,
                "seconds": round(a.seconds, 3),
            }
            for a in reply.attempts
        ],
        "seconds": round(seconds, 3),
    }


def format_summary(result: dict[str, Any]) -> str:
    """Return the human-readable verification summary of ``result``."""
    lines = [result["text"] if result["accepted"] else "(no certified answer)", "", "verification:"]
    lines.append(f"  model        {result['model']}  model_id {result['model_id'][:16]}")
    for i, a in enumerate(result["attempts"], 1):
        status = "ACCEPTED" if a["accepted"] else "REJECTED"
        lines.append(
            f"  attempt {i}    executor {a['executor'][:12]}  {status}  ({a['seconds']:.2f}s)"
        )
        if a["reason"]:
            lines.append(f"               reason: {a['reason']}")
        for v in a["votes"]:
            layers = ",".join(str(x) for x in v["layers"]) or "-"
            lines.append(
                f"    verifier {v['verifier'][:12]}  {v['verdict']:<11} layers {layers:<7}"
                f" max error {v['max_error']:.2e}"
            )
    if result["accepted"]:
        accepts = sum(1 for v in result["votes"] if v["verdict"] == "ACCEPT")
        lines.append(f"  executor     {result['executor'][:12]}")
        lines.append(f"  merkle root  {result['merkle_root']}")
        lines.append(f"  accepted     yes ({accepts} ACCEPT votes in the certificate)")
    else:
        lines.append("  accepted     no")
    lines.append(f"  time         {result['seconds']:.2f}s")
    return "\n".join(lines)


def infer_main(argv: list[str] | None = None) -> int:
    """Run ``bft-infer``: one verified request on an embedded loopback network."""
    p = argparse.ArgumentParser(
        prog="bft-infer",
        description="Run a prompt on an embedded verihive network (loopback gRPC).",
    )
    p.add_argument("prompt")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--receipt-out", type=Path, help="write the receipt JSON to this file")
    p.add_argument("--byzantine-executor", choices=MODES, help="make the first executor lie")
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--layers-per-verifier", type=int, default=2, help="k, layers each verifier checks"
    )
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    from executor.model import load_smollm2, load_tiny
    from verihive.localnet import LocalNetConfig, start_local_network

    start = time.monotonic()
    loaded = load_smollm2() if args.model == "smollm2" else load_tiny()
    config = LocalNetConfig(
        byzantine_executor=args.byzantine_executor, layers_per_verifier=args.layers_per_verifier
    )
    sampling = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
    )
    try:
        sampling.validate()
    except ProtocolError as exc:
        p.error(str(exc))
    with start_local_network(loaded, config) as net:
        channel = make_channel(net.assembler_address)
        try:
            stub = pb_grpc.AssemblerStub(channel)
            reply = stub.Infer(
                pb.InferRequest(prompt=args.prompt, sampling=convert.sampling_to_pb(sampling)),
                timeout=INFER_TIMEOUT_S,
            )
        finally:
            channel.close()
    result = build_result(reply, loaded.name, loaded.model_id, time.monotonic() - start)
    if args.receipt_out and reply.accepted:
        args.receipt_out.write_text(receipt_to_json(reply.receipt))
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0 if reply.accepted else 1


def _read_validators(path: Path) -> tuple[PublicKey, ...]:
    """Return the hex public keys listed one per line in ``path``."""
    keys = []
    for line in path.read_text().split():
        try:
            key = bytes.fromhex(line)
        except ValueError as exc:
            raise Malformed(f"{path}: not a hex key: {line[:20]!r}") from exc
        if len(key) != 32:
            raise Malformed(f"{path}: keys must be 32 bytes")
        keys.append(PublicKey(key))
    return tuple(keys)


def verify_main(argv: list[str] | None = None) -> int:
    """Run ``bft-verify``: offline checks (``receipt FILE``)."""
    p = argparse.ArgumentParser(prog="bft-verify", description="verihive validator tools")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "receipt", help="check a receipt offline (exit 0 valid, 1 invalid, 2 unreadable)"
    )
    r.add_argument("file", type=Path)
    r.add_argument(
        "--validators",
        type=Path,
        help="file of trusted validator public keys (hex, one per line) the receipt must name",
    )
    args = p.parse_args(argv)
    if args.command == "receipt":
        try:
            data = args.file.read_bytes()
        except OSError as exc:
            print(f"invalid: cannot read {args.file}: {exc.strerror}")
            return 2
        try:
            trusted = _read_validators(args.validators) if args.validators else None
            receipt = convert.receipt_from_pb(receipt_from_json(data))
            check_receipt(receipt, trusted)
        except ProtocolError as exc:
            print(f"invalid: {exc}")
            return 1
        c = receipt.signed_commitment.commitment
        print(
            f"valid: {len(receipt.votes)} ACCEPT votes (quorum {receipt.request.quorum})"
            f" on commitment {short_hex(receipt.signed_commitment.digest)}"
            f" by executor {short_hex(c.executor_id)},"
            f" {len(c.output_tokens)} output tokens, merkle root {c.merkle_root.hex()}"
        )
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(infer_main())

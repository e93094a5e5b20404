"""Command-line entry points: ``bft-infer`` and ``bft-verify``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from bft.assembler import DEFAULT_SEQUENCE_CHECK_PPM, AssemblerPolicy
from bft.crypto import compute_node_id
from bft.errors import CannotJudge, Malformed, ProtocolError
from bft.limits import MAX_LAYERS, MAX_TOKENS, MAX_VALIDATORS
from bft.messages import SamplingParams, Verdict
from bft.receipt import check_receipt
from bft.types import PublicKey, short_hex
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from simnet.executors import MODES
from simnet.verifiers import VERIFIER_MODES
from verihive.assembler import MAX_PROMPT_CHARS
from verihive.entry import (
    command,
    host_port,
    int_in,
    is_utf8,
    one_line,
    report,
    utf8_path,
)
from verihive.receipts import receipt_from_json, receipt_to_json, receipt_to_obj
from verihive.rpc import (
    INFER_TIMEOUT_S,
    INFO_TIMEOUT_S,
    MAX_OPEN_MESSAGE_BYTES,
    make_channel,
)

MAX_EVIDENCE_BYTES = 64 << 20
"""Bytes of an evidence or slash file ``bft-verify audit`` and ``slash`` read at most."""
MAX_RECEIPT_BYTES = 64 << 20
"""Bytes of a receipt file ``bft-verify receipt`` reads at most."""
MAX_VALIDATORS_BYTES = 2 * MAX_VALIDATORS * (2 * 32 + 2)
"""Bytes of a ``--validators`` file: every key on a line, with room for CRLF and blank lines."""
MAX_EXECUTORS = 64
"""Executors of an embedded network (``bft-infer --executors``), and requests hedged at once."""
DEVICE_KINDS = ("cpu", "cuda")
"""What ``--executor-device`` may name (``cuda:N`` too)."""


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def _device(text: str) -> str:
    """``type=`` of ``--executor-device``: ``cpu``, ``cuda`` or ``cuda:N``."""
    kind, sep, index = text.partition(":")
    if kind not in DEVICE_KINDS or (sep and not (kind == "cuda" and index.isdecimal())):
        raise argparse.ArgumentTypeError(f"not cpu, cuda or cuda:N: {text[:64]!r}")
    return text


def get_run_problem(args: argparse.Namespace) -> str | None:
    """Return why the run ``args`` asks for cannot go ahead, or ``None``; checked before any
    model loads or server starts. [CLI.1]"""
    return (
        get_prompt_problem(args.prompt)
        or get_output_problem(args.receipt_out, directory=False)
        or get_output_problem(args.evidence_out, directory=False)
        or get_output_problem(args.slashes_out, directory=True)
    )


def get_prompt_problem(prompt: str) -> str | None:
    """Return why ``prompt`` cannot be sent to an assembler, or ``None``. [CLI.1]"""
    if not is_utf8(prompt):
        return "the prompt is not valid UTF-8"
    if not prompt.strip():
        return "the prompt is empty"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"the prompt is {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}"
    return None


def get_device_problem(device: str) -> str | None:
    """Return why this machine cannot run an executor on ``device``, or ``None``."""
    if not device.startswith("cuda"):
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        return f"--executor-device {device}: this machine has {count} CUDA devices"
    return None


def get_output_problem(path: Path | None, directory: bool) -> str | None:
    """Return why the output ``path`` (a ``directory`` to make, or a file) cannot be written to
    later, or ``None``; checked before the network starts, so a run is not lost to it."""
    if path is None:
        return None
    if directory:
        if path.exists() and not path.is_dir():
            return f"{path}: not a directory"
        return None
    if path.is_dir():
        return f"{path}: is a directory"
    if not path.parent.is_dir():
        return f"{path}: no directory {path.parent}"
    return None


def _vote_obj(v: pb.Vote) -> dict[str, Any]:
    obj = {
        "verifier": compute_node_id(PublicKey(v.verifier_key)).hex(),
        "verdict": Verdict(v.verdict).name,
        "layers": [c.layer for c in v.layer_checks],
        "max_error": max((c.max_rel_error for c in v.layer_checks), default=0.0),
        "embedding_error": v.embedding_max_error,
        "positions": [s.position for s in v.sampler_checks],
        "max_margin": max((s.margin for s in v.sampler_checks), default=0.0),
        "escalated": v.escalated,
        "reason": v.reason,
    }
    if v.HasField("evidence"):
        e = v.evidence
        obj["evidence"] = {
            "check": pb.EvidenceCheck.Name(e.check).removeprefix("CHECK_").lower(),
            "layer": e.layer,
            "position": e.position,
            "measured": e.measured,
            "bytes": e.ByteSize(),
        }
    return obj


def _slash_obj(x: pb.Slash) -> dict[str, str]:
    return {
        "key": x.key.hex(),
        "node": compute_node_id(PublicKey(x.key)).hex(),
        "offence": x.offence,
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
                "outcome": a.outcome,
                "confirmations": [
                    {
                        "verifier": c.verifier_key.hex(),
                        "finding": "CONFIRM" if c.finding == pb.FINDING_CONFIRM else "REFUTE",
                        "detail": c.detail,
                    }
                    for c in a.confirmations
                ],
                "slashed": [_slash_obj(x) for x in a.slashes],
                "penalised": [_slash_obj(x) for x in a.penalties],
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
        status = "ACCEPTED" if a["accepted"] else (a["outcome"] or "rejected").upper()
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
        if a["confirmations"]:
            found = [c["finding"] for c in a["confirmations"]]
            lines.append(
                f"    confirmation round: {found.count('CONFIRM')} CONFIRM, "
                f"{found.count('REFUTE')} REFUTE"
            )
        for x in a["slashed"]:
            lines.append(f"    slashed    {x['node'][:12]}  {x['offence']} (key tombstoned)")
        for x in a["penalised"]:
            lines.append(f"    penalised  {x['node'][:12]}  {x['offence']} (trust halved)")
    if result["accepted"]:
        accepts = sum(1 for v in result["votes"] if v["verdict"] == "ACCEPT")
        lines.append(f"  executor     {result['executor'][:12]}")
        lines.append(f"  merkle root  {result['merkle_root']}")
        lines.append(f"  accepted     yes ({accepts} ACCEPT votes in the certificate)")
    else:
        lines.append("  accepted     no")
    lines.append(f"  time         {result['seconds']:.2f}s")
    return "\n".join(lines)


@command
def infer_main(argv: list[str] | None = None) -> int:
    """Run ``bft-infer``: one verified request on an embedded loopback network."""
    p = argparse.ArgumentParser(
        prog="bft-infer",
        description="Run a prompt on an embedded verihive network (loopback gRPC).",
    )
    p.add_argument("prompt")  # checked after parsing, with a message of its own [CLI.1]
    p.add_argument(
        "--assembler",
        type=host_port,
        metavar="HOST:PORT",
        help="ask a running network's assembler instead of starting an embedded one",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--receipt-out", type=utf8_path, help="write the receipt JSON to this file")
    p.add_argument(
        "--slashes-out",
        type=utf8_path,
        help="write each slash record (protobuf verihive.v1.SlashProof) into this directory",
    )
    p.add_argument(
        "--evidence-out",
        type=utf8_path,
        help="write the evidence of the first REJECT vote (protobuf verihive.v1.Evidence)",
    )
    p.add_argument("--byzantine-executor", choices=MODES, help="make the first executor lie")
    p.add_argument(
        "--byzantine-verifier",
        choices=VERIFIER_MODES,
        help="make verifier 0 lie (double-vote: it gets a twin with the same key)",
    )
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--layers-per-verifier",
        type=int_in(1, MAX_LAYERS),
        default=2,
        help="k, layers each verifier checks",
    )
    p.add_argument(
        "--positions-per-verifier",
        type=int_in(0, MAX_TOKENS),
        default=4,
        help="m, output positions whose token each verifier re-samples",
    )
    p.add_argument(
        "--sequence-check",
        type=_probability,
        default=DEFAULT_SEQUENCE_CHECK_PPM / 1e6,
        help="q, chance that a verifier also checks the whole sequence against the sketch",
    )
    p.add_argument(
        "--executors",
        type=int_in(1, MAX_EXECUTORS),
        default=2,
        help="executors in the local network",
    )
    p.add_argument(
        "--hedge",
        type=int_in(1, MAX_EXECUTORS),
        default=1,
        help="executors each request is sent to at once",
    )
    p.add_argument(
        "--hedge-verify-all",
        action="store_true",
        help="verify every hedged result (else the first certified wins)",
    )
    p.add_argument(
        "--executor-backend",
        choices=("torch", "vllm"),
        default="torch",
        help="honest executors' backend (vllm: a CUDA GPU with vLLM installed)",
    )
    p.add_argument(
        "--executor-device", type=_device, default="cpu", help="cpu, cuda or cuda:N (torch backend)"
    )
    p.add_argument(
        "--executor-dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="compute dtype of the executors; the profile must be admitted ([EXEC.5])",
    )
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

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
    problem = get_run_problem(args)
    if problem is not None:
        return report(problem)
    start = time.monotonic()
    if args.assembler is not None:
        try:
            reply, model_id = _infer_remote(args.assembler, args.prompt, sampling)
        except grpc.RpcError as exc:  # one line, no traceback: the network's answer
            return report(f"{args.assembler}: {_rpc_error_text(exc)}")
        result = build_result(reply, "(the network's)", model_id, time.monotonic() - start)
        return _report(args, reply, result)

    from executor.model import load_smollm2, load_tiny, set_progress
    from simnet.localnet import local_faults
    from verihive.localnet import DEFAULT_NETWORK_ID, LocalNetConfig, start_local_network

    problem = get_device_problem(args.executor_device)
    if problem is not None:
        return report(problem)
    set_progress(not args.json)  # [MODEL.4]
    loaded = load_smollm2() if args.model == "smollm2" else load_tiny()
    policy = AssemblerPolicy(
        DEFAULT_NETWORK_ID,
        layers_per_verifier=args.layers_per_verifier,
        positions_per_verifier=args.positions_per_verifier,
        sequence_check_ppm=round(args.sequence_check * 1e6),
        hedge=args.hedge,
        hedge_verify_all=args.hedge_verify_all,
    )
    config = LocalNetConfig(
        policy=policy,
        num_executors=args.executors,
        executor_backend=args.executor_backend,
        executor_device=args.executor_device,
        executor_dtype=args.executor_dtype,
    )
    from verihive.localnet import make_executor_backend

    try:  # fail before starting servers: an unadmitted profile would only be refused
        exec_backend = make_executor_backend(loaded, config)
    except (ValueError, ImportError) as exc:
        p.error(str(exc))
    faults = local_faults(executor=args.byzantine_executor, verifier=args.byzantine_verifier)
    with start_local_network(loaded, config, exec_backend, faults) as net:
        channel = make_channel(net.assembler_address, MAX_OPEN_MESSAGE_BYTES)
        try:
            stub = pb_grpc.AssemblerStub(channel)
            reply = stub.Infer(
                pb.InferRequest(prompt=args.prompt, sampling=convert.sampling_to_pb(sampling)),
                timeout=INFER_TIMEOUT_S,
            )
        except grpc.RpcError as exc:  # e.g. a prompt over the token limit, found once tokenized
            return report(f"the network refused the request: {_rpc_error_text(exc)}")
        finally:
            channel.close()
    result = build_result(reply, loaded.name, loaded.model_id, time.monotonic() - start)
    return _report(args, reply, result)


def _infer_remote(
    address: str, prompt: str, sampling: SamplingParams
) -> tuple[pb.InferResponse, bytes]:
    """Return the assembler's answer to ``prompt`` and the model id it serves; a failed call
    raises its ``grpc.RpcError``."""
    channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
    try:
        stub = pb_grpc.AssemblerStub(channel)
        info = stub.GetInfo(pb.NodeInfoRequest(), timeout=INFO_TIMEOUT_S)
        reply = stub.Infer(
            pb.InferRequest(prompt=prompt, sampling=convert.sampling_to_pb(sampling)),
            timeout=INFER_TIMEOUT_S,
        )
    finally:
        channel.close()
    return reply, bytes(info.model_id)


def _rpc_error_text(exc: grpc.RpcError) -> str:
    """Return the status code and details of the failed call ``exc``, without gRPC's debug
    string."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return f"{code.name if code else 'UNKNOWN'} {details or ''}".rstrip()


def _report(args: argparse.Namespace, reply: pb.InferResponse, result: dict[str, Any]) -> int:
    """Write the files asked for, print the result; return the exit status."""
    if args.receipt_out and reply.accepted:
        args.receipt_out.write_text(receipt_to_json(reply.receipt))
    if args.evidence_out:
        evidence = next(
            (v.evidence for a in reply.attempts for v in a.votes if v.HasField("evidence")), None
        )
        if evidence is not None:
            args.evidence_out.write_bytes(evidence.SerializeToString())
    if args.slashes_out:
        args.slashes_out.mkdir(parents=True, exist_ok=True)
        for a in reply.attempts:
            for x in a.slashes:
                node = compute_node_id(PublicKey(x.key)).hex()[:16]
                out = args.slashes_out / f"{node}-{x.offence}.slash"
                out.write_bytes(x.proof.SerializeToString())
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0 if reply.accepted else 1


def _read_bounded(path: Path, cap: int) -> bytes:
    """Return the bytes of ``path``; raise ``Malformed`` past ``cap`` bytes (``/dev/zero``
    included), ``OSError`` where it cannot be read."""
    with path.open("rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise Malformed(f"{path.name} is larger than {cap} bytes")
    return data


def _read_validators(path: Path) -> tuple[PublicKey, ...]:
    """Return the hex public keys listed one per line in ``path``; raise ``Malformed`` or
    ``OSError``."""
    try:
        text = _read_bounded(path, MAX_VALIDATORS_BYTES).decode("ascii")
    except UnicodeDecodeError as exc:
        raise Malformed(f"{path}: not hex text (byte {exc.start})") from exc
    except Malformed as exc:
        raise Malformed(f"{path}: {exc}") from exc
    keys = []
    for line in text.split():
        try:
            key = bytes.fromhex(line)
        except ValueError as exc:
            raise Malformed(f"{path}: not a hex key: {line[:20]!r}") from exc
        if len(key) != 32:
            raise Malformed(f"{path}: keys must be 32 bytes")
        keys.append(PublicKey(key))
    return tuple(keys)


M = TypeVar("M", bound=Message)


def _read_message(path: Path, message: M) -> M:
    """Return ``message`` parsed from the file ``path`` (at most 64 MiB); raise ``Malformed``."""
    data = _read_bounded(path, MAX_EVIDENCE_BYTES)
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        name = message.DESCRIPTOR.full_name
        raise Malformed(f"not a {name} message: {exc}") from exc
    return message


def _audit(path: Path, model: str) -> int:
    """Run ``bft-verify audit``; print one line; return the exit code. [EVID.4]"""
    from bft.evidence import MODEL_FREE_CHECKS, audit_evidence
    from bft.thresholds import load_thresholds

    try:
        evidence = convert.evidence_from_pb(_read_message(path, pb.Evidence()))
    except OSError as exc:
        print(f"malformed: cannot read {path}: {exc.strerror}")
        return 2
    except ProtocolError as exc:
        print(f"malformed: {one_line(str(exc))}")
        return 2
    auditor = None
    if evidence.check not in MODEL_FREE_CHECKS:
        auditor = _load_auditor(evidence.signed.commitment.model_id, model)
        if auditor is None:
            print("cannot audit: this evidence needs a model this machine does not hold")
            return 3
    try:
        result = audit_evidence(evidence, auditor, load_thresholds())
    except CannotJudge as exc:  # no model or no calibrated bands for the claim [EXEC.5]
        print(f"cannot audit: {exc}")
        return 3
    verdict = "proven" if result.proven else "not proven"
    print(f"{verdict}: {result.check.value}: {result.detail}")
    return 0 if result.proven else 1


def _load_auditor(model_id: bytes, which: str) -> Any:
    from bft.evidence import AuditModel
    from executor.backend import TorchBackend
    from executor.model import load_smollm2, load_tiny

    loaders: dict[str, list[Callable[[], Any]]] = {
        "smollm2": [load_smollm2],
        "tiny": [load_tiny],
        "auto": [load_smollm2, load_tiny],
    }
    for load in loaders[which]:
        loaded = load()
        if loaded.model_id == model_id:
            backend = TorchBackend(loaded.model)
            info = backend.info
            return AuditModel(backend, loaded.model_id, info.num_layers, info.hidden_size)
    return None


def _check_slash_file(path: Path, model: str) -> int:
    """Run ``bft-verify slash``: endorsements, committee and quorum, then the evidence. [SLASH.1]"""
    from bft.confirmation import is_model_free
    from bft.evidence import audit_evidence
    from bft.thresholds import load_thresholds
    from bft.validators import check_validator_set
    from slashing.records import check_slash

    try:
        record, vset = convert.slash_from_pb(_read_message(path, pb.SlashProof()))
    except OSError as exc:
        print(f"malformed: cannot read {path}: {exc.strerror}")
        return 2
    except ProtocolError as exc:
        print(f"malformed: {one_line(str(exc))}")
        return 2
    try:
        check_validator_set(vset)
        check_slash(record, vset.vset)
    except ProtocolError as exc:
        print(f"not proven: {exc}")
        return 1
    who = short_hex(compute_node_id(record.offender))
    acc = record.accusation
    if acc is None or acc.evidence is None or is_model_free(acc):
        print(f"proven: {who} {record.offence.value} (signatures and hashes)")
        return 0
    auditor = _load_auditor(acc.evidence.signed.commitment.model_id, model)
    if auditor is None:
        print("cannot audit: this evidence needs a model this machine does not hold")
        return 3
    try:
        result = audit_evidence(acc.evidence, auditor, load_thresholds())
    except CannotJudge as exc:  # no model or no calibrated bands for the claim [EXEC.5]
        print(f"cannot audit: {exc}")
        return 3
    if not result.proven:
        print(f"not proven: {result.check.value}: {result.detail}")
        return 1
    print(
        f"proven: {who} {record.offence.value}: {len(record.confirmations)} committee "
        f"confirmations; re-measured here: {result.detail}"
    )
    return 0


@command
def verify_main(argv: list[str] | None = None) -> int:
    """Run ``bft-verify``: offline checks (receipt, audit, slash) and the validator node."""
    p = argparse.ArgumentParser(prog="bft-verify", description="verihive validator tools")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "receipt", help="check a receipt offline (exit 0 valid, 1 invalid, 2 unreadable)"
    )
    r.add_argument("file", type=utf8_path)
    r.add_argument(
        "--validators",
        type=utf8_path,
        help="file of trusted validator public keys (hex, one per line) the receipt must name",
    )
    a = sub.add_parser(
        "audit",
        help="re-check REJECT evidence offline (exit 0 proven, 1 not proven, 2 malformed,"
        " 3 model not held)",
    )
    a.add_argument("file", type=utf8_path)
    a.add_argument("--model", choices=("auto", "smollm2", "tiny"), default="auto")
    s = sub.add_parser(
        "slash",
        help="re-check a slash record offline (exit 0 proven, 1 not proven, 2 malformed,"
        " 3 model not held)",
    )
    s.add_argument("file", type=utf8_path)
    s.add_argument("--model", choices=("auto", "smollm2", "tiny"), default="auto")
    from verihive.nodecli import add_node_commands, run_node_command

    add_node_commands(sub, "verifier")  # init, serve, status: a validator node [NODE.2]
    args = p.parse_args(argv)
    if args.command in ("init", "serve", "status"):
        return run_node_command(args, "verifier")
    if args.command == "audit":
        return _audit(args.file, args.model)
    if args.command == "slash":
        return _check_slash_file(args.file, args.model)
    if args.command == "receipt":
        # the keys to pin are an argument: one that cannot be used is an error, not a verdict
        trusted = _read_validators(args.validators) if args.validators else None
        try:
            data = _read_bounded(args.file, MAX_RECEIPT_BYTES)
        except OSError as exc:
            print(f"invalid: cannot read {args.file}: {exc.strerror}")
            return 2
        except Malformed as exc:
            print(f"invalid: {exc}")
            return 2
        try:
            receipt = convert.receipt_from_pb(receipt_from_json(data))
            check_receipt(receipt, trusted)
        except ProtocolError as exc:
            print(f"invalid: {one_line(str(exc))}")
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

"""Node commands: ``bft-executor``, ``bft-assembler``, ``bft-verify init|serve|status`` and
``bft-testnet``. [NODE.2], [NODE.3]

    bft-executor init --home DIR [--listen HOST:PORT] [--genesis FILE]
    bft-executor serve --home DIR
    bft-executor status [HOST:PORT] [--home DIR] [--json]
    bft-executor join --home DIR --assembler HOST:PORT
    bft-executor leave --home DIR --assembler HOST:PORT
    bft-testnet init --out DIR [--verifiers 4] [--executors 2] [--model tiny|smollm2]
    bft-testnet up DIR | down DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bft.assembler import AssemblerPolicy
from bft.crypto import compute_node_id
from bft.errors import ProtocolError
from bft.limits import MAX_F, MAX_NETWORK_ID_BYTES, MAX_VALIDATORS, is_valid_network_id
from bft.types import ModelId, PublicKey
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive import testnet
from verihive.entry import command, host_port, int_in, report, seconds, utf8_path, utf8_text
from verihive.membership import make_join, send_join, send_leave
from verihive.node import (
    CONFIG_FILE,
    GENESIS_FILE,
    KEY_FILE,
    NodeError,
    create_node_key,
    load_config,
    load_genesis,
    load_join_stamp_bits,
    load_node_key,
    serve,
    write_config,
)
from verihive.rpc import INFO_TIMEOUT_S, check_address, make_channel

MAX_TESTNET_EXECUTORS = 64
"""Executors ``bft-testnet init`` writes at most."""

STUBS = {
    "executor": pb_grpc.ExecutorStub,
    "verifier": pb_grpc.VerifierStub,
    "assembler": pb_grpc.AssemblerStub,
}


def add_node_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], role: str) -> None:
    """Add ``init``, ``serve`` and ``status`` for ``role`` to ``sub``."""
    i = sub.add_parser("init", help=f"write a {role} home: commented config.toml and node_key")
    i.add_argument("--home", type=utf8_path, required=True, help="the node's directory")
    # the addresses are checked with the config they go into ([NODE.2]: port 0 for --listen)
    i.add_argument("--listen", type=utf8_text, default="127.0.0.1:0", help="host:port to serve on")
    i.add_argument("--genesis", type=utf8_path, help="the network's genesis.json, copied in")
    if role == "executor":
        i.add_argument(
            "--assembler",
            action="append",
            type=utf8_text,
            default=[],
            metavar="HOST:PORT",
            help="an assembler to join whenever this node serves (repeatable) [JOIN.4]",
        )
    s = sub.add_parser("serve", help=f"serve this {role} until SIGTERM")
    s.add_argument("--home", type=utf8_path, required=True)
    s.add_argument("--verbose", action="store_true")
    t = sub.add_parser("status", help=f"what a running {role} says of itself")
    t.add_argument(
        "address", type=host_port, nargs="?", help="host:port (default: the one --home serves at)"
    )
    t.add_argument("--home", type=utf8_path, help="the node's directory")
    t.add_argument("--json", action="store_true", help="print one JSON object")


def run_node_command(args: argparse.Namespace, role: str) -> int:
    """Run ``init``, ``serve`` or ``status`` of ``args`` for ``role``."""
    try:
        if args.command == "init":
            assemblers = getattr(args, "assembler", [])
            return _init(args.home, role, args.listen, args.genesis, assemblers)
        if args.command == "serve":
            serve(args.home, verbose=args.verbose)
            return 0
        return _status(args.address, args.home, role, args.json)
    except NodeError as exc:
        return report(str(exc))


def _init(home: Path, role: str, listen: str, genesis: Path | None, assemblers: list[str]) -> int:
    """Write a new home; where any of its files is there, refuse and write nothing. [NODE.7]"""
    if (home / CONFIG_FILE).exists() or (home / KEY_FILE).exists():
        raise NodeError(f"{home}: already a node home (config.toml or node_key present)")
    if genesis is not None:
        load_genesis(genesis)  # one that would not serve is refused before anything is written
        if os.path.lexists(home / GENESIS_FILE):
            raise NodeError(f"{home / GENESIS_FILE}: already there; init without --genesis")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NodeError(f"{home}: cannot make the home: {exc.strerror}") from exc
    # checked before it is written, e.g. the --listen and --assembler addresses
    write_config(home, role, listen, assemblers=assemblers)
    key = create_node_key(home / KEY_FILE)
    if genesis is not None:
        try:
            shutil.copyfile(genesis, home / GENESIS_FILE)
        except OSError as exc:
            raise NodeError(f"{home / GENESIS_FILE}: cannot copy {genesis}: {exc}") from exc
    print(f"{role} {key.node_id.hex()} initialised in {home}")
    print(f"public key {key.public_key.hex()}")
    if genesis is None:
        print(f"next: put the network's {GENESIS_FILE} in {home}, then serve --home {home}")
    return 0


def _status(address: str | None, home: Path | None, role: str, as_json: bool) -> int:
    """Print what the node at ``address`` (or serving from ``home``) says of itself. [NODE.9]"""
    if address is None:
        if home is None:
            raise NodeError("status needs the node's HOST:PORT or --home DIR")
        address = _served_address(home)
    try:
        check_address(address)
    except ProtocolError as exc:
        raise NodeError(str(exc)) from exc
    channel = make_channel(address)
    try:
        status = STUBS[role](channel).Status(pb.StatusRequest(), timeout=INFO_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise NodeError(f"{address}: {exc.code().name} {exc.details()}") from exc
    finally:
        channel.close()
    data = status_to_dict(address, status)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(format_status(data))
    return 0


def status_to_dict(address: str, status: pb.NodeStatus) -> dict[str, Any]:
    """Return ``status`` as plain JSON data (keys and ids in hex)."""
    info = status.info
    return {
        "address": address,
        "role": info.role,
        "node_id": _node_id(info.public_key),
        "public_key": info.public_key.hex(),
        "network_id": info.network_id,
        "model": status.model,
        "model_id": info.model_id.hex(),
        "backend": info.backend,
        "uptime_s": round(status.uptime_s, 1),
        "in_flight": status.in_flight,
        "tokens_per_second": round(status.tokens_per_second, 2),
        "counts": dict(sorted(status.counts.items())),
        "peers": [
            {
                "role": p.role,
                "address": p.address,
                "node_id": _node_id(p.public_key),
                "public_key": p.public_key.hex(),
                "source": p.source,
                "state": p.state,
                "tokens_per_second": round(p.tokens_per_second, 2),
                "seen_s_ago": round(p.seen_s_ago, 1),
            }
            for p in status.peers
        ],
        "recent": [
            {
                "time": datetime.fromtimestamp(e.unix_time, UTC).isoformat(timespec="seconds"),
                "request_id": e.request_id.hex(),
                "event": e.event,
                "detail": e.detail,
            }
            for e in status.recent
        ],
    }


def format_status(data: dict[str, Any]) -> str:
    """Return ``data`` (of :func:`status_to_dict`) as tables for a terminal."""
    keys = ("address", "role", "node_id", "public_key", "network_id", "model", "backend")
    lines = [f"{k:18s} {data[k]}" for k in keys if data[k]]
    lines.append(f"{'uptime':18s} {data['uptime_s']:.0f} s")
    lines.append(f"{'in flight':18s} {data['in_flight']}")
    if data["tokens_per_second"]:
        lines.append(f"{'tokens/s':18s} {data['tokens_per_second']}")
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items()) or "nothing yet"
    lines.append(f"{'done':18s} {counts}")
    if data["peers"]:
        lines += ["", f"peers ({len(data['peers'])})"]
        for p in data["peers"]:
            key = p["node_id"][:12] or "-"
            tps = f"{p['tokens_per_second']} tok/s" if p["tokens_per_second"] else ""
            lines.append(
                f"  {p['role']:9s} {p['address']:22s} {key:12s} {p['source']:9s} "
                f"{p['state']} {tps}".rstrip()
            )
    if data["recent"]:
        lines += ["", f"recent ({len(data['recent'])}, newest first)"]
        for e in data["recent"]:
            rid = e["request_id"][:12] or "-"
            lines.append(f"  {e['time']}  {rid:12s}  {e['event']:11s} {e['detail']}".rstrip())
    return "\n".join(lines)


def _node_id(public_key: bytes) -> str:
    """Return the hex node id of ``public_key`` (as ``bft-infer`` names nodes), or ""."""
    return compute_node_id(PublicKey(public_key)).hex() if public_key else ""


def _served_address(home: Path) -> str:
    """Return the address the node of ``home`` wrote when it started serving."""
    path = home / "address"
    try:
        with path.open("rb") as f:
            data = f.read(257)
    except FileNotFoundError as exc:
        raise NodeError(f"{home}: not serving (no address file); serve it first") from exc
    except OSError as exc:
        raise NodeError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return check_address(data.decode("ascii").strip())
    except (UnicodeDecodeError, ProtocolError) as exc:
        raise NodeError(f"{path}: not a host:port address") from exc


def _role_main(role: str, argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog=f"bft-{role}", description=f"Run a verihive {role} node.")
    sub = p.add_subparsers(dest="command", required=True)
    add_node_commands(sub, role)
    if role == "executor":
        j = sub.add_parser("join", help="ask a running network's assembler to route to this node")
        j.add_argument("--home", type=utf8_path, required=True)
        j.add_argument("--assembler", type=host_port, required=True, metavar="HOST:PORT")
        j.add_argument(
            "--address", type=host_port, help="where this node serves (default: HOME/address)"
        )
        lv = sub.add_parser("leave", help="ask an assembler to route to this node no more")
        lv.add_argument("--home", type=utf8_path, required=True)
        lv.add_argument("--assembler", type=host_port, required=True, metavar="HOST:PORT")
    args = p.parse_args(argv)
    if args.command in ("join", "leave"):
        try:
            if args.command == "join":
                return _join(args.home, args.assembler, args.address)
            return _leave(args.home, args.assembler)
        except NodeError as exc:
            return report(str(exc))
    return run_node_command(args, role)


def _join(home: Path, assembler: str, address: str | None) -> int:
    """Mint the stamp, sign the join, ask the assembler; exit 0 joined, 1 refused. [JOIN.1]"""
    config = load_config(home)
    key = load_node_key(home / config.node.key_file)
    genesis = home / config.network.genesis
    policy, _, _ = load_genesis(genesis)
    bits = load_join_stamp_bits(genesis)
    address = address or _served_address(home)
    channel = make_channel(address)
    try:  # what the node serves and the throughput it measured when it started
        status = pb_grpc.ExecutorStub(channel).Status(pb.StatusRequest(), timeout=INFO_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise NodeError(f"{address}: this node does not answer: {exc.code().name}") from exc
    finally:
        channel.close()
    if status.info.public_key != key.public_key:
        raise NodeError(f"{address} serves another key than {home / config.node.key_file}")
    join = make_join(
        key,
        policy.network_id,
        bits,
        address,
        ModelId(status.info.model_id),
        f"{status.info.backend}-{config.executor.dtype}",
        status.tokens_per_second,
    )
    try:
        reply = send_join(assembler, join)
    except grpc.RpcError as exc:
        raise NodeError(f"{assembler}: {exc.code().name} {exc.details()}") from exc
    print(f"{'joined' if reply.accepted else 'refused'}: {reply.reason}")
    return 0 if reply.accepted else 1


def _leave(home: Path, assembler: str) -> int:
    """Sign a leave and send it; exit 0 left, 1 refused. [JOIN.3]"""
    config = load_config(home)
    key = load_node_key(home / config.node.key_file)
    policy, _, _ = load_genesis(home / config.network.genesis)
    try:
        reply = send_leave(assembler, key, policy.network_id)
    except grpc.RpcError as exc:
        raise NodeError(f"{assembler}: {exc.code().name} {exc.details()}") from exc
    print(f"{'left' if reply.accepted else 'refused'}: {reply.reason}")
    return 0 if reply.accepted else 1


@command
def executor_main(argv: list[str] | None = None) -> int:
    """Run ``bft-executor``."""
    return _role_main("executor", argv)


@command
def assembler_main(argv: list[str] | None = None) -> int:
    """Run ``bft-assembler``."""
    return _role_main("assembler", argv)


@command
def testnet_main(argv: list[str] | None = None) -> int:
    """Run ``bft-testnet``: a whole network on this machine, one process per node. [NODE.3]"""
    p = argparse.ArgumentParser(prog="bft-testnet", description=testnet_main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="write the homes and genesis.json of a local network")
    i.add_argument("--out", type=utf8_path, required=True)
    i.add_argument("--verifiers", type=int_in(1, MAX_VALIDATORS), default=4)
    i.add_argument("--executors", type=int_in(1, MAX_TESTNET_EXECUTORS), default=2)
    i.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    i.add_argument("--network-id", type=_network_id, default="verihive-testnet")
    i.add_argument("--f", type=int_in(0, MAX_F), default=1, help="tolerated faulty verifiers")
    i.add_argument("--json", action="store_true", help="print the nodes as JSON")
    u = sub.add_parser("up", help="start every node, wait until each answers")
    u.add_argument("dir", type=utf8_path)
    u.add_argument("--timeout", type=seconds, default=300.0, help="seconds to wait per node")
    u.add_argument("--json", action="store_true", help="print the nodes as JSON")
    d = sub.add_parser("down", help="stop every node (SIGTERM, then SIGKILL)")
    d.add_argument("dir", type=utf8_path)
    args = p.parse_args(argv)
    try:
        if args.command == "init":
            policy = AssemblerPolicy(args.network_id, f=args.f)
            counts = (args.verifiers, args.executors)
            nodes = testnet.init_testnet(args.out, *counts, args.model, policy)
            if args.json:
                print(_nodes_json(nodes))
            else:
                for n in nodes:
                    print(f"{n.name:12s} {n.address:22s} {n.home}")
                print(f"next: bft-testnet up {args.out}")
        elif args.command == "up":
            nodes = testnet.up(args.dir, args.timeout)
            if args.json:
                print(_nodes_json(nodes))
            else:
                for n in nodes:
                    print(f"{n.name:12s} {n.role:9s} {n.address}")
        else:
            if not (args.dir / GENESIS_FILE).is_file():
                raise NodeError(f"{args.dir}: not a testnet (no {GENESIS_FILE})")
            for name in testnet.down(args.dir):
                print(f"stopped {name}")
    except NodeError as exc:
        return report(str(exc))
    return 0


def _network_id(text: str) -> str:
    """``type=`` of ``--network-id``: 1..``MAX_NETWORK_ID_BYTES`` bytes of UTF-8. [LIMIT.1]"""
    if not is_valid_network_id(utf8_text(text)):
        raise argparse.ArgumentTypeError(f"not 1..{MAX_NETWORK_ID_BYTES} bytes of UTF-8")
    return text


def _nodes_json(nodes: list[testnet.Node]) -> str:
    """Return ``nodes`` as a JSON list: name, role, address and home of each."""
    rows = [
        {"name": n.name, "role": n.role, "address": n.address, "home": str(n.home)} for n in nodes
    ]
    return json.dumps(rows, indent=2)


@command
def serve_main(argv: list[str] | None = None) -> int:
    """``python -m verihive.nodecli serve --home DIR``: serve whatever role the home names."""
    p = argparse.ArgumentParser(prog="verihive.nodecli")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--home", type=utf8_path, required=True)
    s.add_argument("--verbose", action="store_true")
    return run_node_command(p.parse_args(argv), "any")


if __name__ == "__main__":
    sys.exit(serve_main())

"""Node commands: ``bft-executor``, ``bft-assembler``, ``bft-verify init|serve|status`` and
``bft-testnet``. [NODE.2], [NODE.3]

    bft-executor init --home DIR [--listen HOST:PORT] [--genesis FILE]
    bft-executor serve --home DIR
    bft-executor status HOST:PORT [--json]
    bft-executor join --home DIR --assembler HOST:PORT
    bft-testnet init --out DIR [--verifiers 4] [--executors 2] [--model tiny|smollm2]
    bft-testnet up DIR | down DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import grpc

from bft.assembler import AssemblerPolicy
from bft.errors import ProtocolError
from bft.join import JoinRequest, compute_stamp, sign_join
from bft.types import ModelId
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive import testnet
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

STUBS = {
    "executor": pb_grpc.ExecutorStub,
    "verifier": pb_grpc.VerifierStub,
    "assembler": pb_grpc.AssemblerStub,
}


def add_node_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], role: str) -> None:
    """Add ``init``, ``serve`` and ``status`` for ``role`` to ``sub``."""
    i = sub.add_parser("init", help=f"write a {role} home: commented config.toml and node_key")
    i.add_argument("--home", type=Path, required=True, help="the node's directory")
    i.add_argument("--listen", default="127.0.0.1:0", help="host:port to serve on")
    i.add_argument("--genesis", type=Path, help="the network's genesis.json, copied in")
    s = sub.add_parser("serve", help=f"serve this {role} until SIGTERM")
    s.add_argument("--home", type=Path, required=True)
    s.add_argument("--verbose", action="store_true")
    t = sub.add_parser("status", help=f"what a running {role} says of itself")
    t.add_argument("address", help="host:port")
    t.add_argument("--json", action="store_true")


def run_node_command(args: argparse.Namespace, role: str) -> int:
    """Run ``init``, ``serve`` or ``status`` of ``args`` for ``role``."""
    try:
        if args.command == "init":
            return _init(args.home, role, args.listen, args.genesis)
        if args.command == "serve":
            serve(args.home, verbose=args.verbose)
            return 0
        return _status(args.address, role, args.json)
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _init(home: Path, role: str, listen: str, genesis: Path | None) -> int:
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
    write_config(home, role, listen)  # checked before it is written, e.g. the --listen address
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


def _status(address: str, role: str, as_json: bool) -> int:
    try:
        check_address(address)
    except ProtocolError as exc:
        raise NodeError(str(exc)) from exc
    channel = make_channel(address)
    try:
        info = STUBS[role](channel).GetInfo(pb.NodeInfoRequest(), timeout=INFO_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise NodeError(f"{address}: {exc.code().name} {exc.details()}") from exc
    finally:
        channel.close()
    data = {
        "address": address,
        "role": info.role,
        "public_key": info.public_key.hex(),
        "network_id": info.network_id,
        "model_id": info.model_id.hex(),
        "backend": info.backend,
    }
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            print(f"{k:12s} {v}")
    return 0


def _role_main(role: str, argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog=f"bft-{role}", description=f"Run a verihive {role} node.")
    sub = p.add_subparsers(dest="command", required=True)
    add_node_commands(sub, role)
    if role == "executor":
        j = sub.add_parser("join", help="ask a running network's assembler to route to this node")
        j.add_argument("--home", type=Path, required=True)
        j.add_argument("--assembler", required=True, metavar="HOST:PORT")
        j.add_argument("--address", help="where this node serves (default: HOME/address)")
    args = p.parse_args(argv)
    if args.command == "join":
        try:
            return _join(args.home, args.assembler, args.address)
        except NodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run_node_command(args, role)


def _join(home: Path, assembler: str, address: str | None) -> int:
    """Mint the stamp, sign the join, ask the assembler; exit 0 joined, 1 refused. [JOIN.1]"""
    config = load_config(home)
    key = load_node_key(home / config.node.key_file)
    genesis = home / config.network.genesis
    policy, _, _ = load_genesis(genesis)
    bits = load_join_stamp_bits(genesis)
    if address is None:
        try:
            address = (home / "address").read_text().strip()
        except FileNotFoundError as exc:
            raise NodeError(f"{home}: not serving (no address file); serve it first") from exc
    channel = make_channel(address)
    try:
        info = pb_grpc.ExecutorStub(channel).GetInfo(pb.NodeInfoRequest(), timeout=INFO_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise NodeError(f"{address}: this node does not answer: {exc.code().name}") from exc
    finally:
        channel.close()
    nonce = compute_stamp(policy.network_id, key.public_key, bits)
    unsigned = JoinRequest(
        network_id=policy.network_id,
        public_key=key.public_key,
        address=address,
        model_id=ModelId(info.model_id),
        profile=f"{info.backend}-{config.executor.dtype}",
        tokens_per_second=0.0,
        nonce=nonce,
    )
    join = sign_join(key, unsigned)
    channel = make_channel(assembler)
    try:
        reply = pb_grpc.AssemblerStub(channel).Join(convert.join_to_pb(join), timeout=60)
    except grpc.RpcError as exc:
        raise NodeError(f"{assembler}: {exc.code().name} {exc.details()}") from exc
    finally:
        channel.close()
    print(f"{'joined' if reply.accepted else 'refused'}: {reply.reason}")
    return 0 if reply.accepted else 1


def executor_main(argv: list[str] | None = None) -> int:
    """Run ``bft-executor``."""
    return _role_main("executor", argv)


def assembler_main(argv: list[str] | None = None) -> int:
    """Run ``bft-assembler``."""
    return _role_main("assembler", argv)


def testnet_main(argv: list[str] | None = None) -> int:
    """Run ``bft-testnet``: a whole network on this machine, one process per node. [NODE.3]"""
    p = argparse.ArgumentParser(prog="bft-testnet", description=testnet_main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="write the homes and genesis.json of a local network")
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--verifiers", type=int, default=4)
    i.add_argument("--executors", type=int, default=2)
    i.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    i.add_argument("--network-id", default="verihive-testnet")
    i.add_argument("--f", type=int, default=1, help="tolerated faulty verifiers")
    u = sub.add_parser("up", help="start every node, wait until each answers")
    u.add_argument("dir", type=Path)
    u.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per node")
    d = sub.add_parser("down", help="stop every node (SIGTERM, then SIGKILL)")
    d.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "init":
            policy = AssemblerPolicy(args.network_id, f=args.f)
            counts = (args.verifiers, args.executors)
            nodes = testnet.init_testnet(args.out, *counts, args.model, policy)
            for n in nodes:
                print(f"{n.name:12s} {n.address:22s} {n.home}")
            print(f"next: bft-testnet up {args.out}")
        elif args.command == "up":
            for n in testnet.up(args.dir, args.timeout):
                print(f"{n.name:12s} {n.role:9s} {n.address}")
        else:
            for name in testnet.down(args.dir):
                print(f"stopped {name}")
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    """``python -m verihive.nodecli serve --home DIR``: serve whatever role the home names."""
    p = argparse.ArgumentParser(prog="verihive.nodecli")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--home", type=Path, required=True)
    s.add_argument("--verbose", action="store_true")
    return run_node_command(p.parse_args(argv), "any")


if __name__ == "__main__":
    sys.exit(serve_main())

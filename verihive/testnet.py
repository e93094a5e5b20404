"""A whole network on this machine, one OS process per node: ``bft-testnet init | up | down``.

``init`` writes a home per node (``verifier-<i>``, ``executor-<i>``, ``assembler``) and the
network's ``genesis.json`` (the verifiers are the genesis validator set, endorsed by every
member); ``up`` starts each node as its own process (``python -m verihive.nodecli serve
--home``), verifiers and executors first, and returns once every node's gRPC health check says
SERVING; ``down`` sends SIGTERM, then SIGKILL after a grace period. [NODE.3]
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bft.assembler import AssemblerPolicy
from bft.validators import make_genesis
from executor.model import prepare_model
from verihive.node import (
    GENESIS_FILE,
    KEY_FILE,
    NodeError,
    create_node_key,
    load_config,
    load_genesis,
    write_config,
    write_genesis,
)
from verihive.rpc import is_healthy

STOP_GRACE_S = 15.0
"""How long ``down`` waits after SIGTERM before SIGKILL, in seconds."""


@dataclass(frozen=True)
class Node:
    """One node of a testnet: its name, home and, once up, its address."""

    name: str
    home: Path
    role: str
    address: str = ""


def get_free_port(host: str) -> int:
    """Return a port nobody listens on now (a testnet picks its ports once, at init)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_testnet(
    out: Path, verifiers: int, executors: int, model: str, policy: AssemblerPolicy
) -> list[Node]:
    """Write the homes and genesis of a testnet under ``out``; return its nodes."""
    if verifiers < 3 * policy.f + 1:
        raise NodeError(f"f={policy.f} needs at least {3 * policy.f + 1} verifiers")
    if executors < 1:
        raise NodeError("a testnet needs at least one executor")
    if out.exists() and any(out.iterdir()):
        raise NodeError(f"{out}: not empty; a testnet is written into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1"
    nodes = [Node(f"verifier-{i}", out / f"verifier-{i}", "verifier") for i in range(verifiers)]
    nodes += [Node(f"executor-{i}", out / f"executor-{i}", "executor") for i in range(executors)]
    nodes.append(Node("assembler", out / "assembler", "assembler"))
    addresses = {n.name: f"{host}:{get_free_port(host)}" for n in nodes}
    keys = {}
    for n in nodes:
        n.home.mkdir()
        keys[n.name] = create_node_key(n.home / KEY_FILE)
    genesis = make_genesis(policy.network_id, [keys[n.name] for n in nodes if n.role == "verifier"])
    write_genesis(out / GENESIS_FILE, policy, model, genesis)
    peers = {r: [addresses[m.name] for m in nodes if m.role == r] for r in ("executor", "verifier")}
    for n in nodes:
        is_assembler = n.role == "assembler"
        write_config(
            n.home,
            n.role,
            addresses[n.name],
            genesis=f"../{GENESIS_FILE}",
            executors=peers["executor"] if is_assembler else (),
            verifiers=peers["verifier"] if is_assembler else (),
            metrics=f"{host}:{get_free_port(host)}",
        )
    return [Node(n.name, n.home, n.role, addresses[n.name]) for n in nodes]


def get_nodes(out: Path) -> list[Node]:
    """Return the nodes of the testnet in ``out``, assembler last."""
    nodes = []
    for home in sorted(p for p in out.iterdir() if (p / "config.toml").exists()):
        config = load_config(home)
        nodes.append(Node(home.name, home, config.node.role, config.node.listen))
    return sorted(nodes, key=lambda n: n.role == "assembler")


def up(out: Path, timeout_s: float = 300.0) -> list[Node]:
    """Start every node of ``out`` as its own process; return them once each is SERVING."""
    nodes = get_nodes(out)
    _, model, _ = load_genesis(out / GENESIS_FILE)
    prepare_model(model)  # convert once here, not in every node at the same time
    assemblers = [n for n in nodes if n.role == "assembler"]
    for group in ([n for n in nodes if n.role != "assembler"], assemblers):
        started = [(n, start_node(n)) for n in group]
        for n, proc in started:
            wait_until_serving(n, proc, timeout_s)
    return nodes


def start_node(node: Node, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``node`` as its own process (``env`` added to this one's), logging to
    ``HOME/node.log`` and recording its pid in ``HOME/pid``; return the process."""
    with (node.home / "node.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "verihive.nodecli", "serve", "--home", str(node.home)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    (node.home / "pid").write_text(f"{proc.pid}\n")
    return proc


def wait_until_serving(node: Node, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Return once ``node`` is SERVING; raise if its process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = (node.home / "node.log").read_text(errors="replace")[-2000:]
            raise NodeError(f"{node.name} exited with {proc.returncode}:\n{tail}")
        if is_serving(node.address):
            return
        if time.monotonic() > deadline:
            raise NodeError(f"{node.name} did not answer on {node.address} in {timeout_s:.0f} s")
        time.sleep(0.2)


def is_serving(address: str) -> bool:
    """Return whether the node at ``address`` reports SERVING (gRPC health checking)."""
    return is_healthy(address)


def down(out: Path, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop every node of ``out``: SIGTERM, then SIGKILL after ``grace_s``; return the names."""
    pids = {}
    for n in get_nodes(out):
        pid_file = n.home / "pid"
        if pid_file.exists():
            pids[n.name] = int(pid_file.read_text())
            pid_file.unlink()
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.1)
    for pid in pids.values():
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, sig)

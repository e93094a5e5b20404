"""A whole network on this machine, one OS process per node: ``bft-testnet init | up | down``.

``init`` writes a home per node (``verifier-<i>``, ``executor-<i>``, ``assembler``) and the
network's ``genesis.json`` (the verifiers are the genesis validator set, endorsed by every
member); ``up`` starts each node as its own process (``python -m verihive.nodecli serve
--home``), verifiers and executors first, and returns once every node's gRPC health check says
SERVING; ``down`` sends SIGTERM, then SIGKILL after a grace period. [NODE.3]

Nodes need not share a host: ``init_testnet(hosts=...)`` gives a node an address on a host of
its own and ``up(wrap=...)`` starts it under a command prefix (``ip netns exec NS``, say), so
the same homes run with each node in its own network namespace. [NODE.6]
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
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

HOST_PORT_BASE = 7000
"""First port of a node given a host of its own: node ``i`` serves gRPC on ``7000 + 2i`` and
metrics on ``7001 + 2i`` (that host's ports cannot be probed from here, so they are fixed)."""

LOCAL_HOST = "127.0.0.1"
"""The host of a node not named in ``hosts``: ports on it are chosen free at init."""


@dataclass(frozen=True)
class Node:
    """One node of a testnet: its name, home and, once up, its address."""

    name: str
    home: Path
    role: str
    address: str = ""


def get_free_port(host: str) -> int:
    """Return a port nobody listens on now, outside the kernel's ephemeral range.

    A testnet picks its ports once, at init, and binds them at ``up``: a port from the
    ephemeral range could meanwhile be taken as the local end of some outgoing connection
    (every gRPC channel makes some), so ports are drawn from below that range.
    """
    low, _ = _ephemeral_range()
    ports = list(range(PORT_FLOOR, max(low, PORT_FLOOR + 1)))
    random.SystemRandom().shuffle(ports)
    for port in ports[:200]:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything tried is taken: let the kernel choose
        s.bind((host, 0))
        return int(s.getsockname()[1])


PORT_FLOOR = 20000
"""The lowest port a testnet takes (well above the registered services people run)."""


def _ephemeral_range() -> tuple[int, int]:
    """Return the kernel's range for outgoing connections' local ports (Linux default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def init_testnet(
    out: Path,
    verifiers: int,
    executors: int,
    model: str,
    policy: AssemblerPolicy,
    hosts: Mapping[str, str] | None = None,
) -> list[Node]:
    """Write the homes and genesis of a testnet under ``out``; return its nodes.

    ``hosts`` maps a node name (``verifier-0``, ``assembler``) to the host (an IP) it serves on,
    at ports from :data:`HOST_PORT_BASE`; a node not named serves on loopback. [NODE.6]
    """
    if verifiers < 3 * policy.f + 1:
        raise NodeError(f"f={policy.f} needs at least {3 * policy.f + 1} verifiers")
    if executors < 1:
        raise NodeError("a testnet needs at least one executor")
    if out.exists() and any(out.iterdir()):
        raise NodeError(f"{out}: not empty; a testnet is written into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    nodes = [Node(f"verifier-{i}", out / f"verifier-{i}", "verifier") for i in range(verifiers)]
    nodes += [Node(f"executor-{i}", out / f"executor-{i}", "executor") for i in range(executors)]
    nodes.append(Node("assembler", out / "assembler", "assembler"))
    unknown = sorted(set(hosts or {}) - {n.name for n in nodes})
    if unknown:
        raise NodeError(f"hosts names no such node: {', '.join(unknown)}")
    listen = {n.name: _get_address(n.name, i, 0, hosts) for i, n in enumerate(nodes)}
    metrics = {n.name: _get_address(n.name, i, 1, hosts) for i, n in enumerate(nodes)}
    keys = {}
    for n in nodes:
        n.home.mkdir()
        keys[n.name] = create_node_key(n.home / KEY_FILE)
    genesis = make_genesis(policy.network_id, [keys[n.name] for n in nodes if n.role == "verifier"])
    assemblers = [keys[n.name].public_key for n in nodes if n.role == "assembler"]
    write_genesis(out / GENESIS_FILE, policy, model, genesis, assemblers)
    peers = {r: [listen[m.name] for m in nodes if m.role == r] for r in ("executor", "verifier")}
    for n in nodes:
        is_assembler = n.role == "assembler"
        write_config(
            n.home,
            n.role,
            listen[n.name],
            genesis=f"../{GENESIS_FILE}",
            executors=peers["executor"] if is_assembler else (),
            verifiers=peers["verifier"] if is_assembler else (),
            metrics=metrics[n.name],
        )
    return [Node(n.name, n.home, n.role, listen[n.name]) for n in nodes]


def _get_address(name: str, index: int, offset: int, hosts: Mapping[str, str] | None) -> str:
    """Return node ``name``'s address: on its own host at a fixed port, else a free local one."""
    if hosts is not None and name in hosts:
        return f"{hosts[name]}:{HOST_PORT_BASE + 2 * index + offset}"
    return f"{LOCAL_HOST}:{get_free_port(LOCAL_HOST)}"


def get_nodes(out: Path) -> list[Node]:
    """Return the nodes of the testnet in ``out``, assembler last."""
    nodes = []
    for home in sorted(p for p in out.iterdir() if (p / "config.toml").exists()):
        config = load_config(home)
        nodes.append(Node(home.name, home, config.node.role, config.node.listen))
    return sorted(nodes, key=lambda n: n.role == "assembler")


def up(
    out: Path,
    timeout_s: float = 300.0,
    wrap: Callable[[Node], Sequence[str]] | None = None,
) -> list[Node]:
    """Start every node of ``out`` as its own process; return them once each is SERVING.

    ``wrap`` returns the command prefix a node is started under, e.g. ``["ip", "netns", "exec",
    NS]``; it must exec the node (its pid is the node's, for ``down``). [NODE.6]
    """
    nodes = get_nodes(out)
    _, model, _ = load_genesis(out / GENESIS_FILE)
    prepare_model(model)  # convert once here, not in every node at the same time
    assemblers = [n for n in nodes if n.role == "assembler"]
    for group in ([n for n in nodes if n.role != "assembler"], assemblers):
        started = [(n, start_node(n, wrap=wrap)) for n in group]
        for n, proc in started:
            wait_until_serving(n, proc, timeout_s)
    return nodes


def start_node(
    node: Node,
    env: Mapping[str, str] | None = None,
    wrap: Callable[[Node], Sequence[str]] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``node`` as its own process (``env`` added to this one's, under ``wrap``'s
    prefix), logging to ``HOME/node.log`` and recording its pid in ``HOME/pid``; return it."""
    prefix = list(wrap(node)) if wrap is not None else []
    with (node.home / "node.log").open("ab") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "verihive.nodecli", "serve", "--home", str(node.home)],
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
            try:
                pids[n.name] = int(pid_file.read_text())
            except ValueError as exc:
                raise NodeError(f"{pid_file}: not a process id") from exc
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

"""Node homes: a config file, a key and the network's genesis, and the servers they start.

A home directory holds ``config.toml`` (written by ``init`` with every key commented; validated on
load; ``VERIHIVE_<SECTION>_<KEY>`` environment variables override it), ``node_key`` (the node's
Ed25519 seed, mode 0600; refused when readable by group or others, as ssh refuses a private key)
and, for a node of a network, the network's ``genesis.json`` (network id, the assembler's policy,
the model, and the genesis validator set signed by its members). [NODE.2]
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bft.assembler import AssemblerPolicy
from bft.crypto import SigningKey
from bft.errors import ProtocolError
from bft.join import DEFAULT_STAMP_BITS, MAX_STAMP_BITS
from bft.thresholds import load_thresholds
from bft.validators import SignedValidatorSet, check_validator_set
from bft.verifier import VerifierCore
from executor.backend import DTYPES, TorchBackend
from executor.core import ExecutorCore
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive import failpoints, metrics
from verihive.assembler import (
    DEFAULT_JOIN_TTL_S,
    AssemblerNode,
    AssemblerService,
    fetch_peer,
)
from verihive.journal import Journal
from verihive.logs import configure_logging
from verihive.membership import Announcer, make_join, measure_throughput
from verihive.rpc import (
    MAX_OPEN_MESSAGE_BYTES,
    add_health_and_reflection,
    check_address,
    make_server,
    set_serving,
)
from verihive.services import ExecutorService, VerifierService
from verihive.status import Activity

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
KEY_FILE = "node_key"
GENESIS_FILE = "genesis.json"
Role = Literal["verifier", "executor", "assembler"]
SHUTDOWN_GRACE_S = 10.0
"""How long in-flight calls may take to finish after SIGTERM, in seconds."""


class NodeError(Exception):
    """A node's home cannot be used: the message names the file and what is wrong."""


# --- keys


def create_node_key(path: Path) -> SigningKey:
    """Write a fresh key to ``path`` (mode 0600); refuse to overwrite one."""
    key = SigningKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise NodeError(f"{path}: a key is already there; remove it to make a new one") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(key.seed)
        f.flush()
        os.fsync(f.fileno())
    return key


def load_node_key(path: Path) -> SigningKey:
    """Return the key at ``path``; refuse a file readable by group or others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise NodeError(f"{path}: no key file (run init)") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeError(
            f"{path}: permissions {stat.filemode(mode)} are too open: the key must be readable "
            "by its owner only (chmod 600)"
        )
    seed = path.read_bytes()
    if len(seed) != 32:
        raise NodeError(f"{path}: a key file holds a 32-byte Ed25519 seed, not {len(seed)} bytes")
    return SigningKey.from_seed(seed)


# --- config


class NodeSection(BaseModel):
    """[node]"""

    model_config = ConfigDict(extra="forbid")
    role: Role
    listen: str = "127.0.0.1:0"
    """host:port to serve gRPC on (port 0: any free port, written to ``address``)."""
    key_file: str = KEY_FILE
    journal: str = "journal.db"
    """What this node signed ([NODE.1]), relative to the home; empty: memory only."""
    metrics: str = ""
    """host:port to serve Prometheus ``/metrics`` on ([NODE.4]); empty: none."""

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        return _host_port(value, any_port=True)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return _host_port(value, any_port=True) if value else value


class NetworkSection(BaseModel):
    """[network]"""

    model_config = ConfigDict(extra="forbid")
    genesis: str = GENESIS_FILE


class ExecutorSection(BaseModel):
    """[executor]"""

    model_config = ConfigDict(extra="forbid")
    chunk_size: int = Field(default=16, ge=1, le=4096)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    assemblers: list[str] = []
    """host:port of the assemblers this executor joins when it serves ([JOIN.4])."""
    announce_s: float = Field(default=60.0, ge=1.0, le=86400.0)
    """How often it joins them again, in seconds."""
    public_address: str = ""
    """host:port the assemblers reach this node at; empty: the address it listens on."""

    @field_validator("assemblers")
    @classmethod
    def _assemblers(cls, values: list[str]) -> list[str]:
        return [_host_port(v) for v in values]

    @field_validator("public_address")
    @classmethod
    def _public(cls, value: str) -> str:
        return _host_port(value) if value else value


class AssemblerSection(BaseModel):
    """[assembler]"""

    model_config = ConfigDict(extra="forbid")
    executors: list[str] = []
    verifiers: list[str] = []
    join_ttl_s: float = Field(default=DEFAULT_JOIN_TTL_S, ge=1.0, le=30 * 86400.0)
    """A joined executor not heard from for this long is not routed to ([JOIN.2])."""

    @field_validator("executors", "verifiers")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        return [_host_port(v) for v in values]


def _host_port(value: str, any_port: bool = False) -> str:
    """Return ``value`` if it is host:port; port 0 only where ``any_port``. [NODE.2]"""
    try:
        check_address(value, any_port)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from exc
    return value


class NodeConfig(BaseSettings):
    """A node's ``config.toml``; ``VERIHIVE_<SECTION>_<KEY>`` overrides a key."""

    model_config = SettingsConfigDict(
        env_prefix="VERIHIVE_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )
    node: NodeSection
    network: NetworkSection = NetworkSection()
    executor: ExecutorSection = ExecutorSection()
    assembler: AssemblerSection = AssemblerSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment over the file given as ``_toml``."""
        return (env_settings, init_settings)


def load_config(home: Path) -> NodeConfig:
    """Return ``home``'s validated config; :class:`NodeError` names the file and the key."""
    path = home / CONFIG_FILE
    if not path.exists():
        raise NodeError(f"{path}: no config file (run init)")
    try:
        data = TomlConfigSettingsSource(NodeConfig, toml_file=path)()
        return NodeConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise NodeError(f"{path}: {problems}") from exc
    except ValueError as exc:  # TOML syntax
        raise NodeError(f"{path}: {exc}") from exc


def write_config(
    home: Path,
    role: str,
    listen: str,
    genesis: str = GENESIS_FILE,
    executors: Sequence[str] = (),
    verifiers: Sequence[str] = (),
    metrics: str = "",
    assemblers: Sequence[str] = (),
) -> Path:
    """Write ``home/config.toml`` for ``role`` with every key commented; return its path."""
    text = f'''# verihive node configuration. Every key can be overridden from the environment:
# VERIHIVE_<SECTION>_<KEY>, e.g. VERIHIVE_NODE_LISTEN=0.0.0.0:7001.

[node]
# verifier | executor | assembler
role = "{role}"
# host:port this node serves gRPC on (port 0: any free port; the one taken is written to
# the file "address" in this home)
listen = "{listen}"
# the node's Ed25519 seed (32 bytes, mode 0600), relative to this home
key_file = "{KEY_FILE}"
# what this node signed, kept across restarts (SQLite, [NODE.1]); "" keeps it in memory only
journal = "journal.db"
# host:port to serve Prometheus metrics on (http://HOST:PORT/metrics); "" serves none
metrics = "{metrics}"

[network]
# network id, policy, model and the signed genesis validator set, relative to this home
genesis = "{genesis}"

[executor]
# rows per activation tile (executors)
chunk_size = 16
# cpu or cuda
device = "cpu"
# float32 | bfloat16 | float16 (the verifiers must admit the profile)
dtype = "float32"
# host:port of the assemblers to join when serving, e.g. ["10.0.0.5:7000"]; [] joins none
# (then `bft-executor join` joins by hand)
assemblers = {json.dumps(list(assemblers))}
# seconds between joins (an assembler drops a joined executor it has not heard from lately)
announce_s = 60
# host:port the assemblers reach this node at; "" uses the listen address
public_address = ""

[assembler]
# host:port of every executor and verifier the assembler asks (assemblers)
executors = {json.dumps(list(executors))}
verifiers = {json.dumps(list(verifiers))}
# seconds a joined executor stays routed to without joining again
join_ttl_s = {DEFAULT_JOIN_TTL_S:g}
'''
    path = home / CONFIG_FILE
    path.write_text(text)
    load_config(home)  # what init writes must load
    return path


# --- genesis


def write_genesis(
    path: Path, policy: AssemblerPolicy, model: str, validators: SignedValidatorSet
) -> None:
    """Write the network's genesis file: its id, policy, model and signed validator set."""
    data = {
        "network_id": policy.network_id,
        "model": model,
        "join_stamp_bits": DEFAULT_STAMP_BITS,
        "policy": asdict(policy),
        "validator_set": json_format.MessageToDict(convert.validator_set_to_pb(validators)),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_genesis(path: Path) -> tuple[AssemblerPolicy, str, SignedValidatorSet]:
    """Return the policy, model name and checked genesis set in ``path`` ([VSET.3])."""
    try:
        data = json.loads(path.read_text())
        policy = AssemblerPolicy(**data["policy"])
        model = str(data["model"])
        message = json_format.ParseDict(data["validator_set"], pb.SignedValidatorSet())
        validators = convert.validator_set_from_pb(message)
        check_validator_set(validators)
    except FileNotFoundError as exc:
        raise NodeError(f"{path}: no genesis file") from exc
    except (ValueError, KeyError, TypeError, json_format.ParseError, ProtocolError) as exc:
        raise NodeError(f"{path}: not a valid genesis: {exc}") from exc
    if model not in ("smollm2", "tiny"):
        raise NodeError(f"{path}: unknown model {model!r} (smollm2 or tiny)")
    if validators.vset.network_id != policy.network_id:
        raise NodeError(f"{path}: the validator set is for another network")
    return policy, model, validators


def load_join_stamp_bits(path: Path) -> int:
    """Return the join stamp difficulty ``path`` names ([JOIN.1]; the default if absent)."""
    try:
        bits = json.loads(path.read_text()).get("join_stamp_bits", DEFAULT_STAMP_BITS)
    except (OSError, ValueError, AttributeError) as exc:
        raise NodeError(f"{path}: not a valid genesis: {exc}") from exc
    if not isinstance(bits, int) or not 0 <= bits <= MAX_STAMP_BITS:
        raise NodeError(f"{path}: join_stamp_bits must be an integer 0..{MAX_STAMP_BITS}")
    return bits


# --- serving


def serve(home: Path, stop: threading.Event | None = None, verbose: bool = False) -> None:
    """Serve the node of ``home`` until SIGTERM/SIGINT (or ``stop``); drain, then return.

    The address taken is written to ``home/address`` once the node answers. [NODE.2]
    """
    config = load_config(home)
    key = load_node_key(home / config.node.key_file)
    policy, model, validators = load_genesis(home / config.network.genesis)
    try:
        failpoint = failpoints.check_failpoint()
    except ValueError as exc:
        raise NodeError(str(exc)) from exc
    configure_logging(f"{config.node.role}/{key.node_id.hex()[:12]}", verbose)  # [NODE.5]
    stop = stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from executor.model import load_smollm2, load_tiny

    started = time.monotonic()
    loaded = load_smollm2() if model == "smollm2" else load_tiny()
    metrics.MODEL_LOAD_SECONDS.set(time.monotonic() - started)
    if config.node.metrics:
        _write_atomically(home / "metrics_address", metrics.serve_metrics(config.node.metrics))
    journal = Journal(home / config.node.journal) if config.node.journal else None
    server = make_server(max_message_bytes=MAX_OPEN_MESSAGE_BYTES)
    closers: list[Callable[[], None]] = []
    activity = Activity(loaded.name)
    announcer: Announcer | None = None
    role = config.node.role
    if role == "verifier":
        backend = TorchBackend(loaded.model)
        info = backend.info
        core = VerifierCore(
            key,
            backend,
            loaded.model_id,
            info.num_layers,
            info.hidden_size,
            policy.network_id,
            load_thresholds(),
        )
        verifier = VerifierService(core, info.name, journal, activity)
        closers.append(verifier.close)
        pb_grpc.add_VerifierServicer_to_server(verifier, server)
    elif role == "executor":
        ex = config.executor
        backend = TorchBackend(loaded.model, device=ex.device, dtype=DTYPES[ex.dtype])
        executor = ExecutorCore(key, backend, loaded.model_id, policy.network_id, ex.chunk_size)
        service = ExecutorService(executor, journal=journal, activity=activity)
        activity.tokens_per_second = measure_throughput(backend)  # [JOIN.1]
        log.info("measured %.1f tokens/s", activity.tokens_per_second)
        closers.append(service.close)
        pb_grpc.add_ExecutorServicer_to_server(service, server)
    else:
        peers = config.assembler
        net_id = policy.network_id
        executors = [fetch_peer(a, "executor", loaded.model_id, net_id) for a in peers.executors]
        verifiers = [fetch_peer(a, "verifier", loaded.model_id, net_id) for a in peers.verifiers]
        node = AssemblerNode(
            key, policy, loaded.model_id, loaded.tokenizer, executors, verifiers, validators
        )
        node.join_stamp_bits = load_join_stamp_bits(home / config.network.genesis)
        node.join_ttl_s = peers.join_ttl_s
        node.activity = activity
        closers.append(node.close)
        pb_grpc.add_AssemblerServicer_to_server(AssemblerService(node), server)
    service_name = pb.DESCRIPTOR.services_by_name[role.capitalize()].full_name
    health = add_health_and_reflection(server, service_name)
    port = server.add_insecure_port(config.node.listen)
    if port == 0:
        raise NodeError(f"{home / CONFIG_FILE}: cannot listen on {config.node.listen}")
    server.start()
    set_serving(health, service_name)
    host = config.node.listen.rpartition(":")[0]
    address = home / "address"
    _write_atomically(address, f"{host}:{port}")
    log.info("%s %s serving on %s:%d", role, key.node_id.hex()[:12], host, port)
    if failpoint is not None:
        log.warning("failpoint %s armed: this node kills itself when it gets there", failpoint)
    if role == "executor" and config.executor.assemblers:  # [JOIN.4]
        ex = config.executor
        join = make_join(
            key,
            policy.network_id,
            load_join_stamp_bits(home / config.network.genesis),
            ex.public_address or f"{host}:{port}",
            loaded.model_id,
            backend.info.profile,
            activity.tokens_per_second,
        )
        announcer = Announcer(key, join, ex.assemblers, ex.announce_s)
        service.peers = announcer.peers
        announcer.start()
    try:
        stop.wait()
    finally:
        if announcer is not None:
            announcer.stop()  # leave first: assemblers stop sending new work [JOIN.3]
        health.enter_graceful_shutdown()  # NOT_SERVING: callers stop sending new work
        server.stop(SHUTDOWN_GRACE_S).wait()  # in-flight calls drain up to the grace
        for close in closers:
            close()
        if journal is not None:
            journal.close()
        address.unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` and a newline to ``path``: readers see all of it or nothing."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{text}\n")
    tmp.replace(path)

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
import re
import signal
import stat
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Literal, TypeGuard

from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bft.assembler import AssemblerPolicy
from bft.crypto import SigningKey
from bft.errors import ProtocolError
from bft.join import DEFAULT_STAMP_BITS, MAX_STAMP_BITS
from bft.limits import (
    MAX_F,
    MAX_LAYERS,
    MAX_NETWORK_ID_BYTES,
    MAX_TOKENS,
    MAX_VALIDATORS,
    PPM,
    is_valid_network_id,
)
from bft.thresholds import load_thresholds
from bft.types import PUBLIC_KEY_SIZE, PublicKey
from bft.validators import SignedValidatorSet, check_validator_set
from bft.verifier import VerifierCore
from executor.backend import DTYPES, TorchBackend
from executor.core import ExecutorCore
from proto import convert
from proto import verihive_pb2 as pb
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
    add_bounded_servicer,
    add_health_and_reflection,
    check_address,
    make_server,
    set_serving,
)
from verihive.services import VERIFIER_WORKERS, ExecutorService, VerifierService
from verihive.status import Activity

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
KEY_FILE = "node_key"
GENESIS_FILE = "genesis.json"
KEY_SIZE = 32
"""Bytes of a key file: the raw Ed25519 seed."""
CONFIG_MAX_BYTES = 1 << 20
"""Largest config file read, in bytes (1 MiB). [NODE.7]"""
GENESIS_MAX_BYTES = 16 << 20
"""Largest genesis file read, in bytes (16 MiB: a full validator set is about 0.3 MiB). [NODE.7]"""
MAX_HEDGE = 1024
"""Largest ``policy.hedge`` a genesis may set (executors asked at once)."""
MODELS = ("smollm2", "tiny")
ENV_PREFIX = "VERIHIVE_"
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
    """Return the key at ``path``: a regular file of 32 bytes that only its owner may access.

    A symlink is followed and its target checked (as ssh does); the checks are made on the
    opened file, so the file read is the file checked. [NODE.2], [NODE.7]
    """
    fd, st = _open_regular(path, "key file", "no key file (run init)")
    try:
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeError(
                f"{path}: permissions {stat.filemode(st.st_mode)} are too open: the key must be "
                "readable by its owner only (chmod 600)"
            )
        if st.st_size != KEY_SIZE:
            raise NodeError(_key_size_error(path, st.st_size))
        seed = _read_at_most(path, fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(seed) != KEY_SIZE:  # changed between fstat and read
        raise NodeError(_key_size_error(path, len(seed)))
    return SigningKey.from_seed(seed)


def _key_size_error(path: Path, size: int) -> str:
    return f"{path}: a key file holds a {KEY_SIZE}-byte Ed25519 seed, not {size} bytes"


# --- bounded reading [NODE.7]


def _open_regular(path: Path, what: str, missing: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading and return its descriptor and status; refuse a non-regular file.

    ``O_NONBLOCK`` keeps a FIFO in its place from blocking the open; it is refused after.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise NodeError(f"{path}: a symlink to a missing file") from exc
        raise NodeError(f"{path}: {missing}") from exc
    except OSError as exc:
        raise NodeError(f"{path}: cannot open the {what}: {exc.strerror}") from exc
    except ValueError as exc:  # an embedded NUL
        raise NodeError(f"{_clip(repr(str(path)))}: not a file name: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NodeError(f"{path}: the {what} is not a regular file ({_file_kind(st.st_mode)})")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _file_kind(mode: int) -> str:
    """Return what kind of file ``mode`` says it is, in words."""
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for is_kind, name in kinds if is_kind(mode)), "not a plain file")


def _read_at_most(path: Path, fd: int, size: int) -> bytes:
    """Return up to ``size`` bytes from ``fd`` (fewer only at the end of the file)."""
    parts: list[bytes] = []
    left = size
    try:
        while left > 0:
            part = os.read(fd, min(left, 1 << 20))
            if not part:
                break
            parts.append(part)
            left -= len(part)
    except OSError as exc:
        raise NodeError(f"{path}: cannot read: {exc.strerror}") from exc
    return b"".join(parts)


def _read_capped(path: Path, what: str, cap: int, missing: str) -> bytes:
    """Return the bytes of the regular file ``path``; refuse one over ``cap`` bytes."""
    fd, st = _open_regular(path, what, missing)
    try:
        if st.st_size > cap:
            raise NodeError(_cap_error(path, what, str(st.st_size), cap))
        data = _read_at_most(path, fd, cap + 1)
    finally:
        os.close(fd)
    if len(data) > cap:  # grew since fstat
        raise NodeError(_cap_error(path, what, f"over {cap}", cap))
    return data


def _cap_error(path: Path, what: str, size: str, cap: int) -> str:
    return f"{path}: {size} bytes; a {what} is at most {cap} bytes"


def _read_text(path: Path, what: str, cap: int, missing: str) -> str:
    """Return the UTF-8 text of ``path`` (at most ``cap`` bytes)."""
    data = _read_capped(path, what, cap, missing)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NodeError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc


def _clip(text: str, limit: int = 200) -> str:
    """Return ``text`` printable (lone surrogates escaped) and at most about ``limit`` chars."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, which must not exist: all of it or nothing, never over a file."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise NodeError(f"{path}: cannot write: {exc.strerror}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails, leaving ``path`` as it was, if anything is there
    except FileExistsError as exc:
        raise NodeError(f"{path}: already there; remove it to write a new one") from exc
    except OSError as exc:
        raise NodeError(f"{path}: cannot write: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)


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

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: str) -> str:
        return _file_name(value)

    @field_validator("journal")
    @classmethod
    def _journal(cls, value: str) -> str:
        return _file_name(value) if value else value


class NetworkSection(BaseModel):
    """[network]"""

    model_config = ConfigDict(extra="forbid")
    genesis: str = GENESIS_FILE

    @field_validator("genesis")
    @classmethod
    def _path(cls, value: str) -> str:
        return _file_name(value)


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


def _file_name(value: str) -> str:
    """Return ``value`` if it can name a file: 1..4096 bytes of UTF-8 without NUL. [NODE.7]"""
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        size = 0
    if "\x00" in value or not 1 <= size <= 4096:
        raise ValueError("not a file name (1..4096 bytes of UTF-8, no NUL)")
    return value


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
        env_prefix=ENV_PREFIX,
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
    text = _read_text(path, "config file", CONFIG_MAX_BYTES, "no config file (run init)")
    return _parse_config(path, text)


def _parse_config(path: Path, text: str) -> NodeConfig:
    """Return the config in ``text`` (read from ``path``) with the environment over it. [NODE.7]"""
    try:
        data = tomllib.loads(text)
    except RecursionError as exc:
        raise NodeError(f"{path}: not TOML: nested too deeply") from exc
    except ValueError as exc:  # TOMLDecodeError, and integers too long to convert
        raise NodeError(f"{path}: not TOML: {_clip(str(exc))}") from exc
    unknown = sorted(set(data) - set(NodeConfig.model_fields))
    if unknown:  # before they reach BaseSettings, whose own keywords start with "_"
        raise NodeError(f"{path}: {_clip(unknown[0])}: unknown section")
    mistyped = _get_type_problems(data)
    if mistyped:
        raise NodeError(f"{path}: {'; '.join(mistyped)}")
    try:
        return NodeConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(_config_problem(e["loc"], e["type"], e["msg"]) for e in exc.errors())
        raise NodeError(f"{path}: {problems}") from exc
    except ValueError as exc:  # SettingsError: an environment value that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        prefix = ENV_PREFIX + (field.group(1).upper() if field else "")
        names = ", ".join(sorted(k for k in os.environ if k.upper().startswith(prefix)))
        raise NodeError(f"{path}: the environment ({names}): {_clip(str(exc))}") from exc


def _get_type_problems(data: dict[str, object]) -> list[str]:
    """Return the values of the file's ``data`` that have the wrong TOML type.

    TOML values are typed, so the file is checked strictly (``chunk_size = "16"`` or ``true``
    is refused); the environment, whose values are all strings, is converted as pydantic does.
    """
    problems = []
    for name, value in data.items():
        section = NodeConfig.model_fields[name].annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        try:
            section.model_validate(value, strict=True)
        except ValidationError as exc:
            problems += [
                _config_problem((name, *e["loc"]), e["type"], e["msg"], from_env=False)
                for e in exc.errors()
                if e["type"].endswith("_type")
            ]
    return problems


def _config_problem(loc: tuple[int | str, ...], kind: str, msg: str, from_env: bool = True) -> str:
    """Return one config error as ``section.key: what``, and the variable it may come from."""
    where = ".".join(str(p) for p in loc)
    what = {"extra_forbidden": "unknown key", "missing": "missing"}.get(kind, msg)
    what = what.removeprefix("Value error, ")
    names = {k.upper() for k in os.environ} if from_env else set()
    env = [
        f"{ENV_PREFIX}{'_'.join(str(p) for p in loc[:n])}".upper() for n in (2, 1) if len(loc) >= n
    ]
    source = next((f" (from {e} in the environment)" for e in env if e in names), "")
    return _clip(f"{where}: {what}{source}", 400)


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
    _parse_config(path, text)  # what init writes must load; nothing is written otherwise
    _write_new(path, text)
    return path


# --- genesis


def write_genesis(
    path: Path,
    policy: AssemblerPolicy,
    model: str,
    validators: SignedValidatorSet,
    assemblers: Sequence[PublicKey],
) -> None:
    """Write the network's genesis file: its id, policy, model, admitted assemblers and signed
    validator set."""
    data = {
        "network_id": policy.network_id,
        "model": model,
        "assemblers": [bytes(k).hex() for k in assemblers],
        "join_stamp_bits": DEFAULT_STAMP_BITS,
        "policy": asdict(policy),
        "validator_set": json_format.MessageToDict(convert.validator_set_to_pb(validators)),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_genesis(path: Path) -> tuple[AssemblerPolicy, str, SignedValidatorSet]:
    """Return the policy, model name and checked genesis set in ``path`` ([VSET.3], [NODE.7])."""
    policy, model, validators, _, _ = _load_genesis(path)
    return policy, model, validators


def load_join_stamp_bits(path: Path) -> int:
    """Return the join stamp difficulty ``path`` names ([JOIN.1]; the default if absent).

    The whole genesis is checked, as :func:`load_genesis` checks it.
    """
    return _load_genesis(path)[3]


def load_admitted(path: Path) -> frozenset[PublicKey]:
    """Return the keys of the assemblers the genesis in ``path`` admits ([ADMIT.1]).

    The whole genesis is checked, as :func:`load_genesis` checks it.
    """
    return _load_genesis(path)[4]


GENESIS_KEYS = frozenset(
    {"network_id", "model", "assemblers", "join_stamp_bits", "policy", "validator_set"}
)
"""Top-level keys of a genesis file; all but ``join_stamp_bits`` are required."""
POLICY_RANGES = {
    "f": (0, MAX_F),
    "layers_per_verifier": (1, MAX_LAYERS),
    "positions_per_verifier": (0, MAX_TOKENS),
    "sequence_check_ppm": (0, PPM),
    "hedge": (1, MAX_HEDGE),
}
"""Bounds of the genesis policy's integers, as :meth:`InferenceRequest.validate` checks them."""


def _load_genesis(
    path: Path,
) -> tuple[AssemblerPolicy, str, SignedValidatorSet, int, frozenset[PublicKey]]:
    """Return everything ``path`` holds, checked; :class:`NodeError` names the file and key."""
    text = _read_text(path, "genesis file", GENESIS_MAX_BYTES, "no genesis file")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError as exc:
        raise NodeError(f"{path}: not JSON: nested too deeply") from exc
    except ValueError as exc:  # syntax, duplicate keys, NaN, integers too long to convert
        raise NodeError(f"{path}: not JSON: {_clip(str(exc))}") from exc
    if not isinstance(data, dict):
        raise NodeError(f"{path}: a genesis file holds a JSON object, not {_json_kind(data)}")
    unknown = sorted(set(data) - GENESIS_KEYS)
    if unknown:
        raise NodeError(f"{path}: {_clip(unknown[0])}: unknown key")
    missing = sorted(GENESIS_KEYS - {"join_stamp_bits"} - set(data))
    if missing:
        raise NodeError(f"{path}: {missing[0]}: missing")
    network_id = data["network_id"]
    if not isinstance(network_id, str) or not is_valid_network_id(network_id):
        raise NodeError(f"{path}: network_id: must be a string of 1..{MAX_NETWORK_ID_BYTES} bytes")
    model = data["model"]
    if model not in MODELS:
        raise NodeError(f"{path}: model: {_clip(repr(model))} is not one of {', '.join(MODELS)}")
    bits = data.get("join_stamp_bits", DEFAULT_STAMP_BITS)
    if not _is_int(bits) or not 0 <= bits <= MAX_STAMP_BITS:
        raise NodeError(f"{path}: join_stamp_bits: must be an integer 0..{MAX_STAMP_BITS}")
    policy = _parse_policy(path, data["policy"])
    if policy.network_id != network_id:
        raise NodeError(f"{path}: policy.network_id: not the network_id {network_id!r}")
    validators = _parse_validator_set(path, data["validator_set"], network_id)
    committee = 3 * policy.f + 1
    if len(validators.vset.validators) < committee:
        raise NodeError(
            f"{path}: policy.f: f={policy.f} needs a committee of {committee} validators; "
            f"the validator set has {len(validators.vset.validators)}"
        )
    assemblers = _parse_assemblers(path, data["assemblers"])
    return policy, model, validators, bits, assemblers


def _parse_assemblers(path: Path, value: object) -> frozenset[PublicKey]:
    """Return the admitted assemblers' keys: 1..MAX_VALIDATORS distinct 64-digit hex keys."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_VALIDATORS:
        raise NodeError(f"{path}: assemblers: must be a list of 1..{MAX_VALIDATORS} public keys")
    keys = set()
    for i, item in enumerate(value):
        if not isinstance(item, str) or len(item) != 2 * PUBLIC_KEY_SIZE:
            raise NodeError(f"{path}: assemblers[{i}]: must be {2 * PUBLIC_KEY_SIZE} hex digits")
        try:
            key = PublicKey(bytes.fromhex(item))
        except ValueError as exc:
            raise NodeError(f"{path}: assemblers[{i}]: not hex") from exc
        if key in keys:
            raise NodeError(f"{path}: assemblers[{i}]: listed twice")
        keys.add(key)
    return frozenset(keys)


def _parse_policy(path: Path, value: object) -> AssemblerPolicy:
    """Return the assembler policy in the genesis ``value`` ([ASM.5]); every field is checked."""
    if not isinstance(value, dict):
        raise NodeError(f"{path}: policy: must be an object, not {_json_kind(value)}")
    names = {f.name for f in fields(AssemblerPolicy)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise NodeError(f"{path}: policy.{_clip(unknown[0])}: unknown key")
    for name, given in value.items():
        if name in POLICY_RANGES:
            low, high = POLICY_RANGES[name]
            if not _is_int(given) or not low <= given <= high:
                raise NodeError(f"{path}: policy.{name}: must be an integer {low}..{high}")
        elif name == "network_id":
            if not isinstance(given, str) or not is_valid_network_id(given):
                raise NodeError(
                    f"{path}: policy.network_id: must be a string of 1..{MAX_NETWORK_ID_BYTES} "
                    "bytes"
                )
        elif not isinstance(given, bool):  # hedge_verify_all
            raise NodeError(f"{path}: policy.{name}: must be true or false")
    if "network_id" not in value:
        raise NodeError(f"{path}: policy.network_id: missing")
    return AssemblerPolicy(**value)


def _parse_validator_set(path: Path, value: object, network_id: str) -> SignedValidatorSet:
    """Return the genesis set in ``value``, for ``network_id`` and endorsed by every member."""
    if not isinstance(value, dict):
        raise NodeError(f"{path}: validator_set: must be an object, not {_json_kind(value)}")
    try:
        message = json_format.ParseDict(value, pb.SignedValidatorSet())
        validators = convert.validator_set_from_pb(message)
    except (json_format.ParseError, ProtocolError) as exc:
        raise NodeError(f"{path}: validator_set: {_clip(str(exc))}") from exc
    if validators.vset.network_id != network_id:
        raise NodeError(
            f"{path}: validator_set: for network {_clip(repr(validators.vset.network_id))}, "
            f"not {network_id!r}"
        )
    try:
        check_validator_set(validators)
    except ProtocolError as exc:
        raise NodeError(f"{path}: validator_set: not a valid genesis set: {exc}") from exc
    return validators


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Return the JSON object of ``pairs``; refuse a key given twice (which one would count?)."""
    data: dict[str, object] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"key {_clip(repr(key))} given twice")
        data[key] = value
    return data


def _no_constant(name: str) -> object:
    """Refuse ``NaN`` and ``Infinity``, which JSON does not have."""
    raise ValueError(f"{name} is not JSON")


def _is_int(value: object) -> TypeGuard[int]:
    """Return whether ``value`` is a JSON integer (``true`` and ``1.0`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _json_kind(value: object) -> str:
    """Return the JSON name of ``value``'s type."""
    kinds = [(bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string")]
    kinds += [(list, "an array"), (dict, "an object")]
    return next((name for t, name in kinds if isinstance(value, t)), "null")


# --- serving


def serve(home: Path, stop: threading.Event | None = None, verbose: bool = False) -> None:
    """Serve the node of ``home`` until SIGTERM/SIGINT (or ``stop``); drain, then return.

    The address taken is written to ``home/address`` once the node answers. [NODE.2]
    """
    config = load_config(home)
    key = load_node_key(home / config.node.key_file)
    policy, model, validators = load_genesis(home / config.network.genesis)
    admitted = load_admitted(home / config.network.genesis)  # [ADMIT.1]
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
    workers = VERIFIER_WORKERS if config.node.role == "verifier" else 8
    server = make_server(max_workers=workers, max_message_bytes=MAX_OPEN_MESSAGE_BYTES)
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
        verifier = VerifierService(core, info.name, journal, activity, admitted=admitted)
        closers.append(verifier.close)
        add_bounded_servicer(verifier, server, "verihive.v1.Verifier")
    elif role == "executor":
        ex = config.executor
        backend = TorchBackend(loaded.model, device=ex.device, dtype=DTYPES[ex.dtype])
        executor = ExecutorCore(key, backend, loaded.model_id, policy.network_id, ex.chunk_size)
        service = ExecutorService(
            executor, journal=journal, activity=activity, admitted=admitted
        )
        activity.tokens_per_second = measure_throughput(backend)  # [JOIN.1]
        log.info("measured %.1f tokens/s", activity.tokens_per_second)
        closers.append(service.close)
        add_bounded_servicer(service, server, "verihive.v1.Executor")
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
        add_bounded_servicer(AssemblerService(node), server, "verihive.v1.Assembler")
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

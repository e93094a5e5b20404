"""Every file a node reads, fed bad input: a clear error naming the file, nothing lost. [NODE.7]

The key, the config and the genesis each get malformed, oversized, truncated, unsigned, wrongly
signed, replayed and mistyped input; every failure is a :class:`NodeError` that names the file
and what is wrong, never a raw exception, and no loader or failed ``init`` changes a file that
is there.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.assembler import AssemblerPolicy
from bft.crypto import SigningKey, compute_node_id
from bft.join import DEFAULT_STAMP_BITS, MAX_STAMP_BITS
from bft.types import PublicKey
from bft.validators import make_genesis
from verihive import nodecli
from verihive.node import (
    CONFIG_FILE,
    CONFIG_MAX_BYTES,
    GENESIS_FILE,
    GENESIS_MAX_BYTES,
    KEY_FILE,
    POLICY_RANGES,
    NodeConfig,
    NodeError,
    create_node_key,
    load_config,
    load_genesis,
    load_join_stamp_bits,
    load_node_key,
    write_config,
    write_genesis,
)

NET = "net-a"
KEYS = [SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 5)]
OUTSIDER = SigningKey.from_seed(b"\x09" * 32)
ASSEMBLER = SigningKey.from_seed(b"\x0a" * 32)
FILES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
Json = Any


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``VERIHIVE_<SECTION>_<KEY>`` from the caller's environment reaches these tests."""
    sections = tuple(f"VERIHIVE_{name.upper()}" for name in NodeConfig.model_fields)
    for name in list(os.environ):
        if name.upper().startswith(sections):
            monkeypatch.delenv(name)


def _refused(load: Callable[[Path], object], path: Path, match: str) -> str:
    """Return the message of the :class:`NodeError` ``load(path)`` raises; it names ``path``."""
    with pytest.raises(NodeError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)
    return str(info.value)


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / KEY_FILE
    create_node_key(path)
    return path


# --- keys [NODE.2], [NODE.7]


@pytest.mark.parametrize(
    "content",
    [b"", b"\x01" * 16, b"\x01" * 31, b"\x01" * 33, b"\x01" * 64, b"\x01" * 100_000],
    ids=["empty", "truncated-16", "truncated-31", "one-more", "64", "oversized"],
)
def test_invalid_node_key_of_the_wrong_size(tmp_path, content):
    """[NODE.7] a key file is exactly the 32-byte seed: empty, truncated or long is refused."""
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    _refused(load_node_key, path, f"32-byte Ed25519 seed, not {len(content)} bytes")


def test_invalid_node_key_truncated_from_a_real_key(tmp_path):
    """[NODE.7] the first 31 bytes of a real key are refused, not padded."""
    path = _key_file(tmp_path)
    path.write_bytes(path.read_bytes()[:31])
    _refused(load_node_key, path, "not 31 bytes")


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o610, 0o604, 0o602, 0o601, 0o666, 0o777])
def test_invalid_node_key_too_open(tmp_path, mode):
    """[NODE.2] any access by group or others refuses the key, as ssh does."""
    path = _key_file(tmp_path)
    path.chmod(mode)
    _refused(load_node_key, path, re.escape("are too open") + ".*chmod 600")


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_node_key_owner_only_modes_load(tmp_path, mode):
    """[NODE.2] the owner's own bits are the owner's business."""
    path = _key_file(tmp_path)
    path.chmod(mode)
    assert len(load_node_key(path).seed) == 32


def test_invalid_node_key_is_a_directory(tmp_path):
    """[NODE.7] a directory in the key's place is named as one."""
    path = tmp_path / KEY_FILE
    path.mkdir(mode=0o700)
    _refused(load_node_key, path, re.escape("not a regular file (a directory)"))


def test_invalid_node_key_is_a_fifo_and_the_load_does_not_block(tmp_path):
    """[NODE.7] a FIFO is refused without waiting for a writer."""
    path = tmp_path / KEY_FILE
    os.mkfifo(path, 0o600)
    _refused(load_node_key, path, re.escape("not a regular file (a FIFO)"))


def test_invalid_node_key_is_a_device():
    """[NODE.7] ``/dev/zero`` would read forever; it is refused before reading."""
    _refused(load_node_key, Path("/dev/zero"), re.escape("(a character device)"))


def test_node_key_through_a_symlink_checks_the_target(tmp_path):
    """[NODE.7] a symlink is followed (as ssh and mounted secrets do) and its target checked."""
    target = _key_file(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert load_node_key(link).seed == target.read_bytes()
    target.chmod(0o644)
    _refused(load_node_key, link, "too open")
    target.unlink()
    _refused(load_node_key, link, "a symlink to a missing file")
    link.unlink()
    link.symlink_to(tmp_path)
    _refused(load_node_key, link, re.escape("(a directory)"))


def test_invalid_node_key_missing_or_under_a_file(tmp_path):
    """[NODE.7] a missing key says to run init; a path through a file says why it fails."""
    _refused(load_node_key, tmp_path / KEY_FILE, re.escape("no key file (run init)"))
    (tmp_path / "plain").write_text("x")
    _refused(load_node_key, tmp_path / "plain" / KEY_FILE, "cannot open the key file: Not a dir")


def test_invalid_node_key_unreadable(tmp_path, monkeypatch):
    """[NODE.7] a key the process may not read is named, with the system's reason."""
    path = _key_file(tmp_path)

    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    _refused(load_node_key, path, "cannot open the key file: Permission denied")


def test_invalid_node_key_name_with_nul(tmp_path):
    """[NODE.7] a file name the system cannot take is refused, not raised as ValueError."""
    with pytest.raises(NodeError, match="not a file name"):
        load_node_key(tmp_path / "no\x00de_key")


# --- config [NODE.2], [NODE.7]


def _home(tmp_path: Path, role: str = "assembler") -> Path:
    tmp_path.mkdir(exist_ok=True)
    write_config(tmp_path, role, "127.0.0.1:7001", executors=["127.0.0.1:7002"])
    return tmp_path


def _load_home_config(path: Path) -> NodeConfig:
    return load_config(path.parent)


def _set(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


CONFIG_EDITS: list[tuple[str, Callable[[str], str], str]] = [
    ("toml-syntax", lambda t: _set(t, "[node]", "[node"), "not TOML"),
    ("toml-unclosed-string", lambda t: _set(t, '"127.0.0.1:7001"', '"127.0.0.1:7001'), "not TOML"),
    ("toml-duplicate-key", lambda t: t + '\n[network]\ngenesis = "x"\n', "not TOML"),
    ("toml-huge-int", lambda t: _set(t, "chunk_size = 16", "chunk_size = 1" + "0" * 5000), "TOML"),
    ("toml-nested", lambda t: t + "\nx = " + "[" * 50_000, "not TOML: nested too deeply"),
    ("unknown-section", lambda t: t + "\n[node2]\nx = 1\n", "node2: unknown section"),
    ("settings-keyword", lambda t: '_env_file = "/etc/passwd"\n' + t, "_env_file: unknown section"),
    (
        "unknown-key",
        lambda t: _set(t, "[node]\n", "[node]\nlisten_on = 1\n"),
        "node.listen_on: unk",
    ),
    ("section-is-value", lambda t: "network = 5\n" + _drop(t, "network"), "network: Input should"),
    ("role-missing", lambda t: _set(t, 'role = "assembler"', ""), "node.role: missing"),
    ("role-unknown", lambda t: _set(t, 'role = "assembler"', 'role = "oracle"'), "node.role"),
    ("role-int", lambda t: _set(t, 'role = "assembler"', "role = 1"), "node.role"),
    ("chunk-zero", lambda t: _set(t, "chunk_size = 16", "chunk_size = 0"), "executor.chunk_size"),
    (
        "chunk-huge",
        lambda t: _set(t, "chunk_size = 16", "chunk_size = 4097"),
        "executor.chunk_size",
    ),
    ("chunk-i64", lambda t: _set(t, "chunk_size = 16", f"chunk_size = {2**63 - 1}"), "less than"),
    ("chunk-string", lambda t: _set(t, "chunk_size = 16", 'chunk_size = "16"'), "valid integer"),
    ("chunk-bool", lambda t: _set(t, "chunk_size = 16", "chunk_size = true"), "valid integer"),
    ("chunk-float", lambda t: _set(t, "chunk_size = 16", "chunk_size = 16.0"), "valid integer"),
    ("chunk-nan", lambda t: _set(t, "chunk_size = 16", "chunk_size = nan"), "valid integer"),
    ("dtype-unknown", lambda t: _set(t, '"float32"', '"float8"'), "executor.dtype"),
    (
        "listen-date",
        lambda t: _set(t, '"127.0.0.1:7001"', "1979-05-27"),
        "node.listen: Input should",
    ),
    ("listen-list", lambda t: _set(t, '"127.0.0.1:7001"', '["a:1"]'), "node.listen: Input should"),
    ("listen-no-port", lambda t: _set(t, "127.0.0.1:7001", "nowhere"), "node.listen.*host:port"),
    ("listen-port-big", lambda t: _set(t, "127.0.0.1:7001", "h:65536"), "node.listen.*host:port"),
    ("listen-port-neg", lambda t: _set(t, "127.0.0.1:7001", "h:-1"), "node.listen.*host:port"),
    ("listen-no-host", lambda t: _set(t, "127.0.0.1:7001", ":7001"), "node.listen.*host:port"),
    (
        "listen-long",
        lambda t: _set(t, "127.0.0.1:7001", "h" * 300 + ":1"),
        "node.listen.*host:port",
    ),
    ("metrics-bad", lambda t: _set(t, 'metrics = ""', 'metrics = "x"'), "node.metrics.*host:port"),
    (
        "peer-port-0",
        lambda t: _set(t, '"127.0.0.1:7002"', '"h:0"'),
        "assembler.executors: .*host:port",
    ),
    (
        "peers-string",
        lambda t: _set(t, '["127.0.0.1:7002"]', '"h:1"'),
        "assembler.executors: Input",
    ),
    ("peers-ints", lambda t: _set(t, '["127.0.0.1:7002"]', "[1, 2]"), "assembler.executors.0"),
    (
        "key-file-nul",
        lambda t: _set(t, '"node_key"', '"node\\u0000key"'),
        "node.key_file: .*file name",
    ),
    ("key-file-empty", lambda t: _set(t, '"node_key"', '""'), "node.key_file: .*file name"),
    (
        "genesis-nul",
        lambda t: _set(t, '"genesis.json"', '"g\\u0000"'),
        "network.genesis: .*file na",
    ),
]


def _drop(text: str, section: str) -> str:
    """Return ``text`` without ``[section]`` and its keys."""
    head, _, rest = text.partition(f"[{section}]\n")
    return head + rest[rest.index("\n[") :]


@pytest.mark.parametrize(
    ("edit", "match"), [(e, m) for _, e, m in CONFIG_EDITS], ids=[i for i, _, _ in CONFIG_EDITS]
)
def test_invalid_config_names_the_file_and_key(tmp_path, edit, match):
    """[NODE.2] malformed, mistyped and out-of-range config values name the file and key."""
    path = _home(tmp_path) / CONFIG_FILE
    path.write_text(edit(path.read_text()))
    message = _refused(_load_home_config, path, match)
    assert len(message) < 1000  # a bad value of any size gives an error of bounded size


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "node: missing"),
        (b"\xff\xfe[node]\n", re.escape("not UTF-8 text (byte 0: invalid start byte)")),
        (b'[node]\nrole = "executor"\n# caf\xe9\n', "not UTF-8 text"),
        (b"\xef\xbb\xbf[node]\n", "not TOML"),  # a BOM is not TOML
        (b"\x00\x00", "not TOML"),
        (b"# " + b"x" * CONFIG_MAX_BYTES + b"\n", f"a config file is at most {CONFIG_MAX_BYTES}"),
    ],
    ids=["empty", "utf-16-bom", "latin-1", "utf-8-bom", "nul", "oversized"],
)
def test_invalid_config_bytes(tmp_path, content, match):
    """[NODE.7] empty, non-UTF-8 and oversized config files are refused, naming the file."""
    path = tmp_path / CONFIG_FILE
    path.write_bytes(content)
    _refused(_load_home_config, path, match)


def test_invalid_config_is_a_directory_or_missing(tmp_path):
    """[NODE.7] a directory in place of config.toml, or none, is named as such."""
    path = tmp_path / CONFIG_FILE
    _refused(_load_home_config, path, re.escape("no config file (run init)"))
    path.mkdir()
    _refused(_load_home_config, path, re.escape("the config file is not a regular file"))
    _refused(_load_home_config, tmp_path / "nohome" / CONFIG_FILE, "no config file")


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("VERIHIVE_NODE_LISTEN", "garbage", "node.listen: .*host:port.*VERIHIVE_NODE_LISTEN"),
        ("verihive_node_listen", "garbage", "node.listen: .*VERIHIVE_NODE_LISTEN"),
        ("VERIHIVE_NODE_LISTEN", "h:99999", "node.listen: .*VERIHIVE_NODE_LISTEN"),
        ("VERIHIVE_NODE_ROLE", "oracle", "node.role: .*VERIHIVE_NODE_ROLE"),
        ("VERIHIVE_EXECUTOR_CHUNK_SIZE", "abc", "executor.chunk_size: .*VERIHIVE_EXECUTOR_CHUNK"),
        ("VERIHIVE_EXECUTOR_CHUNK_SIZE", "0", "executor.chunk_size: .*VERIHIVE_EXECUTOR_CHUNK"),
        ("VERIHIVE_EXECUTOR_CHUNK_SIZE", "1e400", "executor.chunk_size: .*VERIHIVE_EXECUTOR_CH"),
        ("VERIHIVE_NODE_NOPE", "1", "node.nope: unknown key .*VERIHIVE_NODE_NOPE"),
        ("VERIHIVE_NODE", "{not json", re.escape("environment (VERIHIVE_NODE)")),
        ("VERIHIVE_ASSEMBLER_EXECUTORS", "h:1", re.escape("(VERIHIVE_ASSEMBLER_EXECUTORS)")),
        ("VERIHIVE_ASSEMBLER_EXECUTORS", '["x"]', "assembler.executors: .*VERIHIVE_ASSEMBLER_EX"),
        ("VERIHIVE_NODE_KEY_FILE", "", "node.key_file: .*VERIHIVE_NODE_KEY_FILE"),
    ],
)
def test_invalid_environment_override_names_the_variable(tmp_path, monkeypatch, name, value, match):
    """[NODE.7] a bad ``VERIHIVE_<SECTION>_<KEY>`` names the dotted key and the variable."""
    path = _home(tmp_path) / CONFIG_FILE
    monkeypatch.setenv(name, value)
    _refused(_load_home_config, path, match)


def test_unrelated_verihive_variables_are_no_overrides(tmp_path, monkeypatch):
    """[NODE.7] ``VERIHIVE_CACHE`` and the like name no section: the config ignores them."""
    monkeypatch.setenv("VERIHIVE_CACHE", "/nowhere")
    monkeypatch.setenv("VERIHIVE_SITE", "x")
    assert load_config(_home(tmp_path)).node.role == "assembler"


# --- genesis [NODE.2], [NODE.7], [VSET.3]


def _genesis_data(network: str = NET, keys: list[SigningKey] = KEYS, f: int = 1) -> dict[str, Json]:
    """Return a valid genesis as JSON data: ``keys`` endorse a set for ``network``."""
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / GENESIS_FILE
        write_genesis(
            path,
            AssemblerPolicy(network, f=f),
            "tiny",
            make_genesis(network, keys),
            [ASSEMBLER.public_key],
        )
        data: dict[str, Json] = json.loads(path.read_text())
    return data


GENESIS = _genesis_data()
OTHER_NET = _genesis_data("net-b")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _flip(text: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 1
    return _b64(bytes(raw))


def _endorsements(d: dict[str, Json]) -> list[dict[str, str]]:
    endorsements: list[dict[str, str]] = d["validator_set"]["endorsements"]
    return endorsements


def _by_outsider(d: dict[str, Json]) -> None:
    """Sign the set's digest with a key that is not a member, in a member's endorsement."""
    e = _endorsements(d)[0]
    digest = make_genesis(NET, KEYS).vset.digest()
    e["signature"] = _b64(OUTSIDER.sign(digest))


def _outsider_endorses(d: dict[str, Json]) -> None:
    digest = make_genesis(NET, KEYS).vset.digest()
    sig = {"key": _b64(OUTSIDER.public_key), "signature": _b64(OUTSIDER.sign(digest))}
    _endorsements(d).append(sig)


def _member_key_flipped(d: dict[str, Json]) -> None:
    """A member's key with one bit flipped, the set re-sorted: well formed, no longer signed."""
    members = d["validator_set"]["set"]["validators"]
    members[0]["key"] = _flip(members[0]["key"])
    members.sort(key=lambda v: compute_node_id(PublicKey(base64.b64decode(v["key"]))))


def _replay_signatures(d: dict[str, Json]) -> None:
    """The other network's set and signatures, relabelled as this network's."""
    d["validator_set"] = copy.deepcopy(OTHER_NET["validator_set"])
    d["validator_set"]["set"]["networkId"] = NET


def _edit(path: str, value: Json) -> Callable[[dict[str, Json]], None]:
    """Return an edit setting the dotted ``path`` (list indices as numbers) to ``value``."""

    def edit(d: dict[str, Json]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = d
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


def _delete(path: str) -> Callable[[dict[str, Json]], None]:
    def edit(d: dict[str, Json]) -> None:
        *parents, last = path.split(".")
        node = d
        for p in parents:
            node = node[p]
        del node[last]

    return edit


MEMBER0 = GENESIS["validator_set"]["set"]["validators"][0]
SIG0 = GENESIS["validator_set"]["endorsements"][0]["signature"]
GENESIS_EDITS: list[tuple[str, Callable[[dict[str, Json]], None], str]] = [
    # signatures [VSET.3]
    ("unsigned", _edit("validator_set.endorsements", []), "endorsed by every member"),
    ("half-signed", lambda d: _endorsements(d).pop(), "endorsed by every member"),
    ("flipped-signature", _edit("validator_set.endorsements.0.signature", _flip(SIG0)), "invalid"),
    ("flipped-last-byte", _edit("validator_set.endorsements.0.signature", _flip(SIG0, 63)), "inv"),
    ("signed-by-another-key", _by_outsider, "invalid signature on validator set endorsement"),
    ("outsider-endorses", _outsider_endorses, "endorsed by every member and no one else"),
    ("endorsed-twice", lambda d: _endorsements(d).append(_endorsements(d)[0]), "endorsed twice"),
    ("signature-short", _edit("validator_set.endorsements.0.signature", _b64(b"x")), "wrong size"),
    (
        "signature-not-b64",
        _edit("validator_set.endorsements.0.signature", "@@"),
        "validator_set: endorsement .* wrong size",
    ),
    ("trust-raised", _edit("validator_set.set.validators.0.trust", "101"), "invalid signature"),
    ("member-key-flipped", _member_key_flipped, "invalid signature"),
    ("replayed-network", _edit("validator_set", OTHER_NET["validator_set"]), "for network 'net-b'"),
    ("replayed-relabelled", _replay_signatures, "invalid signature"),
    ("duplicate-member", lambda d: d["validator_set"]["set"]["validators"].append(MEMBER0), "dist"),
    ("no-members", _edit("validator_set.set.validators", []), "1..1024 members"),
    ("epoch-1", _edit("validator_set.set.epoch", "1"), "validator_set: only the genesis set"),
    ("trust-zero", _edit("validator_set.set.validators.0.trust", "0"), "trust must be in"),
    ("trust-float", _edit("validator_set.set.validators.0.trust", 1.5), "validator_set: Failed"),
    ("trust-huge", _edit("validator_set.set.validators.0.trust", 2**80), "validator_set: .*range"),
    ("vset-unknown-field", _edit("validator_set.set.extra", 1), "validator_set: .*no field"),
    ("vset-missing-set", _delete("validator_set.set"), "validator_set: "),
    ("vset-list", _edit("validator_set", []), "validator_set: must be an object, not an array"),
    # policy [ASM.5]
    ("policy-list", _edit("policy", [1]), "policy: must be an object, not an array"),
    ("policy-unknown", _edit("policy.quorum", 3), "policy.quorum: unknown key"),
    ("policy-no-network", _delete("policy.network_id"), "policy.network_id: missing"),
    ("policy-network-other", _edit("policy.network_id", "net-b"), "policy.network_id: not the"),
    ("policy-network-int", _edit("policy.network_id", 5), "policy.network_id: must be a string"),
    ("f-negative", _edit("policy.f", -1), r"policy.f: must be an integer 0..32"),
    ("f-too-big", _edit("policy.f", 33), r"policy.f: must be an integer 0..32"),
    ("f-string", _edit("policy.f", "1"), r"policy.f: must be an integer"),
    ("f-float", _edit("policy.f", 1.0), r"policy.f: must be an integer"),
    ("f-bool", _edit("policy.f", True), r"policy.f: must be an integer"),
    ("f-null", _edit("policy.f", None), r"policy.f: must be an integer"),
    ("f-huge", _edit("policy.f", 2**200), r"policy.f: must be an integer"),
    ("f-needs-more", _edit("policy.f", 2), "policy.f: f=2 needs a committee of 7 validators"),
    ("k-zero", _edit("policy.layers_per_verifier", 0), "policy.layers_per_verifier: must"),
    ("m-negative", _edit("policy.positions_per_verifier", -1), "policy.positions_per_verifier"),
    ("q-over-ppm", _edit("policy.sequence_check_ppm", 1_000_001), "policy.sequence_check_ppm"),
    ("hedge-zero", _edit("policy.hedge", 0), r"policy.hedge: must be an integer 1..1024"),
    ("hedge-verify-int", _edit("policy.hedge_verify_all", 1), "policy.hedge_verify_all: must be t"),
    # the other top-level keys
    ("unknown-key", _edit("validators", []), "validators: unknown key"),
    ("no-network", _delete("network_id"), "network_id: missing"),
    ("no-model", _delete("model"), "model: missing"),
    ("no-policy", _delete("policy"), "policy: missing"),
    ("no-validator-set", _delete("validator_set"), "validator_set: missing"),
    ("network-empty", _edit("network_id", ""), "network_id: must be a string of 1..256 bytes"),
    ("network-long", _edit("network_id", "n" * 257), "network_id: must be a string"),
    ("network-surrogate", _edit("network_id", "\ud800"), "network_id: must be a string"),
    ("model-unknown", _edit("model", "gpt"), "model: 'gpt' is not one of smollm2, tiny"),
    ("model-list", _edit("model", ["tiny"]), "model: .* is not one of"),
    (
        "bits-negative",
        _edit("join_stamp_bits", -1),
        f"join_stamp_bits: must be .*0..{MAX_STAMP_BITS}",
    ),
    ("bits-too-big", _edit("join_stamp_bits", MAX_STAMP_BITS + 1), "join_stamp_bits: must be"),
    ("bits-bool", _edit("join_stamp_bits", True), "join_stamp_bits: must be an integer"),
    ("bits-float", _edit("join_stamp_bits", 16.0), "join_stamp_bits: must be an integer"),
    ("bits-string", _edit("join_stamp_bits", "16"), "join_stamp_bits: must be an integer"),
    # [ADMIT.1] the admitted assemblers
    ("no-assemblers", _delete("assemblers"), "assemblers: missing"),
    ("assemblers-empty", _edit("assemblers", []), "assemblers: must be a list of 1..1024"),
    ("assemblers-string", _edit("assemblers", "ab" * 32), "assemblers: must be a list"),
    ("assembler-short", _edit("assemblers", ["ab" * 31]), r"assemblers\[0\]: must be 64 hex"),
    ("assembler-not-hex", _edit("assemblers", ["zz" * 32]), r"assemblers\[0\]: not hex"),
    ("assembler-number", _edit("assemblers", [7]), r"assemblers\[0\]: must be 64 hex"),
    (
        "assembler-twice",
        _edit("assemblers", [ASSEMBLER.public_key.hex()] * 2),
        r"assemblers\[1\]: listed twice",
    ),
]


@pytest.mark.parametrize(
    ("edit", "match"), [(e, m) for _, e, m in GENESIS_EDITS], ids=[i for i, _, _ in GENESIS_EDITS]
)
def test_invalid_genesis_names_the_file_and_key(tmp_path, edit, match):
    """[NODE.7], [VSET.3] unsigned, wrongly signed, replayed and mistyped genesis files."""
    data = copy.deepcopy(GENESIS)
    edit(data)
    path = tmp_path / GENESIS_FILE
    path.write_text(json.dumps(data))
    message = _refused(load_genesis, path, match)
    assert _refused(load_join_stamp_bits, path, re.escape(message)) == message  # one check
    assert len(message) < 1000


def test_genesis_as_written_loads(tmp_path):
    """[NODE.2] the genesis ``write_genesis`` writes loads, with its stamp difficulty."""
    path = tmp_path / GENESIS_FILE
    path.write_text(json.dumps(GENESIS))
    policy, model, validators = load_genesis(path)
    assert (policy, model) == (AssemblerPolicy(NET, f=1), "tiny")
    assert validators == make_genesis(NET, KEYS)
    assert load_join_stamp_bits(path) == DEFAULT_STAMP_BITS
    path.write_text(json.dumps({**GENESIS, "join_stamp_bits": 0}))
    assert load_join_stamp_bits(path) == 0
    path.write_text(json.dumps({k: v for k, v in GENESIS.items() if k != "join_stamp_bits"}))
    assert load_join_stamp_bits(path) == DEFAULT_STAMP_BITS  # absent: the default


def test_every_policy_field_has_a_check():
    """[NODE.7] a field added to AssemblerPolicy needs a range here, or it is unchecked."""
    typed = {"network_id", "hedge_verify_all"}
    assert {f.name for f in fields(AssemblerPolicy)} == set(POLICY_RANGES) | typed


def _text(d: dict[str, Json]) -> str:
    return json.dumps(d, indent=2)


GENESIS_TEXT = _text(GENESIS)


def _with_bits(raw: str) -> bytes:
    """Return the genesis with ``raw`` as the JSON text of ``join_stamp_bits``."""
    old = f'"join_stamp_bits": {DEFAULT_STAMP_BITS}'
    assert old in GENESIS_TEXT
    return GENESIS_TEXT.replace(old, f'"join_stamp_bits": {raw}').encode()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not JSON"),
        (GENESIS_TEXT[: len(GENESIS_TEXT) // 2].encode(), "not JSON"),
        (GENESIS_TEXT[:-2].encode(), "not JSON"),
        (b"[]", "a genesis file holds a JSON object, not an array"),
        (b"null", "a genesis file holds a JSON object, not null"),
        (b'"genesis"', "holds a JSON object, not a string"),
        (_with_bits("NaN"), "not JSON: NaN is not JSON"),
        (_with_bits("-Infinity"), "not JSON: -Infinity is not JSON"),
        (_with_bits("1e999"), "join_stamp_bits: must be an integer"),  # a float, infinite
        (GENESIS_TEXT.replace("{", '{"model": "tiny", ', 1).encode(), "key 'model' given twice"),
        (GENESIS_TEXT.replace('"f": 1', '"f": 1, "f": 0').encode(), "key 'f' given twice"),
        (GENESIS_TEXT.replace('"f": 1', '"f": 1' + "0" * 5000).encode(), "not JSON: Exceeds"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON: nested too deeply"),
        (b'{"a": ' * 100_000, "not JSON"),
        (GENESIS_TEXT.encode("utf-16"), "not UTF-8 text"),
        (GENESIS_TEXT.replace('"tiny"', '"t\xefny"').encode("latin-1"), "not UTF-8 text"),
        (b" " * (GENESIS_MAX_BYTES + 1), f"a genesis file is at most {GENESIS_MAX_BYTES} bytes"),
    ],
    ids=[
        "empty",
        "truncated-half",
        "truncated-end",
        "array",
        "null",
        "string",
        "nan",
        "inf-literal",
        "minus-infinity",
        "duplicate-top-key",
        "duplicate-policy-key",
        "huge-int",
        "nested",
        "nested-objects",
        "utf-16",
        "latin-1",
        "oversized",
    ],
)
def test_invalid_genesis_bytes(tmp_path, content, match):
    """[NODE.7] truncated, non-JSON, non-UTF-8, nested and oversized genesis files."""
    path = tmp_path / GENESIS_FILE
    path.write_bytes(content)
    message = _refused(load_genesis, path, match)
    assert _refused(load_join_stamp_bits, path, re.escape(message)) == message
    assert len(message) < 1000


def test_invalid_genesis_is_a_directory_or_missing(tmp_path):
    """[NODE.7] a directory in place of genesis.json, or none, is named as such."""
    path = tmp_path / GENESIS_FILE
    _refused(load_genesis, path, "no genesis file")
    _refused(load_join_stamp_bits, path, "no genesis file")
    path.mkdir()
    _refused(load_genesis, path, re.escape("the genesis file is not a regular file (a directory)"))
    _refused(load_join_stamp_bits, path, "not a regular file")


# --- loaders never change what they read; a failed init writes nothing over anything


def _snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_mode


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
def test_loaders_never_modify_the_file(tmp_path, valid):
    """[NODE.7] loading a key, config or genesis, good or bad, leaves its bytes and mtime."""
    home = _home(tmp_path)
    key = _key_file(home)
    genesis = home / GENESIS_FILE
    genesis.write_text(json.dumps(GENESIS))
    config = home / CONFIG_FILE
    if not valid:
        key.write_bytes(key.read_bytes()[:20])
        genesis.write_text(GENESIS_TEXT[:100])
        config.write_text(config.read_text().replace("chunk_size = 16", "chunk_size = 0"))
    files = [key, config, genesis]
    before = [_snapshot(p) for p in files]
    for load, path in [
        (load_node_key, key),
        (_load_home_config, config),
        (load_genesis, genesis),
        (load_join_stamp_bits, genesis),
    ]:
        try:
            load(path)
        except NodeError:
            assert not valid
    assert [_snapshot(p) for p in files] == before
    assert sorted(p.name for p in home.iterdir()) == sorted(p.name for p in files)


def test_write_config_never_overwrites(tmp_path):
    """[NODE.7] a config that is there stays as it was; write_config refuses."""
    path = _home(tmp_path) / CONFIG_FILE
    before = _snapshot(path)
    with pytest.raises(NodeError, match="already there"):
        write_config(tmp_path, "verifier", "127.0.0.1:9")
    assert _snapshot(path) == before
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE]  # no temporary file left


def test_write_config_of_an_invalid_value_writes_nothing(tmp_path):
    """[NODE.7] a config that would not load is refused before anything is written."""
    with pytest.raises(NodeError, match=r"node\.listen"):
        write_config(tmp_path, "verifier", "nowhere")
    assert list(tmp_path.iterdir()) == []


def test_failed_init_loses_nothing(tmp_path, capsys):
    """[NODE.2], [NODE.7] init refuses a home that holds a key, a config or a genesis, and
    one whose --listen or --genesis is bad, changing nothing and writing nothing."""
    genesis = tmp_path / "source.json"
    genesis.write_text(json.dumps(GENESIS))

    def init(home: Path, *extra: str) -> str:
        assert nodecli.executor_main(["init", "--home", str(home), *extra]) == 2
        return capsys.readouterr().err

    only_key = tmp_path / "only-key"
    only_key.mkdir()
    before = _snapshot(_key_file(only_key))
    assert "already a node home" in init(only_key)
    assert _snapshot(only_key / KEY_FILE) == before and len(list(only_key.iterdir())) == 1

    only_config = _home(tmp_path / "only-config")
    before = _snapshot(only_config / CONFIG_FILE)
    assert "already a node home" in init(only_config, "--genesis", str(genesis))
    assert _snapshot(only_config / CONFIG_FILE) == before
    assert len(list(only_config.iterdir())) == 1

    with_genesis = tmp_path / "with-genesis"
    with_genesis.mkdir()
    (with_genesis / GENESIS_FILE).write_text(json.dumps(OTHER_NET))
    before = _snapshot(with_genesis / GENESIS_FILE)
    assert "already there; init without --genesis" in init(with_genesis, "--genesis", str(genesis))
    assert _snapshot(with_genesis / GENESIS_FILE) == before
    assert len(list(with_genesis.iterdir())) == 1

    fresh = tmp_path / "fresh"
    assert "node.listen" in init(fresh, "--listen", "nowhere")
    assert not fresh.exists() or not list(fresh.iterdir())
    bad = tmp_path / "bad.json"
    bad.write_text(GENESIS_TEXT[:-2])
    assert f"{bad}: not JSON" in init(fresh, "--genesis", str(bad))
    assert f"{tmp_path / 'none.json'}: no genesis file" in init(
        fresh, "--genesis", str(tmp_path / "none.json")
    )
    assert not fresh.exists() or not list(fresh.iterdir())
    (tmp_path / "plain").write_text("x")
    assert "cannot make the home" in init(tmp_path / "plain")

    assert nodecli.executor_main(["init", "--home", str(fresh), "--genesis", str(genesis)]) == 0
    assert load_genesis(fresh / GENESIS_FILE)[0].network_id == NET
    assert sorted(p.name for p in fresh.iterdir()) == [CONFIG_FILE, GENESIS_FILE, KEY_FILE]


# --- anything at all: a result or a NodeError, nothing else


def _loads_or_refuses(load: Callable[[Path], object], path: Path) -> object | None:
    """Return ``load(path)``, or None where it raised :class:`NodeError` naming ``path``."""
    try:
        return load(path)
    except NodeError as exc:
        assert str(path) in str(exc) or "not a file name" in str(exc)
        return None


@FILES
@given(content=st.binary(max_size=80))
def test_any_key_bytes_load_or_are_refused(tmp_path, content):
    """[NODE.7] arbitrary key bytes: a key when 32 bytes long, a NodeError otherwise."""
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    key = _loads_or_refuses(load_node_key, path)
    assert (key is not None) == (len(content) == 32)


@FILES
@given(content=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_config_bytes_load_or_are_refused(tmp_path, content):
    """[NODE.7] arbitrary config bytes: a config or a NodeError, nothing else."""
    path = tmp_path / CONFIG_FILE
    path.write_bytes(content)
    _loads_or_refuses(_load_home_config, path)


with tempfile.TemporaryDirectory() as _config_home:
    CONFIG_TEXT = (_home(Path(_config_home)) / CONFIG_FILE).read_text()


@FILES
@given(
    at=st.integers(0, len(CONFIG_TEXT)),
    cut=st.integers(0, 40),
    insert=st.text(
        alphabet=st.sampled_from('[]{}"=.,:_ \n#0123456789abcdefnrtux-+\\'), max_size=30
    ),
)
def test_any_mutated_config_loads_or_is_refused(tmp_path, at, cut, insert):
    """[NODE.7] a valid config with a span replaced: a config or a NodeError, nothing else."""
    path = tmp_path / CONFIG_FILE
    path.write_text(CONFIG_TEXT[:at] + insert + CONFIG_TEXT[at + cut :])
    config = _loads_or_refuses(_load_home_config, path)
    assert config is None or isinstance(config, NodeConfig)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@FILES
@given(content=st.binary(max_size=400) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_any_genesis_bytes_load_or_are_refused(tmp_path, content):
    """[NODE.7] arbitrary bytes and JSON values: a genesis or a NodeError, nothing else."""
    path = tmp_path / GENESIS_FILE
    path.write_bytes(content)
    assert _loads_or_refuses(load_genesis, path) is None
    assert _loads_or_refuses(load_join_stamp_bits, path) is None


def _paths(value: Json, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Return the path of every value inside ``value``."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


GENESIS_PATHS = _paths(GENESIS)[1:]


@FILES
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(GENESIS_PATHS), st.booleans(), JSON_VALUES),
        min_size=1,
        max_size=3,
    )
)
def test_any_mutated_genesis_loads_or_is_refused(tmp_path, changes):
    """[NODE.7] a valid genesis with values replaced or removed: checked, or a NodeError."""
    data = copy.deepcopy(GENESIS)
    for where, remove, value in changes:
        node = data
        try:
            for p in where[:-1]:
                node = node[p]
            if remove:
                del node[where[-1]]
            else:
                node[where[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced this path
    path = tmp_path / GENESIS_FILE
    path.write_text(json.dumps(data))
    loaded = _loads_or_refuses(load_genesis, path)
    bits = _loads_or_refuses(load_join_stamp_bits, path)
    assert (loaded is None) == (bits is None)
    if loaded is not None:  # what loads is what the network's members signed
        _, _, validators = load_genesis(path)
        assert validators == make_genesis(NET, KEYS)


ENV_NAMES = [
    f"VERIHIVE_{section}{key}".upper()
    for section, model in NodeConfig.model_fields.items()
    for key in ["", *(f"_{k}" for k in getattr(model.annotation, "model_fields", {}))]
]


@FILES
@given(
    name=st.sampled_from(ENV_NAMES),
    value=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
    | JSON_VALUES.map(json.dumps),
)
def test_any_environment_override_loads_or_is_refused(tmp_path, name, value):
    """[NODE.7] any value of any ``VERIHIVE_<SECTION>[_<KEY>]``: a config or a NodeError."""
    path = tmp_path / CONFIG_FILE
    if not path.exists():
        _home(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(name, value)
        config = _loads_or_refuses(_load_home_config, path)
    assert config is None or isinstance(config, NodeConfig)

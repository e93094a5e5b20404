"""Ed25519 identities and signatures. [ID.1], [SIG.1]"""

from __future__ import annotations

import hashlib
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft.crypto import (
    DOMAIN_NODE_ID,
    SigningKey,
    check_signature,
    compute_node_id,
    is_valid_signature,
)
from bft.errors import BadSignature, Malformed, ProtocolError
from bft.types import Digest, PublicKey, Signature

KEY = SigningKey.from_seed(bytes(range(32)))
MESSAGE = Digest(hashlib.sha256(b"a signing root").digest())
SIGNATURE = KEY.sign(MESSAGE)


def flip(data: bytes, bit: int) -> bytes:
    """Return ``data`` with bit ``bit`` (0 = lowest bit of byte 0) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# RFC 8032 section 7.1, TEST 1 and TEST 2: interoperability with every other Ed25519.
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors(seed, public, message, signature):
    key = SigningKey.from_seed(bytes.fromhex(seed))
    assert key.public_key == bytes.fromhex(public)
    assert key.sign(Digest(bytes.fromhex(message))) == bytes.fromhex(signature)
    sig = Signature(bytes.fromhex(signature))
    assert is_valid_signature(key.public_key, Digest(bytes.fromhex(message)), sig)


def test_sign_then_verify():
    assert len(SIGNATURE) == 64
    assert is_valid_signature(KEY.public_key, MESSAGE, SIGNATURE)
    check_signature(KEY.public_key, MESSAGE, SIGNATURE, "test")


def test_signatures_are_deterministic():
    assert KEY.sign(MESSAGE) == SIGNATURE
    assert SigningKey.from_seed(bytes(range(32))).sign(MESSAGE) == SIGNATURE


def test_invalid_any_flipped_message_bit():
    pk = KEY.public_key
    bad = [b for b in range(256) if is_valid_signature(pk, Digest(flip(MESSAGE, b)), SIGNATURE)]
    assert bad == []


def test_invalid_any_flipped_signature_bit():
    pk = KEY.public_key
    bad = [b for b in range(512) if is_valid_signature(pk, MESSAGE, Signature(flip(SIGNATURE, b)))]
    assert bad == []


def test_invalid_any_flipped_public_key_bit():
    bad = [
        b
        for b in range(256)
        if is_valid_signature(PublicKey(flip(KEY.public_key, b)), MESSAGE, SIGNATURE)
    ]
    assert bad == []


def test_invalid_signature_by_another_key():
    other = SigningKey.from_seed(b"\x01" * 32)
    assert not is_valid_signature(KEY.public_key, MESSAGE, other.sign(MESSAGE))
    with pytest.raises(BadSignature, match="on vote"):
        check_signature(KEY.public_key, MESSAGE, other.sign(MESSAGE), "vote")


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        (KEY.public_key[:31], SIGNATURE),
        (KEY.public_key + b"\x00", SIGNATURE),
        (KEY.public_key, SIGNATURE[:63]),
        (KEY.public_key, SIGNATURE + b"\x00"),
        (b"", b""),
        (b"\xff" * 32, SIGNATURE),  # not a curve point
    ],
)
def test_invalid_lengths_or_points_fail_without_raising(public_key, signature):
    assert not is_valid_signature(PublicKey(public_key), MESSAGE, Signature(signature))
    with pytest.raises(BadSignature):
        check_signature(PublicKey(public_key), MESSAGE, Signature(signature), "x")


def test_bad_signature_is_a_protocol_error():
    assert issubclass(BadSignature, ProtocolError)


@given(st.binary(min_size=32, max_size=32))
def test_node_id_is_domain_separated_hash_of_the_key(seed):
    key = SigningKey.from_seed(seed)
    expected = hashlib.sha256(b"verihive/node-id/v1" + key.public_key).digest()
    assert DOMAIN_NODE_ID == b"verihive/node-id/v1"
    assert key.node_id == expected == compute_node_id(key.public_key)
    assert key.node_id != hashlib.sha256(key.public_key).digest()


def test_distinct_keys_have_distinct_node_ids():
    ids = {SigningKey.from_seed(bytes([i]) * 32).node_id for i in range(64)}
    assert len(ids) == 64


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_invalid_node_id_key_length(size):
    with pytest.raises(Malformed):
        compute_node_id(PublicKey(b"\x00" * size))


@pytest.mark.parametrize("size", [0, 31, 33])
def test_invalid_seed_length(size):
    with pytest.raises(ValueError):
        SigningKey.from_seed(b"\x00" * size)


def test_generate_gives_fresh_working_keys():
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a.public_key != b.public_key
    assert is_valid_signature(a.public_key, MESSAGE, a.sign(MESSAGE))


def test_load_or_create_round_trip(tmp_path):
    path = tmp_path / "keys" / "nested" / "node.key"
    created = SigningKey.load_or_create(path)
    assert len(path.read_bytes()) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SigningKey.load_or_create(path)
    assert loaded.public_key == created.public_key
    assert loaded.node_id == created.node_id
    assert loaded.sign(MESSAGE) == created.sign(MESSAGE)
    assert SigningKey.from_seed(path.read_bytes()).public_key == created.public_key


def test_load_or_create_reads_an_existing_seed(tmp_path):
    path = tmp_path / "node.key"
    path.write_bytes(bytes(range(32)))
    assert SigningKey.load_or_create(path).public_key == KEY.public_key


def test_load_or_create_makes_distinct_keys_per_path(tmp_path):
    a = SigningKey.load_or_create(tmp_path / "a.key")
    b = SigningKey.load_or_create(tmp_path / "b.key")
    assert a.public_key != b.public_key


def test_invalid_load_of_a_truncated_key_file(tmp_path):
    path = tmp_path / "node.key"
    path.write_bytes(b"\x00" * 31)
    with pytest.raises(ValueError):
        SigningKey.load_or_create(path)


def test_spec_example_node_id():
    # [ID.1] example: the key with seed 00 x 32.
    key = SigningKey.from_seed(b"\x00" * 32)
    assert (
        key.public_key.hex() == "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    )
    assert key.node_id.hex() == "4fedb997528fc470e7e3c2d9b2047bf14f51ff109687b77ac9efb3d747fa3f7d"

"""Canonical encoding of signed statements. [ENC.1]-[ENC.3]"""

from __future__ import annotations

import hashlib
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft import committee, crypto, messages
from bft.encoding import Canonical, compute_signing_root, sha256
from bft.errors import Malformed

# --- an independent decoder: if every encoding decodes back to its fields, encoding is injective


def _take(buf: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(buf):
        raise ValueError("truncated")
    return buf[pos : pos + n], pos + n


def _u32(buf: bytes, pos: int) -> tuple[int, int]:
    raw, pos = _take(buf, pos, 4)
    return int.from_bytes(raw, "big"), pos


def decode_fields(buf: bytes) -> list[tuple[str, object]]:
    """Return the ``(kind, value)`` fields of canonical bytes ``buf`` (the spec's grammar)."""
    out: list[tuple[str, object]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _take(buf, pos, 1)
        if tag == b"\x01":
            n, pos = _u32(buf, pos)
            raw, pos = _take(buf, pos, n)
            out.append(("bytes", raw))
        elif tag == b"\x02":
            n, pos = _u32(buf, pos)
            raw, pos = _take(buf, pos, n)
            out.append(("str", raw.decode("utf-8")))
        elif tag == b"\x03":
            raw, pos = _take(buf, pos, 8)
            out.append(("u64", int.from_bytes(raw, "big")))
        elif tag == b"\x04":
            raw, pos = _take(buf, pos, 8)
            out.append(("i64", int.from_bytes(raw, "big", signed=True)))
        elif tag == b"\x05":
            raw, pos = _take(buf, pos, 8)
            out.append(("f64", raw))  # compare bit patterns: -0.0 and 0.0 are distinct values
        elif tag == b"\x06":
            n, pos = _u32(buf, pos)
            vals = []
            for _ in range(n):
                v, pos = _u32(buf, pos)
                vals.append(v)
            out.append(("u32s", tuple(vals)))
        elif tag == b"\x07":
            n, pos = _u32(buf, pos)
            items = []
            for _ in range(n):
                m, pos = _u32(buf, pos)
                item, pos = _take(buf, pos, m)
                items.append(item)
            out.append(("list", tuple(items)))
        elif tag == b"\x08":
            raw, pos = _take(buf, pos, 1)
            if raw not in (b"\x00", b"\x01"):
                raise ValueError("bad bool")
            out.append(("bool", raw == b"\x01"))
        else:
            raise ValueError(f"unknown type tag {tag!r}")
    return out


finite = st.floats(allow_nan=False, allow_infinity=False)
fields = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=12)),
    st.tuples(st.just("str"), st.text(max_size=8)),
    st.tuples(st.just("u64"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("i64"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("f64"), finite),
    st.tuples(st.just("u32s"), st.lists(st.integers(0, 2**32 - 1), max_size=5).map(tuple)),
    st.tuples(st.just("list"), st.lists(st.binary(max_size=6), max_size=4).map(tuple)),
    st.tuples(st.just("bool"), st.booleans()),
)


_METHOD = {"bytes": "bytes_", "str": "str_", "list": "list_", "bool": "bool_"}


def encode_fields(items: list[tuple[str, object]]) -> bytes:
    """Return the canonical bytes of ``items`` built through :class:`Canonical`."""
    c = Canonical()
    for kind, value in items:
        getattr(c, _METHOD.get(kind, kind))(value)
    return c.build()


def normalise(items: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Return ``items`` with floats as their big-endian bit patterns, as the decoder gives them."""
    return [(k, struct.pack(">d", v) if k == "f64" else v) for k, v in items]


@given(st.lists(fields, max_size=8))
def test_encoding_decodes_back_to_its_fields(items):
    assert decode_fields(encode_fields(items)) == normalise(items)


@given(st.lists(fields, max_size=6), st.lists(fields, max_size=6))
def test_different_field_sequences_never_encode_alike(a, b):
    if normalise(a) != normalise(b):
        assert encode_fields(a) != encode_fields(b)
    else:
        assert encode_fields(a) == encode_fields(b)


def test_length_prefix_separates_adjacent_byte_strings():
    ab_c = Canonical().bytes_(b"ab").bytes_(b"c").build()
    a_bc = Canonical().bytes_(b"a").bytes_(b"bc").build()
    assert ab_c != a_bc
    assert Canonical().str_("ab").str_("c").build() != Canonical().str_("a").str_("bc").build()
    assert Canonical().u32s([1, 2]).u32s([3]).build() != Canonical().u32s([1]).u32s([2, 3]).build()
    assert Canonical().list_([b"ab", b"c"]).build() != Canonical().list_([b"a", b"bc"]).build()
    assert (
        Canonical().list_([b"a"]).list_([]).build() != Canonical().list_([]).list_([b"a"]).build()
    )


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (Canonical().bytes_(b"a"), Canonical().str_("a")),
        (Canonical().u64(1), Canonical().i64(1)),
        (Canonical().u64(1), Canonical().f64(struct.unpack(">d", (1).to_bytes(8, "big"))[0])),
        (Canonical().bool_(True), Canonical().bytes_(b"")),
        (Canonical().u32s([]), Canonical().list_([])),
        (Canonical().u32s([0x61]), Canonical().bytes_(b"\x00\x00\x00\x61")),
        (Canonical().bytes_(b""), Canonical()),
    ],
)
def test_values_of_different_types_never_encode_alike(left, right):
    assert left.build() != right.build()


def test_encoding_matches_the_documented_byte_layout():
    # Test vectors another implementation can replay: type tag, then big-endian length or value.
    assert Canonical().bytes_(b"ab").build() == b"\x01\x00\x00\x00\x02ab"
    assert Canonical().str_("é").build() == b"\x02\x00\x00\x00\x02\xc3\xa9"
    assert Canonical().u64(258).build() == b"\x03" + (258).to_bytes(8, "big")
    assert Canonical().i64(-2).build() == b"\x04" + b"\xff" * 7 + b"\xfe"
    assert Canonical().f64(1.5).build() == b"\x05" + struct.pack(">d", 1.5)
    assert Canonical().u32s([1, 2]).build() == b"\x06\x00\x00\x00\x02" + bytes.fromhex(
        "0000000100000002"
    )
    assert Canonical().list_([b"x"]).build() == b"\x07\x00\x00\x00\x01\x00\x00\x00\x01x"
    assert Canonical().bool_(False).build() == b"\x08\x00"
    assert Canonical().bool_(True).build() == b"\x08\x01"
    assert Canonical().build() == b""


@pytest.mark.parametrize("value", [0, 1, 2**63, 2**64 - 1])
def test_u64_accepts_its_whole_range(value):
    assert Canonical().u64(value).build()[1:] == value.to_bytes(8, "big")


@pytest.mark.parametrize("value", [-1, -(2**64), 2**64, 2**70])
def test_invalid_u64_out_of_range(value):
    with pytest.raises(Malformed):
        Canonical().u64(value)


@pytest.mark.parametrize("value", [-(2**63) - 1, 2**63, 2**64])
def test_invalid_i64_out_of_range(value):
    with pytest.raises(Malformed):
        Canonical().i64(value)


@pytest.mark.parametrize("values", [[-1], [2**32], [0, 1, 2**32 + 5]])
def test_invalid_u32s_out_of_range(values):
    with pytest.raises(Malformed):
        Canonical().u32s(values)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -math.nan])
def test_invalid_f64_non_finite(value):
    with pytest.raises(Malformed):
        Canonical().f64(value)


def test_negative_zero_and_zero_encode_apart():
    # Distinct IEEE-754 values get distinct bytes; no normalisation happens behind the caller.
    assert Canonical().f64(0.0).build() != Canonical().f64(-0.0).build()


@given(st.binary(max_size=64), st.text(max_size=20), st.text(max_size=20))
def test_signing_root_is_sha256_of_tag_network_and_body(body, tag, network):
    head = Canonical().str_(tag).str_(network).build()
    assert compute_signing_root(tag, network, body) == hashlib.sha256(head + body).digest()


@given(st.binary(max_size=64), st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_signing_roots_differ_across_tags_and_networks(body, tag, other_tag, network):
    if tag != other_tag:
        assert compute_signing_root(tag, network, body) != compute_signing_root(
            other_tag, network, body
        )
        assert compute_signing_root(network, tag, body) != compute_signing_root(
            network, other_tag, body
        )


def test_signing_root_does_not_confuse_tag_and_network_boundaries():
    assert compute_signing_root("ab", "c", b"") != compute_signing_root("a", "bc", b"")
    # The network id cannot be smuggled into the body either.
    body = Canonical().str_("x").build()
    assert compute_signing_root("t", "", body) != compute_signing_root("t", "x", b"")


def test_domain_tags_are_all_distinct():
    tags = [getattr(messages, name) for name in dir(messages) if name.startswith("TAG_")]
    raw = [t.encode() for t in tags] + [committee.TAG_COMMITTEE, crypto.DOMAIN_NODE_ID]
    assert len(tags) >= 7
    assert len(set(raw)) == len(raw)


@given(st.binary(max_size=64))
def test_every_statement_kind_gets_its_own_root_over_the_same_body(body):
    tags = {getattr(messages, n) for n in dir(messages) if n.startswith("TAG_")}
    roots = {compute_signing_root(t, "net", body) for t in tags}
    assert len(roots) == len(tags)


@given(st.binary(max_size=100))
def test_sha256_is_hashlib_sha256(data):
    assert sha256(data) == hashlib.sha256(data).digest()


# --- the spec's worked examples, replayable by another implementation


def test_spec_example_fields():
    # [ENC.2] example.
    body = (
        Canonical()
        .bytes_(b"\xab")
        .str_("hi")
        .u64(7)
        .i64(-1)
        .f64(0.5)
        .bool_(True)
        .u32s([1, 2])
        .list_([b"\x78"])
        .build()
    )
    assert body.hex() == (
        "0100000001ab"
        "02000000026869"
        "030000000000000007"
        "04ffffffffffffffff"
        "053fe0000000000000"
        "0801"
        "0600000002"
        "00000001"
        "00000002"
        "0700000001"
        "00000001"
        "78"
    )


def test_spec_example_signing_root():
    # [ENC.1] example: tag verihive/vote/v1, network testnet, empty body.
    root = compute_signing_root("verihive/vote/v1", "testnet", b"")
    assert root.hex() == "c59a236efe48663de5feee34c3e262711e80fd4ad44840701ce9e4aa63b187d3"

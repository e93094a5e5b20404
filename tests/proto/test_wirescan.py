"""The wire pre-scan: counts bounded before a message becomes objects. [RPC.6]"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import tracemalloc
from collections.abc import Iterator

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.errors import Malformed
from bft.limits import MAX_LAYERS, MAX_OPENINGS, MAX_TOKENS, MAX_VALIDATORS
from merkle.tree import MAX_PROOF_STEPS
from proto import convert, wirescan
from proto import verihive_pb2 as pb
from proto.wirescan import (
    LIMITS,
    MAX_DEPTH,
    MAX_UNKNOWN_FIELDS,
    Scanner,
    encode_field,
    encode_varint,
    scan,
)
from tests import maximal
from tests.support import get_receipt

varint = encode_varint


def tag(number: int, wire: int) -> bytes:
    """Return the key of field ``number`` with wire type ``wire``."""
    return varint(number << 3 | wire)


delimited = encode_field


def rpc_messages() -> Iterator[Descriptor]:
    """Yield the request and reply type of every method of every service."""
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            yield method.input_type
            yield method.output_type


def all_messages() -> Iterator[Descriptor]:
    """Yield every message of verihive.proto, nested ones (map entries) included."""
    todo = list(pb.DESCRIPTOR.message_types_by_name.values())
    while todo:
        d = todo.pop()
        yield d
        todo.extend(d.nested_types)


def with_items(descriptor: Descriptor, name: str, n: int) -> Message:
    """Return a ``descriptor`` message whose repeated field ``name`` holds ``n`` items."""
    m = message_factory.GetMessageClass(descriptor)()
    f = descriptor.fields_by_name[name]
    items = getattr(m, name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        for i in range(n):
            items[str(i)] = i
    elif f.message_type is not None:
        for _ in range(n):
            items.add()
    elif f.type == FieldDescriptor.TYPE_STRING:
        items.extend([""] * n)
    elif f.type == FieldDescriptor.TYPE_BYTES:
        items.extend([b""] * n)
    else:
        items.extend([1] * n)
    return m


def limited_fields() -> list[tuple[Descriptor, str, int]]:
    """Return each repeated field of verihive.proto with its limit."""
    found = []
    for d in all_messages():
        for f in d.fields:
            if f.is_repeated:
                found.append((d, f.name, LIMITS[f.full_name]))
    return sorted(found, key=lambda t: (t[0].full_name, t[1]))


# --- The table of limits


def test_limits_cover_every_repeated_field_reachable_from_an_rpc():
    reachable = {name for d in rpc_messages() for name in wirescan.list_repeated_fields(d)}
    assert "verihive.v1.Vote.sampler_checks" in reachable
    assert "verihive.v1.MerkleProof.steps" in reachable  # deep: Confirm's evidence openings
    missing = sorted(reachable - LIMITS.keys())
    assert not missing, f"repeated fields without a limit in proto/wirescan.py: {missing}"


def test_limits_cover_every_repeated_field_and_name_only_repeated_fields():
    repeated = {f.full_name for d in all_messages() for f in d.fields if f.is_repeated}
    assert repeated == set(LIMITS)


def test_limits_are_those_of_bft_limits():
    assert LIMITS["verihive.v1.Vote.sampler_checks"] == MAX_TOKENS
    assert LIMITS["verihive.v1.Vote.layer_checks"] == MAX_LAYERS
    assert LIMITS["verihive.v1.LayerCheck.chunks"] == MAX_TOKENS
    assert LIMITS["verihive.v1.Commitment.tokens"] == MAX_TOKENS
    assert LIMITS["verihive.v1.Commitment.sketch"] == MAX_TOKENS // 32
    assert LIMITS["verihive.v1.OpenRequest.tiles"] == MAX_OPENINGS
    assert LIMITS["verihive.v1.OpenResponse.openings"] == MAX_OPENINGS
    assert LIMITS["verihive.v1.MerkleProof.steps"] == MAX_PROOF_STEPS
    assert LIMITS["verihive.v1.ValidatorSet.validators"] == MAX_VALIDATORS
    assert LIMITS["verihive.v1.SlashProof.votes"] == 2


def test_a_repeated_field_without_a_limit_fails_closed():
    scanner = Scanner({k: v for k, v in LIMITS.items() if k != "verihive.v1.Vote.sampler_checks"})
    data = with_items(pb.Vote.DESCRIPTOR, "sampler_checks", 1).SerializeToString()
    with pytest.raises(Malformed, match=r"Vote\.sampler_checks: more than 0 items"):
        scanner.scan(pb.Vote.DESCRIPTOR, data)


# --- Each limit


@pytest.mark.parametrize(
    ("descriptor", "name", "limit"),
    limited_fields(),
    ids=[f"{d.name}.{n}" for d, n, _ in limited_fields()],
)
def test_each_limit_holds_at_the_limit_and_refuses_one_more(descriptor, name, limit):
    scan(descriptor, with_items(descriptor, name, limit).SerializeToString())
    data = with_items(descriptor, name, limit + 1).SerializeToString()
    with pytest.raises(Malformed, match=rf"^{descriptor.name}\.{name}: more than {limit} items$"):
        scan(descriptor, data)


def test_invalid_vote_sampler_checks_named_in_the_error():
    data = with_items(pb.Vote.DESCRIPTOR, "sampler_checks", MAX_TOKENS + 1).SerializeToString()
    with pytest.raises(Malformed, match=r"^Vote\.sampler_checks: more than 8192 items$"):
        scan(pb.Vote.DESCRIPTOR, data)


def test_limits_apply_inside_sub_messages():
    vote = with_items(pb.Vote.DESCRIPTOR, "sampler_checks", MAX_TOKENS + 1)
    data = pb.ConfirmRequest(accusation=vote).SerializeToString()
    with pytest.raises(Malformed, match=r"Vote\.sampler_checks"):
        scan(pb.ConfirmRequest.DESCRIPTOR, data)
    proof = pb.MerkleProof(steps=[pb.ProofStep()] * (MAX_PROOF_STEPS + 1))
    response = pb.OpenResponse(openings=[pb.TileOpening(proof=proof)])
    accusation = pb.Vote(evidence=pb.Evidence(response=response))
    data = pb.ConfirmRequest(accusation=accusation).SerializeToString()
    with pytest.raises(Malformed, match=r"MerkleProof\.steps: more than 64 items"):
        scan(pb.ConfirmRequest.DESCRIPTOR, data)


def test_counts_are_per_message():
    checks = [pb.LayerCheck(chunks=range(MAX_TOKENS))] * 3  # 3 * 8192 chunks, 8192 per check
    scan(pb.Vote.DESCRIPTOR, pb.Vote(layer_checks=checks).SerializeToString())


def test_packed_and_unpacked_items_add_up():
    half = MAX_TOKENS // 2
    packed = delimited(5, bytes(half))  # Commitment.tokens = 5: half zeros, packed
    unpacked = (tag(5, 0) + b"\x00") * half
    scan(pb.Commitment.DESCRIPTOR, packed + unpacked)
    with pytest.raises(Malformed, match=r"Commitment\.tokens: more than 8192 items"):
        scan(pb.Commitment.DESCRIPTOR, packed + unpacked + tag(5, 0) + b"\x00")
    assert len(pb.Commitment.FromString(packed + unpacked).tokens) == MAX_TOKENS


def test_packed_varints_of_every_width_are_counted():
    values = [0, 127, 128, 16383, 16384, (1 << 32) - 1] * 1000
    data = pb.Commitment(tokens=values).SerializeToString()
    scan(pb.Commitment.DESCRIPTOR, data)
    data = pb.Commitment(tokens=values * 2).SerializeToString()
    with pytest.raises(Malformed, match="more than 8192 items"):
        scan(pb.Commitment.DESCRIPTOR, data)


def test_an_empty_packed_run_counts_as_an_item():
    # No encoder writes one; counting it keeps the scan's work bounded by the limit.
    data = delimited(5, b"") * (MAX_TOKENS + 1)
    with pytest.raises(Malformed, match="more than 8192 items"):
        scan(pb.Commitment.DESCRIPTOR, data)


# --- Malformed wire data


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x80", "truncated varint"),  # a tag cut short
        (b"\x0a", "truncated varint"),  # network_id (LEN) without its length
        (b"\x0a\x05abc", "truncated"),  # network_id shorter than its length
        (b"\x28", "truncated varint"),  # verdict (varint) without a value
        (b"\x28\xff\xff", "truncated varint"),
        (b"\x28" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x41\x00\x00", "truncated"),  # embedding_max_error (fixed64) cut short
        (b"\x00\x00", "field number 0"),
        (tag(1 << 29, 0) + b"\x00", "field number"),
        (tag(1, 3), "wire type 3"),  # start group
        (tag(1, 4), "wire type 4"),  # end group
        (tag(1, 6), "wire type 6"),
        (tag(1, 7), "wire type 7"),
        (tag(1, 0) + b"\x01", r"Vote\.network_id: malformed wire data: wire type 0"),
        (tag(11, 0) + b"\x01", r"Vote\.sampler_checks: malformed wire data: wire type 0"),
        (delimited(13, b"\x80"), "truncated varint"),  # inside the evidence
        (delimited(7, delimited(2, b"\x80")), "truncated varint in a packed run"),
    ],
)
def test_invalid_wire_data(data, needle):
    with pytest.raises(Malformed, match=needle):
        scan(pb.Vote.DESCRIPTOR, data)
    with pytest.raises(Malformed):
        wirescan.parse(pb.Vote, data, 1 << 20)


def test_invalid_singular_field_twice():
    # Protobuf would merge the two: two accusations could add up their counts.
    one = pb.ConfirmRequest(accusation=pb.Vote(network_id="n")).SerializeToString()
    with pytest.raises(Malformed, match=r"ConfirmRequest\.accusation: appears more than once"):
        scan(pb.ConfirmRequest.DESCRIPTOR, one + one)
    with pytest.raises(Malformed, match=r"Vote\.verdict: appears more than once"):
        scan(pb.Vote.DESCRIPTOR, b"\x28\x01\x28\x02")


def test_unknown_fields_up_to_the_allowance():
    unknown = delimited(99, b"new") + tag(100, 0) + b"\x01" + tag(101, 5) + b"\x00" * 4
    allowed = unknown * (MAX_UNKNOWN_FIELDS // 3)
    scan(pb.Vote.DESCRIPTOR, allowed)
    with pytest.raises(Malformed, match="unknown fields"):
        scan(pb.Vote.DESCRIPTOR, allowed + unknown)


def test_the_size_limit_comes_first():
    data = pb.Vote(reason="x" * 100).SerializeToString()
    with pytest.raises(Malformed, match=r"^Vote: \d+ bytes, more than 100$"):
        wirescan.parse(pb.Vote, data, 100)
    assert wirescan.parse(pb.Vote, data, len(data)).reason == "x" * 100


def recursive_type() -> type[Message]:
    """Return a message class with a recursive field, a repeated double and a repeated
    fixed32 (verihive.proto has none of them), in a pool of its own."""
    file = descriptor_pb2.FileDescriptorProto(name="wirescan_test.proto", package="t")
    node = file.message_type.add(name="Node")
    t = descriptor_pb2.FieldDescriptorProto
    node.field.add(name="next", number=1, type=t.TYPE_MESSAGE, type_name=".t.Node")
    node.field.add(name="values", number=2, type=t.TYPE_DOUBLE, label=t.LABEL_REPEATED)
    node.field.add(name="words", number=3, type=t.TYPE_FIXED32, label=t.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Node"))


def test_nesting_deeper_than_the_bound():
    node = recursive_type()
    scanner = Scanner({"t.Node.values": 4, "t.Node.words": 4})
    data = b""
    for _ in range(MAX_DEPTH):
        data = delimited(1, data)
    scanner.scan(node.DESCRIPTOR, data)
    with pytest.raises(Malformed, match="nested deeper"):
        scanner.scan(node.DESCRIPTOR, delimited(1, data))


def test_verihive_messages_nest_well_within_the_bound():
    @functools.cache
    def depth(name: str) -> int:
        d = pb.DESCRIPTOR.pool.FindMessageTypeByName(name)
        subs = [depth(f.message_type.full_name) for f in d.fields if f.message_type]
        return 1 + max(subs, default=0)

    assert max(depth(d.full_name) for d in all_messages()) == 10 < MAX_DEPTH


def test_packed_fixed_width_runs():
    node = recursive_type()
    scanner = Scanner({"t.Node.values": 4, "t.Node.words": 4})
    scanner.scan(node.DESCRIPTOR, node(values=[1.0] * 4, words=[7] * 4).SerializeToString())
    with pytest.raises(Malformed, match=r"Node\.values: more than 4 items"):
        scanner.scan(node.DESCRIPTOR, node(values=[1.0] * 5).SerializeToString())
    with pytest.raises(Malformed, match=r"Node\.words: more than 4 items"):
        scanner.scan(node.DESCRIPTOR, node(words=[1] * 3).SerializeToString() * 2)
    with pytest.raises(Malformed, match="packed run of 7 bytes"):
        scanner.scan(node.DESCRIPTOR, delimited(2, bytes(7)))
    unpacked = (tag(2, 1) + bytes(8)) * 4  # doubles, one field each
    scanner.scan(node.DESCRIPTOR, unpacked)
    with pytest.raises(Malformed, match="more than 4 items"):
        scanner.scan(node.DESCRIPTOR, unpacked + tag(2, 1) + bytes(8))


# --- Bounded cost: the finding's attacks [hardening]


def peak_bytes_of_scan(descriptor: Descriptor, data: bytes) -> int:
    """Return the most memory Python allocated while ``data`` was scanned (and refused)."""
    tracemalloc.start()
    try:
        with pytest.raises(Malformed):
            scan(descriptor, data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# Nothing per item: the most the scan copies is a packed run that may still be within its
# limit, at most 10 bytes per item (MAX_REPORTED items for the largest limit).
BOUND = 10 * max(LIMITS.values()) + (1 << 20)


def test_ten_million_empty_sampler_checks_cost_nothing_per_item():
    data = b"\x28\x01" + b"\x5a\x00" * 10**7  # ACCEPT, then 10^7 empty sampler checks: 20 MB
    assert peak_bytes_of_scan(pb.Vote.DESCRIPTOR, data) < BOUND
    confirm = delimited(3, data)
    assert peak_bytes_of_scan(pb.ConfirmRequest.DESCRIPTOR, confirm) < BOUND


def test_thirty_million_chunks_are_not_copied():
    data = delimited(7, delimited(2, bytes(3 * 10**7)))  # one layer check, 3*10^7 chunks
    assert peak_bytes_of_scan(pb.Vote.DESCRIPTOR, data) < BOUND
    # A run that might just fit is copied (at most 10 bytes an item) and counted.
    near = delimited(7, delimited(2, bytes(MAX_TOKENS * 10)))
    assert peak_bytes_of_scan(pb.Vote.DESCRIPTOR, near) < BOUND


def test_ten_million_commitment_tokens_are_not_copied():
    signed = delimited(1, delimited(5, bytes(10**7)))
    data = delimited(2, signed)  # VerifyRequest.commitment
    assert peak_bytes_of_scan(pb.VerifyRequest.DESCRIPTOR, data) < BOUND


# --- Legal messages pass


@pytest.mark.parametrize("method", sorted(maximal.requests()))
def test_maximal_legal_requests_pass_and_round_trip(method):
    message = maximal.requests()[method]
    data = message.SerializeToString()
    parsed = wirescan.parse(type(message), data, len(data))
    assert parsed == message


def test_maximal_legal_requests_are_legal():
    requests = maximal.requests()
    convert.request_from_pb(requests["/verihive.v1.Executor/Execute"].request)
    convert.commitment_from_pb(requests["/verihive.v1.Verifier/Verify"].commitment)
    vote = convert.vote_from_pb(requests["/verihive.v1.Verifier/Confirm"].accusation)
    assert vote.evidence is not None and vote.evidence.response is not None
    assert len(vote.evidence.response.openings) == MAX_OPENINGS
    assert len(vote.sampler_checks) == MAX_TOKENS and len(vote.layer_checks) == MAX_LAYERS


def test_scan_and_validation_agree_on_the_chunks_of_a_layer_check(run):
    vote = run.votes[0]
    check = dataclasses.replace(vote.layer_checks[0], chunks=tuple(range(MAX_TOKENS + 1)))
    too_many = dataclasses.replace(vote, layer_checks=(check,))
    with pytest.raises(Malformed, match="too many chunks"):
        too_many.validate()
    with pytest.raises(Malformed, match=r"LayerCheck\.chunks: more than 8192 items"):
        scan(pb.Vote.DESCRIPTOR, convert.vote_to_pb(too_many).SerializeToString())


def test_real_messages_pass(run):
    for vote in run.votes:
        wirescan.parse(pb.Vote, convert.vote_to_pb(vote).SerializeToString(), 64 << 20)
    receipt = convert.receipt_to_pb(get_receipt()).SerializeToString()
    assert wirescan.parse(pb.Receipt, receipt, 64 << 20)


# --- Properties


_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=False),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=False),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: st.text(max_size=8),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=8),
}


@functools.cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Return a strategy for ``descriptor`` messages: any values, few items per repeated field
    (at most its limit), sub-messages down to depth 7 (Confirm's proof steps)."""
    cls = message_factory.GetMessageClass(descriptor)
    parts: dict[str, st.SearchStrategy[object]] = {}
    for f in descriptor.fields:
        most = min(2, LIMITS.get(f.full_name, 2))
        sub = f.message_type
        if sub is not None and sub.GetOptions().map_entry:
            values = _SCALARS[sub.fields_by_name["value"].type]
            parts[f.name] = st.dictionaries(st.text(max_size=4), values, max_size=most)
        elif sub is not None:
            if depth >= 7:
                continue
            one = messages(sub, depth + 1)
            parts[f.name] = st.lists(one, max_size=most) if f.is_repeated else one
        else:
            one = _SCALARS[f.type]
            parts[f.name] = st.lists(one, max_size=most) if f.is_repeated else one
    return st.fixed_dictionaries({}, optional=parts).map(lambda kw: build(cls, kw))


def build(cls: type[Message], values: dict[str, object]) -> Message:
    """Return a ``cls`` message with ``values`` by field name."""
    m = cls()
    for name, value in values.items():
        if isinstance(value, dict):
            getattr(m, name).update(value)
        elif isinstance(value, list):
            getattr(m, name).extend(value)
        elif isinstance(value, Message):
            getattr(m, name).CopyFrom(value)
        else:
            setattr(m, name, value)
    return m


REQUESTS = sorted({d.full_name: d for d in rpc_messages()}.items())


@settings(max_examples=150)
@given(st.sampled_from(REQUESTS).flatmap(lambda t: messages(t[1])))
def test_messages_within_limits_pass(message):
    data = message.SerializeToString()
    assert wirescan.parse(type(message), data, len(data)) == message


@given(st.sampled_from(REQUESTS), st.binary(max_size=64))
def test_random_bytes_pass_or_are_malformed(named, data):
    _, descriptor = named
    with contextlib.suppress(Malformed):
        wirescan.parse(message_factory.GetMessageClass(descriptor), data, 1 << 20)


@given(
    st.sampled_from(REQUESTS).flatmap(lambda t: messages(t[1])),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    st.integers(0, 1 << 16),
)
def test_damaged_messages_pass_or_are_malformed(message, flips, cut):
    data = bytearray(message.SerializeToString())
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    with contextlib.suppress(Malformed):
        wirescan.parse(type(message), bytes(data[: cut % (len(data) + 1)]), 1 << 20)

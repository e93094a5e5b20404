"""A pre-scan of protobuf wire bytes: counts bounded before a message becomes objects. [RPC.6]

:func:`scan` walks the wire form of a message, driven by its descriptor, and raises
:class:`Malformed` as soon as a repeated field holds more items than :data:`LIMITS` allows, or
the bytes are not well-formed wire data. It allocates nothing per item, and it stops at the
first count over its limit, so its cost is bounded by the limits and not by the sender's
message: a 20 MB ``Vote`` of 10^7 empty ``sampler_checks`` is refused after 8,193 of them.
Packed scalars are counted at C speed (one ``bytes.translate``), never item by item.

What the scan refuses, besides counts over their limits: a truncated tag, varint, length or
fixed-width value; field number 0 or above ``2^29 - 1``; wire types 3, 4 (groups), 6 and 7; a
known field with a wire type that does not fit its declared type (a repeated scalar may be
packed or not); a non-repeated field that appears twice (protobuf would merge the two, which
no verihive peer ever sends, and a merged sub-message could sum the counts of both); more
than :data:`MAX_UNKNOWN_FIELDS` unknown fields in one message; and nesting deeper than
:data:`MAX_DEPTH`. Sub-messages with no repeated field anywhere below them are skipped
whole: protobuf's C parser handles them without allocating per item. What the scan passes
may still fail to parse (a varint longer than 10 bytes inside a packed field, invalid UTF-8 in
a string) or fail [LIMIT.2]; :func:`parse` maps a parse failure to :class:`Malformed` too.

Each count is per message: ``LayerCheck.chunks`` is bounded per layer check, not per vote.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from bft.errors import Malformed
from bft.limits import (
    MAX_F,
    MAX_LAYERS,
    MAX_OPENINGS,
    MAX_TOKENS,
    MAX_VALIDATORS,
)
from merkle.sketch import count_sketch_chunks
from merkle.tree import MAX_PROOF_STEPS

M = TypeVar("M", bound=Message)

MAX_DEPTH = 32
"""Sub-messages nested in one another (verihive.proto nests 10 messages deep at most:
``InferResponse`` down to ``ProofStep``)."""
MAX_UNKNOWN_FIELDS = 64
"""Fields of numbers a message does not declare, per message (a newer peer's additions)."""
MAX_COMMITTEE = 3 * MAX_F + 1
"""Members of the largest committee ([COMMITTEE.1])."""
MAX_REPORTED = 1 << 16
"""Items of a list a node reports to a client or an operator (attempts, peers, counts): not
protocol input, bounded generously."""

_PACKAGE = "verihive.v1."

LIMITS: Mapping[str, int] = {
    # Protocol messages: the bounds that [LIMIT.1] and [LIMIT.2] check after parsing.
    f"{_PACKAGE}InferenceRequest.prompt_tokens": MAX_TOKENS,
    f"{_PACKAGE}Commitment.tokens": MAX_TOKENS,
    f"{_PACKAGE}Commitment.sketch": count_sketch_chunks(MAX_TOKENS),
    f"{_PACKAGE}MerkleProof.steps": MAX_PROOF_STEPS,
    f"{_PACKAGE}OpenRequest.tiles": MAX_OPENINGS,
    f"{_PACKAGE}OpenResponse.openings": MAX_OPENINGS,
    f"{_PACKAGE}Vote.layer_checks": MAX_LAYERS,
    # A layer check names chunks of the commitment, and a chunk holds at least one token.
    f"{_PACKAGE}LayerCheck.chunks": MAX_TOKENS,
    f"{_PACKAGE}Vote.sampler_checks": MAX_TOKENS,
    f"{_PACKAGE}ValidatorSet.validators": MAX_VALIDATORS,
    f"{_PACKAGE}SignedValidatorSet.endorsements": MAX_VALIDATORS,
    f"{_PACKAGE}Receipt.votes": MAX_VALIDATORS,
    f"{_PACKAGE}SlashProof.confirmations": MAX_VALIDATORS,
    f"{_PACKAGE}SlashProof.votes": 2,
    # What an assembler reports of an attempt ([ASM.4]): one vote per committee member, a
    # confirmation round per REJECT of up to a committee each, keys slashed or penalised.
    f"{_PACKAGE}Attempt.votes": MAX_VALIDATORS,
    f"{_PACKAGE}Attempt.confirmations": MAX_COMMITTEE * MAX_COMMITTEE,
    f"{_PACKAGE}Attempt.slashes": MAX_VALIDATORS,
    f"{_PACKAGE}Attempt.penalties": MAX_VALIDATORS,
    f"{_PACKAGE}InferResponse.attempts": MAX_REPORTED,
    f"{_PACKAGE}NodeStatus.counts": MAX_REPORTED,
    f"{_PACKAGE}NodeStatus.peers": MAX_REPORTED,
    f"{_PACKAGE}NodeStatus.recent": MAX_REPORTED,
}
"""Most items of each repeated field (by full name) in one message. [RPC.6]"""

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_OF_TYPE = {
    FieldDescriptor.TYPE_DOUBLE: _I64,
    FieldDescriptor.TYPE_FLOAT: _I32,
    FieldDescriptor.TYPE_INT64: _VARINT,
    FieldDescriptor.TYPE_UINT64: _VARINT,
    FieldDescriptor.TYPE_INT32: _VARINT,
    FieldDescriptor.TYPE_FIXED64: _I64,
    FieldDescriptor.TYPE_FIXED32: _I32,
    FieldDescriptor.TYPE_BOOL: _VARINT,
    FieldDescriptor.TYPE_STRING: _LEN,
    FieldDescriptor.TYPE_MESSAGE: _LEN,
    FieldDescriptor.TYPE_BYTES: _LEN,
    FieldDescriptor.TYPE_UINT32: _VARINT,
    FieldDescriptor.TYPE_ENUM: _VARINT,
    FieldDescriptor.TYPE_SFIXED32: _I32,
    FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_SINT32: _VARINT,
    FieldDescriptor.TYPE_SINT64: _VARINT,
}
_WIDTH = {_I64: 8, _I32: 4}
_MAX_VARINT = 10
_MAX_FIELD_NUMBER = (1 << 29) - 1
_VARINT_ENDS = bytes(range(0x80))
"""Bytes that end a varint; deleting them leaves one byte per continuation."""


@dataclass(slots=True)
class _Field:
    name: str
    """``Message.field``, for error messages."""
    wire: int
    """The wire type of one value (of one item, for a repeated field)."""
    limit: int
    """Most items (repeated); -1 for a field that is not repeated."""
    bit: int = 0
    """The field's bit in a message's mask of fields seen (not repeated)."""
    packable: bool = False
    """A repeated scalar: a length-delimited run of values is allowed too."""
    plan: _Plan | None = None
    """The sub-message to walk; ``None`` for a scalar or a sub-message skipped whole."""


@dataclass(slots=True)
class _Plan:
    name: str
    fields: dict[int, _Field] = field(default_factory=dict)


def list_repeated_fields(descriptor: Descriptor) -> list[str]:
    """Return the full names of the repeated fields of ``descriptor`` and of every message
    reachable from it, map fields included."""
    seen: set[str] = set()
    found: list[str] = []
    todo = [descriptor]
    while todo:
        d = todo.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        for f in d.fields:
            if f.is_repeated:
                found.append(f.full_name)
            if f.message_type is not None:
                todo.append(f.message_type)
    return sorted(found)


class Scanner:
    """Scans wire bytes against a table of limits (full field name → most items).

    A repeated field the table does not name has limit 0: the scan fails closed on a field
    added to the schema without a limit.
    """

    def __init__(self, limits: Mapping[str, int] = LIMITS) -> None:
        self.limits = dict(limits)
        self._ready: dict[str, _Plan] = {}
        """Plans complete with their sub-plans: what ``scan`` reads without the lock."""
        self._plans: dict[str, _Plan] = {}
        self._walked: dict[str, bool] = {}
        self._lock = threading.Lock()

    def scan(self, descriptor: Descriptor, data: bytes) -> None:
        """Raise :class:`Malformed` unless ``data`` is well-formed wire data of a
        ``descriptor`` message within the limits. [RPC.6]"""
        plan = self._ready.get(descriptor.full_name)
        if plan is None:
            with self._lock:  # a plan is linked to itself before it is complete
                plan = self._ready[descriptor.full_name] = self._plan(descriptor)
        _walk(plan, bytes(data), 0, len(data), 0)

    def _plan(self, descriptor: Descriptor) -> _Plan:
        plan = self._plans.get(descriptor.full_name)
        if plan is not None:
            return plan
        package = descriptor.file.package
        short = descriptor.full_name[len(package) + 1 :] if package else descriptor.full_name
        plan = self._plans[descriptor.full_name] = _Plan(short)
        bits = 0
        for f in descriptor.fields:
            if f.type not in _WIRE_OF_TYPE:
                raise ValueError(f"{f.full_name}: type {f.type} is not supported")
            wire = _WIRE_OF_TYPE[f.type]
            name = f"{plan.name}.{f.name}"
            sub = f.message_type
            walk = self._plan(sub) if sub is not None and self._is_walked(sub) else None
            if f.is_repeated:
                limit = self.limits.get(f.full_name, 0)
                plan.fields[f.number] = _Field(name, wire, limit, packable=wire != _LEN, plan=walk)
            else:
                plan.fields[f.number] = _Field(name, wire, -1, bit=1 << bits, plan=walk)
                bits += 1
        return plan

    def _is_walked(self, descriptor: Descriptor) -> bool:
        """Return whether a repeated field sits anywhere inside ``descriptor`` messages."""
        known = self._walked.get(descriptor.full_name)
        if known is None:
            self._walked[descriptor.full_name] = True  # a cycle: walk it
            known = any(
                f.is_repeated or (f.message_type is not None and self._is_walked(f.message_type))
                for f in descriptor.fields
            )
            self._walked[descriptor.full_name] = known
        return known


def _walk(plan: _Plan, data: bytes, i: int, end: int, depth: int) -> None:
    """Scan the message of ``plan`` in ``data[i:end]``."""
    if depth > MAX_DEPTH:
        raise Malformed(f"{plan.name}: nested deeper than {MAX_DEPTH} messages")
    fields = plan.fields
    counts: dict[int, int] = {}
    seen = 0
    unknown = 0
    while i < end:
        tag = data[i]
        i += 1
        if tag >= 0x80:
            tag, i = _read_varint(data, i - 1, end, plan.name)
        number, wire = tag >> 3, tag & 7
        if not 0 < number <= _MAX_FIELD_NUMBER:
            raise _bad(plan.name, f"field number {number}")
        start = i
        if wire == _VARINT:  # skipped inline: the value does not matter
            last = min(i + _MAX_VARINT, end)
            while i < last and data[i] >= 0x80:
                i += 1
            if i == last:
                _read_varint(data, start, end, plan.name)  # raises: truncated or too long
            i += 1
        elif wire == _LEN:
            if i < end and data[i] < 0x80:
                start = i + 1
                i = start + data[i]
            else:
                size, start = _read_varint(data, i, end, plan.name)
                i = start + size
        elif wire in (_I64, _I32):
            i += _WIDTH[wire]
        else:
            raise _bad(plan.name, f"field {number} has wire type {wire}")
        if i > end:
            raise _bad(plan.name, f"field {number} is truncated")
        f = fields.get(number)
        if f is None:
            unknown += 1
            if unknown > MAX_UNKNOWN_FIELDS:
                raise Malformed(f"{plan.name}: more than {MAX_UNKNOWN_FIELDS} unknown fields")
            continue
        if f.limit < 0:
            if wire != f.wire:
                raise _bad(f.name, f"wire type {wire}, expected {f.wire}")
            if seen & f.bit:
                raise Malformed(f"{f.name}: appears more than once")
            seen |= f.bit
        else:
            done = counts.get(number, 0)
            if wire == f.wire:
                items = 1
            elif wire == _LEN and f.packable:
                items = max(1, _count_packed(f, data, start, i, f.limit - done))
            else:
                raise _bad(f.name, f"wire type {wire}, expected {f.wire}")
            done += items
            if done > f.limit:
                raise Malformed(f"{f.name}: more than {f.limit} items")
            counts[number] = done
        if f.plan is not None:
            _walk(f.plan, data, start, i, depth + 1)


def _bad(where: str, what: str) -> Malformed:
    return Malformed(f"{where}: malformed wire data: {what}")


def _read_varint(data: bytes, i: int, end: int, where: str) -> tuple[int, int]:
    """Return the varint at ``data[i]`` and the index after it."""
    value = shift = 0
    for j in range(i, min(i + _MAX_VARINT, end)):
        b = data[j]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, j + 1
        shift += 7
    if end - i < _MAX_VARINT:
        raise _bad(where, "truncated varint")
    raise _bad(where, f"varint longer than {_MAX_VARINT} bytes")


def _count_packed(f: _Field, data: bytes, start: int, stop: int, room: int) -> int:
    """Return the values in the packed run ``data[start:stop]`` of ``f``; raise as soon as
    they are more than ``room`` (without copying a run that must hold more)."""
    size = stop - start
    width = _WIDTH.get(f.wire)
    if width is not None:
        if size % width:
            raise _bad(f.name, f"packed run of {size} bytes")
        return size // width
    if size > _MAX_VARINT * room:  # at least size/10 varints: over the limit, whatever they are
        raise Malformed(f"{f.name}: more than {f.limit} items")
    run = data[start:stop]
    if run and run[-1] >= 0x80:
        raise _bad(f.name, "truncated varint in a packed run")
    return size - len(run.translate(None, _VARINT_ENDS))


DEFAULT = Scanner()
"""The scanner of :data:`LIMITS`."""


def scan(descriptor: Descriptor, data: bytes) -> None:
    """Raise :class:`Malformed` unless ``data`` passes :data:`DEFAULT` for ``descriptor``."""
    DEFAULT.scan(descriptor, data)


def parse(message_type: type[M], data: bytes, max_bytes: int) -> M:
    """Return ``data`` parsed as ``message_type`` once it is at most ``max_bytes`` long and
    passes :func:`scan`; raise :class:`Malformed` otherwise. [RPC.6]"""
    descriptor = cast(Descriptor, message_type.DESCRIPTOR)
    name = descriptor.name
    if len(data) > max_bytes:
        raise Malformed(f"{name}: {len(data)} bytes, more than {max_bytes}")
    scan(descriptor, data)
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise _bad(name, str(exc)) from None


def encode_varint(n: int) -> bytes:
    """Return ``n`` (non-negative) as a protobuf varint: for building wire bytes by hand, as
    attacks and tests of the scan do."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def encode_field(number: int, payload: bytes) -> bytes:
    """Return length-delimited field ``number`` (wire type 2) holding ``payload``."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload

"""Canonical byte encoding of signed statements. [ENC.1]-[ENC.3]

Every signed statement is ``sha256(tag || network_id || fields)`` where each part is
length-prefixed and the fields come in a fixed order per statement type. Protobuf bytes are
never signed: protobuf serialisation is not canonical.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable

from bft.errors import Malformed
from bft.types import Digest

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

# Type tags, one byte each, so that fields of different types never encode alike. [ENC.2]
_T_BYTES = b"\x01"
_T_STR = b"\x02"
_T_U64 = b"\x03"
_T_I64 = b"\x04"
_T_F64 = b"\x05"
_T_U32S = b"\x06"
_T_LIST = b"\x07"
_T_BOOL = b"\x08"


class Canonical:
    """Builder of canonical bytes: typed, length-prefixed fields in call order."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def bytes_(self, value: bytes) -> Canonical:
        """Append the byte string ``value``."""
        self._parts += [_T_BYTES, _U32.pack(len(value)), value]
        return self

    def str_(self, value: str) -> Canonical:
        """Append the UTF-8 string ``value``."""
        raw = value.encode("utf-8")
        self._parts += [_T_STR, _U32.pack(len(raw)), raw]
        return self

    def u64(self, value: int) -> Canonical:
        """Append the unsigned integer ``value`` (< 2**64)."""
        if not 0 <= value < 1 << 64:
            raise Malformed(f"u64 out of range: {value}")
        self._parts += [_T_U64, _U64.pack(value)]
        return self

    def i64(self, value: int) -> Canonical:
        """Append the signed integer ``value``."""
        if not -(1 << 63) <= value < 1 << 63:
            raise Malformed(f"i64 out of range: {value}")
        self._parts += [_T_I64, _I64.pack(value)]
        return self

    def f64(self, value: float) -> Canonical:
        """Append the finite float ``value`` as IEEE-754 binary64, big-endian."""
        if not math.isfinite(value):
            raise Malformed(f"non-finite float in signed statement: {value}")
        self._parts += [_T_F64, _F64.pack(value)]
        return self

    def bool_(self, value: bool) -> Canonical:
        """Append the boolean ``value``."""
        self._parts += [_T_BOOL, b"\x01" if value else b"\x00"]
        return self

    def u32s(self, values: Iterable[int]) -> Canonical:
        """Append a sequence of unsigned 32-bit integers (token ids, indices)."""
        vals = list(values)
        for v in vals:
            if not 0 <= v < 1 << 32:
                raise Malformed(f"u32 out of range: {v}")
        packed = struct.pack(f">{len(vals)}I", *vals)
        self._parts += [_T_U32S, _U32.pack(len(vals)), packed]
        return self

    def list_(self, items: Iterable[bytes]) -> Canonical:
        """Append a list of already-encoded items (each length-prefixed)."""
        encoded = [_U32.pack(len(item)) + item for item in items]
        self._parts += [_T_LIST, _U32.pack(len(encoded)), *encoded]
        return self

    def build(self) -> bytes:
        """Return the concatenated canonical bytes."""
        return b"".join(self._parts)


def compute_signing_root(tag: str, network_id: str, body: bytes) -> Digest:
    """Return ``sha256`` over the domain ``tag``, ``network_id`` and canonical ``body``. [ENC.1]"""
    head = Canonical().str_(tag).str_(network_id).build()
    return Digest(hashlib.sha256(head + body).digest())


def sha256(data: bytes) -> Digest:
    """Return the SHA-256 digest of ``data``."""
    return Digest(hashlib.sha256(data).digest())

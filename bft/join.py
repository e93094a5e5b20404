"""Joining without stake: a signed join statement and a proof-of-work stamp. [JOIN.1]-[JOIN.2]

An executor asks an assembler to route to it with a :class:`JoinRequest`: its key, the address it
serves at, the model and execution profile it runs, and a measured throughput, signed with that
key (proof of possession) and carrying a hashcash-style stamp over its key: a nonce such that the
stamp digest has at least ``bits`` leading zero bits. The stamp makes identities cost CPU time;
its difficulty is the network's (genesis) and can be re-targeted. The assembler then probes the
address ([JOIN.2], a shell's job) before routing to it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace

from bft.crypto import SigningKey, check_signature
from bft.encoding import Canonical, compute_signing_root
from bft.errors import Malformed, Reject
from bft.limits import MAX_STRING, check_network_id
from bft.types import (
    DIGEST_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Digest,
    ModelId,
    PublicKey,
    Signature,
)

TAG_JOIN = "verihive/join/v1"
TAG_STAMP = "verihive/join-stamp/v1"
MAX_STAMP_BITS = 40
"""The hardest stamp a network may ask for (about 10^12 hashes)."""
DEFAULT_STAMP_BITS = 16
"""About 65536 hashes: well under a second on one CPU core."""


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """An executor's signed request to be routed to. ``tokens_per_second`` is informative."""

    network_id: str
    public_key: PublicKey
    address: str
    model_id: ModelId
    profile: str
    tokens_per_second: float
    nonce: int
    signature: Signature = field(default=Signature(b""))

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems."""
        check_network_id(self.network_id)
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise Malformed(f"join public_key must be {PUBLIC_KEY_SIZE} bytes")
        if len(self.model_id) != DIGEST_SIZE:
            raise Malformed(f"join model_id must be {DIGEST_SIZE} bytes")
        if len(self.signature) != SIGNATURE_SIZE:
            raise Malformed(f"join signature must be {SIGNATURE_SIZE} bytes")
        for value, what in ((self.address, "address"), (self.profile, "profile")):
            if not value or len(value.encode()) > MAX_STRING:
                raise Malformed(f"join {what} must be 1..{MAX_STRING} bytes")
        if not (math.isfinite(self.tokens_per_second) and self.tokens_per_second >= 0):
            raise Malformed("join tokens_per_second must be finite and >= 0")
        if not 0 <= self.nonce < 2**64:
            raise Malformed("join nonce must fit in 64 bits")

    def signing_root(self) -> Digest:
        """Return the digest the key signs (every field but the signature)."""
        body = (
            Canonical()
            .bytes_(self.public_key)
            .str_(self.address)
            .bytes_(self.model_id)
            .str_(self.profile)
            .f64(self.tokens_per_second)
            .u64(self.nonce)
            .build()
        )
        return compute_signing_root(TAG_JOIN, self.network_id, body)


def compute_stamp_digest(network_id: str, public_key: PublicKey, nonce: int) -> bytes:
    """Return the stamp digest of ``nonce`` for ``public_key`` on ``network_id``."""
    body = Canonical().str_(TAG_STAMP).str_(network_id).bytes_(public_key).u64(nonce).build()
    return hashlib.sha256(body).digest()


def get_stamp_bits(digest: bytes) -> int:
    """Return the number of leading zero bits of ``digest``."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def compute_stamp(network_id: str, public_key: PublicKey, bits: int) -> int:
    """Return the first nonce whose stamp has ``bits`` leading zero bits (the minting work)."""
    if not 0 <= bits <= MAX_STAMP_BITS:
        raise ValueError(f"stamp bits must be 0..{MAX_STAMP_BITS}")
    nonce = 0
    while get_stamp_bits(compute_stamp_digest(network_id, public_key, nonce)) < bits:
        nonce += 1
    return nonce


def sign_join(key: SigningKey, unsigned: JoinRequest) -> JoinRequest:
    """Return ``unsigned`` signed by ``key``."""
    return replace(unsigned, signature=key.sign(unsigned.signing_root()))


def check_join(join: JoinRequest, network_id: str, model_id: ModelId, bits: int) -> None:
    """Raise unless ``join`` may be routed to on this network and model. [JOIN.1]

    In order: well formed (``Malformed``), for this network and model (``Reject``), signed by
    its key (``BadSignature``), stamped with at least ``bits`` zero bits (``Reject``).
    """
    join.validate()
    if join.network_id != network_id:
        raise Reject("join is for another network")
    if join.model_id != model_id:
        raise Reject("join names a model this network does not serve")
    check_signature(join.public_key, join.signing_root(), join.signature, "join")
    stamp = compute_stamp_digest(join.network_id, join.public_key, join.nonce)
    if get_stamp_bits(stamp) < bits:
        raise Reject(f"join stamp has fewer than the {bits} leading zero bits this network asks")


TAG_LEAVE = "verihive/leave/v1"
LEAVE_WINDOW_MS = 300_000
"""How far a leave's ``issued_at_ms`` may be from the assembler's clock (5 minutes)."""


@dataclass(frozen=True, slots=True)
class LeaveRequest:
    """An executor's signed request to be routed to no more. [JOIN.3]"""

    network_id: str
    public_key: PublicKey
    issued_at_ms: int
    signature: Signature = field(default=Signature(b""))

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems."""
        check_network_id(self.network_id)
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise Malformed(f"leave public_key must be {PUBLIC_KEY_SIZE} bytes")
        if len(self.signature) != SIGNATURE_SIZE:
            raise Malformed(f"leave signature must be {SIGNATURE_SIZE} bytes")
        if not 0 < self.issued_at_ms < 2**63:
            raise Malformed("leave issued_at_ms must be a positive 63-bit time")

    def signing_root(self) -> Digest:
        """Return the digest the key signs (every field but the signature)."""
        body = Canonical().bytes_(self.public_key).u64(self.issued_at_ms).build()
        return compute_signing_root(TAG_LEAVE, self.network_id, body)


def sign_leave(key: SigningKey, network_id: str, issued_at_ms: int) -> LeaveRequest:
    """Return ``key``'s signed leave from ``network_id`` at ``issued_at_ms``."""
    unsigned = LeaveRequest(network_id, key.public_key, issued_at_ms)
    return replace(unsigned, signature=key.sign(unsigned.signing_root()))


def check_leave(leave: LeaveRequest, network_id: str, now_ms: int, last_ms: int) -> None:
    """Raise unless ``leave`` may be honoured now. [JOIN.3]

    In order: well formed (``Malformed``), for this network (``Reject``), signed by its key
    (``BadSignature``), issued within :data:`LEAVE_WINDOW_MS` of ``now_ms`` and after
    ``last_ms``, the newest leave already honoured for this key (``Reject``: stale or replayed).
    """
    leave.validate()
    if leave.network_id != network_id:
        raise Reject("leave is for another network")
    check_signature(leave.public_key, leave.signing_root(), leave.signature, "leave")
    if abs(leave.issued_at_ms - now_ms) > LEAVE_WINDOW_MS:
        raise Reject(f"leave is stale: issued more than {LEAVE_WINDOW_MS // 1000} s from now")
    if leave.issued_at_ms <= last_ms:
        raise Reject("leave replayed: not newer than the last leave of this key")

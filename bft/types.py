"""Small value types shared by the protocol core."""

from __future__ import annotations

from typing import NewType

NodeId = NewType("NodeId", bytes)
"""32-byte node identifier: ``sha256(DOMAIN_NODE_ID || public_key)``. [ID.1]"""

Digest = NewType("Digest", bytes)
"""32-byte SHA-256 digest."""

PublicKey = NewType("PublicKey", bytes)
"""32-byte raw Ed25519 public key."""

Signature = NewType("Signature", bytes)
"""64-byte Ed25519 signature."""

ModelId = NewType("ModelId", bytes)
"""32-byte digest of a model's weights and configuration. [MODEL.1]"""

Epoch = NewType("Epoch", int)

DIGEST_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
REQUEST_ID_SIZE = 16


def short_hex(value: bytes, length: int = 12) -> str:
    """Return the first ``length`` hex characters of ``value`` for display."""
    return value.hex()[:length]

"""Ed25519 identities and signatures. [ID.1], [SIG.1]"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from bft.encoding import sha256
from bft.errors import BadSignature, Malformed
from bft.types import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Digest,
    NodeId,
    PublicKey,
    Signature,
)

DOMAIN_NODE_ID = b"verihive/node-id/v1"


def compute_node_id(public_key: PublicKey) -> NodeId:
    """Return the node id of ``public_key``: ``sha256(DOMAIN_NODE_ID || key)``. [ID.1]"""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise Malformed(f"public key must be {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    return NodeId(sha256(DOMAIN_NODE_ID + public_key))


def is_valid_signature(public_key: PublicKey, message: Digest, signature: Signature) -> bool:
    """Return whether ``signature`` by ``public_key`` over ``message`` verifies."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def check_signature(
    public_key: PublicKey, message: Digest, signature: Signature, what: str
) -> None:
    """Raise :class:`BadSignature` naming ``what`` unless ``signature`` verifies."""
    if not is_valid_signature(public_key, message, signature):
        raise BadSignature(f"invalid signature on {what}")


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its public key and node id. Signatures are deterministic."""

    private: Ed25519PrivateKey
    public_key: PublicKey
    node_id: NodeId

    @classmethod
    def generate(cls) -> SigningKey:
        """Return a fresh random key."""
        return cls.from_private(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Return the key whose 32-byte private seed is ``seed`` (tests, simulations)."""
        if len(seed) != 32:
            raise ValueError("seed must be 32 bytes")
        return cls.from_private(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> SigningKey:
        """Wrap ``private``."""
        public = PublicKey(
            private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )
        return cls(private=private, public_key=public, node_id=compute_node_id(public))

    @property
    def seed(self) -> bytes:
        """Return the 32-byte private seed (what a key file holds)."""
        return self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the raw 32-byte seed at ``path``, creating it (mode 0600) if absent."""
        if path.exists():
            return cls.from_seed(path.read_bytes())
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = key.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        path.touch(mode=0o600)
        path.write_bytes(raw)
        return key

    def sign(self, message: Digest) -> Signature:
        """Return the signature over the 32-byte signing root ``message``."""
        return Signature(self.private.sign(message))

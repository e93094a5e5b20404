"""Work orders: an admitted assembler's signature on the work it asks of a node. [ADMIT.1]

Executors and verifiers spend model time only for the network's assemblers (the genesis file
names their keys). Every ``Execute``, ``Verify`` and ``Confirm`` carries an :class:`Order`: the
asking assembler's key and its signature over what is asked (the work, the request digest, and
for ``Verify`` the commitment digest and the executor address the verifier is to fetch openings
from; for ``Confirm`` the accusation's digest). A node checks the order before anything else,
before any cache, journal or model work: an unknown key is :class:`NotAdmitted`, a bad signature
:class:`BadSignature`. The executor address a verifier dials therefore comes from the assembler,
which took it from the executor's join or its own config, never from an unauthenticated caller.

Orders carry no time: a replayed order asks again for work already done, which the node answers
from what it signed ([COMMIT.5], [VOTE.3]) without model work.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from enum import Enum

from bft.crypto import SigningKey, check_signature
from bft.encoding import Canonical, compute_signing_root
from bft.errors import Malformed, NotAdmitted
from bft.limits import MAX_STRING
from bft.types import DIGEST_SIZE, PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Digest, PublicKey, Signature

TAG_ORDER = "verihive/order/v1"
NO_DIGEST = Digest(b"\x00" * DIGEST_SIZE)
"""The digest slot of an order that names no commitment or accusation."""


class Work(Enum):
    """What an order asks for."""

    EXECUTE = "execute"
    VERIFY = "verify"
    CONFIRM = "confirm"


@dataclass(frozen=True, slots=True)
class Order:
    """An assembler's key and its signature over one piece of work."""

    assembler_key: PublicKey
    signature: Signature

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems."""
        if len(self.assembler_key) != PUBLIC_KEY_SIZE:
            raise Malformed(f"order assembler_key must be {PUBLIC_KEY_SIZE} bytes")
        if len(self.signature) != SIGNATURE_SIZE:
            raise Malformed(f"order signature must be {SIGNATURE_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class Subject:
    """What an order is about; both sides compute it from the call's own contents."""

    network_id: str
    work: Work
    request_digest: Digest
    commitment_digest: Digest = NO_DIGEST
    executor_address: str = ""
    accusation_digest: Digest = NO_DIGEST

    def signing_root(self, assembler_key: PublicKey) -> Digest:
        """Return the digest the assembler signs."""
        if len(self.executor_address) > MAX_STRING:
            raise Malformed(f"executor_address must be at most {MAX_STRING} characters")
        body = (
            Canonical()
            .str_(self.work.value)
            .bytes_(assembler_key)
            .bytes_(self.request_digest)
            .bytes_(self.commitment_digest)
            .str_(self.executor_address)
            .bytes_(self.accusation_digest)
            .build()
        )
        return compute_signing_root(TAG_ORDER, self.network_id, body)


def sign_order(key: SigningKey, subject: Subject) -> Order:
    """Return ``key``'s order for ``subject``."""
    return Order(key.public_key, key.sign(subject.signing_root(key.public_key)))


def check_order(order: Order | None, subject: Subject, admitted: Set[PublicKey]) -> None:
    """Raise unless ``order`` is an ``admitted`` assembler's signature on ``subject``. [ADMIT.1]

    In order: present and well formed (``Malformed``), by an admitted key (``NotAdmitted``),
    signed (``BadSignature``): one dictionary lookup and one signature check, nothing more.
    """
    if order is None:
        raise Malformed(f"{subject.work.value} needs an order from an admitted assembler")
    order.validate()
    if order.assembler_key not in admitted:
        raise NotAdmitted(f"{subject.work.value} ordered by a key this network does not admit")
    check_signature(
        order.assembler_key, subject.signing_root(order.assembler_key), order.signature, "order"
    )

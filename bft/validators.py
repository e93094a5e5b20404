"""Validator sets: who may verify in an epoch, with what trust, signed. [VSET.1]-[VSET.4]

A validator set names the verifiers of one epoch with an integer trust weight each. It is a
signed object: the genesis set (epoch 0) is signed by every member and pinned by digest by
whoever trusts it; the set of epoch ``e + 1`` names the digest of epoch ``e``'s set and is
signed by members of that set holding more than two thirds of its trust, so a client holding
any trusted set can follow the chain. Trust weights are configuration at genesis and change only
by [SLASH.5] (a tombstoned key never appears in a later set, [SLASH.3]) until the reputation
ledger of issue [ledger] exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bft.crypto import SigningKey, check_signature, compute_node_id
from bft.encoding import Canonical, compute_signing_root
from bft.errors import Malformed, Reject
from bft.limits import MAX_EPOCH, MAX_TRUST, MAX_VALIDATORS, check_network_id
from bft.types import (
    DIGEST_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Digest,
    NodeId,
    PublicKey,
    Signature,
)

TAG_VALIDATOR_SET = "verihive/validator-set/v1"
DEFAULT_TRUST = 100
"""Trust of a validator with no history (genesis configuration; penalties halve it, [SLASH.4])."""
ZERO_DIGEST = Digest(b"\x00" * DIGEST_SIZE)


@dataclass(frozen=True, slots=True)
class Validator:
    """One member: its Ed25519 key and its trust weight (1..``MAX_TRUST``)."""

    key: PublicKey
    trust: int = DEFAULT_TRUST

    @property
    def node_id(self) -> NodeId:
        """Return the member's node id."""
        return compute_node_id(self.key)


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    """The validators of ``epoch``; ``previous`` is the digest of epoch ``epoch - 1``'s set.

    Members are sorted by node id and distinct, so one set has one encoding. [VSET.1]
    """

    network_id: str
    epoch: int
    validators: tuple[Validator, ...]
    previous: Digest = ZERO_DIGEST

    @classmethod
    def of(
        cls,
        network_id: str,
        epoch: int,
        members: Iterable[Validator],
        previous: Digest = ZERO_DIGEST,
    ) -> ValidatorSet:
        """Return the set of ``members`` in canonical (node id) order."""
        ordered = tuple(sorted(members, key=lambda v: v.node_id))
        return cls(network_id, epoch, ordered, previous)

    @classmethod
    def of_keys(cls, network_id: str, keys: Iterable[PublicKey], epoch: int = 0) -> ValidatorSet:
        """Return the genesis-shaped set of ``keys`` at the default trust (tests, benchmarks)."""
        return cls.of(network_id, epoch, (Validator(k) for k in keys))

    @property
    def keys(self) -> tuple[PublicKey, ...]:
        """Return the members' keys in canonical order."""
        return tuple(v.key for v in self.validators)

    @property
    def total_trust(self) -> int:
        """Return the sum of the members' trust."""
        return sum(v.trust for v in self.validators)

    def trust_of(self, key: PublicKey) -> int:
        """Return ``key``'s trust, 0 when it is not a member."""
        return next((v.trust for v in self.validators if v.key == key), 0)

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems. [VSET.1]"""
        check_network_id(self.network_id, "validator set network_id")
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise Malformed("validator set epoch out of range")
        if len(self.previous) != DIGEST_SIZE:
            raise Malformed("validator set previous digest must be 32 bytes")
        if (self.epoch == 0) != (self.previous == ZERO_DIGEST):
            raise Malformed("only the genesis set (epoch 0) has no previous set")
        if not 1 <= len(self.validators) <= MAX_VALIDATORS:
            raise Malformed(f"validator set must have 1..{MAX_VALIDATORS} members")
        for v in self.validators:
            if len(v.key) != PUBLIC_KEY_SIZE:
                raise Malformed("validator key must be 32 bytes")
            if not 1 <= v.trust <= MAX_TRUST:
                raise Malformed(f"validator trust must be in [1, {MAX_TRUST}]")
        ids = [v.node_id for v in self.validators]
        if ids != sorted(set(ids)):
            raise Malformed("validators must be distinct and sorted by node id")

    def digest(self) -> Digest:
        """Return the set's digest: what requests name and members sign. [VSET.2]"""
        members = (Canonical().bytes_(v.key).u64(v.trust).build() for v in self.validators)
        body = Canonical().u64(self.epoch).bytes_(self.previous).list_(members).build()
        return compute_signing_root(TAG_VALIDATOR_SET, self.network_id, body)


@dataclass(frozen=True, slots=True)
class Endorsement:
    """A signature over a validator set's digest."""

    key: PublicKey
    signature: Signature


@dataclass(frozen=True, slots=True)
class SignedValidatorSet:
    """A validator set with the endorsements that make it valid. [VSET.3]"""

    vset: ValidatorSet
    endorsements: tuple[Endorsement, ...]

    @property
    def digest(self) -> Digest:
        """Return the set's digest."""
        return self.vset.digest()


def endorse(vset: ValidatorSet, key: SigningKey) -> Endorsement:
    """Return ``key``'s endorsement of ``vset``."""
    return Endorsement(key.public_key, key.sign(vset.digest()))


def make_genesis(
    network_id: str, keys: Iterable[SigningKey], trust: int = DEFAULT_TRUST
) -> SignedValidatorSet:
    """Return the epoch-0 set of ``keys``, endorsed by every member (local networks, tests)."""
    keys = list(keys)
    vset = ValidatorSet.of(network_id, 0, (Validator(k.public_key, trust) for k in keys))
    by_id = {k.node_id: k for k in keys}
    return SignedValidatorSet(vset, tuple(endorse(vset, by_id[v.node_id]) for v in vset.validators))


def check_validator_set(signed: SignedValidatorSet, previous: ValidatorSet | None = None) -> None:
    """Raise unless ``signed`` is a valid set. [VSET.3]

    With no ``previous``: a genesis set endorsed by every member (its digest is what a client
    pins). With ``previous``: the next epoch's set, naming ``previous``'s digest, endorsed by
    members of ``previous`` holding more than two thirds of its trust.
    """
    vset = signed.vset
    vset.validate()
    digest = vset.digest()
    signers: set[PublicKey] = set()
    for e in signed.endorsements:
        if len(e.key) != PUBLIC_KEY_SIZE or len(e.signature) != SIGNATURE_SIZE:
            raise Malformed("endorsement key or signature has the wrong size")
        if e.key in signers:
            raise Reject("validator set endorsed twice by one key")
        check_signature(e.key, digest, e.signature, "validator set endorsement")
        signers.add(e.key)
    if previous is None:
        if vset.epoch != 0:
            raise Reject("a validator set after genesis needs the previous set to check it")
        if signers != set(vset.keys):
            raise Reject("genesis validator set must be endorsed by every member and no one else")
        return
    if (
        vset.epoch != previous.epoch + 1
        or vset.previous != previous.digest()
        or vset.network_id != previous.network_id
    ):
        raise Reject("validator set does not follow the previous epoch's set")
    weight = sum(previous.trust_of(k) for k in signers)
    if 3 * weight <= 2 * previous.total_trust:
        raise Reject("validator set endorsed by two thirds of the previous set's trust or less")

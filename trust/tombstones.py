"""Tombstones and burnt reputation: slashing without stake. [SLASH.3]-[SLASH.5]

Nobody stakes anything, so a slash costs the offender its identity: the key is tombstoned
(refused for good as executor and verifier, left out of every later validator set) and its
trust is burnt to zero. A key is slashed once however many offences it committed, as Cosmos
caps double-sign slashes: later valid records are kept as evidence but change nothing
([SLASH.3]). A false accusation costs the accuser half its trust ([SLASH.4]).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from bft.assembler import Tally
from bft.types import Digest, PublicKey
from bft.validators import Validator, ValidatorSet
from slashing.records import Penalty, SlashRecord, check_penalty, check_slash, compute_records

PENALTY_NUMERATOR, PENALTY_DENOMINATOR = 1, 2
"""A refuted accusation keeps the accuser ``1/2`` of its trust (floor, at least 1)."""


@dataclass
class Tombstones:
    """Slashed keys and their records; thread-safe. Records must be checked before ``add``."""

    _first: dict[PublicKey, SlashRecord] = field(default_factory=dict)
    _more: dict[PublicKey, list[SlashRecord]] = field(default_factory=dict)
    _penalties: dict[Digest, Penalty] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: SlashRecord) -> bool:
        """Record a checked slash; return ``True`` when it tombstones a new key. [SLASH.3]"""
        with self._lock:
            if record.offender in self._first:
                known = {r.digest() for r in self._more[record.offender]}
                if (
                    record.digest() not in known
                    and record.digest() != self._first[record.offender].digest()
                ):
                    self._more[record.offender].append(record)
                return False
            self._first[record.offender] = record
            self._more[record.offender] = []
            return True

    def add_penalty(self, penalty: Penalty) -> bool:
        """Record a checked penalty; return ``True`` when it is new. [SLASH.4]"""
        with self._lock:
            if penalty.digest() in self._penalties:
                return False
            self._penalties[penalty.digest()] = penalty
            return True

    def is_tombstoned(self, key: PublicKey) -> bool:
        """Return whether ``key`` was slashed."""
        with self._lock:
            return key in self._first

    def slash_of(self, key: PublicKey) -> SlashRecord | None:
        """Return the record that tombstoned ``key``."""
        with self._lock:
            return self._first.get(key)

    def offences_of(self, key: PublicKey) -> int:
        """Return how many distinct valid records name ``key`` (1 slash however many)."""
        with self._lock:
            return (key in self._first) + len(self._more.get(key, []))

    @property
    def slashes(self) -> tuple[SlashRecord, ...]:
        """Return the tombstoning records, in order."""
        with self._lock:
            return tuple(self._first.values())

    @property
    def penalties(self) -> tuple[Penalty, ...]:
        """Return the penalties, in order."""
        with self._lock:
            return tuple(self._penalties.values())

    def penalties_of(self, key: PublicKey, epoch: int | None = None) -> int:
        """Return how many refuted accusations ``key`` made (in ``epoch``, when given)."""
        with self._lock:
            return sum(
                1
                for p in self._penalties.values()
                if p.accuser == key and (epoch is None or p.request.epoch == epoch)
            )


def process_tally(
    tombstones: Tombstones, tally: Tally, vset: ValidatorSet
) -> tuple[tuple[SlashRecord, ...], tuple[Penalty, ...]]:
    """Check and keep what the settled ``tally`` proves; return its new slashes and penalties.

    The attempt machine's ``Settled`` action asks for this ([ASM.7]); a record this node cannot
    defend (``check_slash`` fails) is a bug, not a slash, and raises. One slash per key,
    however many records ([SLASH.3]).
    """
    slashes, penalties = compute_records(tally)
    new_slashes = []
    for r in slashes:
        check_slash(r, vset)
        if tombstones.add(r):
            new_slashes.append(r)
    for p in penalties:
        check_penalty(p, vset)
        tombstones.add_penalty(p)
    return tuple(new_slashes), penalties


def next_validator_set(vset: ValidatorSet, tombstones: Tombstones) -> ValidatorSet:
    """Return the members of the next epoch after slashes and penalties. [SLASH.5]

    Tombstoned keys leave for good (their trust is burnt); each penalty earned in ``vset``'s
    epoch halves the accuser's trust once (earlier epochs' penalties are already in ``vset``).
    Endorsing the result is the members' business ([VSET.3]).
    """
    members = []
    for v in vset.validators:
        if tombstones.is_tombstoned(v.key):
            continue
        trust = v.trust
        for _ in range(tombstones.penalties_of(v.key, epoch=vset.epoch)):
            trust = max(1, trust * PENALTY_NUMERATOR // PENALTY_DENOMINATOR)
        members.append(Validator(v.key, trust))
    return ValidatorSet.of(vset.network_id, vset.epoch + 1, members, vset.digest())

"""Validator sets: members with trust, signed per epoch. [VSET.1]-[VSET.4]

[VSET.1] structure and canonical order, [VSET.2] the digest, [VSET.3] endorsements: a genesis
set endorsed by every member, a later set by members of the previous set holding more than two
thirds of its trust; [VSET.4] the protobuf form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import pytest
from google.protobuf.message import DecodeError
from hypothesis import assume, given
from hypothesis import strategies as st

from bft.crypto import SigningKey
from bft.errors import BadSignature, Malformed, Reject
from bft.types import Digest, PublicKey, Signature
from bft.validators import (
    DEFAULT_TRUST,
    MAX_TRUST,
    MAX_VALIDATORS,
    ZERO_DIGEST,
    Endorsement,
    SignedValidatorSet,
    Validator,
    ValidatorSet,
    check_validator_set,
    endorse,
    make_genesis,
)
from proto import convert
from proto import verihive_pb2 as pb

NET = "vset-test"
KEYS = tuple(SigningKey.from_seed(hashlib.sha256(b"member-%d" % i).digest()) for i in range(6))
PKS = tuple(k.public_key for k in KEYS)
STRANGER = SigningKey.from_seed(b"\x55" * 32)
GENESIS = make_genesis(NET, KEYS)
PREV = Digest(b"\x01" * 32)


def later_set(previous: ValidatorSet, members=None, epoch: int | None = None) -> ValidatorSet:
    """Return the set after ``previous`` (same members unless given)."""
    return ValidatorSet.of(
        previous.network_id,
        previous.epoch + 1 if epoch is None else epoch,
        previous.validators if members is None else members,
        previous.digest(),
    )


def endorsed(vset: ValidatorSet, keys) -> SignedValidatorSet:
    return SignedValidatorSet(vset, tuple(endorse(vset, k) for k in keys))


# --- structure [VSET.1]


def test_members_are_sorted_by_node_id_with_default_trust():
    vset = ValidatorSet.of_keys(NET, PKS[::-1])
    assert [v.node_id for v in vset.validators] == sorted(v.node_id for v in vset.validators)
    assert set(vset.keys) == set(PKS) and len(vset.keys) == 6
    assert all(v.trust == DEFAULT_TRUST == 100 for v in vset.validators)
    assert vset.epoch == 0 and vset.previous == ZERO_DIGEST
    assert vset.total_trust == 600
    vset.validate()


def test_trust_of_members_and_strangers():
    vset = ValidatorSet.of(NET, 0, [Validator(PKS[0], 7), Validator(PKS[1], MAX_TRUST)])
    assert vset.trust_of(PKS[0]) == 7 and vset.trust_of(PKS[1]) == MAX_TRUST
    assert vset.trust_of(STRANGER.public_key) == 0
    assert vset.total_trust == 7 + MAX_TRUST


def test_set_is_the_same_whatever_order_members_are_given_in():
    members = [Validator(k, t) for k, t in zip(PKS, (1, 5, 9, 100, 7, 3), strict=True)]
    sets = {ValidatorSet.of(NET, 0, p) for p in itertools.permutations(members[:4])}
    assert len(sets) == 1
    assert len({s.digest() for s in sets}) == 1


def test_validation_bounds_are_inclusive():
    keys = tuple(SigningKey.from_seed(i.to_bytes(32, "big")).public_key for i in range(1024))
    big = ValidatorSet.of(NET, (1 << 63) - 1, (Validator(k, MAX_TRUST) for k in keys), PREV)
    assert len(big.validators) == MAX_VALIDATORS
    big.validate()
    ValidatorSet.of("n" * 256, 0, [Validator(PKS[0], 1)]).validate()
    ValidatorSet.of("é" * 128, 0, [Validator(PKS[0], 1)]).validate()  # 256 bytes


def _raw(**changes) -> ValidatorSet:
    """Return GENESIS's set with ``changes`` applied as is (no re-sorting)."""
    return dataclasses.replace(GENESIS.vset, **changes)


V = GENESIS.vset.validators


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"network_id": ""}, "network_id"),
        ({"network_id": "n" * 257}, "network_id"),
        ({"network_id": "é" * 129}, "network_id"),  # 258 bytes
        ({"epoch": -1}, "epoch"),
        ({"epoch": 1 << 63, "previous": PREV}, "epoch"),
        ({"previous": b"\x00" * 31}, "32 bytes"),
        ({"previous": b"\x01" * 33}, "32 bytes"),
        ({"previous": PREV}, "genesis"),  # epoch 0 names no previous set
        ({"epoch": 1}, "genesis"),  # a later epoch must name one
        ({"validators": ()}, "members"),
        ({"validators": (dataclasses.replace(V[0], key=PublicKey(b"\x00" * 31)), *V[1:])}, "32"),
        ({"validators": (dataclasses.replace(V[0], key=PublicKey(b"\x00" * 33)), *V[1:])}, "32"),
        ({"validators": (dataclasses.replace(V[0], trust=0), *V[1:])}, "trust"),
        ({"validators": (dataclasses.replace(V[0], trust=-5), *V[1:])}, "trust"),
        ({"validators": (dataclasses.replace(V[0], trust=MAX_TRUST + 1), *V[1:])}, "trust"),
        ({"validators": (V[0], *V)}, "distinct"),
        ({"validators": (V[0], dataclasses.replace(V[0], trust=5), *V[1:])}, "distinct"),
        ({"validators": V[::-1]}, "sorted"),
        ({"validators": (V[1], V[0], *V[2:])}, "sorted"),
    ],
    ids=lambda c: repr(c)[:50] if isinstance(c, dict) else c,
)
def test_invalid_set(changes, why):
    with pytest.raises(Malformed, match=why):
        _raw(**changes).validate()


def test_invalid_too_many_members():
    keys = tuple(SigningKey.from_seed(i.to_bytes(32, "big")).public_key for i in range(1025))
    with pytest.raises(Malformed, match="members"):
        ValidatorSet.of_keys(NET, keys).validate()


# --- the digest [VSET.2]

_members = st.lists(st.sampled_from(range(6)), min_size=1, max_size=6, unique=True).flatmap(
    lambda idx: st.lists(st.integers(1, MAX_TRUST), min_size=len(idx), max_size=len(idx)).map(
        lambda ts: tuple(Validator(PKS[i], t) for i, t in zip(idx, ts, strict=True))
    )
)
FIELDS = {
    "network_id": st.text(min_size=1, max_size=8),
    "epoch": st.integers(1, (1 << 63) - 1),
    "previous": st.binary(min_size=32, max_size=32).map(Digest),
    "members": _members,
}
BASE = ValidatorSet.of(NET, 3, (Validator(k, 10 * (i + 1)) for i, k in enumerate(PKS[:4])), PREV)


@given(st.data())
def test_digest_changes_with_any_field(data):
    name = data.draw(st.sampled_from(sorted(FIELDS)), label="field")
    value = data.draw(FIELDS[name], label="value")
    if name == "members":
        changed = ValidatorSet.of(BASE.network_id, BASE.epoch, value, BASE.previous)
    else:
        changed = dataclasses.replace(BASE, **{name: value})
    assume(changed != BASE)
    assert changed.digest() != BASE.digest()


@pytest.mark.parametrize("which", range(4))
def test_digest_changes_with_any_members_trust_or_key(which):
    bumped = list(BASE.validators)
    bumped[which] = dataclasses.replace(bumped[which], trust=bumped[which].trust + 1)
    assert dataclasses.replace(BASE, validators=tuple(bumped)).digest() != BASE.digest()
    swapped = [*BASE.validators]
    swapped[which] = Validator(STRANGER.public_key, swapped[which].trust)
    assert ValidatorSet.of(NET, 3, swapped, PREV).digest() != BASE.digest()
    fewer = BASE.validators[:which] + BASE.validators[which + 1 :]
    assert ValidatorSet.of(NET, 3, fewer, PREV).digest() != BASE.digest()


def test_digest_is_the_signed_sets_digest():
    assert GENESIS.digest == GENESIS.vset.digest()
    assert len(GENESIS.digest) == 32


# --- genesis [VSET.3]


def test_genesis_is_endorsed_by_every_member():
    assert GENESIS.vset.epoch == 0 and GENESIS.vset.previous == ZERO_DIGEST
    assert {e.key for e in GENESIS.endorsements} == set(PKS)
    check_validator_set(GENESIS)
    check_validator_set(make_genesis(NET, KEYS[:1]))
    check_validator_set(make_genesis(NET, KEYS, trust=MAX_TRUST))


def test_genesis_endorsements_in_any_order():
    for order in itertools.islice(itertools.permutations(GENESIS.endorsements), 0, None, 97):
        check_validator_set(SignedValidatorSet(GENESIS.vset, order))


@pytest.mark.parametrize("drop", range(6))
def test_invalid_genesis_missing_any_endorsement(drop):
    partial = GENESIS.endorsements[:drop] + GENESIS.endorsements[drop + 1 :]
    with pytest.raises(Reject, match="every member"):
        check_validator_set(SignedValidatorSet(GENESIS.vset, partial))


def test_invalid_genesis_without_endorsements():
    with pytest.raises(Reject, match="every member"):
        check_validator_set(SignedValidatorSet(GENESIS.vset, ()))


def test_invalid_genesis_endorsed_by_an_outsider_too():
    extra = endorse(GENESIS.vset, STRANGER)
    with pytest.raises(Reject, match="no one else"):
        check_validator_set(SignedValidatorSet(GENESIS.vset, (*GENESIS.endorsements, extra)))


def test_invalid_later_epoch_without_the_previous_set():
    later = endorsed(later_set(GENESIS.vset), KEYS)
    with pytest.raises(Reject, match="previous set"):
        check_validator_set(later)


# --- endorsements: duplicated, forged, malformed [VSET.3]


def test_invalid_duplicate_endorsement():
    e = GENESIS.endorsements
    with pytest.raises(Reject, match="twice"):
        check_validator_set(SignedValidatorSet(GENESIS.vset, (*e, e[0])))
    with pytest.raises(Reject, match="twice"):
        check_validator_set(SignedValidatorSet(GENESIS.vset, (e[2], *e)))


def test_invalid_forged_endorsement():
    e = list(GENESIS.endorsements)
    # A member's name on a stranger's signature.
    e[0] = Endorsement(e[0].key, STRANGER.sign(GENESIS.digest))
    with pytest.raises(BadSignature, match="endorsement"):
        check_validator_set(SignedValidatorSet(GENESIS.vset, tuple(e)))


def test_invalid_endorsement_of_another_set():
    other = make_genesis(NET, KEYS, trust=99)
    mixed = (*GENESIS.endorsements[:-1], other.endorsements[-1])
    with pytest.raises(BadSignature):
        check_validator_set(SignedValidatorSet(GENESIS.vset, mixed))
    elsewhere = make_genesis("elsewhere", KEYS)  # same members, another network
    with pytest.raises(BadSignature):
        check_validator_set(SignedValidatorSet(GENESIS.vset, elsewhere.endorsements))


def test_invalid_endorsements_of_a_changed_set():
    # Any change to the set voids every endorsement.
    heavier = dataclasses.replace(
        GENESIS.vset, validators=(dataclasses.replace(V[0], trust=101), *V[1:])
    )
    with pytest.raises(BadSignature):
        check_validator_set(SignedValidatorSet(heavier, GENESIS.endorsements))


@pytest.mark.parametrize(
    "endorsement",
    [
        Endorsement(PublicKey(b"\x00" * 31), Signature(b"\x00" * 64)),
        Endorsement(PKS[0], Signature(b"\x00" * 63)),
        Endorsement(PKS[0], Signature(b"")),
    ],
    ids=["short-key", "short-signature", "no-signature"],
)
def test_invalid_malformed_endorsement(endorsement):
    with pytest.raises(Malformed, match="wrong size"):
        check_validator_set(SignedValidatorSet(GENESIS.vset, (*GENESIS.endorsements, endorsement)))


def test_invalid_malformed_set_is_checked_before_endorsements():
    bad = _raw(validators=V[::-1])
    with pytest.raises(Malformed):
        check_validator_set(SignedValidatorSet(bad, GENESIS.endorsements))


# --- later epochs: more than 2/3 of the previous set's trust [VSET.3]


@pytest.mark.parametrize(("n", "ok"), [(6, True), (5, True), (4, False), (3, False), (0, False)])
def test_next_epoch_needs_more_than_two_thirds_of_equal_trust(n, ok):
    # Six members of equal trust: 4 of 6 is exactly 2/3, not more.
    nxt = endorsed(later_set(GENESIS.vset), KEYS[:n])
    if ok:
        check_validator_set(nxt, GENESIS.vset)
    else:
        with pytest.raises(Reject, match="two thirds"):
            check_validator_set(nxt, GENESIS.vset)


@pytest.mark.parametrize(
    ("trust", "signers", "ok"),
    [
        ((400, 40, 40, 40, 40, 40), (0,), False),  # 400 of 600 = 2/3 exactly: not enough
        ((401, 40, 40, 40, 40, 39), (0,), True),
        ((200, 100, 100, 100, 50, 50), (0, 1, 2), False),  # 400 of 600: exactly 2/3
        ((200, 100, 100, 100, 50, 50), (0, 1, 2, 4), True),  # 450 of 600
        ((200, 100, 100, 100, 50, 50), (1, 2, 3, 4, 5), False),  # five of six heads, 400 of 600
        ((1, 1, 1, 1000, 1, 1), (0, 1, 2, 4, 5), False),  # five of six members, 5 of 1005 trust
        ((2, 1, 1, 1, 1, 1), (0, 1, 2, 3), True),  # 5 of 7 > 2/3
        ((2, 1, 1, 1, 1, 1), (1, 2, 3, 4), False),  # 4 of 7 < 2/3
    ],
)
def test_next_epoch_counts_trust_not_heads(trust, signers, ok):
    members = [Validator(k, t) for k, t in zip(PKS, trust, strict=True)]
    previous = ValidatorSet.of(NET, 4, members, PREV)
    assert ok is (3 * sum(trust[i] for i in signers) > 2 * sum(trust))  # the table is right
    nxt = endorsed(later_set(previous), [KEYS[i] for i in signers])
    if ok:
        check_validator_set(nxt, previous)
    else:
        with pytest.raises(Reject, match="two thirds"):
            check_validator_set(nxt, previous)


def test_exactly_two_thirds_of_trust_is_rejected():
    members = [Validator(k, t) for k, t in zip(PKS, (400, 40, 40, 40, 40, 40), strict=True)]
    previous = ValidatorSet.of(NET, 4, members, PREV)
    nxt = later_set(previous)
    with pytest.raises(Reject, match="two thirds"):
        check_validator_set(endorsed(nxt, KEYS[:1]), previous)
    heavier = ValidatorSet.of(NET, 4, [Validator(PKS[0], 401), *members[1:]], PREV)
    check_validator_set(endorsed(later_set(heavier), KEYS[:1]), heavier)


def test_next_epoch_endorsements_by_newcomers_count_nothing():
    # The next set's new members cannot vouch for it; only the previous set's trust counts.
    newcomers = [SigningKey.from_seed(bytes([i]) * 32) for i in range(60, 66)]
    members = [Validator(k.public_key) for k in (*KEYS[:2], *newcomers)]
    nxt = later_set(GENESIS.vset, members)
    with pytest.raises(Reject, match="two thirds"):
        check_validator_set(endorsed(nxt, (*KEYS[:2], *newcomers)), GENESIS.vset)
    check_validator_set(endorsed(nxt, (*KEYS[:5], *newcomers)), GENESIS.vset)


def test_next_epoch_may_drop_and_reweigh_members():
    members = [Validator(PKS[0], 50), *(Validator(k, 300) for k in PKS[2:])]
    nxt = later_set(GENESIS.vset, members)
    check_validator_set(endorsed(nxt, KEYS[1:]), GENESIS.vset)  # the dropped member signs too


def test_chain_of_epochs_is_followed_one_step_at_a_time():
    sets = [GENESIS.vset]
    for _ in range(3):
        nxt = later_set(sets[-1])
        check_validator_set(endorsed(nxt, KEYS[:5]), sets[-1])
        sets.append(nxt)
    assert [s.epoch for s in sets] == [0, 1, 2, 3]
    with pytest.raises(Reject, match="does not follow"):
        check_validator_set(endorsed(sets[3], KEYS), sets[1])  # skips epoch 2


@pytest.mark.parametrize(
    "make",
    [
        lambda prev: later_set(prev, epoch=prev.epoch + 2),
        lambda prev: ValidatorSet.of(NET, prev.epoch + 1, prev.validators, PREV),
        lambda prev: later_set(make_genesis(NET, KEYS, trust=99).vset),
    ],
    ids=["skipped-epoch", "other-previous-digest", "follows-another-set"],
)
def test_invalid_next_epoch_not_following_the_previous_set(make):
    nxt = endorsed(make(GENESIS.vset), KEYS)
    with pytest.raises(Reject, match="does not follow"):
        check_validator_set(nxt, GENESIS.vset)


def test_invalid_genesis_checked_against_a_previous_set():
    with pytest.raises(Reject, match="does not follow"):
        check_validator_set(GENESIS, GENESIS.vset)


def test_invalid_next_epoch_with_a_forged_endorsement():
    nxt = later_set(GENESIS.vset)
    e = [endorse(nxt, k) for k in KEYS[:5]]
    e[0] = Endorsement(PKS[0], endorse(GENESIS.vset, KEYS[0]).signature)  # signed the old set
    with pytest.raises(BadSignature):
        check_validator_set(SignedValidatorSet(nxt, tuple(e)), GENESIS.vset)


def test_invalid_next_epoch_with_a_duplicate_endorsement():
    # Four distinct signers (exactly 2/3) plus one repeated do not make five.
    nxt = later_set(GENESIS.vset)
    e = [endorse(nxt, k) for k in KEYS[:4]]
    with pytest.raises(Reject, match="twice"):
        check_validator_set(SignedValidatorSet(nxt, (*e, e[0])), GENESIS.vset)


# --- protobuf [VSET.4]


def wire(message):
    return type(message).FromString(message.SerializeToString())


@pytest.mark.parametrize(
    "signed",
    [
        GENESIS,
        endorsed(
            later_set(GENESIS.vset, [Validator(k, 7 * i + 1) for i, k in enumerate(PKS)]), KEYS
        ),
        make_genesis(NET, KEYS[:1], trust=MAX_TRUST),
    ],
    ids=["genesis", "later", "single"],
)
def test_validator_set_round_trip(signed):
    back = convert.validator_set_from_pb(wire(convert.validator_set_to_pb(signed)))
    assert back == signed
    assert back.digest == signed.digest


def test_validator_set_round_trip_keeps_endorsement_order():
    signed = SignedValidatorSet(GENESIS.vset, GENESIS.endorsements[::-1])
    back = convert.validator_set_from_pb(wire(convert.validator_set_to_pb(signed)))
    assert back.endorsements == signed.endorsements
    check_validator_set(back)


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda m: m.ClearField("set"), "set is missing"),
        (lambda m: setattr(m.set, "network_id", ""), "network_id"),
        (lambda m: setattr(m.set, "previous", b"\x00" * 31), "32 bytes"),
        (lambda m: setattr(m.set, "previous", PREV), "genesis"),
        (lambda m: setattr(m.set, "epoch", 1 << 63), "epoch"),
        (lambda m: setattr(m.set.validators[0], "key", b"\x00" * 33), "32 bytes"),
        (lambda m: setattr(m.set.validators[0], "trust", 0), "trust"),
        (lambda m: setattr(m.set.validators[0], "trust", MAX_TRUST + 1), "trust"),
        (lambda m: m.set.validators.append(m.set.validators[0]), "distinct"),
        (lambda m: m.set.validators.reverse(), "sorted"),
        (lambda m: m.set.ClearField("validators"), "members"),
        (lambda m: setattr(m.endorsements[0], "key", b"\x00" * 31), "wrong size"),
        (lambda m: setattr(m.endorsements[0], "signature", b"\x00" * 65), "wrong size"),
        (
            lambda m: m.set.validators.extend(
                [m.set.validators[0]] * (MAX_VALIDATORS + 1 - len(m.set.validators))
            ),
            "too many",
        ),
        (
            lambda m: m.endorsements.extend(
                [m.endorsements[0]] * (MAX_VALIDATORS + 1 - len(m.endorsements))
            ),
            "too many",
        ),
    ],
    ids=[
        "no-set",
        "network",
        "previous-size",
        "genesis-previous",
        "epoch",
        "key-size",
        "zero-trust",
        "trust-too-high",
        "duplicate",
        "unsorted",
        "empty",
        "endorsement-key",
        "endorsement-signature",
        "too-many-validators",
        "too-many-endorsements",
    ],
)
def test_invalid_validator_set_protobuf(mutate, why):
    m = convert.validator_set_to_pb(GENESIS)
    mutate(m)
    with pytest.raises(Malformed, match=why):
        convert.validator_set_from_pb(wire(m))


def test_validator_set_protobuf_parses_structure_only():
    # A forged endorsement parses; check_validator_set decides (BadSignature).
    m = convert.validator_set_to_pb(GENESIS)
    m.endorsements[0].signature = b"\x00" * 64
    back = convert.validator_set_from_pb(wire(m))
    with pytest.raises(BadSignature):
        check_validator_set(back)


def test_invalid_validator_set_garbage_bytes():
    with pytest.raises(DecodeError):
        pb.SignedValidatorSet.FromString(b"\xff\xff\xff")

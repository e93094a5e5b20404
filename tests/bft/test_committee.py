"""Verifier committees: a trust-weighted draw without replacement. [COMMITTEE.1]-[COMMITTEE.3]

The draw is checked three ways: against an independent reference written from the docstring of
:func:`bft.committee.compute_committee` ([COMMITTEE.2]), by its structural properties
(deterministic, distinct, the asked size, never the executor), and statistically: inclusion
frequencies over many request ids match the exact inclusion probabilities of successive
weighted sampling, within a binomial bound at a stated false-alarm probability.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft.committee import TAG_COMMITTEE, compute_committee
from bft.crypto import SigningKey, compute_node_id
from bft.encoding import Canonical
from bft.errors import Malformed, Unavailable
from bft.limits import MAX_TRUST
from bft.types import Digest, NodeId, PublicKey
from bft.validators import Validator, ValidatorSet
from tests.stats import chi2_critical, chi2_statistic

NET = "committee-test"
KEYS = tuple(SigningKey.from_seed(hashlib.sha256(b"v%d" % i).digest()) for i in range(12))
PKS = tuple(k.public_key for k in KEYS)
OUTSIDER = SigningKey.from_seed(b"\x77" * 32)
SET = ValidatorSet.of_keys(NET, PKS)
request_ids = st.binary(min_size=16, max_size=16)
trusts = st.integers(1, MAX_TRUST)


def rid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def weighted(trust: list[int], epoch: int = 0, keys=PKS) -> ValidatorSet:
    """Return the set of ``keys`` with ``trust`` (a later epoch names a made-up previous set)."""
    previous = Digest(b"\x01" * 32) if epoch else Digest(b"\x00" * 32)
    vset = ValidatorSet.of(
        NET, epoch, (Validator(k, t) for k, t in zip(keys, trust, strict=True)), previous
    )
    vset.validate()
    return vset


def reference_committee(
    vset: ValidatorSet, request_id: bytes, executor_id: bytes, size: int
) -> tuple[PublicKey, ...]:
    """[COMMITTEE.2] as the docstring words it, written independently of the implementation."""
    pool = sorted(
        ((compute_node_id(v.key), v.key, v.trust) for v in vset.validators), key=lambda m: m[0]
    )
    pool = [m for m in pool if m[0] != executor_id]
    if len(pool) < size:
        raise Unavailable("too few")
    body = Canonical().bytes_(request_id).u64(vset.epoch).bytes_(vset.digest()).build()
    seed = hashlib.sha256(TAG_COMMITTEE + body).digest()
    chosen: list[PublicKey] = []
    i = 0
    while len(chosen) < size:
        x = int.from_bytes(hashlib.sha256(seed + i.to_bytes(4, "big")).digest()[:8], "big")
        i += 1
        total = sum(t for _, _, t in pool)
        if x >= 2**64 - 2**64 % total:  # the biased tail
            continue
        r = x % total
        for j, (_, key, t) in enumerate(pool):
            if r < t:
                chosen.append(key)
                del pool[j]
                break
            r -= t
    return tuple(chosen)


# --- the definition [COMMITTEE.2]


@given(
    request_ids,
    st.lists(trusts | st.integers(1, 5), min_size=12, max_size=12),
    st.integers(1, 11),
    st.integers(0, 12),
    st.integers(0, 3),
)
def test_committee_matches_the_reference_definition(request_id, trust, size, executor, epoch):
    vset = weighted(trust, epoch)
    ex = KEYS[executor].node_id if executor < 12 else OUTSIDER.node_id
    assert compute_committee(vset, request_id, ex, size) == reference_committee(
        vset, request_id, ex, size
    )


def test_committee_regression_vector():
    # Keys of seeds 01..07 x 32 at the default trust (100), request_id 00 x 16, epoch 0,
    # executor = key 1, size 4 -> keys 2, 6, 4, 3 in that order (what reference_committee
    # gives; the example in docs/spec/quorum.md [COMMITTEE.2] still describes the old rank draw).
    keys = [SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 8)]
    vset = ValidatorSet.of_keys("testnet", (k.public_key for k in keys))
    committee = compute_committee(vset, b"\x00" * 16, keys[0].node_id, 4)
    assert committee == reference_committee(vset, b"\x00" * 16, keys[0].node_id, 4)
    assert committee == tuple(keys[i - 1].public_key for i in (2, 6, 4, 3))


# --- structure


@given(request_ids, st.integers(0, 2), st.integers(0, 3))
def test_committee_has_3f_plus_1_distinct_validators(request_id, f, epoch):
    size = 3 * f + 1
    vset = weighted([100] * 12, epoch)
    committee = compute_committee(vset, request_id, OUTSIDER.node_id, size)
    assert len(committee) == size
    assert len(set(committee)) == size
    assert set(committee) <= set(PKS)


@given(request_ids, st.integers(0, len(KEYS) - 1), st.integers(1, len(KEYS) - 1))
def test_committee_never_contains_the_executor(request_id, executor, size):
    # [COMMITTEE.3], however heavy the executor's own trust.
    trust = [1] * 12
    trust[executor] = MAX_TRUST
    committee = compute_committee(weighted(trust), request_id, KEYS[executor].node_id, size)
    assert KEYS[executor].public_key not in committee
    assert len(committee) == size == len(set(committee))


@given(request_ids, st.lists(trusts, min_size=12, max_size=12))
def test_committee_is_deterministic_and_ignores_the_order_members_are_given_in(request_id, trust):
    members = [Validator(k, t) for k, t in zip(PKS, trust, strict=True)]
    a = compute_committee(ValidatorSet.of(NET, 0, members), request_id, OUTSIDER.node_id, 4)
    b = compute_committee(ValidatorSet.of(NET, 0, members[::-1]), request_id, OUTSIDER.node_id, 4)
    assert a == b
    assert compute_committee(ValidatorSet.of(NET, 0, members), request_id, OUTSIDER.node_id, 4) == a


@given(request_ids, st.lists(trusts, min_size=12, max_size=12))
def test_committee_is_a_prefix_of_the_draw(request_id, trust):
    # Growing f adds members; it never replaces the ones already drawn.
    vset = weighted(trust)
    small = compute_committee(vset, request_id, OUTSIDER.node_id, 4)
    large = compute_committee(vset, request_id, OUTSIDER.node_id, 7)
    assert large[:4] == small


def test_committee_depends_on_request_id_epoch_and_set_digest():
    base = compute_committee(SET, rid(0), OUTSIDER.node_id, 4)
    by_request = {compute_committee(SET, rid(i), OUTSIDER.node_id, 4) for i in range(30)}
    by_epoch = {
        compute_committee(weighted([100] * 12, e), rid(0), OUTSIDER.node_id, 4)
        for e in range(1, 31)
    }
    # Same members, same epoch, another set: one trust changed by one, or another network.
    by_digest = {
        compute_committee(weighted([100] * 11 + [100 + d]), rid(0), OUTSIDER.node_id, 4)
        for d in range(1, 31)
    }
    by_network = {
        compute_committee(ValidatorSet.of_keys(f"net-{n}", PKS), rid(0), OUTSIDER.node_id, 4)
        for n in range(30)
    }
    for draws in (by_request, by_epoch, by_digest, by_network):
        assert len(draws) > 10
    assert base in by_request


def test_committee_follows_the_seed_not_the_request_contents():
    # Only request_id, epoch and the set digest enter the seed: equal inputs, equal draws.
    twin = ValidatorSet.of_keys(NET, PKS)
    assert twin.digest() == SET.digest()
    for i in range(5):
        assert compute_committee(twin, rid(i), OUTSIDER.node_id, 4) == compute_committee(
            SET, rid(i), OUTSIDER.node_id, 4
        )


def test_unknown_executor_id_excludes_nobody():
    vset = ValidatorSet.of_keys(NET, PKS[:4])
    committee = compute_committee(vset, rid(0), NodeId(b"\x00" * 32), 4)
    assert set(committee) == set(PKS[:4])


def test_whole_set_is_drawn_when_size_matches():
    vset = weighted([1, 2, 3, 1000, 5, 6, 7, 8, 9, 10, 11, 12])
    for i in range(10):
        assert set(compute_committee(vset, rid(i), KEYS[0].node_id, 11)) == set(PKS[1:])


# --- trust weighting [COMMITTEE.2]


@functools.cache
def inclusion_probabilities(trust: tuple[int, ...], size: int) -> tuple[float, ...]:
    """Return each member's exact probability of being drawn (successive weighted sampling)."""
    n = len(trust)
    p = [0.0] * n
    for order in itertools.permutations(range(n), size):
        prob, left = 1.0, sum(trust)
        for j in order:
            prob *= trust[j] / left
            left -= trust[j]
        for j in order:
            p[j] += prob
    return tuple(p)


def test_single_draw_is_proportional_to_trust():
    # Committees of one: member i is drawn with probability trust_i / total. Chi-square over
    # 12 members at a false-alarm probability of 1e-6 on 3000 request ids.
    trust = [1, 1, 2, 2, 3, 4, 5, 8, 10, 16, 20, 28]
    vset = weighted(trust)
    counts = dict.fromkeys(PKS, 0)
    n = 3000
    for i in range(n):
        (pk,) = compute_committee(vset, rid(i), OUTSIDER.node_id, 1)
        counts[pk] += 1
    total = sum(trust)
    probs = [t / total for t in trust]
    stat = chi2_statistic([counts[pk] for pk in PKS], probs)
    assert stat < chi2_critical(len(PKS) - 1, 1e-6)


@pytest.mark.parametrize(
    "trust",
    [
        (400, 100, 100, 100, 100, 100, 100, 100, 100),  # one member with 4x trust
        (1, 1, 1, 1, 1, 1, 1, 1, 1),  # uniform, as v1
        (1, 2, 3, 4, 5, 6, 7, 8, 50),
    ],
    ids=["4x", "uniform", "skewed"],
)
def test_inclusion_frequency_follows_trust(trust):
    # 9 members, committees of 4 over 2000 fixed request ids: each member's count is
    # binomial(n, p_i) with p_i the exact inclusion probability; the bound is 5.5 standard
    # deviations (two-sided false alarm < 4e-8 per member, < 4e-7 for the test), plus 1.
    keys = PKS[:9]
    vset = weighted(list(trust), keys=keys)
    n, size = 2000, 4
    counts = dict.fromkeys(keys, 0)
    for i in range(n):
        for pk in compute_committee(vset, rid(i), OUTSIDER.node_id, size):
            counts[pk] += 1
    assert sum(counts.values()) == n * size
    for pk, t, p in zip(keys, trust, inclusion_probabilities(trust, size), strict=True):
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[pk] - n * p) <= 5.5 * sd + 1, (t, counts[pk], n * p)


def test_a_heavier_member_is_drawn_much_more_often():
    trust = (400, 100, 100, 100, 100, 100, 100, 100, 100)
    keys = PKS[:9]
    vset = weighted(list(trust), keys=keys)
    n = 2000
    counts = dict.fromkeys(keys, 0)
    for i in range(n):
        for pk in compute_committee(vset, rid(i), OUTSIDER.node_id, 1):
            counts[pk] += 1
    # Exactly 4x in expectation for one draw (1/3 vs 1/12); at least 3x here with room to spare.
    light = [counts[pk] for pk in keys[1:]]
    assert counts[keys[0]] > 3 * max(light)
    p_heavy, *p_light = inclusion_probabilities(trust, 4)
    assert p_heavy > 1.9 * max(p_light)  # and in committees of four, about twice as often


# --- invalid sets and too few members [COMMITTEE.3], [VSET.1]


@pytest.mark.parametrize("trust", [0, -1, MAX_TRUST + 1])
def test_invalid_trust_is_impossible_in_a_valid_set(trust):
    vset = ValidatorSet.of(NET, 0, [Validator(PKS[0], trust), *(Validator(k) for k in PKS[1:5])])
    with pytest.raises(Malformed, match="trust"):
        vset.validate()


def test_zero_trust_member_is_never_drawn_even_unvalidated():
    # Defence in depth: a member with no trust has no share of the draw.
    vset = ValidatorSet.of(NET, 0, [Validator(PKS[0], 0), *(Validator(k) for k in PKS[1:5])])
    for i in range(20):
        assert PKS[0] not in compute_committee(vset, rid(i), OUTSIDER.node_id, 4)
    with pytest.raises(Unavailable):
        compute_committee(vset, rid(0), OUTSIDER.node_id, 5)


def test_invalid_duplicate_keys_are_malformed():
    vset = ValidatorSet.of(NET, 0, [Validator(PKS[0]), Validator(PKS[0], 7), Validator(PKS[1])])
    with pytest.raises(Malformed, match="distinct"):
        vset.validate()


def test_invalid_too_few_validators():
    with pytest.raises(Unavailable):
        compute_committee(ValidatorSet.of_keys(NET, PKS[:3]), rid(0), OUTSIDER.node_id, 4)


def test_invalid_too_few_once_the_executor_is_removed():
    vset = ValidatorSet.of_keys(NET, PKS[:4])
    assert len(compute_committee(vset, rid(0), OUTSIDER.node_id, 4)) == 4
    with pytest.raises(Unavailable):
        compute_committee(vset, rid(0), KEYS[2].node_id, 4)

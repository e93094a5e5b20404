"""Verifier committees. [COMMITTEE.1]-[COMMITTEE.3]"""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft.committee import TAG_COMMITTEE, compute_committee
from bft.crypto import SigningKey
from bft.encoding import Canonical
from bft.errors import Unavailable
from bft.types import NodeId

KEYS = tuple(SigningKey.from_seed(hashlib.sha256(b"v%d" % i).digest()) for i in range(12))
PKS = tuple(k.public_key for k in KEYS)
OUTSIDER = SigningKey.from_seed(b"\x77" * 32)
request_ids = st.binary(min_size=16, max_size=16)


@given(request_ids, st.integers(0, 3), st.integers(0, 2**63 - 1))
def test_committee_has_3f_plus_1_distinct_validators(request_id, f, epoch):
    size = 3 * f + 1
    committee = compute_committee(PKS, request_id, epoch, OUTSIDER.node_id, size)
    assert len(committee) == size
    assert len(set(committee)) == size
    assert set(committee) <= set(PKS)


@given(request_ids, st.integers(0, len(KEYS) - 1), st.integers(1, len(KEYS) - 1))
def test_committee_never_contains_the_executor(request_id, executor, size):
    committee = compute_committee(PKS, request_id, 0, KEYS[executor].node_id, size)
    assert KEYS[executor].public_key not in committee
    assert len(committee) == size


@given(request_ids, st.randoms(use_true_random=False))
def test_committee_is_deterministic_and_ignores_validator_order(request_id, rng):
    shuffled = list(PKS)
    rng.shuffle(shuffled)
    a = compute_committee(PKS, request_id, 5, OUTSIDER.node_id, 4)
    b = compute_committee(tuple(shuffled), request_id, 5, OUTSIDER.node_id, 4)
    assert a == b
    assert compute_committee(iter(PKS), request_id, 5, OUTSIDER.node_id, 4) == a


@given(request_ids)
def test_committee_is_a_prefix_of_the_ranking(request_id):
    # Growing f adds members; it never replaces the ones already drawn.
    small = compute_committee(PKS, request_id, 0, OUTSIDER.node_id, 4)
    large = compute_committee(PKS, request_id, 0, OUTSIDER.node_id, 7)
    assert large[:4] == small


def test_committee_depends_on_request_id_and_epoch():
    base = compute_committee(PKS, b"\x00" * 16, 0, OUTSIDER.node_id, 4)
    by_request = {
        compute_committee(PKS, i.to_bytes(16, "big"), 0, OUTSIDER.node_id, 4) for i in range(30)
    }
    by_epoch = {compute_committee(PKS, b"\x00" * 16, e, OUTSIDER.node_id, 4) for e in range(30)}
    assert len(by_request) > 5
    assert len(by_epoch) > 5
    assert base in by_request and base in by_epoch


def test_committee_draw_is_uniform_over_validators():
    # Each of 12 validators sits in a committee of 4 with probability 1/3; bound each count
    # at 6 standard deviations of its binomial (false alarm < 12 * 2e-9 for the whole test).
    n, size = 1500, 4
    counts = dict.fromkeys(PKS, 0)
    for i in range(n):
        for pk in compute_committee(PKS, i.to_bytes(16, "big"), 0, OUTSIDER.node_id, size):
            counts[pk] += 1
    p = size / len(PKS)
    sd = math.sqrt(n * p * (1 - p))
    assert all(abs(c - n * p) < 6 * sd for c in counts.values())


def test_committee_matches_rank_definition():
    # [COMMITTEE.2]: rank is sha256(tag || canonical(request_id, epoch, node_id)), lowest first.
    request_id, epoch = b"\x42" * 16, 9

    def rank(k: SigningKey) -> bytes:
        body = Canonical().bytes_(request_id).u64(epoch).bytes_(k.node_id).build()
        return hashlib.sha256(TAG_COMMITTEE + body).digest()

    want = tuple(k.public_key for k in sorted(KEYS, key=rank)[:4])
    assert compute_committee(PKS, request_id, epoch, OUTSIDER.node_id, 4) == want


def test_invalid_too_few_validators():
    with pytest.raises(Unavailable):
        compute_committee(PKS[:3], b"\x00" * 16, 0, OUTSIDER.node_id, 4)


def test_invalid_too_few_once_the_executor_is_removed():
    assert len(compute_committee(PKS[:4], b"\x00" * 16, 0, OUTSIDER.node_id, 4)) == 4
    with pytest.raises(Unavailable):
        compute_committee(PKS[:4], b"\x00" * 16, 0, KEYS[2].node_id, 4)


def test_invalid_duplicate_keys_do_not_fill_a_committee():
    with pytest.raises(Unavailable):
        compute_committee((PKS[0],) * 4, b"\x00" * 16, 0, OUTSIDER.node_id, 4)
    with pytest.raises(Unavailable):
        compute_committee(PKS[:3] + PKS[:3], b"\x00" * 16, 0, OUTSIDER.node_id, 4)


def test_unknown_executor_id_excludes_nobody():
    committee = compute_committee(PKS[:4], b"\x00" * 16, 0, NodeId(b"\x00" * 32), 4)
    assert set(committee) == set(PKS[:4])


def test_whole_set_is_drawn_when_size_matches():
    rng = random.Random(3)
    for _ in range(10):
        rid = rng.randbytes(16)
        assert set(compute_committee(PKS, rid, 0, KEYS[0].node_id, 11)) == set(PKS[1:])


def test_spec_example_committee():
    # [COMMITTEE.2] example: keys of seeds 01..07 x 32, request_id 00 x 16, epoch 0,
    # executor = key 1, size 4 -> keys 2, 4, 7, 3 in that order.
    keys = [SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 8)]
    committee = compute_committee([k.public_key for k in keys], b"\x00" * 16, 0, keys[0].node_id, 4)
    assert committee == tuple(keys[i - 1].public_key for i in (2, 4, 7, 3))

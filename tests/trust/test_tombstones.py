"""Tombstones and burnt reputation: slashing without stake. [SLASH.3]-[SLASH.5]

A slashed key is tombstoned once, however many valid records name it ([SLASH.3]); a refuted
accusation halves the accuser's trust ([SLASH.4]); the next epoch's set leaves tombstoned keys
out and carries the halved trust ([SLASH.5]), and is a valid next set once endorsed ([VSET.3]).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading

import pytest

from bft.errors import Malformed
from bft.validators import (
    SignedValidatorSet,
    Validator,
    ValidatorSet,
    check_validator_set,
    endorse,
)
from slashing.records import (
    Offence,
    Penalty,
    SlashRecord,
    check_penalty,
    check_slash,
    compute_records,
)
from tests.support import make_key
from trust.tombstones import Tombstones, next_validator_set


@pytest.fixture(scope="module")
def executor_records(whole_run_records, net) -> tuple[SlashRecord, ...]:
    """Four valid records against one executor (one per accusation)."""
    slashes = whole_run_records
    for r in slashes:
        check_slash(r, net.validator_set.vset)
    assert len(slashes) == 4 and len({r.offender for r in slashes}) == 1
    return slashes


@pytest.fixture(scope="module")
def verifier_record(double_vote) -> SlashRecord:
    (record,), _ = compute_records(double_vote[0])
    assert record.offence is Offence.VERIFIER_DOUBLE_VOTE
    return record


@pytest.fixture(scope="module")
def penalty(false_accusation) -> Penalty:
    _, (p,) = compute_records(false_accusation)
    return p


# --- one tombstone per key [SLASH.3]


def test_first_record_tombstones_a_key(executor_records):
    t = Tombstones()
    r = executor_records[0]
    assert not t.is_tombstoned(r.offender) and t.offences_of(r.offender) == 0
    assert t.add(r) is True
    assert t.is_tombstoned(r.offender)
    assert t.slash_of(r.offender) is r
    assert t.slashes == (r,)
    assert t.offences_of(r.offender) == 1


def test_one_tombstone_per_key_however_many_offences(executor_records):
    t = Tombstones()
    offender = executor_records[0].offender
    assert [t.add(r) for r in executor_records] == [True, False, False, False]
    assert t.slashes == (executor_records[0],)  # the first record is the one that counts
    assert t.slash_of(offender) is executor_records[0]
    assert t.offences_of(offender) == 4  # later records are kept as evidence


def test_the_same_record_twice_is_one_offence(executor_records):
    t = Tombstones()
    r = executor_records[0]
    assert t.add(r) is True
    assert t.add(r) is False
    assert t.add(dataclasses.replace(r)) is False  # an equal copy
    assert t.add(executor_records[1]) is False
    assert t.add(executor_records[1]) is False
    assert t.offences_of(r.offender) == 2


def test_different_offenders_are_tombstoned_apart(executor_records, verifier_record):
    t = Tombstones()
    assert t.add(executor_records[0]) is True
    assert t.add(verifier_record) is True
    assert t.slashes == (executor_records[0], verifier_record)
    assert t.is_tombstoned(verifier_record.offender)
    assert t.offences_of(verifier_record.offender) == 1
    assert not t.is_tombstoned(make_key("bystander").public_key)
    assert t.slash_of(make_key("bystander").public_key) is None


def test_concurrent_adds_tombstone_once(executor_records):
    t = Tombstones()
    results: list[bool] = []
    lock = threading.Lock()

    def add(r: SlashRecord) -> None:
        ok = t.add(r)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=add, args=(r,)) for r in executor_records * 4]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [False] * 15 + [True]
    assert t.offences_of(executor_records[0].offender) == 4


# --- penalties [SLASH.4]


def test_penalty_is_recorded_once(penalty):
    t = Tombstones()
    assert t.penalties_of(penalty.accuser) == 0
    assert t.add_penalty(penalty) is True
    assert t.add_penalty(penalty) is False
    assert t.penalties == (penalty,)
    assert t.penalties_of(penalty.accuser) == 1
    assert not t.is_tombstoned(penalty.accuser)  # a false accusation costs trust, not the key


def test_distinct_penalties_of_one_accuser_add_up(penalty):
    t = Tombstones()
    other = dataclasses.replace(penalty, refutations=penalty.refutations[:3])
    assert other.digest() != penalty.digest()
    assert t.add_penalty(penalty) and t.add_penalty(other)
    assert t.penalties_of(penalty.accuser) == 2


# --- the next epoch's set [SLASH.5]


def test_next_set_without_offences_keeps_everyone(net):
    vset = net.validator_set.vset
    nxt = next_validator_set(vset, Tombstones())
    assert nxt.validators == vset.validators
    assert (nxt.epoch, nxt.previous, nxt.network_id) == (1, vset.digest(), vset.network_id)
    nxt.validate()


def test_tombstoned_validator_leaves_the_next_set(net, verifier_record, executor_records):
    vset = net.validator_set.vset
    t = Tombstones()
    t.add(verifier_record)
    t.add(executor_records[0])  # not a member: changes nothing in the set
    nxt = next_validator_set(vset, t)
    assert verifier_record.offender not in nxt.keys
    assert set(nxt.keys) == set(vset.keys) - {verifier_record.offender}
    assert all(v.trust == 100 for v in nxt.validators)
    nxt.validate()


def test_penalty_halves_the_accusers_trust(net, penalty):
    vset = net.validator_set.vset
    t = Tombstones()
    t.add_penalty(penalty)
    nxt = next_validator_set(vset, t)
    assert nxt.trust_of(penalty.accuser) == 50
    assert {v.key: v.trust for v in nxt.validators if v.key != penalty.accuser} == {
        k: 100 for k in vset.keys if k != penalty.accuser
    }
    assert nxt.keys == vset.keys


@pytest.mark.parametrize(
    ("trust", "penalties", "after"),
    [(100, 1, 50), (100, 2, 25), (101, 1, 50), (3, 1, 1), (2, 1, 1), (1, 1, 1), (1, 5, 1)],
)
def test_penalties_halve_trust_down_to_one(net, penalty, trust, penalties, after):
    vset = ValidatorSet.of(
        net.validator_set.vset.network_id,
        0,
        (Validator(k, trust if k == penalty.accuser else 100) for k in net.validator_set.vset.keys),
    )
    t = Tombstones()
    # Distinct valid penalties of one accuser: 2f+1 of the refutations, in different orders.
    for refutations in itertools.islice(itertools.permutations(penalty.refutations, 3), penalties):
        check_penalty(dataclasses.replace(penalty, refutations=refutations), net.validator_set.vset)
        assert t.add_penalty(dataclasses.replace(penalty, refutations=refutations))
    assert t.penalties_of(penalty.accuser) == penalties
    nxt = next_validator_set(vset, t)
    assert nxt.trust_of(penalty.accuser) == after
    nxt.validate()


def test_slash_outweighs_a_penalty(net, penalty, verifier_record):
    # A key both penalised and tombstoned is simply gone.
    t = Tombstones()
    t.add_penalty(penalty)
    t.add(dataclasses.replace(verifier_record, offender=penalty.accuser))
    nxt = next_validator_set(net.validator_set.vset, t)
    assert penalty.accuser not in nxt.keys


def test_next_set_is_a_valid_successor_once_endorsed(net, verifier_record, penalty):
    # [VSET.3]: the members of the old set holding more than 2/3 of its trust endorse it; the
    # tombstoned key's endorsement is worth its old trust, but five of six are enough without it.
    vset = net.validator_set.vset
    t = Tombstones()
    t.add(verifier_record)
    t.add_penalty(penalty)
    nxt = next_validator_set(vset, t)
    signers = [k for k in net.validator_keys if k.public_key != verifier_record.offender]
    check_validator_set(SignedValidatorSet(nxt, tuple(endorse(nxt, k) for k in signers)), vset)
    assert nxt.total_trust == 100 * 4 + 50


def test_everyone_tombstoned_leaves_no_valid_set(net, verifier_record):
    t = Tombstones()
    for k in net.validators:
        t.add(dataclasses.replace(verifier_record, offender=k))
    nxt = next_validator_set(net.validator_set.vset, t)
    assert nxt.validators == ()
    with pytest.raises(Malformed, match="members"):
        nxt.validate()


def test_chained_epochs_keep_tombstoned_keys_out(net, verifier_record):
    t = Tombstones()
    t.add(verifier_record)
    e1 = next_validator_set(net.validator_set.vset, t)
    e2 = next_validator_set(e1, t)
    assert e2.epoch == 2 and e2.previous == e1.digest()
    assert verifier_record.offender not in e2.keys
    assert e2.keys == e1.keys

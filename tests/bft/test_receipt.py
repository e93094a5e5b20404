"""Receipts: offline checking of a certified answer. [RECEIPT.1]-[RECEIPT.3]

The receipt is built end to end in-process from the tiny model (see :mod:`tests.support`).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import random
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bft.assembler import Outcome, build_receipt, get_final_outcome
from bft.errors import BadSignature, Malformed, ProtocolError, Reject
from bft.messages import Evidence, EvidenceCheck, Verdict
from bft.receipt import Receipt, check_receipt
from bft.types import Digest
from bft.validators import (
    SignedValidatorSet,
    Validator,
    ValidatorSet,
    endorse,
    make_genesis,
)
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from tests.support import (
    NETWORK_ID,
    get_honest_run,
    get_receipt,
    make_key,
    resign_commitment,
    resign_vote,
    verify,
)


@pytest.fixture(scope="module")
def receipt() -> Receipt:
    return get_receipt()


def with_votes(receipt: Receipt, votes) -> Receipt:
    return dataclasses.replace(receipt, votes=tuple(votes))


def with_set(receipt: Receipt, signed: SignedValidatorSet) -> Receipt:
    return dataclasses.replace(receipt, validator_set=signed)


def test_receipt_passes(receipt):
    assert len(receipt.votes) == 4
    check_receipt(receipt)


def test_receipt_passes_with_any_quorum_subset_in_any_order(receipt):
    for votes in itertools.permutations(receipt.votes, 3):
        check_receipt(with_votes(receipt, votes))


def test_receipt_passes_under_the_same_trusted_set_in_any_order(receipt):
    shuffled = list(receipt.validator_set.vset.keys)
    random.Random(1).shuffle(shuffled)
    check_receipt(receipt, trusted_validators=tuple(shuffled))


def test_receipt_passes_with_endorsements_in_any_order(receipt):
    # [VSET.3]: endorsements are a set of signatures; their order is not signed.
    endorsements = list(receipt.validator_set.endorsements)
    for seed in range(3):
        random.Random(seed).shuffle(endorsements)
        check_receipt(
            with_set(receipt, SignedValidatorSet(receipt.validator_set.vset, tuple(endorsements)))
        )


# --- the certificate


def test_invalid_duplicate_signer(receipt):
    v = receipt.votes
    for votes in [(v[0], v[0], v[1]), (v[1], v[1], v[1]), (v[0], v[1], v[2], v[2])]:
        with pytest.raises(Reject, match="two votes by one verifier"):
            check_receipt(with_votes(receipt, votes))


def test_invalid_non_member_signer(net, receipt):
    run = get_honest_run()
    pk = next(k for k in net.validators if k not in run.tally.committee)
    vote = verify(net.verifiers[pk], net.executor, receipt.request, receipt.signed_commitment).vote
    assert vote.verdict is Verdict.ACCEPT  # an honest, valid vote: only membership is wrong
    with pytest.raises(Reject, match="outside the committee"):
        check_receipt(with_votes(receipt, (*receipt.votes[:2], vote)))
    with pytest.raises(Reject, match="outside the committee"):
        check_receipt(with_votes(receipt, (*receipt.votes, vote)))


def test_invalid_signer_outside_the_validator_set(receipt):
    stranger = make_key("stranger")
    vote = resign_vote(receipt.votes[0], stranger, verifier_key=stranger.public_key)
    with pytest.raises(Reject, match="outside the committee"):
        check_receipt(with_votes(receipt, (vote, *receipt.votes[1:3])))


def test_invalid_vote_for_another_request(net, receipt):
    other_request = net.request(request_id=b"\x99" * 16)
    v = receipt.votes
    forged = resign_vote(v[2], net.key_of(v[2].verifier_key), request_digest=other_request.digest())
    with pytest.raises(Reject, match="another request"):
        check_receipt(with_votes(receipt, (v[0], v[1], forged)))


def test_invalid_votes_of_another_run(net, receipt):
    other = net.run(net.request(request_id=b"\x98" * 16))
    assert other.signed.digest != receipt.signed_commitment.digest
    with pytest.raises(Reject):
        check_receipt(with_votes(receipt, other.votes))
    mixed = [
        v for v in other.votes if v.verifier_key not in {x.verifier_key for x in receipt.votes[:2]}
    ]
    with pytest.raises(Reject):
        check_receipt(with_votes(receipt, (*receipt.votes[:2], mixed[0])))


def test_invalid_vote_for_another_commitment(net, receipt):
    v = receipt.votes
    forged = resign_vote(
        v[2], net.key_of(v[2].verifier_key), commitment_digest=Digest(b"\x01" * 32)
    )
    with pytest.raises(Reject, match="another commitment"):
        check_receipt(with_votes(receipt, (v[0], v[1], forged)))


def test_invalid_votes_moved_to_an_equivocating_commitment(net, receipt):
    # The executor signs a second commitment for the same request; the votes do not carry over.
    c = receipt.signed_commitment.commitment
    output = tuple((t + 1) % 49152 for t in c.output_tokens)
    other = resign_commitment(
        receipt.signed_commitment, net.executor_key, tokens=c.tokens[: c.prompt_len] + output
    )
    other.check()
    with pytest.raises(Reject, match="another commitment"):
        check_receipt(dataclasses.replace(receipt, signed_commitment=other))


@pytest.mark.parametrize("verdict", [Verdict.REJECT, Verdict.UNAVAILABLE])
def test_invalid_non_accept_vote_in_the_certificate(net, receipt, verdict):
    v = receipt.votes
    run = get_honest_run()
    evidence = (
        Evidence(EvidenceCheck.LAYER, run.request, run.signed, run.responses[v[3].verifier_key])
        if verdict is Verdict.REJECT
        else None
    )
    other = resign_vote(
        v[3],
        net.key_of(v[3].verifier_key),
        verdict=verdict,
        layer_checks=(),
        sampler_checks=(),
        reason="no",
        evidence=evidence,
    )
    with pytest.raises(Reject, match="not ACCEPT"):
        check_receipt(with_votes(receipt, (v[0], v[1], v[2], other)))
    with pytest.raises(Reject, match="not ACCEPT"):
        check_receipt(with_votes(receipt, (other, v[0], v[1])))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_invalid_fewer_than_2f_plus_1_votes(receipt, n):
    for votes in itertools.combinations(receipt.votes, n):
        with pytest.raises(Reject, match="ACCEPT votes, needs 3"):
            check_receipt(with_votes(receipt, votes))


# --- the validator set


def test_invalid_changed_validator_set(net, receipt):
    # Another genesis set, properly endorsed by all its members, is not the one the request
    # names. [VSET.2]
    keys = net.validator_keys
    extra = make_key("newcomer")
    for changed in [(*keys, extra), keys[:-1], (*keys[:-1], extra), keys[1:]]:
        with pytest.raises(Reject, match="validator_set_digest"):
            check_receipt(with_set(receipt, make_genesis(NETWORK_ID, changed)))


def test_invalid_changed_trust(net, receipt):
    # Trust is part of the set's digest: the same keys with other weights are another set.
    with pytest.raises(Reject, match="validator_set_digest"):
        check_receipt(with_set(receipt, make_genesis(NETWORK_ID, net.validator_keys, trust=50)))
    vset = receipt.validator_set.vset
    heavier = dataclasses.replace(
        vset, validators=(dataclasses.replace(vset.validators[0], trust=101), *vset.validators[1:])
    )
    with pytest.raises(BadSignature):  # not re-endorsed: the endorsements no longer fit
        check_receipt(
            with_set(receipt, SignedValidatorSet(heavier, receipt.validator_set.endorsements))
        )


def test_invalid_duplicated_validator(receipt):
    vset = receipt.validator_set.vset
    doubled = dataclasses.replace(vset, validators=(vset.validators[0], *vset.validators))
    with pytest.raises(Malformed, match="distinct"):
        check_receipt(
            with_set(receipt, SignedValidatorSet(doubled, receipt.validator_set.endorsements))
        )


def test_invalid_validators_out_of_canonical_order(receipt):
    vset = receipt.validator_set.vset
    reordered = dataclasses.replace(vset, validators=vset.validators[::-1])
    with pytest.raises(Malformed, match="sorted"):
        check_receipt(
            with_set(receipt, SignedValidatorSet(reordered, receipt.validator_set.endorsements))
        )


@pytest.mark.parametrize("drop", [0, 5])
def test_invalid_genesis_set_missing_an_endorsement(receipt, drop):
    # [VSET.3]: a genesis set is endorsed by every member.
    signed = receipt.validator_set
    endorsements = signed.endorsements[:drop] + signed.endorsements[drop + 1 :]
    with pytest.raises(Reject, match="every member"):
        check_receipt(with_set(receipt, SignedValidatorSet(signed.vset, endorsements)))


def test_invalid_genesis_set_endorsed_by_an_outsider(receipt):
    signed = receipt.validator_set
    extra = endorse(signed.vset, make_key("stranger"))
    with pytest.raises(Reject, match="no one else"):
        check_receipt(
            with_set(receipt, SignedValidatorSet(signed.vset, (*signed.endorsements, extra)))
        )


def test_invalid_validator_set_of_another_network(net, receipt):
    with pytest.raises(Reject, match="another network"):
        check_receipt(with_set(receipt, make_genesis("elsewhere", net.validator_keys)))


def test_invalid_other_trusted_validator_set(receipt):
    vals = receipt.validator_set.vset.keys
    for trusted in [vals[:-1], (*vals, make_key("newcomer").public_key), ()]:
        with pytest.raises(Reject, match="trusted"):
            check_receipt(receipt, trusted_validators=trusted)


@pytest.fixture(scope="module")
def later(net) -> tuple[SignedValidatorSet, Receipt]:
    """Return the epoch-1 set (one member halved) and a receipt certified under it."""
    genesis = net.validator_set.vset
    members = [
        Validator(v.key, 50 if i == 0 else v.trust) for i, v in enumerate(genesis.validators)
    ]
    vset = ValidatorSet.of(NETWORK_ID, 1, members, genesis.digest())
    # Five of six equal members hold 5/6 > 2/3 of genesis trust.
    signed = SignedValidatorSet(vset, tuple(endorse(vset, k) for k in net.validator_keys[:5]))
    epoch1 = dataclasses.replace(net, validator_set=signed)
    run = epoch1.run(epoch1.request(request_id=b"\x7a" * 16))
    assert get_final_outcome(run.tally) is Outcome.CERTIFIED
    return signed, build_receipt(run.tally, signed)


def test_receipt_of_a_later_epoch_passes_given_the_previous_set(net, later):
    # [VSET.3]: a client holding the genesis set follows the chain one epoch.
    signed, receipt = later
    assert receipt.request.epoch == 1 and receipt.validator_set == signed
    check_receipt(receipt, previous=net.validator_set.vset)
    with pytest.raises(Reject, match="previous set"):
        check_receipt(receipt)  # on its own, an epoch-1 set proves nothing


def test_invalid_receipt_of_a_later_epoch_under_another_previous_set(net, later):
    _, receipt = later
    other = make_genesis(NETWORK_ID, (*net.validator_keys, make_key("newcomer"))).vset
    with pytest.raises(Reject, match="does not follow"):
        check_receipt(receipt, previous=other)


def test_invalid_later_set_endorsed_by_two_thirds_only(net, later):
    # Four of six equal members hold exactly 2/3: not more than two thirds.
    signed, receipt = later
    weak = SignedValidatorSet(signed.vset, signed.endorsements[:4])
    with pytest.raises(Reject, match="two thirds"):
        check_receipt(with_set(receipt, weak), previous=net.validator_set.vset)


def test_invalid_genesis_receipt_checked_as_a_later_epoch(net, receipt):
    with pytest.raises(Reject, match="does not follow"):
        check_receipt(receipt, previous=net.validator_set.vset)


# --- the commitment and the request


def test_invalid_tampered_token(receipt):
    c = receipt.signed_commitment.commitment
    for i in range(len(c.tokens)):
        tokens = list(c.tokens)
        tokens[i] = (tokens[i] + 1) % 49152
        tampered = dataclasses.replace(
            receipt.signed_commitment, commitment=dataclasses.replace(c, tokens=tuple(tokens))
        )
        with pytest.raises(BadSignature):
            check_receipt(dataclasses.replace(receipt, signed_commitment=tampered))


def test_invalid_tampered_token_resigned_by_the_executor(net, receipt):
    c = receipt.signed_commitment.commitment
    tokens = (*c.tokens[:-1], (c.tokens[-1] + 1) % 49152)
    resigned = resign_commitment(receipt.signed_commitment, net.executor_key, tokens=tokens)
    with pytest.raises(Reject, match="another commitment"):
        check_receipt(dataclasses.replace(receipt, signed_commitment=resigned))


class VerboseBackend(TorchBackend):
    """Generates, with the protocol's sampler, two more tokens than asked for."""

    def generate(self, prompt, params, seed):
        more = dataclasses.replace(params, max_new_tokens=params.max_new_tokens + 2)
        return super().generate(prompt, more, seed)


def test_invalid_more_output_tokens_than_max_new_tokens(net):
    # Even with 2f+1 ACCEPTs (which only verifiers skipping [VERIFY.1] would sign), the receipt
    # checker enforces the output bound itself. [RECEIPT.2] step 6
    # Every committed token is the sampler's choice: only the length rule is broken.
    verbose = VerboseBackend(net.lm.model)
    ex = ExecutorCore(make_key("verbose"), verbose, net.lm.model_id, net.policy.network_id, 8)
    run = net.run(net.request(request_id=b"\x77" * 16), ex, check_commitments=False)
    assert len(run.signed.commitment.output_tokens) == run.request.sampling.max_new_tokens + 2
    assert all(v.verdict is Verdict.ACCEPT for v in run.votes)
    with pytest.raises(Reject, match="more output tokens than max_new_tokens"):
        check_receipt(build_receipt(run.tally, net.validator_set))
    # Verifiers that do run [VERIFY.1] refuse it in the first place.
    checked = net.run(net.request(request_id=b"\x78" * 16), ex)
    assert all("max_new_tokens" in v.reason for v in checked.votes)
    assert all(v.verdict is Verdict.REJECT and v.evidence is not None for v in checked.votes)


def test_invalid_commitment_resigned_by_another_executor(receipt):
    other = make_key("other-executor")
    resigned = resign_commitment(receipt.signed_commitment, other, executor_key=other.public_key)
    with pytest.raises(ProtocolError):
        check_receipt(dataclasses.replace(receipt, signed_commitment=resigned))


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt_tokens": (1, 2, 3)},
        {"epoch": 1},
        {"f": 0},
        {"layers_per_verifier": 1},
        {"network_id": "elsewhere"},
        {"request_id": b"\x00" * 16},
    ],
    ids=lambda c: next(iter(c)),
)
def test_invalid_changed_request(receipt, changes):
    # A receipt cannot be re-read under another policy (smaller f, fewer layers) or request.
    with pytest.raises(Reject):
        check_receipt(
            dataclasses.replace(receipt, request=dataclasses.replace(receipt.request, **changes))
        )


def test_invalid_malformed_request(receipt):
    with pytest.raises(Malformed):
        check_receipt(
            dataclasses.replace(receipt, request=dataclasses.replace(receipt.request, f=-1))
        )


# --- the votes' measurements


@pytest.mark.parametrize(
    "field",
    ["max_rel_error", "worst_position", "layer", "chunks"],
)
def test_invalid_tampered_layer_check(receipt, field):
    vote = receipt.votes[0]
    check = vote.layer_checks[0]
    value = {"max_rel_error": 0.5, "worst_position": 3, "layer": 4, "chunks": (0,)}[field]
    assert getattr(check, field) != value
    checks = (dataclasses.replace(check, **{field: value}), *vote.layer_checks[1:])
    tampered = dataclasses.replace(vote, layer_checks=checks)
    with pytest.raises(BadSignature):
        check_receipt(with_votes(receipt, (tampered, *receipt.votes[1:])))


def test_invalid_tampered_embedding_measurement(receipt):
    tampered = dataclasses.replace(receipt.votes[1], embedding_max_error=1e-3)
    with pytest.raises(BadSignature):
        check_receipt(with_votes(receipt, (receipt.votes[0], tampered, receipt.votes[2])))


# --- any single change anywhere in the receipt fails


def _leaves(obj, path=()):
    """Yield ``(path, value)`` for every scalar in ``obj`` (dataclasses and tuples walked).

    Absent optional parts (``None``, e.g. an ACCEPT vote's evidence) have no scalar to change;
    adding one is covered by the message tests.
    """
    if obj is None:
        return
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _leaves(getattr(obj, f.name), (*path, f.name))
    elif isinstance(obj, tuple) and obj and not isinstance(obj[0], int):
        for i, item in enumerate(obj):
            yield from _leaves(item, (*path, i))
    else:
        yield path, obj


def _set(obj, path, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(obj)
        items[head] = _set(items[head], rest, value)
        return tuple(items)
    return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value)})


@st.composite
def mutations(draw, value):
    """Draw a different value of the same kind as ``value``."""
    bit = draw(st.integers(0, 63))
    if isinstance(value, enum.Enum):
        return draw(st.sampled_from([v for v in type(value) if v != value]))
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ (1 << (bit % 32))
    if isinstance(value, float):
        (raw,) = struct.unpack(">Q", struct.pack(">d", value))
        return struct.unpack(">d", struct.pack(">Q", raw ^ (1 << bit)))[0]
    if isinstance(value, bytes):
        if not value:
            return b"\x00"
        out = bytearray(value)
        i = draw(st.integers(0, len(value) - 1))
        out[i] ^= 1 << (bit % 8)
        return bytes(out)
    if isinstance(value, str):
        return draw(st.sampled_from([value + "x", value[:-1] if value else "y", "Z" + value[1:]]))
    if isinstance(value, tuple):
        if not value:
            return (0,)
        i = draw(st.integers(0, len(value) - 1))
        choice = draw(st.sampled_from(["flip", "drop", "append"]))
        if choice == "drop":
            return value[:i] + value[i + 1 :]
        if choice == "append":
            return (*value, value[i])
        return (*value[:i], value[i] ^ (1 << (bit % 16)), *value[i + 1 :])
    raise AssertionError(f"unhandled leaf {value!r}")


def test_mutation_walk_covers_every_part_of_the_receipt(receipt):
    paths = {p[0] for p, _ in _leaves(receipt)}
    assert paths == {"request", "signed_commitment", "validator_set", "votes"}
    names = {p[-1] for p, _ in _leaves(receipt)}
    assert {"positions_per_verifier", "margin", "position", "escalated", "witness"} <= names
    assert {"trust", "previous", "epoch", "key", "signature"} <= names  # [VSET.3]
    assert len(list(_leaves(receipt))) > 100


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_invalid_any_single_change_anywhere(receipt, data):
    leaves = list(_leaves(receipt))
    path, value = data.draw(st.sampled_from(leaves), label="leaf")
    new = data.draw(mutations(value), label="new value")
    assume(new != value or isinstance(value, float))  # every float bit pattern is a new value
    mutated = _set(receipt, path, new)
    with pytest.raises(ProtocolError):
        check_receipt(mutated)

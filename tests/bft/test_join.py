"""The join statement and its proof-of-work stamp, and the leave statement. [JOIN.1], [JOIN.3]"""

from __future__ import annotations

import dataclasses
import math

import pytest

from bft.crypto import SigningKey
from bft.errors import BadSignature, Malformed, Reject
from bft.join import (
    LEAVE_WINDOW_MS,
    JoinRequest,
    check_join,
    check_leave,
    compute_stamp,
    compute_stamp_digest,
    get_stamp_bits,
    sign_join,
    sign_leave,
)
from bft.types import ModelId
from tests.support import make_key

NET = "join-net"
MODEL = ModelId(b"\x07" * 32)
BITS = 10


def joined(key: SigningKey | None = None, bits: int = BITS, **changes: object) -> JoinRequest:
    key = key or make_key("joiner")
    unsigned = JoinRequest(
        NET,
        key.public_key,
        "127.0.0.1:7001",
        MODEL,
        "torch-cpu-float32",
        12.5,
        compute_stamp(NET, key.public_key, bits),
    )
    return sign_join(key, dataclasses.replace(unsigned, **changes))


def test_minted_stamp_has_the_bits_asked_and_is_the_first_such_nonce():
    key = make_key("joiner")
    nonce = compute_stamp(NET, key.public_key, BITS)
    assert get_stamp_bits(compute_stamp_digest(NET, key.public_key, nonce)) >= BITS
    assert all(
        get_stamp_bits(compute_stamp_digest(NET, key.public_key, n)) < BITS for n in range(nonce)
    )


def test_stamp_bits_count_leading_zeros():
    assert get_stamp_bits(b"\x00\x00\xff" + b"\x00" * 29) == 16
    assert get_stamp_bits(b"\x01" + b"\x00" * 31) == 7
    assert get_stamp_bits(b"\x80" + b"\x00" * 31) == 0


def test_valid_join_passes():
    check_join(joined(), NET, MODEL, BITS)


def test_invalid_join_with_too_weak_a_stamp():
    key = make_key("joiner")
    join = joined(key)
    weak = next(
        n
        for n in range(10_000)
        if get_stamp_bits(compute_stamp_digest(NET, key.public_key, n)) < BITS
    )
    with pytest.raises(Reject, match="stamp"):
        check_join(sign_join(key, dataclasses.replace(join, nonce=weak)), NET, MODEL, BITS)


def test_invalid_join_signed_by_another_key():
    join = joined()
    forged = sign_join(make_key("someone"), join)
    with pytest.raises(BadSignature):
        check_join(forged, NET, MODEL, BITS)


@pytest.mark.parametrize(
    ("network", "model", "needle"),
    [("other-net", MODEL, "another network"), (NET, ModelId(b"\x08" * 32), "model")],
)
def test_invalid_join_for_another_network_or_model(network, model, needle):
    with pytest.raises(Reject, match=needle):
        check_join(joined(), network, model, BITS)


@pytest.mark.parametrize(
    "change",
    [
        {"address": ""},
        {"profile": "x" * 300},
        {"tokens_per_second": math.nan},
        {"tokens_per_second": -1.0},
        {"model_id": ModelId(b"\x01")},
        {"network_id": ""},
    ],
)
def test_invalid_malformed_join(change):
    with pytest.raises(Malformed):
        check_join(joined(**change), NET, MODEL, BITS)


# --- leave [JOIN.3]

NOW_MS = 1_800_000_000_000


def test_valid_leave_passes_once():
    leave = sign_leave(make_key("joiner"), NET, NOW_MS)
    check_leave(leave, NET, NOW_MS + 1000, last_ms=0)
    with pytest.raises(Reject, match="replayed"):  # the assembler keeps NOW_MS as the last
        check_leave(leave, NET, NOW_MS + 2000, last_ms=NOW_MS)


@pytest.mark.parametrize("skew_ms", [LEAVE_WINDOW_MS + 1, -LEAVE_WINDOW_MS - 1])
def test_invalid_stale_leave(skew_ms):
    leave = sign_leave(make_key("joiner"), NET, NOW_MS)
    with pytest.raises(Reject, match="stale"):
        check_leave(leave, NET, NOW_MS + skew_ms, last_ms=0)
    check_leave(leave, NET, NOW_MS + skew_ms - (1 if skew_ms > 0 else -1), last_ms=0)


def test_invalid_leave_signed_by_another_key_or_for_another_network():
    leave = sign_leave(make_key("joiner"), NET, NOW_MS)
    forged = dataclasses.replace(leave, public_key=make_key("victim").public_key)
    with pytest.raises(BadSignature):
        check_leave(forged, NET, NOW_MS, last_ms=0)
    with pytest.raises(Reject, match="another network"):
        check_leave(leave, "other-net", NOW_MS, last_ms=0)


@pytest.mark.parametrize(
    "change",
    [{"issued_at_ms": 0}, {"issued_at_ms": 2**63}, {"public_key": b"\x01"}, {"signature": b""}],
)
def test_invalid_malformed_leave(change):
    leave = dataclasses.replace(sign_leave(make_key("joiner"), NET, NOW_MS), **change)
    with pytest.raises(Malformed):
        check_leave(leave, NET, NOW_MS, last_ms=0)

"""One validation vocabulary: each bound defined once, one network id rule. [LIMIT.1], [LIMIT.2]"""

from __future__ import annotations

import pytest

from bft import limits
from bft.errors import Malformed
from bft.limits import MAX_NETWORK_ID_BYTES, check_network_id, is_valid_network_id
from proto import convert


@pytest.mark.parametrize(
    "network_id",
    ["n", "verihive-test", "n" * MAX_NETWORK_ID_BYTES, "é" * 128, "€" * 85 + "n"],
)
def test_network_id_of_1_to_256_utf8_bytes_is_valid(network_id):
    assert is_valid_network_id(network_id)
    check_network_id(network_id)


@pytest.mark.parametrize(
    "network_id",
    ["", "n" * (MAX_NETWORK_ID_BYTES + 1), "é" * 129, "€" * 86, "\ud800"],
    ids=["empty", "257-ascii", "258-bytes-129-points", "258-bytes-86-points", "lone-surrogate"],
)
def test_invalid_network_id(network_id):
    assert not is_valid_network_id(network_id)
    with pytest.raises(Malformed, match=r"confirmation network_id must be 1\.\.256 bytes"):
        check_network_id(network_id, "confirmation network_id")


def test_convert_checks_against_the_cores_limits():
    # One definition each: proto/convert.py holds no bounds of its own. [LIMIT.2]
    own = {name for name in vars(convert) if name.startswith("MAX_")}
    assert own <= {name for name in vars(limits) if name.startswith("MAX_")} | {
        "MAX_PROOF_STEPS"  # the Merkle layer's own bound, imported from merkle.tree
    }
    assert convert.MAX_VALIDATORS == limits.MAX_VALIDATORS == 1024

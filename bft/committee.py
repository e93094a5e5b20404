"""Verifier committees. [COMMITTEE.1]-[COMMITTEE.3]"""

from __future__ import annotations

from collections.abc import Iterable

from bft.crypto import compute_node_id
from bft.encoding import Canonical, sha256
from bft.errors import Unavailable
from bft.types import NodeId, PublicKey

TAG_COMMITTEE = b"verihive/committee/v1"


def compute_committee(
    validators: Iterable[PublicKey],
    request_id: bytes,
    epoch: int,
    executor_id: NodeId,
    size: int,
) -> tuple[PublicKey, ...]:
    """Return the ``size`` validators drawn for ``request_id`` in ``epoch``, never the executor.

    Validators are ranked by ``sha256(tag || request_id || epoch || node_id)``; the lowest
    ``size`` form the committee, in rank order. The draw depends only on values fixed before
    execution, so an executor cannot grind its commitment to choose its committee. [COMMITTEE.2]
    Trust weighting comes with the ledger; this draw is uniform.
    """
    eligible = {compute_node_id(k): k for k in validators}
    eligible.pop(executor_id, None)
    if len(eligible) < size:
        raise Unavailable(
            f"committee of {size} needs more validators than the {len(eligible)} known"
        )

    def rank(node_id: NodeId) -> bytes:
        return sha256(
            TAG_COMMITTEE + Canonical().bytes_(request_id).u64(epoch).bytes_(node_id).build()
        )

    ordered = sorted(eligible, key=rank)
    return tuple(eligible[n] for n in ordered[:size])

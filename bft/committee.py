"""Verifier committees. [COMMITTEE.1]-[COMMITTEE.3]"""

from __future__ import annotations

from bft.crypto import compute_node_id
from bft.encoding import Canonical, sha256
from bft.errors import Unavailable
from bft.types import NodeId, PublicKey
from bft.validators import ValidatorSet

TAG_COMMITTEE = b"verihive/committee/v1"
_MAX_DRAWS = 1 << 16


def compute_committee(
    vset: ValidatorSet,
    request_id: bytes,
    executor_id: NodeId,
    size: int,
) -> tuple[PublicKey, ...]:
    """Return the ``size`` validators drawn for ``request_id`` from ``vset``, never the executor.

    A trust-weighted draw without replacement. The seed is ``sha256(tag || request_id ||
    epoch || set digest)``; draw ``i`` is ``u64(sha256(seed || u32(i))[:8])``, rejected in the
    biased tail, reduced modulo the remaining members' total trust and mapped onto them in
    node-id order by cumulative trust; the member hit leaves the pool. Members appear in draw
    order. The draw depends only on values fixed before execution (the assembler's random
    request id and the epoch's set), so an executor cannot grind its commitment to choose its
    committee. [COMMITTEE.2]
    """
    pool = [(compute_node_id(v.key), v.key, v.trust) for v in vset.validators]
    pool = [m for m in pool if m[0] != executor_id and m[2] > 0]
    if len(pool) < size:
        raise Unavailable(f"committee of {size} needs more validators than the {len(pool)} known")
    seed = sha256(
        TAG_COMMITTEE + Canonical().bytes_(request_id).u64(vset.epoch).bytes_(vset.digest()).build()
    )
    chosen: list[PublicKey] = []
    for i in range(_MAX_DRAWS):
        if len(chosen) == size:
            break
        total = sum(m[2] for m in pool)
        x = int.from_bytes(sha256(seed + i.to_bytes(4, "big"))[:8], "big")
        if x >= (1 << 64) - (1 << 64) % total:
            continue
        r = x % total
        for j, (_, key, trust) in enumerate(pool):
            if r < trust:
                chosen.append(key)
                del pool[j]
                break
            r -= trust
    return tuple(chosen)

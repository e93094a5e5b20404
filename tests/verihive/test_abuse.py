"""Every attack of the hardening findings at once against a 7-process testnet (tiny model): the
network keeps certifying honest requests, within a latency bound set by the same run's
baseline, and no node's memory grows past a stated ceiling. [ABUSE.1]
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bench.abuse import honest, make_target, percentile, sample_memory
from bft.assembler import AssemblerPolicy
from simnet.abuse import ATTACKS, Attack
from verihive import testnet

REQUESTS = 6
SLOWDOWN = 10.0
"""Honest p95 under attack may be at most this many times the baseline's ([ABUSE.1])."""
GROWTH_MIB = 256.0
"""A node's resident set may grow by at most this much under attack ([ABUSE.1])."""


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, testnet.Node]]:
    out = tmp_path_factory.mktemp("abuse") / "net"
    testnet.init_testnet(out, 4, 2, "tiny", AssemblerPolicy("verihive-testnet"))
    try:
        yield {n.name: n for n in testnet.up(out)}
    finally:
        testnet.down(out)


def test_honest_requests_are_certified_under_every_attack_at_once(nodes):
    assembler = nodes["assembler"].address
    honest(assembler, 1)  # warm every path once
    with sample_memory(list(nodes.values())) as base_rss:
        base, failed, last = honest(assembler, REQUESTS)
    assert not failed and len(base) == REQUESTS
    target = make_target(nodes, last)
    attacks = [Attack(name, target, threads=1).start() for name in ATTACKS]
    try:
        time.sleep(1.0)  # every attack under way
        with sample_memory(list(nodes.values())) as rss:
            latencies, failed, _ = honest(assembler, REQUESTS)
    finally:
        tallies = {a.name: a.stop() for a in attacks}
    assert not failed, failed[:3]
    assert len(latencies) == REQUESTS
    base_p95, p95 = percentile(base, 0.95), percentile(latencies, 0.95)
    assert base_p95 is not None and p95 is not None
    assert p95 <= SLOWDOWN * base_p95, (p95, base_p95)
    for role, peak in rss.items():
        assert peak - base_rss[role] <= GROWTH_MIB, (role, peak, base_rss[role])
    for name, tally in tallies.items():
        assert tally.calls > 0, name  # every attack really ran
        assert "OK" not in tally.statuses, (name, tally.statuses)  # and none was served
        assert not {"INTERNAL", "UNKNOWN"} & set(tally.statuses), (name, tally.statuses)

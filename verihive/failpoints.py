"""Crash points for restart tests: a node started with ``VERIHIVE_FAILPOINT=<point>`` kills
itself with SIGKILL the first time it reaches that point, as CometBFT's ``libs/fail`` does.
[NODE.8]

The points sit where a crash matters for what a node signed: after a commitment or vote is made
but before it is on disk, and after it is on disk but before it leaves the process. A node that
names an unknown point refuses to start, so a test cannot silently run without its crash.
"""

from __future__ import annotations

import os
import signal

ENV = "VERIHIVE_FAILPOINT"
POINTS = frozenset(
    {
        "executor.signed",  # commitment signed, not yet in the journal
        "executor.journaled",  # in the journal, not yet sent
        "verifier.signed",  # vote signed, not yet in the journal
        "verifier.journaled",  # in the journal, not yet sent
        "assembler.certified",  # answer certified, not yet sent to the client
    }
)


def check_failpoint() -> str | None:
    """Return the point this process is to crash at, or ``None``; refuse an unknown one."""
    point = os.environ.get(ENV) or None
    if point is not None and point not in POINTS:
        raise ValueError(f"{ENV}={point!r} is not a failpoint ({', '.join(sorted(POINTS))})")
    return point


def reach(point: str) -> None:
    """SIGKILL this process if ``VERIHIVE_FAILPOINT`` names ``point``; else return at once."""
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)

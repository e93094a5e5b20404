"""What a node did lately, for ``status``: calls in flight, counts by event and the recent
events (request id, verdict or outcome). [NODE.9]

Every service keeps one :class:`Activity`; its ``Status`` RPC answers with
:meth:`Activity.to_pb` and the role's own peers. Nothing here is signed or trusted by anyone:
it is what an operator reads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from proto import verihive_pb2 as pb

RECENT = 32
"""How many recent events a node keeps (newest first)."""


class Activity:
    """Counters and a bounded list of recent events; thread-safe."""

    def __init__(self, model: str, keep: int = RECENT) -> None:
        self.model = model
        self.tokens_per_second = 0.0
        """Executors: throughput measured at start ([JOIN.1]); 0 where not measured."""
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._counts: Counter[str] = Counter()
        self._recent: deque[pb.RecentEvent] = deque(maxlen=keep)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Count a call as in flight while the ``with`` block runs."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def record(self, event: str, request_id: bytes = b"", detail: str = "") -> None:
        """Count ``event`` and keep it among the recent ones."""
        item = pb.RecentEvent(
            unix_time=time.time(), request_id=request_id, event=event, detail=detail
        )
        with self._lock:
            self._counts[event] += 1
            self._recent.appendleft(item)

    def to_pb(self, info: pb.NodeInfo, peers: Iterable[pb.PeerStatus] = ()) -> pb.NodeStatus:
        """Return the node's status: ``info``, this activity and ``peers``."""
        with self._lock:
            status = pb.NodeStatus(
                info=info,
                model=self.model,
                uptime_s=time.monotonic() - self._started,
                in_flight=self._in_flight,
                counts=dict(self._counts),
                recent=list(self._recent),
                tokens_per_second=self.tokens_per_second,
            )
        status.peers.extend(peers)
        return status

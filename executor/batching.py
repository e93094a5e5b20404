"""Concurrent requests gathered into one batched generation. [EXEC.8]

A GPU engine (vLLM) generates a batch of requests in about the time of one; the gRPC service
receives requests one call at a time, on several threads. :class:`ExecutionBatcher` queues the
calls, and a worker thread hands each gathered batch (up to ``max_batch`` requests, waiting at
most ``max_wait_s`` after the first) to :meth:`ExecutorCore.execute_many`; every caller gets
its own request's commitment, exactly what :meth:`ExecutorCore.on_execute` would have signed.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from bft.errors import Unavailable
from bft.messages import InferenceRequest, SignedCommitment
from executor.core import ExecutorCore

_Item = tuple[InferenceRequest, "Future[SignedCommitment]"]


class ExecutionBatcher:
    """Gathers concurrent ``on_execute`` calls for one executor core into batches."""

    def __init__(self, core: ExecutorCore, max_batch: int = 32, max_wait_s: float = 0.005) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.core = core
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batch_sizes: list[int] = []
        """Size of every batch handed to the core, in order (for benchmarks and tests)."""
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verihive-batcher", daemon=True)
        self._thread.start()

    def on_execute(self, request: InferenceRequest) -> SignedCommitment:
        """Return the signed commitment for ``request``, generated within a batch.

        A malformed request is refused here, in the caller's thread, before it can hold up a
        batch.
        """
        if self._closed.is_set():
            raise Unavailable("executor is shutting down")
        self.core.check_request(request)
        future: Future[SignedCommitment] = Future()
        self._queue.put((request, future))
        return future.result()

    def close(self) -> None:
        """Finish the batch in hand, refuse new calls and stop the worker."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            self.batch_sizes.append(len(batch))
            try:
                results = self.core.execute_many([request for request, _ in batch])
            except BaseException as exc:  # forwarded to every caller of this batch
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), signed in zip(batch, results, strict=True):
                future.set_result(signed)
        while True:  # calls that raced with close()
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[1].set_exception(Unavailable("executor is shutting down"))

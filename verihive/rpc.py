"""gRPC plumbing: the error-mapping interceptor, server and channel factories, and the
bounded parsing of requests and replies. [RPC.1]-[RPC.4], [RPC.6]"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter

from bft.attempt import Deadlines
from bft.errors import (
    BadSignature,
    CannotJudge,
    DeadlineExceeded,
    Ignore,
    Malformed,
    NotAdmitted,
    NotFound,
    ProtocolError,
    Reject,
    Unavailable,
)
from proto import verihive_pb2 as pb
from proto import wirescan

M = TypeVar("M", bound=Message)

log = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20
MAX_MESSAGE_BYTES = 8 * MiB
"""Default send/receive limit for every call, in bytes. [RPC.3]"""
MAX_OPEN_MESSAGE_BYTES = 64 * MiB
"""Receive limit for ``Executor.Open`` responses (activation tiles), in bytes. [RPC.3]"""

MAX_REQUEST_BYTES: dict[str, int] = {
    "/verihive.v1.Executor/GetInfo": 4 * KiB,
    "/verihive.v1.Executor/Status": 4 * KiB,
    "/verihive.v1.Executor/Execute": 1 * MiB,
    "/verihive.v1.Executor/Open": 2 * MiB,
    "/verihive.v1.Verifier/GetInfo": 4 * KiB,
    "/verihive.v1.Verifier/Status": 4 * KiB,
    "/verihive.v1.Verifier/Verify": 1 * MiB,
    "/verihive.v1.Verifier/Confirm": MAX_OPEN_MESSAGE_BYTES,  # evidence holds openings
    "/verihive.v1.Assembler/GetInfo": 4 * KiB,
    "/verihive.v1.Assembler/Status": 4 * KiB,
    "/verihive.v1.Assembler/Infer": 1 * MiB,
    "/verihive.v1.Assembler/Join": 64 * KiB,
    "/verihive.v1.Assembler/Leave": 64 * KiB,
}
"""Largest request of each method a server parses, in bytes. The largest legal request of each
method but ``Confirm`` is under a third of it (``tests/maximal.py``); a ``Confirm`` carries a
whole ``Open`` reply in its evidence, up to the transport's 64 MiB ([RPC.3]). [RPC.6]"""

# Deadlines, in seconds. [RPC.2] The assembler's come from its machine's Deadlines.
EXECUTE_TIMEOUT_S = Deadlines().execute_s
OPEN_TIMEOUT_S = 60.0
VERIFY_TIMEOUT_S = Deadlines().verify_s
INFO_TIMEOUT_S = 10.0
INFER_TIMEOUT_S = 3600.0

RPC_ERRORS = Counter(
    "verihive_rpc_errors_total", "RPCs answered with an error status", ["method", "code"]
)

# Most specific first. [RPC.1]
_STATUS: tuple[tuple[type[ProtocolError], grpc.StatusCode], ...] = (
    (Malformed, grpc.StatusCode.INVALID_ARGUMENT),
    (BadSignature, grpc.StatusCode.UNAUTHENTICATED),
    (NotAdmitted, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Reject, grpc.StatusCode.FAILED_PRECONDITION),
    (Ignore, grpc.StatusCode.ABORTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (CannotJudge, grpc.StatusCode.UNAVAILABLE),  # an abstention: ask another node [CONFIRM.2]
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def compute_status(exc: ProtocolError) -> grpc.StatusCode:
    """Return the status code for ``exc``."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Parses requests itself and maps protocol errors to status codes. [RPC.1]

    Unparseable bytes become ``INVALID_ARGUMENT`` (gRPC's own deserialiser would answer
    ``INTERNAL``); :class:`ProtocolError` subclasses map through ``_STATUS``; anything else is
    our bug: logged with its traceback and answered ``INTERNAL``. The server keeps serving.
    """

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        """Wrap the unary-unary handler of the called method."""
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behavior = handler.unary_unary
        deserialize = handler.request_deserializer

        def wrapped(raw: bytes, context: grpc.ServicerContext) -> Any:
            code, message = grpc.StatusCode.OK, ""
            try:
                request = deserialize(raw) if deserialize else raw
                return behavior(request, context)
            except DecodeError as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {exc}"
            except ProtocolError as exc:
                code, message = compute_status(exc), f"{type(exc).__name__}: {exc}"
            except Exception:  # our own bug, never peer input: full traceback, INTERNAL, serve on
                log.exception("internal error in %s", method)
                code, message = grpc.StatusCode.INTERNAL, "internal error"
            RPC_ERRORS.labels(method=method, code=code.name).inc()
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=None, response_serializer=handler.response_serializer
        )


MAX_QUEUED_PER_WORKER = 8
"""Calls a server holds (running or waiting) per worker thread. [RPC.7]"""


def make_server(max_workers: int = 8, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Server:
    """Return a gRPC server with the error interceptor and explicit message limits."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[ErrorMappingInterceptor()],
        # Calls waiting for a worker are bounded too: beyond, RESOURCE_EXHAUSTED at once.
        maximum_concurrent_rpcs=MAX_QUEUED_PER_WORKER * max_workers,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", MAX_OPEN_MESSAGE_BYTES),
        ],
    )


def add_bounded_servicer(servicer: object, server: grpc.Server, service: str) -> None:
    """Serve the methods of ``service`` (a full name such as ``verihive.v1.Executor``) by
    ``servicer`` on ``server``, each request bounded before it is parsed. [RPC.6]

    What ``add_ExecutorServicer_to_server`` and its kind do, with one difference: a request
    is first held to its method's :data:`MAX_REQUEST_BYTES`, then pre-scanned
    (:func:`proto.wirescan.scan`), and only then parsed. A refusal raises :class:`Malformed`
    in the deserialiser, which :class:`ErrorMappingInterceptor` (every :func:`make_server`
    has it) runs and answers ``INVALID_ARGUMENT`` with the reason.
    """
    descriptor = pb.DESCRIPTOR.services_by_name[service.rpartition(".")[2]]
    if descriptor.full_name != service:
        raise ValueError(f"no service {service!r} in verihive.proto")
    handlers = {}
    for method in descriptor.methods:
        request = message_factory.GetMessageClass(method.input_type)
        reply = message_factory.GetMessageClass(method.output_type)
        limit = MAX_REQUEST_BYTES[f"/{service}/{method.name}"]
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=partial(wirescan.parse, request, max_bytes=limit),
            response_serializer=reply.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def call_bounded(
    channel: grpc.Channel,
    method: str,
    request: Message,
    reply_type: type[M],
    timeout_s: float,
    max_bytes: int,
) -> M:
    """Call ``method`` (e.g. ``/verihive.v1.Executor/Open``) on ``channel`` with ``request``
    and return its reply, at most ``max_bytes`` long, pre-scanned and parsed. [RPC.6]

    Raises :class:`grpc.RpcError` for a failed call and :class:`Malformed` for a reply
    refused by :func:`proto.wirescan.parse`, so that a peer's reply is bounded the way its
    requests are before it becomes Python objects.
    """
    call = channel.unary_unary(method, request_serializer=type(request).SerializeToString)
    raw: bytes = call(request, timeout=timeout_s)
    return wirescan.parse(reply_type, raw, max_bytes)


def make_channel(address: str, max_receive_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Channel:
    """Return an insecure channel to ``address`` with explicit message limits.

    A channel that may receive large messages may send them on too (the assembler forwards an
    accusation, evidence included, to the committee's ``Confirm``).
    """
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", max_receive_bytes),
        ],
    )


def check_address(address: str, any_port: bool = False) -> str:
    """Return ``address`` if it looks like ``host:port``; raise :class:`Malformed` otherwise.

    ``any_port``: port 0 (a listening address: the system picks a free port) is allowed too.
    """
    host, sep, port = address.rpartition(":")
    lowest = 0 if any_port else 1
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())  # "²" and "١" are digits to str, not ports
        or len(address) > 256
        or not lowest <= int(port) < 65536
    ):
        raise Malformed(f"not a host:port address: {address[:64]!r}")
    return address


def add_health_and_reflection(server: grpc.Server, service: str) -> health.HealthServicer:
    """Serve gRPC health checking (``grpc.health.v1``) and reflection for ``service`` (a full
    name such as ``verihive.v1.Verifier``) on ``server``; return the health servicer, which
    answers NOT_SERVING until :func:`set_serving`. [NODE.2]"""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = (service, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    for name in ("", service):
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return servicer


def set_serving(servicer: health.HealthServicer, service: str) -> None:
    """Mark the node and ``service`` SERVING."""
    for name in ("", service):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def is_healthy(address: str, timeout_s: float = INFO_TIMEOUT_S) -> bool:
    """Return whether the node at ``address`` answers SERVING to a health check."""
    channel = make_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


class Slots:
    """At most ``total`` holders at once, and at most ``per_key`` holders per key. Never waits:
    a call over either bound is refused at once (``Unavailable``), so that a stalled peer costs
    its few slots and never the node's workers. [RPC.7]"""

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self._lock = threading.Lock()
        self._held = 0
        self._by_key: dict[str, int] = {}

    @contextlib.contextmanager
    def take(self, key: str) -> Iterator[None]:
        """Hold one slot for ``key`` while the ``with`` block runs."""
        with self._lock:
            if self._held >= self.total:
                raise Unavailable(f"busy: {self.total} calls in progress")
            if self._by_key.get(key, 0) >= self.per_key:
                raise Unavailable(f"busy: {self.per_key} calls in progress for {key}")
            self._held += 1
            self._by_key[key] = self._by_key.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
                self._by_key[key] -= 1
                if not self._by_key[key]:
                    del self._by_key[key]  # bounded by the holders, not by keys ever seen

"""gRPC services: thin shells that convert at the edge and call the protocol cores."""

from __future__ import annotations

import logging
import threading

import grpc

from bft.errors import CannotJudge, Malformed, Unavailable
from bft.limits import MAX_OPENINGS
from bft.messages import OpeningResponse
from bft.types import DIGEST_SIZE, Digest
from bft.verifier import Session, VerifierCore
from executor.batching import ExecutionBatcher
from executor.core import ExecutorCore
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, OPEN_TIMEOUT_S, check_address, make_channel

log = logging.getLogger(__name__)


class ExecutorService(pb_grpc.ExecutorServicer):
    """Serves ``Execute`` and ``Open`` for one :class:`ExecutorCore`.

    With a ``batcher`` (a GPU backend that generates batches, [EXEC.8]), concurrent ``Execute``
    calls are generated together.
    """

    def __init__(self, core: ExecutorCore, batcher: ExecutionBatcher | None = None) -> None:
        self.core = core
        self.batcher = batcher

    def close(self) -> None:
        """Stop the batcher, if any."""
        if self.batcher is not None:
            self.batcher.close()

    def GetInfo(self, request: pb.NodeInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        """Return this node's identity and model."""
        return pb.NodeInfo(
            public_key=self.core.key.public_key,
            role="executor",
            model_id=self.core.model_id,
            backend=self.core.backend.info.name,
            network_id=self.core.network_id,
        )

    def Execute(
        self, request: pb.ExecuteRequest, context: grpc.ServicerContext
    ) -> pb.ExecuteResponse:
        """Run the request and return the signed commitment."""
        if not request.HasField("request"):
            raise Malformed("ExecuteRequest.request is missing")
        inference = convert.request_from_pb(request.request)
        runner = self.batcher or self.core
        signed = runner.on_execute(inference)
        return pb.ExecuteResponse(commitment=convert.commitment_to_pb(signed))

    def Open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> pb.OpenResponse:
        """Return the signed openings of the requested tiles."""
        if len(request.commitment_digest) != DIGEST_SIZE:
            raise Malformed("commitment_digest must be 32 bytes")
        if len(request.tiles) > MAX_OPENINGS:
            raise Malformed("too many tiles requested")
        tiles = tuple(convert.tile_from_pb(t) for t in request.tiles)
        response = self.core.on_open(Digest(request.commitment_digest), tiles)
        return convert.opening_response_to_pb(response)


class VerifierService(pb_grpc.VerifierServicer):
    """Serves ``Verify``: challenge, fetch openings from the executor over gRPC, vote."""

    def __init__(self, core: VerifierCore, backend_name: str) -> None:
        self.core = core
        self.backend_name = backend_name
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def GetInfo(self, request: pb.NodeInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        """Return this node's identity and model."""
        return pb.NodeInfo(
            public_key=self.core.key.public_key,
            role="verifier",
            model_id=self.core.model_id,
            backend=self.backend_name,
            network_id=self.core.network_id,
        )

    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.Vote:
        """Check the commitment in ``request`` and return a signed vote."""
        if not request.HasField("request") or not request.HasField("commitment"):
            raise Malformed("VerifyRequest needs request and commitment")
        req = convert.request_from_pb(request.request)
        signed = convert.commitment_from_pb(request.commitment)
        address = check_address(request.executor_address)
        stub = pb_grpc.ExecutorStub(self._channel(address))

        def fetch(session: Session) -> OpeningResponse:
            tiles = session.challenge.required_tiles()
            open_request = pb.OpenRequest(
                commitment_digest=signed.digest, tiles=[convert.tile_to_pb(t) for t in tiles]
            )
            try:
                raw = stub.Open(open_request, timeout=OPEN_TIMEOUT_S)
            except grpc.RpcError as exc:
                log.info("openings unavailable from %s: %s", address, exc.code().name)
                raise Unavailable(exc.code().name) from exc
            return convert.opening_response_from_pb(raw)

        # start() inside run() raises on a bad executor signature: no vote at all.
        return convert.vote_to_pb(self.core.run(req, signed, fetch))

    def Confirm(self, request: pb.ConfirmRequest, context: grpc.ServicerContext) -> pb.Confirmation:
        """Audit the accusation's evidence with this verifier's model and sign the finding."""
        if not request.HasField("accusation"):
            raise Malformed("ConfirmRequest.accusation is missing")
        accusation = convert.vote_from_pb(request.accusation)
        if accusation.evidence is None:
            raise Malformed("only a REJECT vote with evidence can be confirmed")
        ev = accusation.evidence
        conf = self.core.confirm(ev.request, ev.signed, accusation)
        if conf is None:
            raise CannotJudge("this verifier holds no model or bands to judge the claim")
        return convert.confirmation_to_pb(conf)

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                self._channels[address] = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
            return self._channels[address]

    def close(self) -> None:
        """Close the channels this service opened."""
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()

"""gRPC services: thin shells that convert at the edge and call the protocol cores."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Set

import grpc

from bft.errors import CannotJudge, Malformed, NotFound, Unavailable
from bft.limits import MAX_OPENINGS
from bft.messages import InferenceRequest, OpeningResponse, SignedCommitment, Vote
from bft.orders import Subject, Work, check_order
from bft.types import DIGEST_SIZE, Digest, PublicKey
from bft.verifier import Session, VerifierCore
from executor.batching import ExecutionBatcher
from executor.core import ExecutorCore
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive import failpoints, metrics
from verihive.journal import Journal, JournalError
from verihive.rpc import (
    MAX_OPEN_MESSAGE_BYTES,
    OPEN_TIMEOUT_S,
    Slots,
    call_bounded,
    check_address,
    make_channel,
)
from verihive.status import Activity

log = logging.getLogger(__name__)

MAX_VERIFIES_PER_EXECUTOR = 8
"""Verifications that fetch openings from one executor address at once: the concurrency an
assembler's requests to one executor reach (its server has 8 workers)."""
MAX_VERIFIES = 2 * MAX_VERIFIES_PER_EXECUTOR
"""Verifications a verifier runs at once; more are refused at once (``UNAVAILABLE``). Twice the
per-executor bound: an executor that stalls its openings leaves half for the others."""
VERIFIER_WORKERS = MAX_VERIFIES + 4
"""Worker threads of a verifier's server: the verifications, and 4 that are always free for
``GetInfo``, ``Status``, health checks and ``Confirm``."""
MAX_CHANNELS = 64
"""Channels a verifier keeps open to executors, least recently used closed first."""


class ExecutorService(pb_grpc.ExecutorServicer):
    """Serves ``Execute`` and ``Open`` for one :class:`ExecutorCore`.

    With a ``batcher`` (a GPU backend that generates batches, [EXEC.8]), concurrent ``Execute``
    calls are generated together.
    """

    def __init__(
        self,
        core: ExecutorCore,
        batcher: ExecutionBatcher | None = None,
        journal: Journal | None = None,
        activity: Activity | None = None,
        *,
        admitted: Set[PublicKey],
    ) -> None:
        self.core = core
        self.admitted = admitted
        """The assemblers whose orders this node executes ([ADMIT.1])."""
        self.batcher = batcher
        self.journal = journal
        """Where signed commitments are kept across restarts ([NODE.1]); none: memory only."""
        self.activity = activity or Activity(core.backend.info.name)
        """What ``Status`` reports ([NODE.9])."""
        self.peers: Callable[[], list[pb.PeerStatus]] = list
        """The assemblers this node announces itself to, as ``Status`` reports them."""

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

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.NodeStatus:
        """Return what this node did lately and the assemblers it announces to. [NODE.9]"""
        return self.activity.to_pb(self.GetInfo(pb.NodeInfoRequest(), context), self.peers())

    def Execute(
        self, request: pb.ExecuteRequest, context: grpc.ServicerContext
    ) -> pb.ExecuteResponse:
        """Run the request and return the signed commitment."""
        if not request.HasField("request"):
            raise Malformed("ExecuteRequest.request is missing")
        inference = convert.request_from_pb(request.request)
        order = convert.order_from_pb(request.order) if request.HasField("order") else None
        subject = Subject(self.core.network_id, Work.EXECUTE, inference.digest())
        check_order(order, subject, self.admitted)  # before any lookup or work [ADMIT.2]
        with self.activity.serving():
            signed = self.recall(inference.digest())
            event = "recalled"
            if signed is None:
                runner = self.batcher or self.core
                signed = runner.on_execute(inference)
                failpoints.reach("executor.signed")
                if self.journal is not None:  # on disk before it leaves the process [NODE.1]
                    signed = self.journal.keep_commitment(signed)
                failpoints.reach("executor.journaled")
                event = "executed"
        metrics.EXECUTIONS.inc()
        c = signed.commitment
        detail = f"root {c.merkle_root.hex()[:16]}, {len(c.tokens) - c.prompt_len} tokens"
        self.activity.record(event, inference.request_id, detail)
        return pb.ExecuteResponse(commitment=convert.commitment_to_pb(signed))

    def recall(self, request_digest: Digest) -> SignedCommitment | None:
        """Return the commitment the journal holds for ``request_digest``, now known to the
        core again ([NODE.1]); ``None`` without a journal or a record."""
        if self.journal is None:
            return None
        signed = self.journal.get_commitment(request_digest)
        if signed is not None:
            self.core.process_recalled(signed)
        return signed

    def Open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> pb.OpenResponse:
        """Return the signed openings of the requested tiles."""
        if len(request.commitment_digest) != DIGEST_SIZE:
            raise Malformed("commitment_digest must be 32 bytes")
        if len(request.tiles) > MAX_OPENINGS:
            raise Malformed("too many tiles requested")
        tiles = tuple(convert.tile_from_pb(t) for t in request.tiles)
        digest = Digest(request.commitment_digest)
        try:
            response = self.core.on_open(digest, tiles)
        except NotFound:
            known = self.journal.get_commitment_by_digest(digest) if self.journal else None
            if known is None:
                raise
            self.core.process_recalled(known)  # signed before a restart: recompute its tree
            response = self.core.on_open(digest, tiles)
        message = convert.opening_response_to_pb(response)
        metrics.OPENED_BYTES.inc(message.ByteSize())
        return message


class VerifierService(pb_grpc.VerifierServicer):
    """Serves ``Verify``: challenge, fetch openings from the executor over gRPC, vote."""

    open_timeout_s: float = OPEN_TIMEOUT_S
    """Deadline of each ``Open`` call to the executor, in seconds ([RPC.2])."""

    def __init__(
        self,
        core: VerifierCore,
        backend_name: str,
        journal: Journal | None = None,
        activity: Activity | None = None,
        *,
        admitted: Set[PublicKey],
    ) -> None:
        self.core = core
        self.admitted = admitted
        """The assemblers whose orders this node verifies and confirms for ([ADMIT.1])."""
        self.backend_name = backend_name
        self.journal = journal
        """Where signed votes are kept across restarts ([NODE.1]); none: memory only."""
        self.activity = activity or Activity(backend_name)
        """What ``Status`` reports ([NODE.9])."""
        self._channels: OrderedDict[str, grpc.Channel] = OrderedDict()  # least recent first
        self._lock = threading.Lock()
        self.slots = Slots(MAX_VERIFIES, MAX_VERIFIES_PER_EXECUTOR)
        """Verifications that may fetch openings at once, in all and per executor address."""

    def GetInfo(self, request: pb.NodeInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        """Return this node's identity and model."""
        return pb.NodeInfo(
            public_key=self.core.key.public_key,
            role="verifier",
            model_id=self.core.model_id,
            backend=self.backend_name,
            network_id=self.core.network_id,
        )

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.NodeStatus:
        """Return what this node did lately and the executors it fetched openings from."""
        with self._lock:
            addresses = sorted(self._channels)
        peers = [pb.PeerStatus(role="executor", address=a, source="verified") for a in addresses]
        return self.activity.to_pb(self.GetInfo(pb.NodeInfoRequest(), context), peers)

    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.Vote:
        """Check the commitment in ``request`` and return a signed vote."""
        if not request.HasField("request") or not request.HasField("commitment"):
            raise Malformed("VerifyRequest needs request and commitment")
        req = convert.request_from_pb(request.request)
        signed = convert.commitment_from_pb(request.commitment)
        order = convert.order_from_pb(request.order) if request.HasField("order") else None
        subject = Subject(
            self.core.network_id,
            Work.VERIFY,
            req.digest(),
            signed.digest,
            request.executor_address,
        )
        check_order(order, subject, self.admitted)  # before any lookup or work [ADMIT.2]
        signed.check()  # so is the executor's signature: a cached vote never answers a forgery
        with self.activity.serving():
            vote = self._vote(req, signed, request.executor_address)
        detail = vote.evidence.check.value if vote.evidence is not None else vote.reason
        self.activity.record(vote.verdict.name.lower(), req.request_id, detail)
        return convert.vote_to_pb(vote)

    def _vote(self, req: InferenceRequest, signed: SignedCommitment, executor: str) -> Vote:
        """Return the vote on ``signed``: the journal's, else a new one, journaled."""
        if self.journal is not None:
            known = self.journal.get_vote(req.digest(), signed.digest)
            if known is not None:  # signed before a restart: that vote, byte for byte [NODE.1]
                if known.verifier_key != self.core.key.public_key:
                    raise JournalError(f"{self.journal.path} holds another key's votes")
                return self.core.remember(known)
        address = check_address(executor)
        with self.slots.take(address):  # a stalled executor holds a few slots, never the node
            return self._verify(req, signed, address)

    def _verify(self, req: InferenceRequest, signed: SignedCommitment, address: str) -> Vote:
        """Verify ``signed`` with openings from ``address``; journal and count the vote."""
        channel = self._channel(address)

        def fetch(session: Session) -> OpeningResponse:
            tiles = session.challenge.required_tiles()
            open_request = pb.OpenRequest(
                commitment_digest=signed.digest, tiles=[convert.tile_to_pb(t) for t in tiles]
            )
            try:
                raw = call_bounded(  # bounded before parsed [RPC.6]
                    channel,
                    "/verihive.v1.Executor/Open",
                    open_request,
                    pb.OpenResponse,
                    self.open_timeout_s,
                    MAX_OPEN_MESSAGE_BYTES,
                )
            except grpc.RpcError as exc:
                log.info("openings unavailable from %s: %s", address, exc.code().name)
                raise Unavailable(exc.code().name) from exc
            except ValueError as exc:  # the channel was closed under the call: shutting down
                raise Unavailable(f"channel to {address} closed") from exc
            return convert.opening_response_from_pb(raw)

        # start() inside run() raises on a bad executor signature: no vote at all.
        vote = self.core.run(req, signed, fetch)
        failpoints.reach("verifier.signed")
        if self.journal is not None:  # on disk before it leaves the process [NODE.1]
            vote = self.journal.keep_vote(vote)
        failpoints.reach("verifier.journaled")
        check = vote.evidence.check.value if vote.evidence is not None else "none"
        metrics.VOTES.labels(verdict=vote.verdict.name.lower(), check=check).inc()
        return vote

    def Confirm(self, request: pb.ConfirmRequest, context: grpc.ServicerContext) -> pb.Confirmation:
        """Audit the accusation's evidence with this verifier's model and sign the finding."""
        if not request.HasField("accusation"):
            raise Malformed("ConfirmRequest.accusation is missing")
        accusation = convert.vote_from_pb(request.accusation)
        if accusation.evidence is None:
            raise Malformed("only a REJECT vote with evidence can be confirmed")
        ev = accusation.evidence
        order = convert.order_from_pb(request.order) if request.HasField("order") else None
        subject = Subject(
            self.core.network_id,
            Work.CONFIRM,
            ev.request.digest(),
            ev.signed.digest,
            accusation_digest=accusation.signing_root(),
        )
        check_order(order, subject, self.admitted)  # before any model work [ADMIT.2]
        with self.activity.serving():
            conf = self.core.confirm(ev.request, ev.signed, accusation)
        if conf is None:
            raise CannotJudge("this verifier holds no model or bands to judge the claim")
        self.activity.record(f"confirm-{conf.finding.name.lower()}", ev.request.request_id)
        return convert.confirmation_to_pb(conf)

    def _channel(self, address: str) -> grpc.Channel:
        """Return the channel to ``address``; keep at most :data:`MAX_CHANNELS`, closing the
        least recently used (at most :data:`MAX_VERIFIES` are in use at any time)."""
        with self._lock:
            channel = self._channels.pop(address, None)
            if channel is None:
                channel = make_channel(address, MAX_OPEN_MESSAGE_BYTES)
                while len(self._channels) >= MAX_CHANNELS:
                    self._channels.popitem(last=False)[1].close()
            self._channels[address] = channel  # now the most recent
            return channel

    def close(self) -> None:
        """Close the channels this service opened."""
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()

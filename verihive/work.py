"""The calls an assembler makes, each with its signed order ([ADMIT.1]): the assembler builds
them here, and so do tools and tests that act as an admitted assembler."""

from __future__ import annotations

from bft.crypto import SigningKey
from bft.messages import InferenceRequest, SignedCommitment, Vote
from bft.orders import Subject, Work, sign_order
from proto import convert
from proto import verihive_pb2 as pb


def make_execute(key: SigningKey, request: InferenceRequest) -> pb.ExecuteRequest:
    """Return ``Execute`` for ``request``, ordered by ``key``."""
    subject = Subject(request.network_id, Work.EXECUTE, request.digest())
    return pb.ExecuteRequest(
        request=convert.request_to_pb(request),
        order=convert.order_to_pb(sign_order(key, subject)),
    )


def make_verify(
    key: SigningKey, request: InferenceRequest, signed: SignedCommitment, executor_address: str
) -> pb.VerifyRequest:
    """Return ``Verify`` of ``signed``, whose openings are at ``executor_address``."""
    subject = Subject(
        request.network_id, Work.VERIFY, request.digest(), signed.digest, executor_address
    )
    return pb.VerifyRequest(
        request=convert.request_to_pb(request),
        commitment=convert.commitment_to_pb(signed),
        executor_address=executor_address,
        order=convert.order_to_pb(sign_order(key, subject)),
    )


def make_confirm(
    key: SigningKey, request: InferenceRequest, signed: SignedCommitment, accusation: Vote
) -> pb.ConfirmRequest:
    """Return ``Confirm`` of ``accusation`` (a REJECT with evidence about ``signed``)."""
    subject = Subject(
        request.network_id,
        Work.CONFIRM,
        request.digest(),
        signed.digest,
        accusation_digest=accusation.signing_root(),
    )
    return pb.ConfirmRequest(
        accusation=convert.vote_to_pb(accusation),
        order=convert.order_to_pb(sign_order(key, subject)),
    )

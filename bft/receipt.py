"""Receipts: what a client keeps to prove its answer was certified. [RECEIPT.1]-[RECEIPT.3]"""

from __future__ import annotations

from dataclasses import dataclass

from bft.committee import compute_committee
from bft.errors import Reject
from bft.messages import InferenceRequest, SignedCommitment, Vote, compute_validator_set_digest
from bft.quorum import QuorumCertificate, check_quorum_certificate
from bft.types import PublicKey


@dataclass(frozen=True, slots=True)
class Receipt:
    """The request, the executor's signed commitment, the validator set and the certificate."""

    request: InferenceRequest
    signed_commitment: SignedCommitment
    validators: tuple[PublicKey, ...]
    votes: tuple[Vote, ...]


def check_receipt(
    receipt: Receipt, trusted_validators: tuple[PublicKey, ...] | None = None
) -> None:
    """Raise :class:`~bft.errors.ProtocolError` with a one-line reason unless valid. [RECEIPT.2]

    Needs no model and no network. ``trusted_validators``, when given, pins the validator set
    instead of trusting the one the receipt names.
    """
    req = receipt.request
    req.validate()
    signed = receipt.signed_commitment
    signed.check()  # [REJECT] executor signature on the commitment is valid
    c = signed.commitment
    if trusted_validators is not None and set(trusted_validators) != set(receipt.validators):
        raise Reject("receipt names a validator set other than the trusted one")
    if len(set(receipt.validators)) != len(receipt.validators):
        raise Reject("validator set lists a key twice")
    if compute_validator_set_digest(req.network_id, receipt.validators) != req.validator_set_digest:
        raise Reject("validator set does not match the request's validator_set_digest")
    if c.network_id != req.network_id:
        raise Reject("commitment is for another network")
    if c.request_digest != req.digest():
        raise Reject("commitment is for another request")
    if c.model_id != req.model_id:
        raise Reject("commitment names another model")
    if c.tokens[: c.prompt_len] != req.prompt_tokens:
        raise Reject("committed prompt differs from the request's prompt")
    if len(c.output_tokens) > req.sampling.max_new_tokens:
        raise Reject("commitment has more output tokens than max_new_tokens")
    committee = compute_committee(
        receipt.validators, req.request_id, req.epoch, c.executor_id, req.committee_size
    )
    check_quorum_certificate(QuorumCertificate(signed, receipt.votes), req, committee)

"""Receipts: what a client keeps to prove its answer was certified. [RECEIPT.1]-[RECEIPT.3]"""

from __future__ import annotations

from dataclasses import dataclass

from bft.committee import compute_committee
from bft.errors import Reject
from bft.messages import InferenceRequest, SignedCommitment, Vote
from bft.quorum import QuorumCertificate, check_quorum_certificate
from bft.types import PublicKey
from bft.validators import SignedValidatorSet, ValidatorSet, check_validator_set


@dataclass(frozen=True, slots=True)
class Receipt:
    """The request, the executor's signed commitment, the signed validator set, the certificate."""

    request: InferenceRequest
    signed_commitment: SignedCommitment
    validator_set: SignedValidatorSet
    votes: tuple[Vote, ...]


def check_receipt(
    receipt: Receipt,
    trusted_validators: tuple[PublicKey, ...] | None = None,
    previous: ValidatorSet | None = None,
) -> None:
    """Raise :class:`~bft.errors.ProtocolError` with a one-line reason unless valid. [RECEIPT.2]

    Needs no model and no network. The validator set must be valid on its own terms
    ([VSET.3]: a genesis set endorsed by all its members, or a later set endorsed by more than
    two thirds of ``previous``'s trust). ``trusted_validators``, when given, pins the set's
    keys instead of trusting the one the receipt names.
    """
    req = receipt.request
    req.validate()
    signed = receipt.signed_commitment
    signed.check()  # [REJECT] executor signature on the commitment is valid
    c = signed.commitment
    vset = receipt.validator_set.vset
    if trusted_validators is not None and set(trusted_validators) != set(vset.keys):
        raise Reject("receipt names a validator set other than the trusted one")
    if vset.network_id != req.network_id:
        raise Reject("validator set is for another network")
    if vset.epoch != req.epoch:
        raise Reject("validator set is for another epoch")
    check_validator_set(receipt.validator_set, previous)
    if vset.digest() != req.validator_set_digest:
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
    committee = compute_committee(vset, req.request_id, c.executor_id, req.committee_size)
    check_quorum_certificate(QuorumCertificate(signed, receipt.votes), req, committee)

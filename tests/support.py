"""Shared builders for the protocol tests: the tiny model and one honest, certified run.

Everything is deterministic: keys come from fixed seeds and the model from a fixed seed, so a
failure replays exactly. Builders are cached per process; tests wrap them in module-scoped
fixtures and must not mutate what they get (the dataclasses are frozen; the executor's store of
runs is the only mutable state, and tests only add to it).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from bft.assembler import (
    AssemblerPolicy,
    Tally,
    build_receipt,
    check_commitment,
    compute_request,
    compute_tally,
    open_disputes,
    process_confirmation_vote,
    process_vote,
)
from bft.challenge import compute_commitment_challenge
from bft.crypto import SigningKey
from bft.encoding import sha256
from bft.errors import ProtocolError
from bft.messages import (
    Commitment,
    InferenceRequest,
    OpeningResponse,
    SamplingParams,
    SignedCommitment,
    Vote,
    compute_challenge_message,
)
from bft.receipt import Receipt
from bft.types import PublicKey, Signature
from bft.validators import SignedValidatorSet, make_genesis
from bft.verifier import Session, VerifierCore
from executor.backend import TorchBackend
from executor.core import ExecutorCore
from executor.model import LoadedModel, load_tiny

NETWORK_ID = "verihive-test"
PROMPT = tuple(range(100, 120))  # 20 prompt tokens
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=8)  # 28 tokens in all
CHUNK_SIZE = 8  # 4 chunks per boundary, the last one partial (4 rows)
NUM_VALIDATORS = 6  # f = 1: committee of 4, so 2 validators sit outside every committee
REQUEST_ID = bytes(range(16))


def make_key(label: str) -> SigningKey:
    """Return the deterministic key named ``label``."""
    return SigningKey.from_seed(sha256(label.encode()))


@functools.cache
def get_tiny() -> tuple[LoadedModel, TorchBackend]:
    """Return the tiny seeded model (4 layers, hidden 64) and a torch backend over it."""
    lm = load_tiny()
    return lm, TorchBackend(lm.model)


@dataclass(frozen=True)
class Verification:
    """One verifier's pass over one commitment: its last session, the openings, its vote.

    ``session`` is the session whose challenge the vote reports (the escalated one after a grey
    band); ``responses`` holds every opening response served, in order (one per session).
    """

    session: Session
    responses: tuple[OpeningResponse, ...]
    vote: Vote


def make_session(
    verifier: VerifierCore,
    request: InferenceRequest,
    signed: SignedCommitment,
    escalated: bool = False,
) -> Session:
    """Return ``verifier``'s session for ``signed`` without the [VERIFY.1] commitment check."""
    sig = verifier.key.sign(compute_challenge_message(verifier.network_id, signed.digest))
    challenge = compute_commitment_challenge(sig, signed.commitment, request, escalated)
    return Session(request, signed, sig, challenge, escalated)


def verify(
    verifier: VerifierCore,
    executor: ExecutorCore,
    request: InferenceRequest,
    signed: SignedCommitment,
    check_commitments: bool = True,
) -> Verification:
    """Drive ``verifier`` over ``signed`` as the gRPC service does, with ``executor`` serving.

    [VERIFY.1] first (a problem is a REJECT without openings), then openings until a vote; an
    executor that refuses openings gets UNAVAILABLE. ``check_commitments=False`` skips
    [VERIFY.1], to build votes that only a faulty verifier would sign.
    """
    session = make_session(verifier, request, signed)
    state: Session | Vote = verifier.start(request, signed) if check_commitments else session
    responses = []
    while isinstance(state, Session):
        session = state
        try:
            response = executor.on_open(signed.digest, session.challenge.required_tiles())
        except ProtocolError as exc:
            state = verifier.on_unavailable(session, str(exc))
            break
        responses.append(response)
        state = verifier.on_openings(session, response)
    return Verification(session, tuple(responses), state)


@dataclass(frozen=True)
class Run:
    """One executed request with every committee member's session, openings and vote."""

    request: InferenceRequest
    signed: SignedCommitment
    sessions: dict[PublicKey, Session]
    responses: dict[PublicKey, OpeningResponse]
    votes: tuple[Vote, ...]
    tally: Tally


@dataclass(frozen=True)
class Network:
    """Validators with their verifier cores, one honest executor and the assembler policy."""

    lm: LoadedModel
    backend: TorchBackend
    policy: AssemblerPolicy
    validator_keys: tuple[SigningKey, ...]
    verifiers: dict[PublicKey, VerifierCore]
    executor_key: SigningKey
    executor: ExecutorCore
    validator_set: SignedValidatorSet

    @property
    def validators(self) -> tuple[PublicKey, ...]:
        """Return the validator set's public keys."""
        return tuple(k.public_key for k in self.validator_keys)

    def key_of(self, public_key: PublicKey) -> SigningKey:
        """Return the validator key whose public key is ``public_key``."""
        return next(k for k in self.validator_keys if k.public_key == public_key)

    def request(
        self,
        request_id: bytes = REQUEST_ID,
        prompt: tuple[int, ...] = PROMPT,
        sampling: SamplingParams = SAMPLING,
        **policy: Any,
    ) -> InferenceRequest:
        """Return the assembler's request for ``prompt``; ``policy`` overrides the policy's
        fields (e.g. ``layers_per_verifier``, ``positions_per_verifier``)."""
        return compute_request(
            dataclasses.replace(self.policy, **policy),
            request_id,
            self.lm.model_id,
            prompt,
            sampling,
            self.validator_set.vset,
        )

    def run(
        self,
        request: InferenceRequest,
        executor: ExecutorCore | None = None,
        check_commitments: bool = True,
        check_at_assembler: bool = True,
        confirm: bool = True,
    ) -> Run:
        """Execute ``request`` on ``executor`` (default: the honest one) and collect all votes.

        Each verifier acts as the gRPC service does (see :func:`verify`).
        ``check_commitments=False`` skips [VERIFY.1], to build votes that only a faulty verifier
        would sign; ``check_at_assembler=False`` skips the assembler's [ASM.2], so that verifiers
        see commitments an assembler would refuse. ``sessions`` holds each member's last
        session and ``responses`` the last openings it was served (none after a [VERIFY.1]
        REJECT). ``confirm`` runs the confirmation round of every REJECT with every committee
        member's own audit ([CONFIRM.1]); without it the tally stays DISPUTED.
        """
        ex = executor or self.executor
        signed = ex.on_execute(request)
        if check_at_assembler:
            check_commitment(request, signed, ex.key.node_id)
        tally = compute_tally(request, signed, self.validator_set.vset)
        sessions, responses, votes = {}, {}, []
        for pk in tally.committee:
            v = verify(self.verifiers[pk], ex, request, signed, check_commitments)
            sessions[pk] = v.session
            if v.responses:
                responses[pk] = v.responses[-1]
            votes.append(v.vote)
            tally = process_vote(tally, v.vote)
        if confirm:
            tally = open_disputes(tally)
            for d in tally.disputes:
                for pk in tally.committee:
                    conf = self.verifiers[pk].confirm(request, signed, d.accusation)
                    if conf is not None:
                        tally = process_confirmation_vote(tally, conf)
        return Run(request, signed, sessions, responses, tuple(votes), tally)


@functools.cache
def get_network() -> Network:
    """Return the shared test network (f = 1, two layers per verifier)."""
    lm, backend = get_tiny()
    policy = AssemblerPolicy(NETWORK_ID, f=1, layers_per_verifier=2)
    keys = tuple(make_key(f"validator-{i}") for i in range(NUM_VALIDATORS))
    verifiers = {
        k.public_key: VerifierCore(
            k,
            backend,
            lm.model_id,
            backend.info.num_layers,
            backend.info.hidden_size,
            NETWORK_ID,
        )
        for k in keys
    }
    executor_key = make_key("executor")
    executor = ExecutorCore(executor_key, backend, lm.model_id, NETWORK_ID, CHUNK_SIZE)
    genesis = make_genesis(NETWORK_ID, keys)
    return Network(lm, backend, policy, keys, verifiers, executor_key, executor, genesis)


@functools.cache
def get_honest_run() -> Run:
    """Return the honest run of the default request."""
    net = get_network()
    return net.run(net.request())


@functools.cache
def get_receipt() -> Receipt:
    """Return the receipt of the honest run (all four committee votes are ACCEPT)."""
    return build_receipt(get_honest_run().tally, get_network().validator_set)


def resign_vote(vote: Vote, key: SigningKey, **changes: Any) -> Vote:
    """Return ``vote`` with ``changes`` applied and a fresh, valid signature by ``key``."""
    unsigned = dataclasses.replace(vote, **changes, signature=Signature(b""))
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.signing_root()))


def resign_commitment(
    signed: SignedCommitment, key: SigningKey, **changes: Any
) -> SignedCommitment:
    """Return ``signed`` with ``changes`` applied to its commitment, re-signed by ``key``."""
    c: Commitment = dataclasses.replace(signed.commitment, **changes)
    return SignedCommitment(c, key.sign(c.signing_root()))


def resign_response(response: OpeningResponse, key: SigningKey, **changes: Any) -> OpeningResponse:
    """Return ``response`` with ``changes`` applied and a fresh, valid signature by ``key``."""
    unsigned = dataclasses.replace(response, **changes, signature=Signature(b""))
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.signing_root()))

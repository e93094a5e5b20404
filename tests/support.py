"""Shared builders for the protocol tests: the tiny model and one honest, certified run.

Everything is deterministic: keys come from fixed seeds and the model from a fixed seed, so a
failure replays exactly. Builders are cached per process; tests wrap them in module-scoped
fixtures and must not mutate what they get (the dataclasses are frozen; the executor's store of
runs is the only mutable state, and tests only add to it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from bft.assembler import AssemblerPolicy, Tally, build_receipt, compute_request, compute_tally
from bft.attempt import Attempt, Confirm, Contact, Verify
from bft.challenge import Challenge, compute_commitment_challenge
from bft.confirmation import Confirmation
from bft.crypto import SigningKey
from bft.encoding import sha256
from bft.errors import ProtocolError
from bft.messages import (
    Commitment,
    InferenceRequest,
    OpeningResponse,
    SamplingParams,
    SignedCommitment,
    Verdict,
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
from simnet.executors import LayerTamperExecutor
from verihive.inprocess import Calls, drive

NETWORK_ID = "verihive-test"
PROMPT = tuple(range(100, 120))  # 20 prompt tokens
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=8)  # 28 tokens in all
CHUNK_SIZE = 8  # 4 chunks per boundary, the last one partial (4 rows)
NUM_VALIDATORS = 6  # f = 1: committee of 4, so 2 validators sit outside every committee
REQUEST_ID = bytes(range(16))
SEARCH_MISS = 1e-9
"""The most probability with which a search of :func:`find_execution` may fail by chance."""


def make_key(label: str) -> SigningKey:
    """Return the deterministic key named ``label``."""
    return SigningKey.from_seed(sha256(label.encode()))


ASSEMBLER_KEY = make_key("assembler")
"""The key of the assembler the test nodes admit ([ADMIT.1])."""
ADMITTED = frozenset({ASSEMBLER_KEY.public_key})


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
        """Run ``request`` on ``executor`` (default: the honest one) through the attempt machine.

        The assembler's :class:`Attempt` drives it ([ASM.1]); each verifier acts as the gRPC
        service does (see :func:`verify`). ``check_commitments=False`` skips [VERIFY.1], to
        build votes that only a faulty verifier would sign; ``check_at_assembler=False`` skips
        the assembler's [ASM.2], so that verifiers see commitments an assembler would refuse.
        ``sessions`` holds each member's last session and ``responses`` the last openings it
        was served (none after a [VERIFY.1] REJECT). ``confirm=False`` stops when the votes
        are in: ``tally`` is the votes' tally, before its disputes are opened ([CONFIRM.1]).
        """
        ex = executor or self.executor
        sessions: dict[PublicKey, Session] = {}
        responses: dict[PublicKey, OpeningResponse] = {}
        votes: list[Vote] = []

        def on_verify(action: Verify) -> Vote:
            pk = action.verifier.key
            v = verify(self.verifiers[pk], ex, action.request, action.signed, check_commitments)
            sessions[pk] = v.session
            if v.responses:
                responses[pk] = v.responses[-1]
            votes.append(v.vote)
            return v.vote

        def on_confirm(action: Confirm) -> Confirmation | None:
            if not confirm:
                return None
            core = self.verifiers[action.verifier.key]
            return core.confirm(action.request, action.signed, action.accusation)

        attempt = Attempt(
            0,
            request,
            Contact(ex.key.public_key, "executor"),
            self.validator_set.vset,
            self.contacts,
            checks_commitment=check_at_assembler,
        )
        calls = Calls(lambda a: ex.on_execute(a.request), on_verify, on_confirm)
        drive(attempt, calls, deadlines=confirm)
        tally = attempt.tally
        if tally is None:
            raise ProtocolError(f"the attempt failed before any vote: {attempt.result}")
        if not confirm:  # open_disputes only adds disputes: this is the tally it started from
            tally = dataclasses.replace(tally, disputes=())
        return Run(request, tally.signed, sessions, responses, tuple(votes), tally)

    @property
    def contacts(self) -> dict[PublicKey, tuple[Contact, ...]]:
        """Return every validator's one address (its label)."""
        return {pk: (Contact(pk, f"validator-{i}"),) for i, pk in enumerate(self.validators)}


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


# --- searches: requests whose challenges have a wanted property


def search_bound(p: float) -> int:
    """Return the least ``n`` with ``(1 - p) ** n < SEARCH_MISS``: how many independent tries of
    a property of probability ``p`` (at least) find it but with probability below
    :data:`SEARCH_MISS`."""
    assert 0 < p < 1
    return math.floor(math.log(SEARCH_MISS) / math.log1p(-p)) + 1


def search_id(label: str, i: int) -> bytes:
    """Return the ``i``-th request id of the search named ``label``."""
    return sha256(f"{label}-{i}".encode())[:16]


def committee_challenges(
    net: Network, request: InferenceRequest, signed: SignedCommitment
) -> dict[PublicKey, Challenge]:
    """Return each committee member's base challenge for ``signed``, in committee order, as its
    verifier core draws it ([CHAL.2]; before any escalation)."""
    committee = compute_tally(request, signed, net.validator_set.vset).committee
    return {pk: make_session(net.verifiers[pk], request, signed).challenge for pk in committee}


def sees_layer_lie(challenge: Challenge, lied: Collection[int], sketch: bool = True) -> bool:
    """Return whether ``challenge`` reaches a lie told in the layers ``lied`` by an executor that
    recomputes every later layer honestly from the lie: it samples a lied layer ([GUAR.2]) or,
    when ``sketch``, draws the whole-sequence sketch check, which the lie reaches through the
    last boundary ([SKETCH.4])."""
    layers = {lc.layer for lc in challenge.layers}
    return bool(layers & set(lied)) or (sketch and challenge.sequence_check)


@dataclass(frozen=True)
class Execution:
    """One executed request and its committee's base challenges (see :func:`find_execution`).

    ``lied_layers``: the layers a :class:`LayerTamperExecutor` tampered on this execution
    (empty for any other executor). A request executed before keeps its first commitment
    ([COMMIT.5]) while the executor draws its layers anew: search a ``selective`` executor only
    with fresh labels.
    """

    request: InferenceRequest
    signed: SignedCommitment
    challenges: dict[PublicKey, Challenge]
    lied_layers: frozenset[int]


def find_execution(
    net: Network,
    executor: ExecutorCore,
    label: str,
    p: float,
    wanted: Callable[[Execution], bool],
    **policy: Any,
) -> Execution:
    """Return the first execution by ``executor`` of the requests with ids
    ``search_id(label, i)`` (and ``policy``) that ``wanted`` accepts.

    Which committee member's challenge reaches what comes from the commitment digest, hence
    from the float bits of the executor's hidden states, which differ between CPUs and torch
    kernels (style rule 14a). A test that needs, say, exactly one member to see a lie searches
    for such a request here instead of hard-coding an id that has it on one machine. ``p`` is a
    lower bound, derived by the caller, on the probability that one request has the property
    (each member's challenge is an independent draw, seeded by its own signature); the search
    tries :func:`search_bound` ``(p)`` requests, so it fails by chance with probability below
    :data:`SEARCH_MISS`. Executions are cheap on the tiny model (about 25 ms) and the executor
    keeps them ([COMMIT.5]): running a found request again gets the same commitment. It holds
    the tiles of its last ``max_stored`` runs only, though: search once per executor, or on a
    twin (same key, same behaviour, so the same commitments).
    """
    bound = search_bound(p)
    for i in range(bound):
        request = net.request(request_id=search_id(label, i), **policy)
        signed = executor.on_execute(request)
        lied = executor.lied_layers[-1] if isinstance(executor, LayerTamperExecutor) else []
        found = Execution(
            request, signed, committee_challenges(net, request, signed), frozenset(lied)
        )
        if wanted(found):
            return found
    raise AssertionError(
        f"none of {bound} {label!r} requests has the wanted property (probability >= {p} each)"
    )


def has_one_catcher_by_layer(found: Execution) -> bool:
    """Return whether exactly one member's challenge samples a lied layer of ``found`` and no
    member draws the sketch check: one member sees the lie, with LAYER evidence."""
    sampled = [
        sees_layer_lie(ch, found.lied_layers, sketch=False) for ch in found.challenges.values()
    ]
    drawn = any(ch.sequence_check for ch in found.challenges.values())
    return sum(sampled) == 1 and not drawn


def find_one_catcher_by_layer(net: Network, executor: LayerTamperExecutor, label: str) -> Execution:
    """Return an execution of ``executor``'s lie in one layer that exactly one committee member
    sees, by its sampled layer (see :func:`has_one_catcher_by_layer`).

    Under the test network's policy each member samples the lied layer with probability
    k / L = 2 / 4 and draws the sketch check with q = 0.1, independently: it catches by layer
    alone with probability 1/2 * 0.9 and misses with probability 1/2 * 0.9, so one request has
    the property with probability 4 * 0.45 * 0.45**3 = 0.164.
    """
    policy = net.policy
    assert (policy.layers_per_verifier, policy.sequence_check_ppm) == (2, 100_000)
    assert net.backend.info.num_layers == 4
    catch = miss = 2 / 4 * (1 - 0.1)
    return find_execution(net, executor, label, 4 * catch * miss**3, has_one_catcher_by_layer)


def check_votes_follow_challenges(run: Run, found: Execution) -> None:
    """Check that each vote of ``run`` REJECTs exactly when its member's challenge in ``found``
    reaches the lied layers (:func:`sees_layer_lie`), and ACCEPTs otherwise."""
    for vote in run.votes:
        sees = sees_layer_lie(found.challenges[vote.verifier_key], found.lied_layers)
        assert vote.verdict is (Verdict.REJECT if sees else Verdict.ACCEPT), vote.verifier_key


def run_together(calls: Sequence[Callable[[], Any]], timeout_s: float = 600.0) -> list[Any]:
    """Run ``calls`` on one thread each, released together by a barrier; return each result.

    A call that raises leaves its exception in its place, for the test to inspect.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the test inspects what each caller got
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
    assert not any(t.is_alive() for t in threads), "a call never returned"
    return results

"""Committees with byzantine verifiers, driven message by message into the sans-I/O tally.

One request (tiny model, ``f = 1``, committee of ``3f+1 = 4`` drawn by the test network of
:mod:`tests.support`) is executed by an honest or a byzantine executor (``int8-weights``: a
whole-run cheat every check sees; ``skip-layer``: a partial cheat only the members that sample
the skipped layer or draw the sketch check see; ``bad-opening``: model-free evidence). Which
members see ``skip-layer`` depends on their challenges, hence on the commitment's float bits:
the requests are searched (:func:`get_request_id`). Each committee member is honest or
byzantine; a byzantine member behaves as one of

- ``always-accept``: a lying (lazy) ACCEPT with made-up measurements; refutes every accusation;
- ``always-reject``: a lying REJECT with made-up layer evidence; confirms every accusation;
- ``double-vote``: :meth:`DoubleVoteVerifier.run_both`, an honest vote and its opposite, both
  signed with one key; confirms honestly;
- ``silent``: no vote and no confirmation;
- ``twins``: two :class:`VerifierCore` instances behind one key, one honest and one lying
  (always-accept or always-reject), both voting and both confirming.

:class:`CommitteeMachine` (hypothesis stateful) feeds the votes and confirmations in orders
hypothesis chooses into :func:`process_vote`, :func:`open_disputes` and
:func:`process_confirmation_vote`, with at most ``f`` byzantine members, and checks after
every step and once every message has arrived:

(a) no CERTIFIED outcome for a commitment an honest member's own check rejected ([GUAR.2],
    [CONFIRM.1]: a single honest REJECT blocks the certificate and its accusation is
    confirmed by the ``2f+1`` honest members, [CONFIRM.3]); with every message in, the
    outcome is exactly REJECTED when some counted REJECT's evidence is proven and CERTIFIED
    otherwise (an honest executor is always certified: liveness under ``f`` byzantine
    members, [GUAR.3]);
(b) every certificate (``build_receipt``) passes ``check_receipt`` against the network's
    validator set and has ``>= 2f+1`` distinct committee signers, ``>= f+1`` of them honest
    ([GUAR.1], [QUORUM.3]);
(c) no slash names the honest executor and no honest verifier is slashed or penalised
    ([GUAR.4], [SLASH.1], [SLASH.2]);
(d) every slash passes ``check_slash`` and every penalty ``check_penalty``; the evidence of
    every executor slash, serialised and audited as ``bft-verify audit`` does (protobuf round
    trip, the honest model, the calibrated thresholds), is proven ([GUAR.6], [EVID.4],
    [SLASH.1]);
(e) a double-voting key is slashed for ``verifier-double-vote`` ([QUORUM.5], [SLASH.1]) and
    a byzantine accuser whose made-up accusation is refuted is penalised ([SLASH.2]); a refuted
    accusation is exactly one whose evidence the honest model does not prove.

``test_every_behaviour_against_every_executor`` runs the same checks on every (executor,
behaviour, member) combination in arrival order and in reverse, so each case is covered
whatever hypothesis draws.

With ``f+1 = 2`` byzantine members the guarantees that need ``f`` break, and the tests show
how, and that the break is detected ([GUAR.7]):

- ``test_two_lying_rejecters_cannot_slash_an_honest_executor``: two always-reject members
  confirm each other's made-up accusations, but ``2f+1 = 3`` confirmations are needed and the
  two honest members refute: every round is UNDECIDED, the attempt FAILS (liveness breaks,
  [GUAR.3]), nobody is slashed (no false slash, [GUAR.4]) and, since the two honest REFUTEs are
  short of ``2f+1`` too, nobody is penalised either ([CONFIRM.3]: "neither happens on fewer").
  Detected: ``bft-verify audit`` finds both accusations not proven.
- ``test_two_lazy_accepters_and_a_partial_lie``: a ``skip-layer`` executor whose lie only one
  honest member's sampled layers see, and two always-accept members. The honest REJECT still
  blocks the certificate ([CONFIRM.1]), but its round gets 2 CONFIRMs and 2 REFUTEs: UNDECIDED,
  the attempt FAILS, and the cheating executor goes unslashed (accountability breaks,
  [SLASH.1]). Safety of receipts breaks too: the three ACCEPTs (two lazy, one honest that
  missed the layer) form a receipt that ``check_receipt`` accepts ([GUAR.1] promises ``f+1``
  honest signers; here there is one), so an assembler that drops the REJECT ([GUAR.2]) can
  serve the lie. Detected: the honest member's evidence is proven by ``bft-verify audit``, and
  ``spot_audit_vote`` on the lazy ACCEPTs fails while the honest ACCEPT passes ([VOTE.4]).

``test_a_confirmed_fraud_is_rejected_whatever_round_the_deadline_cuts`` (``f = 1``): an honest
accusation confirmed by ``2f+1`` makes the attempt REJECTED ([ASM.4]: "some round is CONFIRMED"
comes first) even when the tally closes before a liar's earlier round is decided, whichever
REJECT arrived first (a regression test: the outcome used to depend on that order).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bft.assembler import (
    Outcome,
    Tally,
    build_receipt,
    check_commitment,
    compute_tally,
    get_final_outcome,
    get_outcome,
)
from bft.attempt import (
    Action,
    Attempt,
    CommitmentReceived,
    Confirm,
    ConfirmationReceived,
    Contact,
    Event,
    Execute,
    Phase,
    Refused,
    TimerFired,
    Verify,
    VoteReceived,
)
from bft.confirmation import Confirmation, DisputeOutcome, Finding, get_dispute_outcome
from bft.errors import Ignore, ProtocolError
from bft.evidence import AuditModel, audit_evidence, spot_audit_vote
from bft.measure import Thresholds
from bft.messages import (
    Evidence,
    InferenceRequest,
    OpeningResponse,
    SignedCommitment,
    Verdict,
    Vote,
)
from bft.receipt import Receipt, check_receipt
from bft.thresholds import load_thresholds
from bft.types import Digest, PublicKey
from bft.verifier import Session, VerifierCore
from executor.core import ExecutorCore
from proto import convert
from proto import verihive_pb2 as pb
from simnet.executors import make_byzantine_executor
from simnet.verifiers import DoubleVoteVerifier, make_byzantine_verifier
from slashing.records import (
    Offence,
    Penalty,
    SlashRecord,
    check_penalty,
    check_slash,
    compute_records,
)
from tests.support import (
    CHUNK_SIZE,
    NETWORK_ID,
    Execution,
    find_execution,
    get_network,
    has_one_catcher_by_layer,
    make_key,
    make_session,
    sees_layer_lie,
    verify,
)
from verihive.cli import verify_main

F = 1
EXECUTOR_MODES = ("honest", "int8-weights", "skip-layer", "bad-opening")
BEHAVIOURS = ("always-accept", "always-reject", "double-vote", "silent", "twins")
LIARS = ("always-accept", "always-reject")
"""How the lying half of a Twins pair votes and confirms."""
SKIP_LAYER_CATCHERS = (1, 0, 2)
"""How many members see the ``skip-layer`` lie on request 0, 1 and 2 of :func:`get_request_id`:
exactly one (by its sampled layer), none (the lie escapes, as a partial cheat may) and two."""


# --- cached fixtures: one execution and one honest vote per (executor, request, member)


@functools.cache
def get_executor(mode: str, twin: bool = False) -> ExecutorCore:
    """Return the executor of ``mode`` (``honest``: the network's own); ``twin``: another
    byzantine one with the same key and the same lie, which signs the same commitments."""
    net = get_network()
    if mode == "honest":
        assert not twin
        return net.executor
    key = make_key(f"byzantine-executor-{mode}")
    return make_byzantine_executor(mode, key, net.lm.model, net.lm.model_id, NETWORK_ID, CHUNK_SIZE)


def sees_skip(found: Execution) -> list[bool]:
    """Return whether each committee member's challenge reaches the skipped layer."""
    return [sees_layer_lie(ch, found.lied_layers) for ch in found.challenges.values()]


# Each member's challenge is its own draw (seeded by its signature): it samples the skipped
# layer with probability 2/4 (k = 2 of L = 4) and draws the sketch check with q = 0.1, so it
# misses the lie with probability 1/2 * 0.9 = 0.45. Lower bounds on the probability that one
# request has the wanted property (binomial over the 3f+1 = 4 members):
_SKIP_LAYER_SEARCH = (
    (4 * 0.45**4, has_one_catcher_by_layer),  # one samples it, none draws the sketch: 0.164
    (0.45**4, lambda found: not any(sees_skip(found))),  # 0.041
    (6 * 0.55**2 * 0.45**2, lambda found: sum(sees_skip(found)) == 2),  # 0.367
)


@functools.cache
def get_request_id(index: int) -> bytes:
    """Return a request id on which ``SKIP_LAYER_CATCHERS[index]`` members see the lie.

    Which members see it comes from their challenges, hence from the float bits of the
    commitment (style rule 14a): searched, never hard-coded. The default policy must be the
    one the probabilities above assume.
    """
    net = get_network()
    assert (net.policy.layers_per_verifier, net.policy.sequence_check_ppm) == (2, 100_000)
    p, wanted = _SKIP_LAYER_SEARCH[index]
    # Searched on a twin: an executor holds the tiles of its last DEFAULT_MAX_STORED runs only,
    # and a long search would evict those of a request found before.
    twin = get_executor("skip-layer", twin=True)
    found = find_execution(net, twin, "bft-stateful", p, wanted)
    assert sum(sees_skip(found)) == SKIP_LAYER_CATCHERS[index]
    return found.request.request_id


@dataclass(frozen=True)
class Scenario:
    """One request executed by one executor, with every member's honest vote."""

    executor_mode: str
    executor: ExecutorCore
    request: InferenceRequest
    signed: SignedCommitment
    tally: Tally  # empty: just the committee
    honest_votes: dict[PublicKey, Vote]
    sessions: dict[PublicKey, Session]  # each member's last session (escalated after grey)

    @property
    def committee(self) -> tuple[PublicKey, ...]:
        return self.tally.committee

    def fetch(self, session: Session) -> OpeningResponse:
        """Serve ``session``'s openings from the executor (the gRPC ``Open`` call)."""
        return self.executor.on_open(self.signed.digest, session.challenge.required_tiles())


@functools.cache
def get_scenario(executor_mode: str, request_index: int) -> Scenario:
    """Return the executed request and the honest vote of every committee member."""
    net = get_network()
    ex = get_executor(executor_mode)
    request = net.request(request_id=get_request_id(request_index))
    signed = ex.on_execute(request)
    if executor_mode == "skip-layer":  # what the search saw
        assert signed == get_executor(executor_mode, twin=True).on_execute(request)
    check_commitment(request, signed, ex.key.node_id)
    tally = compute_tally(request, signed, net.validator_set.vset)
    done = {pk: verify(net.verifiers[pk], ex, request, signed) for pk in tally.committee}
    votes = {pk: v.vote for pk, v in done.items()}
    sessions = {pk: v.session for pk, v in done.items()}
    return Scenario(executor_mode, ex, request, signed, tally, votes, sessions)


def get_auditor() -> AuditModel:
    """Return the honest model as an auditor."""
    net = get_network()
    info = net.backend.info
    return AuditModel(net.backend, net.lm.model_id, info.num_layers, info.hidden_size)


@functools.cache
def get_calibrated() -> Thresholds:
    """Return the thresholds ``bft-verify audit`` loads."""
    return load_thresholds()


_proven: dict[Digest, bool] = {}


def is_proven(evidence: Evidence) -> bool:
    """Return whether the honest members' own audit (default thresholds) proves ``evidence``."""
    d = evidence.digest()
    if d not in _proven:
        _proven[d] = audit_evidence(evidence, get_auditor(), Thresholds()).proven
    return _proven[d]


def audit_as_cli(evidence: Evidence) -> bool:
    """Return ``bft-verify audit``'s verdict: protobuf round trip, honest model, calibration."""
    wire = convert.evidence_to_pb(evidence).SerializeToString()
    message = pb.Evidence()
    message.ParseFromString(wire)
    parsed = convert.evidence_from_pb(message)
    return audit_evidence(parsed, get_auditor(), get_calibrated()).proven


def make_core(pk: PublicKey, mode: str | None = None) -> VerifierCore:
    """Return a fresh core with ``pk``'s key: honest, or lying as ``mode``."""
    net = get_network()
    base = net.verifiers[pk]
    honest = VerifierCore(
        base.key,
        base.model,
        base.model_id,
        base.num_layers,
        base.hidden_size,
        base.network_id,
        base.thresholds,
    )
    return honest if mode is None else make_byzantine_verifier(mode, honest)


@functools.cache
def get_byzantine_votes(
    executor_mode: str, request_index: int, pk: PublicKey, behaviour: str, liar: str
) -> tuple[Vote, ...]:
    """Return every vote member ``pk`` sends when it behaves as ``behaviour``."""
    sc = get_scenario(executor_mode, request_index)
    req, signed = sc.request, sc.signed
    if behaviour == "silent":
        return ()
    if behaviour == "double-vote":
        core = make_core(pk, "double-vote")
        assert isinstance(core, DoubleVoteVerifier)
        honest, opposite = core.run_both(req, signed, sc.fetch)
        assert honest == sc.honest_votes[pk]
        assert {honest.verdict, opposite.verdict} == {Verdict.ACCEPT, Verdict.REJECT}
        return honest, opposite
    if behaviour == "twins":
        return (
            make_core(pk).run(req, signed, sc.fetch),
            make_core(pk, liar).run(req, signed, sc.fetch),
        )
    return (make_core(pk, behaviour).run(req, signed, sc.fetch),)


_findings: dict[tuple[PublicKey, str, str, Digest], tuple[Confirmation, ...]] = {}


def get_findings(
    sc: Scenario, pk: PublicKey, behaviour: str, liar: str, accusation: Vote
) -> tuple[Confirmation, ...]:
    """Return the confirmations member ``pk`` sends on ``accusation`` as ``behaviour``
    (``honest``: its own audit; Twins: both halves answer)."""
    key = (pk, behaviour, liar, accusation.signing_root())
    if key not in _findings:
        net = get_network()
        req, signed = sc.request, sc.signed
        if behaviour == "honest":
            cores = [net.verifiers[pk]]
        elif behaviour == "silent":
            cores = []
        elif behaviour == "twins":
            cores = [make_core(pk), make_core(pk, liar)]
        else:
            cores = [make_core(pk, behaviour)]
        found = (c.confirm(req, signed, accusation) for c in cores)
        _findings[key] = tuple(c for c in found if c is not None)
    return _findings[key]


# --- the checks


@dataclass
class Drive:
    """One committee's attempt, driven message by message through the real attempt machine.

    Every committee member answers at one address, or two for ``double-vote`` (the honest vote
    at one, its opposite at the other) and ``twins`` (one per half): the machine asks each
    address, as the gRPC assembler does ([ASM.7], [QUORUM.5]). The executor's commitment is
    delivered at once; each later answer waits in ``pending`` until a rule delivers it.
    ``disturbed`` is set when an answer was lost or a deadline cut a step short while an answer
    was on its way: then only the safety checks apply, not the exact outcome.
    """

    sc: Scenario
    request_index: int
    byzantine: dict[PublicKey, tuple[str, str]]  # member -> (behaviour, liar)
    attempt: Attempt
    contacts: dict[str, tuple[PublicKey, int]]  # address -> (member, index of its answer)
    pending: list[Event] = field(default_factory=list)
    delivered: list[Event] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    silent: set[int] = field(default_factory=set)
    """Calls nobody will answer (to silent members)."""
    disturbed: bool = False

    @classmethod
    def start(
        cls, executor_mode: str, request_index: int, byzantine: Iterable[tuple[int, str, str]]
    ) -> Drive:
        sc = get_scenario(executor_mode, request_index)
        byz = {sc.committee[i]: (b, liar) for i, b, liar in byzantine}
        contacts: dict[str, tuple[PublicKey, int]] = {}
        by_key: dict[PublicKey, tuple[Contact, ...]] = {}
        for i, pk in enumerate(sc.committee):
            b = byz.get(pk, ("honest", ""))[0]
            addresses = 2 if b in ("double-vote", "twins") else 1
            by_key[pk] = tuple(Contact(pk, f"member-{i}/{j}") for j in range(addresses))
            contacts.update({c.address: (pk, j) for j, c in enumerate(by_key[pk])})
        vset = get_network().validator_set.vset
        executor = Contact(sc.signed.commitment.executor_key, "executor")
        attempt = Attempt(0, sc.request, executor, vset, by_key)
        drive = cls(sc, request_index, byz, attempt, contacts)
        drive.perform(attempt.start())
        (execute,) = drive.pending
        assert isinstance(execute, CommitmentReceived)
        drive.deliver(0)
        return drive

    @property
    def tally(self) -> Tally:
        tally = self.attempt.tally
        assert tally is not None
        return tally

    @property
    def honest_members(self) -> tuple[PublicKey, ...]:
        return tuple(pk for pk in self.sc.committee if pk not in self.byzantine)

    @property
    def honest_rejected(self) -> bool:
        """Whether an honest member's own check rejected the commitment."""
        return any(self.sc.honest_votes[pk].verdict is Verdict.REJECT for pk in self.honest_members)

    @property
    def executor_honest(self) -> bool:
        return self.sc.executor_mode == "honest"

    @property
    def settled(self) -> bool:
        return self.attempt.result is not None

    # -- the driver

    def perform(self, actions: list[Action]) -> None:
        """Put the answer to each call of ``actions`` on its way."""
        for action in actions:
            if isinstance(action, Execute):
                self.pending.append(CommitmentReceived(action.call, self.sc.signed))
            elif isinstance(action, Verify):
                vote = self.vote_of(action.verifier)
                if vote is None:
                    self.silent.add(action.call)
                else:
                    self.pending.append(VoteReceived(action.call, vote))
            elif isinstance(action, Confirm):
                conf = self.finding_of(action.verifier, action.accusation)
                if conf is None:
                    self.silent.add(action.call)
                else:
                    self.pending.append(ConfirmationReceived(action.call, conf))
            elif isinstance(action, Refused):
                self.refused.append(action)

    def vote_of(self, contact: Contact) -> Vote | None:
        pk, j = self.contacts[contact.address]
        if pk not in self.byzantine:
            return self.sc.honest_votes[pk]
        votes = get_byzantine_votes(*self.key(pk))
        return votes[j] if j < len(votes) else None

    def finding_of(self, contact: Contact, accusation: Vote) -> Confirmation | None:
        pk, j = self.contacts[contact.address]
        b, liar = self.byzantine.get(pk, ("honest", ""))
        findings = get_findings(self.sc, pk, b, liar, accusation)
        return findings[min(j, len(findings) - 1)] if findings else None

    def deliver_event(self, event: Event) -> None:
        """Feed ``event``; an event the machine ignores must leave it unchanged."""
        self.delivered.append(event)
        before = self.attempt.state
        try:
            actions = self.attempt.on_event(event)
        except Ignore:
            assert self.attempt.state is before, "an ignored event changed the machine"
            return
        self.perform(actions)

    def deliver(self, i: int) -> None:
        self.deliver_event(self.pending.pop(i % len(self.pending)))

    def duplicate(self, i: int) -> None:
        """Deliver an answer again: the machine waits for it no longer, so ignores it."""
        event = self.delivered[i % len(self.delivered)]
        before = self.attempt.state
        with pytest.raises(Ignore):
            self.attempt.on_event(event)
        assert self.attempt.state is before

    def drop(self, i: int) -> None:
        self.pending.pop(i % len(self.pending))
        self.disturbed = True

    def fire(self) -> None:
        """The current step's deadline."""
        timer = self.attempt.timer
        assert timer is not None
        waiting = set(self.attempt.get_pending()) - self.silent
        if waiting:
            self.disturbed = True  # an answer was still on its way
        self.deliver_event(TimerFired(timer))

    def drain(self) -> None:
        """Deliver everything on its way, in order; then let the deadlines pass."""
        while not self.settled:
            while self.pending:
                self.deliver(0)
            if not self.settled:
                self.fire()

    # -- checks

    def check_step(self) -> None:
        """What must hold at every point of the attempt: (a), (b), (c), (d) on the records."""
        for r in self.refused:  # only a byzantine member's answer is refused
            pk, _ = self.contacts[r.source.address]
            assert pk in self.byzantine, r.reason
        if self.attempt.tally is None:
            return
        outcome = get_outcome(self.tally)
        if outcome is Outcome.CERTIFIED:
            self.check_certificate()
        if outcome is Outcome.REJECTED:
            assert not self.executor_honest, "an honest executor's attempt was REJECTED"
        self.check_records(*compute_records(self.tally))

    def check_certificate(self) -> None:
        """(a) and (b)."""
        # [GUAR.2]: an honest REJECT that reached the machine blocks the certificate.
        counted = [v for v in self.tally.votes if v.verifier_key in self.honest_members]
        assert all(v.verdict is Verdict.ACCEPT for v in counted), "certified over an honest REJECT"
        if not self.disturbed:
            assert not self.honest_rejected, "certified a commitment an honest member rejected"
        net = get_network()
        receipt = build_receipt(self.tally, net.validator_set)
        check_receipt(receipt, trusted_validators=net.validators)
        signers = [v.verifier_key for v in receipt.votes]
        assert len(set(signers)) == len(signers) >= 2 * F + 1
        assert set(signers) <= set(self.sc.committee)
        assert len(set(signers) - set(self.byzantine)) >= F + 1
        assert all(v.verdict is Verdict.ACCEPT for v in receipt.votes)

    def check_records(
        self, slashes: tuple[SlashRecord, ...], penalties: tuple[Penalty, ...]
    ) -> None:
        """(c) and the record checks of (d)."""
        vset = get_network().validator_set.vset
        executor_key = self.sc.signed.commitment.executor_key
        for r in slashes:
            check_slash(r, vset)
            assert r.offender not in self.honest_members, "an honest verifier was slashed"
            if r.offence is Offence.VERIFIER_DOUBLE_VOTE:
                assert r.offender in self.byzantine
            else:
                assert not self.executor_honest, "the honest executor was slashed"
                assert r.offender == executor_key
        for p in penalties:
            check_penalty(p, vset)
            assert p.accuser in self.byzantine, "an honest verifier was penalised"

    def check_final(self) -> None:
        """The attempt is settled: the outcome, the records, (d) and (e)."""
        result = self.attempt.result
        assert result is not None
        self.check_step()
        if result.tally is None:  # the commitment never came
            assert self.disturbed and result.outcome is Outcome.FAILED
            return
        outcome = result.outcome
        assert outcome is get_final_outcome(self.tally)
        rejects = [v for v in self.tally.votes if v.verdict is Verdict.REJECT]
        proven = [v for v in rejects if is_proven(v.evidence)]
        slashes, penalties = compute_records(self.tally)
        self.check_records(slashes, penalties)
        executor_slashes = [r for r in slashes if r.offence is not Offence.VERIFIER_DOUBLE_VOTE]
        assert bool(executor_slashes) == (outcome is Outcome.REJECTED)
        for r in executor_slashes:  # (d): what `bft-verify audit` runs
            assert r.accusation is not None and r.accusation.evidence is not None
            assert audit_as_cli(r.accusation.evidence), r.accusation.reason
        double = {r.offender for r in slashes if r.offence is Offence.VERIFIER_DOUBLE_VOTE}
        for pk, (behaviour, _) in self.byzantine.items():
            if behaviour not in ("double-vote", "twins"):
                assert pk not in double
        if self.disturbed:
            return
        # Every message arrived in time: the outcome is exact.
        expected = Outcome.REJECTED if proven else Outcome.CERTIFIED
        assert outcome is expected, (outcome, expected)
        if self.honest_rejected:
            assert outcome is Outcome.REJECTED
        if self.executor_honest:
            assert outcome is Outcome.CERTIFIED
        rounds = self.attempt.rounds
        confirmed, refuted, undecided = (
            DisputeOutcome.CONFIRMED,
            DisputeOutcome.REFUTED,
            DisputeOutcome.UNDECIDED,
        )
        for d in self.tally.disputes:
            state = get_dispute_outcome(d, closed=True)
            if d.digest in rounds:  # 2f+1 honest members decide every round that runs
                want = confirmed if d.accusation in proven else refuted
            else:  # no round: an earlier accusation was confirmed, or hashes decided it
                assert d.confirmations == () and outcome is Outcome.REJECTED
                want = confirmed if d.proven_without_model else undecided
            assert state is want, (state, d.accusation.reason)
        penalised = {p.accuser for p in penalties}
        sent = {pk: get_byzantine_votes(*self.key(pk)) for pk in self.byzantine}
        for pk, (behaviour, _) in self.byzantine.items():
            verdicts = {v.verdict for v in sent[pk]}
            if behaviour == "double-vote":
                assert pk in double, "a double vote went unslashed"
            elif behaviour == "twins":
                assert (pk in double) == (verdicts == {Verdict.ACCEPT, Verdict.REJECT})
        for v in rejects:  # (e): a refuted accusation is penalised, a proven one is not
            d = self.tally.dispute_of(v)
            if d is not None and d.digest in rounds:
                assert (v.verifier_key in penalised) == (v not in proven)
        if not self.executor_honest:
            return
        for pk, (behaviour, _) in self.byzantine.items():
            if behaviour == "always-reject":  # its made-up accusation is refuted
                assert pk in penalised

    def key(self, pk: PublicKey) -> tuple[str, int, PublicKey, str, str]:
        b, liar = self.byzantine[pk]
        return self.sc.executor_mode, self.request_index, pk, b, liar


# --- hypothesis: up to f byzantine members; answers reordered, duplicated, dropped, cut short

byzantine_members = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(BEHAVIOURS), st.sampled_from(LIARS)),
    max_size=F,
    unique_by=lambda t: t[0],
)


class CommitteeMachine(RuleBasedStateMachine):
    """The attempt machine gets its answers in the order hypothesis picks; some twice, some
    never, some after the deadline."""

    def __init__(self) -> None:
        super().__init__()
        self.drive: Drive | None = None

    @initialize(
        executor_mode=st.sampled_from(EXECUTOR_MODES),
        request_index=st.integers(0, len(SKIP_LAYER_CATCHERS) - 1),
        byzantine=byzantine_members,
    )
    def setup(
        self, executor_mode: str, request_index: int, byzantine: list[tuple[int, str, str]]
    ) -> None:
        self.drive = Drive.start(executor_mode, request_index, byzantine)

    @precondition(lambda self: self.drive is not None and bool(self.drive.pending))
    @rule(i=st.integers(0, 15))
    def deliver(self, i: int) -> None:
        assert self.drive is not None
        self.drive.deliver(i)

    @precondition(lambda self: self.drive is not None and bool(self.drive.delivered))
    @rule(i=st.integers(0, 15))
    def duplicate(self, i: int) -> None:
        assert self.drive is not None
        self.drive.duplicate(i)

    @precondition(lambda self: self.drive is not None and bool(self.drive.pending))
    @rule(i=st.integers(0, 15))
    def drop(self, i: int) -> None:
        assert self.drive is not None
        self.drive.drop(i)

    @precondition(lambda self: self.drive is not None and not self.drive.settled)
    @rule()
    def deadline(self) -> None:
        assert self.drive is not None
        self.drive.fire()

    @invariant()
    def safe_at_every_step(self) -> None:
        if self.drive is not None:
            self.drive.check_step()

    def teardown(self) -> None:
        if self.drive is not None:  # whatever is still on its way arrives, then the deadlines
            self.drive.drain()
            self.drive.check_final()


TestCommitteeWithUpToFByzantine = CommitteeMachine.TestCase
TestCommitteeWithUpToFByzantine.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- every combination, in arrival order and reversed


@pytest.mark.parametrize("executor_mode", EXECUTOR_MODES)
@pytest.mark.parametrize(
    ("behaviour", "liar"),
    [(b, "always-accept") for b in BEHAVIOURS] + [("twins", "always-reject")],
)
def test_every_behaviour_against_every_executor(executor_mode, behaviour, liar):
    for member, reverse in itertools.product(range(3 * F + 1), (False, True)):
        drive = Drive.start(executor_mode, 0, [(member, behaviour, liar)])
        while not drive.settled:
            while drive.pending:
                drive.deliver(-1 if reverse else 0)
                drive.check_step()
            if not drive.settled:
                drive.fire()  # only silent members are still awaited
        assert not drive.disturbed
        drive.check_final()


def test_no_byzantine_member_honest_outcomes():
    # The baseline: all honest; a lie any member sees is REJECTED, one none sees is certified.
    for mode, index in itertools.product(EXECUTOR_MODES, range(len(SKIP_LAYER_CATCHERS))):
        drive = Drive.start(mode, index, [])
        drive.drain()
        assert not drive.disturbed
        drive.check_final()
        sc = drive.sc
        catchers = sum(v.verdict is Verdict.REJECT for v in sc.honest_votes.values())
        if mode == "skip-layer":
            # Exactly the members whose own challenge reaches the skipped layer REJECT.
            (lied,) = {tuple(layers) for layers in sc.executor.lied_layers}
            for pk in sc.committee:
                sees = sees_layer_lie(sc.sessions[pk].challenge, lied)
                assert sc.sessions[pk].escalated is False
                assert sc.honest_votes[pk].verdict is (Verdict.REJECT if sees else Verdict.ACCEPT)
            assert catchers == SKIP_LAYER_CATCHERS[index]
        else:
            assert catchers == (0 if mode == "honest" else 4)
        assert drive.attempt.result is not None
        outcome = drive.attempt.result.outcome
        assert outcome is (Outcome.REJECTED if catchers else Outcome.CERTIFIED), (mode, index)


# --- f+1 = 2 byzantine members


def _f_plus_one(
    executor_mode: str, byzantine: dict[int, str], votes: Iterable[int], confs: Iterable[int]
) -> Drive:
    """Return the settled drive with ``byzantine`` members: the votes arrive in the order
    ``votes``, the confirmations of each round in the order ``confs``."""
    drive = Drive.start(executor_mode, 0, [(i, b, "always-accept") for i, b in byzantine.items()])
    drive.pending = [drive.pending[i] for i in votes]
    while drive.attempt.phase is Phase.VOTING:
        drive.deliver(0)
        assert get_outcome(drive.tally) in (Outcome.PENDING, Outcome.DISPUTED)
    order = list(confs)
    while not drive.settled:  # one round at a time
        assert get_outcome(drive.tally) is Outcome.DISPUTED  # [CONFIRM.1]
        drive.pending = [drive.pending[i] for i in order]
        while drive.pending:
            drive.deliver(0)
            # Never 2f+1 either way: open until a round is complete, then undecided.
            assert get_outcome(drive.tally) in (Outcome.DISPUTED, Outcome.FAILED)
    assert not drive.disturbed
    return drive


def _write(tmp_path: Path, name: str, evidence: Evidence) -> Path:
    path = tmp_path / name
    path.write_bytes(convert.evidence_to_pb(evidence).SerializeToString())
    return path


@settings(max_examples=10, deadline=None)
@given(votes=st.permutations(range(4)), confs=st.permutations(range(4)))
def test_two_lying_rejecters_cannot_slash_an_honest_executor(votes, confs):
    drive = _f_plus_one("honest", {0: "always-reject", 1: "always-reject"}, votes, confs)
    liars = set(drive.byzantine)
    assert len(drive.tally.disputes) == 2
    for d in drive.tally.disputes:
        assert d.accusation.verifier_key in liars
        assert (d.count(Finding.CONFIRM), d.count(Finding.REFUTE)) == (2, 2)
        assert {c.verifier_key for c in d.confirmations if c.finding is Finding.CONFIRM} == liars
        assert get_dispute_outcome(d, closed=True) is DisputeOutcome.UNDECIDED
        assert not audit_as_cli(d.accusation.evidence)
    # Liveness breaks ([GUAR.3]); no false slash ([GUAR.4]); the liars go unpenalised, as
    # 2 honest REFUTEs are short of 2f+1 ([CONFIRM.3]).
    assert get_final_outcome(drive.tally) is Outcome.FAILED
    assert compute_records(drive.tally) == ((), ())
    # No certificate either: the two honest ACCEPTs are short of 2f+1.
    with pytest.raises(ProtocolError, match="needs 3"):
        check_receipt(build_receipt(drive.tally, get_network().validator_set))


def test_two_lying_rejecters_are_detected_by_bft_verify_audit(tmp_path, capsys):
    drive = _f_plus_one("honest", {0: "always-reject", 1: "always-reject"}, range(4), range(4))
    for i, d in enumerate(drive.tally.disputes):
        path = _write(tmp_path, f"made-up-{i}.pb", d.accusation.evidence)
        capsys.readouterr()
        assert verify_main(["audit", str(path), "--model", "tiny"]) == 1
        assert capsys.readouterr().out.startswith("not proven: layer:")


def _partial_lie_committee() -> tuple[int, int, tuple[int, int]]:
    """Return (the one member that sees the skip-layer lie, an honest one that misses it,
    the two members that will lie ACCEPT)."""
    sc = get_scenario("skip-layer", 0)
    verdicts = [sc.honest_votes[pk].verdict for pk in sc.committee]
    catchers = [i for i, v in enumerate(verdicts) if v is Verdict.REJECT]
    missers = [i for i, v in enumerate(verdicts) if v is Verdict.ACCEPT]
    assert len(catchers) == 1 and len(missers) == 3, verdicts  # as get_request_id(0) searched
    return catchers[0], missers[0], (missers[1], missers[2])


@settings(max_examples=10, deadline=None)
@given(votes=st.permutations(range(4)), confs=st.permutations(range(4)))
def test_two_lazy_accepters_and_a_partial_lie(votes, confs):
    catcher, misser, (b1, b2) = _partial_lie_committee()
    drive = _f_plus_one("skip-layer", {b1: "always-accept", b2: "always-accept"}, votes, confs)
    sc = drive.sc
    (dispute,) = drive.tally.disputes
    assert dispute.accusation == sc.honest_votes[sc.committee[catcher]]
    assert (dispute.count(Finding.CONFIRM), dispute.count(Finding.REFUTE)) == (2, 2)
    # Safety of this tally holds (the honest REJECT blocks it, [CONFIRM.1]); liveness and
    # accountability break: the round is UNDECIDED, the attempt FAILS, nobody is slashed.
    assert get_dispute_outcome(dispute, closed=True) is DisputeOutcome.UNDECIDED
    assert get_final_outcome(drive.tally) is Outcome.FAILED
    assert compute_records(drive.tally) == ((), ())
    # Safety of receipts breaks: 2 lazy ACCEPTs + 1 honest miss make a valid certificate with
    # one honest signer (< f+1, [GUAR.1]) for a commitment an honest member proved wrong.
    accepts = tuple(v for v in drive.tally.votes if v.verdict is Verdict.ACCEPT)
    assert len(accepts) == 3
    net = get_network()
    check_receipt(Receipt(sc.request, sc.signed, net.validator_set, accepts))
    # Detected: the honest evidence is proven offline, and the lazy votes fail a spot audit.
    assert audit_as_cli(dispute.accusation.evidence)
    for v in accepts:
        session = make_session(make_core(v.verifier_key), sc.request, sc.signed, v.escalated)
        response = sc.executor.on_open(sc.signed.digest, session.challenge.required_tiles())
        audit = spot_audit_vote(v, sc.signed, response, get_auditor())
        lazy = v.verifier_key in drive.byzantine
        assert audit.ok is not lazy, audit.detail
        assert lazy or v.verifier_key == sc.committee[misser]


def test_partial_lie_evidence_is_proven_by_bft_verify_audit(tmp_path, capsys):
    catcher, _, _ = _partial_lie_committee()
    sc = get_scenario("skip-layer", 0)
    vote = sc.honest_votes[sc.committee[catcher]]
    path = _write(tmp_path, "skip-layer.pb", vote.evidence)
    capsys.readouterr()
    assert verify_main(["audit", str(path), "--model", "tiny"]) == 0
    assert capsys.readouterr().out.startswith("proven: layer:")


# --- a deadline that cuts one round short


@pytest.mark.parametrize("liar_first", [False, True], ids=["honest-first", "liar-first"])
def test_a_confirmed_fraud_is_rejected_whatever_round_the_deadline_cuts(liar_first):
    # f = 1: one always-reject liar, whose made-up claim misses the skipped layer, and an
    # honest member that caught the skip-layer lie. Rounds run one accusation at a time, in
    # the order the REJECTs came: liar first, the deadline cuts the liar's round short (no
    # finding arrives) and the honest accusation's round confirms; honest first, its round
    # confirms and the liar's never runs. Either way the attempt is REJECTED, the executor
    # slashed and nobody penalised.
    catcher, _, (liar, _) = _partial_lie_committee()
    drive = Drive.start("skip-layer", 0, [(liar, "always-reject", "always-accept")])
    sc = drive.sc
    votes = [e for e in drive.pending if isinstance(e, VoteReceived)]
    assert len(votes) == len(drive.pending) == 4  # one answer per member, in committee order
    lie, caught = votes[liar], votes[catcher]
    assert caught.vote == sc.honest_votes[sc.committee[catcher]]
    assert caught.vote.verdict is lie.vote.verdict is Verdict.REJECT
    assert not is_proven(lie.vote.evidence) and is_proven(caught.vote.evidence)
    first, second = (lie, caught) if liar_first else (caught, lie)
    drive.pending = [first, second, *(e for e in votes if e is not lie and e is not caught)]
    while drive.attempt.phase is Phase.VOTING:
        drive.deliver(0)
    if liar_first:
        drive.pending.clear()  # the liar's round: its deadline passes with no finding
        drive.fire()
        assert lie.vote.signing_root() in drive.attempt.rounds
    while drive.pending:  # the honest accusation's round
        drive.deliver(0)
    assert drive.settled
    slashes, penalties = compute_records(drive.tally)
    (slash,) = slashes
    assert slash.offence is Offence.EXECUTOR_FRAUD and penalties == ()
    assert slash.accusation == caught.vote
    check_slash(slash, get_network().validator_set.vset)
    assert drive.attempt.result is not None
    assert drive.attempt.result.outcome is Outcome.REJECTED

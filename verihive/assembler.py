"""The assembler (gateway) node: admits requests, drives attempts, answers with receipts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, replace

import grpc
from transformers import PreTrainedTokenizerBase

from bft.assembler import (
    AssemblerPolicy,
    Outcome,
    Tally,
    build_receipt,
    check_commitment,
    compute_request,
    compute_tally,
    find_disagreement,
    get_final_outcome,
    open_disputes,
    process_confirmation_vote,
    process_vote,
)
from bft.confirmation import Confirmation, DisputeOutcome, get_dispute_outcome
from bft.crypto import SigningKey, compute_node_id
from bft.errors import Malformed, ProtocolError
from bft.limits import MAX_TOKENS
from bft.messages import InferenceRequest, SamplingParams, Vote
from bft.types import ModelId, NodeId, PublicKey, short_hex
from bft.validators import SignedValidatorSet, check_validator_set
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from slashing.records import Penalty, SlashRecord, check_penalty, check_slash, compute_records
from slashing.tombstones import Tombstones
from verihive.rpc import (
    EXECUTE_TIMEOUT_S,
    INFO_TIMEOUT_S,
    MAX_OPEN_MESSAGE_BYTES,
    VERIFY_TIMEOUT_S,
    make_channel,
)

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 64_000


@dataclass(frozen=True)
class Peer:
    """A node the assembler talks to, as learnt from its ``GetInfo`` over gRPC."""

    address: str
    public_key: PublicKey
    node_id: NodeId
    role: str


@dataclass(frozen=True)
class AttemptResult:
    """One executor tried: its tally (if it got that far), the outcome and what it proved."""

    executor: Peer
    outcome: Outcome
    tally: Tally | None
    reason: str
    seconds: float
    slashes: tuple[SlashRecord, ...] = ()
    penalties: tuple[Penalty, ...] = ()

    @property
    def votes(self) -> tuple[Vote, ...]:
        """Return the valid votes collected."""
        return self.tally.votes if self.tally else ()


def fetch_peer(address: str, role: str, model_id: ModelId, network_id: str) -> Peer:
    """Return the peer at ``address`` after checking its role, model and network."""
    channel = make_channel(address)
    try:
        stub = pb_grpc.ExecutorStub if role == "executor" else pb_grpc.VerifierStub
        info = stub(channel).GetInfo(pb.NodeInfoRequest(), timeout=INFO_TIMEOUT_S)
    finally:
        channel.close()
    if info.role != role or info.model_id != model_id or info.network_id != network_id:
        raise Malformed(f"{address} is not a {role} of this model and network")
    key = PublicKey(info.public_key)
    return Peer(address, key, compute_node_id(key), role)


class AssemblerNode:
    """Drives requests over gRPC; the rules live in :mod:`bft.assembler`."""

    def __init__(
        self,
        key: SigningKey,
        policy: AssemblerPolicy,
        model_id: ModelId,
        tokenizer: PreTrainedTokenizerBase,
        executors: Sequence[Peer],
        verifiers: Sequence[Peer],
        validator_set: SignedValidatorSet,
        tombstones: Tombstones | None = None,
    ) -> None:
        check_validator_set(validator_set)  # the genesis set this node was started with
        self.key = key
        self.policy = policy
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.executors = list(executors)
        # One key may answer at several addresses (replicas, or Twins): every one is asked, so
        # a key that signs two different verdicts is caught. [QUORUM.5]
        self.verifiers: dict[PublicKey, list[Peer]] = {}
        for v in verifiers:
            self.verifiers.setdefault(v.public_key, []).append(v)
        self.validator_set = validator_set
        self.tombstones = tombstones if tombstones is not None else Tombstones()
        # Votes may carry evidence (opened tiles): verifier channels take the large limit.
        self._channels = {p.address: make_channel(p.address) for p in executors}
        self._channels.update(
            {p.address: make_channel(p.address, MAX_OPEN_MESSAGE_BYTES) for p in verifiers}
        )
        self._pool = futures.ThreadPoolExecutor(max_workers=max(4, 2 * len(verifiers)))
        self._hedge_pool = futures.ThreadPoolExecutor(max_workers=max(1, policy.hedge))

    def close(self) -> None:
        """Release channels and threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._hedge_pool.shutdown(wait=False, cancel_futures=True)
        for ch in self._channels.values():
            ch.close()

    def encode_prompt(self, prompt: str) -> tuple[int, ...]:
        """Return the chat-templated token ids of the user message ``prompt``."""
        if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise Malformed(f"prompt must be 1..{MAX_PROMPT_CHARS} characters")
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        if len(ids) >= MAX_TOKENS:
            raise Malformed("prompt too long")
        return tuple(int(i) for i in list(ids))

    def infer(self, prompt: str, sampling: SamplingParams) -> tuple[str, list[AttemptResult]]:
        """Try executors until one is certified; return the text and all attempts.

        Executors are taken ``policy.hedge`` at a time, all on one request (one seed): the
        first certified answer wins; with ``hedge_verify_all`` every hedged result is verified
        and certified answers that disagree are not served. [ASM.6]
        """
        sampling.validate()
        tokens = self.encode_prompt(prompt)
        attempts: list[AttemptResult] = []
        live = [e for e in self.executors if not self.tombstones.is_tombstoned(e.public_key)]
        step = max(1, self.policy.hedge)
        for i in range(0, len(live), step):
            batch = [
                e for e in live[i : i + step] if not self.tombstones.is_tombstoned(e.public_key)
            ]
            if not batch:
                continue  # refused for good [SLASH.3]
            request = compute_request(
                self.policy,
                os.urandom(16),
                self.model_id,
                tokens,
                sampling,
                self.validator_set.vset,
            )
            results = self._run_batch(batch, request)
            attempts.extend(results)
            for r in results:
                log.info("attempt on %s: %s %s", r.executor.address, r.outcome.value, r.reason)
            certified = tuple(
                r.tally for r in results if r.outcome is Outcome.CERTIFIED and r.tally is not None
            )
            if certified and find_disagreement(certified):
                log.warning("hedged executors disagree: %d certified outputs", len(certified))
                attempts[-len(results) :] = [
                    replace(
                        r,
                        outcome=Outcome.FAILED,
                        reason="hedged certified outputs disagree; not served",
                    )
                    if r.outcome is Outcome.CERTIFIED
                    else r
                    for r in results
                ]
                continue
            if certified:
                out = certified[0].signed.commitment.output_tokens
                return str(self.tokenizer.decode(list(out), skip_special_tokens=True)), attempts
        return "", attempts

    def _run_batch(self, batch: list[Peer], request: InferenceRequest) -> list[AttemptResult]:
        """Run ``request`` on every executor of ``batch`` at once. [ASM.6]"""
        if len(batch) == 1:
            return [self.run_attempt(batch[0], request)]
        pending = {self._hedge_pool.submit(self.run_attempt, e, request): e for e in batch}
        results: list[AttemptResult] = []
        for fut in futures.as_completed(pending):
            result = fut.result()
            results.append(result)
            if result.outcome is Outcome.CERTIFIED and not self.policy.hedge_verify_all:
                for other in pending:
                    other.cancel()  # not started yet: never runs; running: its result is dropped
                break
        return results

    def run_attempt(self, executor: Peer, request: InferenceRequest) -> AttemptResult:
        """Execute ``request`` on ``executor``, collect the committee's votes, decide. [ASM.1]"""
        start = time.monotonic()
        vset = self.validator_set.vset

        def done(outcome: Outcome, tally: Tally | None, reason: str) -> AttemptResult:
            return AttemptResult(executor, outcome, tally, reason, time.monotonic() - start)

        try:
            stub = pb_grpc.ExecutorStub(self._channels[executor.address])
            reply = stub.Execute(
                pb.ExecuteRequest(request=convert.request_to_pb(request)), timeout=EXECUTE_TIMEOUT_S
            )
            signed = convert.commitment_from_pb(reply.commitment)
            check_commitment(request, signed, executor.node_id)
        except grpc.RpcError as exc:
            return done(Outcome.FAILED, None, f"execute failed: {exc.code().name}")
        except ProtocolError as exc:
            return done(Outcome.REJECTED, None, f"bad commitment: {exc}")
        tally = compute_tally(request, signed, vset)
        verify = pb.VerifyRequest(
            request=convert.request_to_pb(request),
            commitment=convert.commitment_to_pb(signed),
            executor_address=executor.address,
        )
        members = [k for k in tally.committee if not self.tombstones.is_tombstoned(k)]
        calls = {
            self._pool.submit(self._ask_verifier, peer, verify): peer
            for k in members
            for peer in self.verifiers.get(k, [])
        }
        for fut in futures.as_completed(calls):
            vote = fut.result()
            if vote is None:
                continue
            try:
                tally = process_vote(tally, vote)
            except ProtocolError as exc:
                log.warning("vote from %s dropped: %s", calls[fut].address, exc)
        honest_so_far = [k for k in members if k not in tally.double_voters]
        tally = self._confirm(open_disputes(tally), honest_so_far)
        outcome = get_final_outcome(tally)
        slashes, penalties = self._record(tally)
        reasons = [v.reason for v in tally.votes if v.reason]
        reasons += [f"slashed {_node(r.offender)} ({r.offence.value})" for r in slashes]
        reasons += [f"penalised {_node(p.accuser)} (false accusation)" for p in penalties]
        return replace(
            done(outcome, tally, "; ".join(dict.fromkeys(reasons))),
            slashes=slashes,
            penalties=penalties,
        )

    def _confirm(self, tally: Tally, members: list[PublicKey]) -> Tally:
        """Run the confirmation rounds of the open accusations. [CONFIRM.1]-[CONFIRM.3]

        One accusation at a time (its round in parallel): once one is confirmed the executor
        is slashed and the others need no round.
        """
        for dispute in tally.disputes:
            if any(get_dispute_outcome(d) is DisputeOutcome.CONFIRMED for d in tally.disputes):
                break
            if get_dispute_outcome(dispute) is not DisputeOutcome.OPEN:
                continue
            ask = pb.ConfirmRequest(accusation=convert.vote_to_pb(dispute.accusation))
            calls = {
                self._pool.submit(self._ask_confirmation, peer, ask): peer
                for k in members
                for peer in self.verifiers.get(k, [])
            }
            for fut in futures.as_completed(calls):
                conf = fut.result()
                if conf is None:
                    continue
                try:
                    tally = process_confirmation_vote(tally, conf)
                except ProtocolError as exc:
                    log.warning("confirmation from %s dropped: %s", calls[fut].address, exc)
        return tally

    def _record(self, tally: Tally) -> tuple[tuple[SlashRecord, ...], tuple[Penalty, ...]]:
        """Check and keep what the tally proves; return the new slashes and penalties."""
        slashes, penalties = compute_records(tally)
        vset = self.validator_set.vset
        new_slashes = []
        for r in slashes:
            check_slash(r, vset)  # a record this node cannot defend is a bug, not a slash
            if self.tombstones.add(r):  # one slash per key, however many records [SLASH.3]
                log.info("slashed %s: %s", _node(r.offender), r.offence.value)
                new_slashes.append(r)
        for p in penalties:
            check_penalty(p, vset)
            self.tombstones.add_penalty(p)
        return tuple(new_slashes), penalties

    def _ask_verifier(self, verifier: Peer, request: pb.VerifyRequest) -> Vote | None:
        try:
            stub = pb_grpc.VerifierStub(self._channels[verifier.address])
            return convert.vote_from_pb(stub.Verify(request, timeout=VERIFY_TIMEOUT_S))
        except grpc.RpcError as exc:
            log.warning("verifier %s: %s %s", verifier.address, exc.code().name, exc.details())
        except ProtocolError as exc:
            log.warning("verifier %s sent a malformed vote: %s", verifier.address, exc)
        return None

    def _ask_confirmation(self, verifier: Peer, request: pb.ConfirmRequest) -> Confirmation | None:
        try:
            stub = pb_grpc.VerifierStub(self._channels[verifier.address])
            reply = stub.Confirm(request, timeout=VERIFY_TIMEOUT_S)
            return convert.confirmation_from_pb(reply)
        except grpc.RpcError as exc:
            log.warning("verifier %s: %s %s", verifier.address, exc.code().name, exc.details())
        except ProtocolError as exc:
            log.warning("verifier %s sent a malformed confirmation: %s", verifier.address, exc)
        return None

    def receipt_of(self, attempt: AttemptResult) -> pb.Receipt | None:
        """Return the receipt of a certified attempt, else ``None``."""
        if attempt.outcome is not Outcome.CERTIFIED or attempt.tally is None:
            return None
        return convert.receipt_to_pb(build_receipt(attempt.tally, self.validator_set))


def _node(key: PublicKey) -> str:
    return short_hex(compute_node_id(key))


class AssemblerService(pb_grpc.AssemblerServicer):
    """Serves ``Infer`` for clients."""

    def __init__(self, node: AssemblerNode) -> None:
        self.node = node

    def GetInfo(self, request: pb.NodeInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        """Return this node's identity and model."""
        return pb.NodeInfo(
            public_key=self.node.key.public_key,
            role="assembler",
            model_id=self.node.model_id,
            network_id=self.node.policy.network_id,
        )

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        """Answer ``request.prompt`` with a certified completion, or report every failed attempt."""
        start = time.monotonic()
        sampling = (
            convert.sampling_from_pb(request.sampling)
            if request.HasField("sampling")
            else SamplingParams()
        )
        text, attempts = self.node.infer(request.prompt, sampling)
        accepted = any(a.outcome is Outcome.CERTIFIED for a in attempts)
        response = pb.InferResponse(text=text, accepted=accepted)
        for a in attempts:
            response.attempts.append(
                pb.Attempt(
                    executor_id=a.executor.node_id,
                    accepted=a.outcome is Outcome.CERTIFIED,
                    votes=[convert.vote_to_pb(v) for v in a.votes],
                    reason=a.reason,
                    seconds=a.seconds,
                    outcome=a.outcome.value,
                    confirmations=[
                        convert.confirmation_to_pb(c)
                        for d in (a.tally.disputes if a.tally else ())
                        for c in d.confirmations
                    ],
                    slashes=[
                        pb.Slash(
                            key=r.offender,
                            offence=r.offence.value,
                            proof=convert.slash_to_pb(r, self.node.validator_set),
                        )
                        for r in a.slashes
                    ],
                    penalties=[
                        pb.Slash(key=p.accuser, offence="false-accusation") for p in a.penalties
                    ],
                )
            )
            receipt = self.node.receipt_of(a)
            if receipt is not None:
                response.receipt.CopyFrom(receipt)
        response.seconds = time.monotonic() - start
        return response

"""The assembler (gateway) node: admits requests, drives attempts, answers with receipts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

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
    get_final_outcome,
    process_vote,
)
from bft.crypto import SigningKey, compute_node_id
from bft.errors import Malformed, ProtocolError
from bft.messages import MAX_TOKENS, SamplingParams, Vote
from bft.types import ModelId, NodeId, PublicKey
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
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
    """One executor tried: its tally (if it got that far) and the outcome."""

    executor: Peer
    outcome: Outcome
    tally: Tally | None
    reason: str
    seconds: float

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
    ) -> None:
        self.key = key
        self.policy = policy
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.executors = list(executors)
        self.verifiers = {v.public_key: v for v in verifiers}
        self.validators = tuple(v.public_key for v in verifiers)
        # Votes may carry evidence (opened tiles): verifier channels take the large limit.
        self._channels = {p.address: make_channel(p.address) for p in executors}
        self._channels.update(
            {p.address: make_channel(p.address, MAX_OPEN_MESSAGE_BYTES) for p in verifiers}
        )
        self._pool = futures.ThreadPoolExecutor(max_workers=max(4, len(verifiers)))

    def close(self) -> None:
        """Release channels and threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
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
        """Try executors in order until one is certified; return the text and all attempts."""
        sampling.validate()
        tokens = self.encode_prompt(prompt)
        attempts: list[AttemptResult] = []
        for executor in self.executors:
            result = self.run_attempt(executor, tokens, sampling)
            attempts.append(result)
            log.info("attempt on %s: %s %s", executor.address, result.outcome.value, result.reason)
            if result.outcome is Outcome.CERTIFIED and result.tally is not None:
                out = result.tally.signed.commitment.output_tokens
                return str(self.tokenizer.decode(list(out), skip_special_tokens=True)), attempts
        return "", attempts

    def run_attempt(
        self, executor: Peer, tokens: tuple[int, ...], sampling: SamplingParams
    ) -> AttemptResult:
        """Execute on ``executor``, collect the committee's votes, decide. [ASM.1]"""
        start = time.monotonic()
        request = compute_request(
            self.policy, os.urandom(16), self.model_id, tokens, sampling, self.validators
        )

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
        tally = compute_tally(request, signed, self.validators)
        verify = pb.VerifyRequest(
            request=convert.request_to_pb(request),
            commitment=convert.commitment_to_pb(signed),
            executor_address=executor.address,
        )
        calls = {
            self._pool.submit(self._ask_verifier, self.verifiers[k], verify): k
            for k in tally.committee
        }
        for fut in futures.as_completed(calls):
            vote = fut.result()
            if vote is None:
                continue
            try:
                tally = process_vote(tally, vote)
            except ProtocolError as exc:
                log.warning("vote from %s dropped: %s", calls[fut].hex()[:12], exc)
        outcome = get_final_outcome(tally)
        reasons = [v.reason for v in tally.votes if v.reason]
        return done(outcome, tally, "; ".join(dict.fromkeys(reasons)))

    def _ask_verifier(self, verifier: Peer, request: pb.VerifyRequest) -> Vote | None:
        try:
            stub = pb_grpc.VerifierStub(self._channels[verifier.address])
            return convert.vote_from_pb(stub.Verify(request, timeout=VERIFY_TIMEOUT_S))
        except grpc.RpcError as exc:
            log.warning("verifier %s: %s %s", verifier.address, exc.code().name, exc.details())
        except ProtocolError as exc:
            log.warning("verifier %s sent a malformed vote: %s", verifier.address, exc)
        return None

    def receipt_of(self, attempt: AttemptResult) -> pb.Receipt | None:
        """Return the receipt of a certified attempt, else ``None``."""
        if attempt.outcome is not Outcome.CERTIFIED or attempt.tally is None:
            return None
        return convert.receipt_to_pb(build_receipt(attempt.tally, self.validators))


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
                )
            )
            receipt = self.node.receipt_of(a)
            if receipt is not None:
                response.receipt.CopyFrom(receipt)
        response.seconds = time.monotonic() - start
        return response

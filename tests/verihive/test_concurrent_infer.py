"""Many concurrent requests on the embedded network over loopback gRPC. [COMMIT.5], [COMMIT.6],
[EXEC.9], [VOTE.4]

The local network shares one torch backend among its honest executors and one among its
verifiers, over the same model modules; gRPC worker threads call them at once. 32 concurrent
``Infer`` calls must all be certified with votes whose witnesses re-compute, and concurrent
``Execute`` calls for one request must get one commitment: no executor holds two signed roots
for one request. The executors' proofs are made non-reproducible (one value moved by one ulp on
every other proof, far inside the honest bands), as on a GPU, so that executing a request twice
would show.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from bft.assembler import compute_request
from bft.challenge import compute_commitment_challenge
from bft.evidence import AuditModel, spot_audit_vote
from bft.messages import SamplingParams, SignedCommitment, Verdict
from bft.receipt import check_receipt
from bft.types import Digest
from executor.backend import TorchBackend
from executor.model import LoadedModel
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from tests.support import run_together
from verihive.localnet import LocalNetConfig, LocalNetwork, start_local_network
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, make_channel
from verihive.work import make_execute

INFERS = 32
EXECUTES = 8
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=4, stop_at_eos=False)


class UlpNoiseBackend(TorchBackend):
    """The torch backend whose every other proof has one value of boundary L one ulp higher."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proofs = 0
        self._lock = threading.Lock()

    def prove(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        with self._lock:
            self.proofs += 1
            odd = self.proofs % 2
        states = super().prove(tokens)
        if odd:  # the last position's state: no sampled position reads it
            states[-1, -1, 0] = np.nextafter(states[-1, -1, 0], np.float32(np.inf))
        return states


def audit_votes(
    net: LocalNetwork, response: pb.InferResponse, auditor: AuditModel
) -> tuple[SignedCommitment, list[str]]:
    """Return the certified commitment and what fails when its ACCEPT votes are spot audited."""
    receipt = convert.receipt_from_pb(response.receipt)
    check_receipt(receipt, trusted_validators=net.assembler.validator_set.vset.keys)
    signed = receipt.signed_commitment
    (attempt,) = [a for a in response.attempts if a.accepted]
    address = executor_address(net, attempt.executor_id)
    failures = []
    with make_channel(address, MAX_OPEN_MESSAGE_BYTES) as channel:
        stub = pb_grpc.ExecutorStub(channel)
        for raw in attempt.votes:
            vote = convert.vote_from_pb(raw)
            if vote.verdict is not Verdict.ACCEPT:
                continue
            ch = compute_commitment_challenge(
                vote.challenge_signature, signed.commitment, receipt.request, vote.escalated
            )
            tiles = [convert.tile_to_pb(t) for t in ch.required_tiles()]
            opened = stub.Open(
                pb.OpenRequest(commitment_digest=signed.digest, tiles=tiles), timeout=60
            )
            audit = spot_audit_vote(vote, signed, convert.opening_response_from_pb(opened), auditor)
            if not audit.ok:
                failures.append(audit.detail)
    return signed, failures


def executor_address(net: LocalNetwork, node_id: bytes) -> str:
    """Return the address of the executor whose node id is ``node_id``."""
    for service, address in zip(net.executor_services, net.executor_addresses, strict=True):
        if service.core.key.node_id == node_id:
            return address
    raise AssertionError("certified by an executor that is not in the network")


def held_roots(net: LocalNetwork) -> dict[bytes, dict[Digest, set[Digest]]]:
    """Return, per executor, the commitment digests it holds for each request digest."""
    roots: dict[bytes, dict[Digest, set[Digest]]] = {}
    for service in net.executor_services:
        by_request: dict[Digest, set[Digest]] = defaultdict(set)
        for signed in service.core.get_held_commitments():
            by_request[signed.commitment.request_digest].add(signed.digest)
        roots[service.core.key.node_id] = by_request
    return roots


def test_concurrent_infer_calls_are_certified_with_witnesses_that_recompute(tiny: LoadedModel):
    backend = TorchBackend(tiny.model)
    auditor = AuditModel(backend, tiny.model_id, backend.info.num_layers, backend.info.hidden_size)
    noisy = UlpNoiseBackend(tiny.model)
    with start_local_network(tiny, LocalNetConfig(), exec_backend=noisy) as net:
        with make_channel(net.assembler_address, MAX_OPEN_MESSAGE_BYTES) as channel:
            stub = pb_grpc.AssemblerStub(channel)
            sampling = convert.sampling_to_pb(SAMPLING)

            def infer(i: int) -> pb.InferResponse:
                request = pb.InferRequest(prompt=f"Question {i}: what is {i} + {i}?")
                request.sampling.CopyFrom(sampling)
                return stub.Infer(request, timeout=600)

            responses = run_together([lambda i=i: infer(i) for i in range(INFERS)])
        errors = [r for r in responses if isinstance(r, Exception)]
        assert not errors, errors[:3]
        refused = [[a.reason for a in r.attempts] for r in responses if not r.accepted]
        assert not refused, f"{len(refused)} of {INFERS} not certified: {refused[:3]}"
        wrong = []
        digests = set()
        for r in responses:
            signed, failures = audit_votes(net, r, auditor)
            digests.add(signed.commitment.request_digest)
            wrong += failures
        assert not wrong, f"{len(wrong)} ACCEPT votes' witnesses do not re-compute: {wrong[:3]}"
        assert len(digests) == INFERS

        # Concurrent Execute calls for one request, over gRPC: one commitment. [COMMIT.5]
        node = net.assembler
        request = compute_request(
            node.policy,
            bytes(range(16)),
            tiny.model_id,
            tuple(range(100, 140)),
            SAMPLING,
            node.validator_set.vset,
        )
        message = make_execute(node.key, request)
        with make_channel(net.executor_addresses[0]) as channel:
            executor = pb_grpc.ExecutorStub(channel)

            def execute() -> bytes:
                raw = executor.Execute(message, timeout=600).commitment
                return convert.commitment_from_pb(raw).digest

            got = run_together([execute] * EXECUTES)
        assert not [g for g in got if isinstance(g, grpc.RpcError)], got
        assert len(set(got)) == 1, f"{len(set(got))} roots signed for one request"
        assert noisy.proofs == INFERS + 1  # one execution per request

        for node_id, by_request in held_roots(net).items():
            twice = {d: c for d, c in by_request.items() if len(c) > 1}
            assert not twice, f"executor {node_id.hex()[:8]} signed two roots for one request"

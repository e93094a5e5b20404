"""The largest legal requests of each RPC, by [LIMIT.1] and [LIMIT.2]. [RPC.6]

Each builder returns a protobuf message at the limits: every count at its maximum where the
message stays within what a correct peer may send, every text at its longest in code points
of four UTF-8 bytes, every number at its widest varint. Tests check that the wire pre-scan
passes them and that they fit their method's byte limit.
"""

from __future__ import annotations

import functools

from google.protobuf.message import Message

from bft.limits import (
    MAX_EPOCH,
    MAX_F,
    MAX_LAYERS,
    MAX_LEAVES,
    MAX_NETWORK_ID_BYTES,
    MAX_OPENINGS,
    MAX_STRING,
    MAX_TEXT,
    MAX_TOKENS,
    MAX_VOCAB,
    PPM,
)
from merkle.sketch import SKETCH_TOP_K, count_sketch_chunks
from merkle.tree import MAX_PROOF_STEPS
from proto import verihive_pb2 as pb

WIDE = "\U0001f600"
"""A code point of four UTF-8 bytes."""
NETWORK_ID = "n" * MAX_NETWORK_ID_BYTES
ADDRESS = "h" * 250 + ":65535"  # 256 characters, the longest address ([RPC.4])
DIGEST = b"\xff" * 32
SIGNATURE = b"\xff" * 64
MAX_PROMPT_CHARS = 64_000  # verihive.assembler.MAX_PROMPT_CHARS


def request() -> pb.InferenceRequest:
    """Return the largest legal inference request."""
    return pb.InferenceRequest(
        network_id=NETWORK_ID,
        request_id=b"\xff" * 16,
        epoch=MAX_EPOCH,
        model_id=DIGEST,
        prompt_tokens=[MAX_VOCAB - 1] * (MAX_TOKENS - 1),
        sampling=pb.SamplingParams(
            temperature=100.0, top_k=MAX_VOCAB, top_p=1.0, max_new_tokens=1, stop_at_eos=True
        ),
        f=MAX_F,
        layers_per_verifier=MAX_LAYERS,
        validator_set_digest=DIGEST,
        positions_per_verifier=MAX_TOKENS,
        sequence_check_ppm=PPM,
    )


def commitment() -> pb.SignedCommitment:
    """Return the largest legal signed commitment (one token per chunk, the most leaves)."""
    chunks = MAX_TOKENS
    layers = MAX_LEAVES // chunks - 1
    return pb.SignedCommitment(
        commitment=pb.Commitment(
            network_id=NETWORK_ID,
            request_digest=DIGEST,
            model_id=DIGEST,
            executor_key=DIGEST,
            tokens=[MAX_VOCAB - 1] * MAX_TOKENS,
            prompt_len=MAX_TOKENS - 1,
            dtype=WIDE * MAX_STRING,
            backend=WIDE * MAX_STRING,
            num_layers=layers,
            hidden_size=65536,
            chunk_size=1,
            merkle_root=DIGEST,
            num_leaves=(layers + 1) * chunks,
            sketch=[b"\x00\x01" * SKETCH_TOP_K] * count_sketch_chunks(MAX_TOKENS),
            settings=WIDE * MAX_STRING,
        ),
        signature=SIGNATURE,
    )


def opening(steps: int) -> pb.TileOpening:
    """Return an opening of the widest tile reference with a proof of ``steps`` steps."""
    return pb.TileOpening(
        tile=pb.TileRef(boundary=MAX_LAYERS, chunk=MAX_LEAVES),
        leaf=b"",
        proof=pb.MerkleProof(
            leaf_index=MAX_LEAVES - 1,
            tree_size=MAX_LEAVES,
            steps=[pb.ProofStep(bit=1, digest=DIGEST)] * steps,
        ),
    )


def vote() -> pb.Vote:
    """Return a REJECT vote at every count's limit, its evidence holding the most openings.

    Its first layer check names ``MAX_TOKENS`` chunks and the others 1024 each: every count
    at its limit in one message would not fit the 64 MiB that any message may have ([RPC.3]).
    """
    response = pb.OpenResponse(
        network_id=NETWORK_ID,
        commitment_digest=DIGEST,
        signature=SIGNATURE,
        commitment=commitment(),
    )
    response.openings.append(opening(MAX_PROOF_STEPS))
    one = opening(1)
    response.openings.extend([one] * (MAX_OPENINGS - 1))
    return pb.Vote(
        network_id=NETWORK_ID,
        request_digest=DIGEST,
        commitment_digest=DIGEST,
        verifier_key=DIGEST,
        verdict=pb.REJECT,
        challenge_signature=SIGNATURE,
        layer_checks=[
            pb.LayerCheck(
                layer=MAX_LAYERS,
                chunks=range(MAX_TOKENS - 1024, MAX_TOKENS) if i else range(MAX_TOKENS),
                max_rel_error=1e300,
                worst_position=MAX_TOKENS - 1,
                witness=1e300,
            )
            for i in range(MAX_LAYERS)
        ],
        embedding_max_error=1e300,
        reason=WIDE * MAX_TEXT,
        signature=SIGNATURE,
        sampler_checks=[pb.SamplerCheck(position=MAX_TOKENS - 1, margin=1e300)] * MAX_TOKENS,
        escalated=True,
        evidence=pb.Evidence(
            check=pb.CHECK_SEQUENCE,
            request=request(),
            commitment=commitment(),
            response=response,
            other=commitment(),
            layer=MAX_LAYERS,
            position=MAX_TOKENS - 1,
            measured=1e300,
            detail=WIDE * MAX_TEXT,
        ),
        sequence_check=pb.SequenceCheck(chunk=(1 << 32) - 1, mismatch=1.0),
    )


ORDER = pb.Order(assembler_key=b"\xa5" * 32, signature=b"\x5a" * 64)
"""An order's full size ([ADMIT.1]): every work request carries one."""


@functools.cache
def requests() -> dict[str, Message]:
    """Return the largest legal request of each method, by full method name (cached: do not
    mutate them)."""
    return {
        "/verihive.v1.Executor/GetInfo": pb.NodeInfoRequest(),
        "/verihive.v1.Executor/Status": pb.StatusRequest(),
        "/verihive.v1.Executor/Execute": pb.ExecuteRequest(request=request(), order=ORDER),
        "/verihive.v1.Executor/Open": pb.OpenRequest(
            commitment_digest=DIGEST,
            tiles=[pb.TileRef(boundary=MAX_LAYERS, chunk=MAX_LEAVES)] * MAX_OPENINGS,
        ),
        "/verihive.v1.Verifier/GetInfo": pb.NodeInfoRequest(),
        "/verihive.v1.Verifier/Status": pb.StatusRequest(),
        "/verihive.v1.Verifier/Verify": pb.VerifyRequest(
            request=request(), commitment=commitment(), executor_address=ADDRESS, order=ORDER
        ),
        "/verihive.v1.Verifier/Confirm": pb.ConfirmRequest(accusation=vote(), order=ORDER),
        "/verihive.v1.Assembler/GetInfo": pb.NodeInfoRequest(),
        "/verihive.v1.Assembler/Status": pb.StatusRequest(),
        "/verihive.v1.Assembler/Infer": pb.InferRequest(
            prompt=WIDE * MAX_PROMPT_CHARS,
            sampling=pb.SamplingParams(
                temperature=100.0, top_k=MAX_VOCAB, top_p=1.0, max_new_tokens=MAX_TOKENS
            ),
        ),
        "/verihive.v1.Assembler/Join": pb.JoinRequest(
            network_id=NETWORK_ID,
            public_key=DIGEST,
            address=ADDRESS,
            model_id=DIGEST,
            profile="p" * MAX_STRING,
            tokens_per_second=1e300,
            nonce=(1 << 64) - 1,
            signature=SIGNATURE,
        ),
        "/verihive.v1.Assembler/Leave": pb.LeaveRequest(
            network_id=NETWORK_ID,
            public_key=DIGEST,
            issued_at_ms=(1 << 64) - 1,
            signature=SIGNATURE,
        ),
    }

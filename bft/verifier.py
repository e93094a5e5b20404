"""The verifier's protocol core: challenge, check openings, vote. [VERIFY.1]-[VERIFY.6]

Verifiers measure, thresholds decide: the checks return measurements and :class:`Thresholds`
(configuration, with units) turns them into a verdict. The model is injected as a
:class:`LayerModel`, so this module holds no torch code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bft.challenge import Challenge, compute_challenge
from bft.crypto import SigningKey, is_valid_signature
from bft.errors import Malformed, Reject
from bft.messages import (
    MAX_TOKENS,
    InferenceRequest,
    LayerCheck,
    OpeningResponse,
    SignedCommitment,
    TileRef,
    Verdict,
    Vote,
    compute_challenge_message,
)
from bft.types import ModelId, Signature
from merkle.tiles import compute_leaf_index, decode_tile
from merkle.tree import check_inclusion

# Denominator floor for relative errors, in the hidden state's own units.
_NORM_FLOOR = 1e-12


class LayerModel(Protocol):
    """What a verifier needs of its model: embeddings and single-layer re-execution."""

    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return ``[len(tokens), H]`` embeddings."""
        ...

    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return layer ``layer`` (1..L) applied to positions ``0..P-1`` of ``hidden_in``."""
        ...


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Accept/reject thresholds. Both are dimensionless ratios. [VERIFY.4]

    ``layer_rel_error_max``: largest accepted per-position ``|y' - y| / |y - x|`` where ``x`` is
    the committed layer input, ``y`` the committed output and ``y'`` the re-computed output.
    ``embedding_rel_error_max``: largest accepted per-position ``|e' - e| / |e'|`` at boundary 0.
    Measured here: honest noise 0 for full-prefix re-execution and <= 4e-7 on shorter
    prefixes; int8-weights >= 1e-2 on SmolLM2 (docs/spec/verification.md). [detection]
    replaces these with a calibrated table.
    """

    layer_rel_error_max: float = 1e-4
    embedding_rel_error_max: float = 1e-5


@dataclass(frozen=True, slots=True)
class ChallengeTicket:
    """A verifier's challenge for one commitment, with the signature that seeds it."""

    challenge_signature: Signature
    challenge: Challenge


def compute_rel_errors(
    recomputed: npt.NDArray[np.float32],
    committed_out: npt.NDArray[np.float32],
    committed_in: npt.NDArray[np.float32],
) -> npt.NDArray[np.float64]:
    """Return per-position ``|y' - y| / max(|y - x|, floor)``. [VERIFY.3]"""
    num = np.linalg.norm(recomputed.astype(np.float64) - committed_out, axis=-1)
    den = np.linalg.norm(committed_out.astype(np.float64) - committed_in, axis=-1)
    errs: npt.NDArray[np.float64] = num / np.maximum(den, _NORM_FLOOR)
    return errs


class VerifierCore:
    """Derives challenges, checks openings against the signed root, re-executes, votes."""

    def __init__(
        self,
        key: SigningKey,
        model: LayerModel,
        model_id: ModelId,
        num_layers: int,
        hidden_size: int,
        network_id: str,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.key = key
        self.model = model
        self.model_id = model_id
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.network_id = network_id
        self.thresholds = thresholds or Thresholds()

    def check_commitment(self, request: InferenceRequest, signed: SignedCommitment) -> str | None:
        """Return why ``signed`` is provably wrong for ``request``, or ``None``. [VERIFY.1]

        Raises (without voting) when the signature fails: an unsigned commitment proves nothing
        about the executor.
        """
        request.validate()
        signed.check()  # [IGNORE] commitment carries a valid executor signature
        c = signed.commitment
        if request.network_id != self.network_id:
            raise Malformed("request is for another network")
        if request.model_id != self.model_id:
            raise Reject("request names a model this verifier does not hold")
        problems = [
            (c.network_id != request.network_id, "commitment is for another network"),
            (c.request_digest != request.digest(), "commitment is for another request"),
            (c.model_id != request.model_id, "commitment names another model"),
            (c.tokens[: c.prompt_len] != request.prompt_tokens, "committed prompt differs"),
            (
                len(c.output_tokens) > request.sampling.max_new_tokens,
                "more output tokens than max_new_tokens",
            ),
            (len(c.tokens) > MAX_TOKENS, "too many tokens"),
            (c.num_layers != self.num_layers, "commitment has the wrong number of layers"),
            (c.hidden_size != self.hidden_size, "commitment has the wrong hidden size"),
            (c.dtype != "float32", f"dtype {c.dtype} is not checkable by this verifier"),
        ]
        return next((why for bad, why in problems if bad), None)

    def compute_ticket(
        self, request: InferenceRequest, signed: SignedCommitment
    ) -> ChallengeTicket:
        """Return this verifier's challenge for ``signed``. [CHAL.1]"""
        sig = self.key.sign(compute_challenge_message(self.network_id, signed.digest))
        c = signed.commitment
        challenge = compute_challenge(sig, c.num_layers, c.num_chunks, request.layers_per_verifier)
        return ChallengeTicket(sig, challenge)

    def compute_vote(
        self,
        request: InferenceRequest,
        signed: SignedCommitment,
        ticket: ChallengeTicket,
        verdict: Verdict,
        reason: str,
        layer_checks: tuple[LayerCheck, ...] = (),
        embedding_error: float = 0.0,
    ) -> Vote:
        """Return the signed vote."""
        unsigned = Vote(
            network_id=self.network_id,
            request_digest=request.digest(),
            commitment_digest=signed.digest,
            verifier_key=self.key.public_key,
            verdict=verdict,
            challenge_signature=ticket.challenge_signature,
            layer_checks=layer_checks,
            embedding_max_error=embedding_error,
            reason=reason,
        )
        return Vote(
            **{f: getattr(unsigned, f) for f in Vote.__dataclass_fields__ if f != "signature"},
            signature=self.key.sign(unsigned.signing_root()),
        )

    def on_openings(
        self,
        request: InferenceRequest,
        signed: SignedCommitment,
        ticket: ChallengeTicket,
        response: OpeningResponse,
    ) -> Vote:
        """Check ``response`` against the signed commitment, re-execute, and vote. [VERIFY.2]"""
        c = signed.commitment
        if (
            response.commitment_digest != signed.digest
            or response.network_id != self.network_id
            or not is_valid_signature(c.executor_key, response.signing_root(), response.signature)
        ):
            # Not attributable to the executor: a liveness fault, never a slash. [VERIFY.5]
            return self.compute_vote(
                request,
                signed,
                ticket,
                Verdict.UNAVAILABLE,
                "opening response not signed by executor",
            )
        try:
            tiles = self._open_tiles(signed, ticket.challenge, response)
            emb_err = self._check_embedding(c.tokens, tiles, c.num_chunks, c.chunk_size)
            checks = tuple(
                self._check_layer(lc.layer, lc.chunks, tiles, c.chunk_size, len(c.tokens))
                for lc in ticket.challenge.layers
            )
        except Reject as exc:
            return self.compute_vote(request, signed, ticket, Verdict.REJECT, str(exc))
        t = self.thresholds
        worst = max((ch.max_rel_error for ch in checks), default=0.0)
        if emb_err > t.embedding_rel_error_max:
            verdict, reason = (
                Verdict.REJECT,
                f"boundary 0 differs from the token embeddings ({emb_err:.3g})",
            )
        elif worst > t.layer_rel_error_max:
            bad = next(ch for ch in checks if ch.max_rel_error == worst)
            verdict, reason = Verdict.REJECT, f"layer {bad.layer} recomputes with error {worst:.3g}"
        else:
            verdict, reason = Verdict.ACCEPT, ""
        return self.compute_vote(request, signed, ticket, verdict, reason, checks, emb_err)

    def _open_tiles(
        self, signed: SignedCommitment, challenge: Challenge, response: OpeningResponse
    ) -> dict[TileRef, npt.NDArray[np.float32]]:
        c = signed.commitment
        wanted = challenge.required_tiles()
        by_tile = {o.tile: o for o in response.openings}
        if set(by_tile) != set(wanted):
            raise Reject("signed opening response does not hold exactly the challenged tiles")
        out = {}
        for tile in wanted:
            o = by_tile[tile]
            index = compute_leaf_index(tile.boundary, tile.chunk, c.num_chunks)
            if o.proof.leaf_index != index:
                raise Reject(f"tile ({tile.boundary},{tile.chunk}) opened at the wrong leaf index")
            check_inclusion(c.merkle_root, c.num_leaves, o.leaf, o.proof)  # [REJECT] bad opening
            rows = min(c.chunk_size, len(c.tokens) - tile.chunk * c.chunk_size)
            out[tile] = decode_tile(
                o.leaf, boundary=tile.boundary, chunk=tile.chunk, rows=rows, cols=c.hidden_size
            )
        return out

    def _check_embedding(
        self,
        tokens: tuple[int, ...],
        tiles: dict[TileRef, npt.NDArray[np.float32]],
        num_chunks: int,
        chunk_size: int,
    ) -> float:
        committed = np.concatenate([tiles[TileRef(0, k)] for k in range(num_chunks)])
        expected = self.model.embed(tokens)
        errs = compute_rel_errors(committed, expected, np.zeros_like(expected))
        return float(errs.max())

    def _check_layer(
        self,
        layer: int,
        chunks: tuple[int, ...],
        tiles: dict[TileRef, npt.NDArray[np.float32]],
        chunk_size: int,
        num_tokens: int,
    ) -> LayerCheck:
        x = np.concatenate([tiles[TileRef(layer - 1, k)] for k in range(max(chunks) + 1)])
        y_prime = self.model.run_layer(layer, x)
        worst, worst_pos = 0.0, 0
        for k in chunks:
            lo = k * chunk_size
            hi = min(lo + chunk_size, num_tokens)
            errs = compute_rel_errors(y_prime[lo:hi], tiles[TileRef(layer, k)], x[lo:hi])
            i = int(np.argmax(errs))
            if errs[i] > worst:
                worst, worst_pos = float(errs[i]), lo + i
        return LayerCheck(layer=layer, chunks=chunks, max_rel_error=worst, worst_position=worst_pos)

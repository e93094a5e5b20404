"""What a verifier measures, and the bands that judge it. [VERIFY.3], [VERIFY.4], [EVID.3]

Verifiers measure, thresholds decide (house style 8): the functions here re-execute what a
commitment claims and return measurements; a :class:`Thresholds` table of :class:`Band` s
(configuration with units, calibrated per execution profile in :mod:`bft.thresholds`) puts
each measurement in a :class:`Zone`. The verifier (:mod:`bft.verifier`) and any auditor
(:mod:`bft.evidence`) share these, so neither imports the other. The model is injected as a
:class:`LayerModel`, so this module holds no torch code.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bft.errors import CannotJudge, Malformed, Reject
from bft.limits import MAX_TOKENS
from bft.messages import (
    EvidenceCheck,
    InferenceRequest,
    LayerCheck,
    OpeningResponse,
    SamplerCheck,
    SignedCommitment,
    TileRef,
)
from merkle.errors import BadProof, BadTile, MalformedProof, SketchError
from merkle.sketch import SketchCheck, check_sketch_shape, measure_sketch
from merkle.tiles import compute_leaf_index, decode_tile
from merkle.tree import check_inclusion

# Denominator floor for relative errors, in the hidden state's own units.
_NORM_FLOOR = 1e-12
# Margins are capped so that votes stay finite.
_MARGIN_CAP = 1e30


class LayerModel(Protocol):
    """What a verifier needs of its model."""

    @property
    def eos_ids(self) -> frozenset[int]:
        """Return the token ids that end generation."""
        ...

    @property
    def vocab_size(self) -> int:
        """Return the vocabulary size."""
        ...

    def embed(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return ``[len(tokens), H]`` embeddings."""
        ...

    def final_states(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Return the ``[len(tokens), H]`` last-boundary states of one prefill. [SKETCH.4]"""
        ...

    def run_layer(self, layer: int, hidden_in: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return layer ``layer`` (1..L) applied to positions ``0..P-1`` of ``hidden_in``."""
        ...

    def run_layer_with_update(
        self, layer: int, hidden_in: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return :meth:`run_layer`'s output and the ``[P, H]`` attention update inside it."""
        ...

    def sampler_margin(
        self,
        hidden_last: npt.NDArray[np.float32],
        request: InferenceRequest,
        position: int,
        token: int,
    ) -> float:
        """Return the sampler margin of ``token`` at ``position`` given boundary-L state."""
        ...


DEFAULT_PROFILE = "torch-cpu-float32"
"""The reference execution profile: torch on the CPU in float32. [EXEC.5]"""


class Zone(enum.IntEnum):
    """Where a measurement falls in its band, in increasing severity. [VERIFY.4]"""

    ACCEPT = 0
    GREY = 1
    REJECT = 2


@dataclass(frozen=True, slots=True)
class Band:
    """Accept at or below ``accept_max``; reject above ``reject_min``; between: grey."""

    accept_max: float
    reject_min: float

    def classify(self, value: float) -> Zone:
        """Return the zone of ``value``; a NaN is :attr:`Zone.REJECT` (fail closed)."""
        if value <= self.accept_max:
            return Zone.ACCEPT
        return Zone.GREY if value <= self.reject_min else Zone.REJECT


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Accept/reject bands per check. [VERIFY.4]

    ``layer``: per-position ``|y' - y| / |y - x|`` (dimensionless; ``x`` the committed layer
    input, ``y`` the committed output, ``y'`` the recomputed output).
    ``embedding``: per-position ``|e' - e| / |e'|`` at boundary 0 (dimensionless).
    ``sampler``: sampler margin (logit units, [SAMPLE.5]).
    ``sequence``: sketch mismatch, the largest per-chunk fraction of top entries whose committed
    value does not match the recomputed one (dimensionless, in [0, 1], [SKETCH.4]).
    These built-in defaults are conservative round numbers for float32 on the CPU; nodes load
    the calibrated bands of their backend and dtype instead (:mod:`bft.thresholds`, written
    by ``bench/calibrate.py``, see docs/calibration.md).
    """

    layer: Band = Band(1e-5, 1e-4)
    embedding: Band = Band(1e-6, 1e-5)
    sampler: Band = Band(1e-3, 5e-2)
    sequence: Band = Band(0.05, 0.5)
    profile: str = DEFAULT_PROFILE
    """The executor profile (``<backend>-<dtype>``, [EXEC.5]) these bands are for."""
    others: tuple[Thresholds, ...] = ()
    """Bands for further admitted executor profiles (a verifier's calibration table)."""

    @property
    def profiles(self) -> tuple[str, ...]:
        """Return the executor profiles this verifier admits, its own first. [EXEC.5]"""
        return (self.profile, *(t.profile for t in self.others))

    def band(self, check: EvidenceCheck) -> Band:
        """Return the band that judges measurements of ``check`` (a measured check). [VERIFY.4]"""
        bands = {
            EvidenceCheck.LAYER: self.layer,
            EvidenceCheck.EMBEDDING: self.embedding,
            EvidenceCheck.SAMPLER: self.sampler,
            EvidenceCheck.SEQUENCE: self.sequence,
        }
        return bands[check]

    def select(self, profile: str) -> Thresholds | None:
        """Return the bands for commitments of executor ``profile``, or ``None`` if unadmitted."""
        return next((t for t in (self, *self.others) if t.profile == profile), None)

    def require(self, profile: str) -> Thresholds:
        """Return :meth:`select`'s bands or raise :class:`CannotJudge`. [EXEC.5]"""
        t = self.select(profile)
        if t is None:
            raise CannotJudge(f"no calibrated bands for executor profile {profile}")
        return t


@dataclass(frozen=True, slots=True)
class Measurements:
    """Everything one pass of checks measured."""

    embedding_error: float
    layer_checks: tuple[LayerCheck, ...]
    sampler_checks: tuple[SamplerCheck, ...]
    sequence: SketchCheck | None = None


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


def compute_length_violation(
    request: InferenceRequest, output: tuple[int, ...], eos_ids: frozenset[int]
) -> str | None:
    """Return how ``output`` breaks the length/EOS rule of [SAMPLE.4], or ``None``. [VERIFY.8]"""
    s = request.sampling
    if not output:
        return "no output tokens"
    if len(output) > s.max_new_tokens:
        return "more output tokens than max_new_tokens"
    if s.stop_at_eos:
        if any(t in eos_ids for t in output[:-1]):
            return "generation continued past an end-of-sequence token"
        if output[-1] not in eos_ids and len(output) != s.max_new_tokens:
            return "generation stopped early without an end-of-sequence token"
    elif len(output) != s.max_new_tokens:
        return "generation stopped before max_new_tokens with stop_at_eos off"
    return None


def open_tiles(
    signed: SignedCommitment, response: OpeningResponse, wanted: Sequence[TileRef] | None = None
) -> dict[TileRef, npt.NDArray[np.float32]]:
    """Return the decoded tiles of ``response``; raise :class:`Reject` on any bad opening. [OPEN.3]

    ``wanted`` (when given) must be a subset of the opened tiles; extra tiles are checked too.
    """
    c = signed.commitment
    by_tile = {o.tile: o for o in response.openings}
    if len(by_tile) != len(response.openings):
        raise Reject("opening response holds a tile twice")
    out = {}
    for tile, o in sorted(by_tile.items(), key=lambda kv: (kv[0].boundary, kv[0].chunk)):
        if not (0 <= tile.boundary <= c.num_layers and 0 <= tile.chunk < c.num_chunks):
            raise Reject(f"opened tile ({tile.boundary},{tile.chunk}) is outside the commitment")
        index = compute_leaf_index(tile.boundary, tile.chunk, c.num_chunks)
        if o.proof.leaf_index != index:
            raise Reject(f"tile ({tile.boundary},{tile.chunk}) opened at the wrong leaf index")
        rows = min(c.chunk_size, len(c.tokens) - tile.chunk * c.chunk_size)
        try:
            check_inclusion(c.merkle_root, c.num_leaves, o.leaf, o.proof)  # [REJECT] bad opening
            out[tile] = decode_tile(
                o.leaf, boundary=tile.boundary, chunk=tile.chunk, rows=rows, cols=c.hidden_size
            )
        except MalformedProof as exc:
            raise Malformed(str(exc)) from exc
        except (BadProof, BadTile) as exc:  # the executor signed the root and the leaf's hash
            raise Reject(str(exc)) from exc
    return out


def measure_embedding(
    model: LayerModel,
    tokens: tuple[int, ...],
    tiles: dict[TileRef, npt.NDArray[np.float32]],
    num_chunks: int,
) -> tuple[float, int]:
    """Return the largest boundary-0 error and its position. [VERIFY.3]"""
    committed = np.concatenate([tiles[TileRef(0, k)] for k in range(num_chunks)])
    expected = model.embed(tokens)
    errs = compute_rel_errors(committed, expected, np.zeros_like(expected))
    i = int(np.argmax(errs))
    return float(errs[i]), i


def measure_layer(
    model: LayerModel,
    layer: int,
    chunks: tuple[int, ...],
    tiles: dict[TileRef, npt.NDArray[np.float32]],
    chunk_size: int,
    num_tokens: int,
) -> LayerCheck:
    """Re-execute ``layer`` from the committed input and measure each challenged chunk."""
    x = np.concatenate([tiles[TileRef(layer - 1, k)] for k in range(max(chunks) + 1)])
    y_prime, update = model.run_layer_with_update(layer, x)
    worst, worst_pos, witness = 0.0, 0, 0.0
    for k in chunks:
        lo = k * chunk_size
        hi = min(lo + chunk_size, num_tokens)
        errs = compute_rel_errors(y_prime[lo:hi], tiles[TileRef(layer, k)], x[lo:hi])
        witness += float(np.linalg.norm(update[lo:hi].astype(np.float64), axis=-1).sum())
        i = int(np.argmax(errs))
        if errs[i] > worst:
            worst, worst_pos = float(errs[i]), lo + i
    return LayerCheck(layer, chunks, worst, worst_pos, min(witness, _MARGIN_CAP))


def measure_sequence(model: LayerModel, signed: SignedCommitment) -> SketchCheck:
    """Recompute the last boundary with one prefill and compare it with the sketch. [SKETCH.4]"""
    c = signed.commitment
    return measure_sketch(model.final_states(c.tokens), c.sketch)


def measure_sampler(
    model: LayerModel,
    request: InferenceRequest,
    signed: SignedCommitment,
    position: int,
    tiles: dict[TileRef, npt.NDArray[np.float32]],
) -> SamplerCheck:
    """Recompute the sampler's choice of the token at ``position``. [VERIFY.6]"""
    c = signed.commitment
    prev = position - 1
    tile = tiles[TileRef(c.num_layers, prev // c.chunk_size)]
    h = tile[prev % c.chunk_size]
    margin = model.sampler_margin(h[None], request, position, c.tokens[position])
    return SamplerCheck(position=position, margin=min(float(margin), _MARGIN_CAP))


def compute_commitment_problem(
    request: InferenceRequest,
    signed: SignedCommitment,
    num_layers: int,
    hidden_size: int,
    vocab_size: int,
    profiles: Sequence[str] = (DEFAULT_PROFILE,),
) -> str | None:
    """Return why the signed commitment contradicts ``request`` or the model, or ``None``.

    ``profiles``: the executor profiles the network admits ([EXEC.5]); a commitment of any
    other profile is refused, since no calibrated band could judge it.
    """
    c = signed.commitment
    # The caller has checked that the commitment is bound to ``request`` (its digest); the
    # output length is the length rule's (compute_length_violation).
    problems = [
        (c.model_id != request.model_id, "commitment names another model"),
        (c.tokens[: c.prompt_len] != request.prompt_tokens, "committed prompt differs"),
        (len(c.tokens) > MAX_TOKENS, "too many tokens"),
        (max(c.tokens) >= vocab_size, "token id outside the model's vocabulary"),
        (c.num_layers != num_layers, "commitment has the wrong number of layers"),
        (c.hidden_size != hidden_size, "commitment has the wrong hidden size"),
        (c.profile not in profiles, f"execution profile {c.profile} is not admitted"),
        (_sketch_problem(c.sketch, len(c.tokens)), "sketch does not fit the committed tokens"),
    ]
    return next((why for bad, why in problems if bad), None)


def _sketch_problem(sketch: tuple[bytes, ...], num_tokens: int) -> bool:
    try:
        check_sketch_shape(sketch, num_tokens)
    except SketchError:
        return True
    return False

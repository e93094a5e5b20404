"""Challenge derivation: which layers and tiles a verifier checks. [CHAL.1]-[CHAL.4]

A verifier signs ``compute_challenge_message(commitment digest)`` and hashes the signature.
The executor cannot predict the seed (it lacks the verifier's key) and anyone can recheck it.
A verifier *can* grind it (Ed25519 signing is deterministic per RFC 8032, but a key holder can
make other valid signatures with other nonces); that gains a faulty verifier nothing it could
not get by voting falsely, and a VRF would remove it. [CHAL.2]
"""

from __future__ import annotations

from dataclasses import dataclass

from bft.encoding import sha256
from bft.messages import Commitment, InferenceRequest, TileRef
from bft.types import Signature

_MAX_DRAWS = 1 << 16


@dataclass(frozen=True, slots=True)
class LayerChallenge:
    """Re-execute decoder layer ``layer`` (1..L) at the positions of ``chunks``."""

    layer: int
    chunks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Challenge:
    """A verifier's challenge for one commitment.

    ``positions`` are output-token positions ``p`` whose token the sampler check recomputes
    from the last boundary at ``p - 1``. ``num_layers`` and ``chunk_size`` locate those tiles.
    """

    seed: bytes
    layers: tuple[LayerChallenge, ...]
    num_chunks: int
    positions: tuple[int, ...] = ()
    num_layers: int = 0
    chunk_size: int = 1
    sequence_check: bool = False
    """Whether this verifier also runs the whole-sequence sketch check. [SKETCH.4]"""

    def required_tiles(self) -> tuple[TileRef, ...]:
        """Return the tiles to open, sorted. [CHAL.3]

        Boundary 0 at every chunk (the embedding check); for each layer ``b`` the input
        boundary ``b-1`` at chunks ``0..max(chunks)`` (causal attention needs every earlier
        position) and the output boundary ``b`` at the challenged chunks; for each sampler
        position ``p`` the last boundary ``L`` at the chunk of ``p - 1``.
        """
        tiles = {TileRef(0, c) for c in range(self.num_chunks)}
        for lc in self.layers:
            tiles.update(TileRef(lc.layer - 1, c) for c in range(max(lc.chunks) + 1))
            tiles.update(TileRef(lc.layer, c) for c in lc.chunks)
        tiles.update(TileRef(self.num_layers, (p - 1) // self.chunk_size) for p in self.positions)
        return tuple(sorted(tiles, key=lambda t: (t.boundary, t.chunk)))


def compute_seed(challenge_signature: Signature) -> bytes:
    """Return the challenge seed: ``sha256(challenge_signature)``."""
    return sha256(challenge_signature)


def compute_sample(seed: bytes, label: str, population: int, k: int) -> tuple[int, ...]:
    """Return ``min(k, population)`` distinct integers in ``[0, population)``, sorted. [CHAL.4]

    Draw ``i`` is ``u64(sha256(seed || label || u32(i))[:8])``, rejected when it falls in the
    biased tail or repeats an earlier pick.
    """
    if population <= 0 or k <= 0:
        return ()
    k = min(k, population)
    limit = (1 << 64) - (1 << 64) % population
    chosen: list[int] = []
    for i in range(_MAX_DRAWS):
        x = int.from_bytes(sha256(seed + label.encode() + i.to_bytes(4, "big"))[:8], "big")
        if x >= limit:
            continue
        v = x % population
        if v not in chosen:
            chosen.append(v)
            if len(chosen) == k:
                break
    return tuple(sorted(chosen))


def draw_sequence_check(seed: bytes, sequence_check_ppm: int) -> bool:
    """Return whether the challenge with ``seed`` includes the sketch check. [SKETCH.4]

    ``u64(sha256(seed || "sequence")[:8]) * 10**6 < sequence_check_ppm * 2**64``: probability
    ``sequence_check_ppm / 10**6``, unpredictable to the executor, rechecked by anyone.
    """
    x = int.from_bytes(sha256(seed + b"sequence")[:8], "big")
    return x * 1_000_000 < sequence_check_ppm << 64


def compute_challenge(
    challenge_signature: Signature,
    num_layers: int,
    num_chunks: int,
    layers_per_verifier: int,
    *,
    prompt_len: int = 0,
    num_tokens: int = 0,
    chunk_size: int = 1,
    positions_per_verifier: int = 0,
    escalated: bool = False,
    sequence_check_ppm: int = 0,
) -> Challenge:
    """Return the challenge seeded by ``challenge_signature``. [CHAL.2], [CHAL.5]

    Samples ``k = layers_per_verifier`` distinct layers from ``1..num_layers`` (every chunk of a
    sampled layer is checked) and ``m = positions_per_verifier`` distinct output positions from
    ``prompt_len..num_tokens-1``. ``escalated`` doubles both; because the draws are sequential,
    the escalated challenge contains the base one. [VERIFY.7] The escalated challenge
    always includes the whole-sequence sketch check. [SKETCH.4]
    """
    seed = compute_seed(challenge_signature)
    factor = 2 if escalated else 1
    picks = compute_sample(seed, "layers", num_layers, factor * layers_per_verifier)
    all_chunks = tuple(range(num_chunks))
    layers = tuple(LayerChallenge(layer=p + 1, chunks=all_chunks) for p in picks)
    outputs = max(0, num_tokens - prompt_len)
    offsets = compute_sample(seed, "positions", outputs, factor * positions_per_verifier)
    return Challenge(
        seed=seed,
        layers=layers,
        num_chunks=num_chunks,
        positions=tuple(prompt_len + o for o in offsets),
        num_layers=num_layers,
        chunk_size=chunk_size,
        sequence_check=escalated or draw_sequence_check(seed, sequence_check_ppm),
    )


def compute_commitment_challenge(
    challenge_signature: Signature,
    commitment: Commitment,
    request: InferenceRequest,
    escalated: bool = False,
) -> Challenge:
    """Return the challenge for ``commitment`` under ``request``'s policy."""
    return compute_challenge(
        challenge_signature,
        commitment.num_layers,
        commitment.num_chunks,
        request.layers_per_verifier,
        prompt_len=commitment.prompt_len,
        num_tokens=len(commitment.tokens),
        chunk_size=commitment.chunk_size,
        positions_per_verifier=request.positions_per_verifier,
        escalated=escalated,
        sequence_check_ppm=request.sequence_check_ppm,
    )

"""The protocol's statements as frozen dataclasses, with their canonical signing roots.

Each signed statement has a ``signing_root()`` built by :mod:`bft.encoding` with its own domain
tag. [ENC.1] Structural bounds are checked by ``validate()``; signatures by ``check_*`` helpers.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from bft.crypto import check_signature, compute_node_id
from bft.encoding import Canonical, compute_signing_root, sha256
from bft.errors import Malformed
from bft.limits import (
    MAX_EPOCH,
    MAX_F,
    MAX_HIDDEN,
    MAX_LAYERS,
    MAX_LEAVES,
    MAX_STRING,
    MAX_TEXT,
    MAX_TOKENS,
    MAX_VOCAB,
    PPM,
    check_network_id,
)
from bft.types import (
    DIGEST_SIZE,
    PUBLIC_KEY_SIZE,
    REQUEST_ID_SIZE,
    SIGNATURE_SIZE,
    Digest,
    ModelId,
    NodeId,
    PublicKey,
    Signature,
)
from merkle.errors import SketchError
from merkle.sketch import SketchCheck, check_sketch_shape
from merkle.tree import MerkleProof

TAG_REQUEST = "verihive/request/v1"
TAG_COMMITMENT = "verihive/commitment/v1"
TAG_OPENING = "verihive/opening/v1"
TAG_CHALLENGE = "verihive/challenge/v1"
TAG_VOTE = "verihive/vote/v1"
TAG_SAMPLING_SEED = "verihive/sampling-seed/v1"
TAG_EVIDENCE = "verihive/evidence/v1"


def _check_len(value: bytes, size: int, what: str) -> None:
    if len(value) != size:
        raise Malformed(f"{what} must be {size} bytes, got {len(value)}")


def _check_str(value: str, what: str) -> None:
    if len(value) > MAX_STRING:
        raise Malformed(f"{what} longer than {MAX_STRING} characters")


def _check_tokens(tokens: tuple[int, ...], what: str) -> None:
    if len(tokens) > MAX_TOKENS:
        raise Malformed(f"{what}: {len(tokens)} tokens exceed the limit of {MAX_TOKENS}")
    if any(not 0 <= t < MAX_VOCAB for t in tokens):
        raise Malformed(f"{what}: token id out of range")


class Verdict(enum.IntEnum):
    """A verifier's verdict on one commitment. [VOTE.1]"""

    ACCEPT = 1
    REJECT = 2
    UNAVAILABLE = 3


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling parameters. ``temperature`` 0 means greedy; ``top_k`` 0 and ``top_p`` 1 mean off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_at_eos: bool = True

    def validate(self) -> None:
        """Raise :class:`Malformed` on out-of-range parameters."""
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 100.0):
            raise Malformed("temperature must be in [0, 100]")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise Malformed("top_p must be in (0, 1]")
        if not 0 <= self.top_k <= MAX_VOCAB:
            raise Malformed("top_k out of range")
        if not 1 <= self.max_new_tokens <= MAX_TOKENS:
            raise Malformed(f"max_new_tokens must be in [1, {MAX_TOKENS}]")

    def encode(self) -> bytes:
        """Return the canonical bytes of these parameters."""
        return (
            Canonical()
            .f64(self.temperature)
            .u64(self.top_k)
            .f64(self.top_p)
            .u64(self.max_new_tokens)
            .bool_(self.stop_at_eos)
            .build()
        )


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """What the assembler fixes before execution. [REQ.1]

    ``f``, ``layers_per_verifier`` (k) and ``positions_per_verifier`` (m, sampler checks) bind
    the quorum and challenge policy into the request digest that executor and verifiers sign,
    so a receipt cannot be re-read under another policy.
    """

    network_id: str
    request_id: bytes
    epoch: int
    model_id: ModelId
    prompt_tokens: tuple[int, ...]
    sampling: SamplingParams
    f: int
    layers_per_verifier: int
    validator_set_digest: Digest
    positions_per_verifier: int = 4
    sequence_check_ppm: int = 0
    """Chance, in parts per million, that a verifier also runs the sketch check. [SKETCH.4]"""

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems."""
        check_network_id(self.network_id)
        _check_len(self.request_id, REQUEST_ID_SIZE, "request_id")
        _check_len(self.model_id, DIGEST_SIZE, "model_id")
        _check_len(self.validator_set_digest, DIGEST_SIZE, "validator_set_digest")
        if not self.prompt_tokens:
            raise Malformed("empty prompt")
        _check_tokens(self.prompt_tokens, "prompt")
        if len(self.prompt_tokens) + self.sampling.max_new_tokens > MAX_TOKENS:
            raise Malformed("prompt + max_new_tokens exceeds the token limit")
        self.sampling.validate()
        if not 0 <= self.f <= MAX_F:
            raise Malformed(f"f must be in [0, {MAX_F}]")
        if not 1 <= self.layers_per_verifier <= MAX_LAYERS:
            raise Malformed("layers_per_verifier out of range")
        if not 0 <= self.positions_per_verifier <= MAX_TOKENS:
            raise Malformed("positions_per_verifier out of range")
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise Malformed("epoch out of range")
        if not 0 <= self.sequence_check_ppm <= PPM:
            raise Malformed(f"sequence_check_ppm must be in [0, {PPM}]")

    def digest(self) -> Digest:
        """Return the request digest that commitments and votes sign over."""
        body = (
            Canonical()
            .bytes_(self.request_id)
            .u64(self.epoch)
            .bytes_(self.model_id)
            .u32s(self.prompt_tokens)
            .bytes_(self.sampling.encode())
            .u64(self.f)
            .u64(self.layers_per_verifier)
            .bytes_(self.validator_set_digest)
            .u64(self.positions_per_verifier)
            .u64(self.sequence_check_ppm)
            .build()
        )
        return compute_signing_root(TAG_REQUEST, self.network_id, body)

    def sampling_seed(self) -> bytes:
        """Return the 32-byte sampling seed derived from ``request_id``. [SAMPLE.1]"""
        return compute_signing_root(TAG_SAMPLING_SEED, self.network_id, self.request_id)

    @property
    def quorum(self) -> int:
        """Return the number of distinct ACCEPT votes a certificate needs: 2f+1."""
        return 2 * self.f + 1

    @property
    def committee_size(self) -> int:
        """Return the committee size 3f+1."""
        return 3 * self.f + 1


@dataclass(frozen=True, slots=True)
class Commitment:
    """What an executor commits to for one request. [COMMIT.1]

    ``tokens`` holds prompt and output; ``tokens[:prompt_len]`` is the prompt. ``merkle_root``
    is the root over ``(num_layers + 1) * ceil(len(tokens) / chunk_size)`` tiles.
    """

    network_id: str
    request_digest: Digest
    model_id: ModelId
    executor_key: PublicKey
    tokens: tuple[int, ...]
    prompt_len: int
    dtype: str
    backend: str
    num_layers: int
    hidden_size: int
    chunk_size: int
    merkle_root: Digest
    num_leaves: int
    sketch: tuple[bytes, ...] = ()
    """The whole-sequence sketch of the last boundary, one entry per 32 positions. [SKETCH.1]"""
    settings: str = ""
    """How the executor ran: device, library versions, kernels, parallelism. [EXEC.6]

    Informational: verifiers select their bands by :attr:`profile`, never by this string."""

    @property
    def profile(self) -> str:
        """Return the execution profile ``<backend>-<dtype>`` (selects the bands). [EXEC.5]"""
        return f"{self.backend}-{self.dtype}"

    @property
    def executor_id(self) -> NodeId:
        """Return the node id of the executor."""
        return compute_node_id(self.executor_key)

    @property
    def output_tokens(self) -> tuple[int, ...]:
        """Return the generated tokens."""
        return self.tokens[self.prompt_len :]

    @property
    def num_chunks(self) -> int:
        """Return the number of chunks per boundary."""
        return -(-len(self.tokens) // self.chunk_size)

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems."""
        check_network_id(self.network_id)
        _check_str(self.dtype, "dtype")
        _check_str(self.backend, "backend")
        _check_str(self.settings, "settings")
        _check_len(self.request_digest, DIGEST_SIZE, "request_digest")
        _check_len(self.model_id, DIGEST_SIZE, "model_id")
        _check_len(self.executor_key, PUBLIC_KEY_SIZE, "executor_key")
        _check_len(self.merkle_root, DIGEST_SIZE, "merkle_root")
        _check_tokens(self.tokens, "commitment")
        if not 1 <= self.prompt_len < len(self.tokens) + 1:
            raise Malformed("prompt_len out of range")
        if not 1 <= self.num_layers <= MAX_LAYERS:
            raise Malformed("num_layers out of range")
        if not 1 <= self.hidden_size <= MAX_HIDDEN:
            raise Malformed("hidden_size out of range")
        if not 1 <= self.chunk_size <= MAX_TOKENS:
            raise Malformed("chunk_size out of range")
        if self.num_leaves != (self.num_layers + 1) * self.num_chunks:
            raise Malformed("num_leaves does not match layers and chunks")
        if self.num_leaves > MAX_LEAVES:
            raise Malformed("too many leaves")
        try:
            check_sketch_shape(self.sketch, len(self.tokens))
        except SketchError as exc:
            raise Malformed(str(exc)) from None

    def signing_root(self) -> Digest:
        """Return the digest the executor signs; also the commitment's identity."""
        body = (
            Canonical()
            .bytes_(self.request_digest)
            .bytes_(self.model_id)
            .bytes_(self.executor_key)
            .u32s(self.tokens)
            .u64(self.prompt_len)
            .str_(self.dtype)
            .str_(self.backend)
            .u64(self.num_layers)
            .u64(self.hidden_size)
            .u64(self.chunk_size)
            .bytes_(self.merkle_root)
            .u64(self.num_leaves)
            .list_(self.sketch)
            .str_(self.settings)
            .build()
        )
        return compute_signing_root(TAG_COMMITMENT, self.network_id, body)


@dataclass(frozen=True, slots=True)
class SignedCommitment:
    """A commitment with the executor's signature over its signing root."""

    commitment: Commitment
    signature: Signature

    @property
    def digest(self) -> Digest:
        """Return the commitment digest (its signing root)."""
        return self.commitment.signing_root()

    def check(self) -> None:
        """Raise unless well-formed and signed by ``commitment.executor_key``. [COMMIT.2]"""
        self.commitment.validate()
        _check_len(self.signature, SIGNATURE_SIZE, "commitment signature")
        check_signature(self.commitment.executor_key, self.digest, self.signature, "commitment")


@dataclass(frozen=True, slots=True)
class TileRef:
    """The address of one tile: layer boundary and chunk."""

    boundary: int
    chunk: int


@dataclass(frozen=True, slots=True)
class TileOpening:
    """An opened tile: its leaf bytes and inclusion proof."""

    tile: TileRef
    leaf: bytes
    proof: MerkleProof


@dataclass(frozen=True, slots=True)
class OpeningResponse:
    """Openings an executor serves for a commitment, signed by it. [OPEN.1]"""

    network_id: str
    commitment_digest: Digest
    openings: tuple[TileOpening, ...]
    signature: Signature
    commitment: SignedCommitment | None = None
    """The signed commitment these openings are against (its digest is ``commitment_digest``);
    carried so that a verifier who was given another root for the same request holds both
    signed roots: equivocation evidence. [OPEN.4]"""

    def signing_root(self) -> Digest:
        """Return the digest the executor signs: commitment digest; each tile, leaf hash, proof."""
        items = [
            Canonical()
            .u64(o.tile.boundary)
            .u64(o.tile.chunk)
            .bytes_(sha256(o.leaf))
            .u64(o.proof.leaf_index)
            .u64(o.proof.tree_size)
            .list_(Canonical().u64(s.bit).bytes_(s.digest).build() for s in o.proof.steps)
            .build()
            for o in self.openings
        ]
        body = Canonical().bytes_(self.commitment_digest).list_(items).build()
        return compute_signing_root(TAG_OPENING, self.network_id, body)


def compute_challenge_message(network_id: str, commitment_digest: Digest) -> Digest:
    """Return the digest a verifier signs to derive its challenge seed. [CHAL.1]"""
    return compute_signing_root(
        TAG_CHALLENGE, network_id, Canonical().bytes_(commitment_digest).build()
    )


@dataclass(frozen=True, slots=True)
class LayerCheck:
    """A verifier's measurement of one re-executed layer. [VOTE.2]

    ``max_rel_error`` is the largest per-position ``|y' - y| / |y - x|`` (dimensionless).
    ``witness`` is the sum over the challenged positions of the L2 norm of the layer's
    attention update (its attention block's output, before the residual add): a value no
    commitment holds, so only a verifier that ran the layer knows it, and anyone who re-runs
    it can spot-audit the vote. [VOTE.4]
    """

    layer: int
    chunks: tuple[int, ...]
    max_rel_error: float
    worst_position: int
    witness: float = 0.0

    def encode(self) -> bytes:
        """Return canonical bytes."""
        return (
            Canonical()
            .u64(self.layer)
            .u32s(self.chunks)
            .f64(self.max_rel_error)
            .u64(self.worst_position)
            .f64(self.witness)
            .build()
        )


@dataclass(frozen=True, slots=True)
class SamplerCheck:
    """A verifier's measurement of the sampler at one position. [VOTE.2]

    ``margin`` is :func:`executor.sampler.compute_sampler_margin` of the committed token at
    ``position``, in logit units.
    """

    position: int
    margin: float

    def encode(self) -> bytes:
        """Return canonical bytes."""
        return Canonical().u64(self.position).f64(self.margin).build()


class EvidenceCheck(enum.Enum):
    """Which check a piece of evidence claims the executor failed. [EVID.1]"""

    COMMITMENT = "commitment"  # signed commitment inconsistent with the request or the model
    LENGTH = "length"  # output length / EOS rule broken
    OPENING = "opening"  # a signed opening that does not open the signed root
    EMBEDDING = "embedding"  # boundary 0 is not the embedding of the committed tokens
    LAYER = "layer"  # a layer does not recompute
    SAMPLER = "sampler"  # a committed token is not the seeded sampler's choice
    SEQUENCE = "sequence"  # the sketch does not match the committed tokens' last boundary
    EQUIVOCATION = "equivocation"  # two signed roots for one request


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a REJECT proves, checkable by a third party. [EVID.1]-[EVID.3]

    ``signed`` is the accused commitment, ``response`` the executor's signed opening response
    (for opening and computation claims), ``other`` a second signed commitment (equivocation).
    ``layer``/``position`` locate the claim; ``measured`` is the accuser's measurement.
    """

    check: EvidenceCheck
    request: InferenceRequest
    signed: SignedCommitment
    response: OpeningResponse | None = None
    other: SignedCommitment | None = None
    layer: int = 0
    position: int = 0
    measured: float = 0.0
    detail: str = ""

    @property
    def executor_key(self) -> PublicKey:
        """Return the accused executor's key."""
        return self.signed.commitment.executor_key

    def digest(self) -> Digest:
        """Return the digest votes sign over: every signed part and the claim."""
        r = self.response
        body = (
            Canonical()
            .str_(self.check.value)
            .bytes_(self.request.digest())
            .bytes_(self.signed.digest)
            .bytes_(self.signed.signature)
            .bytes_(r.signing_root() if r else b"")
            .bytes_(r.signature if r else b"")
            .bytes_(self.other.digest if self.other else b"")
            .bytes_(self.other.signature if self.other else b"")
            .u64(self.layer)
            .u64(self.position)
            .f64(self.measured)
            .str_(self.detail)
            .build()
        )
        return compute_signing_root(TAG_EVIDENCE, self.request.network_id, body)


@dataclass(frozen=True, slots=True)
class Vote:
    """A verifier's signed vote on one commitment. [VOTE.1]

    ``challenge_signature`` is the verifier's signature over the challenge message; its hash
    seeds the challenge, so anyone can recheck which layers had to be checked. [CHAL.2]
    """

    network_id: str
    request_digest: Digest
    commitment_digest: Digest
    verifier_key: PublicKey
    verdict: Verdict
    challenge_signature: Signature
    layer_checks: tuple[LayerCheck, ...]
    embedding_max_error: float
    reason: str
    signature: Signature = field(default=Signature(b""))
    sampler_checks: tuple[SamplerCheck, ...] = ()
    escalated: bool = False
    """Whether the grey band made this verifier check the doubled challenge. [VERIFY.7]"""
    evidence: Evidence | None = None
    """Set on every REJECT. [EVID.1]"""
    sequence_check: SketchCheck | None = None
    """The whole-sequence sketch check, when the challenge drew it. [SKETCH.4]"""

    @property
    def verifier_id(self) -> NodeId:
        """Return the verifier's node id."""
        return compute_node_id(self.verifier_key)

    @property
    def max_error(self) -> float:
        """Return the largest layer error measured (0 when none)."""
        return max((c.max_rel_error for c in self.layer_checks), default=0.0)

    @property
    def max_margin(self) -> float:
        """Return the largest sampler margin measured (0 when none)."""
        return max((c.margin for c in self.sampler_checks), default=0.0)

    def validate(self) -> None:
        """Raise :class:`Malformed` on structural problems."""
        check_network_id(self.network_id)
        _check_len(self.request_digest, DIGEST_SIZE, "request_digest")
        _check_len(self.commitment_digest, DIGEST_SIZE, "commitment_digest")
        _check_len(self.verifier_key, PUBLIC_KEY_SIZE, "verifier_key")
        _check_len(self.challenge_signature, SIGNATURE_SIZE, "challenge_signature")
        _check_len(self.signature, SIGNATURE_SIZE, "vote signature")
        if len(self.reason) > MAX_TEXT:
            raise Malformed("vote reason too long")
        if len(self.layer_checks) > MAX_LAYERS:
            raise Malformed("too many layer checks")
        if len(self.sampler_checks) > MAX_TOKENS:
            raise Malformed("too many sampler checks")
        if any(len(c.chunks) > MAX_TOKENS for c in self.layer_checks):
            raise Malformed("too many chunks in a layer check")  # a chunk holds a token or more
        if (self.evidence is not None) != (self.verdict is Verdict.REJECT):
            raise Malformed("a REJECT vote carries evidence and no other vote does")
        values = [
            self.embedding_max_error,
            *(c.max_rel_error for c in self.layer_checks),
            *(c.witness for c in self.layer_checks),
            *(c.margin for c in self.sampler_checks),
        ]
        if self.sequence_check is not None:
            values.append(self.sequence_check.mismatch)
            if self.sequence_check.mismatch > 1 or not 0 <= self.sequence_check.chunk < 1 << 32:
                raise Malformed("sequence check out of range")
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise Malformed("vote measurements must be finite and non-negative")

    def signing_root(self) -> Digest:
        """Return the digest the verifier signs (every field but the signature)."""
        body = (
            Canonical()
            .bytes_(self.request_digest)
            .bytes_(self.commitment_digest)
            .bytes_(self.verifier_key)
            .u64(int(self.verdict))
            .bytes_(self.challenge_signature)
            .list_(c.encode() for c in self.layer_checks)
            .f64(self.embedding_max_error)
            .str_(self.reason)
            .list_(c.encode() for c in self.sampler_checks)
            .bool_(self.escalated)
            .bytes_(self.evidence.digest() if self.evidence else b"")
            .bytes_(_encode_sketch_check(self.sequence_check))
            .build()
        )
        return compute_signing_root(TAG_VOTE, self.network_id, body)

    def check(self) -> None:
        """Raise unless well-formed and signed by ``verifier_key``."""
        self.validate()
        check_signature(self.verifier_key, self.signing_root(), self.signature, "vote")


def _encode_sketch_check(check: SketchCheck | None) -> bytes:
    if check is None:
        return b""
    return Canonical().u64(check.chunk).f64(check.mismatch).build()

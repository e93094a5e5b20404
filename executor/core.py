"""The executor's protocol core: execute, commit, open. [COMMIT.1]-[COMMIT.7], [OPEN.1]-[OPEN.3]

No sockets, clocks or randomness here: the gRPC service in :mod:`verihive.services` calls in,
from several threads; one execution per request runs at a time ([COMMIT.6]).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from bft.crypto import SigningKey
from bft.errors import Malformed, NotFound, Reject, Unavailable
from bft.messages import (
    Commitment,
    InferenceRequest,
    OpeningResponse,
    SignedCommitment,
    TileOpening,
    TileRef,
)
from bft.types import Digest, ModelId, Signature
from executor.backend import Backend, BatchingBackend
from merkle.sketch import compute_sketch
from merkle.tiles import compute_leaf_index, compute_num_chunks, encode_tile
from merkle.tree import ActivationTree

DEFAULT_CHUNK_SIZE = 16
DEFAULT_MAX_STORED = 64
MAX_REMEMBERED_REQUESTS = 1 << 14
"""Commitments remembered per request digest (a few hundred bytes each), beyond the tiles."""


@dataclass(frozen=True)
class CommittedRun:
    """What an executor keeps for a commitment until its challenge window closes."""

    signed: SignedCommitment
    tree: ActivationTree


def compute_tiles(states: npt.NDArray[np.float32], chunk_size: int) -> list[bytes]:
    """Return the encoded tiles of ``states`` (``[L+1, T, H]``) in leaf order. [TILE.2]"""
    num_boundaries, t, _ = states.shape
    num_chunks = compute_num_chunks(t, chunk_size)
    leaves = []
    for b in range(num_boundaries):
        for c in range(num_chunks):
            leaves.append(encode_tile(b, c, states[b, c * chunk_size : (c + 1) * chunk_size]))
    return leaves


_Flight = Future[SignedCommitment]
"""One execution in flight: resolves to its signed commitment, or to its failure."""


class ExecutorCore:
    """Runs requests on a backend, signs commitments and serves openings.

    Safe to call from several threads: calls for one request share one execution ([COMMIT.6]).
    Subclasses in :mod:`simnet.executors` override :meth:`compute_states` or
    :meth:`compute_committed_tokens` to lie; the checks must catch them regardless.
    """

    def __init__(
        self,
        key: SigningKey,
        backend: Backend,
        model_id: ModelId,
        network_id: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_stored: int = DEFAULT_MAX_STORED,
    ) -> None:
        self.key = key
        self.backend = backend
        self.model_id = model_id
        self.network_id = network_id
        self.chunk_size = chunk_size
        self.max_stored = max_stored
        self._runs: OrderedDict[Digest, CommittedRun] = OrderedDict()
        self._by_request: OrderedDict[Digest, SignedCommitment] = OrderedDict()
        self._by_commitment: OrderedDict[Digest, SignedCommitment] = OrderedDict()
        """The remembered commitments of ``_by_request`` by commitment digest ([COMMIT.7])."""
        self._in_flight: dict[Digest, _Flight] = {}
        self._lock = threading.Lock()

    def on_execute(self, request: InferenceRequest) -> SignedCommitment:
        """Return the signed commitment for ``request``, executing it once. [COMMIT.5]

        A request seen before gets the commitment already signed for it, and one being executed
        gets that execution's commitment ([COMMIT.6]): executing it again on a backend that is
        not bit-reproducible would sign a second root for one request, which is equivocation.
        """
        self.check_request(request)
        digest = request.digest()
        with self._lock:
            claim = self._claim(digest)
        if isinstance(claim, SignedCommitment):
            return claim
        flight, mine = claim
        if not mine:
            return self._await(flight)
        try:
            signed = self.execute_fresh(request)
        except BaseException as exc:
            self._land(digest, flight, error=exc)
            raise
        self._land(digest, flight, signed)
        return signed

    def _claim(self, digest: Digest) -> SignedCommitment | tuple[_Flight, bool]:
        """Return the commitment for ``digest``, else its flight and whether this call owns it.

        Call with the lock held. A digest neither committed nor in flight gets a new flight,
        owned by the caller, which must :meth:`_land` it.
        """
        known = self._by_request.get(digest)
        if known is not None:
            return known
        flight = self._in_flight.get(digest)
        if flight is not None:
            return flight, False
        flight = self._in_flight[digest] = _Flight()
        return flight, True

    def _land(
        self,
        digest: Digest,
        flight: _Flight,
        signed: SignedCommitment | None = None,
        error: BaseException | None = None,
    ) -> None:
        """End the flight of ``digest`` with ``signed`` (remembered first) or with ``error``."""
        with self._lock:
            if signed is not None:
                self._remember(digest, signed)
            del self._in_flight[digest]
        if signed is not None:
            flight.set_result(signed)
        else:
            flight.set_exception(error or RuntimeError("execution ended without a result"))

    def _await(self, flight: _Flight) -> SignedCommitment:
        """Return the commitment of an execution in flight; ``Unavailable`` if it failed."""
        error = flight.exception()
        if error is not None:
            raise Unavailable(f"the execution of this request failed: {error}") from error
        return flight.result()

    def process_recalled(self, signed: SignedCommitment) -> None:
        """Remember ``signed``, a commitment this key signed before a restart ([NODE.1]).

        A repeat of its request is answered with it ([COMMIT.5]) and an ``Open`` recomputes its
        tree ([COMMIT.7]). Raise :class:`Reject` for a commitment signed by another key.
        """
        signed.check()
        if signed.commitment.executor_key != self.key.public_key:
            raise Reject("a recalled commitment is signed by another key")
        with self._lock:
            self._remember(signed.commitment.request_digest, signed)

    def get_in_flight_count(self) -> int:
        """Return how many executions are running now (at most one per request digest)."""
        with self._lock:
            return len(self._in_flight)

    def get_held_commitments(self) -> list[SignedCommitment]:
        """Return the commitments whose trees this executor holds ([COMMIT.4]), oldest first."""
        with self._lock:
            return [run.signed for run in self._runs.values()]

    def check_request(self, request: InferenceRequest) -> None:
        """Raise unless ``request`` is well formed and for this network and model."""
        request.validate()
        if request.network_id != self.network_id:
            raise Malformed("request is for another network")
        if request.model_id != self.model_id:
            raise Reject("request names a model this executor does not serve")
        if max(request.prompt_tokens) >= self.backend.info.vocab_size:
            raise Malformed("prompt token id outside the model's vocabulary")

    def execute_fresh(self, request: InferenceRequest) -> SignedCommitment:
        """Generate for ``request``, commit to every layer boundary, sign, and keep the tiles."""
        prompt = list(request.prompt_tokens)
        output = self.backend.generate(prompt, request.sampling, request.sampling_seed())
        return self.commit(request, output)

    def execute_many(self, requests: Sequence[InferenceRequest]) -> list[SignedCommitment]:
        """Execute ``requests`` with one batched generation where the backend has one.

        A GPU backend (vLLM) generates a batch far faster than one request at a time; each
        request is then committed on its own, exactly as :meth:`execute_fresh` would. A request
        already answered, repeated within the batch or in flight elsewhere gets the commitment
        signed for it, as in :meth:`on_execute` ([COMMIT.5], [COMMIT.6]). This call ends the
        flights it started before it waits on those of other calls, so calls never wait on each
        other in a circle.
        """
        for request in requests:
            self.check_request(request)
        digests = [r.digest() for r in requests]
        known: dict[Digest, SignedCommitment] = {}
        others: dict[Digest, _Flight] = {}
        mine: dict[Digest, tuple[InferenceRequest, _Flight]] = {}
        with self._lock:
            for d, r in zip(digests, requests, strict=True):
                if d in known or d in others or d in mine:
                    continue
                claim = self._claim(d)
                if isinstance(claim, SignedCommitment):
                    known[d] = claim
                elif claim[1]:
                    mine[d] = (r, claim[0])
                else:
                    others[d] = claim[0]
        try:
            todo = [r for r, _ in mine.values()]
            for (d, (r, flight)), out in zip(mine.items(), self.generate_all(todo), strict=True):
                known[d] = self.commit(r, out)
                self._land(d, flight, known[d])
        except BaseException as exc:
            for d, (_, flight) in mine.items():
                if not flight.done():
                    self._land(d, flight, error=exc)
            raise
        for d, flight in others.items():
            known[d] = self._await(flight)
        return [known[d] for d in digests]

    def generate_all(self, requests: Sequence[InferenceRequest]) -> list[list[int]]:
        """Return the outputs of ``requests``: one batch where the backend has one."""
        items = [(list(r.prompt_tokens), r.sampling, r.sampling_seed()) for r in requests]
        if not items:
            return []
        if isinstance(self.backend, BatchingBackend):
            return list(self.backend.generate_many(items))
        return [self.backend.generate(*item) for item in items]

    def _remember(self, digest: Digest, signed: SignedCommitment) -> None:
        """Keep the commitment signed for request ``digest`` (bounded, oldest first out).

        Call with the lock held.
        """
        self._by_request[digest] = signed
        self._by_commitment[signed.digest] = signed
        while len(self._by_request) > MAX_REMEMBERED_REQUESTS:
            _, old = self._by_request.popitem(last=False)
            self._by_commitment.pop(old.digest, None)

    def commit(self, request: InferenceRequest, output: list[int]) -> SignedCommitment:
        """Commit to ``request`` answered by ``output``: prefill, tiles, tree, sketch, sign."""
        prompt = list(request.prompt_tokens)
        states = self.compute_states(prompt + output)
        tokens = self.compute_committed_tokens(prompt, output)
        leaves = compute_tiles(states, self.chunk_size)
        tree = ActivationTree(leaves)
        commitment = Commitment(
            network_id=self.network_id,
            request_digest=request.digest(),
            model_id=self.model_id,
            executor_key=self.key.public_key,
            tokens=tuple(tokens),
            prompt_len=len(prompt),
            dtype=self.backend.info.dtype,
            backend=self.backend.info.name,
            num_layers=self.backend.info.num_layers,
            hidden_size=self.backend.info.hidden_size,
            chunk_size=self.chunk_size,
            merkle_root=Digest(tree.root),
            num_leaves=tree.size,
            sketch=self.compute_sketch(states),
            settings=self.backend.info.settings,
        )
        signed = SignedCommitment(commitment, self.key.sign(commitment.signing_root()))
        with self._lock:
            self._store_run(CommittedRun(signed, tree))
        return signed

    def compute_states(self, tokens: list[int]) -> npt.NDArray[np.float32]:
        """Return the proving prefill's hidden states for ``tokens``."""
        return self.backend.prove(tokens)

    def compute_sketch(self, states: npt.NDArray[np.float32]) -> tuple[bytes, ...]:
        """Return the whole-sequence sketch of the last boundary. [SKETCH.1]"""
        return compute_sketch(states[-1])

    def compute_committed_tokens(self, prompt: list[int], output: list[int]) -> list[int]:
        """Return the token sequence to commit to (honest: prompt followed by output)."""
        return prompt + output

    def get_run(self, commitment_digest: Digest) -> CommittedRun:
        """Return the run for ``commitment_digest``, restoring an evicted one. [COMMIT.7]

        Raise :class:`NotFound` for a commitment this executor does not remember.
        """
        with self._lock:
            run = self._runs.get(commitment_digest)
            signed = self._by_commitment.get(commitment_digest)
        if run is not None:
            return run
        if signed is None:
            raise NotFound("no commitment with that digest is held here")
        return self.restore_run(signed)

    def restore_run(self, signed: SignedCommitment) -> CommittedRun:
        """Recompute the tree of remembered commitment ``signed`` after its eviction. [COMMIT.7]

        ``execute`` answers a repeated request with the commitment it signed ([COMMIT.5]) even
        after its tree left the 64 kept ([COMMIT.4]); the proving prefill of its tokens gives
        the tree again where the backend reproduces its own bits. Raise :class:`Unavailable`
        when it does not: the openings cannot be had, and signing anew would equivocate.
        """
        c = signed.commitment
        states = self.compute_states(list(c.tokens))
        tree = ActivationTree(compute_tiles(states, c.chunk_size))
        if tree.root != c.merkle_root or tree.size != c.num_leaves:
            raise Unavailable("this commitment's tiles were evicted and do not recompute here")
        run = CommittedRun(signed, tree)
        with self._lock:
            self._store_run(run)
        return run

    def _store_run(self, run: CommittedRun) -> None:
        """Keep ``run``'s tree (the newest ``max_stored``, oldest out first). Lock held."""
        self._runs[run.signed.digest] = run
        self._runs.move_to_end(run.signed.digest)
        while len(self._runs) > self.max_stored:
            self._runs.popitem(last=False)

    def on_open(self, commitment_digest: Digest, tiles: tuple[TileRef, ...]) -> OpeningResponse:
        """Return the signed openings of ``tiles`` for ``commitment_digest``. [OPEN.1]"""
        run = self.get_run(commitment_digest)
        c = run.signed.commitment
        if len(set(tiles)) != len(tiles):
            raise Malformed("duplicate tile in opening request")
        openings = []
        for tile in tiles:
            if not (0 <= tile.boundary <= c.num_layers and 0 <= tile.chunk < c.num_chunks):
                raise Malformed(f"tile ({tile.boundary},{tile.chunk}) outside the commitment")
            index = compute_leaf_index(tile.boundary, tile.chunk, c.num_chunks)
            openings.append(self.compute_opening(run, tile, index))
        return self.sign_openings(run.signed, tuple(openings))

    def sign_openings(
        self, signed: SignedCommitment, openings: tuple[TileOpening, ...]
    ) -> OpeningResponse:
        """Return ``openings`` of ``signed`` as a response signed by this executor. [OPEN.1]"""
        unsigned = OpeningResponse(self.network_id, signed.digest, openings, Signature(b""))
        sig = self.key.sign(unsigned.signing_root())
        return replace(unsigned, signature=sig, commitment=signed)

    def compute_opening(self, run: CommittedRun, tile: TileRef, index: int) -> TileOpening:
        """Return the opening of leaf ``index`` (honest: the committed leaf and its proof)."""
        return TileOpening(tile=tile, leaf=run.tree.get_leaf(index), proof=run.tree.prove(index))

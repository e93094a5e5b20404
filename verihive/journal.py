"""What a node signed, kept on disk before it leaves the process. [NODE.1]

An executor signs one commitment per request and a verifier one vote per (request, commitment)
([COMMIT.5], [VOTE.3]); both cores remember what they signed in memory, which a restart loses. A
node started with a journal keeps every commitment and vote it signs in SQLite (WAL mode,
``synchronous=FULL``: the transaction is on disk before the answer is sent) and, after a restart,
answers a repeat with the stored record instead of computing, hence signing, again: a node that
crashes mid-request can never be led to sign two roots for one request or two verdicts on one
commitment (CometBFT's privval last-sign-state plays the same part).

Records are stored as the wire format's bytes and re-checked (parsed, signature verified) when read
back: a journal that was tampered with or truncated is refused with :class:`JournalError` naming
the file, never silently used.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from bft.errors import ProtocolError
from bft.messages import SignedCommitment, Vote
from bft.types import Digest
from proto import convert
from proto import verihive_pb2 as pb

SCHEMA = """
CREATE TABLE IF NOT EXISTS commitments (
    request_digest BLOB PRIMARY KEY,
    commitment_digest BLOB NOT NULL UNIQUE,
    signed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    request_digest BLOB NOT NULL,
    commitment_digest BLOB NOT NULL,
    vote BLOB NOT NULL,
    PRIMARY KEY (request_digest, commitment_digest)
);
"""


class JournalError(Exception):
    """The journal cannot be used: unreadable, or a record in it fails its checks."""


class Journal:
    """One node's durable record of what it signed; thread-safe.

    ``keep_*`` stores a record unless one is already stored under its key and returns the stored
    one: the first record wins, so concurrent or repeated calls all answer with one record.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- executor: one commitment per request [COMMIT.5]

    def get_commitment(self, request_digest: Digest) -> SignedCommitment | None:
        """Return the commitment signed for request ``request_digest``, if any."""
        row = self._one("SELECT signed FROM commitments WHERE request_digest = ?", request_digest)
        return None if row is None else self._commitment(row)

    def get_commitment_by_digest(self, commitment_digest: Digest) -> SignedCommitment | None:
        """Return the commitment whose digest is ``commitment_digest``, if any."""
        row = self._one(
            "SELECT signed FROM commitments WHERE commitment_digest = ?", commitment_digest
        )
        return None if row is None else self._commitment(row)

    def keep_commitment(self, signed: SignedCommitment) -> SignedCommitment:
        """Store ``signed`` under its request; return the commitment stored for that request."""
        c = signed.commitment
        blob = convert.commitment_to_pb(signed).SerializeToString()
        self._insert(
            "INSERT OR IGNORE INTO commitments VALUES (?, ?, ?)",
            (c.request_digest, signed.digest, blob),
        )
        kept = self.get_commitment(c.request_digest)
        if kept is None:
            raise JournalError(f"{self.path}: a stored commitment is missing")
        return kept

    # -- verifier: one vote per (request, commitment) [VOTE.3]

    def get_vote(self, request_digest: Digest, commitment_digest: Digest) -> Vote | None:
        """Return the vote signed on (``request_digest``, ``commitment_digest``), if any."""
        row = self._one(
            "SELECT vote FROM votes WHERE request_digest = ? AND commitment_digest = ?",
            request_digest,
            commitment_digest,
        )
        return None if row is None else self._vote(row)

    def keep_vote(self, vote: Vote) -> Vote:
        """Store ``vote`` under its commitment; return the vote stored for that commitment."""
        blob = convert.vote_to_pb(vote).SerializeToString()
        self._insert(
            "INSERT OR IGNORE INTO votes VALUES (?, ?, ?)",
            (vote.request_digest, vote.commitment_digest, blob),
        )
        kept = self.get_vote(vote.request_digest, vote.commitment_digest)
        if kept is None:
            raise JournalError(f"{self.path}: a stored vote is missing")
        return kept

    # -- audit

    def list_commitments(self) -> list[SignedCommitment]:
        """Return every commitment stored, each re-checked, in the order they were kept."""
        return [self._commitment(b) for b in self._all("SELECT signed FROM commitments")]

    def list_votes(self) -> list[Vote]:
        """Return every vote stored, each re-checked, in the order they were kept."""
        return [self._vote(b) for b in self._all("SELECT vote FROM votes")]

    # -- storage

    def _all(self, sql: str) -> list[bytes]:
        with self._lock:
            try:
                rows = self._db.execute(f"{sql} ORDER BY rowid").fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: cannot read the journal: {exc}") from exc
        return [bytes(r[0]) for r in rows]

    def _one(self, sql: str, *args: bytes) -> bytes | None:
        with self._lock:
            try:
                row = self._db.execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: cannot read the journal: {exc}") from exc
        return None if row is None else bytes(row[0])

    def _insert(self, sql: str, row: tuple[bytes, ...]) -> None:
        """Insert ``row`` in its own transaction, on disk before this returns."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(sql, row)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc

    def _commitment(self, blob: bytes) -> SignedCommitment:
        try:
            signed = convert.commitment_from_pb(pb.SignedCommitment.FromString(blob))
            signed.check()
        except (ProtocolError, ValueError) as exc:  # DecodeError is a ValueError
            raise JournalError(f"{self.path}: a stored commitment fails its checks: {exc}") from exc
        return signed

    def _vote(self, blob: bytes) -> Vote:
        try:
            vote = convert.vote_from_pb(pb.Vote.FromString(blob))
            vote.check()
        except (ProtocolError, ValueError) as exc:
            raise JournalError(f"{self.path}: a stored vote fails its checks: {exc}") from exc
        return vote

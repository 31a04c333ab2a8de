"""The node's tamper-evident log: durable appends with group commit.

Every invocation and every node-local event becomes one entry. An entry is the
canonical JSON of a record (sorted keys, no whitespace, UTF-8, ``"v": 1``); its leaf
hash is RFC 6962's ``SHA-256(0x00 || entry)``. ``Log.append`` returns only once the
entry, the Merkle nodes it completes, whatever the caller's ``effect`` writes
(charged meters, a dataset row), and a checkpoint signed over the new tree are in
one committed SQLite transaction with ``synchronous=FULL``. A crash before that
commit leaves none of it, and the caller has released nothing yet.

Concurrent appends are group-committed: one writer thread drains whatever is
queued and commits it as one transaction with one checkpoint.
"""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from veil.node import state
from veil.node.bounds import MAX_ENTRY_BYTES, echo
from veil.node.audit import (
    Checkpoint,
    Frontier,
    NoteSigner,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    sign_checkpoint,
)
from veil.node.errors import InvalidInput, ResourceLimit, VeilError
from veil.protocols.canonical import canonical_json

ENTRY_VERSION = 1
MAX_BATCH = 512

#: ``effect(conn, index)`` runs inside the append's transaction, after the entry is
#: inserted at ``index``; whatever it writes commits (or not) with the entry.
Effect = Callable[[sqlite3.Connection, int], None]


def now_rfc3339() -> str:
    return log_time(datetime.now(timezone.utc))


def log_time(moment: datetime) -> str:
    """The one text form of times in entries and statements: UTC, microseconds, ``Z``.

    Fixed width, so that comparing two such strings compares the times.
    """
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


def parse_user_time(text: str, what: str) -> str:
    """A time a user typed (RFC 3339, or a date meaning its midnight UTC) in log form."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{what}: expected an RFC 3339 time like 2026-11-27T09:00:00Z or a date like "
            f"2026-11-27, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        if len(text.strip()) > 10:
            raise InvalidInput(f"{what}: {text!r} has no time zone; add Z for UTC")
        moment = moment.replace(tzinfo=timezone.utc)
    return log_time(moment)


@dataclass(frozen=True)
class Receipt:
    """Where an entry landed: its index and a signed checkpoint that covers it."""

    log_index: int
    checkpoint: str  # signed note
    tree_size: int


class EntryTooLarge(ResourceLimit):
    """A record was over :data:`MAX_ENTRY_BYTES`; a bounded refusal entry took its place.

    Its effect did not run; ``receipt`` is where the refusal entry landed.
    """

    def __init__(self, size: int, receipt: Receipt) -> None:
        self.receipt = receipt
        super().__init__(
            f"log entry of {size} bytes is over the limit of {MAX_ENTRY_BYTES} bytes; "
            f"a refusal entry was logged in its place at index {receipt.log_index}"
        )


def _bounded(entry: bytes, record: Mapping[str, Any], t: str) -> bytes | None:
    """``None`` if ``entry`` is within bounds, else the refusal entry to store instead:
    what kind of record it was, its size and digest, never its content."""
    if len(entry) <= MAX_ENTRY_BYTES:
        return None
    refusal: dict[str, Any] = {
        "v": ENTRY_VERSION,
        "t": t,
        "kind": "refused",
        "reason": f"entry over {MAX_ENTRY_BYTES} bytes",
        "entry_bytes": len(entry),
        "entry_sha256": hashlib.sha256(entry).hexdigest(),
    }
    for key in ("kind", "method", "event", "status"):
        value = record.get(key)
        if isinstance(value, str):
            refusal[f"refused_{key}"] = value if len(value) <= 128 else echo(value)
    return canonical_json(refusal)


@dataclass
class _Pending:
    record: Mapping[str, Any]
    effect: Effect | None
    future: Future[Receipt]


class Log:
    """Append-only Merkle log in the node's state database.

    Safe to use from many threads; several processes may append to the same
    database (each holds SQLite's write lock while it commits a batch).
    """

    def __init__(self, db_path: Path, signer: NoteSigner, origin: str) -> None:
        self._db_path = db_path
        self._signer = signer
        self.origin = origin
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._local = threading.local()
        self._closed = False

    # -- appending -----------------------------------------------------------

    def append(self, record: Mapping[str, Any], effect: Effect | None = None) -> Receipt:
        """Append one entry durably; block until it is committed; return its receipt.

        If ``effect`` raises, neither the entry nor the effect's writes are kept and
        the exception is raised here.
        """
        return self.submit(record, effect).result()

    def submit(self, record: Mapping[str, Any], effect: Effect | None = None) -> Future[Receipt]:
        if self._closed:
            raise RuntimeError("log is closed")
        if "v" in record or "t" in record:
            raise ValueError("record keys 'v' and 't' are set by the log")
        self._ensure_writer()
        fut: Future[Receipt] = Future()
        self._queue.put(_Pending(record, effect, fut))
        return fut

    def _ensure_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="veil-log", daemon=True)
                self._writer.start()

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        with self._writer_lock:
            self._closed = True
            writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            writer.join()

    def _run(self) -> None:
        conn = state.connect(self._db_path)
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                try:
                    self._commit(conn, batch)
                except BaseException as exc:  # keep the writer alive; fail only this batch
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    conn.close()
                    conn = state.connect(self._db_path)
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        done: list[tuple[_Pending, int]] = []
        failed: list[tuple[_Pending, BaseException]] = []
        oversize: list[tuple[_Pending, int, int]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            frontier = self._frontier(conn)
            for item in batch:
                index = frontier.size
                t = now_rfc3339()
                try:
                    entry = canonical_json({"v": ENTRY_VERSION, "t": t, **item.record})
                except (TypeError, ValueError) as exc:  # not JSON: the caller's bug
                    failed.append((item, exc))
                    continue
                refusal = _bounded(entry, item.record, t)
                conn.execute("SAVEPOINT entry")
                try:
                    if refusal is not None:  # stored in its place; its effect does not run
                        conn.execute("INSERT INTO log_entries(idx, entry) VALUES (?, ?)",
                                     (index, refusal))
                        oversize.append((item, index, len(entry)))
                        entry = refusal
                    else:
                        conn.execute("INSERT INTO log_entries(idx, entry) VALUES (?, ?)",
                                     (index, entry))
                        if item.effect is not None:
                            item.effect(conn, index)
                except BaseException as exc:  # the effect's own error goes to its caller
                    conn.execute("ROLLBACK TO entry")
                    conn.execute("RELEASE entry")
                    failed.append((item, exc))
                    continue
                conn.execute("RELEASE entry")
                conn.executemany(
                    "INSERT INTO merkle_nodes(level, idx, hash) VALUES (?, ?, ?)",
                    frontier.append(leaf_hash(entry)),
                )
                if refusal is None:
                    done.append((item, index))
            note = ""
            if done or oversize:
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('frontier', ?)",
                    (frontier.to_bytes(),),
                )
                note = sign_checkpoint(
                    Checkpoint(self.origin, frontier.size, frontier.root()), self._signer
                )
                conn.execute(
                    "INSERT INTO checkpoints(size, note) VALUES (?, ?)", (frontier.size, note)
                )
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, error in failed:
            item.future.set_exception(error)
        for item, index in done:
            item.future.set_result(Receipt(index, note, frontier.size))
        for item, index, size in oversize:
            item.future.set_exception(EntryTooLarge(size, Receipt(index, note, frontier.size)))

    @staticmethod
    def _frontier(conn: sqlite3.Connection) -> Frontier:
        row = conn.execute("SELECT value FROM meta WHERE key = 'frontier'").fetchone()
        return Frontier.from_bytes(row[0]) if row else Frontier()

    # -- reading -------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = state.connect(self._db_path, readonly=True)
            self._local.conn = conn
        return conn

    def latest_checkpoint(self) -> tuple[int, str]:
        """(size, signed note) of the newest checkpoint; (0, note of the empty tree) if none."""
        row = self._reader().execute(
            "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return 0, sign_checkpoint(Checkpoint(self.origin, 0, Frontier().root()), self._signer)
        return int(row[0]), str(row[1])

    def size(self) -> int:
        return self.latest_checkpoint()[0]

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """Entries with start <= index < end, in order, read in bounded chunks."""
        return stored_entries(self._reader(), start, end)

    def entry(self, index: int) -> bytes:
        row = self._reader().execute(
            "SELECT entry FROM log_entries WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            raise InvalidInput(f"log index {index} is past the log size {self.size()}")
        return bytes(row[0])

    def _subtree(self, level: int, index: int) -> bytes:
        row = self._reader().execute(
            "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise VeilError(f"merkle node ({level}, {index}) is missing from the store")
        return bytes(row[0])

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        self._check_size(tree_size)
        return inclusion_proof(index, tree_size, self._subtree)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        self._check_size(new_size)
        return consistency_proof(old_size, new_size, self._subtree)

    def _check_size(self, tree_size: int) -> None:
        size = self.size()
        if tree_size > size:
            raise InvalidInput(
                f"tree size {tree_size} is past the latest checkpoint's size {size}"
            )


def stored_entries(
    conn: sqlite3.Connection, start: int, end: int, chunk: int = 8192
) -> Iterator[tuple[int, bytes]]:
    """Stored entries with start <= index < end, in index order, ``chunk`` rows at a time.

    Gaps are not filled in: a verifier compares the indices it gets with those it expects.
    """
    pos = start
    while pos < end:
        rows = conn.execute(
            "SELECT idx, entry FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (pos, min(end, pos + chunk)),
        ).fetchall()
        if not rows:
            return
        for idx, entry in rows:
            yield int(idx), bytes(entry)
        pos = int(rows[-1][0]) + 1


def event(event_name: str, /, **details: Any) -> dict[str, Any]:
    """A node-local event record (dataset registered, job approved, node started …)."""
    return {"kind": "event", "event": event_name, "details": details}

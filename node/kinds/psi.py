"""The ``psi`` and ``intersection_sum`` kinds: ECDH private set intersection between two nodes.

One run, as the job's *leader* drives it (``PsiService.RunPsi``, called by the analyst; the
leader is the node without the values for an intersection sum, else the job's first node):

1. **Sets.** Each node reads its key column from the job's pinned dataset version, normalizes
   every key the way the job declares (``veil.protocols.psi.normalize``: NFKC first), drops
   keys with no normal form and counts each distinct key once, and hashes the keys to points
   with the job's domain separator. The leader opens one bidirectional stream to the other
   node (``PeerService.ExchangePsi``, node certificates, authorized by the job); the two say
   how many distinct keys they hold. Each refuses a peer set below its policy's
   ``min_peer_set_size`` and a run its quota (``items``) cannot pay for.
2. **Exchange.** Each node shuffles its points (a permutation it keeps), blinds them with a
   fresh secret scalar of the run, and streams them in packed batches; it blinds the peer's
   points again as they arrive, on every core (``BlindPool``), while its own go out. A node
   that must match gets its own points back doubly blinded: in the order it sent them when it
   is a membership receiver (it maps them back to its rows), shuffled again otherwise (it
   learns only how many match).
3. **Release.** The matching node counts the intersection. The leader checks its
   ``min_intersection_size`` and tells the other node to release or not; the other node
   checks its own minimum, logs its part and answers; only then does the leader log its part
   and answer the analyst. Below any minimum nothing is released: the run fails with the
   reason, logged and metered at both nodes.

For an intersection sum the values node sends, with each of its blinded points, its values
for that key (the key's rows summed, clamped by nothing: a key beyond the job's ``bound``
refuses the run), packed and encrypted under the analyst's Paillier key from the job. The
leader adds the ciphertexts of the matching points, re-randomizes the total and returns it.

What each party learns (semi-honest nodes, DESIGN.md's threat model):

- **cardinality**: the analyst and the leader learn |A ∩ B|; both nodes and the analyst learn
  both set sizes (distinct keys). The other node learns nothing more. Neither node learns
  which keys match: the leader's own points come back shuffled, the other's never come back.
- **membership**: each receiver learns which of its own rows match (stored as a new local
  dataset version, classified like its source, usable only by later approved jobs there);
  the analyst learns |A ∩ B| and both set sizes. A non-receiver learns the set sizes only.
- **intersection_sum**: the analyst learns |A ∩ B|, both set sizes and the totals of the
  values over the intersection; the leader learns |A ∩ B| and sees only ciphertexts under the
  analyst's key; the values node learns the set sizes only.
- **Duplicates** count once. For an intersection sum a key's value is the sum of its rows'
  values at the values node (NULL counts as 0).
- **Collusion** is outside the model: the analyst and the leader together could decrypt every
  value the values node sent (not knowing whose); a node that fills its set with guessed
  keys (phone numbers are a small domain) learns whether those people are in the peer's set.
  The minimum sizes keep a tiny probing set from running, and the quota on ``items`` bounds
  how many guesses a job can make; approvers see both in the dry run.

Each node logs its part with the dataset version, both set sizes, a digest of the points it
derived from its data (``input``, recomputed by ``veil audit replay``) and a salted
commitment to its result (the salt stays in the node's state). The log never holds a key, a
point or a count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import queue
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import duckdb
import grpc
from phe.paillier import PaillierPublicKey
from veil.v1 import common_pb2, peer_pb2_grpc, psi_pb2

from veil import sandbox
from veil.node import catalog, federation, snapshot
from veil.node._rpc import Call, Cancelled, Outcome
from veil.node.catalog import DatasetVersion
from veil.node.config import NodeConfig
from veil.node.context import NodeContext
from veil.node.errors import (
    ApprovalRequired,
    FailedPrecondition,
    InvalidInput,
    PolicyDenied,
    QuotaExhausted,
    VeilError,
)
from veil.node.grants import Grant
from veil.node.home import NodeHome
from veil.node.jobs import (
    JobSpec,
    Meters,
    PsiParams,
    check_not_expired,
    leader,
    psi_params,
    spec_from_canonical,
    values_packing,
)
from veil.node.kinds import Replayed, peer_receipt
from veil.protocols import paillier
from veil.protocols import psi as proto
from veil.protocols.errors import ProtocolInputError

#: points per message (32 bytes each: 128 KiB), or per message with values
BATCH = 4096
VALUES_BATCH = 256
#: the deadline on the whole exchange, at both nodes (the leader's call carries it too)
PSI_TIMEOUT_S = 3600.0
#: a peer that sends nothing (or reads nothing) for this long loses the exchange
PSI_IDLE_S = 300.0
#: a set larger than this is refused before anything is read into memory twice
MAX_SET = 50_000_000
#: how many batches each side keeps in flight (bounded memory)
DEPTH = 8
COMMIT_DOMAIN = b"veil-psi-commitment-v1\n"
INPUT_DOMAIN = b"veil-psi-input-v1\n"


class PsiKind:
    method = "/veil.v1.PsiService/RunPsi"
    #: the other node's part is logged under this method; ``veil audit replay`` replays it too
    peer_methods = ("/veil.v1.PeerService/ExchangePsi",)

    def __init__(self, name: str) -> None:
        self.name = name

    # ------------------------------------------------------------------ submission

    def validate(self, spec: JobSpec, dataset: DatasetVersion, config: NodeConfig,
                 snapshots: Path) -> None:
        """The job's columns exist here, and a value column is numeric."""
        p = psi_params(spec)
        types = {c.name: c.type for c in dataset.columns}
        for column in p.columns_at(config.name):
            if column not in types:
                raise InvalidInput(f"column {column!r} is not in dataset {dataset.name!r} "
                                   f"(its columns: {', '.join(types)})")
        if p.values_node == config.name:
            for column in p.values:
                if not _numeric(types[column]):
                    raise InvalidInput(f"values: column {column!r} is {types[column]}; an "
                                       "intersection sum needs a numeric column")

    # ------------------------------------------------------------------ the leader

    def run(self, ctx: NodeContext, request: Any, call: Call,
            grant: Grant) -> Generator[psi_pb2.PsiUpdate, None, Outcome]:
        """``PsiService.RunPsi``: progress while the run goes, then (after the gate has
        logged and charged the outcome) the result."""
        spec = grant.spec
        lead = leader(spec)
        if lead != ctx.name:
            raise FailedPrecondition(
                f"this node is not the leader of job {grant.id}; send RunPsi to {lead!r} at "
                f"{spec.part(lead).address}"  # type: ignore[union-attr]
            )
        run = _LeaderRun(ctx, call, grant)
        thread = threading.Thread(target=run.main, name="psi-leader", daemon=True)
        thread.start()
        try:
            while not run.finished.wait(0.5):
                yield psi_pb2.PsiUpdate(progress=psi_pb2.PsiProgress(
                    done=run.progress.done, total=run.progress.total))
        finally:
            run.cancel()  # a no-op once finished; else the analyst went away
            thread.join()
        if run.error is not None:
            raise run.error
        assert run.outcome is not None
        return run.outcome

    # ------------------------------------------------------------------ the other node

    def exchange(self, ctx: NodeContext, first: psi_pb2.PsiMessage, call: Call, grant: Grant,
                 incoming: Iterator[psi_pb2.PsiMessage],
                 ) -> Generator[psi_pb2.PsiMessage, None, Outcome]:
        """``PeerService.ExchangePsi`` at the node that is not the leader."""
        if leader(grant.spec) == ctx.name:
            raise FailedPrecondition(f"this node is the leader of job {grant.id}: it asks for "
                                     "the exchange, it does not answer one")
        if first.WhichOneof("step") != "hello":
            raise InvalidInput("the exchange must start with hello (run id and set size)")
        wire = _Wire(iter(incoming), idle=True)
        run = _PeerRun(ctx, call, grant, first.hello, wire)
        thread = threading.Thread(target=run.main, name="psi-peer", daemon=True)
        thread.start()
        try:
            yield from wire.outgoing()
        finally:
            wire.close()
            thread.join()
        if run.error is not None:
            raise run.error
        assert run.outcome is not None
        return run.outcome

    # ------------------------------------------------------------------ audit

    def replay(self, conn: sqlite3.Connection, home: NodeHome, index: int,
               record: Mapping[str, Any], workers: sandbox.Workers) -> Replayed:
        """Recompute the points this node derived from the pinned snapshot (its ``input``
        digest) and its set size. The intersection itself needs the peer and is not
        replayed here."""
        job = record["job"]
        details = record["details"]["psi"]
        logged = details["input"]
        row = conn.execute("SELECT canonical FROM jobs WHERE id = ?", (job,)).fetchone()
        if row is None:
            return Replayed(index, job, logged, "error: the job is not in the node's state")
        spec = spec_from_canonical(bytes(row[0]))
        source = next(r for r in record["datasets"] if "@" in r)
        name, _, sha = source.partition("@")
        try:
            ds = catalog.version(conn, name, sha)
            local = _load(home.snapshots, ds, psi_params(spec), home.config.name, job,
                          rows=False, values=False)
            replayed = local.digest
        except VeilError as exc:
            replayed = f"error: {exc}"
        return Replayed(index, job, logged, replayed)


PSI = PsiKind("psi")
INTERSECTION_SUM = PsiKind("intersection_sum")


# --------------------------------------------------------------------------- local sets


@dataclasses.dataclass
class _LocalSet:
    """A node's distinct normalized keys, as points, with what its output needs of them."""

    points: bytes  # packed, one per distinct key, in first-occurrence order
    rows: list[list[int]] | None  # per key, its file row numbers (a membership receiver)
    values: list[list[Decimal]] | None  # per key, each value column's sum (the values node)
    rows_read: int
    digest: str  # of the points: what this node derived from its data (logged, replayed)

    @property
    def size(self) -> int:
        return len(self.points) // proto.POINT_BYTES


def _load(snapshots: Path, ds: DatasetVersion, p: PsiParams, node: str, job: str, *,
          rows: bool, values: bool) -> _LocalSet:
    """Read, normalize and hash this node's key column (DuckDB in this process: the query is
    ours, over a registered snapshot, never an analyst's)."""
    key = p.key_column(node)
    cols = [f'CAST("{key}" AS VARCHAR)']
    if values:
        cols += [f'"{c}"' for c in p.values]
    source = "read_parquet($1, file_row_number = true)" if rows else "read_parquet($1)"
    if rows:
        cols.append("file_row_number")
    con = duckdb.connect(config={"threads": 2, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    try:
        fetched = con.execute(f"SELECT {', '.join(cols)} FROM {source}",
                              [str(ds.snapshot_path(snapshots))]).fetchall()
    finally:
        con.close()
    if len(fetched) > MAX_SET:
        raise PolicyDenied(f"dataset {ds.name} has {len(fetched):,} rows; a PSI set holds at "
                           f"most {MAX_SET:,}")
    index: dict[str, int] = {}
    row_lists: list[list[int]] = []
    sums: list[list[Decimal]] = []
    quantum = Decimal(1).scaleb(-p.scale)
    width = len(p.values)
    for record in fetched:
        norm = proto.normalize(record[0], p.normalize) if record[0] is not None else None  # type: ignore[arg-type]
        if norm is None:
            continue
        i = index.get(norm)
        if i is None:
            i = index[norm] = len(index)
            if rows:
                row_lists.append([])
            if values:
                sums.append([Decimal(0)] * width)
        if rows:
            row_lists[i].append(int(record[-1]))
        if values:
            acc = sums[i]
            for c in range(width):
                v = record[1 + c]
                if v is not None:
                    acc[c] += _decimal(v, p.values[c])
    if values:
        assert p.bound is not None
        for acc in sums:
            for c in range(width):
                acc[c] = acc[c].quantize(quantum)
                if abs(acc[c]) > p.bound:
                    raise PolicyDenied(
                        f"values: a key's total of {p.values[c]!r} exceeds the job's bound "
                        f"({p.bound}); nothing was encrypted or sent")
    try:
        points = proto.prepare(proto.domain(job), index)
    except ProtocolInputError as exc:
        raise InvalidInput(f"column {key!r}: {exc}") from None
    digest = hashlib.sha256(INPUT_DOMAIN + points).hexdigest()
    return _LocalSet(points, row_lists if rows else None, sums if values else None,
                     len(fetched), digest)


def _decimal(v: Any, column: str) -> Decimal:
    try:
        d = Decimal(repr(v)) if isinstance(v, float) else Decimal(v)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidInput(f"values: column {column!r} holds a value that is not a number") from None
    if not d.is_finite():
        raise InvalidInput(f"values: column {column!r} holds a value that is not finite")
    return d


def _numeric(duck_type: str) -> bool:
    t = duck_type.upper()
    return t.startswith(("DECIMAL", "NUMERIC")) or t in {
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "REAL"}


# --------------------------------------------------------------------------- the stream


class _Progress:
    def __init__(self) -> None:
        self.done = 0
        self.total = 0

    def add(self, n: int) -> None:
        self.done += n  # one writer per counter is not needed: a progress bar tolerates races


class _Closed(Exception):
    """The exchange was cancelled or broke: stop quietly, the cause is reported elsewhere."""


class _TimedOut(VeilError):
    """The peer held the exchange open without moving it on: the node lets go of it."""

    status = "DEADLINE_EXCEEDED"


class _Wire:
    """One side's view of the stream: ``send`` queues a message (bounded), ``recv`` takes
    the peer's next one. ``outgoing`` is what gRPC sends (the request iterator at the
    leader, the handler's yields at the other node).

    The peer's messages are read by a thread of their own into a bounded queue, so that no
    wait on the peer is unbounded: both ``recv`` and ``send`` give up once the exchange has
    lasted ``PSI_TIMEOUT_S`` (:class:`_TimedOut`, ``DEADLINE_EXCEEDED``). The answering
    node's wire (``idle=True``) also gives up when the leader sent nothing, or read nothing,
    for ``PSI_IDLE_S``: a hostile or stuck caller cannot hold the node's threads. The
    leader's wire has no idle bound: it may legitimately hear nothing for long (the other
    node hashing a large set before its hello, or blinding every point of a large set
    before it returns them shuffled), and it is the leader's own run."""

    def __init__(self, source: Iterator[Any] | None = None, *, idle: bool = False) -> None:
        self._idle = idle
        self._out: queue.Queue[Any] = queue.Queue(maxsize=DEPTH)
        self._in: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=DEPTH)
        self._source = source
        self._reader: threading.Thread | None = None
        self._closed = threading.Event()
        self._deadline = time.monotonic() + PSI_TIMEOUT_S
        self.bytes_sent = 0
        self.peer = "the peer"

    def attach(self, source: Iterator[Any], peer: str) -> None:
        self._source, self.peer = source, peer

    def _wait(self, what: str, since: float) -> None:
        """Raise when the peer has not moved for ``PSI_IDLE_S`` or the run is over time."""
        now = time.monotonic()
        if self._idle and now - since > PSI_IDLE_S:
            raise _TimedOut(f"{self.peer} {what} for {PSI_IDLE_S:g} s: the exchange was idle "
                            "too long and is abandoned; nothing was released")
        if now > self._deadline:
            raise _TimedOut(f"{self.peer} did not finish the exchange within "
                            f"{PSI_TIMEOUT_S:g} s; nothing was released")

    def send(self, message: psi_pb2.PsiMessage) -> None:
        self.bytes_sent += message.ByteSize()
        self._put(message)

    def _put(self, message: Any) -> None:
        since = time.monotonic()
        while not self._closed.is_set():
            try:
                self._out.put(message, timeout=0.2)
                return
            except queue.Full:
                self._wait("read nothing", since)
        raise _Closed()

    def end(self) -> None:
        """No more messages from this side."""
        try:
            self._put(None)
        except (_Closed, _TimedOut):
            pass  # the stream is going away: there is nobody left to tell

    def _pump(self) -> None:
        assert self._source is not None
        item: tuple[str, Any]
        try:
            for message in self._source:
                self._hand(("message", message))
                if self._closed.is_set():
                    return
            item = ("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            item = ("error", exc)
        self._hand(item)

    def _hand(self, item: tuple[str, Any]) -> None:
        while not self._closed.is_set():
            try:
                self._in.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _next(self, raw_errors: bool = False) -> psi_pb2.PsiMessage | None:
        """The peer's next message, or None when it ended its side."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._pump, name="psi-recv", daemon=True)
            self._reader.start()
        since = time.monotonic()
        while True:
            if self._closed.is_set():
                raise _Closed()
            try:
                kind, item = self._in.get(timeout=0.2)
            except queue.Empty:
                self._wait("sent nothing", since)
                continue
            if kind == "message":
                return item  # type: ignore[no-any-return]
            if kind == "end":
                self._in.put(("end", None))  # every later read sees the end too
                return None
            if isinstance(item, grpc.RpcError):
                if raw_errors and hasattr(item, "code"):
                    raise item
                if self._closed.is_set():
                    raise _Closed() from None
                raise _peer_error(self.peer, item) from None
            raise item

    def recv(self, expect: str | None = None, raw_errors: bool = False) -> psi_pb2.PsiMessage:
        message = self._next(raw_errors)
        if message is None:
            raise InvalidInput(f"{self.peer} ended the exchange before it was complete; "
                               "nothing was released")
        if expect is not None and message.WhichOneof("step") != expect:
            raise InvalidInput(f"{self.peer} sent {message.WhichOneof('step') or 'nothing'} "
                               f"where the exchange expects {expect}")
        return message

    def drain(self) -> None:
        """The peer's end of the stream: it must send nothing more."""
        if self._next() is not None:
            raise InvalidInput(f"{self.peer} sent more after it was done")

    def outgoing(self) -> Iterator[psi_pb2.PsiMessage]:
        while True:
            try:
                message = self._out.get(timeout=0.2)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if message is None:
                return
            yield message

    def close(self) -> None:
        self._closed.set()


@dataclasses.dataclass
class _Exchanged:
    returned: bytes  # our own points, doubly blinded, as the peer sent them back (or b"")
    theirs: bytes  # the peer's points, doubly blinded, in the order received (or b"")
    their_values: list[bytes]  # the peer's encrypted values, per point (intersection sum)


def _exchange(wire: _Wire, pool: proto.BlindPool, scalar: bytes, mine: bytes, n_peer: int, *,
              encrypt: Callable[[int, int], list[bytes]] | None, value_bytes: int,
              give_back: str | None, keep_theirs: bool, expect_back: bool,
              progress: _Progress) -> _Exchanged:
    """Send our blinded points while blinding the peer's as they arrive; see the module
    docstring for who gets what back. ``give_back`` is None, "order" or "shuffle"."""
    n_own = len(mine) // proto.POINT_BYTES
    batch = VALUES_BATCH if encrypt is not None else BATCH
    errors: list[BaseException] = []

    def send_own() -> None:
        try:
            size = batch * proto.POINT_BYTES
            chunks = [mine[i:i + size] for i in range(0, len(mine), size)]
            # closed here, not when the traceback kept in ``errors`` lets it go: a send that
            # fails (the peer gone, idle) cancels the batches still blinding at once
            with contextlib.closing(pool.blind_batches(scalar, chunks)) as blinded:
                for i, out in enumerate(blinded):
                    start = i * batch
                    values = (encrypt(start, start + len(out) // proto.POINT_BYTES)
                              if encrypt else [])
                    wire.send(psi_pb2.PsiMessage(mine=psi_pb2.PsiPoints(points=out,
                                                                        values=values)))
                    progress.add(len(out) // proto.POINT_BYTES)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            errors.append(exc)

    sender = threading.Thread(target=send_own, name="psi-send", daemon=True)
    sender.start()
    received = 0
    back = bytearray()
    kept: list[bytes] = []
    collected: list[bytes] = []
    their_values: list[bytes] = []
    pending: deque[tuple[Any, int]] = deque()
    batches = 0

    def finish_one() -> None:
        future, number = pending.popleft()
        try:
            out = proto.BlindPool.result(future, number)
        except proto.InvalidPoint as exc:
            raise InvalidInput(f"{wire.peer} sent an invalid point: {exc}") from None
        if keep_theirs:
            kept.append(out)
        if give_back == "order":
            wire.send(psi_pb2.PsiMessage(theirs=psi_pb2.PsiPoints(points=out)))
        elif give_back == "shuffle":
            collected.append(out)
        progress.add(len(out) // proto.POINT_BYTES)

    try:
        while received < n_peer or (expect_back and len(back) < len(mine)):
            if errors:
                raise errors[0]
            message = wire.recv()
            step = message.WhichOneof("step")
            if step == "mine":
                pts = message.mine.points
                if len(pts) % proto.POINT_BYTES:
                    raise InvalidInput(f"{wire.peer} sent a batch of {len(pts)} bytes; expected "
                                       f"whole {proto.POINT_BYTES}-byte points")
                count = len(pts) // proto.POINT_BYTES
                if received + count > n_peer:
                    raise InvalidInput(f"{wire.peer} sent more points than its declared set "
                                       f"size ({n_peer:,})")
                if value_bytes:
                    if len(message.mine.values) != count or any(
                            len(v) != value_bytes for v in message.mine.values):
                        raise InvalidInput(f"{wire.peer} sent values that do not match its "
                                           f"points (expected one {value_bytes}-byte value each)")
                    their_values.extend(bytes(v) for v in message.mine.values)
                elif message.mine.values:
                    raise InvalidInput(f"{wire.peer} sent values the job does not ask for")
                pending.append((pool.submit(scalar, bytes(pts)), batches))
                batches += 1
                received += count
                while len(pending) > DEPTH or (pending and pending[0][0].done()):
                    finish_one()
            elif step == "theirs":
                if not expect_back:
                    raise InvalidInput(f"{wire.peer} sent back points this node must not get")
                if len(back) + len(message.theirs.points) > len(mine):
                    raise InvalidInput(f"{wire.peer} sent back more points than this node sent "
                                       f"({n_own:,})")
                back += message.theirs.points
            else:
                raise InvalidInput(f"{wire.peer} sent {step or 'an empty message'} during the "
                                   "exchange of points")
        while pending:
            finish_one()
        if give_back == "shuffle":
            every = b"".join(collected)
            shuffled = proto.permute(every, proto.permutation(len(every) // proto.POINT_BYTES))
            size = BATCH * proto.POINT_BYTES
            for i in range(0, len(shuffled), size):
                wire.send(psi_pb2.PsiMessage(theirs=psi_pb2.PsiPoints(points=shuffled[i:i + size])))
    except BaseException:
        wire.close()  # stops the sender too
        raise
    finally:
        for future, _ in pending:
            future.cancel()
        if errors:
            wire.close()
        sender.join()
    if errors:
        raise errors[0]
    if len(back) % proto.POINT_BYTES:
        raise InvalidInput(f"{wire.peer} sent back a partial point")
    return _Exchanged(bytes(back), b"".join(kept), their_values)


# --------------------------------------------------------------------------- both sides


class _Run:
    """What the leader's and the other node's parts share."""

    finished: threading.Event
    error: VeilError | None
    outcome: Outcome | None

    def __init__(self, ctx: NodeContext, call: Call, grant: Grant) -> None:
        self.ctx, self.call, self.grant = ctx, call, grant
        self.p = psi_params(grant.spec)
        self.me = ctx.name
        self.other = self.p.peer(self.me)
        self.is_leader = leader(grant.spec) == self.me
        receivers = set(self.p.receivers)
        self.receiver = self.me in receivers
        # who matches: the leader for counts and sums; each membership receiver
        lead_matches = self.p.output != "membership" or leader(grant.spec) in receivers
        self.matches = lead_matches if self.is_leader else self.receiver
        self.peer_matches = self.other in receivers if self.is_leader else lead_matches
        self.peer_receiver = self.other in receivers
        self.progress = _Progress()
        self.finished = threading.Event()
        self.error = None
        self.outcome = None
        self.run_id = ""
        self.local: _LocalSet | None = None
        self.n_peer = 0
        self.perm: list[int] = []
        self.ahead: _AheadEncryption | None = None

    def load(self) -> _LocalSet:
        local = _load(self.ctx.home.snapshots, self.grant.dataset, self.p, self.me,
                      self.grant.id, rows=self.receiver, values=self.p.values_node == self.me)
        self.local = local
        return local

    def meters(self, wire: _Wire) -> Meters:
        own = self.local.size if self.local is not None else 0
        rows = self.local.rows_read if self.local is not None else 0
        return Meters(runs=1, rows_scanned=rows, items=own + self.n_peer,
                      bytes_out=wire.bytes_sent)

    def check_sizes(self) -> None:
        """The peer's set against this node's minimum; the run against the quota."""
        assert self.local is not None
        policy = self.ctx.home.config.policy
        if self.n_peer > MAX_SET:
            raise InvalidInput(f"{self.other!r} declares {self.n_peer:,} keys; at most "
                               f"{MAX_SET:,}")
        if self.n_peer < policy.min_peer_set_size:
            raise _Refused(f"node {self.me!r}: the peer's set has {self.n_peer:,} distinct "
                           f"keys, below this node's min_peer_set_size "
                           f"({policy.min_peer_set_size:,}); nothing was exchanged")
        job = self.grant.job
        try:
            job.quota.check(job.used, Meters(runs=1, items=self.local.size + self.n_peer))
        except QuotaExhausted as exc:
            exc.args = (f"node {self.me!r}: {exc}",)
            raise

    def check_minimum(self, count: int) -> None:
        minimum = self.ctx.home.config.policy.min_intersection_size
        if count < minimum:
            raise _Refused(f"node {self.me!r}: the intersection has fewer distinct keys than "
                           f"this node's min_intersection_size ({minimum:,}); nothing was "
                           "released")

    def check_still_runnable(self) -> None:
        """The job as it stands now (revoked or expired mid-run?), before anything is
        released: the gate checks it again when it logs, but by then the other node may have
        released its part (a membership receiver's new version)."""
        grants = self.ctx.grants
        with grants.lock:
            job = grants.get(self.grant.id)
        if job.revoked:
            raise ApprovalRequired(f"job {job.id} was revoked at {job.revoked} during the run; "
                                   "nothing was released")
        check_not_expired(job.spec)

    def own_points(self) -> bytes:
        """Our points in a random order we keep (``perm[i]`` is the key at position i)."""
        assert self.local is not None
        self.perm = proto.permutation(self.local.size)
        return proto.permute(self.local.points, self.perm)

    def encryptor(self) -> tuple[Callable[[int, int], list[bytes]] | None, int]:
        """For the values node: the function that encrypts the values of sent points."""
        p = self.p
        if p.paillier_n is None:
            return None, 0
        key = PaillierPublicKey(p.paillier_n)
        size = paillier.ciphertext_size(key)
        if p.values_node != self.me:
            return None, size * values_packing(p, self.n_peer).plaintexts_for(len(p.values))
        assert self.local is not None and self.local.values is not None
        packing = values_packing(p, self.local.size)
        try:
            ahead = _AheadEncryption(key, packing, self.local.values, lambda: self.perm)
        except ProtocolInputError as exc:
            raise InvalidInput(f"the job's Paillier key: {exc}") from None
        self.ahead = ahead
        encrypt = ahead.encrypt
        return encrypt, size * packing.plaintexts_for(len(p.values))

    def membership(self, returned: bytes, theirs: bytes) -> tuple[list[int], int]:
        """Our matching rows (file row numbers, ascending) and the count, from our points as
        they came back (in the order we sent them) and the peer's, doubly blinded."""
        assert self.local is not None and self.local.rows is not None
        hits = proto.match(theirs, returned)
        rows = sorted(r for i in hits for r in self.local.rows[self.perm[i]])
        return rows, len(hits)

    def register(self, rows: list[int]) -> tuple[psi_pb2.PsiDataset, Any, str]:
        """Write our matching rows as a new version of the job's ``into`` dataset; the version
        is inserted by the effect that commits with this part's log entry."""
        ds = self.grant.dataset
        name = self.p.into[self.me]
        snap = snapshot.subset(ds.snapshot_path(self.ctx.home.snapshots), rows,
                               self.ctx.home.snapshots)
        staged = catalog.stage_derived(self.ctx.conn, self.ctx.home.identity, node=self.me,
                                       name=name, snap=snap, source=ds)
        dataset = psi_pb2.PsiDataset(node=self.me, dataset=name, version=staged.version,
                                     sha256=snap.sha256, rows=snap.rows)
        return dataset, staged.effect, f"{name}@{snap.sha256}"

    def commit(self, result: bytes) -> tuple[str, Any]:
        """A salted commitment to this part's result, and the effect that keeps the salt."""
        salt = secrets.token_bytes(32)
        commitment = hmac.new(salt, COMMIT_DOMAIN + result, hashlib.sha256).hexdigest()
        job, run_id = self.grant.id, self.run_id

        def effect(tx: sqlite3.Connection, index: int) -> None:
            tx.execute("INSERT INTO psi_parts(log_index, job_id, run_id, salt) VALUES (?, ?, ?, ?)",
                       (index, job, run_id, salt))

        return commitment, effect

    def details(self, **more: Any) -> None:
        base: dict[str, Any] = {"run": self.run_id, "output": self.p.output}
        if self.local is not None:
            base.update(set_size=self.local.size, input=self.local.digest)
        if self.n_peer:
            base["peer_set_size"] = self.n_peer
        self.call.details = {"psi": {**base, **more}}


class _Refused(VeilError):
    """Below a minimum: the work was done, nothing is released; logged and charged."""

    status = "FAILED_PRECONDITION"


def _both(*effects: Any) -> Any:
    def effect(tx: sqlite3.Connection, index: int) -> None:
        for e in effects:
            if e is not None:
                e(tx, index)

    return effect


def _refusal(run: _Run, wire: _Wire, exc: _Refused, response: Any = None) -> Outcome:
    return Outcome(response=response, meters=run.meters(wire),
                   datasets=(run.grant.dataset.ref,), digest="", refused=exc)


class _LeaderRun(_Run):
    def __init__(self, ctx: NodeContext, call: Call, grant: Grant) -> None:
        super().__init__(ctx, call, grant)
        self.wire = _Wire()
        self.stream: Any = None
        self.channel: grpc.Channel | None = None

    def cancel(self) -> None:
        self.wire.close()
        if self.stream is not None and not self.finished.is_set():
            self.stream.cancel()

    def main(self) -> None:
        try:
            self.outcome = self._run()
        except _Closed:
            self.error = Cancelled("the run was cancelled; nothing was released")
        except VeilError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - the gate logs it as internal
            import logging

            logging.getLogger("veil.psi").exception("PSI run failed")
            self.error = _internal(exc)
        finally:
            self.wire.close()
            if self.channel is not None:
                self.channel.close()
            self.finished.set()

    def _run(self) -> Outcome:
        spec, wire = self.grant.spec, self.wire
        self.run_id = secrets.token_hex(16)
        self.details()
        local = self.load()
        self.progress.total = local.size
        part = spec.part(self.other)
        assert part is not None and part.address is not None
        self.channel = federation.channel(part.address, self.ctx.home.identity, node=self.other)
        stub = peer_pb2_grpc.PeerServiceStub(self.channel)
        wire.send(psi_pb2.PsiMessage(job_id=self.grant.id, hello=psi_pb2.PsiHello(
            run_id=self.run_id, set_size=local.size)))
        self.stream = stub.ExchangePsi(wire.outgoing(), timeout=PSI_TIMEOUT_S)
        wire.attach(iter(self.stream), f"node {self.other!r}")
        try:
            hello = wire.recv("hello", raw_errors=True).hello
        except grpc.RpcError as exc:
            raise self._wrong(exc) from None
        self.n_peer = hello.set_size
        self.progress.total = local.size + self.n_peer
        self.details()
        try:
            self.check_sizes()
        except _Refused as exc:
            self._finish(False, 0, str(exc))
            return _refusal(self, wire, exc)
        except VeilError as exc:
            self._finish(False, 0, str(exc))
            raise
        encrypt, value_bytes = self.encryptor()
        got = _exchange(wire, self.ctx.psi_pool(), proto.new_scalar(), self.own_points(),
                        self.n_peer, encrypt=None, value_bytes=value_bytes,
                        give_back="order" if self.peer_matches else None,
                        keep_theirs=self.matches, expect_back=self.matches,
                        progress=self.progress)
        count, sums, rows = self._match(got)
        if self.peer_matches:
            theirs = wire.recv("counted").counted.cardinality
            if count is not None and theirs != count:
                raise InvalidInput(f"node {self.other!r} counted {theirs:,} matches where this "
                                   f"node counted {count:,}; nothing was released")
            count = theirs
        assert count is not None
        try:
            self.check_minimum(count)
            self.check_still_runnable()
        except _Refused as exc:
            self._finish(False, count, str(exc))
            return _refusal(self, wire, exc)
        except VeilError as exc:
            self._finish(False, 0, str(exc))
            raise
        self._finish(True, count, "")
        try:
            done = wire.recv("done").done
        except VeilError as exc:
            if exc.status != "FAILED_PRECONDITION":
                raise
            # the other node refused to release (its own minimum): the work was done at both
            return _refusal(self, wire, _Refused(str(exc)))
        self._drain()
        receipt = self._receipt()
        datasets: list[psi_pb2.PsiDataset] = []
        effects: list[Any] = []
        refs = [self.grant.dataset.ref]
        if done.HasField("dataset"):
            d = psi_pb2.PsiDataset()
            d.CopyFrom(done.dataset)
            d.log_index = receipt.log_index
            datasets.append(d)
        if rows is not None:
            mine, effect, ref = self.register(rows)
            datasets.insert(0, mine)
            effects.append(effect)
            refs.append(ref)
        result = psi_pb2.PsiResult(
            run_id=self.run_id, cardinality=count, set_size=self.local.size,  # type: ignore[union-attr]
            peer_set_size=self.n_peer, sums=sums, datasets=datasets,
            receipts=[common_pb2.NodeReceipt(node=self.other, receipt=receipt)])
        meters = self.meters(wire) + Meters(ciphertexts=len(sums))
        result.meters.CopyFrom(common_pb2.Meters(**{k: v for k, v in meters.to_dict().items() if v}))
        commitment, keep_salt = self.commit(result.SerializeToString(deterministic=True))
        self.details(result=commitment, peer_receipt=receipt.log_index)
        return Outcome(response=psi_pb2.PsiUpdate(result=result), meters=meters,
                       datasets=tuple(refs), digest=commitment,
                       effect=_both(keep_salt, *effects))

    def _match(self, got: _Exchanged) -> tuple[int | None, list[bytes], list[int] | None]:
        if not self.matches:
            return None, [], None
        if self.receiver:
            rows, count = self.membership(got.returned, got.theirs)
            return count, [], rows
        hits = proto.match(got.returned, got.theirs)  # indices into the peer's points
        sums: list[bytes] = []
        if self.p.paillier_n is not None:
            key = PaillierPublicKey(self.p.paillier_n)
            size = paillier.ciphertext_size(key)
            enc = paillier.Encryptor(key)
            width = len(got.their_values[0]) // size if got.their_values else \
                values_packing(self.p, self.n_peer).plaintexts_for(len(self.p.values))
            try:
                columns = [[paillier.ciphertext_from_bytes(
                    key, got.their_values[j][k * size:(k + 1) * size]) for j in hits]
                    for k in range(width)]
            except ProtocolInputError as exc:
                raise InvalidInput(f"node {self.other!r} sent a value that is not a ciphertext "
                                   f"under the job's key: {exc}") from None
            totals = [enc.add_many(col) if col else enc.encrypt(0) for col in columns]
            sums = [paillier.ciphertext_to_bytes(key, enc.rerandomize(t)) for t in totals]
        return len(hits), sums, None

    def _finish(self, release: bool, count: int, reason: str) -> None:
        try:
            self.wire.send(psi_pb2.PsiMessage(finish=psi_pb2.PsiFinish(
                release=release, cardinality=count, reason=reason[:500])))
        finally:
            self.wire.end()
        if not release:
            # let the peer log its refusal; its status is expected and not ours to report
            try:
                self._drain()
            except VeilError:
                pass

    def _drain(self) -> None:
        self.wire.drain()

    def _receipt(self) -> common_pb2.Receipt:
        return peer_receipt(self.stream.trailing_metadata())  # type: ignore[no-any-return]

    def _wrong(self, exc: grpc.RpcError) -> VeilError:
        part = self.grant.spec.part(self.other)
        assert part is not None and part.address is not None
        return federation.wrong_node(exc, part.address, self.other) or _peer_error(
            f"node {self.other!r}", exc)


class _PeerRun(_Run):
    def __init__(self, ctx: NodeContext, call: Call, grant: Grant, hello: psi_pb2.PsiHello,
                 wire: _Wire) -> None:
        super().__init__(ctx, call, grant)
        self.hello = hello
        self.wire = wire
        wire.peer = f"node {self.other!r}"

    def main(self) -> None:
        try:
            self.outcome = self._run()
        except _Closed:
            self.error = Cancelled("the leader closed the exchange; nothing was released")
        except VeilError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001
            import logging

            logging.getLogger("veil.psi").exception("PSI exchange failed")
            self.error = _internal(exc)
        finally:
            if self.ahead is not None:
                self.ahead.close()
            self.wire.end()
            self.finished.set()

    def _run(self) -> Outcome:
        wire = self.wire
        run_id = self.hello.run_id
        if len(run_id) != 32 or any(c not in "0123456789abcdef" for c in run_id):
            raise InvalidInput(f"run_id: expected 32 lowercase hex digits, got {run_id[:40]!r}")
        self.run_id = run_id
        self.n_peer = self.hello.set_size
        local = self.load()
        self.details()
        wire.send(psi_pb2.PsiMessage(hello=psi_pb2.PsiHello(run_id=run_id,
                                                             set_size=local.size)))
        try:
            self.check_sizes()
        except _Refused as exc:
            return _refusal(self, wire, exc)
        encrypt, value_bytes = self.encryptor()
        got = _exchange(wire, self.ctx.psi_pool(), proto.new_scalar(), self.own_points(),
                        self.n_peer, encrypt=encrypt, value_bytes=0,
                        give_back=("order" if self.peer_receiver else "shuffle")
                        if self.peer_matches else None,
                        keep_theirs=self.matches, expect_back=self.matches,
                        progress=self.progress)
        rows = None
        count = None
        if self.matches:
            rows, count = self.membership(got.returned, got.theirs)
            wire.send(psi_pb2.PsiMessage(counted=psi_pb2.PsiCount(cardinality=count)))
        finish = wire.recv("finish").finish
        if not finish.release:
            return _refusal(self, wire, _Refused(
                f"the leader ({self.other}) released nothing: {finish.reason[:500]}"))
        if count is not None and finish.cardinality != count:
            raise InvalidInput(f"the leader reports {finish.cardinality:,} matches where this "
                               f"node counted {count:,}; nothing was released")
        try:
            self.check_minimum(finish.cardinality)
        except _Refused as exc:
            return _refusal(self, wire, exc)
        done = psi_pb2.PsiDone()
        refs = [self.grant.dataset.ref]
        effects: list[Any] = []
        if rows is not None:
            dataset, effect, ref = self.register(rows)
            done.dataset.CopyFrom(dataset)
            effects.append(effect)
            refs.append(ref)
        response = psi_pb2.PsiMessage(done=done)
        commitment, keep_salt = self.commit(
            finish.cardinality.to_bytes(8, "big") + response.SerializeToString(deterministic=True))
        self.details(result=commitment)
        return Outcome(response=response, meters=self.meters(wire), datasets=tuple(refs),
                       digest=commitment, effect=_both(keep_salt, *effects))


class _AheadEncryption:
    """The values node's encrypted values, computed ahead on all cores while its points are
    blinded and sent: one thread packs the keys' values in the order they are sent and
    encrypts them in chunks on a :class:`~veil.protocols.paillier.ParallelEncryptor` (its
    workers build the key's tables once per run). ``encrypt(start, stop)`` waits for the
    chunks it needs and frees each once it is sent; ``close`` stops the work and the workers."""

    CHUNK = 1024

    def __init__(self, key: PaillierPublicKey, packing: Any, values: list[list[Decimal]],
                 order: Callable[[], list[int]]) -> None:
        self.key, self.packing, self.values, self.order = key, packing, values, order
        self.per_key = packing.plaintexts_for(len(values[0]) if values else 1)
        self._pe = paillier.ParallelEncryptor(key)
        self._done: dict[int, list[bytes]] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _work(self) -> None:
        try:
            perm = self.order()
            for first in range(0, len(perm), self.CHUNK):
                if self._stop:
                    return
                plain: list[int] = []
                for j in range(first, min(len(perm), first + self.CHUNK)):
                    plain.extend(self.packing.pack(self.values[perm[j]]))
                cts = [paillier.ciphertext_to_bytes(self.key, c)
                       for c in self._pe.encrypt_many(plain)]
                k = self.per_key
                blobs = [b"".join(cts[i:i + k]) for i in range(0, len(cts), k)]
                with self._cv:
                    self._done[first // self.CHUNK] = blobs
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - raised in the sender's thread
            with self._cv:
                self._error = exc
                self._cv.notify_all()
        finally:
            self._pe.close()

    def encrypt(self, start: int, stop: int) -> list[bytes]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="psi-encrypt", daemon=True)
            self._thread.start()
        out = []
        for i in range(start, stop):
            chunk, offset = divmod(i, self.CHUNK)
            with self._cv:
                while chunk not in self._done:
                    if self._error is not None:
                        raise self._error
                    if self._stop:
                        raise _Closed()
                    self._cv.wait(0.2)
                blobs = self._done[chunk]
                if offset == len(blobs) - 1:
                    del self._done[chunk]
            out.append(blobs[offset])
        return out

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is None:
            self._pe.close()


def _internal(exc: Exception) -> VeilError:
    err = VeilError("internal error in the node's PSI run; nothing was released. The "
                    "operator can find the traceback in the node's output")
    err.status = "INTERNAL"  # type: ignore[misc]
    return err


def _peer_error(peer: str, exc: grpc.RpcError) -> VeilError:
    if not hasattr(exc, "code"):
        # the server side's request iterator raises a bare RpcError when the caller goes away
        return Cancelled(f"{peer} broke off the exchange; nothing was released")
    code = exc.code()
    details = (exc.details() or "")[:500]
    err = VeilError(f"{peer} could not be reached ({details})" if code == grpc.StatusCode.UNAVAILABLE
                    else f"{peer} refused its part: {code.name}: {details}")
    err.status = code.name if code.name not in ("UNKNOWN", "OK") else "UNAVAILABLE"  # type: ignore[misc]
    return err

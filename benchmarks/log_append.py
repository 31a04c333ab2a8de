"""Durable Merkle log: append throughput vs plain SQLite inserts, proofs and verify at 1M entries.

``python -m benchmarks log_append [--per-thread N] [--entries N] [--rebuild]``

In one run, on this machine's disk (state under ``/tmp/veil-bench``):

(a) ``Log.append`` from 16 caller threads, entries of about 300 bytes shaped like real
    call records: durable (WAL, ``synchronous=FULL``) before each call returns, group
    committed, one Merkle update and one signed checkpoint per batch.
(b) The same bytes (the same canonical JSON, encoded in the caller's thread) inserted
    durably into plain SQLite, two ways: naively (16 threads, each with its own
    connection, one transaction per insert: what a user would write) and group-committed
    (one writer thread, one transaction per batch: Log's structure without the Merkle
    nodes and the signed checkpoint). The ratio against the group-committed insert is
    the cost of the Merkle log itself; against the naive one, what a user gains or pays.
(c) Inclusion and consistency proof generation from the SQLite store of a 1,000,000-entry
    log (``Log.inclusion_proof`` / ``Log.consistency_proof``), median and p99 of 1,000
    random requests. The log is built once through ``Log`` itself (``submit`` in bulk, so
    batches of ``MAX_BATCH``) in a real node directory and cached under
    ``/tmp/veil-bench``.
(d) ``auditor.verify(LocalLog(node_dir))`` over that log: the offline audit of
    ``veil audit verify NODEDIR`` (signature, every entry's canonical form, leaf hashes
    against the stored tree, every stored checkpoint, the root), with a fresh auditor
    state directory as the CLI always has one.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._table import header, table, timed, verdict
from veil.node import auditor, pki, state
from veil.node.audit import (
    NoteSigner,
    leaf_hash,
    open_checkpoint,
    root_at,
    verify_consistency,
    verify_inclusion,
)
from veil.node.home import NodeHome, init_node
from veil.node.log import ENTRY_VERSION, MAX_BATCH, Log, canonical_json, now_rfc3339

BENCH_DIR = Path("/tmp/veil-bench")
THREADS = 16
PROOF_REQUESTS = 1000
BIG_VERSION = "log_append-1m-v1"  # bump when the cached log's shape changes


def call_record(i: int) -> dict[str, Any]:
    """A record shaped like ``node._rpc.call_record`` of an allowed catalog call."""
    return {
        "kind": "call",
        "method": "/veil.v1.CatalogService/ListDatasets",
        "caller": {
            "role": "analyst",
            "name": f"analyst-{i % 16:02d}",
            "fingerprint": f"{i * 2654435761 % 2**256:064x}",
        },
        "request_sha256": f"{i * 40503 % 2**256:064x}",
        "status": "OK",
        "result_sha256": f"{i * 2246822519 % 2**256:064x}",
    }


def entry_bytes(i: int) -> bytes:
    """The exact bytes ``Log`` stores for ``call_record(i)``."""
    return canonical_json({"v": ENTRY_VERSION, "t": now_rfc3339(), **call_record(i)})


def _fresh_db(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def _run_threads(worker: Callable[[int], None]) -> float:
    """Run ``THREADS`` workers, started together; return wall seconds until all finish."""
    barrier = threading.Barrier(THREADS + 1)

    def run(t: int) -> None:
        barrier.wait()
        worker(t)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(run, t) for t in range(THREADS)]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()  # re-raises a worker's error
        return time.perf_counter() - start


# --------------------------------------------------------------------------- (a) and (b)


def bench_log(directory: Path, per_thread: int) -> tuple[float, int, int]:
    """16 threads calling ``Log.append``; (seconds, entries, checkpoints written)."""
    db = _fresh_db(directory / "log.db")
    state.create(db)
    signer = pki_signer()
    log = Log(db, signer, signer.name)
    try:
        log.append(call_record(-1))  # start the writer thread outside the timing

        def worker(t: int) -> None:
            for i in range(per_thread):
                log.append(call_record(t * per_thread + i))

        elapsed = _run_threads(worker)
        size, note = log.latest_checkpoint()
        open_checkpoint(note, signer.verifier(), origin=signer.name)
    finally:
        log.close()
    conn = sqlite3.connect(db)
    checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] - 1
    conn.close()
    assert size == THREADS * per_thread + 1
    return elapsed, THREADS * per_thread, checkpoints


def _plain_schema(db: Path) -> None:
    conn = state.connect(db)
    conn.execute("CREATE TABLE entries (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
    conn.close()


def bench_plain_naive(directory: Path, per_thread: int) -> float:
    """16 threads, each with its own durable connection, one transaction per insert."""
    db = _fresh_db(directory / "plain-naive.db")
    _plain_schema(db)

    def worker(t: int) -> None:
        conn = state.connect(db)  # WAL, synchronous=FULL, busy timeout
        try:
            for i in range(t * per_thread, (t + 1) * per_thread):
                conn.execute("INSERT INTO entries(entry) VALUES (?)", (entry_bytes(i),))
        finally:
            conn.close()

    return _run_threads(worker)


class PlainGroupCommit:
    """Log's structure without the Merkle tree: a writer thread, one transaction per batch."""

    def __init__(self, db: Path) -> None:
        self.queue: queue.SimpleQueue[tuple[bytes, Future[int]] | None] = queue.SimpleQueue()
        self.conn = state.connect(db)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def append(self, entry: bytes) -> int:
        fut: Future[int] = Future()
        self.queue.put((entry, fut))
        return fut.result()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.conn.close()

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self.conn.execute("BEGIN IMMEDIATE")
            cur = self.conn.execute("SELECT coalesce(max(idx) + 1, 0) FROM entries")
            base = cur.fetchone()[0]
            self.conn.executemany(
                "INSERT INTO entries(idx, entry) VALUES (?, ?)",
                [(base + n, e) for n, (e, _) in enumerate(batch)],
            )
            self.conn.execute("COMMIT")
            for n, (_, fut) in enumerate(batch):
                fut.set_result(base + n)


def bench_plain_group(directory: Path, per_thread: int) -> float:
    db = _fresh_db(directory / "plain-group.db")
    _plain_schema(db)
    plain = PlainGroupCommit(db)
    try:
        def worker(t: int) -> None:
            for i in range(t * per_thread, (t + 1) * per_thread):
                plain.append(entry_bytes(i))

        return _run_threads(worker)
    finally:
        plain.close()


_SIGNER: NoteSigner | None = None


def pki_signer() -> NoteSigner:
    """An Ed25519 checkpoint signer like a node's (a fresh key; the cost is the same)."""
    global _SIGNER
    if _SIGNER is None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        _SIGNER = NoteSigner("veil.bench/append", Ed25519PrivateKey.generate())
    return _SIGNER


# --------------------------------------------------------------------------- (c) and (d)


def big_node(n: int, rebuild: bool) -> tuple[NodeHome, float | None]:
    """A node directory whose log holds ``n`` entries (cached); (home, build seconds or None)."""
    root = BENCH_DIR / f"node-{n}"
    marker = root / "built.json"
    want = {"version": BIG_VERSION, "entries": n}
    if not rebuild and marker.exists() and json.loads(marker.read_text()) == want:
        return NodeHome(root / "node"), None
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    pki.init_federation(root / "ca", "bench")
    home = init_node(root / "node", "bank-1m", federation_dir=root / "ca")  # entry 0
    log = home.open_log()
    start = time.perf_counter()
    try:
        done = 1
        chunk = 50_000
        while done < n:
            take = min(chunk, n - done)
            futures = [log.submit(call_record(i)) for i in range(done, done + take)]
            for f in futures:
                f.result()
            done += take
            print(f"\r  building the log: {done:,} / {n:,}", end="", flush=True)
        print()
    finally:
        log.close()
    elapsed = time.perf_counter() - start
    conn = state.connect(home.state_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    marker.write_text(json.dumps(want))
    return home, elapsed


def _ms(fn: Callable[[int], object], args: list[int]) -> tuple[float, float]:
    times = []
    for a in args:
        start = time.perf_counter()
        fn(a)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.99) - 1)]


def bench_proofs(home: NodeHome, n: int) -> dict[str, tuple[float, float]]:
    log = home.open_log()  # reading only: the writer thread never starts
    size, note = log.latest_checkpoint()
    assert size == n, f"cached log has {size} entries, expected {n}"
    cp = open_checkpoint(note, home.signer().verifier(), origin=home.origin)
    rng = random.Random(6962)
    indexes = [rng.randrange(n) for _ in range(PROOF_REQUESTS)]
    old_sizes = [rng.randrange(1, n) for _ in range(PROOF_REQUESTS)]
    # warm the page cache the way a serving node's would be
    for i in indexes[:50]:
        log.inclusion_proof(i, n)

    def check_inclusion(i: int) -> None:
        verify_inclusion(leaf_hash(log.entry(i)), i, n, log.inclusion_proof(i, n), cp.root_hash)

    old_roots = {m: root_at(m, log._subtree) for m in old_sizes[:100]}

    def check_consistency(m: int) -> None:
        verify_consistency(m, n, old_roots[m], cp.root_hash, log.consistency_proof(m, n))

    return {
        "inclusion proof": _ms(lambda i: log.inclusion_proof(i, n), indexes),
        "consistency proof": _ms(lambda m: log.consistency_proof(m, n), old_sizes),
        "inclusion: entry + proof + verify": _ms(check_inclusion, indexes),
        "consistency: proof + verify": _ms(check_consistency, old_sizes[:100]),
    }


def bench_verify(home: NodeHome) -> tuple[auditor.Report, float, int, float]:
    """(report, seconds, stored checkpoints, seconds per stored checkpoint checked)."""
    with tempfile.TemporaryDirectory(prefix="veil-auditor-", dir=BENCH_DIR) as state_dir:
        source = auditor.LocalLog(home.path)
        try:
            report, seconds = timed(lambda: auditor.verify(source, Path(state_dir)))
            notes = [note for _, note in source.checkpoints()]
            sample = notes[:: max(1, len(notes) // 1000)]
            _, open_s = timed(lambda: [auditor.unsigned_checkpoint(n) for n in sample])
        finally:
            source.conn.close()
    return report, seconds, len(notes), open_s / len(sample)


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks log_append")
    parser.add_argument("--per-thread", type=int, default=400,
                        help="appends per caller thread in (a) and (b) (16 threads)")
    parser.add_argument("--entries", type=int, default=1_000_000,
                        help="log size for the proof and verify benchmarks")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached big log")
    args = parser.parse_args(argv)
    per_thread: int = args.per_thread
    n: int = args.entries
    if per_thread < 1 or n < 2:
        parser.error("--per-thread must be >= 1 and --entries >= 2")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)

    sample = [entry_bytes(i) for i in range(0, 10_000, 7)]
    avg = sum(map(len, sample)) / len(sample)
    header(f"log_append: {THREADS} threads x {per_thread} durable appends of ~{avg:.0f} bytes; "
           f"proofs and verify at {n:,} entries")
    total = THREADS * per_thread

    with tempfile.TemporaryDirectory(prefix="append-", dir=BENCH_DIR) as tmp:
        work = Path(tmp)
        log_s, appended, checkpoints = bench_log(work, per_thread)
        naive_s = bench_plain_naive(work, per_thread)
        group_s = bench_plain_group(work, per_thread)
    log_rate, naive_rate, group_rate = appended / log_s, total / naive_s, total / group_s
    table(
        [f"durable appends, {THREADS} caller threads", "seconds", "entries/s",
         "Merkle log cost (x)"],
        [
            [f"veil Log.append (Merkle + signed checkpoint, {checkpoints:,} batches)",
             log_s, log_rate, 1.0],
            ["plain SQLite insert, group-committed (Log minus Merkle)", group_s, group_rate,
             group_rate / log_rate],
            ["plain SQLite insert, naive (own connection, 1 txn/insert)", naive_s, naive_rate,
             naive_rate / log_rate],
        ],
    )
    print(f"average batch under {THREADS} callers: {appended / max(checkpoints, 1):.1f} entries "
          "per transaction and checkpoint\n")

    home, build_s = big_node(n, args.rebuild)
    if build_s is not None:
        table(["building the big log via Log.submit", "seconds", "entries/s"],
              [[f"{n:,} entries, batches of {MAX_BATCH}", build_s, n / build_s]])
    db_mb = sum(p.stat().st_size for p in home.path.glob("state.db*")) / 2**20
    proofs = bench_proofs(home, n)
    table(
        [f"proofs from SQLite at N = {n:,} ({db_mb:,.0f} MB)", "median ms", "p99 ms"],
        [[name, med, p99] for name, (med, p99) in proofs.items()],
    )
    report, verify_s, stored_cps, per_cp_s = bench_verify(home)
    assert report.entries_checked == n
    batch = appended / max(checkpoints, 1)
    table(
        ["auditor.verify(LocalLog) offline", "seconds", "entries/s"],
        [[f"{n:,} entries, {stored_cps:,} stored checkpoints", verify_s, n / verify_s]],
    )
    print(f"each stored checkpoint costs the offline verify {per_cp_s * 1e6:.0f} us (parse and "
          f"root comparison; only the newest one's signature is checked); a log written at {batch:.1f} entries per batch, as in (a), holds "
          f"{n / batch:,.0f} checkpoints per {n:,} entries: about "
          f"+{(n / batch - stored_cps) * per_cp_s:.1f} s on top of the figure above\n")

    verdict("append throughput entries/s (16 threads)", log_rate, 2000, higher_is_better=True)
    verdict("Merkle log / plain group-committed insert time", group_rate / log_rate, 2.0,
            higher_is_better=False)
    verdict("Merkle log / plain naive insert time", naive_rate / log_rate, 2.0,
            higher_is_better=False)
    verdict("inclusion proof median ms", proofs["inclusion proof"][0], 5.0,
            higher_is_better=False)
    verdict("inclusion proof p99 ms", proofs["inclusion proof"][1], 5.0, higher_is_better=False)
    verdict("consistency proof median ms", proofs["consistency proof"][0], 5.0,
            higher_is_better=False)
    verdict("consistency proof p99 ms", proofs["consistency proof"][1], 5.0,
            higher_is_better=False)
    verdict("full offline verification seconds", verify_s, 10.0, higher_is_better=False)
    return 0

"""The durable Merkle log (``node.log.Log``) on a real SQLite file, and tamper detection.

Part 1 drives ``Log`` directly on a fresh state database (``node.state.create``) with a
fresh Ed25519 checkpoint key, and checks what it stores against the in-memory reference
``MemoryTree``: the Merkle nodes, the roots at every size, inclusion and consistency
proofs, the signed checkpoints, group commit under concurrency, the transactional
``effect`` and the canonical entry encoding.

Part 2 tampers with a real node directory the way an operator with write access to
``state.db`` could, and runs ``veil audit verify NODEDIR`` as an auditor would: each
tampering is reported with exit status 1 and a message that says what and where, and
the untouched original still verifies.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.node import state
from veil.node.audit import (
    Checkpoint,
    Frontier,
    MemoryTree,
    NoteSigner,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    open_checkpoint,
    root_at,
    root_hash,
    sign_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from veil.node.home import NodeHome
from veil.node.log import ENTRY_VERSION, Log, Receipt, canonical_json, event
from tests.conftest import Federation, make_node, register_customers, run_cli

ORIGIN = "veil.test/log-under-test"


# --------------------------------------------------------------------------- helpers


def new_log(directory: Path) -> tuple[Log, NoteSigner]:
    db = directory / "state.db"
    state.create(db)
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    return Log(db, signer, ORIGIN), signer


@pytest.fixture
def log_and_signer(tmp_path: Path) -> Iterator[tuple[Log, NoteSigner]]:
    log, signer = new_log(tmp_path)
    try:
        yield log, signer
    finally:
        log.close()


def record(i: int, **extra: Any) -> dict[str, Any]:
    """A call-like record of about the size of a real one."""
    return {
        "kind": "call",
        "method": "/veil.v1.CatalogService/ListDatasets",
        "caller": {"role": "analyst", "name": f"analyst-{i % 7}", "fingerprint": f"{i:064x}"},
        "request_sha256": f"{i * 7919:064x}",
        "status": "OK",
        "n": i,
        **extra,
    }


def append_all(log: Log, records: list[dict[str, Any]]) -> list[Receipt]:
    """Submit every record before waiting, so that the writer group-commits them."""
    futures = [log.submit(r) for r in records]
    return [f.result() for f in futures]


class StoredTree:
    """Read the Merkle nodes straight from the SQLite file, independently of ``Log``."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)

    def subtree(self, level: int, index: int) -> bytes:
        row = self.conn.execute(
            "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        assert row is not None, f"merkle node ({level}, {index}) is not stored"
        return bytes(row[0])

    def nodes(self) -> dict[tuple[int, int], bytes]:
        return {
            (int(level), int(idx)): bytes(h)
            for level, idx, h in self.conn.execute("SELECT level, idx, hash FROM merkle_nodes")
        }

    def entries(self) -> list[bytes]:
        return [bytes(e) for (e,) in self.conn.execute("SELECT entry FROM log_entries ORDER BY idx")]

    def checkpoints(self) -> list[tuple[int, str]]:
        return [(int(s), str(n)) for s, n in self.conn.execute(
            "SELECT size, note FROM checkpoints ORDER BY size"
        )]

    def close(self) -> None:
        self.conn.close()


def reference_nodes(tree: MemoryTree) -> dict[tuple[int, int], bytes]:
    """Every complete perfect subtree of ``tree``: what the store must hold, exactly."""
    nodes = {}
    level = 0
    while (1 << level) <= tree.size:
        for index in range(tree.size >> level):
            nodes[(level, index)] = tree.subtree(level, index)
        level += 1
    return nodes


# --------------------------------------------------------------------------- appending


def test_appends_return_increasing_indices_and_receipts_that_cover_them(
    log_and_signer: tuple[Log, NoteSigner],
) -> None:
    log, signer = log_and_signer
    receipts = [log.append(record(i)) for i in range(12)]
    assert [r.log_index for r in receipts] == list(range(12))
    for r in receipts:
        cp = open_checkpoint(r.checkpoint, signer.verifier(), origin=ORIGIN)
        # appended one at a time: each append is its own batch and checkpoint
        assert cp.size == r.tree_size == r.log_index + 1
    assert log.size() == 12
    assert log.latest_checkpoint() == (12, receipts[-1].checkpoint)


def test_a_reopened_log_continues_where_it_stopped(tmp_path: Path) -> None:
    log, signer = new_log(tmp_path)
    first = append_all(log, [record(i) for i in range(5)])
    log.close()
    again = Log(tmp_path / "state.db", signer, ORIGIN)
    try:
        more = append_all(again, [record(i) for i in range(5, 9)])
        assert [r.log_index for r in first + more] == list(range(9))
        entries = [e for _, e in again.entries(0, 9)]
        cp = open_checkpoint(more[-1].checkpoint, signer.verifier(), origin=ORIGIN)
        assert cp.root_hash == root_hash(entries)
    finally:
        again.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=5).filter(
        lambda s: sum(s) <= 200
    ),
    data=st.data(),
)
def test_stored_merkle_nodes_match_memory_tree(sizes: list[int], data: st.DataObject) -> None:
    """Appended in bursts (several group commits), the store equals the reference tree."""
    with tempfile.TemporaryDirectory(prefix="veil-log-") as tmp:
        log, signer = new_log(Path(tmp))
        try:
            receipts: list[Receipt] = []
            n = 0
            for burst in sizes:
                receipts += append_all(log, [record(i) for i in range(n, n + burst)])
                n += burst
            stored = StoredTree(Path(tmp) / "state.db")
            try:
                entries = stored.entries()
                assert len(entries) == n
                tree = MemoryTree.from_entries(entries)
                # exactly the complete perfect subtrees, nothing else, same hashes
                assert stored.nodes() == reference_nodes(tree)
                # roots at every size, from the stored subtrees
                for m in range(n + 1):
                    assert root_at(m, stored.subtree) == root_at(m, tree.subtree)
                # proofs from the log equal proofs from the reference
                size = data.draw(st.integers(1, n), label="tree size")
                index = data.draw(st.integers(0, size - 1), label="index")
                old = data.draw(st.integers(0, size), label="old size")
                assert log.inclusion_proof(index, size) == inclusion_proof(
                    index, size, tree.subtree
                )
                assert log.consistency_proof(old, size) == consistency_proof(
                    old, size, tree.subtree
                )
                # each signed checkpoint states the reference root at its size
                for size_, note in stored.checkpoints():
                    cp = open_checkpoint(note, signer.verifier(), origin=ORIGIN)
                    assert cp.size == size_
                    assert cp.root_hash == root_at(size_, tree.subtree)
                assert receipts[-1].tree_size == n
            finally:
                stored.close()
        finally:
            log.close()


def test_every_entry_is_included_under_its_receipts_checkpoint(
    log_and_signer: tuple[Log, NoteSigner],
) -> None:
    log, signer = log_and_signer
    receipts = [log.append(record(i)) for i in range(10)]
    receipts += append_all(log, [record(i) for i in range(10, 60)])
    receipts += [log.append(record(i)) for i in range(60, 70)]
    for r in receipts:
        cp = open_checkpoint(r.checkpoint, signer.verifier(), origin=ORIGIN)
        assert r.log_index < cp.size == r.tree_size
        entry = log.entry(r.log_index)
        proof = log.inclusion_proof(r.log_index, cp.size)
        verify_inclusion(leaf_hash(entry), r.log_index, cp.size, proof, cp.root_hash)
        # and under the latest checkpoint, which covers everything
        size, note = log.latest_checkpoint()
        latest = open_checkpoint(note, signer.verifier(), origin=ORIGIN)
        proof = log.inclusion_proof(r.log_index, size)
        verify_inclusion(leaf_hash(entry), r.log_index, size, proof, latest.root_hash)


def test_every_pair_of_stored_checkpoints_is_consistent(
    tmp_path: Path, log_and_signer: tuple[Log, NoteSigner]
) -> None:
    log, signer = log_and_signer
    for i in range(25):
        log.append(record(i))
    for start in range(25, 100, 15):
        append_all(log, [record(i) for i in range(start, start + 15)])
    stored = StoredTree(tmp_path / "state.db")
    try:
        cps = [open_checkpoint(n, signer.verifier(), origin=ORIGIN) for _, n in stored.checkpoints()]
    finally:
        stored.close()
    assert [cp.size for cp in cps] == sorted({cp.size for cp in cps})
    assert cps[-1].size == 100 and len(cps) >= 26
    for a, old in enumerate(cps):
        for new in cps[a:]:
            proof = log.consistency_proof(old.size, new.size)
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)


def test_sixteen_threads_group_commit_contiguous_indices(
    tmp_path: Path, log_and_signer: tuple[Log, NoteSigner]
) -> None:
    log, signer = log_and_signer
    threads_n, per_thread = 16, 25
    barrier = threading.Barrier(threads_n)

    def worker(t: int) -> list[Receipt]:
        barrier.wait()  # all sixteen start together
        return [log.append(record(t * 1000 + i, thread=t)) for i in range(per_thread)]

    with ThreadPoolExecutor(max_workers=threads_n) as pool:
        results = list(pool.map(worker, range(threads_n)))  # re-raises a worker's error
    total = threads_n * per_thread
    indices = sorted(r.log_index for rs in results for r in rs)
    assert indices == list(range(total))  # distinct and contiguous
    for rs in results:  # each thread's own appends are ordered as it made them
        assert [r.log_index for r in rs] == sorted(r.log_index for r in rs)
    # every receipt names the entry this thread wrote
    for t, rs in enumerate(results):
        for i, r in enumerate(rs):
            assert json.loads(log.entry(r.log_index))["n"] == t * 1000 + i

    size, note = log.latest_checkpoint()
    cp = open_checkpoint(note, signer.verifier(), origin=ORIGIN)
    assert size == cp.size == total
    assert cp.root_hash == root_hash(e for _, e in log.entries(0, total))
    stored = StoredTree(tmp_path / "state.db")
    try:
        n_checkpoints = len(stored.checkpoints())
        assert stored.nodes() == reference_nodes(MemoryTree.from_entries(stored.entries()))
    finally:
        stored.close()
    assert n_checkpoints < total, "no group commit: one checkpoint per entry"


def test_a_failing_effect_leaves_nothing_and_its_batch_mates_commit(
    tmp_path: Path, log_and_signer: tuple[Log, NoteSigner]
) -> None:
    log, signer = log_and_signer
    log.append(record(0))
    gate = threading.Event()
    entered = threading.Event()

    def hold_writer(conn: sqlite3.Connection, index: int) -> None:
        entered.set()
        assert gate.wait(10), "test did not release the writer"

    def charge(tag: str):  # type: ignore[no-untyped-def]
        def effect(conn: sqlite3.Connection, index: int) -> None:
            conn.execute(
                "INSERT INTO usage(log_index, time, analyst, job_id, method, meters_json) "
                "VALUES (?, 't', ?, 'job', 'm', '{}')",
                (index, tag),
            )
        return effect

    class QuotaRace(Exception):
        pass

    def charge_then_fail(conn: sqlite3.Connection, index: int) -> None:
        charge("bad")(conn, index)
        raise QuotaRace("refused inside the transaction")

    # Hold the writer inside one batch so that the next three queue up and are
    # committed together as the following batch.
    holder = log.submit(record(1), hold_writer)
    assert entered.wait(10)
    good_a = log.submit(record(2, tag="a"), charge("a"))
    bad = log.submit(record(3, tag="bad"), charge_then_fail)
    good_c = log.submit(record(4, tag="c"), charge("c"))
    gate.set()

    assert holder.result(10).log_index == 1
    with pytest.raises(QuotaRace, match="refused inside the transaction"):
        bad.result(10)
    a, c = good_a.result(10), good_c.result(10)
    assert (a.log_index, c.log_index) == (2, 3)  # the failed entry took no index
    assert a.checkpoint == c.checkpoint and a.tree_size == c.tree_size == 4  # one batch

    stored = StoredTree(tmp_path / "state.db")
    try:
        entries = stored.entries()
        assert [json.loads(e).get("tag") for e in entries] == [None, None, "a", "c"]
        usage = dict(stored.conn.execute("SELECT log_index, analyst FROM usage"))
        assert usage == {2: "a", 3: "c"}  # the failed effect's write was rolled back
        assert stored.nodes() == reference_nodes(MemoryTree.from_entries(entries))
        assert [s for s, _ in stored.checkpoints()] == [1, 2, 4]
    finally:
        stored.close()
    cp = open_checkpoint(c.checkpoint, signer.verifier(), origin=ORIGIN)
    assert cp.root_hash == root_hash(entries)


def test_entries_are_canonical_versioned_json_with_time(
    log_and_signer: tuple[Log, NoteSigner],
) -> None:
    log, _ = log_and_signer
    r = log.append({"kind": "call", "z": 1, "a": {"y": [1, 2], "b": "数据 données"}})
    e = log.append(event("dataset.registered", name="customers", version=1))
    raw = log.entry(r.log_index)
    parsed = json.loads(raw)
    assert raw == canonical_json(parsed)
    assert raw.startswith(b'{"a":{"b":"') and b" " not in raw.replace("数据 données".encode(), b"")
    assert "数据 données".encode() in raw  # UTF-8, not \\u escapes
    assert parsed["v"] == ENTRY_VERSION == 1
    t = parsed["t"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", t), t
    assert datetime.fromisoformat(t).utcoffset() == timedelta(0)
    assert list(parsed) == sorted(parsed)

    ev = json.loads(log.entry(e.log_index))
    assert ev == {"v": 1, "t": ev["t"], "kind": "event", "event": "dataset.registered",
                  "details": {"name": "customers", "version": 1}}
    assert ev["t"] >= t  # times follow the log order

    with pytest.raises(ValueError, match="record keys 'v' and 't' are set by the log"):
        log.submit({"v": 2, "kind": "call"})
    with pytest.raises(ValueError, match="record keys 'v' and 't' are set by the log"):
        log.submit({"t": "yesterday"})
    assert log.size() == 2


# =========================================================================== tampering


@pytest.fixture(scope="module")
def pristine(
    federation: Federation, tmp_path_factory: pytest.TempPathFactory
) -> NodeHome:
    """A node with a registered dataset and a few more entries, never tampered with."""
    root = tmp_path_factory.mktemp("pristine")
    home = make_node(federation, root, "bank-t")
    register_customers(home, root)
    log = home.open_log()
    try:
        for i in range(8):
            log.append(event("test.tick", n=i))
        append_all(log, [event("test.burst", n=i) for i in range(6)])
    finally:
        log.close()
    return home


SIZE = 16  # initialized + registered + 8 ticks + a burst of 6


def copy_node(home: NodeHome, dst: Path) -> NodeHome:
    shutil.copytree(home.path, dst, symlinks=True)
    return NodeHome(dst)


def db(home: NodeHome) -> sqlite3.Connection:
    return sqlite3.connect(home.state_path, isolation_level=None)


def verify_cli(home: NodeHome, state_dir: Path) -> tuple[int, str]:
    r = run_cli("audit", "verify", str(home.path), "--state", str(state_dir), "--quiet")
    return r.returncode, (r.stdout if r.returncode == 0 else r.stderr).strip()


def assert_verifies(home: NodeHome, state_dir: Path, size: int = SIZE) -> str:
    code, out = verify_cli(home, state_dir)
    assert code == 0, out
    assert f": log verified: {size} entries" in out and "signature valid" in out
    return out


def error_line(out: str) -> str:
    assert out.startswith("veil: error: "), out
    assert "Traceback" not in out
    return out.removeprefix("veil: error: ")


def test_pristine_node_verifies(pristine: NodeHome, tmp_path: Path) -> None:
    out = assert_verifies(pristine, tmp_path / "auditor")
    assert f"veil.testfed/bank-t: log verified: {SIZE} entries" in out
    # the checkpoint is printed as the C2SP text: origin, size, base64 root
    lines = out.splitlines()
    assert [ln.strip() for ln in lines[1:3]] == ["veil.testfed/bank-t", str(SIZE)]


def flip_inside_value(entry: bytes) -> bytes:
    """Flip one byte of the timestamp: still canonical JSON, different content."""
    pos = entry.index(b'"t":"') + len('"t":"') + 3  # the last digit of the year
    return entry[:pos] + bytes([entry[pos] ^ 0x01]) + entry[pos + 1 :]


@pytest.mark.parametrize(
    ("flip", "message"),
    [
        (flip_inside_value,
         "entry 5 does not match the node's stored tree: the entry was altered after it was logged"),
        (lambda e: bytes([e[0] ^ 0x01]) + e[1:], "entry 5 is not JSON"),
        # regression: a JSON value that is not an object crashed the verifier
        (lambda e: b'["' + e[1:-1].replace(b'"', b"'") + b'"]',
         "entry 5 is not a JSON object, got list"),
        (lambda e: b"[" * 100_000, "entry 5 is not JSON"),  # regression: RecursionError
        (lambda e: e.replace(b'"v":1', b'"v":2'), "entry 5 has unknown version 2"),
        # regression: 1.0 and true compared equal to version 1
        (lambda e: e.replace(b'"v":1', b'"v":1.0'), "entry 5 has unknown version 1.0"),
        (lambda e: e.replace(b'"v":1', b'"v":true'), "entry 5 has unknown version true"),
        (lambda e: e.replace(b',"v":1', b""), "entry 5 has unknown version null"),
        (lambda e: e.replace(b'{"details":', b'{ "details":', 1), "entry 5 is not in canonical form"),
    ],
    ids=["valid-json", "broken-json", "json-list", "too-deep", "version-2", "version-float",
         "version-true", "no-version", "whitespace"],
)
def test_altered_entry_is_named(
    pristine: NodeHome, tmp_path: Path, flip: Any, message: str
) -> None:
    home = copy_node(pristine, tmp_path / "node")
    conn = db(home)
    (entry,) = conn.execute("SELECT entry FROM log_entries WHERE idx = 5").fetchone()
    altered = flip(bytes(entry))
    assert altered != entry
    conn.execute("UPDATE log_entries SET entry = ? WHERE idx = 5", (altered,))
    conn.close()
    code, out = verify_cli(home, tmp_path / "auditor")
    assert code == 1
    assert error_line(out) == message
    assert_verifies(pristine, tmp_path / "auditor")


def test_deleted_entry_is_named(pristine: NodeHome, tmp_path: Path) -> None:
    home = copy_node(pristine, tmp_path / "node")
    conn = db(home)
    conn.execute("DELETE FROM log_entries WHERE idx = 7")
    conn.close()
    code, out = verify_cli(home, tmp_path / "auditor")
    assert code == 1
    assert error_line(out) == "entry 7 is missing from the log"
    assert_verifies(pristine, tmp_path / "auditor")


def test_deleted_last_entry_is_a_truncation_under_the_checkpoint(
    pristine: NodeHome, tmp_path: Path
) -> None:
    home = copy_node(pristine, tmp_path / "node")
    conn = db(home)
    conn.execute("DELETE FROM log_entries WHERE idx = ?", (SIZE - 1,))
    conn.close()
    code, out = verify_cli(home, tmp_path / "auditor")
    assert code == 1
    assert error_line(out) == (
        f"log is truncated: the checkpoint covers {SIZE} entries, the log holds {SIZE - 1}"
    )


def test_truncated_log_is_caught_by_the_auditor_state(pristine: NodeHome, tmp_path: Path) -> None:
    auditor_state = tmp_path / "auditor"
    assert_verifies(pristine, auditor_state)  # the auditor has seen SIZE entries

    home = copy_node(pristine, tmp_path / "node")
    keep = SIZE - 6  # the checkpoint before the last burst: a consistent, signed, older log
    conn = db(home)
    assert conn.execute("SELECT 1 FROM checkpoints WHERE size = ?", (keep,)).fetchone()
    conn.execute("DELETE FROM log_entries WHERE idx >= ?", (keep,))
    conn.execute("DELETE FROM checkpoints WHERE size > ?", (keep,))
    conn.close()

    # A first-time auditor cannot tell: the shorter log is internally consistent ...
    assert_verifies(home, tmp_path / "fresh-auditor", size=keep)
    # ... but the auditor who saw more says what and by how much.
    code, out = verify_cli(home, auditor_state)
    assert code == 1
    assert error_line(out) == (
        f"log was truncated or rolled back: the node's checkpoint has {keep} entries, "
        f"but this auditor verified {SIZE} before"
    )
    out = assert_verifies(pristine, auditor_state)
    assert f"consistent with the {SIZE} entries seen before (+0)" in out


def test_checkpoint_signed_by_another_key_is_refused(pristine: NodeHome, tmp_path: Path) -> None:
    home = copy_node(pristine, tmp_path / "node")
    conn = db(home)
    size, note = conn.execute(
        "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    genuine = open_checkpoint(note, pristine.signer().verifier(), origin=pristine.origin)
    impostor = NoteSigner(pristine.origin, Ed25519PrivateKey.generate())
    forged = sign_checkpoint(genuine, impostor)  # same origin, same tree, wrong key
    conn.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (forged, size))
    conn.close()

    code, out = verify_cli(home, tmp_path / "auditor")
    assert code == 1
    node_key = f"{pristine.origin}+{pristine.signer().key_id.hex()}"
    assert error_line(out) == (
        f"no valid signature by {node_key}: the note is signed by "
        f"{pristine.origin}+{impostor.key_id.hex()}"
    )
    assert_verifies(pristine, tmp_path / "auditor")


def rewrite_history(home: NodeHome, index: int) -> None:
    """What a malicious operator with the node's key can do: change entry ``index``,
    then rebuild every Merkle node, the frontier and every checkpoint consistently,
    each freshly signed by the node's own key."""
    signer = home.signer()
    conn = db(home)
    conn.execute("BEGIN IMMEDIATE")
    (entry,) = conn.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
    record_ = json.loads(entry)
    record_["details"] = {"n": 999, "note": "this never happened"}
    conn.execute(
        "UPDATE log_entries SET entry = ? WHERE idx = ?", (canonical_json(record_), index)
    )
    sizes = [s for (s,) in conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    conn.execute("DELETE FROM merkle_nodes")
    conn.execute("DELETE FROM checkpoints")
    frontier = Frontier()
    for (data,) in conn.execute("SELECT entry FROM log_entries ORDER BY idx").fetchall():
        conn.executemany(
            "INSERT INTO merkle_nodes(level, idx, hash) VALUES (?, ?, ?)",
            frontier.append(leaf_hash(bytes(data))),
        )
        if frontier.size in sizes:
            note = sign_checkpoint(Checkpoint(home.origin, frontier.size, frontier.root()), signer)
            conn.execute("INSERT INTO checkpoints(size, note) VALUES (?, ?)", (frontier.size, note))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'frontier'", (frontier.to_bytes(),))
    conn.execute("COMMIT")
    conn.close()


def test_rewritten_history_is_caught_with_the_first_index_that_differs(
    pristine: NodeHome, tmp_path: Path
) -> None:
    auditor_state = tmp_path / "auditor"
    assert_verifies(pristine, auditor_state)

    home = copy_node(pristine, tmp_path / "node")
    k = 9
    rewrite_history(home, k)
    # The rewrite is self-consistent: an auditor without history accepts it ...
    assert_verifies(home, tmp_path / "fresh-auditor")
    # ... the auditor who verified the log before names where history changed.
    code, out = verify_cli(home, auditor_state)
    assert code == 1
    assert error_line(out) == (
        f"entry {k} differs from what this auditor verified before: "
        f"the log was rewritten from index {k}"
    )
    assert_verifies(pristine, auditor_state)


def test_user_times_compare_like_log_times() -> None:
    from veil.node.errors import InvalidInput
    from veil.node.log import parse_user_time

    logged = "2026-11-27T01:00:00.000001Z"  # how entries and statement lines carry time
    assert parse_user_time("2026-11-27T01:00:00Z", "--since") < logged
    assert parse_user_time("2026-11-27", "--since") == "2026-11-27T00:00:00.000000Z"
    assert parse_user_time("2026-11-27T09:00:00+08:00", "--since") == "2026-11-27T01:00:00.000000Z"
    for bad, message in (("yesterday", "expected an RFC 3339 time"),
                         ("2026-11-27T09:00:00", "no time zone")):
        with pytest.raises(InvalidInput, match=message):
            parse_user_time(bad, "--since")

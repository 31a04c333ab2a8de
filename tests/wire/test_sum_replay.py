"""Auditing a sum afterwards: every node's part is replayable from its pinned snapshot.

After a run, `veil audit replay` on each node (the aggregator's RunSum entry and each
contributor's ContributeSum entry) recomputes the local aggregate from the snapshot the
entry names and checks the salted commitment in the log; tampering with the salt in the
node's state or with the snapshot shows up as a mismatch.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import duckdb
import pytest

from veil.node import keys, kinds
from veil.node.client import Client

from tests.conftest import Federation, Member, run_cli
from tests.wire.test_sum_wire import LEVELS, loans, random_rows, submit_and_approve, sum_job


@pytest.fixture
def after_a_run(tmp_path: Path, start_nodes, federation: Federation,  # type: ignore[no-untyped-def]
                paillier_keys: Path) -> tuple[dict[str, Member], str]:
    rng = random.Random(3)
    sources = {n: loans(tmp_path / f"{n}.csv", random_rows(rng, 30, ["energy", "retail"]))
               for n in ("bank-a", "bank-b")}
    members = start_nodes(sources, levels=LEVELS, key_column="loan_id")
    job = submit_and_approve(federation, members, sum_job(members, paillier_keys))
    with Client(members["bank-a"].address, federation.identity("analyst", "alice"),
                node="bank-a") as alice:
        alice.run_sum(job, keys.load_private(paillier_keys))
    return members, job


def _sum_replays(member: Member) -> list[kinds.Replayed]:
    return [r for r in kinds.replay(member.home.path) if len(r.logged) == 64]


def test_every_nodes_part_of_a_sum_replays_from_its_snapshot_and_matches_its_commitment(
    after_a_run: tuple[dict[str, Member], str]
) -> None:
    members, job = after_a_run
    for m in members.values():  # the aggregator's RunSum and the contributor's ContributeSum
        [r] = _sum_replays(m)
        assert r.job == job and r.ok, (m.name, r)
    out = run_cli("audit", "replay", str(members["bank-b"].home.path))
    assert out.returncode == 0, out.stderr
    assert "ok " in out.stdout and "1 compute calls replayed, 0 mismatched" in out.stdout


def test_a_sum_replay_with_a_tampered_salt_reports_a_mismatch(
    after_a_run: tuple[dict[str, Member], str]
) -> None:
    members, _ = after_a_run
    b = members["bank-b"]
    conn = sqlite3.connect(b.home.state_path)
    with conn:
        conn.execute("UPDATE sum_parts SET salt = ?", (bytes(32),))
    conn.close()
    [r] = _sum_replays(b)
    assert not r.ok and len(r.replayed) == 64
    out = run_cli("audit", "replay", str(b.home.path))
    assert out.returncode != 0 and "MISMATCH" in out.stdout


def test_a_sum_replay_over_a_tampered_snapshot_reports_a_mismatch(
    after_a_run: tuple[dict[str, Member], str]
) -> None:
    members, _ = after_a_run
    b = members["bank-b"]
    [snap] = list(b.home.snapshots.glob("*.parquet"))
    tampered = snap.with_suffix(".tmp.parquet")
    duckdb.connect().sql(f"COPY (SELECT * REPLACE (exposure + 1 AS exposure) FROM '{snap}') "
               f"TO '{tampered}' (FORMAT parquet)")
    snap.chmod(0o644)
    tampered.replace(snap)
    [r] = _sum_replays(b)
    assert not r.ok

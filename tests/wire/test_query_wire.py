"""Sandboxed queries through a real node: escapes refused by name, node healthy after each,
aggregates only, small groups suppressed, and replay of logged calls by the auditor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from veil.node.client import Client
from veil.node.errors import PolicyDenied, ResourceLimit, VeilError
from veil.node.server import RunningNode
from tests.conftest import Federation, run_cli
from tests.wire.test_jobs_wire import job_toml

COLUMNS = '"region", "age_band", "amount"'


@pytest.fixture
def alice(client_for) -> Client:  # type: ignore[no-untyped-def]
    return client_for("analyst", "alice")


@pytest.fixture
def approve(client_for):  # type: ignore[no-untyped-def]
    olga, sam = client_for("operator", "olga"), client_for("subject-representative", "sam")

    def do(job_id: str) -> None:
        if olga.approve(job_id).state != "approved":
            sam.approve(job_id)

    return do


ESCAPES = [
    ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", "read_csv"),
    ("SELECT COUNT(*) FROM read_text('/etc/passwd')", "read_text"),
    ("SELECT COUNT(*) FROM 'x.csv'", "x.csv"),
    ("SELECT COUNT(*) FROM glob('/*')", "glob"),
    ("COPY customers TO '/tmp/out.csv'", "COPY"),
    ("ATTACH '/tmp/x.db'", "ATTACH"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("PRAGMA database_list", "PRAGMA"),
    ("SET memory_limit='100GB'", "SET"),
    ("CALL duckdb_settings()", "CALL"),
    ("SELECT COUNT(*) FROM customers; SELECT COUNT(*) FROM customers", "exactly one select statement, got 2"),
    ("SELECT getenv('HOME'), COUNT(*) FROM customers", "getenv"),
    ("SELECT current_setting('memory_limit'), COUNT(*) FROM customers", "current_setting"),
    ("SELECT COUNT(*) FROM duckdb_settings()", "duckdb_settings"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r",
     "recursive"),
    ("SELECT COUNT(*) FROM customers a, customers b, customers c", "join"),
    ("SELECT amount FROM customers", "amount"),
    ("SELECT customer_id, COUNT(*) FROM customers GROUP BY customer_id", "customer_id"),
    ("SELECT COUNT(*) FROM customers WHERE customer_id = 'c00001'", "customer_id"),
    ("SELECT region, MAX(amount) FROM customers GROUP BY region", "max"),
]


@pytest.mark.parametrize(("sql", "construct"), ESCAPES)
def test_escapes_are_refused_by_name_and_the_node_stays_healthy(
    alice: Client, sql: str, construct: str
) -> None:
    with pytest.raises(VeilError) as info:
        alice.submit_job(job_toml(sql, columns=COLUMNS))
    assert construct.lower() in str(info.value).lower(), str(info.value)
    assert alice.datasets()[0].name == "customers"  # still serving


def test_a_10_mb_query_text_is_refused(alice: Client) -> None:
    sql = "SELECT COUNT(*) FROM customers WHERE " + " OR ".join(
        f"region = 'r{i:07d}'" for i in range(450_000))
    assert len(sql) > 10_000_000
    with pytest.raises(ResourceLimit, match="bytes, more than"):
        alice.submit_job(job_toml(sql, columns=COLUMNS))  # refused before signing
    # a text the client can sign but longer than the node's max_sql_bytes (100,000)
    medium = "SELECT COUNT(*) FROM customers WHERE " + " OR ".join(
        f"region = 'r{i:07d}'" for i in range(10_000))
    with pytest.raises(ResourceLimit, match="more than the limit of 100,000"):
        alice.submit_job(job_toml(medium, columns=COLUMNS))
    assert alice.datasets()


def test_only_aggregates_and_small_groups_are_suppressed(alice: Client, approve) -> None:  # type: ignore[no-untyped-def]
    # 60 customers in 3 regions x 4 age bands: groups of 5 are below the minimum of 10
    job = alice.submit_job(job_toml(
        "SELECT region, age_band, COUNT(*) AS n FROM customers GROUP BY region, age_band",
        columns='"region", "age_band"'))
    approve(job.id)
    fine = alice.submit_job(job_toml(
        "SELECT region, COUNT(*) AS n, AVG(amount) AS avg FROM customers GROUP BY region"))
    approve(fine.id)
    small = alice.query(job.id)
    assert small.rows == 0 and small.suppressed_groups == 12
    big = alice.query(fine.id)
    assert big.suppressed_groups == 0
    assert isinstance(big.arrays["avg"], np.ndarray) and big.arrays["avg"].dtype == np.float64
    assert dict(zip(big.arrays["region"].tolist(), big.arrays["n"].tolist())) == {
        "north": 20, "south": 20, "east": 20}


def test_replay_confirms_logged_results_and_finds_a_changed_snapshot(
    alice: Client, approve, running: RunningNode, node_home  # type: ignore[no-untyped-def]
) -> None:
    job = alice.submit_job(job_toml())
    approve(job.id)
    alice.query(job.id)
    first = alice.last_receipt.log_index
    alice.query(job.id)
    r = run_cli("audit", "replay", str(node_home.path))
    assert r.returncode == 0, r.stderr
    assert "2 compute calls replayed, 0 mismatched" in r.stdout
    r = run_cli("audit", "replay", str(node_home.path), "--from", str(first + 1))
    assert "1 compute calls replayed" in r.stdout
    # someone swaps the immutable snapshot for other data: replay names the calls
    [snapshot] = list(node_home.snapshots.glob("*.parquet"))
    os.chmod(snapshot, 0o644)
    tmp = snapshot.with_suffix(".tmp.parquet")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * REPLACE (amount + 1 AS amount) FROM '{snapshot}') TO '{tmp}'")
    con.close()
    shutil.move(tmp, snapshot)
    r = run_cli("audit", "replay", str(node_home.path))
    assert r.returncode == 1
    assert f"MISMATCH entry {first}" in r.stdout
    assert "2 mismatched" in r.stdout


def test_query_of_someone_else_and_query_cli_formats(
    alice: Client, approve, running: RunningNode, federation: Federation, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    job = alice.submit_job(job_toml())
    approve(job.id)
    ident = str(federation.identity("analyst", "alice"))
    r = run_cli("query", job.id, "--node", running.address, "--identity", ident,
                "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "region,n,total"
    r = run_cli("query", job.id, "--node", running.address, "--identity", ident,
                "--format", "json")
    assert '"suppressed_groups": 0' in r.stdout
    with Client(running.address, federation.identity("analyst", "bob")) as bob:
        with pytest.raises(PolicyDenied):
            bob.query(job.id)


def test_result_over_max_result_bytes_is_refused_and_logged_as_refused_not_charged(
    node_home, federation: Federation  # type: ignore[no-untyped-def]
) -> None:
    import json

    from tests.wire.test_mutation_killers_wire import _node_with, _run

    with _node_with(node_home, federation, "max_result_bytes = 1000000",
                    "max_result_bytes = 100") as who:
        with pytest.raises(ResourceLimit, match="more than the limit of 100 bytes"):
            _run(who, "SELECT region, COUNT(*) AS n FROM customers GROUP BY region", '"region"')
        assert who["alice"].datasets()  # still serving
    conn = node_home.connect()
    try:
        entries = [json.loads(bytes(e)) for (e,) in conn.execute(
            "SELECT entry FROM log_entries ORDER BY idx")]
    finally:
        conn.close()
    (call,) = [e for e in entries if e.get("method") == "/veil.v1.QueryService/RunQuery"]
    assert call["status"] == "RESOURCE_EXHAUSTED", call
    assert "the result is" in call["message"]
    assert "meters" not in call and "result_sha256" not in call, call  # nothing released or charged

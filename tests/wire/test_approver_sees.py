"""Regression: approvers signed a query they could not read (`veil job show` and the SDK's
JobInfo dropped the SQL and parameters). What is shown comes from the signed bytes."""

from __future__ import annotations

from veil import sandbox
from veil.node.jobs import SignedJob, job_id
from tests.conftest import run_cli
from tests.wire.test_jobs_wire import job_toml

#: the SQL as the analyst signed it: DuckDB's own rendering of the parsed query
SQL = sandbox.normalize("SELECT region, COUNT(*) AS n, SUM(amount) AS total FROM customers "
                        "GROUP BY region")


def test_job_info_carries_the_signed_sql_and_every_part(client_for) -> None:  # type: ignore[no-untyped-def]
    alice, olga = client_for("analyst", "alice"), client_for("operator", "olga")
    submitted = alice.submit_job(job_toml("select region, count(*) as n,\n  sum(amount) as total "
                                          "from customers   group by region -- comment"))
    seen = olga.job(submitted.id)
    assert job_id(SignedJob(seen.canonical, b"")) == seen.id
    assert seen.params["sql"] == SQL  # normalized, exactly what runs
    assert seen.parts == ({"name": "bank-a", "dataset": "customers",
                           "columns": ["region", "amount"]},)


def test_job_show_and_approve_print_the_sql_before_the_decision(
    client_for, running, federation  # type: ignore[no-untyped-def]
) -> None:
    alice = client_for("analyst", "alice")
    job = alice.submit_job(job_toml())
    olga = federation.identity("operator", "olga")
    shown = run_cli("job", "show", job.id, "--node", running.address, "--identity", str(olga))
    assert shown.returncode == 0, shown.stderr
    assert SQL in shown.stdout
    assert "node bank-a: dataset customers, columns region, amount" in shown.stdout
    approved = run_cli("job", "approve", job.id, "--node", running.address, "--identity",
                       str(olga))
    assert approved.returncode == 0, approved.stderr
    out = approved.stdout
    assert out.index(SQL) < out.index("your approval of job")
    assert "missing: subject-representative" in out


def test_a_node_showing_one_jobs_bytes_under_anothers_id_is_refused(client_for) -> None:  # type: ignore[no-untyped-def]
    """What an approver reads must be the job their decision binds (its id is the digest)."""
    import pytest
    from veil.v1 import jobs_pb2

    from veil.node.client import JobInfo
    from veil.node.errors import VerificationError

    alice = client_for("analyst", "alice")
    a = alice.submit_job(job_toml())
    b = alice.submit_job(job_toml(runs=2))
    forged = jobs_pb2.Job(job_id=b.id, canonical=a.canonical, estimate_json="{}")
    with pytest.raises(VerificationError, match=f"job {b.id}: the node returned signed bytes"):
        JobInfo.from_proto(forged)

"""Node promises a mutation pass found untested: each test here fails if its check is dropped.

Real node, real mTLS, real signatures (tests/conftest.py fixtures); every refusal asserts
its kind and message.
"""

from __future__ import annotations

import contextlib

import time
from datetime import UTC, datetime, timedelta

import pytest

from veil.node.client import Client
from veil.node.errors import InvalidInput, PolicyDenied, VeilError
from veil.node.jobs import Decision, parse_job_toml, sign_decision, sign_job
from veil.node.queries import normalize
from veil.node.server import start
from veil.v1 import jobs_pb2
from tests.conftest import Federation
from tests.wire.test_jobs_wire import job_toml
from tests.wire.test_jobs_wire import people as people  # noqa: F401  (a fixture, used by name)


def _send_decision(sender: Client, job_id: str, **changes: object) -> object:
    ident = sender.identity.identity
    fields: dict[str, object] = dict(
        job_id=job_id, node=sender.node_name, approver=ident.name, role=ident.role,
        decision="approve", reason="", quota=None, time=datetime.now(UTC))
    fields.update(changes)
    signed = sign_decision(Decision(**fields), sender.identity)  # type: ignore[arg-type]
    return sender.call(sender._jobs.DecideJob, jobs_pb2.SignedDecision(
        canonical=signed.canonical, signature=signed.signature))


def test_operator_signing_as_subject_representative_is_refused(people) -> None:
    job = people["alice"].submit_job(job_toml())
    people["olga"].approve(job.id)
    with pytest.raises(PolicyDenied, match="approvers sign and send their own decisions"):
        _send_decision(people["olga"], job.id, role="subject-representative")
    after = people["olga"].job(job.id)
    assert after.state == "pending" and after.missing_roles == ("subject-representative",)


def test_decision_for_another_node_is_refused(people) -> None:
    job = people["alice"].submit_job(job_toml())
    with pytest.raises(InvalidInput, match="is for node 'bank-z', this is 'bank-a'"):
        _send_decision(people["olga"], job.id, node="bank-z")
    assert people["olga"].job(job.id).missing_roles == ("operator", "subject-representative")


def test_revoked_job_cannot_be_decided(people) -> None:
    job = people["alice"].submit_job(job_toml())
    people["olga"].revoke(job.id, "study cancelled")
    with pytest.raises(VeilError, match="is revoked; it can no longer be decided"):
        people["sam"].approve(job.id)


def test_expired_job_cannot_be_decided(people) -> None:
    job = people["alice"].submit_job(job_toml(expires=datetime.now(UTC) + timedelta(seconds=2)))
    time.sleep(2.2)
    with pytest.raises(VeilError, match="is expired; it can no longer be decided"):
        people["olga"].approve(job.id)


def test_job_naming_another_analyst_is_refused(people) -> None:
    spec = parse_job_toml(job_toml(), analyst="alice", normalize_sql=normalize)
    signed = sign_job(spec, people["bob"].identity)  # bob's key, alice's name
    with pytest.raises(PolicyDenied, match="names analyst 'alice' but was submitted by 'bob'"):
        people["bob"].submit_signed(signed)
    assert people["olga"].jobs() == []


def test_analyst_cannot_list_other_analysts_jobs(people) -> None:
    mine = people["alice"].submit_job(job_toml())
    assert people["bob"].jobs() == []
    with pytest.raises(PolicyDenied, match="analysts may list only their own jobs"):
        people["bob"].jobs(analyst="alice")
    with pytest.raises(PolicyDenied, match="belongs to another analyst"):
        people["bob"].job(mine.id)
    assert [j.id for j in people["olga"].jobs(analyst="alice")] == [mine.id]


def test_sql_reading_a_column_outside_the_job_is_refused(people) -> None:
    # the job names only region: the sandbox must not see amount at all
    with pytest.raises(VeilError, match="amount"):
        people["alice"].submit_job(job_toml(
            "SELECT region, SUM(amount) AS t FROM customers GROUP BY region", columns='"region"'))


@contextlib.contextmanager
def _node_with(node_home, federation: Federation, old: str, new: str):  # type: ignore[no-untyped-def]
    """A node whose node.toml has ``old`` replaced by ``new``, with alice, olga and sam."""
    text = node_home.config_path.read_text()
    assert old in text
    node_home.config_path.write_text(text.replace(old, new))
    node = start(node_home.path, "127.0.0.1:0")
    who = {n: Client(node.address, federation.identity(r, n)) for r, n in (
        ("analyst", "alice"), ("operator", "olga"), ("subject-representative", "sam"))}
    try:
        yield who
    finally:
        for c in who.values():
            c.close()
        node.stop(grace=1)


def _run(who, sql: str, columns: str):  # type: ignore[no-untyped-def]
    job = who["alice"].submit_job(job_toml(sql, columns=columns))
    if who["olga"].approve(job.id).state != "approved":
        who["sam"].approve(job.id)
    return who["alice"].query(job.id)


def test_node_min_group_size_reaches_the_sandbox(node_home, federation: Federation) -> None:
    # 60 customers, 20 per region: a minimum of 25 suppresses every region
    with _node_with(node_home, federation, "min_group_size = 10", "min_group_size = 25") as who:
        result = _run(who, "SELECT region, COUNT(*) AS n FROM customers GROUP BY region",
                      '"region"')
        assert result.arrays["region"].tolist() == []


def test_node_denied_functions_reach_the_sandbox(node_home, federation: Federation) -> None:
    with _node_with(node_home, federation, "deny_functions = []",
                           'deny_functions = ["avg"]') as who:
        with pytest.raises(VeilError, match="avg"):
            who["alice"].submit_job(job_toml(
                "SELECT region, AVG(amount) AS a FROM customers GROUP BY region"))


def test_node_masks_reach_the_sandbox(node_home, federation: Federation) -> None:
    # a masked phone may be grouped by (its masked form); an unmasked one is refused
    sql = "SELECT phone, COUNT(*) AS n FROM customers GROUP BY phone"
    with _node_with(node_home, federation, "masked_columns = {}",
                           'masked_columns = { "customers.phone" = "phone" }') as who:
        result = _run(who, sql, '"phone"')
        shown = [str(v) for v in result.arrays["phone"].tolist()]
        assert all(not v.startswith("138000") for v in shown)  # never a whole number


def test_node_denied_columns_reach_the_sandbox(node_home, federation: Federation) -> None:
    # the key column is always visible to the sandbox (for COUNT(DISTINCT)), whatever the
    # job's columns: only the sandbox's negative list can keep it out
    with _node_with(node_home, federation, "deny_columns = []",
                           'deny_columns = ["customers.customer_id"]') as who:
        with pytest.raises(VeilError, match="customer_id"):
            who["alice"].submit_job(job_toml(
                "SELECT region, COUNT(DISTINCT customer_id) AS n FROM customers GROUP BY region",
                columns='"region"'))

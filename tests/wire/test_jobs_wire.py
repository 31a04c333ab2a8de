"""Jobs over the wire: signed submission, two-sided approval, grants, quotas, revocation, usage.

Real node, real mTLS, real signatures; every refusal asserts its exact kind (and so its
gRPC status) and message.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from veil.node.client import Client, sign_job_text
from veil.node.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    PolicyDenied,
    ResourceLimit,
)
from veil.node.server import RunningNode
from tests.conftest import Federation, run_cli

SQL = "SELECT region, COUNT(*) AS n, SUM(amount) AS total FROM customers GROUP BY region"


def job_toml(sql: str = SQL, *, runs: int = 3, node: str = "bank-a",
             columns: str = '"region", "amount"', expires: datetime | None = None,
             purpose: str = "Spend by region for a footprint study") -> str:
    expires = expires or datetime.now(UTC) + timedelta(days=30)
    return f'''
purpose = "{purpose}"
kind = "query"
expires = {expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
[quota]
runs = {runs}
[[nodes]]
name = "{node}"
dataset = "customers"
columns = [{columns}]
[params]
sql = """{sql}"""
'''


@pytest.fixture
def people(client_for):  # type: ignore[no-untyped-def]
    return {
        "alice": client_for("analyst", "alice"),
        "bob": client_for("analyst", "bob"),
        "olga": client_for("operator", "olga"),
        "sam": client_for("subject-representative", "sam"),
        "audrey": client_for("auditor", "audrey"),
    }


def approved(people, toml: str | None = None, **kw):  # type: ignore[no-untyped-def]
    job = people["alice"].submit_job(toml or job_toml(**kw))
    people["olga"].approve(job.id)
    people["sam"].approve(job.id)
    return job


def test_sensitive_job_needs_two_approvals_then_runs(people) -> None:
    job = people["alice"].submit_job(job_toml())
    assert job.state == "pending"
    assert job.required_roles == ("operator", "subject-representative")
    assert any("amount (sensitive)" in line for line in job.estimate["lines"])
    with pytest.raises(FailedPrecondition, match="pending approval: missing role.*subject-representative"):
        people["alice"].query(job.id)
    after_one = people["olga"].approve(job.id)
    assert after_one.state == "pending" and after_one.missing_roles == ("subject-representative",)
    with pytest.raises(FailedPrecondition, match="missing role.*subject-representative"):
        people["alice"].query(job.id)
    assert people["sam"].approve(job.id).state == "approved"
    result = people["alice"].query(job.id)
    assert set(result.columns) == {"region", "n", "total"}
    assert sorted(result.arrays["region"].tolist()) == ["east", "north", "south"]
    assert int(result.arrays["n"].sum()) == 60


def test_public_only_job_needs_only_the_operator(people) -> None:
    job = people["alice"].submit_job(job_toml(
        "SELECT region, COUNT(*) AS n FROM customers GROUP BY region", columns='"region"'))
    assert job.required_roles == ("operator",)
    assert people["olga"].approve(job.id).state == "approved"


def test_tampered_spec_is_refused(people) -> None:
    signed = sign_job_text(job_toml(), people["alice"].identity)
    forged = type(signed)(signed.canonical.replace(b'"runs":3', b'"runs":300'), signed.signature)
    with pytest.raises(InvalidInput, match="job signature does not verify"):
        people["alice"].submit_signed(forged)


def test_replayed_submission_is_idempotent(people) -> None:
    signed = sign_job_text(job_toml(), people["alice"].identity)
    first = people["alice"].submit_signed(signed)
    second = people["alice"].submit_signed(signed)
    assert first.id == second.id
    assert [j.id for j in people["alice"].jobs()] == [first.id]


def test_submitting_someone_elses_signed_job_is_refused(people) -> None:
    signed = sign_job_text(job_toml(), people["alice"].identity)
    with pytest.raises(InvalidInput, match="signature does not verify"):
        people["bob"].submit_signed(signed)  # checked against bob's key: not his signature


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"node": "bank-z"}, InvalidInput, "no part for node 'bank-a'"),
        ({"columns": '"region", "salary"'}, InvalidInput, "unknown column 'salary'"),
        ({"columns": '"region", "national_id"',
          "sql": "SELECT region, COUNT(*) FROM customers GROUP BY region"},
         PolicyDenied, "national_id' is classified core"),
        ({"sql": "SELECT amount FROM customers"}, PolicyDenied, "query refused"),
    ],
)
def test_invalid_jobs_are_refused_at_submission(people, kw, error, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        people["alice"].submit_job(job_toml(**kw))
    assert people["alice"].jobs() == []


def test_wrong_role_forged_and_double_approvals(people, federation: Federation,
                                                 running: RunningNode) -> None:
    job = people["alice"].submit_job(job_toml())
    with pytest.raises(PolicyDenied, match="role 'auditor' may not call .*DecideJob"):
        people["audrey"].approve(job.id)
    with pytest.raises(PolicyDenied, match="role 'analyst' may not call"):
        people["bob"].approve(job.id)
    generic = Client(running.address, federation.identity("approver", "greta"))
    with pytest.raises(PolicyDenied, match="role 'approver' is not among them"):
        generic.approve(job.id)
    generic.close()
    # a decision signed by sam but sent by olga: the signature is checked against olga's key
    from veil.node.jobs import Decision, sign_decision
    from veil.v1 import jobs_pb2

    d = Decision(job.id, "bank-a", "sam", "subject-representative", "approve", "", None,
                 datetime.now(UTC))
    signed = sign_decision(d, people["sam"].identity)
    with pytest.raises(InvalidInput, match="decision signature does not verify"):
        people["olga"].call(people["olga"]._jobs.DecideJob, jobs_pb2.SignedDecision(
            canonical=signed.canonical, signature=signed.signature))
    people["olga"].approve(job.id)
    with pytest.raises(AlreadyExists, match="already decided 'approve'.*decisions are final"):
        people["olga"].approve(job.id)
    with pytest.raises(InvalidInput, match="widens runs"):
        people["sam"].approve(job.id, quota={"runs": 99})


def test_a_sql_column_the_job_does_not_list_is_named_as_unlisted(people) -> None:
    sql = "SELECT region, age_band, COUNT(*) AS n FROM customers GROUP BY region, age_band"
    with pytest.raises(PolicyDenied) as info:
        people["alice"].submit_job(job_toml(sql, columns='"region", "amount"'))
    assert ("column 'age_band' of customers is not in the job's columns for this node "
            "(it lists: region, amount)") in str(info.value)
    with pytest.raises(PolicyDenied, match="column 'nope' does not exist in customers"):
        people["alice"].submit_job(job_toml("SELECT SUM(nope) AS s FROM customers"))


def test_rejection_is_final_and_explained(people) -> None:
    job = people["alice"].submit_job(job_toml())
    people["olga"].approve(job.id)
    rejected = people["sam"].reject(job.id, "purpose does not justify spend data")
    assert rejected.state == "rejected"
    shown = run_cli("job", "show", job.id[:12], "--node", people["sam"].address,
                    "--identity", str(people["sam"].identity.directory))
    assert "subject-representative sam rejected" in shown.stdout, shown.stdout + shown.stderr
    with pytest.raises(FailedPrecondition, match="rejected by sam.*purpose does not justify"):
        people["alice"].query(job.id)


def test_someone_elses_job_and_altered_parameters(people) -> None:
    job = approved(people)
    with pytest.raises(PolicyDenied, match="job .* belongs to another analyst"):
        people["bob"].job(job.id)
    with pytest.raises(PolicyDenied, match="belongs to analyst 'alice'; 'bob' may not run it"):
        people["bob"].query(job.id)
    # run requests carry no parameters: altered SQL is a different job, pending approval
    altered = people["alice"].submit_job(job_toml(SQL.replace("SUM", "AVG")))
    assert altered.id != job.id
    with pytest.raises(FailedPrecondition, match="pending approval"):
        people["alice"].query(altered.id)


def test_narrowed_quota_then_exhausted(people) -> None:
    job = people["alice"].submit_job(job_toml(runs=5))
    people["olga"].approve(job.id, quota={"runs": 2})
    assert people["sam"].approve(job.id).quota["runs"] == 2
    people["alice"].query(job.id)
    people["alice"].query(job.id)
    with pytest.raises(ResourceLimit, match="quota exhausted for runs: requested 1, remaining 0"):
        people["alice"].query(job.id)
    assert people["alice"].job(job.id).used["runs"] == 2


def test_concurrent_runs_never_exceed_the_quota(people, federation: Federation,
                                                 running: RunningNode) -> None:
    job = approved(people, runs=3)
    outcomes: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        with Client(running.address, federation.identity("analyst", "alice")) as c:
            try:
                c.query(job.id)
                result = "ok"
            except ResourceLimit:
                result = "exhausted"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=run) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 3 and outcomes.count("exhausted") == 7
    assert people["alice"].job(job.id).used["runs"] == 3


def test_revoked_job_stops_at_once(people) -> None:
    job = approved(people)
    people["alice"].query(job.id)
    with pytest.raises(PolicyDenied, match="role 'analyst' may not call .*RevokeJob"):
        people["alice"].revoke(job.id, "no")
    revoked = people["olga"].revoke(job.id, "breach of terms")
    assert revoked.state == "revoked"
    with pytest.raises(FailedPrecondition, match="revoked at .*breach of terms"):
        people["alice"].query(job.id)


def test_the_subjects_representative_withdraws_consent_and_the_job_stops_at_once(
    people, running: RunningNode, federation: Federation
) -> None:
    job = approved(people)
    people["alice"].query(job.id)
    r = run_cli("job", "withdraw", job.id[:12], "--node", running.address, "--identity",
                str(federation.identity("subject-representative", "sam")),
                "--reason", "subjects objected to the purpose")
    assert r.returncode == 0, r.stderr
    assert "consent withdrawn" in r.stdout and "revoked" in r.stdout
    with pytest.raises(FailedPrecondition, match="consent withdrawn at .* by sam "
                       r"\(subject-representative\): subjects objected"):
        people["alice"].query(job.id)
    conn = running.ctx.home.connect()
    try:
        rows = [json.loads(bytes(d)) for (d,) in conn.execute("SELECT entry FROM log_entries")]
    finally:
        conn.close()
    [withdrawn] = [e for e in rows if e.get("event") == "job.withdrawn"]
    assert withdrawn["details"] == {"job": job.id, "by": "sam", "role": "subject-representative",
                                    "reason": "subjects objected to the purpose"}
    # a job whose policy never asked the subjects cannot be "withdrawn" by their representative
    public = people["alice"].submit_job(job_toml("SELECT region, COUNT(*) AS n FROM customers "
                                                 "GROUP BY region", columns='"region"'))
    people["olga"].approve(public.id)
    with pytest.raises(PolicyDenied, match="did not need the data subjects' consent"):
        people["sam"].revoke(public.id, "no")


def test_revocation_during_a_run_releases_nothing(people, running: RunningNode) -> None:
    """A run admitted before the revocation commits is refused when it is charged."""
    from veil.node.errors import ApprovalRequired
    from veil.node.jobs import Meters

    job = approved(people)
    grants = running.ctx.grants
    alice = running.ctx.home.trust().identify(people["alice"].identity.read_tls_cert())
    grant = grants.admit(job.id, alice, "query")  # the run starts ...
    people["olga"].revoke(job.id, "revoked mid-run")  # ... the operator revokes ...
    charge = grants.charge(grant, alice, "/veil.v1.QueryService/RunQuery", Meters(runs=1))
    with pytest.raises(ApprovalRequired, match="revoked"):  # ... and the charge refuses
        running.ctx.log.append({"kind": "call", "method": "test"}, effect=charge)
    assert people["olga"].job(job.id).used["runs"] == 0


def test_expired_job_cannot_run(people) -> None:
    job = approved(people, expires=datetime.now(UTC) + timedelta(seconds=2))
    time.sleep(2.2)
    with pytest.raises(FailedPrecondition, match="job expired at"):
        people["alice"].query(job.id)
    assert people["olga"].job(job.id).state == "expired"


def test_denied_analyst_is_refused_everywhere(node_home, federation: Federation) -> None:
    from veil.node.server import start

    config = node_home.config_path.read_text()
    node_home.config_path.write_text(config.replace("deny_analysts = []",
                                                    'deny_analysts = ["mallory"]'))
    node = start(node_home.path, "127.0.0.1:0")
    try:
        with Client(node.address, federation.identity("analyst", "mallory")) as mallory:
            for call in (mallory.datasets, mallory.jobs,
                         lambda: mallory.submit_job(job_toml())):
                with pytest.raises(PolicyDenied, match="'mallory' is on this node's negative list"):
                    call()
            assert mallory.last_receipt is not None  # refused, and logged
    finally:
        node.stop(grace=1)


def test_usage_statement_reconciles_with_the_log(people, running: RunningNode,
                                                 federation: Federation, tmp_path: Path) -> None:
    job = approved(people)
    indices = []
    for _ in range(2):
        people["alice"].query(job.id)
        indices.append(people["alice"].last_receipt.log_index)
    st = people["alice"].statement()
    assert [line["log_index"] for line in st.lines] == indices
    assert all(line["meters"]["rows_scanned"] == 60 for line in st.lines)
    with pytest.raises(PolicyDenied, match="only their own statement"):
        people["bob"].statement("alice")
    out = tmp_path / "statement.json"
    auditor = federation.identity("auditor", "audrey")
    r = run_cli("usage", "--node", running.address, "--identity", str(auditor),
                "--analyst", "alice", "--out", str(out), "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("log_index,time,job")
    r = run_cli("usage", "--node", running.address, "--identity", str(auditor),
                "--analyst", "alice", "--since", "yesterday")
    assert r.returncode == 1 and "--since: expected an RFC 3339 time" in r.stderr
    r = run_cli("audit", "verify", "--node", running.address, "--identity", str(auditor),
                "--state", "/proc/no-such-dir")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "/proc/no-such-dir" in r.stderr
    r = run_cli("audit", "reconcile", str(out), "--node", running.address,
                "--identity", str(auditor))
    assert r.returncode == 0, r.stderr
    assert "statement reconciles: 2 lines" in r.stdout
    doc = json.loads(out.read_text())
    doc["lines"][0]["meters"]["rows_scanned"] = 1
    out.write_text(json.dumps(doc))
    r = run_cli("audit", "reconcile", str(out), "--node", running.address,
                "--identity", str(auditor))
    assert r.returncode == 1
    assert f"log index {indices[0]}: meters" in r.stderr
    doc["lines"] = doc["lines"][1:]
    doc["lines"][0]["meters"]["rows_scanned"] = 60
    out.write_text(json.dumps(doc))
    r = run_cli("audit", "reconcile", str(out), "--node", running.address,
                "--identity", str(auditor))
    assert r.returncode == 1 and f"omits: {indices[0]}" in r.stderr


def test_job_cli_round_trip(people, running: RunningNode, federation: Federation,
                            tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(job_toml())
    alice = str(federation.identity("analyst", "alice"))
    r = run_cli("job", "submit", str(spec), "--node", running.address, "--identity", alice)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split("job ")[1].split()[0]
    for who in ("operator-olga", "subject-representative-sam"):
        r = run_cli("job", "approve", job_id, "--node", running.address,
                    "--identity", str(federation.people / who))
        assert r.returncode == 0, r.stderr
    r = run_cli("job", "show", job_id, "--node", running.address, "--identity", alice)
    assert "approved" in r.stdout and "estimate: rows scanned: 60 per run" in r.stdout
    r = run_cli("query", job_id, "--node", running.address, "--identity", alice)
    assert r.returncode == 0, r.stderr
    assert "north" in r.stdout and "0 suppressed" in r.stdout
    r = run_cli("job", "list", "--node", running.address, "--identity", alice)
    assert job_id in r.stdout and "1/3" in r.stdout
    r = run_cli("job", "approve", job_id, "--node", running.address, "--identity", alice)
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr


def test_grpc_status_codes_on_the_wire(people) -> None:
    """The SDK's error kinds are the wire's status codes."""
    job = people["alice"].submit_job(job_toml())
    call = people["alice"].channel.unary_unary("/veil.v1.QueryService/RunQuery")
    from veil.v1 import query_pb2

    with pytest.raises(grpc.RpcError) as info:
        call(query_pb2.RunQueryRequest(job_id=job.id).SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

"""Receipts you can keep: every verb that calls a node writes that call's receipt with
--receipt-out, refusals included, and a refusal says where it was logged."""

from __future__ import annotations

import json
from pathlib import Path

from veil.node.server import RunningNode

from tests.conftest import Federation, run_cli
from tests.wire.test_jobs_wire import job_toml, people  # noqa: F401


def _receipt(path: Path) -> dict:  # type: ignore[type-arg]
    doc = json.loads(path.read_text())
    assert isinstance(doc["log_index"], int) and doc["checkpoint"].count("\n") >= 3
    return doc


def test_every_calling_verb_writes_its_receipt_and_each_is_provable(
    people, running: RunningNode, federation: Federation, tmp_path: Path  # noqa: F811
) -> None:
    ids = {r: str(federation.identity(*r.split(":"))) for r in
           ("analyst:alice", "operator:olga", "subject-representative:sam", "auditor:audrey")}
    node = ["--node", running.address]
    job = people["alice"].submit_job(job_toml())
    revocable = people["alice"].submit_job(job_toml(purpose="Another study of spend by region"))
    people["olga"].approve(revocable.id)
    rejectable = people["alice"].submit_job(job_toml(purpose="A third study of spend by region"))
    statement = tmp_path / "statement.json"
    verbs = [
        ("job show", ["job", "show", job.id[:12], *node, "--identity", ids["analyst:alice"]]),
        ("job list", ["job", "list", *node, "--identity", ids["analyst:alice"]]),
        ("job approve", ["job", "approve", job.id, *node, "--identity", ids["operator:olga"]]),
        ("job reject", ["job", "reject", rejectable.id, *node, "--identity",
                        ids["subject-representative:sam"], "--reason", "too broad"]),
        ("job revoke", ["job", "revoke", revocable.id, *node, "--identity", ids["operator:olga"],
                        "--reason", "no longer needed"]),
        ("usage", ["usage", *node, "--identity", ids["auditor:audrey"], "--analyst", "alice",
                   "--format", "json", "--out", str(statement)]),
        ("audit reconcile", ["audit", "reconcile", str(statement), *node, "--identity",
                             ids["auditor:audrey"]]),
    ]
    seen = set()
    for name, argv in verbs:
        out = tmp_path / f"{name.replace(' ', '-')}.json"
        r = run_cli(*argv, "--receipt-out", str(out))
        assert r.returncode == 0, (name, r.stdout, r.stderr)
        index = _receipt(out)["log_index"]
        assert index not in seen, name  # each verb's own call
        seen.add(index)
        proof = tmp_path / "proof.json"
        r = run_cli("audit", "prove", str(out), *node, "--identity", ids["auditor:audrey"],
                    "--receipt-out", str(proof))
        assert r.returncode == 0 and "inclusion proof" in r.stdout, (name, r.stderr)
        assert _receipt(proof)["log_index"] > index  # the prove call is logged too


def test_a_refused_query_writes_its_receipt_and_says_where_it_was_logged(
    people, running: RunningNode, federation: Federation, tmp_path: Path  # noqa: F811
) -> None:
    job = people["alice"].submit_job(job_toml())  # not approved
    out = tmp_path / "refused.json"
    r = run_cli("query", job.id, "--node", running.address, "--identity",
                str(federation.identity("analyst", "alice")), "--receipt-out", str(out))
    assert r.returncode == 1
    index = _receipt(out)["log_index"]
    assert f"log at index {index})" in r.stderr.strip().splitlines()[-1]
    conn = running.ctx.home.connect()
    try:
        (data,) = conn.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
    finally:
        conn.close()
    entry = json.loads(bytes(data))
    assert entry["method"] == "/veil.v1.QueryService/RunQuery"
    assert entry["status"] == "FAILED_PRECONDITION" and entry["job"] == job.id

"""Issue 9 §1 over the wire: no caller can make an entry, a trailer or a log read unbounded.

Pins: a caller-controlled field is echoed as a short prefix and a digest, never whole; ids
and names are checked for length and alphabet before any lookup (INVALID_ARGUMENT naming
what was expected); every method has a request size limit that the gate checks and logs
(RESOURCE_EXHAUSTED naming the limit); every refusal still carries a receipt; the whole log
stays readable and verifiable by a remote auditor; a revoked certificate's calls are logged
with the identity it presented.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from veil.v1 import catalog_pb2, jobs_pb2, query_pb2, usage_pb2

from veil.node import bounds, pki
from veil.node.client import Client
from veil.node.errors import InvalidInput, ResourceLimit, Unauthenticated
from veil.node.server import RunningNode
from tests.conftest import Federation, run_cli

ClientFor = Callable[[str, str], Client]
MIB = 1024 * 1024


def entry_at(auditor: Client, index: int) -> tuple[bytes, dict[str, Any]]:
    [(i, data)] = list(auditor.entries(index, index + 1))
    assert i == index
    return data, json.loads(data)


def whole_log(auditor: Client) -> list[tuple[int, bytes]]:
    size, _ = auditor.checkpoint()
    entries = list(auditor.entries(0, size))
    assert [i for i, _ in entries] == list(range(size))
    return entries


def test_get_dataset_with_huge_name_does_not_bloat_the_log(
    client_for: ClientFor, running: RunningNode
) -> None:
    analyst = client_for("analyst", "alice")
    auditor = client_for("auditor", "audrey")
    # under the method's size limit: the name's shape is refused, echoed as prefix + digest
    with pytest.raises(InvalidInput, match="dataset name") as info:
        analyst.call(analyst._catalog.GetDataset, catalog_pb2.GetDatasetRequest(name="x" * 60_000))
    assert len(str(info.value)) < 1024
    assert "60000 characters, sha256 " in str(info.value)
    receipt = analyst.last_receipt
    assert receipt is not None, "the refusal carried no receipt"
    data, entry = entry_at(auditor, receipt.log_index)
    assert entry["status"] == "INVALID_ARGUMENT"
    assert entry["method"] == "/veil.v1.CatalogService/GetDataset"
    assert len(data) < 4096, f"entry is {len(data)} bytes"
    # over it: refused by size before parsing, logged the same way
    with pytest.raises(ResourceLimit, match="limit for this method is 65536 bytes"):
        analyst.call(analyst._catalog.GetDataset, catalog_pb2.GetDatasetRequest(name="x" * 2 * MIB))
    receipt = analyst.last_receipt
    assert receipt is not None, "the refusal carried no receipt"
    data, entry = entry_at(auditor, receipt.log_index)
    assert (entry["status"], entry["caller"]["name"]) == ("RESOURCE_EXHAUSTED", "alice")
    assert len(data) < 4096, f"entry is {len(data)} bytes"


def test_run_query_with_huge_job_id_gets_a_receipt_and_a_small_entry(
    client_for: ClientFor, running: RunningNode
) -> None:
    analyst = client_for("analyst", "alice")
    auditor = client_for("auditor", "audrey")
    for job_id, refusal, status in [("f" * 60_000, InvalidInput, "INVALID_ARGUMENT"),
                                    ("f" * MIB, ResourceLimit, "RESOURCE_EXHAUSTED")]:
        with pytest.raises(refusal) as info:
            analyst.call(analyst._query.RunQuery, query_pb2.RunQueryRequest(job_id=job_id))
        assert len(str(info.value)) < 1024
        receipt = analyst.last_receipt
        assert receipt is not None, "the error trailer was lost: no receipt"
        data, entry = entry_at(auditor, receipt.log_index)
        assert entry["status"] == status
        assert len(data) < 4096
        assert "job" not in entry
    with pytest.raises(InvalidInput, match="job id must be 32 lowercase hex digits"):
        analyst.call(analyst._query.RunQuery, query_pb2.RunQueryRequest(job_id="f" * 60_000))


@pytest.mark.parametrize(
    "call, request_, what",
    [
        ("GetJob", jobs_pb2.GetJobRequest(job_id="../../etc/passwd"), "job id"),
        ("GetJob", jobs_pb2.GetJobRequest(job_id=""), "job id"),
        ("RevokeJob", jobs_pb2.RevokeJobRequest(job_id="A" * 32, reason="x"), "job id"),
        ("ListJobs", jobs_pb2.ListJobsRequest(analyst="bob smith"), "analyst name"),
    ],
)
def test_ids_and_names_are_checked_before_any_lookup(
    client_for: ClientFor, running: RunningNode, call: str, request_: Any, what: str
) -> None:
    operator = client_for("operator", "olga")
    with pytest.raises(InvalidInput, match=what):
        operator.call(getattr(operator._jobs, call), request_)
    assert operator.last_receipt is not None


def test_dataset_name_with_bad_alphabet_is_invalid_argument_not_not_found(
    client_for: ClientFor, running: RunningNode
) -> None:
    analyst = client_for("analyst", "alice")
    with pytest.raises(InvalidInput, match="dataset name"):
        analyst.dataset("Customers; DROP")
    analyst.dataset("customers")  # a valid name still works


def test_request_over_the_method_limit_is_refused_logged_and_names_the_limit(
    client_for: ClientFor, running: RunningNode
) -> None:
    analyst = client_for("analyst", "alice")
    limit = bounds.request_limit("/veil.v1.JobService/SubmitJob")
    huge = jobs_pb2.SignedJob(canonical=b"{" + b" " * (limit + 10), signature=b"s" * 64)
    with pytest.raises(ResourceLimit, match=f"{limit} bytes") as info:
        analyst.call(analyst._jobs.SubmitJob, huge)
    assert "SubmitJob" in str(info.value)
    receipt = analyst.last_receipt
    assert receipt is not None
    auditor = client_for("auditor", "audrey")
    data, entry = entry_at(auditor, receipt.log_index)
    assert entry["status"] == "RESOURCE_EXHAUSTED"
    assert entry["caller"]["name"] == "alice"
    assert len(data) < 4096


def test_the_log_stays_readable_and_verifiable_after_huge_requests(
    client_for: ClientFor, running: RunningNode, federation: Federation, tmp_path: Any
) -> None:
    analyst = client_for("analyst", "alice")
    for _ in range(3):
        with pytest.raises(ResourceLimit):
            analyst.call(analyst._catalog.GetDataset, catalog_pb2.GetDatasetRequest(name="n" * 3 * MIB))
        with pytest.raises(ResourceLimit):
            analyst.call(analyst._query.RunQuery, query_pb2.RunQueryRequest(job_id="0" * 3 * MIB))
        with pytest.raises(InvalidInput):
            analyst.call(analyst._catalog.GetDataset, catalog_pb2.GetDatasetRequest(name="n" * 60_000))
    auditor = client_for("auditor", "audrey")
    entries = whole_log(auditor)
    assert max(len(d) for _, d in entries) <= bounds.MAX_ENTRY_BYTES
    state_db = running.ctx.home.path / "state.db"
    assert state_db.stat().st_size < 2 * MIB
    ident = federation.identity("auditor", "audrey")
    out = run_cli("audit", "verify", "--node", running.address, "--identity", str(ident),
                  "--state", str(tmp_path / "astate"))
    assert out.returncode == 0, out.stderr


def test_get_entries_batches_are_bounded_in_bytes(
    client_for: ClientFor, running: RunningNode
) -> None:
    analyst = client_for("analyst", "alice")
    for i in range(40):  # entries as large as a refusal can make them
        with pytest.raises(InvalidInput):
            analyst.call(analyst._catalog.GetDataset,
                         catalog_pb2.GetDatasetRequest(name=f"{i}" + "é" * 5000))
    auditor = client_for("auditor", "audrey")
    size, _ = auditor.checkpoint()
    from veil.v1 import audit_pb2

    batches = list(auditor._audit.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=size)))
    assert sum(len(b.entries) for b in batches) == size
    assert all(b.ByteSize() <= bounds.ENTRY_BATCH_BYTES + bounds.MAX_ENTRY_BYTES for b in batches)


def test_revoked_certificate_calls_are_logged_with_the_presented_identity(
    running: RunningNode, federation: Federation, client_for: ClientFor
) -> None:
    who = federation.identity("analyst", "revoked-rex")
    with Client(running.address, who) as c:
        c.info()
        serial = pki.revoke(federation.dir, name="revoked-rex")
        with pytest.raises(Unauthenticated, match="revoked"):
            c.info()
        receipt = c.last_receipt
    assert receipt is not None
    auditor = client_for("auditor", "audrey")
    _, entry = entry_at(auditor, receipt.log_index)
    assert entry["status"] == "UNAUTHENTICATED"
    caller = entry["caller"]
    assert caller is not None, "a revoked caller was logged as caller: null"
    assert (caller["role"], caller["name"], caller["revoked"]) == ("analyst", "revoked-rex", True)
    assert len(caller["fingerprint"]) == 64
    assert serial
    ident = federation.identity("auditor", "audrey")
    out = run_cli("audit", "log", "--node", running.address, "--identity", str(ident),
                  "--caller", "revoked-rex")
    assert out.returncode == 0, out.stderr
    assert "UNAUTHENTICATED" in out.stdout


@pytest.mark.parametrize(
    ("request_", "what"),
    [
        (usage_pb2.GetStatementRequest(analyst="a" * 60_000), "analyst name"),
        (usage_pb2.GetStatementRequest(analyst="alice", from_time="9" * 60_000), "from_time"),
    ],
)
def test_get_statement_with_huge_filter_is_refused_before_the_lookup_with_a_small_entry(
    client_for: ClientFor, running: RunningNode, request_: Any, what: str
) -> None:
    operator = client_for("operator", "olga")
    with pytest.raises(InvalidInput, match=what) as info:
        operator.call(operator._usage.GetStatement, request_)
    assert len(str(info.value)) < 400
    receipt = operator.last_receipt
    assert receipt is not None
    auditor = client_for("auditor", "audrey")
    data, entry = entry_at(auditor, receipt.log_index)
    assert entry["status"] == "INVALID_ARGUMENT"
    assert len(data) < 4096

"""The AuditService and the auditor CLI over the wire: real node, real mTLS, real proofs.

Pins: only auditors read the log (everyone else gets PERMISSION_DENIED, and the denial
is itself logged); what auditors get verifies against the node's signed checkpoints,
whose key comes from the node's certificate; bad indexes and sizes are INVALID_ARGUMENT
with the numbers in the message; a proof of the wrong length is refused by the verifier;
every response, allowed or refused, carries a receipt whose checkpoint covers its entry;
``veil audit prove``, ``veil audit log`` and ``veil audit verify --node`` work end to end.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from veil.node.audit import (
    Checkpoint,
    NoteVerifier,
    leaf_hash,
    open_checkpoint,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from veil.node.auditor import RemoteLog
from veil.node.client import CallReceipt, Client
from veil.node.errors import InvalidInput, NotFound, PolicyDenied, VerificationError
from veil.node.server import RunningNode
from tests.conftest import Federation, run_cli

ClientFor = Callable[[str, str], Client]
AUDIT = "/veil.v1.AuditService/"


def trusted(auditor: Client) -> tuple[NoteVerifier, str]:
    """The node's checkpoint verifier, from its CA-checked certificate (not from the node's say-so)."""
    remote = RemoteLog(auditor)
    return remote.verifier(), remote.origin


def latest(auditor: Client) -> Checkpoint:
    verifier, origin = trusted(auditor)
    size, note = auditor.checkpoint()
    cp = open_checkpoint(note, verifier, origin=origin)
    assert cp.size == size
    return cp


def check_receipt(
    auditor: Client, receipt: CallReceipt | None, method: str, caller: str, status: str
) -> dict[str, Any]:
    """The receipt's checkpoint is the node's, covers the entry, and the entry is this call."""
    assert receipt is not None, "response carried no receipt"
    verifier, origin = trusted(auditor)
    cp = open_checkpoint(receipt.checkpoint, verifier, origin=origin)
    assert receipt.log_index < cp.size
    [(index, data)] = list(auditor.entries(receipt.log_index, receipt.log_index + 1))
    assert index == receipt.log_index
    proof = auditor.inclusion_proof(receipt.log_index, cp.size)
    verify_inclusion(leaf_hash(data), receipt.log_index, cp.size, proof, cp.root_hash)
    entry = json.loads(data)
    assert (entry["method"], entry["caller"]["name"], entry["status"]) == (method, caller, status)
    return entry


# --------------------------------------------------------------------------- who may read


@pytest.mark.parametrize("role", ["analyst", "operator"])
def test_non_auditors_are_denied_every_audit_method(
    client_for: ClientFor, running: RunningNode, role: str
) -> None:
    other = client_for(role, "nosy")
    auditor = client_for("auditor", "audrey")
    calls: list[tuple[str, Callable[[], object]]] = [
        ("GetCheckpoint", other.checkpoint),
        ("GetEntries", lambda: list(other.entries(0, 1))),
        ("GetInclusionProof", lambda: other.inclusion_proof(0, 1)),
        ("GetConsistencyProof", lambda: other.consistency_proof(1, 2)),
    ]
    for name, call in calls:
        with pytest.raises(PolicyDenied) as denied:
            call()
        assert str(denied.value) == (
            f"{running.address}: PERMISSION_DENIED: role '{role}' may not call "
            f"{AUDIT}{name}; allowed roles: auditor"
        )
        # the denial itself is in the log, under the receipt it came with
        entry = check_receipt(auditor, other.last_receipt, AUDIT + name, "nosy",
                              "PERMISSION_DENIED")
        assert entry["caller"]["role"] == role
        assert entry["message"].startswith(f"role '{role}' may not call {AUDIT}{name}")
        assert "result_sha256" not in entry


def test_denied_calls_are_listed_by_audit_log(
    client_for: ClientFor, running: RunningNode, federation: Federation
) -> None:
    analyst = client_for("analyst", "nosy")
    denied: dict[int, str] = {}
    for name, call in [("GetCheckpoint", analyst.checkpoint),
                       ("GetInclusionProof", lambda: analyst.inclusion_proof(0, 1))]:
        with pytest.raises(PolicyDenied):
            call()
        assert analyst.last_receipt is not None
        denied[analyst.last_receipt.log_index] = AUDIT + name
    analyst.datasets()  # allowed: must not be listed

    r = run_cli("audit", "log", "--node", running.address,
                "--identity", str(federation.identity("auditor", "audrey")),
                "--outcome", "PERMISSION_DENIED", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["index"]: row["method"] for row in rows} == denied
    for row in rows:
        assert row["status"] == "PERMISSION_DENIED"
        assert row["caller"]["name"] == "nosy" and row["caller"]["role"] == "analyst"

    r = run_cli("audit", "log", "--node", running.address,
                "--identity", str(federation.identity("auditor", "audrey")),
                "--outcome", "PERMISSION_DENIED", "--caller", "nosy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("2 entries")
    assert "GetCheckpoint" in r.stdout and "PERMISSION_DENIED" in r.stdout


# --------------------------------------------------------------------------- what auditors get


def test_auditor_gets_entries_and_proofs_that_verify(client_for: ClientFor) -> None:
    analyst = client_for("analyst", "alice")
    for _ in range(5):
        analyst.datasets()
    auditor = client_for("auditor", "audrey")
    cp = latest(auditor)
    entries = list(auditor.entries(0, cp.size))
    assert [i for i, _ in entries] == list(range(cp.size))
    assert root_hash(e for _, e in entries) == cp.root_hash
    for i, data in entries:
        proof = auditor.inclusion_proof(i, cp.size)
        verify_inclusion(leaf_hash(data), i, cp.size, proof, cp.root_hash)
    # consistency from every earlier size, roots recomputed from the entries themselves
    for old in range(cp.size + 1):
        old_root = root_hash(e for _, e in entries[:old])
        proof = auditor.consistency_proof(old, cp.size)
        verify_consistency(old, cp.size, old_root, cp.root_hash, proof)
    # and the newer checkpoint (the log grew with every call above) extends this one
    newer = latest(auditor)
    assert newer.size > cp.size
    verify_consistency(cp.size, newer.size, cp.root_hash, newer.root_hash,
                       auditor.consistency_proof(cp.size, newer.size))


def test_bad_indexes_and_sizes_are_invalid_argument(
    client_for: ClientFor, running: RunningNode
) -> None:
    auditor = client_for("auditor", "audrey")
    prefix = f"{running.address}: INVALID_ARGUMENT: "
    with pytest.raises(InvalidInput) as err:
        auditor.inclusion_proof(10, 5)
    assert str(err.value) == prefix + "index 10 is past the tree size 5"
    with pytest.raises(InvalidInput) as err:
        auditor.inclusion_proof(1_000_000, 0)  # tree size 0: the latest
    assert re.fullmatch(re.escape(prefix) + r"index 1000000 is past the tree size \d+",
                        str(err.value))
    with pytest.raises(InvalidInput) as err:
        auditor.inclusion_proof(0, 1_000_000)
    assert re.fullmatch(
        re.escape(prefix) + r"tree size 1000000 is past the latest checkpoint's size \d+",
        str(err.value),
    )
    with pytest.raises(InvalidInput) as err:
        auditor.consistency_proof(9, 3)
    assert str(err.value) == prefix + "old size 9 is larger than new size 3"
    with pytest.raises(InvalidInput) as err:
        auditor.consistency_proof(1, 1_000_000)
    assert re.fullmatch(
        re.escape(prefix) + r"tree size 1000000 is past the latest checkpoint's size \d+",
        str(err.value),
    )
    with pytest.raises(InvalidInput) as err:
        list(auditor.entries(0, 1_000_000))
    assert re.fullmatch(
        re.escape(prefix) + r"end 1000000 is past the latest checkpoint's size \d+",
        str(err.value),
    )
    with pytest.raises(InvalidInput) as err:
        list(auditor.entries(5, 2))
    assert str(err.value) == prefix + "start 5 is past end 2"
    # each refusal was logged too, with its outcome
    check_receipt(auditor, auditor.last_receipt, AUDIT + "GetEntries", "audrey",
                  "INVALID_ARGUMENT")


def test_proofs_of_the_wrong_length_are_refused(client_for: ClientFor) -> None:
    auditor = client_for("auditor", "audrey")
    client_for("analyst", "alice").datasets()
    cp = latest(auditor)
    assert cp.size >= 5
    index = 2
    [(_, data)] = list(auditor.entries(index, index + 1))
    proof = auditor.inclusion_proof(index, cp.size)
    verify_inclusion(leaf_hash(data), index, cp.size, proof, cp.root_hash)
    with pytest.raises(VerificationError) as err:
        verify_inclusion(leaf_hash(data), index, cp.size, proof[:-1], cp.root_hash)
    assert str(err.value) == (
        f"inclusion proof has wrong length: expected {len(proof)}, got {len(proof) - 1}"
    )
    with pytest.raises(VerificationError, match="inclusion proof has wrong length"):
        verify_inclusion(leaf_hash(data), index, cp.size, [*proof, proof[0]], cp.root_hash)

    old = 3
    old_root = root_hash(e for _, e in auditor.entries(0, old))
    cproof = auditor.consistency_proof(old, cp.size)
    verify_consistency(old, cp.size, old_root, cp.root_hash, cproof)
    with pytest.raises(VerificationError) as err:
        verify_consistency(old, cp.size, old_root, cp.root_hash, cproof[:-1])
    assert str(err.value) == (
        f"consistency proof has wrong length: expected {len(cproof)}, got {len(cproof) - 1}"
    )


# --------------------------------------------------------------------------- receipts


def test_every_response_carries_a_receipt_covering_its_entry(client_for: ClientFor) -> None:
    analyst = client_for("analyst", "alice")
    auditor = client_for("auditor", "audrey")
    catalog, node = "/veil.v1.CatalogService/", "/veil.v1.NodeService/"

    analyst.info()
    check_receipt(auditor, analyst.last_receipt, node + "GetInfo", "alice", "OK")
    analyst.datasets()
    entry = check_receipt(auditor, analyst.last_receipt, catalog + "ListDatasets", "alice", "OK")
    assert re.fullmatch(r"[0-9a-f]{64}", entry["result_sha256"])
    analyst.dataset("customers")
    check_receipt(auditor, analyst.last_receipt, catalog + "GetDataset", "alice", "OK")
    with pytest.raises(NotFound):
        analyst.dataset("nope")
    check_receipt(auditor, analyst.last_receipt, catalog + "GetDataset", "alice", "NOT_FOUND")

    for name, call in [
        ("GetCheckpoint", auditor.checkpoint),
        ("GetEntries", lambda: list(auditor.entries(0, 2))),
        ("GetInclusionProof", lambda: auditor.inclusion_proof(0, 2)),
        ("GetConsistencyProof", lambda: auditor.consistency_proof(1, 2)),
    ]:
        call()
        receipt = auditor.last_receipt
        check_receipt(auditor, receipt, AUDIT + name, "audrey", "OK")

    # receipts come in log order, and each call's index is new
    first = auditor.last_receipt
    auditor.checkpoint()
    assert auditor.last_receipt is not None and first is not None
    assert auditor.last_receipt.log_index > first.log_index


def test_audit_prove_verifies_a_receipt_from_dataset_list(
    running: RunningNode, federation: Federation, tmp_path: Path
) -> None:
    receipt_path = tmp_path / "receipt.json"
    analyst = str(federation.identity("analyst", "alice"))
    auditor = str(federation.identity("auditor", "audrey"))
    r = run_cli("dataset", "list", "--node", running.address, "--identity", analyst,
                "--receipt-out", str(receipt_path))
    assert r.returncode == 0, r.stderr
    receipt = json.loads(receipt_path.read_text())
    assert receipt["node"] == running.address and "veil.testfed/bank-a" in receipt["checkpoint"]
    index = receipt["log_index"]

    r = run_cli("audit", "prove", str(receipt_path), "--node", running.address,
                "--identity", auditor)
    assert r.returncode == 0, r.stderr
    assert re.match(
        rf"entry {index} is in veil\.testfed/bank-a's log of size \d+ \(root [0-9a-f]{{16}}…\): "
        r"inclusion proof and checkpoint signature verified\n",
        r.stdout,
    ), r.stdout
    assert "/veil.v1.CatalogService/ListDatasets -> OK" in r.stdout

    # a receipt claiming an index its checkpoint does not cover is refused, saying so
    size = int(receipt["checkpoint"].splitlines()[1])
    receipt_path.write_text(json.dumps({**receipt, "log_index": size + 3}))
    r = run_cli("audit", "prove", str(receipt_path), "--node", running.address,
                "--identity", auditor)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"veil: error: index {size + 3} is past the receipt's checkpoint size {size}"
    )
    # a receipt whose checkpoint was altered is refused
    forged = receipt["checkpoint"].replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
    receipt_path.write_text(json.dumps({**receipt, "checkpoint": forged}))
    r = run_cli("audit", "prove", str(receipt_path), "--node", running.address,
                "--identity", auditor)
    assert r.returncode == 1
    assert re.fullmatch(r"veil: error: signature by veil\.testfed/bank-a\+[0-9a-f]{8} "
                        r"does not verify", r.stderr.strip()), r.stderr


def test_audit_verify_remote_twice_reports_consistency(
    running: RunningNode, federation: Federation, tmp_path: Path
) -> None:
    auditor = str(federation.identity("auditor", "audrey"))
    state_dir = str(tmp_path / "auditor-state")
    args = ("audit", "verify", "--node", running.address, "--identity", auditor,
            "--state", state_dir, "--quiet")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    m = re.match(r"veil\.testfed/bank-a: log verified: (\d+) entries, root [0-9a-f]{16}…, "
                 r"signature valid\n", first.stdout)
    assert m, first.stdout
    assert "consistent with" not in first.stdout
    size = int(m.group(1))

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    m2 = re.match(r"veil\.testfed/bank-a: log verified: (\d+) entries, .*signature valid, "
                  rf"consistent with the {size} entries seen before \(\+(\d+)\)\n", second.stdout)
    assert m2, second.stdout
    # the first verify's own calls were logged after the checkpoint it read
    assert int(m2.group(2)) == int(m2.group(1)) - size > 0


def test_garbage_request_body_is_invalid_argument_and_logged(client_for: ClientFor) -> None:
    auditor = client_for("auditor", "audrey")
    raw_call = auditor.channel.unary_unary(
        AUDIT + "GetInclusionProof", request_serializer=None, response_deserializer=None
    )
    body = b"\xff\xff\xff"
    with pytest.raises(grpc.RpcError) as info:
        raw_call(body, timeout=10)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("malformed veil.v1.GetInclusionProofRequest message: ")
    trailers = dict(err.trailing_metadata())
    receipt = CallReceipt(auditor.address, int(trailers["veil-log-index"]),
                          trailers["veil-checkpoint-bin"].decode())
    entry = check_receipt(auditor, receipt, AUDIT + "GetInclusionProof", "audrey",
                          "INVALID_ARGUMENT")
    assert entry["request_sha256"] == hashlib.sha256(body).hexdigest()
    assert entry["message"] == err.details()

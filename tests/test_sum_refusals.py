"""Federated sums that must not release a total: each fault or attack of the sums issue,
against real nodes over mTLS. Every refusal names the node and the problem, carries the
right status, and is logged where it happened; no total reaches the analyst."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import grpc
import pytest
from veil.v1 import sum_pb2, sum_pb2_grpc

from veil.node import federation as fed_channels
from veil.node import keys, pki
from veil.node.client import Client, submit_everywhere
from veil.node.errors import VeilError
from veil.node.kinds.sum import _ciphertexts

from tests.conftest import Federation, Member, run_cli
from tests.test_sum_wire import _entry, submit_and_approve, sum_job, three_banks  # noqa: F401


def _run(federation: Federation, members: dict[str, Member], job_id: str, paillier_keys: Path):  # type: ignore[no-untyped-def]
    with Client(members["bank-a"].address, federation.identity("analyst", "alice"),
                node="bank-a") as alice:
        return alice.run_sum(job_id, keys.load_private(paillier_keys))


def _last(member: Member) -> dict:  # type: ignore[type-arg]
    conn = member.home.connect()
    try:
        (data,) = conn.execute("SELECT entry FROM log_entries ORDER BY idx DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return json.loads(bytes(data))


def _peer_stub(federation: Federation, as_node: str, member: Member):  # type: ignore[no-untyped-def]
    ident = pki.load_identity(federation.identity("node", as_node))
    ch = fed_channels.channel(member.address, ident, node=member.name)
    return ch, sum_pb2_grpc.PeerServiceStub(ch)


def test_a_job_approved_at_some_nodes_only_releases_nothing_and_names_the_node(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    answers = submit_everywhere(sum_job(members, paillier_keys),
                                federation.identity("analyst", "alice"), base_dir=Path("/"))
    job_id = answers["bank-a"].id  # type: ignore[union-attr]
    for name in ("bank-a", "bank-c"):
        for role, who in (("operator", f"olga-{name}"), ("subject-representative", f"sam-{name}")):
            with Client(members[name].address, federation.identity(role, who)) as c:
                if c.job(job_id).state != "approved":
                    c.approve(job_id)
    with pytest.raises(VeilError) as info:
        _run(federation, members, job_id, paillier_keys)
    assert info.value.status == "FAILED_PRECONDITION"
    assert "'bank-b'" in str(info.value) and "no total was released" in str(info.value)
    assert _last(members["bank-a"])["status"] == "FAILED_PRECONDITION"  # the refusal is logged
    refused_at_b = _last(members["bank-b"])
    assert refused_at_b["method"] == "/veil.v1.PeerService/PrepareSum"
    assert refused_at_b["status"] == "FAILED_PRECONDITION"
    assert refused_at_b["caller"]["name"] == "bank-a"
    # once bank-b approves, the same job runs
    for role, who in (("operator", "olga-bank-b"), ("subject-representative", "sam-bank-b")):
        with Client(members["bank-b"].address, federation.identity(role, who)) as c:
            if c.job(job_id).state != "approved":
                c.approve(job_id)
    assert len(_run(federation, members, job_id, paillier_keys).receipts) == 3


def test_a_node_down_at_run_time_is_named_and_no_partial_total_is_released(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    job_id = submit_and_approve(federation, members, sum_job(members, paillier_keys))
    members["bank-c"].node.stop(grace=0)
    with pytest.raises(VeilError) as info:
        _run(federation, members, job_id, paillier_keys)
    assert info.value.status == "UNAVAILABLE"
    assert "'bank-c'" in str(info.value) and members["bank-c"].address in str(info.value)
    assert "no total was released" in str(info.value)
    failed = _last(members["bank-a"])
    assert failed["method"] == "/veil.v1.SumService/RunSum" and failed["status"] == "UNAVAILABLE"
    with Client(members["bank-a"].address, federation.identity("analyst", "alice")) as c:
        assert c.job(job_id).used.get("runs", 0) == 0  # a failed run is not charged as one


def test_a_node_not_named_in_the_job_cannot_prepare_or_collect(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    job_id = submit_and_approve(federation, members, sum_job(members, paillier_keys))
    ch, stub = _peer_stub(federation, "bank-z", members["bank-b"])
    try:
        for method, request in (
            ("PrepareSum", sum_pb2.PrepareSumRequest(job_id=job_id, run_id="ab" * 16)),
            ("ContributeSum", sum_pb2.ContributeSumRequest(job_id=job_id, run_id="ab" * 16)),
        ):
            with pytest.raises(grpc.RpcError) as info:
                getattr(stub, method)(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "bank-z" in info.value.details() and "bank-a" in info.value.details()
            entry = _last(members["bank-b"])
            assert entry["status"] == "PERMISSION_DENIED" and entry["caller"]["name"] == "bank-z"
    finally:
        ch.close()


def test_a_contributor_cannot_collect_another_contributors_part(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    job_id = submit_and_approve(federation, members, sum_job(members, paillier_keys))
    ch, stub = _peer_stub(federation, "bank-c", members["bank-b"])  # bank-c is not the aggregator
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.PrepareSum(sum_pb2.PrepareSumRequest(job_id=job_id, run_id="cd" * 16), timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        ch.close()


def test_a_mask_key_with_a_bad_signature_or_substituted_is_refused_before_encryption(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    """The aggregator (here: a holder of a real bank-a node certificate) relays every node's
    mask key; it can neither alter one nor put its own in another node's place."""
    members, _ = three_banks
    job_id = submit_and_approve(federation, members, sum_job(members, paillier_keys))
    run_id = "ef" * 16
    chans = {}
    try:
        keys_ = []
        for name in ("bank-b", "bank-c"):
            chans[name] = _peer_stub(federation, "bank-a", members[name])
            keys_.append(chans[name][1].PrepareSum(
                sum_pb2.PrepareSumRequest(job_id=job_id, run_id=run_id), timeout=30))
        # bank-a's own key: any well-formed statement signed by a bank-a node key
        ident = pki.load_identity(federation.identity("node", "bank-a"))
        from veil.node.kinds.sum import MASK_KEY_DOMAIN, _mask_statement
        from cryptography.hazmat.primitives.asymmetric import x25519

        statement = _mask_statement(job_id, run_id, "bank-a", x25519.X25519PrivateKey.generate().public_key())
        own = sum_pb2.MaskKey(node="bank-a", statement=statement,
                              signature=ident.sign(MASK_KEY_DOMAIN + statement),
                              certificate_pem=ident.read_tls_cert().decode())
        b, c = keys_
        forged_c = sum_pb2.MaskKey()
        forged_c.CopyFrom(c)
        forged_c.statement = c.statement.replace(b'"x25519":"', b'"x25519":"00', 1)[:len(c.statement)]
        stub_b = chans["bank-b"][1]
        with pytest.raises(grpc.RpcError) as info:
            stub_b.ContributeSum(sum_pb2.ContributeSumRequest(
                job_id=job_id, run_id=run_id, mask_keys=[own, b, forged_c]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "mask key of node 'bank-c'" in info.value.details()
        assert "bad signature" in info.value.details()
        entry = _last(members["bank-b"])
        assert entry["status"] == "INVALID_ARGUMENT" and "ciphertexts" not in (entry.get("meters") or {})
    finally:
        for ch, _ in chans.values():
            ch.close()


def test_a_local_sum_beyond_the_declared_bound_is_refused_before_encryption(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    job_id = submit_and_approve(federation, members, sum_job(members, paillier_keys, bound="1000"))
    with pytest.raises(VeilError) as info:
        _run(federation, members, job_id, paillier_keys)
    assert info.value.status == "PERMISSION_DENIED"
    assert "column exposure" in str(info.value) and "bound" in str(info.value)
    assert "node 'bank-a'" in str(info.value)  # the aggregator's own part: every bank is over
    assert "no total was released" in str(info.value)


def test_a_run_beyond_one_nodes_quota_is_refused_naming_that_node(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    answers = submit_everywhere(sum_job(members, paillier_keys, runs=3),
                                federation.identity("analyst", "alice"), base_dir=Path("/"))
    job_id = answers["bank-a"].id  # type: ignore[union-attr]
    for m in members.values():
        quota = {"runs": 1} if m.name == "bank-c" else None  # bank-c narrows to one run
        with Client(m.address, federation.identity("operator", f"olga-{m.name}")) as o:
            o.approve(job_id, quota=quota)
        with Client(m.address, federation.identity("subject-representative", f"sam-{m.name}")) as s:
            s.approve(job_id)
    _run(federation, members, job_id, paillier_keys)
    with pytest.raises(VeilError) as info:
        _run(federation, members, job_id, paillier_keys)
    assert info.value.status == "RESOURCE_EXHAUSTED"
    assert "'bank-c'" in str(info.value) and "no total was released" in str(info.value)


def test_a_node_whose_policy_does_not_allow_sums_refuses_the_job_and_the_others_accept(
    federation: Federation, tmp_path: Path, start_nodes, paillier_keys: Path  # type: ignore[no-untyped-def]
) -> None:
    from tests.test_sum_wire import LEVELS, loans, random_rows
    import random

    rng = random.Random(3)
    sources = {n: loans(tmp_path / f"{n}.csv", random_rows(rng, 40, ["energy"]))
               for n in ("bank-a", "bank-b")}

    def no_sums(name: str, text: str) -> str:
        if name != "bank-b":
            return text
        import re

        return re.sub(r"allow_kinds = \[[^\]]*\]", 'allow_kinds = ["query"]', text)

    members = start_nodes(sources, levels=LEVELS, key_column="loan_id", toml=no_sums)
    answers = submit_everywhere(sum_job(members, paillier_keys),
                                federation.identity("analyst", "alice"), base_dir=Path("/"))
    assert not isinstance(answers["bank-a"], VeilError)
    refused = answers["bank-b"]
    assert isinstance(refused, VeilError) and refused.status == "PERMISSION_DENIED"
    assert "sum" in str(refused)


def test_a_ciphertext_outside_the_key_range_is_refused_naming_the_node(paillier_keys: Path) -> None:
    pub = keys.load_private(paillier_keys).public_key
    size = (pub.nsquare.bit_length() + 7) // 8
    with pytest.raises(VeilError) as info:
        _ciphertexts(pub, [pub.nsquare.to_bytes(size + 1, "big")], 1, "bank-b")
    assert info.value.status == "INVALID_ARGUMENT" and "'bank-b'" in str(info.value)
    with pytest.raises(VeilError, match="sent 2 ciphertexts, expected 1"):
        _ciphertexts(pub, [b"\x01", b"\x01"], 1, "bank-b")


def test_audit_replay_checks_every_nodes_commitment_and_catches_a_tampered_salt(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    job_id = submit_and_approve(federation, members, sum_job(members, paillier_keys))
    _run(federation, members, job_id, paillier_keys)
    for m in members.values():  # the aggregator's RunSum entry and each contributor's part
        r = run_cli("audit", "replay", str(m.home.path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 compute calls replayed, 0 mismatched" in r.stdout, r.stdout
    conn = sqlite3.connect(members["bank-b"].home.state_path)
    try:
        conn.execute("UPDATE sum_parts SET salt = ?", (b"\x00" * 32,))
        conn.commit()
    finally:
        conn.close()
    r = run_cli("audit", "replay", str(members["bank-b"].home.path))
    assert r.returncode == 1 and "MISMATCH" in r.stdout, r.stdout

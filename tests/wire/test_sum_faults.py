"""Federated sums under faults and attack (issue 12, "Bad input and faults").

Real nodes on loopback with mTLS, real Paillier keys, real sandboxes and logs. Every fault
asserts the exact gRPC status, a message naming the node and the problem, that no total
reached the analyst, and what each node's log recorded (a status, never a plaintext).
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from phe.paillier import PaillierPublicKey
from veil.v1 import peer_pb2_grpc, sum_pb2

from veil.node import federation as fed
from veil.node import keys, pki
from veil.node.client import Client, sign_job_text
from veil.node.errors import InvalidInput, VeilError
from veil.node.jobs import SignedJob, spec_from_canonical
from veil.protocols import signing
from veil.protocols.canonical import canonical_json
from veil.node.kinds import sum as sumkind
from veil.protocols import masks

from tests.conftest import Federation, Member
from tests.wire.test_sum_wire import (
    INDUSTRIES,
    LEVELS,
    expected,
    loans,
    random_rows,
    submit_and_approve,
    sum_job,
)

ALICE = ("analyst", "alice")


# --------------------------------------------------------------------------- helpers


def entries(member: Member) -> list[dict[str, Any]]:
    conn = member.home.connect()
    try:
        rows = conn.execute("SELECT entry FROM log_entries ORDER BY idx").fetchall()
    finally:
        conn.close()
    return [json.loads(bytes(r[0])) for r in rows]


def calls(member: Member, method: str, job: str | None = None) -> list[dict[str, Any]]:
    return [e for e in entries(member) if e.get("method", "").endswith("/" + method)
            and (job is None or e.get("job") == job)]


def salts(member: Member) -> int:
    conn = member.home.connect()
    try:
        return int(conn.execute("SELECT COUNT(*) FROM sum_parts").fetchone()[0])
    finally:
        conn.close()


def no_plaintext(member: Member, data: list[tuple[str, str, Decimal]]) -> None:
    """No log entry at this node holds its local per-group sum."""
    text = json.dumps(entries(member))
    for g in INDUSTRIES:
        mine = [e for (i, _, e) in data if i == g]
        if len(mine) >= 10:
            assert str(sum(mine, Decimal(0))) not in text


def peer_stub(identity: pki.LocalIdentity | Path, member: Member) -> tuple[grpc.Channel, Any]:
    ident = identity if isinstance(identity, pki.LocalIdentity) else pki.load_identity(identity)
    ch = fed.channel(member.address, ident, node=member.name)
    return ch, peer_pb2_grpc.PeerServiceStub(ch)


def run_refused(federation: Federation, members: dict[str, Member], job_id: str,
                aggregator: str = "bank-a") -> VeilError:
    with Client(members[aggregator].address, federation.identity(*ALICE),
                node=aggregator) as alice:
        with pytest.raises(VeilError) as exc:
            alice.run_sum(job_id, keys.load_private(_keys[0]))
    return exc.value


_keys: list[Path] = []


@pytest.fixture
def banks(tmp_path: Path, start_nodes, paillier_keys: Path):  # type: ignore[no-untyped-def]
    """Three small banks; ``banks(toml=..., rows=...)`` starts them."""
    _keys[:] = [paillier_keys]

    def make(toml: Callable[[str, str], str] | None = None,
             rows: dict[str, list[tuple[str, str, Decimal]]] | None = None):  # type: ignore[no-untyped-def]
        rng = random.Random(12)
        data = rows or {n: random_rows(rng, 40, ["energy", "retail"]) for n in
                        ("bank-a", "bank-b", "bank-c")}
        sources = {n: loans(tmp_path / f"{n}.csv", r) for n, r in data.items()}
        return start_nodes(sources, levels=LEVELS, key_column="loan_id", toml=toml), data

    return make


def approved_job(federation: Federation, members: dict[str, Member], **kw: Any) -> str:
    return submit_and_approve(federation, members, sum_job(members, _keys[0], **kw))


# --------------------------------------------------------------------------- 1. who may call


def test_a_node_not_named_in_the_job_cannot_prepare_or_contribute(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    members, _ = banks()
    job = approved_job(federation, members)
    outsider = federation.identity("node", "bank-z")
    ch, stub = peer_stub(outsider, members["bank-b"])
    run = secrets.token_hex(16)
    with ch:
        for method, req in (
            ("PrepareSum", sum_pb2.PrepareSumRequest(job_id=job, run_id=run)),
            ("ContributeSum", sum_pb2.ContributeSumRequest(job_id=job, run_id=run)),
        ):
            with pytest.raises(grpc.RpcError) as exc:
                getattr(stub, method)(req, timeout=30)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'bank-a'" in exc.value.details() and "'bank-z'" in exc.value.details()
            [entry] = calls(members["bank-b"], method, job)
            assert entry["status"] == "PERMISSION_DENIED"
            assert entry["caller"]["name"] == "bank-z" and "meters" not in entry
    assert salts(members["bank-b"]) == 0


def test_only_the_aggregator_collects_a_contributor_cannot_ask_another_for_its_part(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    members, _ = banks()
    job = approved_job(federation, members)
    ch, stub = peer_stub(members["bank-b"].home.identity, members["bank-c"])
    run = secrets.token_hex(16)
    with ch:
        for method, req in (
            ("PrepareSum", sum_pb2.PrepareSumRequest(job_id=job, run_id=run)),
            ("ContributeSum", sum_pb2.ContributeSumRequest(job_id=job, run_id=run)),
        ):
            with pytest.raises(grpc.RpcError) as exc:
                getattr(stub, method)(req, timeout=30)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "expected node 'bank-a'" in exc.value.details()
            assert "'bank-b'" in exc.value.details()
            [entry] = calls(members["bank-c"], method, job)
            assert entry["status"] == "PERMISSION_DENIED" and entry["caller"]["name"] == "bank-b"
    assert salts(members["bank-c"]) == 0


# --------------------------------------------------------------------------- 2. wrong address


def test_a_job_whose_node_address_points_at_another_node_is_refused_naming_the_expected_node(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    members, data = banks()
    # the job says bank-c is at bank-b's address: the aggregator's TLS check refuses it
    text = sum_job(members, _keys[0]).replace(
        f'name = "bank-c"\naddress = "{members["bank-c"].address}"',
        f'name = "bank-c"\naddress = "{members["bank-b"].address}"')
    signed = sign_job_text(text, pki.load_identity(federation.identity(*ALICE)), base_dir=Path("/"))
    for m in members.values():  # submitted at each node's real address
        with Client(m.address, federation.identity(*ALICE), node=m.name) as c:
            job = c.submit_signed(signed).id
        for who in ("operator", "subject-representative"):
            with Client(m.address, federation.identity(who, f"x-{m.name}")) as c:
                if c.job(job).state != "approved":
                    c.approve(job)
    err = run_refused(federation, members, job)
    assert err.status == "PERMISSION_DENIED"
    assert f"the node at {members['bank-b'].address} is not 'bank-c'" in str(err)
    [agg] = calls(members["bank-a"], "RunSum", job)
    assert agg["status"] == "PERMISSION_DENIED" and "'bank-c'" in agg["message"]
    assert "meters" not in agg and salts(members["bank-a"]) == 0
    # bank-b answered its own PrepareSum only; nothing reached bank-c
    assert [e["status"] for e in calls(members["bank-b"], "PrepareSum", job)] == ["OK"]
    assert calls(members["bank-c"], "PrepareSum", job) == []
    for n in members:
        no_plaintext(members[n], data[n])
    # the analyst's own client refuses an aggregator address that is another node's
    with pytest.raises(VeilError) as exc:
        with Client(members["bank-b"].address, federation.identity(*ALICE), node="bank-a") as c:
            c.run_sum(job, keys.load_private(_keys[0]))
    assert "is not 'bank-a'" in str(exc.value)


# --------------------------------------------------------------------------- 3. mask keys


def _prepared(members: dict[str, Member], job: str) -> tuple[str, list[sum_pb2.MaskKey]]:
    """A run prepared at every node by the aggregator's own identity, over the wire."""
    run = secrets.token_hex(16)
    agg = members["bank-a"].home.identity
    out = []
    for m in members.values():
        ch, stub = peer_stub(agg, m)
        with ch:
            out.append(stub.PrepareSum(sum_pb2.PrepareSumRequest(job_id=job, run_id=run),
                                       timeout=30))
    return run, out


def _forged(members: dict[str, Member], job: str, run: str, node: str,
            cert_of: str, signer: str = "bank-a", public: bytes | None = None) -> sum_pb2.MaskKey:
    """A mask key made by ``signer``'s signing key (the aggregator's unless told), claiming
    to be ``node``'s."""
    statement = json.dumps(
        {"job": job, "run": run, "node": node,
         "x25519": (public or secrets.token_bytes(32)).hex()},
        sort_keys=True, separators=(",", ":")).encode()
    home = members[signer].home
    return sum_pb2.MaskKey(node=node, statement=statement,
                           signature=home.identity.sign(signing.MASK_KEY.tag + statement),
                           certificate_pem=members[cert_of].home.identity.read_tls_cert().decode())


@pytest.mark.parametrize("tamper, status, fragment", [
    ("bad-signature", "INVALID_ARGUMENT", "the mask key of node 'bank-c' has a bad signature"),
    ("forged-with-own-cert", "INVALID_ARGUMENT",
     "the mask key of node 'bank-c' is not certified for that node"),
    ("forged-with-their-cert", "INVALID_ARGUMENT",
     "the mask key of node 'bank-c' has a bad signature"),
    ("replayed-from-another-run", "INVALID_ARGUMENT",
     "the mask key of node 'bank-c' is for another job, run or node"),
    ("own-key-replayed", "INVALID_ARGUMENT",
     "the mask key of node 'bank-b' is for another job, run or node"),
    ("reordered", "INVALID_ARGUMENT", "expected one per node of the job in its order"),
    # bank-c itself signs a low-order point (all-zero shared secret): refused, not INTERNAL
    ("low-order-point", "INVALID_ARGUMENT", "the mask key of node 'bank-c' is a low-order point"),
])
def test_a_tampered_mask_key_is_refused_and_nothing_is_encrypted(
    federation: Federation, banks, tamper: str, status: str, fragment: str  # type: ignore[no-untyped-def]
) -> None:
    members, data = banks()
    job = approved_job(federation, members)
    run, mask_keys = _prepared(members, job)
    a, b, c = mask_keys
    if tamper == "bad-signature":
        c = sum_pb2.MaskKey(node=c.node, statement=c.statement,
                            signature=bytes([c.signature[0] ^ 1]) + c.signature[1:],
                            certificate_pem=c.certificate_pem)
    elif tamper == "forged-with-own-cert":
        c = _forged(members, job, run, "bank-c", cert_of="bank-a")
    elif tamper == "forged-with-their-cert":
        c = _forged(members, job, run, "bank-c", cert_of="bank-c")
    elif tamper == "replayed-from-another-run":
        _, (_, _, c) = _prepared(members, job)
    elif tamper == "own-key-replayed":  # bank-b's own key, but of another run
        _, (_, b, _) = _prepared(members, job)
    elif tamper == "low-order-point":
        c = _forged(members, job, run, "bank-c", cert_of="bank-c", signer="bank-c",
                    public=bytes(32))
    elif tamper == "reordered":
        a, b, c = a, c, b
    ch, stub = peer_stub(members["bank-a"].home.identity, members["bank-b"])
    with ch, pytest.raises(grpc.RpcError) as exc:
        stub.ContributeSum(sum_pb2.ContributeSumRequest(job_id=job, run_id=run,
                                                        mask_keys=[a, b, c]), timeout=60)
    assert exc.value.code().name == status, exc.value.details()
    assert fragment in exc.value.details()
    [entry] = calls(members["bank-b"], "ContributeSum", job)
    assert entry["status"] == status and fragment in entry["message"]
    assert "meters" not in entry and "result_sha256" not in entry
    assert salts(members["bank-b"]) == 0  # nothing encrypted, nothing committed
    no_plaintext(members["bank-b"], data["bank-b"])
    # the refused attempt used up bank-b's key for that run: it cannot be retried
    ch, stub = peer_stub(members["bank-a"].home.identity, members["bank-b"])
    with ch, pytest.raises(grpc.RpcError) as exc:
        stub.ContributeSum(sum_pb2.ContributeSumRequest(job_id=job, run_id=run,
                                                        mask_keys=mask_keys), timeout=60)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "was not prepared at this node" in exc.value.details()


# --------------------------------------------------------------------------- 4. node down


def test_a_node_down_between_approval_and_the_run_fails_the_run_naming_it(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    members, data = banks()
    job = approved_job(federation, members)
    members["bank-c"].node.stop(grace=0)
    err = run_refused(federation, members, job)
    assert err.status == "UNAVAILABLE"
    assert f"node 'bank-c' at {members['bank-c'].address} could not be reached" in str(err)
    assert "no total was released" in str(err)
    [agg] = calls(members["bank-a"], "RunSum", job)
    assert agg["status"] == "UNAVAILABLE" and "'bank-c'" in agg["message"]
    assert "meters" not in agg and "result_sha256" not in agg
    assert agg["details"]["sum"]["failed"] == ["bank-c"]
    assert salts(members["bank-a"]) == 0
    # bank-b was asked for its key (and said so), never for its part
    assert [e["status"] for e in calls(members["bank-b"], "PrepareSum", job)] == ["OK"]
    assert calls(members["bank-b"], "ContributeSum", job) == []
    for n in ("bank-a", "bank-b"):
        no_plaintext(members[n], data[n])


# --------------------------------------------------------------------------- 5. data vs job


def test_a_category_outside_the_declared_list_is_dropped_from_the_total(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    rng = random.Random(5)
    rows = {n: random_rows(rng, 30, ["energy", "retail"]) for n in ("bank-a", "bank-b", "bank-c")}
    rows["bank-b"] += [("aviation", "north", Decimal("1000.25"))] * 12  # not declared
    members, data = banks(rows=rows)
    job = approved_job(federation, members)
    with Client(members["bank-a"].address, federation.identity(*ALICE), node="bank-a") as c:
        result = c.run_sum(job, keys.load_private(_keys[0]))
    totals, counts, _ = expected(data)
    assert result.totals["exposure"].tolist() == [totals[g] for g in INDUSTRIES]
    assert result.counts.tolist() == [counts[g] for g in INDUSTRIES]
    assert "aviation" not in result.groups


def test_a_local_sum_outside_the_declared_bound_is_refused_before_encryption_naming_the_column(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    rng = random.Random(6)
    rows = {n: random_rows(rng, 30, ["energy", "retail"]) for n in ("bank-a", "bank-b", "bank-c")}
    rows["bank-b"] = [(g, "north", Decimal("9000000.00")) for g in ("energy", "retail")] * 15
    members, data = banks(rows=rows)
    job = approved_job(federation, members, bound="100000000")  # bank-b sums to 135,000,000
    err = run_refused(federation, members, job)
    assert err.status == "PERMISSION_DENIED"
    assert "node 'bank-b' refused its part" in str(err)
    assert "column exposure: a local sum at node 'bank-b' exceeds the job's bound" in str(err)
    [part] = calls(members["bank-b"], "ContributeSum", job)
    assert part["status"] == "PERMISSION_DENIED" and "column exposure" in part["message"]
    assert "meters" not in part and salts(members["bank-b"]) == 0
    [agg] = calls(members["bank-a"], "RunSum", job)
    assert agg["status"] == "PERMISSION_DENIED" and agg["details"]["sum"]["failed"] == ["bank-b"]
    assert salts(members["bank-a"]) == 0
    for n in members:
        no_plaintext(members[n], data[n])


# --------------------------------------------------------------------------- 6. quota


def test_a_second_run_beyond_the_quota_is_refused_and_releases_nothing(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    members, _ = banks()
    job = approved_job(federation, members, runs=1)
    with Client(members["bank-a"].address, federation.identity(*ALICE), node="bank-a") as c:
        c.run_sum(job, keys.load_private(_keys[0]))
    err = run_refused(federation, members, job)
    assert err.status == "RESOURCE_EXHAUSTED"
    assert "node 'bank-a': quota exhausted for runs: requested 1, remaining 0" in str(err)
    assert [e["status"] for e in calls(members["bank-a"], "RunSum", job)] == [
        "OK", "RESOURCE_EXHAUSTED"]
    for n in ("bank-b", "bank-c"):  # never asked again
        assert [e["status"] for e in calls(members[n], "ContributeSum", job)] == ["OK"]


def test_a_run_beyond_the_quota_at_one_contributor_is_refused_naming_that_node(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    members, _ = banks()
    answers = submit_and_approve(federation, members, sum_job(members, _keys[0], runs=3),
                                 approve=False)
    job = answers
    for m in members.values():
        quota = {"runs": 1} if m.name == "bank-c" else None
        for who in ("operator", "subject-representative"):
            with Client(m.address, federation.identity(who, f"q-{m.name}")) as c:
                if c.job(job).state != "approved":
                    c.approve(job, quota=quota)
    with Client(members["bank-a"].address, federation.identity(*ALICE), node="bank-a") as c:
        c.run_sum(job, keys.load_private(_keys[0]))
    err = run_refused(federation, members, job)
    assert err.status == "RESOURCE_EXHAUSTED"
    assert "node 'bank-c' refused its part: RESOURCE_EXHAUSTED" in str(err)
    assert "quota exhausted for runs" in str(err)
    [_, agg] = calls(members["bank-a"], "RunSum", job)
    assert agg["status"] == "RESOURCE_EXHAUSTED" and agg["details"]["sum"]["failed"] == ["bank-c"]
    assert [e["status"] for e in calls(members["bank-c"], "PrepareSum", job)] == [
        "OK", "RESOURCE_EXHAUSTED"]
    assert salts(members["bank-a"]) == 1  # the first run's only


# --------------------------------------------------------------------------- 7. policy


def test_a_node_whose_policy_does_not_allow_sums_refuses_the_job_and_the_others_accept(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    def no_sums(name: str, text: str) -> str:
        if name != "bank-c":
            return text
        return text.replace('allow_kinds = ["sum", "psi", "intersection_sum", "query"]',
                            'allow_kinds = ["psi", "query"]')

    members, _ = banks(toml=no_sums)
    from veil.node.client import submit_everywhere

    answers = submit_everywhere(sum_job(members, _keys[0]), federation.identity(*ALICE),
                                base_dir=Path("/"))
    refused = answers["bank-c"]
    assert isinstance(refused, VeilError) and refused.status == "PERMISSION_DENIED"
    assert str(refused).startswith(f"bank-c at {members['bank-c'].address}: PERMISSION_DENIED: ")
    assert "node 'bank-c' does not run sum jobs (policy.allow_kinds: psi, query)" in str(refused)
    assert not isinstance(answers["bank-a"], VeilError)
    assert not isinstance(answers["bank-b"], VeilError)
    [entry] = [e for e in entries(members["bank-c"]) if e.get("method", "").endswith("SubmitJob")]
    assert entry["status"] == "PERMISSION_DENIED"
    assert not any(e.get("event") == "job.submitted" for e in entries(members["bank-c"]))


# --------------------------------------------------------------------------- 8. approvals


def test_a_job_approved_at_some_nodes_only_names_the_unapproved_ones_then_runs_once_approved(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    members, _ = banks()
    job = submit_and_approve(federation, members, sum_job(members, _keys[0]), approve=False)

    def approve(m: Member) -> None:
        for who in ("operator", "subject-representative"):
            with Client(m.address, federation.identity(who, f"p-{m.name}")) as c:
                if c.job(job).state != "approved":
                    c.approve(job)

    approve(members["bank-a"])
    err = run_refused(federation, members, job)
    assert err.status == "FAILED_PRECONDITION"
    assert "node 'bank-b' refused its part" in str(err)
    assert "node 'bank-c' refused its part" in str(err)
    assert "pending approval" in str(err)
    [agg] = calls(members["bank-a"], "RunSum", job)
    assert agg["status"] == "FAILED_PRECONDITION"
    assert agg["details"]["sum"]["failed"] == ["bank-b", "bank-c"]
    approve(members["bank-b"])
    err = run_refused(federation, members, job)
    assert "node 'bank-c' refused its part" in str(err) and "node 'bank-b'" not in str(err)
    approve(members["bank-c"])
    with Client(members["bank-a"].address, federation.identity(*ALICE), node="bank-a") as c:
        result = c.run_sum(job, keys.load_private(_keys[0]))
    assert [r["node"] for r in result.receipts] == ["bank-a", "bank-b", "bank-c"]


# --------------------------------------------------------------------------- 9. ciphertexts


def test_a_ciphertext_outside_the_keys_range_is_refused_naming_the_node(paillier_keys: Path) -> None:
    key = PaillierPublicKey(keys.load_public(paillier_keys).n)
    size = (2 * key.n.bit_length() + 7) // 8
    n2 = key.n * key.n
    good = sumkind._ciphertexts(key, [(2).to_bytes(size, "big")], 1, "bank-b")
    assert good == [2]
    for bad in ((0).to_bytes(size, "big"), n2.to_bytes(size, "big"),
                (n2 + 5).to_bytes(size, "big"), key.n.to_bytes(size, "big"),
                b"\x01" * (size - 1), b"\x01" * (size + 1)):
        with pytest.raises(InvalidInput) as exc:
            sumkind._ciphertexts(key, [bad], 1, "bank-b")
        assert exc.value.status == "INVALID_ARGUMENT"
        assert "node 'bank-b' sent a ciphertext that is not under the job's key" in str(exc.value)
    with pytest.raises(InvalidInput, match="node 'bank-b' sent 2 ciphertexts, expected 1"):
        sumkind._ciphertexts(key, [(2).to_bytes(size, "big")] * 2, 1, "bank-b")


# --------------------------------------------------------------------------- 10. bad key


@pytest.mark.parametrize("modulus, fragment", [
    (3233, "bits"),                       # 61 × 53: far too small
    ((1 << 2048) - 2, "modulus"),         # even: not a product of two odd primes
])
def test_a_job_with_a_bad_paillier_modulus_is_refused_at_submission_over_the_wire(
    federation: Federation, banks, modulus: int, fragment: str  # type: ignore[no-untyped-def]
) -> None:
    members, _ = banks()
    ident = pki.load_identity(federation.identity(*ALICE))
    good = sign_job_text(sum_job(members, _keys[0]), ident, base_dir=Path("/"))
    spec = spec_from_canonical(good.canonical)
    # signed by the analyst's real key, past the client's own checks: the node must refuse
    doc = json.loads(good.canonical)
    doc["params"]["paillier_n"] = str(modulus)
    canonical = canonical_json(doc)
    signed = SignedJob(canonical, ident.sign(signing.JOB.tag + canonical))
    assert spec.params["paillier_n"] != str(modulus)
    with Client(members["bank-b"].address, ident, node="bank-b") as c:
        with pytest.raises(VeilError) as exc:
            c.submit_signed(signed)
    assert exc.value.status == "INVALID_ARGUMENT"
    assert "paillier_n" in str(exc.value) and fragment in str(exc.value)
    [entry] = [e for e in entries(members["bank-b"]) if e.get("method", "").endswith("SubmitJob")]
    assert entry["status"] == "INVALID_ARGUMENT"
    assert not any(e.get("event") == "job.submitted" for e in entries(members["bank-b"]))


# --------------------------------------------------------------------------- adversarial totals


def _loans_with_fee(path: Path, rows: list[tuple[str, Decimal, Decimal]]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loan_id", "industry", "region", "exposure", "fee"])
        for i, (industry, exposure, fee) in enumerate(rows):
            w.writerow([f"{path.stem}-{i:05d}", industry, "north", f"{exposure:.2f}", f"{fee:.2f}"])
    return path


def test_totals_over_adversarial_values_equal_numpy_on_the_plaintext(
    federation: Federation, tmp_path: Path, start_nodes, paillier_keys: Path  # type: ignore[no-untyped-def]
) -> None:
    """Negatives, zeros, local sums of exactly +bound and -bound, a total beyond one node's
    bound, fractions, a group withheld at one node, a group nobody has, two columns."""
    import numpy

    bound = Decimal("1000000")
    rng = random.Random(99)
    D = Decimal
    rows = {
        "bank-a": [("energy", D(0), D("-0.01"))] * 9 + [("energy", bound, D("-0.01"))]
        + [("retail", bound / 10, D("0.00"))] * 10,                      # +bound, +bound
        "bank-b": [("energy", -bound / 10, D("-0.99"))] * 10             # exactly -bound
        + [("retail", D(0), D(0))] * 12,                                 # zeros
        "bank-c": [("retail", bound / 20, D("0.01"))] * 20               # +bound again
        + [("transport", D(rng.randint(-6_000_000, 6_000_000)) / 100, D(rng.randint(-999, 999)) / 100)
           for _ in range(15)]
        + [("energy", D("-12345.67"), D("1.00"))] * 3,                   # withheld (< 10)
    }
    sources = {n: _loans_with_fee(tmp_path / f"{n}.csv", r) for n, r in rows.items()}
    members = start_nodes(sources, levels={**LEVELS, "fee": "sensitive"}, key_column="loan_id")
    nodes = "".join(f'[[nodes]]\nname = "{m.name}"\naddress = "{m.address}"\ndataset = "loans"\n'
                    f'columns = ["exposure", "fee", "industry"]\n' for m in members.values())
    text = (f'purpose = "adversarial totals"\nkind = "sum"\nexpires = "1d"\n[quota]\nruns = 1\n'
            f'{nodes}[params]\naggregator = "bank-a"\ncolumns = ["exposure", "fee"]\n'
            f'group_by = "industry"\ncategories = {json.dumps(INDUSTRIES)}\nscale = 2\n'
            f'bound = "{bound}"\npaillier_key = "{paillier_keys / keys.PUBLIC_FILE}"\n')
    job = submit_and_approve(federation, members, text)
    with Client(members["bank-a"].address, federation.identity(*ALICE), node="bank-a") as c:
        result = c.run_sum(job, keys.load_private(paillier_keys))
    # numpy on the plaintext, in exact cents, groups below 10 rows dropped per node
    want = {col: numpy.zeros(len(INDUSTRIES), dtype=numpy.int64) for col in ("exposure", "fee")}
    counts = numpy.zeros(len(INDUSTRIES), dtype=numpy.int64)
    withheld = numpy.zeros(len(INDUSTRIES), dtype=numpy.int64)
    for data in rows.values():
        g = numpy.array([INDUSTRIES.index(r[0]) for r in data])
        for col, i in (("exposure", 1), ("fee", 2)):
            cents = numpy.array([int(r[i] * 100) for r in data], dtype=numpy.int64)
            per = numpy.bincount(g, weights=None, minlength=len(INDUSTRIES))
            sums = numpy.array([cents[g == k].sum() for k in range(len(INDUSTRIES))])
            want[col] += numpy.where(per >= 10, sums, 0)
        per = numpy.bincount(g, minlength=len(INDUSTRIES))
        counts += numpy.where(per >= 10, per, 0)
        withheld += per < 10
    for col in ("exposure", "fee"):
        got = [int(v * 100) for v in result.totals[col].tolist()]
        assert got == want[col].tolist(), col
        assert all(isinstance(v, Decimal) for v in result.totals[col].tolist())
    assert result.counts.tolist() == counts.tolist() == [20, 42, 15, 0]
    assert result.withheld.tolist() == withheld.tolist() == [1, 0, 2, 3]
    assert result.totals["exposure"].tolist()[:2] == [0, 2 * bound]  # +B - B; B + 0 + B


class _CompromisedNode(peer_pb2_grpc.PeerServiceServicer):  # type: ignore[misc]
    """bank-b, compromised: its own certificate and signing key, a well-formed mask key,
    and a part whose ciphertexts are not in the key's range (>= n^2)."""

    def __init__(self, home: Any, params: Any, nodes: int) -> None:
        self.home, self.params, self.nodes = home, params, nodes

    def PrepareSum(self, request: Any, context: Any) -> sum_pb2.MaskKey:
        statement = masks.statement(request.job_id, request.run_id, "bank-b",
                                    x25519.X25519PrivateKey.generate().public_key())
        return sum_pb2.MaskKey(
            node="bank-b", statement=statement,
            signature=self.home.identity.sign(signing.MASK_KEY.tag + statement),
            certificate_pem=self.home.identity.read_tls_cert().decode())

    def ContributeSum(self, request: Any, context: Any) -> sum_pb2.SumPart:
        from veil.node.jobs._sum import packings

        p = self.params
        size = (2 * p.paillier_n.bit_length() + 7) // 8
        s, c, f = packings(p, self.nodes)
        bad = b"\xff" * size
        return sum_pb2.SumPart(node="bank-b",
                               sums=[bad] * s.plaintexts_for(p.groups * len(p.columns)),
                               counts=[bad] * c.plaintexts_for(p.groups),
                               withheld=[bad] * f.plaintexts_for(p.groups))


def test_a_peer_part_with_ciphertexts_outside_the_keys_range_is_refused_naming_the_node(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    from concurrent import futures

    from veil.node.jobs import sum_params

    members, data = banks()
    b = members["bank-b"]
    b.node.stop(grace=0)
    ident = b.home.identity
    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(ident.read_tls_key(), ident.read_tls_cert())], root_certificates=ident.read_ca_cert(),
        require_client_auth=True))
    text = sum_job(members, _keys[0]).replace(f'"{b.address}"', f'"127.0.0.1:{port}"')
    alice = pki.load_identity(federation.identity(*ALICE))
    signed = sign_job_text(text, alice, base_dir=Path("/"))
    peer_pb2_grpc.add_PeerServiceServicer_to_server(
        _CompromisedNode(b.home, sum_params(spec_from_canonical(signed.canonical).params), 3),
        server)
    server.start()
    try:
        for m in (members["bank-a"], members["bank-c"]):
            with Client(m.address, alice, node=m.name) as c:
                job = c.submit_signed(signed).id
            for who in ("operator", "subject-representative"):
                with Client(m.address, federation.identity(who, f"r-{m.name}")) as c:
                    if c.job(job).state != "approved":
                        c.approve(job)
        err = run_refused(federation, members, job)
    finally:
        server.stop(0)
    assert err.status == "INVALID_ARGUMENT"
    assert "node 'bank-b' sent a ciphertext that is not under the job's key" in str(err)
    [agg] = calls(members["bank-a"], "RunSum", job)
    assert agg["status"] == "INVALID_ARGUMENT" and "'bank-b'" in agg["message"]
    assert agg["details"]["sum"]["failed"] == ["bank-b"]
    assert agg["details"]["sum"]["contributed"] == ["bank-b", "bank-c"]
    assert "meters" not in agg and "result_sha256" not in agg and salts(members["bank-a"]) == 0
    # bank-c sent its part (its log says so, with its commitment); no total was released
    [part] = calls(members["bank-c"], "ContributeSum", job)
    assert part["status"] == "OK" and len(part["details"]["sum"]["commitment"]) == 64
    no_plaintext(members["bank-c"], data["bank-c"])


class _VanishingNode(peer_pb2_grpc.PeerServiceServicer):  # type: ignore[misc]
    """bank-c with its own keys: answers PrepareSum, then goes down while asked for its part."""

    def __init__(self, home: Any) -> None:
        self.home = home
        self.server: Any = None

    def PrepareSum(self, request: Any, context: Any) -> sum_pb2.MaskKey:
        statement = masks.statement(request.job_id, request.run_id, "bank-c",
                                    x25519.X25519PrivateKey.generate().public_key())
        return sum_pb2.MaskKey(
            node="bank-c", statement=statement,
            signature=self.home.identity.sign(signing.MASK_KEY.tag + statement),
            certificate_pem=self.home.identity.read_tls_cert().decode())

    def ContributeSum(self, request: Any, context: Any) -> sum_pb2.SumPart:
        self.server.stop(0).wait()
        return sum_pb2.SumPart(node="bank-c")


def test_a_node_going_down_after_its_key_fails_the_run_and_every_log_says_what_it_sent(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    from concurrent import futures

    members, data = banks()
    c = members["bank-c"]
    c.node.stop(grace=0)
    ident = c.home.identity
    vanishing = _VanishingNode(c.home)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    vanishing.server = server
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(ident.read_tls_key(), ident.read_tls_cert())], root_certificates=ident.read_ca_cert(),
        require_client_auth=True))
    peer_pb2_grpc.add_PeerServiceServicer_to_server(vanishing, server)
    server.start()
    address = f"127.0.0.1:{port}"
    text = sum_job(members, _keys[0]).replace(f'"{c.address}"', f'"{address}"')
    alice = pki.load_identity(federation.identity(*ALICE))
    signed = sign_job_text(text, alice, base_dir=Path("/"))
    try:
        for m in (members["bank-a"], members["bank-b"]):
            with Client(m.address, alice, node=m.name) as cl:
                job = cl.submit_signed(signed).id
            for who in ("operator", "subject-representative"):
                with Client(m.address, federation.identity(who, f"v-{m.name}")) as cl:
                    if cl.job(job).state != "approved":
                        cl.approve(job)
        err = run_refused(federation, members, job)
    finally:
        server.stop(0)
    assert err.status == "UNAVAILABLE", err
    assert f"node 'bank-c' at {address} could not be reached" in str(err)
    assert "no total was released" in str(err)
    [agg] = calls(members["bank-a"], "RunSum", job)
    assert agg["status"] == "UNAVAILABLE" and "meters" not in agg
    assert agg["details"]["sum"]["step"] == "contribute"
    assert agg["details"]["sum"]["failed"] == ["bank-c"]
    assert agg["details"]["sum"]["contributed"] == ["bank-b"]
    assert salts(members["bank-a"]) == 0  # the aggregator's own part was never committed
    # bank-b sent its part: its entry says so, with its commitment and ciphertext digest
    [part] = calls(members["bank-b"], "ContributeSum", job)
    assert part["status"] == "OK" and part["meters"]["runs"] == 1
    assert len(part["details"]["sum"]["commitment"]) == 64
    assert len(part["details"]["sum"]["parts_sha256"]) == 64
    assert salts(members["bank-b"]) == 1
    for n in ("bank-a", "bank-b"):
        no_plaintext(members[n], data[n])


def test_a_peers_huge_or_malformed_job_and_run_ids_are_refused_before_they_reach_the_log(
    federation: Federation, banks  # type: ignore[no-untyped-def]
) -> None:
    """Ids a peer sends are shaped before any lookup: a 40 KiB job id never reaches the log
    or the status message, and a run id must be the aggregator's 32 hex digits."""
    members, _ = banks()
    job = approved_job(federation, members)
    ch, stub = peer_stub(federation.identity("node", "bank-a"), members["bank-b"])
    huge = "f" * 40_000
    with ch:
        for method, req in (
            ("PrepareSum", sum_pb2.PrepareSumRequest(job_id=huge, run_id="ab" * 16)),
            ("ContributeSum", sum_pb2.ContributeSumRequest(job_id=huge, run_id="ab" * 16)),
            ("PrepareSum", sum_pb2.PrepareSumRequest(job_id=job, run_id="x" * 5000)),
            ("ContributeSum", sum_pb2.ContributeSumRequest(job_id=job, run_id="x" * 5000)),
        ):
            with pytest.raises(grpc.RpcError) as exc:
                getattr(stub, method)(req, timeout=30)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
            assert len(exc.value.details()) < 400
    text = json.dumps(entries(members["bank-b"]))
    assert huge[:1000] not in text and "x" * 1000 not in text
    assert salts(members["bank-b"]) == 0


def test_a_contribute_request_for_the_largest_job_fits_the_nodes_request_limit() -> None:
    """A job may name MAX_NODES nodes; the aggregator's ContributeSum carries one signed mask
    key (certificate included) per node, so the limit must hold that many real keys."""
    from veil.node import bounds
    from veil.node.jobs._kinds import MAX_NODES

    cert = "-----BEGIN CERTIFICATE-----\n" + "A" * 1400 + "\n-----END CERTIFICATE-----\n"
    key = sum_pb2.MaskKey(node="n" * 64, statement=b"s" * 220, signature=b"g" * 64,
                          certificate_pem=cert)
    req = sum_pb2.ContributeSumRequest(job_id="a" * 32, run_id="b" * 32,
                                       mask_keys=[key] * MAX_NODES)
    assert req.ByteSize() <= bounds.request_limit("/veil.v1.PeerService/ContributeSum")

"""Rules a mutation pass found untested, checked without a server: sandbox analysis rules,
estimates, certificates that name another federation, the offline verifier's older
checkpoints. Each test fails if its check is dropped or weakened."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from veil.node import pki
from veil.node.audit import Checkpoint, open_checkpoint, sign_checkpoint
from veil.node.errors import Unauthenticated
from veil.node.home import NodeHome
from veil.node.jobs._policy import Estimate
from veil.sandbox import Column, Policy, QueryRejected, Table
from tests.node.test_log import copy_node, db, error_line, verify_cli
from tests.node.test_log import pristine as pristine  # noqa: F401  (a fixture, used by name)
from tests.sandbox.test_sandbox_engine import POLICY, query, write_parquet
from tests.sandbox.test_sandbox_engine import table as table  # noqa: F401  (a fixture, used by name)

# --------------------------------------------------------------------------- sandbox rules


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        # HAVING is checked like every other clause (each of these binds and would run)
        ("SELECT region, count(*) AS n FROM customers GROUP BY region HAVING max(salary) > 0",
         "MAX on sensitive column 'salary' is not allowed by the policy"),
        ("SELECT region, count(*) AS n FROM customers GROUP BY region "
         "HAVING sum(amount) FILTER (WHERE age > 30) > 0", "FILTER clause on SUM"),
        ("SELECT region, count(*) AS n FROM customers GROUP BY region "
         "HAVING sum(customer_id) > 0", "key column 'customer_id' may only be counted"),
        ("SELECT region, count(*) AS n FROM customers GROUP BY region "
         "HAVING sum(amount * 2) > 0", "argument of SUM must be a plain column"),
        ("SELECT region, count(*) AS n FROM customers GROUP BY region "
         "HAVING median(salary) > 0", "sensitive column 'salary' may only be the argument"),
        # grouping by a sensitive column singles people out, selected or not
        ("SELECT region, count(*) AS n FROM customers GROUP BY region, salary", "salary"),
        ("SELECT count(*) AS n FROM customers GROUP BY salary", "salary"),
    ],
)
def test_rules_hold_in_every_clause(table: Table, sql: str, message: str) -> None:
    with pytest.raises(QueryRejected, match=message):
        query(table, sql)


def test_denying_count_denies_count_star(table: Table) -> None:
    policy = Policy(min_group_size=10, denied_functions=frozenset({"count"}))
    for sql in ("SELECT region, count(*) AS n FROM customers GROUP BY region",
                "SELECT count(*) AS n FROM customers",
                "SELECT region, count(amount) AS n FROM customers GROUP BY region"):
        with pytest.raises(QueryRejected, match="count"):
            query(table, sql, policy)
    assert query(table, "SELECT region, sum(amount) AS s FROM customers GROUP BY region",
                 POLICY).arrays["region"].size == 5 - 1  # 'tiny' suppressed


def test_large_min_group_size_counts_subjects_not_rows(tmp_path: Path) -> None:
    # k > 1025 takes the exact path; group d has 1,500 rows but only 500 people
    path = tmp_path / "wide.parquet"
    write_parquet(
        path,
        "SELECT p, g FROM (SELECT range AS p, 'a' AS g FROM range(1200) "
        "UNION ALL SELECT 30000 + range % 500, 'd' FROM range(1500))",
    )
    t = Table(
        "t", str(path), (Column("p", "BIGINT", "sensitive"), Column("g", "VARCHAR", "public")), "p"
    )
    result = query(t, "SELECT g, count(*) AS n FROM t GROUP BY g ORDER BY g",
                   Policy(min_group_size=1100))
    assert result.arrays["g"].tolist() == ["a"]
    assert result.suppressed_groups == 1
    total = query(t, "SELECT count(*) AS n FROM t WHERE g = 'd'", Policy(min_group_size=1100))
    assert total.suppressed_groups == 1


# --------------------------------------------------------------------------- estimates


def _estimate(max_price: str) -> Estimate:
    return Estimate(kind="query", node="bank-a", dataset="customers",
                    columns=(("region", "public"),), max_level="public", runs=1,
                    rows_per_run=10, rows_total=10, reveals="aggregates", currency="CNY",
                    max_price=Decimal(max_price), uncapped=())


@pytest.mark.parametrize(("exact", "shown"), [("0.001", "0.01"), ("1.0001", "1.01"),
                                              ("0.015", "0.02"), ("2.00", "2.00")])
def test_estimate_price_is_rounded_up_never_half_up(exact: str, shown: str) -> None:
    # the statement total is rounded half up: an estimate rounded the same way could be
    # exceeded by the bill (0.001 shown as 0.00)
    assert f"price: at most {shown} CNY" in _estimate(exact).lines()


# --------------------------------------------------------------------------- certificates


def test_ca_signed_certificate_naming_another_federation_is_refused(tmp_path: Path) -> None:
    fed = pki.init_federation(tmp_path / "ca", "testfed")
    ca_cert = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(fed.ca_key.read_bytes(), None)
    # a genuine identity, re-signed by the same CA with O=otherfed
    genuine = pki.issue(fed.directory, "analyst", "alice", tmp_path / "alice")
    real = x509.load_pem_x509_certificate(genuine.tls_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "otherfed"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "analyst"),
            x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_before_utc + timedelta(days=30))
    )
    for ext in real.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    forged = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    store = pki.TrustStore.load(fed.ca_cert, fed.crl)
    assert store.identify(real.public_bytes(serialization.Encoding.PEM)).name == "alice"
    with pytest.raises(Unauthenticated, match="names federation 'otherfed', expected 'testfed'"):
        store.identify(forged.public_bytes(serialization.Encoding.PEM))


# --------------------------------------------------------------------------- offline audit


def test_offline_verify_compares_every_stored_older_checkpoint(
    pristine: NodeHome, tmp_path: Path  # noqa: F811
) -> None:
    home = copy_node(pristine, tmp_path / "node")
    conn = db(home)
    sizes = [r[0] for r in conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    old = sizes[len(sizes) // 2]
    assert old < sizes[-1]
    (note,) = conn.execute("SELECT note FROM checkpoints WHERE size = ?", (old,)).fetchone()
    genuine = open_checkpoint(note, pristine.signer().verifier(), origin=pristine.origin)
    wrong = Checkpoint(genuine.origin, genuine.size, bytes(32))
    conn.execute("UPDATE checkpoints SET note = ? WHERE size = ?",
                 (sign_checkpoint(wrong, pristine.signer()), old))
    conn.close()
    code, out = verify_cli(home, tmp_path / "auditor")
    assert code == 1
    assert error_line(out) == (
        f"stored checkpoint for size {old} does not match the entries: "
        f"an entry before index {old} was altered"
    )

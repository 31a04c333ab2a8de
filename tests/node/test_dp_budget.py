"""Differential privacy in jobs and policy, and the budget ledger in a real state database.

The ledger tests write log entries with chosen times straight into a real node state and run
the charge effect on them, as the log's writer does inside its transaction: that is how a
renewal period rolling over between the run's start and its release is pinned down exactly.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from veil.node import dp, state
from veil.node.config import load_config
from veil.node.errors import BudgetExhausted, ConfigError, InvalidInput, PolicyDenied
from veil.node.jobs import (
    BudgetRule,
    DpPolicy,
    NodePolicy,
    canonical_bytes,
    check_submission,
    parse_job_toml,
    spec_from_canonical,
)
from veil.node.jobs._dp import parse_request, text

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NONCE = "00112233445566778899aabbccddeeff"
LEVELS = {"customer_id": "internal", "region": "public", "age_band": "internal",
          "amount": "sensitive"}

JOB = """
purpose = "Spend by region, under differential privacy"
kind = "query"
expires = "30d"
[quota]
runs = 5
[[nodes]]
name = "bank-a"
dataset = "customers"
columns = ["region", "amount"]
[params]
sql = "SELECT region, SUM(amount) FROM customers GROUP BY region"
[dp]
{dp}
"""
DP = ('epsilon = 0.5\nmax_rows_per_subject = 1\nbounds = { amount = [0, 20000] }\n'
      'categories = { region = ["north", "south"] }')


def job(dp_text: str = DP, **kw: object):
    return parse_job_toml(JOB.format(dp=dp_text), analyst="alice", normalize_sql=lambda s: s,
                          nonce=NONCE, now=NOW, **kw)


def policy(**dp_kw: object) -> NodePolicy:
    rules = dp_kw.pop("budgets", (BudgetRule("epsilon", Decimal(2), Decimal(1)),))
    return NodePolicy(dp=DpPolicy(budgets=tuple(rules), **dp_kw))  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the job's [dp]


def test_dp_table_round_trips_through_the_signed_form_exactly() -> None:
    spec = job()
    assert spec.dp is not None
    assert (spec.dp.measure, spec.dp.per_run, spec.dp.max_rows_per_subject) == (
        "epsilon", Decimal("0.5"), 1)
    assert spec.dp.bounds == {"amount": (Decimal(0), Decimal(20000))}
    data = canonical_bytes(spec)
    assert b'"dp":{"bounds":{"amount":["0","20000"]}' in data  # decimals as strings, no floats
    assert spec_from_canonical(data) == spec


def test_a_job_without_dp_keeps_its_canonical_bytes() -> None:
    plain = parse_job_toml(JOB.split("[dp]")[0], analyst="alice", normalize_sql=lambda s: s,
                           nonce=NONCE, now=NOW)
    assert b'"dp"' not in canonical_bytes(plain)
    assert spec_from_canonical(canonical_bytes(plain)).dp is None


def test_float_spends_are_exact_decimals() -> None:
    r = parse_request({"epsilon": 0.1, "max_rows_per_subject": 1})
    assert r.per_run == Decimal("0.1")  # not 0.1000000000000000055...
    assert sum([r.per_run] * 10) == Decimal(1)


def test_epsilon_with_delta_runs_as_rho() -> None:
    r = parse_request({"epsilon": 1, "delta": 1e-6, "max_rows_per_subject": 2})
    assert (r.stated, r.measure) == ("epsilon-delta", "rho")
    assert 0 < r.rho < Decimal("0.05")  # ε = ρ + 2√(ρ ln 1/δ) ⇒ ρ ≈ 0.0175 at ε = 1, δ = 1e-6
    assert "δ = 0.000001" in r.spend_text()


@pytest.mark.parametrize("table, message", [
    ({"max_rows_per_subject": 1}, "state what one run spends"),
    ({"epsilon": 1, "rho": 1, "max_rows_per_subject": 1}, "not both"),
    ({"rho": 1, "delta": 1e-6, "max_rows_per_subject": 1}, "goes with epsilon"),
    ({"epsilon": 0, "max_rows_per_subject": 1}, "more than 0"),
    ({"epsilon": -1, "max_rows_per_subject": 1}, "more than 0"),
    ({"epsilon": 50, "max_rows_per_subject": 1}, "at most 10"),
    ({"epsilon": float("nan"), "max_rows_per_subject": 1}, "finite"),
    ({"epsilon": True, "max_rows_per_subject": 1}, "expected a number"),
    ({"epsilon": "0.0000000000001", "max_rows_per_subject": 1}, "decimal places"),
    ({"epsilon": 1, "delta": 0.5, "max_rows_per_subject": 1}, "0 < delta < 0.001"),
    ({"epsilon": 1}, "max_rows_per_subject: required"),
    ({"epsilon": 1, "max_rows_per_subject": 0}, "from 1 to 1000"),
    ({"epsilon": 1, "max_rows_per_subject": 1, "bounds": {"amount": [100, 0]}},
     "lower bound 100 is above the upper bound 0"),
    ({"epsilon": 1, "max_rows_per_subject": 1, "bounds": {"amount": [0]}}, "[lower, upper]"),
    ({"epsilon": 1, "max_rows_per_subject": 1, "bounds": {"amount": [0, 0.5]}},
     "decimal places"),
    ({"epsilon": 1, "max_rows_per_subject": 1, "bounds": {"amount": [0, 10**16]}},
     "must be at most"),
    ({"epsilon": 1, "max_rows_per_subject": 1, "categories": {"region": ["a", "a"]}},
     "listed twice"),
    ({"epsilon": 1, "max_rows_per_subject": 1, "categories": {"region": ["a", 1]}},
     "all strings or all integers"),
    ({"epsilon": 1, "max_rows_per_subject": 1, "noise": "none"}, "unknown key 'noise'"),
])
def test_bad_dp_tables_say_what_is_wrong(table: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_request(table)


def test_declared_columns_must_be_listed_by_the_node() -> None:
    with pytest.raises(InvalidInput, match="'age_band' has declared bounds or categories"):
        job(DP + '\n')  # fine
        job('epsilon = 1\nmax_rows_per_subject = 1\ncategories = { age_band = ["20s"] }')


# ------------------------------------------------------------------- the node's policy


def test_policy_requires_dp_by_dataset_and_by_level() -> None:
    plain = parse_job_toml(JOB.split("[dp]")[0], analyst="alice", normalize_sql=lambda s: s,
                           nonce=NONCE, now=NOW)
    for p in (policy(require_datasets=("cust*",)), policy(require_min_level="sensitive")):
        with pytest.raises(PolicyDenied, match="requires differential privacy .* add a \\[dp\\]"):
            check_submission(plain, "bank-a", LEVELS, "customer_id", p)
        check_submission(job(), "bank-a", LEVELS, "customer_id", p)  # with [dp]: accepted
    # a requirement for other kinds only
    check_submission(plain, "bank-a", LEVELS, "customer_id",
                     policy(require_min_level="sensitive", require_kinds=("sum",)))
    # a level above every column the job touches: no requirement
    check_submission(plain, "bank-a", {**LEVELS, "amount": "internal"}, "customer_id",
                     policy(require_min_level="sensitive"))


def test_a_run_may_not_spend_more_than_the_policy_allows_per_run() -> None:
    tight = policy(budgets=(BudgetRule("epsilon", Decimal(2), Decimal("0.25")),))
    with pytest.raises(PolicyDenied, match=r"spend 0.5 \(ε\), more than this node allows per "
                                           r"run \(0.25\)"):
        check_submission(job(), "bank-a", LEVELS, "customer_id", tight)


def test_no_budget_for_the_analyst_is_refused_at_submission() -> None:
    other = policy(budgets=(BudgetRule("epsilon", Decimal(2), Decimal(1), analysts=("bob",)),))
    with pytest.raises(PolicyDenied, match="no differential-privacy budget for analyst 'alice'"):
        check_submission(job(), "bank-a", LEVELS, "customer_id", other)


def test_a_pure_budget_refuses_gaussian_jobs_and_a_rho_budget_takes_both() -> None:
    gauss = job('rho = 0.1\nmax_rows_per_subject = 1\nbounds = { amount = [0, 20000] }\n'
                'categories = { region = ["north", "south"] }')
    with pytest.raises(InvalidInput, match="pure ε-DP, which a Gaussian"):
        check_submission(gauss, "bank-a", LEVELS, "customer_id", policy())
    zcdp = BudgetRule("rho", Decimal(1), Decimal("0.5"))
    assert zcdp.cost(gauss.dp) == Decimal("0.1")
    assert zcdp.cost(job().dp) == Decimal("0.125")  # ε = 0.5 pure ⇒ ρ = ε²/2


def test_node_toml_dp_section(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nname = "bank-a"\n[policy.dp]\nrequire_datasets = ["customers"]\n'
        'require_min_level = "sensitive"\nrequire_kinds = ["query"]\n'
        '[[policy.dp.budget]]\nanalysts = ["alice"]\nepsilon = "3"\nmax_per_run = "1"\n'
        'renew = "30d"\n'
        '[[policy.dp.budget]]\nepsilon = 2\ndelta = 1e-6\nmax_per_run = "0.05"\n')
    p = load_config(tmp_path).policy.dp
    assert p.require_datasets == ("customers",) and p.require_min_level == "sensitive"
    assert p.require_kinds == ("query",)
    first, second = p.budgets
    assert (first.measure, first.total, first.renew_s) == ("epsilon", Decimal(3), 30 * 86400)
    assert second.measure == "rho" and second.approx == (Decimal(2), Decimal("0.000001"))
    assert p.budget_for("customers", "alice") is first
    assert p.budget_for("customers", "bob") is second


@pytest.mark.parametrize("body, message", [
    ('[[policy.dp.budget]]\nmax_per_run = "1"\n', "state the budget"),
    ('[[policy.dp.budget]]\nepsilon = "3"\n', "max_per_run: required"),
    ('[[policy.dp.budget]]\nepsilon = "1"\nmax_per_run = "2"\n', "at most the total"),
    ('[[policy.dp.budget]]\nepsilon = "1"\nmax_per_run = "1"\nrenew = "monthly"\n',
     'a period like "30d"'),
    ('[[policy.dp.budget]]\nepsilon = "1"\nmax_per_run = "1"\nrenw = "30d"\n',
     "did you mean 'renew'"),
    ('[policy.dp]\nrequire_min_level = "core"\n', "expected one of public, internal, sensitive"),
    ('[policy.dp]\nrequire_kinds = ["psi"]\n', "expected one of query, sum"),
])
def test_node_toml_dp_errors_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "node.toml").write_text('[node]\nname = "bank-a"\n' + body)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(tmp_path)


def test_periods_are_aligned_to_the_epoch() -> None:
    rule = BudgetRule("epsilon", Decimal(1), Decimal(1), renew_s=86400)
    assert rule.period(datetime(2026, 12, 4, 23, 59, 59, tzinfo=UTC)) == (
        "2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z")
    assert BudgetRule("epsilon", Decimal(1), Decimal(1)).period(NOW) == (
        "1970-01-01T00:00:00Z", None)


# ------------------------------------------------------------------------- the ledger


@pytest.fixture
def conn(tmp_path: Path):
    state.create(tmp_path / "state.db")
    c = state.connect(tmp_path / "state.db")
    yield c
    c.close()


def entry_at(conn: sqlite3.Connection, index: int, moment: datetime) -> None:
    t = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    conn.execute("INSERT INTO log_entries(idx, entry) VALUES (?, ?)",
                 (index, json.dumps({"t": t}).encode()))


def spend(conn: sqlite3.Connection, rule: BudgetRule, index: int, moment: datetime,
          cost: str = "0.5") -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        entry_at(conn, index, moment)
        dp.charge(rule, "alice", "customers", Decimal(cost), b"noise")(conn, index)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def test_the_charge_rechecks_inside_the_transaction_and_leaves_nothing_when_it_refuses(
        conn: sqlite3.Connection) -> None:
    rule = BudgetRule("epsilon", Decimal(1), Decimal(1))
    spend(conn, rule, 0, NOW)
    spend(conn, rule, 1, NOW)
    with pytest.raises(BudgetExhausted, match=r"has ε = 0 left of 1 on dataset 'customers' "
                                              r"\(it never renews\); one run of this job "
                                              r"spends 0.5"):
        spend(conn, rule, 2, NOW)
    assert conn.execute("SELECT count(*) FROM log_entries").fetchone()[0] == 2  # rolled back
    assert conn.execute("SELECT count(*) FROM dp_noise").fetchone()[0] == 2
    assert dp.standing(conn, rule, "alice", "customers").spent == Decimal(1)
    with pytest.raises(BudgetExhausted):
        dp.check(conn, rule, "alice", "customers", Decimal("0.5"))


def test_a_run_released_after_a_renewal_spends_from_the_new_period(
        conn: sqlite3.Connection) -> None:
    rule = BudgetRule("epsilon", Decimal(1), Decimal(1), renew_s=3600)
    end_of_hour = datetime(2026, 12, 4, 12, 59, 59, 999999, tzinfo=UTC)
    spend(conn, rule, 0, end_of_hour, "1")
    # admitted in the old period, where nothing is left ...
    with pytest.raises(BudgetExhausted, match="until 2026-12-04T13:00:00Z, when it renews"):
        spend(conn, rule, 1, end_of_hour, "1")
    # ... but a run whose entry is written one microsecond later is charged to the new one
    spend(conn, rule, 2, end_of_hour + timedelta(microseconds=1), "1")
    rows = conn.execute("SELECT period_start, spent FROM dp_spent ORDER BY 1").fetchall()
    assert rows == [("2026-12-04T12:00:00Z", "1"), ("2026-12-04T13:00:00Z", "1")]
    assert dp.releases(conn, "alice")[2]["period_start"] == "2026-12-04T13:00:00Z"


def test_concurrent_charges_never_overspend(tmp_path: Path) -> None:
    """Twenty threads race for a budget of five runs through the real log's writer."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.node.audit import NoteSigner
    from veil.node.log import Log

    db = tmp_path / "race.db"
    state.create(db)
    log = Log(db, NoteSigner("veil.test/race", Ed25519PrivateKey.generate()), "veil.test/race")
    rule = BudgetRule("rho", Decimal("0.5"), Decimal("0.1"))
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def run() -> None:
        barrier.wait()
        try:
            log.append({"kind": "call"}, effect=dp.charge(rule, "alice", "customers",
                                                           Decimal("0.1"), b"n"))
            outcomes.append("released")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(outcomes).count("released") == 5
    c = state.connect(db, readonly=True)
    assert dp.standing(c, rule, "alice", "customers").spent == Decimal("0.5")
    assert c.execute("SELECT count(*) FROM dp_releases").fetchone()[0] == 5
    c.close()


def test_decimal_text_is_canonical() -> None:
    assert [text(Decimal(s)) for s in ("0.50", "3", "1E+1", "0.000001")] == [
        "0.5", "3", "10", "0.000001"]


def test_a_shared_budget_is_spent_by_all_its_analysts_together(conn: sqlite3.Connection) -> None:
    """Analysts who may pool their results (one team) get one budget between them; each one's
    releases are still their own lines."""
    rule = BudgetRule("epsilon", Decimal(1), Decimal(1), analysts=("alice", "bob"), shared=True)
    conn.execute("BEGIN IMMEDIATE")
    entry_at(conn, 0, NOW)
    dp.charge(rule, "alice", "customers", Decimal("0.75"), b"n")(conn, 0)
    conn.execute("COMMIT")
    assert dp.standing(conn, rule, "bob", "customers").remaining == Decimal("0.25")
    with pytest.raises(BudgetExhausted, match="the budget analyst 'bob' shares with alice, bob "
                                              "has ε = 0.25 left of 1"):
        dp.check(conn, rule, "bob", "customers", Decimal("0.5"))
    assert list(dp.releases(conn, "alice")) == [0] and dp.releases(conn, "bob") == {}
    assert "one budget shared by the analysts alice, bob" in rule.describe()


def test_node_toml_shared_budget(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nname = "bank-a"\n[[policy.dp.budget]]\nanalysts = ["team-*"]\n'
        'epsilon = "2"\nmax_per_run = "1"\nshared = true\n')
    [rule] = load_config(tmp_path).policy.dp.budgets
    assert rule.shared and rule.holder("team-a") == rule.holder("team-b") == "shared:team-*"


def test_a_psi_job_with_dp_is_refused_saying_which_kinds_can() -> None:
    text = JOB.format(dp=DP).replace('kind = "query"', 'kind = "psi"').replace(
        '[params]\nsql = "SELECT region, SUM(amount) FROM customers GROUP BY region"\n', "")
    text = text.replace('[[nodes]]\nname = "bank-a"\ndataset = "customers"\n'
                        'columns = ["region", "amount"]\n',
                        '[[nodes]]\nname = "bank-a"\naddress = "a.example:7400"\n'
                        'dataset = "customers"\ncolumns = ["region"]\n'
                        '[[nodes]]\nname = "bank-b"\naddress = "b.example:7400"\n'
                        'dataset = "customers"\ncolumns = ["region"]\n'
                        '[params]\nkey = "region"\n')
    with pytest.raises(InvalidInput, match="a psi job cannot run under differential privacy "
                                           r"\(kinds that can: query, sum\)"):
        parse_job_toml(text, analyst="alice", normalize_sql=lambda s: s, nonce=NONCE, now=NOW)

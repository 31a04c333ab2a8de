"""Differential privacy through a real node: noisy declared groups, a budget that holds under
concurrency and renews on time, precise refusals, the differencing pair defeated, replay.

One node with 600 customers (amount = 10·i + 5, phone masked) whose node.toml requires DP
for every job touching a sensitive column and gives each analyst a pure-ε budget.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from veil.node import catalog, state
from veil.node.client import Client
from veil.node.errors import BudgetExhausted, PolicyDenied, VeilError
from veil.node.home import NodeHome
from veil.node.server import RunningNode, start
from tests.conftest import CUSTOMER_LEVELS, Federation, make_node, run_cli, write_customers

ROWS = 600
DP_POLICY = """
[policy.dp]
require_min_level = "sensitive"

[[policy.dp.budget]]
analysts = ["alice"]
epsilon = "1"
max_per_run = "0.5"
{renew}

[[policy.dp.budget]]
analysts = ["bob"]
epsilon = "0.75"
max_per_run = "0.25"
"""
DP = ('epsilon = {eps}\nmax_rows_per_subject = 1\nbounds = {{ amount = [0, 10000] }}\n'
      'categories = {{ region = ["north", "south", "east", "west"] }}')
SQL = "SELECT region, COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean FROM customers " \
      "GROUP BY region"


def job(sql: str = SQL, dp: str | None = None, *, eps: str = "0.25", runs: int = 10,
        columns: str = '"region", "amount"') -> str:
    expires = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    dp_table = f"[dp]\n{DP.format(eps=eps) if dp is None else dp}\n" if dp != "" else ""
    return f'''
purpose = "Spend by region, under differential privacy"
kind = "query"
expires = {expires}
[quota]
runs = {runs}
[[nodes]]
name = "bank-a"
dataset = "customers"
columns = [{columns}]
[params]
sql = """{sql}"""
{dp_table}'''


def dp_node(federation: Federation, tmp_path: Path, renew: str = "") -> tuple[NodeHome, RunningNode]:
    home = make_node(federation, tmp_path, "bank-a")
    text = home.config_path.read_text().replace(
        "masked_columns = {}", 'masked_columns = { "customers.phone" = "phone" }')
    home.config_path.write_text(text + DP_POLICY.format(renew=renew))
    src = write_customers(tmp_path / "customers.csv", ROWS)
    conn, log = home.connect(), home.open_log()
    try:
        catalog.register(conn, log, home.identity, home.snapshots, node="bank-a",
                         name="customers", source=src, key_column="customer_id",
                         levels=CUSTOMER_LEVELS)
    finally:
        log.close()
        conn.close()
    return home, start(home.path, "127.0.0.1:0")


@pytest.fixture
def node(federation: Federation, tmp_path: Path):  # type: ignore[no-untyped-def]
    home, running = dp_node(federation, tmp_path)
    yield home, running
    running.stop(grace=1)


@pytest.fixture
def people(federation: Federation, node):  # type: ignore[no-untyped-def]
    _home, running = node
    made = {name: Client(running.address, federation.identity(role, name)) for role, name in (
        ("analyst", "alice"), ("analyst", "bob"), ("analyst", "carol"), ("operator", "olga"),
        ("subject-representative", "sam"))}
    yield made
    for c in made.values():
        c.close()


def approved(people, toml: str, analyst: str = "alice") -> str:  # type: ignore[no-untyped-def]
    j = people[analyst].submit_job(toml)
    if people["olga"].approve(j.id).state != "approved":
        people["sam"].approve(j.id)
    return j.id


def test_a_dp_query_releases_every_declared_group_noised_and_spends_the_budget(
        people, node) -> None:  # type: ignore[no-untyped-def]
    home, _ = node
    submitted = people["alice"].submit_job(job())
    lines = "\n".join(people["olga"].job(submitted.id).estimate["lines"])
    assert "each run spends ε = 0.25 (pure ε-DP, discrete Laplace noise)" in lines
    assert "budget left for alice on customers: ε = 1 (4 runs of 0.25)" in lines
    assert "expected error per run (95%): COUNT(*) ±" in lines and "SUM(amount) ±" in lines
    assert "every declared group, each with differentially private noise (none suppressed" \
        in lines and "groups of ≥ 10 subjects" not in lines
    job_id = submitted.id
    if people["olga"].approve(job_id).state != "approved":
        people["sam"].approve(job_id)
    r = people["alice"].query(job_id)
    groups = r.arrays["region"].tolist()
    assert groups == ["north", "south", "east", "west"]  # declared order; west has no rows
    exact = {"north": 200, "south": 200, "east": 200, "west": 0}
    assert r.arrays["n"].tolist() != [exact[g] for g in groups]  # noised
    assert {d["measurement"] for d in r.dp} == {"COUNT(*)", "SUM(amount)", "COUNT(amount)"}
    total = next(d for d in r.dp if d["measurement"] == "SUM(amount)")
    assert total["mechanism"] == "laplace" and total["columns"] == ["total", "mean"]
    # ε = 0.25 over 3 measurements, sensitivity 10,000: a scale of 120,000
    assert total["scale"] == pytest.approx(10_000 / (0.25 / 3), rel=1e-6)
    assert sum(Decimal(d["spent"]) for d in r.dp) <= Decimal("0.25")
    assert r.budget == {"dataset": "customers", "measure": "epsilon", "total": "1",
                        "spent": "0.25", "remaining": "0.75", "period_start":
                        "1970-01-01T00:00:00Z", "period_end": "", "max_per_run": "0.5"}
    # the log holds the budget spent and how each measurement was noised, never the noise
    index = people["alice"].last_receipt.log_index
    conn = state.connect(home.state_path, readonly=True)
    try:
        entry = json.loads(conn.execute("SELECT entry FROM log_entries WHERE idx = ?",
                                        (index,)).fetchone()[0])
        noise = conn.execute("SELECT noise FROM dp_noise WHERE log_index = ?",
                             (index,)).fetchone()
    finally:
        conn.close()
    assert entry["details"]["dp"]["budget"] == {"measure": "epsilon", "spent": "0.25"}
    assert noise is not None and b"noise" not in json.dumps(entry).encode()
    st = people["alice"].statement()
    [line] = [li for li in st.lines if li["log_index"] == index]
    assert line["dp"] == {"dataset": "customers", "measure": "epsilon", "spent": "0.25"}
    assert [(b["dataset"], b["remaining"]) for b in st.budgets] == [("customers", "0.75")]


def test_the_differencing_pair_no_longer_gives_away_one_customer(people, node) -> None:  # type: ignore[no-untyped-def]
    """Without DP, SUM(amount) and SUM(amount) WHERE phone <> one masked phone differ by
    exactly that customer's amount. Under DP each release carries Laplace noise of scale
    bound / ε, 40x the largest amount here, and the two releases spend 2ε of the budget, so
    the difference tells no more than the budget allows."""
    sql = "SELECT COUNT(*) AS n, SUM(amount) AS total FROM customers"
    # customer 7 has phone 13800000007, masked 138****0007, amount 75
    one_less = sql + " WHERE phone <> '138****0007'"
    dp = 'epsilon = 0.25\nmax_rows_per_subject = 1\nbounds = { amount = [0, 10000] }'
    a = approved(people, job(sql, dp, columns='"amount", "phone"'))
    b = approved(people, job(one_less, dp, columns='"amount", "phone"'))
    ra, rb = people["alice"].query(a), people["alice"].query(b)
    difference = int(ra.arrays["total"][0]) - int(rb.arrays["total"][0])
    assert difference != 75
    sum_noise = next(d for d in ra.dp if d["measurement"] == "SUM(amount)")
    assert sum_noise["std"] > 1000 * 75  # the noise dwarfs any one customer's amount
    assert ra.budget["remaining"] == "0.75" and rb.budget["remaining"] == "0.5"


def test_over_budget_is_refused_precisely_and_charges_nothing(people, node) -> None:  # type: ignore[no-untyped-def]
    job_id = approved(people, job(eps="0.25"), analyst="bob")  # bob: ε = 0.75, 3 runs
    for _ in range(3):
        people["bob"].query(job_id)
    with pytest.raises(BudgetExhausted, match=r"analyst 'bob' has ε = 0 left of 0.75 on "
                                              r"dataset 'customers' \(it never renews\); one "
                                              r"run of this job spends 0.25") as info:
        people["bob"].query(job_id)
    assert info.value.status == "RESOURCE_EXHAUSTED"
    assert people["bob"].job(job_id).used["runs"] == 3  # the refusal was not charged
    # bob's budget never renews: a new job that could never run is refused at submission
    with pytest.raises(BudgetExhausted, match="it never renews"):
        people["bob"].submit_job(job(eps="0.25", runs=2))


def test_asking_more_than_the_policy_allows_per_run_is_refused_at_submission(people) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyDenied, match=r"one run would spend 0.5 \(ε\), more than this node "
                                           r"allows per run \(0.25\)"):
        people["bob"].submit_job(job(eps="0.5"))
    with pytest.raises(PolicyDenied, match="no differential-privacy budget for analyst 'carol'"):
        people["carol"].submit_job(job())


@pytest.mark.parametrize("sql, dp, says", [
    (SQL, "", "requires differential privacy for every query job touching a sensitive column"),
    (SQL, 'epsilon = 0.25\nmax_rows_per_subject = 1\n'
          'categories = { region = ["north", "south"] }', "bounds"),
    (SQL, 'epsilon = 0.25\nmax_rows_per_subject = 1\nbounds = { amount = [0, 10000] }', "categories"),
    ("SELECT region, MAX(amount) AS m FROM customers GROUP BY region", None, "max"),
    (SQL, 'epsilon = 0.25\nmax_rows_per_subject = 1\nbounds = { amount = [10000, 0] }\n'
          'categories = { region = ["north"] }', "lower bound 10000 is above the upper bound 0"),
])
def test_queries_dp_cannot_bound_are_refused_saying_what_to_declare(
        people, sql: str, dp: str | None, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(VeilError) as info:
        people["alice"].submit_job(job(sql, dp))
    assert says.lower() in str(info.value).lower(), str(info.value)


def test_concurrent_runs_racing_for_the_last_of_a_budget_never_overspend(people, node) -> None:  # type: ignore[no-untyped-def]
    home, _ = node
    job_id = approved(people, job(eps="0.25"), analyst="bob")  # 3 runs' worth
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        try:
            people["bob"].query(job_id)
            outcomes.append("released")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["released"] * 3
    conn = state.connect(home.state_path, readonly=True)
    try:
        assert conn.execute("SELECT spent FROM dp_spent WHERE analyst = 'bob'").fetchall() == [
            ("0.75",)]
    finally:
        conn.close()


def test_a_renewed_budget_can_be_spent_again(federation: Federation, tmp_path: Path) -> None:
    home, running = dp_node(federation, tmp_path, renew='renew = "3s"')
    try:
        with Client(running.address, federation.identity("analyst", "alice")) as alice, \
                Client(running.address, federation.identity("operator", "olga")) as olga, \
                Client(running.address, federation.identity("subject-representative",
                                                           "sam")) as sam:
            people = {"alice": alice, "olga": olga, "sam": sam}
            job_id = approved(people, job(eps="0.5"))
            first = alice.query(job_id)
            if first.budget["remaining"] != "0.5":  # the period turned between the two
                first = alice.query(job_id)
            alice.query(job_id)
            with pytest.raises(BudgetExhausted, match="when it renews") as info:
                alice.query(job_id)
            end = str(info.value).split(" until ")[1].split(",")[0]
            wait = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.now(UTC)
            time.sleep(max(0.0, wait.total_seconds()) + 0.05)
            again = alice.query(job_id)
            assert again.budget["period_start"] == end and again.budget["spent"] == "0.5"
    finally:
        running.stop(grace=1)


def test_replay_reproduces_every_release_from_the_kept_noise(people, node) -> None:  # type: ignore[no-untyped-def]
    home, _ = node
    job_id = approved(people, job())
    people["alice"].query(job_id)
    people["alice"].query(job_id)
    r = run_cli("audit", "replay", str(home.path))
    assert r.returncode == 0, r.stderr
    assert "2 compute calls replayed, 0 mismatched" in r.stdout
    # the noise kept for one release is altered: the replay names that call
    conn = state.connect(home.state_path)
    try:
        import zlib

        index, blob = conn.execute("SELECT log_index, noise FROM dp_noise ORDER BY 1").fetchone()
        draws = json.loads(zlib.decompress(blob))
        draws[0][0] += 1
        conn.execute("UPDATE dp_noise SET noise = ? WHERE log_index = ?",
                     (zlib.compress(json.dumps(draws).encode()), index))
    finally:
        conn.close()
    r = run_cli("audit", "replay", str(home.path))
    assert r.returncode != 0 and "1 mismatched" in r.stdout and str(index) in r.stdout


def test_thousands_of_declared_categories_keep_the_log_entry_small(people, node) -> None:  # type: ignore[no-untyped-def]
    """The declared categories are the job's (in the node's state), not the entry's: a job
    declaring 3,000 groups logs a release of the same size as one declaring four."""
    home, _ = node
    many = json.dumps(["north", "south", "east"] + [f"region-{i:04d}" for i in range(2997)])
    dp = ('epsilon = 0.25\nmax_rows_per_subject = 1\nbounds = { amount = [0, 10000] }\n'
          f'categories = {{ region = {many} }}')
    r = people["alice"].query(approved(people, job(dp=dp)))
    assert r.rows == 3000 and r.arrays["region"].tolist()[:3] == ["north", "south", "east"]
    conn = state.connect(home.state_path, readonly=True)
    try:
        entry = conn.execute("SELECT entry FROM log_entries WHERE idx = ?",
                             (people["alice"].last_receipt.log_index,)).fetchone()[0]
    finally:
        conn.close()
    assert json.loads(entry)["status"] == "OK" and len(entry) < 4000


def test_a_dp_job_still_lists_after_the_policy_changes_under_it(
        federation: Federation, tmp_path: Path) -> None:
    """The operator puts a column the job sums on the negative list and restarts: the job's
    dry run can no longer be computed, but listing and showing it must not fail, and running
    it is refused by name."""
    home, running = dp_node(federation, tmp_path)
    try:
        with Client(running.address, federation.identity("analyst", "alice")) as alice, \
                Client(running.address, federation.identity("operator", "olga")) as olga, \
                Client(running.address, federation.identity("subject-representative",
                                                           "sam")) as sam:
            job_id = approved({"alice": alice, "olga": olga, "sam": sam}, job())
    finally:
        running.stop(grace=1)
    text = home.config_path.read_text().replace("deny_columns = []",
                                                'deny_columns = ["customers.amount"]')
    home.config_path.write_text(text)
    running = start(home.path, "127.0.0.1:0")
    try:
        with Client(running.address, federation.identity("analyst", "alice")) as alice:
            [listed] = alice.jobs()
            lines = "\n".join(listed.estimate["lines"])
            assert "no estimate under this node's policy now" in lines and "amount" in lines
            with pytest.raises(PolicyDenied, match="amount"):
                alice.query(job_id)
    finally:
        running.stop(grace=1)


def test_a_dp_result_over_max_result_bytes_is_refused_before_release(
        federation: Federation, tmp_path: Path) -> None:
    home, running = dp_node(federation, tmp_path)
    running.stop(grace=1)
    text = home.config_path.read_text().replace("max_result_bytes = 1000000",
                                                "max_result_bytes = 2000")
    home.config_path.write_text(text)
    running = start(home.path, "127.0.0.1:0")
    try:
        with Client(running.address, federation.identity("analyst", "alice")) as alice, \
                Client(running.address, federation.identity("operator", "olga")) as olga, \
                Client(running.address, federation.identity("subject-representative",
                                                           "sam")) as sam:
            many = json.dumps([f"region-{i:04d}" for i in range(500)])
            dp = ('epsilon = 0.25\nmax_rows_per_subject = 1\nbounds = { amount = [0, 10000] }\n'
                  f'categories = {{ region = {many} }}')
            job_id = approved({"alice": alice, "olga": olga, "sam": sam}, job(dp=dp))
            with pytest.raises(VeilError, match="more than the limit of 2,000 bytes"):
                alice.query(job_id)
            st = alice.statement()
            assert st.budgets[0]["spent"] == "0" and not st.lines  # nothing released or spent
    finally:
        running.stop(grace=1)

"""The differentially private path against real DuckDB on a Parquet file made here.

Every refusal names its construct and what to declare instead; every exact value is compared
with a pure-Python computation over the very rows the file was written from (capping, clamping,
NULL, NaN and infinite values, declared and undeclared categories), so the SQL the path
builds is checked against an independent statement of what it should compute.
"""

from __future__ import annotations

import itertools
import math
import pickle
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from veil.sandbox import (
    Column,
    DpExact,
    DpQuery,
    DpSpec,
    Limits,
    Meters,
    Policy,
    QueryLimitExceeded,
    QueryRejected,
    Table,
    Workers,
    _dp,
    dp_result,
    run_dp,
    validate_dp,
)

REGIONS = ["north", "south", "east", "west"]
AMOUNTS = [3.5, -20.0, 75.25, None, float("nan"), float("inf"), float("-inf"), 12.0, 0.25, 49.75]


def _rows() -> list[dict[str, Any]]:
    """60 subjects with 1..5 rows each (subject s has 1 + s % 5), 3 rows with a NULL key, and
    rows in the undeclared region 'mars'. Values vary within a subject so that which rows the
    cap keeps matters."""
    rows = []
    i = 0
    for s in range(60):
        for j in range(1 + s % 5):
            rows.append({
                "person_id": s,
                "region": "mars" if s % 13 == 0 else REGIONS[(s + j) % 4],
                "age_band": 1 + (s + 2 * j) % 3,
                "amount": AMOUNTS[i % len(AMOUNTS)],
                "salary": None if i % 17 == 0 else 1000 + (i * 7919) % 9000 - (4000 if j == 2 else 0),
                "price": Decimal(i * 37 % 2000) / 100,
                "phone": f"1380000{s % 10:04d}",
                "ssn": f"ssn-{s}",
                "score": float(i % 7),
                "flag": s % 2 == 0,
            })
            i += 1
    for n in range(3):
        rows.append({"person_id": None, "region": "north", "age_band": 2, "amount": 1.5,
                     "salary": 100 + n, "price": Decimal("1.00"), "phone": "13800009999",
                     "ssn": "ssn-null", "score": 1.0, "flag": True})
    return rows


ROWS = _rows()
COLUMNS = (
    Column("person_id", "BIGINT", "sensitive"),
    Column("region", "VARCHAR", "internal"),
    Column("age_band", "INTEGER", "public"),
    Column("amount", "DOUBLE", "sensitive"),
    Column("salary", "BIGINT", "sensitive"),
    Column("price", "DECIMAL(10,2)", "sensitive"),
    Column("phone", "VARCHAR", "sensitive"),
    Column("ssn", "VARCHAR", "core"),
    Column("score", "DOUBLE", "internal"),
    Column("flag", "BOOLEAN", "internal"),
)
POLICY = Policy(min_group_size=10, masked_columns={"phone": "phone"})
LIMITS = Limits(timeout_s=20.0)
REGION_SPEC = {"region": (*REGIONS, "atlantis")}


def write_table(path: Path, rows: list[dict[str, Any]]) -> Table:
    con = duckdb.connect()
    try:
        con.execute(
            "CREATE TABLE t (" + ", ".join(f"{c.name} {c.type}" for c in COLUMNS) + ")"
        )
        con.executemany(
            f"INSERT INTO t VALUES ({', '.join('?' for _ in COLUMNS)})",
            [[r[c.name] for c in COLUMNS] for r in rows],
        )
        con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    finally:
        con.close()
    return Table("visits", str(path), COLUMNS, "person_id")


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    return write_table(tmp_path_factory.mktemp("dp") / "visits.parquet", ROWS)


def spec(k: int = 2, bounds: dict[str, tuple[Any, Any]] | None = None,
         categories: dict[str, tuple[Any, ...]] | None = None, scale: int = 0) -> DpSpec:
    return DpSpec(
        max_rows_per_subject=k,
        bounds={c: (Decimal(lo), Decimal(hi)) for c, (lo, hi) in (bounds or {}).items()},
        categories=REGION_SPEC if categories is None else categories,
        scale=scale,
    )


def exact(table: Table, sql: str, dp: DpSpec, limits: Limits = LIMITS) -> DpExact:
    return run_dp(validate_dp(sql, table, POLICY, limits, dp), limits)


# --------------------------------------------------------------------------- the reference


def _order(v: Any) -> tuple[Any, ...]:
    """DuckDB's ASC NULLS LAST order: numbers, then NaN (greater than everything), then NULL."""
    if v is None:
        return (2, 0)
    if isinstance(v, float) and math.isnan(v):
        return (1, 0)
    return (0, v)


def kept(rows: list[dict[str, Any]], k: int, read: list[str]) -> list[dict[str, Any]]:
    """At most k rows per subject, the first by the columns read; NULL keys kept, each alone."""
    out = [r for r in rows if r["person_id"] is None]
    subjects = sorted({r["person_id"] for r in rows if r["person_id"] is not None})
    for s in subjects:
        mine = [r for r in rows if r["person_id"] == s]
        mine.sort(key=lambda r: tuple(_order(r[c]) for c in ["person_id", *read]))
        out += mine[:k]
    return out


def half_away(x: Decimal) -> int:
    """DuckDB's round(): half away from zero."""
    return int(x.to_integral_value(rounding="ROUND_HALF_UP"))


def fixed(v: Any, lo: Decimal, hi: Decimal, scale: int) -> int | None:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return half_away(hi.scaleb(scale))
    if isinstance(v, float) and math.isinf(v):
        return half_away((hi if v > 0 else lo).scaleb(scale))
    clamped = min(max(Decimal(v), lo), hi)
    return half_away(clamped.scaleb(scale))


# --------------------------------------------------------------------------- refused

REFUSED = [
    # the DP shape
    ("SELECT region, count(*) FROM visits GROUP BY region HAVING count(*) > 3", {}, "HAVING"),
    ("SELECT region, count(*) FROM visits GROUP BY region ORDER BY region", {}, "ORDER BY"),
    ("SELECT region, count(*) FROM visits GROUP BY region LIMIT 2", {}, "LIMIT/OFFSET"),
    ("SELECT DISTINCT region, count(*) FROM visits GROUP BY region", {}, "SELECT DISTINCT"),
    ("SELECT count(DISTINCT person_id) FROM visits", {"categories": {}},
     r"COUNT\(DISTINCT \.\.\.\) is not available under differential privacy"),
    ("SELECT region, count(DISTINCT age_band) FROM visits GROUP BY region", {},
     r"COUNT\(DISTINCT"),
    ("SELECT region, sum(DISTINCT score) FROM visits GROUP BY region",
     {"bounds": {"score": (0, 10)}}, r"SUM\(DISTINCT"),
    ("SELECT region, count(*) OVER () FROM visits GROUP BY region", {}, "window function"),
    ("SELECT region, sum(salary) / count(*) FROM visits GROUP BY region",
     {"bounds": {"salary": (0, 10000)}}, r"use AVG\(x\) rather than SUM\(x\)/COUNT\(\*\)"),
    ("SELECT region, count(*) + 1 FROM visits GROUP BY region", {},
     "expression over aggregates"),
    ("SELECT region, min(age_band) FROM visits GROUP BY region", {},
     "MIN has unbounded sensitivity.*not available under differential privacy"),
    ("SELECT region, max(score) FROM visits GROUP BY region", {}, "MAX has unbounded"),
    ("SELECT region, median(score) FROM visits GROUP BY region", {}, "MEDIAN has unbounded"),
    ("SELECT region, sum(1) FROM visits GROUP BY region", {}, "SUM of a literal"),
    ("SELECT region, count(1) FROM visits GROUP BY region", {}, "COUNT of a literal"),
    ("SELECT region, 'x', count(*) FROM visits GROUP BY region", {}, "select item must be"),
    ("SELECT r, n FROM (SELECT region AS r, count(*) AS n FROM visits GROUP BY region) s", {},
     "subquery in FROM is not available under differential privacy"),
    # sums need bounds on numeric columns
    ("SELECT region, sum(amount) FROM visits GROUP BY region", {},
     r"declare bounds for amount: dp.bounds = \{ amount = \[lo, hi\] \}"),
    ("SELECT region, avg(salary) FROM visits GROUP BY region", {},
     r"declare bounds for salary: dp.bounds = \{ salary = \[lo, hi\] \}"),
    ("SELECT count(*), sum(flag) FROM visits", {"categories": {}, "bounds": {"flag": (0, 1)}},
     "SUM/AVG of flag needs a numeric column under differential privacy, and flag is BOOLEAN"),
    ("SELECT count(*), sum(region) FROM visits", {"categories": {}, "bounds": {"region": (0, 1)}},
     r"does not bind.*sum\(VARCHAR\)"),
    ("SELECT region, sum(salary) FROM visits GROUP BY region", {"bounds": {"salary": (5, 1)}},
     "dp.bounds for salary are inverted: lo 5 is greater than hi 1"),
    ("SELECT region, sum(salary) FROM visits GROUP BY region",
     {"bounds": {"salary": ("0", "10.5")}}, "more decimal digits than dp.scale = 0"),
    ("SELECT region, sum(salary) FROM visits GROUP BY region",
     {"bounds": {"salary": ("0", "-0.0")}}, r"\[0, -0.0\] make every value 0"),
    ("SELECT region, sum(amount) FROM visits GROUP BY region",
     {"bounds": {"amount": ("0", "0.125")}, "scale": 2}, "more decimal digits than dp.scale = 2"),
    ("SELECT region, sum(amount) FROM visits GROUP BY region",
     {"bounds": {"amount": ("0", "1e14")}, "scale": 2}, "too large"),
    ("SELECT region, sum(amount) FROM visits GROUP BY region",
     {"bounds": {"amount": ("NaN", "1")}}, "must be finite"),
    ("SELECT region, count(*) FROM visits GROUP BY region", {"k": 1001},
     "dp.max_rows_per_subject must be between 1 and 1,000"),
    ("SELECT region, count(*) FROM visits GROUP BY region", {"k": 0},
     "dp.max_rows_per_subject must be between 1"),
    ("SELECT region, count(*) FROM visits GROUP BY region", {"scale": 16}, "dp.scale must be"),
    # groups are declared
    ("SELECT age_band, count(*) FROM visits GROUP BY age_band", {},
     r"declare the categories of age_band: dp.categories = \{ age_band = \[...\] \}"),
    ("SELECT phone, count(*) FROM visits GROUP BY phone", {"categories": {"phone": ("x",)}},
     "GROUP BY phone is not available under differential privacy: phone is a masked column"),
    ("SELECT upper(region), count(*) FROM visits GROUP BY upper(region)", {},
     "GROUP BY expression"),
    ("SELECT region, count(*) FROM visits GROUP BY region", {"categories": {"region": (1, 2)}},
     "must be str values"),
    ("SELECT age_band, count(*) FROM visits GROUP BY age_band",
     {"categories": {"age_band": ("1", "2")}}, "must be int values"),
    ("SELECT age_band, count(*) FROM visits GROUP BY age_band",
     {"categories": {"age_band": (True, 2)}}, "must be int values"),
    ("SELECT score, count(*) FROM visits GROUP BY score", {"categories": {"score": (1,)}},
     "categories can be declared for text and integer columns only"),
    ("SELECT region, count(*) FROM visits GROUP BY region", {"categories": {"region": ()}},
     "must declare at least one value"),
    ("SELECT region, count(*) FROM visits GROUP BY region",
     {"categories": {"region": ("a", "a")}}, "declares a value twice"),
    # a typo must not pass
    ("SELECT region, count(*) FROM visits GROUP BY region",
     {"categories": {"region": ("a",), "regoin": ("a",)}},
     "dp.categories for regoin is declared but the query does not GROUP BY that column"),
    ("SELECT region, sum(salary) FROM visits GROUP BY region",
     {"bounds": {"salary": (0, 1), "amount": (0, 1)}},
     "dp.bounds for amount is declared but the query does not SUM or AVG that column"),
    # the normal rules still hold
    ("SELECT region, count(ssn) FROM visits GROUP BY region", {}, "classified core"),
    ("SELECT region, count(*) FROM visits WHERE salary > 10 GROUP BY region", {},
     "sensitive column 'salary'"),
    ("SELECT salary, count(*) FROM visits GROUP BY salary", {"categories": {"salary": (1,)}},
     "sensitive column 'salary'"),
    ("SELECT person_id, count(*) FROM visits GROUP BY person_id",
     {"categories": {"person_id": (1,)}}, "key column 'person_id'"),
    ("SELECT region, sum(CASE WHEN age_band = 1 THEN salary END) FROM visits GROUP BY region",
     {}, "must be a plain column"),
    ("SELECT region, count(*) FROM read_parquet('/etc/x') GROUP BY region", {},
     "function read_parquet"),
]


@pytest.mark.parametrize(("sql", "options", "match"), REFUSED)
def test_refused(table: Table, sql: str, options: dict[str, Any], match: str) -> None:
    dp = spec(**options)
    with pytest.raises(QueryRejected, match=match):
        validate_dp(sql, table, POLICY, LIMITS, dp)


def test_grid_larger_than_the_result_row_limit_is_refused(table: Table) -> None:
    sql = "SELECT region, age_band, count(*) FROM visits GROUP BY region, age_band"
    dp = spec(categories={"region": tuple(REGIONS), "age_band": (1, 2, 3)})
    assert len(validate_dp(sql, table, POLICY, Limits(max_result_rows=12), dp).cells) == 12
    with pytest.raises(QueryRejected, match="more than 11 cells"):
        validate_dp(sql, table, POLICY, Limits(max_result_rows=11), dp)


def test_a_sum_that_could_overflow_over_the_snapshot_is_refused(tmp_path: Path) -> None:
    big = write_table(tmp_path / "big.parquet", ROWS * 30)  # 5,490 rows
    sql = "SELECT sum(amount) FROM visits"
    fits = spec(bounds={"amount": (0, "1e14")}, categories={}, scale=1)  # 5,490e15 > 2**62
    with pytest.raises(QueryRejected, match=r"could reach 5,490 rows x 1,000,000,000,000,000"):
        exact(big, sql, fits)
    assert exact(big, sql, spec(bounds={"amount": (0, "1e13")}, categories={}, scale=1))


def test_spec_types_are_checked() -> None:
    with pytest.raises(TypeError, match="max_rows_per_subject must be an int"):
        DpSpec(max_rows_per_subject=True)
    with pytest.raises(TypeError, match="pair of Decimal"):
        DpSpec(1, bounds={"x": (0.0, 1.0)})
    with pytest.raises(TypeError, match="tuple of values"):
        DpSpec(1, categories={"x": ["a"]})
    with pytest.raises(ValueError, match="names a column twice"):
        DpSpec(1, categories={"x": ("a",), "X": ("b",)})


# --------------------------------------------------------------------------- exact values


def test_capped_counts_and_sums_keep_k_rows_per_subject(table: Table) -> None:
    sql = ("SELECT region, count(*) AS n, sum(salary) AS s, count(salary) AS c, "
           "avg(salary) AS a FROM visits WHERE age_band <= 2 GROUP BY region")
    dp = spec(k=2, bounds={"salary": (0, 8000)})
    query = validate_dp(sql, table, POLICY, LIMITS, dp)
    got = run_dp(query, LIMITS)
    assert got.capped  # subjects have up to 5 rows

    passing = [r for r in ROWS if r["age_band"] <= 2 and r["region"] in REGION_SPEC["region"]]
    rows = kept(passing, 2, ["region", "salary"])
    assert [(m.kind, m.column) for m in query.measurements] == [
        ("count", None), ("sum", "salary"), ("count", "salary")]
    for c, (region,) in enumerate(query.cells):
        cell = [r for r in rows if r["region"] == region]
        salaries = [fixed(r["salary"], Decimal(0), Decimal(8000), 0) for r in cell]
        assert got.values[0][c] == len(cell)
        assert got.values[1][c] == sum(s for s in salaries if s is not None)
        assert got.values[2][c] == sum(s is not None for s in salaries)
    assert got.values[0][query.cells.index(("atlantis",))] == 0
    assert sum(got.values[0]) == len(rows) < len(passing)  # the cap did bite
    assert got.meters.result_rows == 5 and got.meters.rows_scanned > 0


def test_fast_path_and_capped_path_agree_when_no_subject_has_more_than_k(table: Table) -> None:
    sql = ("SELECT region, age_band, count(*), sum(amount), count(amount), sum(price) "
           "FROM visits GROUP BY region, age_band")
    dp = spec(k=5, bounds={"amount": (-10, 50), "price": (0, 15)}, scale=2,
              categories={"region": tuple(REGIONS), "age_band": (3, 1, 2)})
    query = validate_dp(sql, table, POLICY, LIMITS, dp)
    fast = run_dp(query, LIMITS)
    forced = _dp._run_dp(query, LIMITS, force_cap=True)
    assert not fast.capped and forced.capped
    assert fast.values == forced.values
    # and both are the plain, uncapped computation
    assert query.cells == tuple(itertools.product(REGIONS, (3, 1, 2)))
    for c, (region, band) in enumerate(query.cells):
        cell = [r for r in ROWS if r["region"] == region and r["age_band"] == band]
        amounts = [fixed(r["amount"], Decimal(-10), Decimal(50), 2) for r in cell]
        prices = [fixed(r["price"], Decimal(0), Decimal(15), 2) for r in cell]
        assert fast.values[0][c] == len(cell)
        assert fast.values[1][c] == sum(a for a in amounts if a is not None)
        assert fast.values[2][c] == sum(a is not None for a in amounts)
        assert fast.values[3][c] == sum(p for p in prices if p is not None)


def test_clamping_bounds_outliers_nan_and_infinities_and_skips_nulls(table: Table) -> None:
    dp = spec(k=5, bounds={"amount": ("-2.5", "40.5")}, categories={}, scale=1)
    got = exact(table, "SELECT sum(amount) AS s, count(amount) AS c FROM visits", dp)
    amounts = [r["amount"] for r in ROWS]
    expected = [fixed(a, Decimal("-2.5"), Decimal("40.5"), 1) for a in amounts]
    assert got.values == ((sum(e for e in expected if e is not None),),
                          (sum(a is not None for a in amounts),))
    # every kind of value occurs, so each branch of the clamp was exercised
    assert {fixed(a, Decimal("-2.5"), Decimal("40.5"), 1) for a in AMOUNTS} >= {
        None, 405, -25, 35, 3}
    assert half_away(Decimal("2.5")) == 3  # 0.25 * 10 rounds away from zero, like DuckDB


def test_integer_sum_is_clamped_in_integer_arithmetic(table: Table) -> None:
    dp = spec(k=5, bounds={"salary": (2000, 6000)}, categories={})
    query = validate_dp("SELECT sum(salary) FROM visits", table, POLICY, LIMITS, dp)
    assert query.measurements[0].sensitivity == 5 * 6000
    got = run_dp(query, LIMITS)
    expected = sum(min(max(r["salary"], 2000), 6000) for r in ROWS if r["salary"] is not None)
    assert got.values == ((expected,),)


def test_declared_categories_decide_the_cells(table: Table) -> None:
    dp = spec(k=5, categories={"region": ("atlantis", "west", "north")})
    got = exact(table, "SELECT region, count(*) FROM visits GROUP BY region", dp)
    west = sum(r["region"] == "west" for r in ROWS)
    north = sum(r["region"] == "north" for r in ROWS)
    assert got.values == ((0, west, north),)  # declared order; 'mars' rows are nowhere
    assert any(r["region"] == "mars" for r in ROWS)


def test_null_keys_count_as_one_subject_each(table: Table) -> None:
    got = exact(table, "SELECT count(*) FROM visits", spec(k=1, categories={}))
    subjects = len({r["person_id"] for r in ROWS if r["person_id"] is not None})
    assert got.capped and got.values == ((subjects + 3,),)


def test_measurements_are_shared_and_sensitivities_stated(table: Table) -> None:
    sql = ("SELECT count(*), avg(price), sum(price), count(price), count(*) AS again "
           "FROM visits")
    dp = spec(k=3, bounds={"price": ("-1.25", "20")}, categories={}, scale=2)
    query = validate_dp(sql, table, POLICY, LIMITS, dp)
    assert [(m.kind, m.column, m.sensitivity) for m in query.measurements] == [
        ("count", None, 3), ("sum", "price", 3 * 2000), ("count", "price", 3)]
    assert [(o.kind, o.refs) for o in query.outputs] == [
        ("measurement", (0,)), ("avg", (1, 2)), ("measurement", (1,)), ("measurement", (2,)),
        ("measurement", (0,))]
    assert query.cells == ((),)


def test_where_is_applied_before_the_cap(table: Table) -> None:
    dp = spec(k=1, categories={})
    got = exact(table, "SELECT count(*) FROM visits WHERE age_band = 3", dp)
    subjects = {r["person_id"] for r in ROWS if r["age_band"] == 3}
    assert got.values == ((len(subjects),),)  # every subject with such a row counts once


def test_dp_query_pickles(table: Table) -> None:
    dp = spec(bounds={"salary": (0, 1)})
    query = validate_dp("SELECT region, sum(salary) FROM visits GROUP BY region", table,
                        POLICY, LIMITS, dp)
    again = pickle.loads(pickle.dumps(query))
    assert isinstance(again, DpQuery) and again == query
    assert run_dp(again, LIMITS).values == run_dp(query, LIMITS).values


# --------------------------------------------------------------------------- release


def test_dp_result_types_null_average_and_unclamped_counts(table: Table) -> None:
    sql = ("SELECT region, count(*) AS n, sum(amount) AS s, avg(amount) AS a "
           "FROM visits GROUP BY region")
    dp = spec(bounds={"amount": (0, 100)}, scale=1)
    query = validate_dp(sql, table, POLICY, LIMITS, dp)
    meters = Meters(rows_scanned=10, result_rows=5, cpu_ms=1, wall_ms=2, bytes_out=0)
    counts, sums, amount_counts = [7, -3, 0, 2, 1], [105, 50, 9, 1, -7], [4, 3, 0, -1, 3]
    result = dp_result(query, [counts, sums, amount_counts], meters)
    assert result.columns == ("region", "n", "s", "a")
    assert result.types == ("VARCHAR", "BIGINT", "DOUBLE", "DOUBLE")
    assert list(result.arrays["region"]) == [*REGIONS, "atlantis"]
    assert list(result.arrays["n"]) == counts  # a negative noisy count stays: unbiased
    assert list(result.arrays["s"]) == [10.5, 5.0, 0.9, 0.1, -0.7]
    avg = result.arrays["a"]
    assert list(avg.mask) == [False, False, True, True, False]
    assert avg[0] == 105 / 40 and avg[1] == 50 / 30 and avg[4] == -7 / 30
    assert result.suppressed_groups == 0 and result.tables_used == ("visits",)
    assert result.meters.result_rows == 5 and result.meters.bytes_out > 0
    assert result.meters.rows_scanned == 10

    same = dp_result(query, [list(counts), list(sums), list(amount_counts)], meters)
    assert same.digest == result.digest
    other = dp_result(query, [counts, sums, [4, 3, 0, -1, 4]], meters)
    assert other.digest != result.digest


def test_dp_result_at_scale_zero_sums_are_integers(table: Table) -> None:
    dp = spec(bounds={"salary": (0, 100)}, categories={})
    query = validate_dp("SELECT sum(salary) AS s FROM visits", table, POLICY, LIMITS, dp)
    result = dp_result(query, [[12]], run_dp(query, LIMITS).meters)
    assert result.types == ("BIGINT",) and list(result.arrays["s"]) == [12]


def test_dp_result_checks_the_noisy_values(table: Table) -> None:
    dp = spec(categories={})
    query = validate_dp("SELECT count(*) FROM visits", table, POLICY, LIMITS, dp)
    meters = run_dp(query, LIMITS).meters
    with pytest.raises(ValueError, match="1 vectors of 1 values"):
        dp_result(query, [[1, 2]], meters)
    with pytest.raises(TypeError, match="noisy values must be ints"):
        dp_result(query, [[1.5]], meters)
    with pytest.raises(ValueError, match="signed 64-bit"):
        dp_result(query, [[2**63]], meters)


# --------------------------------------------------------------------------- limits, workers


def test_time_limit_holds(table: Table) -> None:
    with pytest.raises(QueryLimitExceeded) as info:
        exact(table, "SELECT region, count(*) FROM visits GROUP BY region", spec(),
              limits=Limits(timeout_s=1e-6))
    assert info.value.limit == "timeout"
    assert exact(table, "SELECT count(*) FROM visits", spec(categories={})).values  # healthy


def test_workers_run_dp_equals_run_dp(table: Table) -> None:
    sql = "SELECT region, count(*), avg(salary) FROM visits GROUP BY region"
    dp = spec(k=2, bounds={"salary": (0, 9000)})
    local = exact(table, sql, dp)
    with Workers(1) as pool:
        remote = pool.run_dp(sql, table, POLICY, LIMITS, dp)
        assert (remote.values, remote.capped) == (local.values, local.capped)
        assert remote.meters.result_rows == 5
        with pytest.raises(QueryRejected, match="HAVING"):
            pool.run_dp(sql + " HAVING count(*) > 1", table, POLICY, LIMITS, dp)
        # the same worker still answers a normal query
        assert pool.run("SELECT count(*) AS n FROM visits", [table], POLICY, LIMITS).columns


@pytest.mark.parametrize("sql", [
    "SELECT region, count(*) FROM visits GROUP BY region",
    "SELECT v.region, count(*) FROM visits AS v GROUP BY v.region",
    "SELECT region, count(*) FROM visits GROUP BY 1",
    "SELECT region, count(*) FROM visits GROUP BY ALL",
    "SELECT region AS r, count(*) FROM visits GROUP BY r",
])
def test_spellings_of_the_same_grouping_give_the_same_values(table: Table, sql: str) -> None:
    got = exact(table, sql, spec(k=2))
    assert got.values == exact(table, "SELECT region, count(*) FROM visits GROUP BY region",
                               spec(k=2)).values
    assert got.values[0][-1] == 0 and sum(got.values[0]) > 0


def test_where_on_an_aliased_table_holds_on_both_paths(table: Table) -> None:
    sql = ("SELECT v.region, mean(v.salary) FROM visits v WHERE v.age_band = 2 "
           "GROUP BY v.region")
    query = validate_dp(sql, table, POLICY, LIMITS, spec(k=5, bounds={"salary": (0, 9000)}))
    fast, forced = run_dp(query, LIMITS), _dp._run_dp(query, LIMITS, force_cap=True)
    assert fast.values == forced.values and not fast.capped
    north = [r for r in ROWS if r["region"] == "north" and r["age_band"] == 2]
    assert fast.values[1][0] == sum(r["salary"] is not None for r in north)
    assert [o.kind for o in query.outputs] == ["key", "avg"]


def test_bounds_that_hold_across_the_snapshot_skip_the_clamp_with_the_same_values(
        table: Table) -> None:
    """A snapshot whose values all lie within the bounds is summed without the idle clamp; one
    value outside (here the maximum, one unit above) brings the clamp back, and cuts it."""
    from veil.sandbox._engine import session_for

    salaries = [r["salary"] for r in ROWS if r["salary"] is not None]
    lo, hi = min(salaries), max(salaries)
    sql = "SELECT sum(salary) FROM visits"
    loose = validate_dp(sql, table, POLICY, LIMITS, spec(k=5, bounds={"salary": (lo, hi)},
                                                         categories={}))
    tight = validate_dp(sql, table, POLICY, LIMITS, spec(k=5, bounds={"salary": (lo, hi - 1)},
                                                         categories={}))
    with session_for(loose._core, LIMITS) as (session, snapshot):
        assert _dp._within_bounds(session, loose, loose.measurements[0], snapshot)
        assert not _dp._within_bounds(session, tight, tight.measurements[0], snapshot)
    assert "least(" not in _dp._statement(loose, False, [False], False)
    assert run_dp(loose, LIMITS).values == ((sum(salaries),),)
    assert run_dp(tight, LIMITS).values == ((sum(min(s, hi - 1) for s in salaries),),)
    # NaN and infinities in a DOUBLE column always keep the clamp, whatever the bounds
    wide = validate_dp("SELECT sum(amount) FROM visits", table, POLICY, LIMITS,
                       spec(k=5, bounds={"amount": (-10**6, 10**6)}, categories={}))
    with session_for(wide._core, LIMITS) as (session, snapshot):
        assert not _dp._within_bounds(session, wide, wide.measurements[0], snapshot)


def test_few_groups_are_computed_in_full_and_the_undeclared_dropped(table: Table) -> None:
    from veil.sandbox._engine import session_for

    query = validate_dp("SELECT region, count(*), sum(salary) FROM visits GROUP BY region",
                        table, POLICY, LIMITS, spec(k=5, bounds={"salary": (0, 10**4)}))
    with session_for(query._core, LIMITS) as (session, snapshot):
        assert _dp._few_groups(session, query, snapshot)  # 5 regions, 'mars' among them
        clamp = [True, True]
        full = session.execute(_dp._statement(query, False, clamp, filtered=False))
        kept_only = session.execute(_dp._statement(query, False, clamp, filtered=True))
    assert {r[0] for r in full} == {*REGIONS, "mars"} and "mars" not in {r[0] for r in kept_only}
    counts = run_dp(query, LIMITS).values[0]  # computed in full, then mapped onto the cells
    assert counts == tuple(sum(r["region"] == cell[0] for r in ROWS) for cell in query.cells)
    assert counts[-1] == 0  # 'atlantis', declared, has no rows


def test_few_heavy_subjects_are_ranked_apart_and_the_same_rows_kept(table: Table) -> None:
    """With k = 2 the subjects with 3 to 5 rows are the heavy ones: only their rows are
    ranked; the values are those of the window over every row (and of the reference)."""
    from veil.sandbox._engine import _subject_stats, session_for

    sql = ("SELECT region, count(*), sum(salary), count(salary) FROM visits "
           "WHERE age_band <> 3 GROUP BY region")
    query = validate_dp(sql, table, POLICY, LIMITS, spec(k=2, bounds={"salary": (0, 10**4)}))
    with session_for(query._core, LIMITS) as (session, snapshot):
        stats = _subject_stats(session, query._core, 1, snapshot)
        assert stats is not None
        heavy = _dp._heavy_subjects(session, query, stats.top, snapshot)
        assert heavy == tuple(s for s in range(60) if 1 + s % 5 > 2)
        apart = session.execute(_dp._statement(query, True, None, True, heavy))
        whole = session.execute(_dp._statement(query, True, None, True, None))
    assert "row_number" in _dp._statement(query, True, None, True, heavy)
    assert sorted(apart, key=str) == sorted(whole, key=str)
    assert run_dp(query, LIMITS).capped

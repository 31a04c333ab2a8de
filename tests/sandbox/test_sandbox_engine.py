"""The sandbox query engine against real DuckDB on small Parquet files made here.

Each hostile construct is refused (or limited) with its construct named, and a normal query
still works afterwards in the same process; positive results are compared with a direct
DuckDB computation on the same file.
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from pathlib import Path

import duckdb
import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil import sandbox
from veil.sandbox import (
    Column,
    Limits,
    Policy,
    QueryLimitExceeded,
    QueryRejected,
    SandboxError,
    Table,
    _engine,
    normalize,
    run,
    validate,
)

# 300 customers with 10 rows each in four regions of 75, plus customer 999 alone in "tiny"
# (3 rows). Phones end in customer % 20, so the masked phones form 20 groups of 15 customers.
DATA = """
SELECT c AS customer_id,
       CASE WHEN c = 999 THEN 'tiny' ELSE ['north', 'south', 'east', 'west'][1 + c % 4] END AS region,
       'city' || (c % 3) AS city,
       20 + c % 50 AS age,
       round((i * 37 % 1000) / 10.0, 1)::DOUBLE AS amount,
       1000 + (c * 7919 % 5000) AS salary,
       '138' || lpad((c * 13 % 10000)::VARCHAR, 4, '0') || lpad((c % 20)::VARCHAR, 4, '0') AS phone,
       'ssn-' || c AS ssn,
       'note' AS note
FROM (SELECT i, CASE WHEN i >= 3000 THEN 999 ELSE i // 10 END AS c FROM range(3003) r(i))
"""
COLUMNS = (
    Column("customer_id", "BIGINT", "sensitive"),
    Column("region", "VARCHAR", "internal"),
    Column("city", "VARCHAR", "public"),
    Column("age", "BIGINT", "internal"),
    Column("amount", "DOUBLE", "sensitive"),
    Column("salary", "BIGINT", "sensitive"),
    Column("phone", "VARCHAR", "sensitive"),
    Column("ssn", "VARCHAR", "core"),
    Column("note", "VARCHAR", "internal"),
)
POLICY = Policy(
    min_group_size=10, masked_columns={"phone": "phone"}, denied_columns=frozenset({"note"})
)
LIMITS = Limits(timeout_s=20.0)
NORMAL = "SELECT region, count(*) AS n FROM customers GROUP BY region ORDER BY region"


def write_parquet(path: Path, sql: str) -> None:
    con = duckdb.connect()
    try:
        con.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)")
    finally:
        con.close()


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    path = tmp_path_factory.mktemp("sandbox") / "customers.parquet"
    write_parquet(path, DATA)
    return Table("customers", str(path), COLUMNS, "customer_id")


def direct(table: Table, sql: str) -> list[tuple[object, ...]]:
    """The same computation in plain DuckDB, for comparison."""
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW customers AS SELECT * FROM read_parquet('{table.path}')")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def query(
    table: Table, sql: str, policy: Policy = POLICY, limits: Limits = LIMITS
) -> sandbox.QueryResult:
    return run(validate(sql, [table], policy, limits), limits)


def assert_healthy(table: Table) -> None:
    result = query(table, NORMAL)
    assert list(result.arrays["region"]) == ["east", "north", "south", "west"]
    assert list(result.arrays["n"]) == [750, 750, 750, 750]


# --------------------------------------------------------------------------- refused


REJECTED = [
    # files and the outside world
    ("SELECT * FROM read_csv('/etc/passwd')", "function read_csv"),
    ("SELECT count(*) FROM read_text('/etc/hostname')", "function read_text"),
    ("SELECT count(*) FROM 'x.csv'", "table 'x.csv'"),
    ("SELECT * FROM '/etc/passwd'", "table '/etc/passwd'"),
    ("SELECT * FROM glob('/*')", "function glob"),
    ("SELECT count(*) FROM read_parquet('/tmp/x.parquet')", "function read_parquet"),
    ("SELECT count(*) FROM parquet_metadata('/tmp/x.parquet')", "function parquet_metadata"),
    ("SELECT count(*) FROM range(10)", "function range"),
    ("SELECT count(*) FROM main.customers", "table 'main.customers'"),
    ("SELECT system.main.read_csv('x')", "function system.main.read_csv"),
    # statements that are not SELECT
    ("COPY customers TO '/tmp/out.csv'", "COPY statement"),
    ("COPY (SELECT 1) TO '/tmp/out.csv'", "COPY statement"),
    ("ATTACH '/tmp/other.db' AS other", "ATTACH statement"),
    ("INSTALL httpfs", "INSTALL statement"),
    ("LOAD httpfs", "LOAD statement"),
    ("PRAGMA version", "PRAGMA statement"),
    ("SET threads = 64", "SET statement"),
    ("SET lock_configuration = false", "SET statement"),
    ("CALL pragma_version()", "CALL statement"),
    ("EXPLAIN SELECT count(*) FROM customers", "EXPLAIN statement"),
    ("CREATE TABLE x AS SELECT 1", "CREATE statement"),
    ("SELECT count(*) FROM customers; SELECT count(*) FROM customers", "SQL"),
    ("SELECT count(*) FROM customers; COPY customers TO '/tmp/x.csv'", "COPY statement"),
    # introspection and environment
    ("SELECT getenv('HOME')", "function getenv"),
    ("SELECT count(*) FROM customers WHERE region = getenv('HOME')", "function getenv"),
    ("SELECT current_setting('allowed_paths')", "function current_setting"),
    ("SELECT * FROM duckdb_settings()", "function duckdb_settings"),
    ("SELECT count(*) FROM duckdb_tables()", "function duckdb_tables"),
    ("SELECT * FROM duckdb_extensions()", "function duckdb_extensions"),
    ("SELECT count(*) FROM duckdb_functions()", "function duckdb_functions"),
    ("SELECT count(*) FROM pragma_table_info('customers')", "function pragma_table_info"),
    ("DESCRIBE customers", "DESCRIBE/SHOW/SUMMARIZE"),
    ("SUMMARIZE customers", "DESCRIBE/SHOW/SUMMARIZE"),
    # resource exhaustion, refused before running
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        "recursive CTE",
    ),
    ("SELECT count(*) FROM customers a, customers b, customers c, customers d", "JOIN"),
    ("SELECT count(*) FROM customers WHERE region = repeat('x', 1000000000)", "function repeat"),
    # classification
    ("SELECT salary FROM customers", "sensitive column 'salary'"),
    (
        "SELECT region, salary, count(*) FROM customers GROUP BY region, salary",
        "sensitive column 'salary'",
    ),
    ("SELECT count(*) FROM customers WHERE salary > 4000", "sensitive column 'salary'"),
    (
        "SELECT region, count(*) FROM customers GROUP BY region ORDER BY salary",
        "sensitive column 'salary'",
    ),
    (
        "SELECT customer_id, count(*) FROM customers GROUP BY customer_id",
        "key column 'customer_id'",
    ),
    ("SELECT count(*) FROM customers GROUP BY customer_id", "key column 'customer_id'"),
    ("SELECT count(*) FROM customers WHERE customer_id = '42'", "key column 'customer_id'"),
    ("SELECT sum(customer_id) FROM customers", "key column 'customer_id'"),
    ("SELECT count(ssn) FROM customers", "column 'ssn'"),
    (
        "SELECT region, count(*) FROM customers WHERE ssn LIKE 'ssn-1%' GROUP BY region",
        "column 'ssn'",
    ),
    ("SELECT note, count(*) FROM customers GROUP BY note", "column 'note'"),
    (
        "SELECT region, max(salary) FROM customers GROUP BY region",
        "MAX on sensitive column 'salary'",
    ),
    (
        "SELECT region, min(amount) FROM customers GROUP BY region",
        "MIN on sensitive column 'amount'",
    ),
    ("SELECT region, max(phone) FROM customers GROUP BY region", "masked column 'phone'"),
    # singling out within one query
    ("SELECT * FROM customers", "SELECT *"),
    ("SELECT region, age FROM customers", "query"),
    (
        "SELECT region, sum(salary) FILTER (WHERE age = 33) FROM customers GROUP BY region",
        "FILTER clause on SUM",
    ),
    (
        "SELECT region, sum(CASE WHEN age = 33 THEN salary END) FROM customers GROUP BY region",
        "argument of SUM",
    ),
    (
        "SELECT region, count(CASE WHEN age = 33 THEN 1 END) FROM customers GROUP BY region",
        "argument of COUNT",
    ),
    (
        "SELECT region, count(*) FROM customers GROUP BY ROLLUP (region)",
        "GROUPING SETS/ROLLUP/CUBE",
    ),
    (
        "SELECT region, count(*) FROM customers GROUP BY GROUPING SETS ((region), ())",
        "GROUPING SETS/ROLLUP/CUBE",
    ),
    (
        "SELECT sum(salary) FROM customers UNION ALL SELECT sum(salary) FROM customers WHERE age <> 33",
        "UNION/INTERSECT/EXCEPT",
    ),
    (
        "SELECT sum(salary) - (SELECT sum(salary) FROM customers WHERE age <> 33) FROM customers",
        "subquery in an expression",
    ),
    (
        "SELECT count(*) FROM customers WHERE region IN (SELECT region FROM customers GROUP BY region)",
        "subquery in an expression",
    ),
    (
        "SELECT region, rank() OVER (ORDER BY count(*)) FROM customers GROUP BY region",
        "window function rank",
    ),
    ("SELECT count(*) FROM customers USING SAMPLE 50%", "SAMPLE"),
    ("SELECT count(*) FROM customers WHERE random() < 0.5", "function random"),
    (
        "SELECT region, count(*) FROM customers GROUP BY region HAVING list(salary) IS NOT NULL",
        "function list",
    ),
    ("SELECT count(*) FROM customers WHERE region = $1", "prepared-statement parameter"),
    ("SELECT region.upper(), count(*) FROM customers GROUP BY 1", "function region.upper"),
    ("SELECT count(*) AS __veil_ok FROM customers", "name '__veil_ok'"),
    ("SELECT count(*) FROM customers AS __veil_g", "name '__veil_g'"),
]


@pytest.mark.parametrize(("sql", "construct"), REJECTED, ids=[s for s, _ in REJECTED])
def test_refused_with_construct_named(table: Table, sql: str, construct: str) -> None:
    with pytest.raises(QueryRejected) as info:
        validate(sql, [table], POLICY, LIMITS)
    assert info.value.construct == construct
    assert str(info.value).startswith(construct)
    assert_healthy(table)


def test_refused_function_message(table: Table) -> None:
    with pytest.raises(QueryRejected, match="^function read_csv is not allowed$"):
        validate("SELECT * FROM read_csv('/etc/passwd')", [table], POLICY, LIMITS)
    with pytest.raises(
        QueryRejected, match=re.escape("table 'x.csv' is not one of the job's datasets (customers)")
    ):
        validate("SELECT count(*) FROM 'x.csv'", [table], POLICY, LIMITS)


def test_denied_function_is_named(table: Table) -> None:
    policy = Policy(denied_functions=frozenset({"AVG"}))
    with pytest.raises(QueryRejected, match="function avg is on the policy's negative list"):
        validate("SELECT avg(amount) FROM customers", [table], policy, LIMITS)


def test_ten_megabyte_query_refused_before_parsing(table: Table) -> None:
    sql = "SELECT count(*) FROM customers WHERE region = '" + "x" * 10_000_000 + "'"
    with pytest.raises(QueryLimitExceeded) as info:
        validate(sql, [table], POLICY, LIMITS)
    assert info.value.limit == "sql size"
    assert "100,000" in str(info.value)
    assert_healthy(table)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM customers WHERE age" + " + 1" * 300 + " > 3",
        "SELECT count(*) FROM customers WHERE age" + " + 1" * 5000 + " > 3",
        "SELECT count(*) FROM customers WHERE " + "NOT " * 5000 + "age > 3",
        "SELECT count(*) FROM customers WHERE region = '\ud800'",
    ],
    ids=["deep-300", "deep-5000", "not-5000", "lone-surrogate"],
)
def test_pathological_text_is_refused(table: Table, sql: str) -> None:
    with pytest.raises(QueryRejected):
        validate(sql, [table], POLICY, LIMITS)
    assert_healthy(table)


def test_validation_touches_no_data() -> None:
    missing = Table("customers", "/nonexistent/customers.parquet", COLUMNS, "customer_id")
    v = validate(
        "SELECT region, count(*) FROM customers GROUP BY region", [missing], POLICY, LIMITS
    )
    assert v.tables_used == ("customers",)
    with pytest.raises(SandboxError, match="does not exist"):
        run(v, LIMITS)


# --------------------------------------------------------------------------- answers


def test_group_by_internal_with_sensitive_aggregates_matches_duckdb(table: Table) -> None:
    result = query(
        table,
        "SELECT region, COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean, "
        "SUM(salary) AS salaries, AVG(salary) AS avg_salary, COUNT(DISTINCT customer_id) AS people "
        "FROM customers GROUP BY region ORDER BY region",
    )
    expected = direct(
        table,
        "SELECT region, COUNT(*), SUM(amount), AVG(amount), SUM(salary), AVG(salary), "
        "COUNT(DISTINCT customer_id) FROM customers GROUP BY region "
        "HAVING COUNT(DISTINCT customer_id) >= 10 ORDER BY region",
    )
    assert result.columns == ("region", "n", "total", "mean", "salaries", "avg_salary", "people")
    assert result.types[:3] == ("VARCHAR", "BIGINT", "DOUBLE")
    assert result.suppressed_groups == 1  # "tiny": one customer
    assert list(result.arrays["region"]) == [r[0] for r in expected]
    assert list(result.arrays["n"]) == [r[1] for r in expected]
    numpy.testing.assert_allclose(result.arrays["total"], [r[2] for r in expected], rtol=1e-12)
    numpy.testing.assert_allclose(result.arrays["mean"], [r[3] for r in expected], rtol=1e-12)
    assert list(result.arrays["salaries"]) == [r[4] for r in expected]  # HUGEINT, exact
    numpy.testing.assert_allclose(result.arrays["avg_salary"], [r[5] for r in expected])
    assert list(result.arrays["people"]) == [75, 75, 75, 75]
    assert result.tables_used == ("customers",)
    m = result.meters
    assert m.rows_scanned >= 3003 and m.result_rows == 4 and m.bytes_out > 0 and m.wall_ms >= 0


def test_group_of_one_is_suppressed_and_counted(table: Table) -> None:
    result = query(
        table, "SELECT count(*) AS n, sum(salary) AS s FROM customers WHERE region = 'tiny'"
    )
    assert result.suppressed_groups == 1
    assert list(result.arrays["n"]) == [] and list(result.arrays["s"]) == []
    # a CASE in GROUP BY that isolates one person: that group is dropped, the rest stays
    result = query(
        table,
        "SELECT CASE WHEN age = 20 AND city = 'city0' THEN 'them' ELSE 'rest' END AS who, "
        "count(*) AS n FROM customers GROUP BY who ORDER BY who",
    )
    assert list(result.arrays["who"]) == ["rest"]
    assert result.suppressed_groups == 1


@pytest.mark.parametrize("threshold", [0, 6000, 6242, 6243, 6244, 10**9])
def test_having_cannot_probe_a_suppressed_group(table: Table, threshold: int) -> None:
    # customer 999 ("tiny") has salary 2081 on 3 rows: 6243. Were suppressed groups counted
    # after HAVING, the count would answer "is their total above the threshold?"
    for sql in (
        f"SELECT count(*) AS n FROM customers WHERE region = 'tiny' HAVING sum(salary) > {threshold}",
        f"SELECT region, count(*) AS n FROM customers GROUP BY region HAVING sum(salary) > {threshold}",
    ):
        assert query(table, sql).suppressed_groups == 1


def test_expressions_never_run_on_a_suppressed_group(table: Table) -> None:
    # an expression that fails only on the small group's aggregate would reveal it by failing
    result = query(
        table,
        "SELECT region, CAST(CASE WHEN sum(salary) = 6243 THEN 'boom' ELSE '1' END AS INTEGER) AS x "
        "FROM customers GROUP BY region ORDER BY CAST(CASE WHEN sum(salary) = 6243 THEN 'boom' ELSE '2' END AS INTEGER)",
    )
    assert result.arrays["x"].tolist() == [1, 1, 1, 1]
    assert result.suppressed_groups == 1


def test_having_order_limit_apply_to_surviving_groups(table: Table) -> None:
    result = query(
        table,
        "SELECT age % 7 AS a, count(*) AS n FROM customers GROUP BY a HAVING count(*) > 410 "
        "ORDER BY sum(amount) DESC LIMIT 3 OFFSET 1",
    )
    expected = direct(
        table,
        "SELECT age % 7 AS a, count(*) FROM customers GROUP BY a "
        "HAVING count(*) > 410 AND count(DISTINCT customer_id) >= 10 "
        "ORDER BY sum(amount) DESC LIMIT 3 OFFSET 1",
    )
    assert len(expected) == 3
    assert [
        tuple(x) for x in zip(result.arrays["a"].tolist(), result.arrays["n"].tolist())
    ] == expected


def test_post_processing_layer_sees_only_surviving_groups(table: Table) -> None:
    result = query(
        table,
        "SELECT count(*) AS groups, sum(n) AS rows_ FROM "
        "(SELECT region, count(*) AS n FROM customers GROUP BY region) AS per_region",
    )
    assert (result.arrays["groups"][0], result.arrays["rows_"][0]) == (4, 3000)
    assert result.suppressed_groups == 1


def test_masked_phone_groups(table: Table) -> None:
    result = query(
        table,
        "SELECT phone, count(DISTINCT customer_id) AS people FROM customers GROUP BY phone ORDER BY phone",
    )
    phones = list(result.arrays["phone"])
    assert len(phones) == 20
    assert all(re.fullmatch(r"138\*{4}\d{4}", p) for p in phones)
    assert phones[0] == "138****0000"
    assert sorted(set(result.arrays["people"].tolist())) == [15, 16]  # 999 joined group 19
    # the raw phone never leaves, even when asked for by WHERE
    result = query(table, "SELECT count(*) AS n FROM customers WHERE phone = '138****0003'")
    assert list(result.arrays["n"]) == [150]
    result = query(table, "SELECT count(*) AS n FROM customers WHERE phone LIKE '1380039%'")
    assert result.suppressed_groups == 1


def test_min_max_on_sensitive_when_the_policy_allows(table: Table) -> None:
    policy = Policy(allow_min_max=True)
    result = query(
        table, "SELECT region, max(salary) AS top FROM customers GROUP BY region ORDER BY 1", policy
    )
    expected = direct(
        table,
        "SELECT region, max(salary) FROM customers WHERE region <> 'tiny' GROUP BY 1 ORDER BY 1",
    )
    assert list(result.arrays["top"]) == [r[1] for r in expected]


def test_digest_is_deterministic_and_documented(table: Table) -> None:
    sql = "SELECT city, age, sum(amount) AS s, avg(amount) AS a FROM customers GROUP BY ALL"
    first = query(table, sql)
    second = query(table, sql, limits=Limits(threads=1))
    assert first.digest == second.digest
    assert [first.arrays[c].tolist() for c in first.columns] == [
        second.arrays[c].tolist() for c in second.columns
    ]
    # the digest is SHA-256 of the documented canonical text
    assert re.fullmatch(r"[0-9a-f]{64}", first.digest)
    other = query(table, "SELECT city, age, sum(amount) AS s FROM customers GROUP BY ALL")
    assert other.digest != first.digest


def test_double_sums_are_deterministic_across_threads(tmp_path: Path) -> None:
    # 600k rows: several row groups, so DuckDB's threads split the rows differently per run
    path = tmp_path / "big.parquet"
    write_parquet(
        path,
        "SELECT i % 50000 AS k, 'g' || (i % 3) AS g, (hash(i) % 1000000) / 997.0 AS x FROM range(600000) r(i)",
    )
    big = Table(
        "big",
        str(path),
        (
            Column("k", "BIGINT", "sensitive"),
            Column("g", "VARCHAR", "public"),
            Column("x", "DOUBLE", "sensitive"),
        ),
        "k",
    )
    v = validate("SELECT g, sum(x) AS s, avg(x) AS a FROM big GROUP BY g", [big], Policy(), LIMITS)
    digests = {run(v, Limits(threads=t)).digest for t in (1, 2, 2, 2, 1, 2)}
    assert len(digests) == 1


def test_result_rows_limit(table: Table) -> None:
    with pytest.raises(QueryLimitExceeded) as info:
        query(
            table,
            "SELECT city, region, count(*) FROM customers GROUP BY ALL",
            limits=Limits(max_result_rows=5),
        )
    assert info.value.limit == "result rows"
    assert_healthy(table)


def test_timeout_through_run(table: Table) -> None:
    with pytest.raises(QueryLimitExceeded) as info:
        query(table, NORMAL, limits=Limits(timeout_s=1e-6))
    assert info.value.limit == "timeout"
    assert_healthy(table)


def test_runtime_error_withholds_row_values(table: Table) -> None:
    with pytest.raises(SandboxError) as info:
        query(table, "SELECT count(*) FROM customers WHERE CAST(region AS INTEGER) = 1")
    assert "ConversionException" in str(info.value)
    assert "north" not in str(info.value)
    assert_healthy(table)


def test_snapshot_that_differs_from_its_declaration(table: Table) -> None:
    wrong = Table(
        "customers",
        table.path,
        (*COLUMNS[:3], Column("age", "VARCHAR", "internal"), *COLUMNS[4:]),
        "customer_id",
    )
    v = validate("SELECT count(*) FROM customers", [wrong], POLICY, LIMITS)
    with pytest.raises(
        SandboxError, match="column age is declared VARCHAR but the snapshot has BIGINT"
    ):
        run(v, LIMITS)


# --------------------------------------------------------------------------- isolation


def test_locked_connection_refuses_files_even_without_validation(
    table: Table, tmp_path: Path
) -> None:
    """Defense in depth: the connection itself, with validation bypassed."""
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    v = validate(NORMAL, [table], POLICY, LIMITS)
    con = _engine.open_connection(v._core, LIMITS)
    try:
        assert con.execute("SELECT count(*) FROM customers").fetchone() == (3003,)
        for sql in (
            "SELECT * FROM read_csv('/etc/passwd')",
            f"SELECT * FROM read_csv('{secret}')",
            f"SELECT * FROM '{secret}'",
            f"SELECT * FROM read_text('{secret}')",
            f"SELECT * FROM glob('{tmp_path}/*')",
            f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'",
            f"ATTACH '{tmp_path / 'other.db'}'",
            "INSTALL httpfs",
            "LOAD httpfs",
        ):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        for sql in (
            "SET lock_configuration = false",
            "SET enable_external_access = true",
            "SET allowed_directories = ['/']",
            "SET memory_limit = '100GB'",
            "SET threads = 64",
        ):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                con.execute(sql)
        with pytest.raises(duckdb.BinderException):  # core columns are not even in the view
            con.execute("SELECT ssn FROM customers")
        assert os.listdir(tmp_path) == ["secret.csv"]
    finally:
        con.close()
    assert_healthy(table)


@pytest.mark.parametrize(
    "sql",
    [
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        "SELECT count(*) FROM customers a, customers b, customers c, customers d",
    ],
    ids=["recursive-cte", "cross-join"],
)
def test_runaway_query_ends_with_limit_exceeded(table: Table, sql: str) -> None:
    """With validation bypassed, the engine's own limits still end the query."""
    limits = Limits(timeout_s=0.5, memory_limit_mb=64)
    v = validate(NORMAL, [table], POLICY, limits)
    con = _engine.open_connection(v._core, limits)
    try:
        with _engine._Session(con, limits) as session, pytest.raises(QueryLimitExceeded) as info:
            session.execute(sql)
        assert info.value.limit in ("timeout", "memory")
    finally:
        con.close()
    assert_healthy(table)


# --------------------------------------------------------------------------- exact group sizes


def _subjects_case(draw: st.DrawFn) -> tuple[list[tuple[int | None, str]], int]:
    # groups of very different sizes, subjects with many rows, some NULL keys
    rows: list[tuple[int | None, str]] = []
    for group in draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True)):
        for subject in range(draw(st.integers(0, 14))):
            repeats = draw(st.sampled_from([1, 1, 1, 2, 3, 40]))
            rows.extend([(subject * 7 + ord(group), group)] * repeats)
        rows.extend([(None, group)] * draw(st.sampled_from([0, 0, 5])))
    return rows, draw(st.integers(1, 8))


_counter = itertools.count()
_hyp_dir = tempfile.TemporaryDirectory(prefix="veil-sandbox-test-")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.composite(_subjects_case)())
def test_suppression_is_exact(case: tuple[list[tuple[int | None, str]], int]) -> None:
    rows, k = case
    if not rows:
        return
    path = Path(_hyp_dir.name) / f"case{next(_counter)}.parquet"
    values = ", ".join(f"({'NULL' if s is None else s}::BIGINT, '{g}')" for s, g in rows)
    write_parquet(path, f"SELECT * FROM (VALUES {values}) v(person, grp)")
    t = Table(
        "t",
        str(path),
        (Column("person", "BIGINT", "sensitive"), Column("grp", "VARCHAR", "public")),
        "person",
    )
    result = query(t, "SELECT grp, count(*) AS n FROM t GROUP BY grp", Policy(min_group_size=k))
    people: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    for s, g in rows:
        counts[g] = counts.get(g, 0) + 1
        people.setdefault(g, set())
        if s is not None:
            people[g].add(s)
    expected = sorted((g, counts[g]) for g in counts if len(people[g]) >= k)
    assert sorted(zip(result.arrays["grp"].tolist(), result.arrays["n"].tolist())) == expected
    assert result.suppressed_groups == len(counts) - len(expected)
    # the global aggregate too
    total = query(t, "SELECT count(*) AS n FROM t", Policy(min_group_size=k))
    everyone = set().union(*people.values())
    assert total.suppressed_groups == (0 if len(everyone) >= k else 1)


def test_undecided_groups_are_counted_exactly(tmp_path: Path) -> None:
    # one heavy subject (1,000 rows) makes the row-count bound useless for small groups, so
    # these go through the exact second pass; NULL keys count as no one
    path = tmp_path / "heavy.parquet"
    write_parquet(
        path,
        "SELECT * FROM (SELECT 1 AS p, 'heavy' AS g FROM range(1000) "
        "UNION ALL SELECT 100 + range % 12, 'twelve' FROM range(60) "  # 12 people, 60 rows
        "UNION ALL SELECT 200 + range % 9, 'nine' FROM range(90) "  # 9 people, 90 rows
        "UNION ALL SELECT 300 + range % 9, 'nine+nulls' FROM range(45) "
        "UNION ALL SELECT NULL, 'nine+nulls' FROM range(500))",
    )
    t = Table(
        "t", str(path), (Column("p", "BIGINT", "sensitive"), Column("g", "VARCHAR", "public")), "p"
    )
    result = query(
        t, "SELECT g, count(*) AS n FROM t GROUP BY g ORDER BY g", Policy(min_group_size=10)
    )
    assert result.arrays["g"].tolist() == ["twelve"]
    assert result.suppressed_groups == 3  # heavy (1 person), nine, nine+nulls
    result = query(t, "SELECT count(*) AS n FROM t WHERE g LIKE 'nine%'", Policy(min_group_size=10))
    assert result.arrays["n"].tolist() == [635]  # 18 people
    result = query(
        t, "SELECT count(*) AS n FROM t WHERE g = 'nine+nulls'", Policy(min_group_size=10)
    )
    assert result.suppressed_groups == 1


def test_exact_fallback_for_large_min_group_size(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    # group a: 1,200 people; group b: 1,100 people with 3 rows each; group c: 900 people
    write_parquet(
        path,
        "SELECT p, g FROM (SELECT range AS p, 'a' AS g FROM range(1200) "
        "UNION ALL SELECT 10000 + range % 1100, 'b' FROM range(3300) "
        "UNION ALL SELECT 20000 + range, 'c' FROM range(900))",
    )
    t = Table(
        "t", str(path), (Column("p", "BIGINT", "sensitive"), Column("g", "VARCHAR", "public")), "p"
    )
    result = query(
        t, "SELECT g, count(*) AS n FROM t GROUP BY g ORDER BY g", Policy(min_group_size=1100)
    )
    assert result.arrays["g"].tolist() == ["a", "b"]
    assert result.arrays["n"].tolist() == [1200, 3300]
    assert result.suppressed_groups == 1


# --------------------------------------------------------------------------- normalize


def test_normalize_binds_to_meaning_not_layout() -> None:
    a = normalize("SELECT region, count(*) FROM customers WHERE age > 30 GROUP BY region")
    b = normalize(
        "select   region ,COUNT( * )\n-- who\nfrom customers /* all */ WHERE age>30 group BY region ;"
    )
    assert a == b
    assert normalize("SELECT region, count(*) FROM customers WHERE age > 31 GROUP BY region") != a
    assert (
        validate(
            "select region, COUNT(*) from customers where age > 30 group by region",
            [Table("customers", "/x.parquet", COLUMNS, "customer_id")],
            POLICY,
            LIMITS,
        ).normalized
        == a
    )


_KEYWORDS = ["SELECT", "FROM", "WHERE", "GROUP", "BY", "ORDER", "AND", "AS", "LIMIT"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([" ", "  ", "\n", "\t", " /* c */ ", " -- c\n"]), min_size=40, max_size=40
    ),
    st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_normalize_ignores_whitespace_comments_and_keyword_case(
    gaps: list[str], upper: list[bool]
) -> None:
    tokens = [
        "SELECT", "city", ",", "sum", "(", "amount", ")", "AS", "s", "FROM", "customers",
        "WHERE", "age", ">", "30", "AND", "city", "<>", "'x'", "GROUP", "BY", "city",
        "ORDER", "BY", "s", "LIMIT", "5",
    ]  # fmt: skip
    out = []
    for i, tok in enumerate(tokens):
        if tok in _KEYWORDS:
            tok = tok.upper() if upper[i] else tok.lower()
        out.append(tok)
        out.append(gaps[i] if i < len(gaps) else " ")
    canonical = normalize(" ".join(tokens))
    assert normalize("".join(out)) == canonical


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_normalize_tells_different_queries_apart(a: int, b: int) -> None:
    qa = normalize(f"SELECT count(*) FROM customers WHERE age > {a}")
    qb = normalize(f"SELECT count(*) FROM customers WHERE age > {b}")
    assert (qa == qb) == (a == b)


def test_public_api() -> None:
    assert set(sandbox.__all__) >= {
        "LEVELS", "Column", "Table", "Policy", "Limits", "SandboxError", "QueryRejected",
        "QueryLimitExceeded", "normalize", "validate", "run", "QueryResult", "Meters",
        "ValidatedQuery",
    }  # fmt: skip
    assert sandbox.LEVELS == ("public", "internal", "sensitive", "core")
    with pytest.raises(ValueError, match="level"):
        Column("x", "BIGINT", "secret")
    with pytest.raises(ValueError, match="glob"):
        Table("t", "/data/*.parquet", COLUMNS, "customer_id")
    with pytest.raises(ValueError, match="key_column"):
        Table("t", "/data/t.parquet", COLUMNS, "nobody")
    with pytest.raises(ValueError, match="mask kind"):
        Policy(masked_columns={"phone": "blur"})
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=0)


def test_pooled_connections_are_reused_clean_and_dropped_after_failure(table: Table) -> None:
    v = validate(NORMAL, [table], POLICY, LIMITS)
    first = run(v, LIMITS)
    pooled = [c for idle in _engine._pool._idle.values() for c in idle]
    assert pooled, "a successful run gives its connection back"
    for con in pooled:  # nothing of the run is left behind in it
        assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)
    assert run(v, LIMITS).digest == first.digest
    other = validate("SELECT region, count(*) AS n FROM customers GROUP BY region",
                     [table], POLICY, LIMITS)
    assert run(other, LIMITS).columns == ("region", "n")
    # a run that fails does not return its connection
    before = sum(len(idle) for idle in _engine._pool._idle.values())
    slow = Limits(timeout_s=0.000001)
    with pytest.raises(QueryLimitExceeded):
        run(v, slow)
    assert sum(len(idle) for idle in _engine._pool._idle.values()) == before - 1

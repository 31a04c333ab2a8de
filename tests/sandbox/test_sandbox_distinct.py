"""Regression: aggregates with DISTINCT single out values (issue: "DISTINCT isolates the
values that occur more than once"). A sensitive column is aggregated only over all rows of
its group; COUNT(DISTINCT key) still counts subjects."""

from __future__ import annotations

import pytest

from veil.sandbox import QueryRejected
from tests.sandbox.test_sandbox_engine import POLICY, assert_healthy, direct, query, table  # noqa: F401

ATTACKS = [
    # the repeated values of a large group, exactly
    "SELECT region, count(*) - count(DISTINCT salary) AS repeats FROM customers GROUP BY region",
    "SELECT region, sum(salary) - sum(DISTINCT salary) AS repeated FROM customers GROUP BY region",
    "SELECT region, avg(DISTINCT amount) AS a FROM customers GROUP BY region",
    "SELECT count(DISTINCT amount) AS values FROM customers",
    # a suppressed group's average through another grouping
    "SELECT city, (sum(salary) - sum(DISTINCT salary)) / (count(*) - count(DISTINCT customer_id))"
    " AS avg_of_repeats FROM customers GROUP BY city",
    "SELECT region, mean(DISTINCT salary) AS m FROM customers GROUP BY region",
    "SELECT region, count(DISTINCT phone) AS phones FROM customers GROUP BY region",
]


@pytest.mark.parametrize("sql", ATTACKS)
def test_distinct_on_a_sensitive_or_masked_column_is_refused(table, sql: str) -> None:  # noqa: F811
    with pytest.raises(QueryRejected, match="DISTINCT inside (COUNT|SUM|AVG|MEAN)"):
        query(table, sql)
    assert_healthy(table)


def test_the_attack_would_have_revealed_the_repeated_values(table) -> None:  # noqa: F811
    """What the refusal prevents: plain DuckDB shows the leak is real on this data."""
    (row,) = direct(table, "SELECT sum(salary) - sum(DISTINCT salary) FROM customers WHERE region = 'tiny'")
    assert row[0] != 0  # customer 999's salary, from its three rows


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT region, count(DISTINCT customer_id) AS people FROM customers GROUP BY region",
        "SELECT region, count(DISTINCT city) AS cities, count(DISTINCT age) AS ages "
        "FROM customers GROUP BY region",
        "SELECT region, sum(DISTINCT age) AS ages FROM customers GROUP BY region",
    ],
)
def test_distinct_on_the_key_or_a_public_or_internal_column_still_works(table, sql: str) -> None:  # noqa: F811
    result = query(table, sql)
    expected = direct(table, sql.replace("GROUP BY region", "WHERE region <> 'tiny' GROUP BY region")
                      + " ORDER BY region")
    got = sorted(zip(*(result.arrays[c].tolist() for c in result.columns)))
    assert got == sorted(tuple(r) for r in expected)

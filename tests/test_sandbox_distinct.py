"""Aggregate modifiers that select a subset of the group: the attacks first (issue 8)."""

from __future__ import annotations

import pytest

from veil.sandbox import QueryRejected, Table
from tests.test_sandbox_engine import query
from tests.test_sandbox_engine import table as table  # noqa: F401  (a fixture, used by name)


@pytest.mark.parametrize(
    "sql",
    [
        # repeated values of a sensitive column isolated from a large group
        "SELECT region, count(*) - count(DISTINCT salary) AS dup FROM customers GROUP BY region",
        "SELECT region, sum(salary) - sum(DISTINCT salary) AS dup FROM customers GROUP BY region",
        "SELECT region, avg(DISTINCT amount) AS a FROM customers GROUP BY region",
        "SELECT min(DISTINCT salary) AS m FROM customers",
        # DISTINCT on a non-COUNT aggregate of any column
        "SELECT sum(DISTINCT age) AS s FROM customers",
    ],
)
def test_distinct_aggregate_of_sensitive_column_isolating_repeated_values_is_refused(
    table: Table, sql: str
) -> None:
    with pytest.raises(QueryRejected, match="DISTINCT"):
        query(table, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT region, count(DISTINCT customer_id) AS n FROM customers GROUP BY region",
        "SELECT region, count(DISTINCT city) AS n FROM customers GROUP BY region",
        "SELECT region, count(DISTINCT phone) AS n FROM customers GROUP BY region",
    ],
)
def test_count_distinct_of_key_public_internal_or_masked_column_stays_allowed(
    table: Table, sql: str
) -> None:
    assert len(query(table, sql).arrays["n"]) >= 1

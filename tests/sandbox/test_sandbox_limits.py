"""Limits a hostile query must not break (issue 8): the attacks first."""

from __future__ import annotations

import pytest

from veil.sandbox import Limits, QueryLimitExceeded, Table
from tests.sandbox.test_sandbox_engine import assert_healthy, query
from tests.sandbox.test_sandbox_engine import table as table  # noqa: F401  (a fixture, used by name)

WIDE = "SELECT region, city, count(*) AS n, sum(salary) AS s FROM customers GROUP BY region, city"


def test_result_over_max_result_bytes_is_refused_before_anyone_can_log_it(table: Table) -> None:
    fits = query(table, WIDE)
    assert fits.meters.bytes_out > 200
    with pytest.raises(QueryLimitExceeded, match="bytes, more than the limit of 200 bytes") as info:
        query(table, WIDE, limits=Limits(timeout_s=20.0, max_result_bytes=200))
    assert info.value.limit == "result bytes"
    assert_healthy(table)


def test_max_result_bytes_below_64_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="max_result_bytes"):
        Limits(max_result_bytes=10)

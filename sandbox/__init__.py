"""The sandbox query engine: analysts' SQL on a node's own Parquet snapshots, in DuckDB.

An analyst submits one SELECT; :func:`validate` checks it with DuckDB's own parser against the
job's datasets (:class:`Table`) and the data holder's :class:`Policy` before any data is
touched; :func:`run` executes the approved :class:`ValidatedQuery` in a fresh, locked-down
DuckDB and returns a :class:`QueryResult`. :func:`normalize` gives the canonical text that
approvals bind to. Pure library: no gRPC, no dependency on ``node``.

What a query may reveal
-----------------------
A query reads exactly one dataset. Its result is the output of one aggregate query (the
dataset query), optionally post-processed by outer SELECTs that see nothing else. Each row of
the dataset query is one group (or the single global group) that covers at least
``Policy.min_group_size`` distinct subjects (distinct non-NULL values of ``Table.key_column``)
among the rows that passed its WHERE clause. Groups below that size are deleted before anything
else is computed on them; only their number is reported (``QueryResult.suppressed_groups``,
counted before HAVING, ORDER BY and LIMIT, so it depends only on WHERE and GROUP BY, which
cannot name sensitive columns). For each surviving group the analyst may see:

- its group keys: expressions over ``public`` and ``internal`` columns, and over masked
  columns in their masked form only (``138****1234``);
- aggregates over all of the group's rows: ``COUNT``, ``SUM``, ``AVG`` of ``sensitive``
  columns (and ``MIN``/``MAX`` when ``Policy.allow_min_max``); ``COUNT``, ``SUM``, ``AVG``,
  ``MIN``, ``MAX``, ``MEDIAN`` of public and internal columns (a MIN, MAX or MEDIAN of an
  internal column is one subject's value, though not whose); ``COUNT`` of a masked column;
  ``COUNT(DISTINCT key)``; and expressions computed from these;
- whether the group satisfies the analyst's HAVING, and its place in ORDER BY / LIMIT.

Nothing else leaves: no row, no ``core`` column, no column or function on the negative list,
no key value, no sensitive value except through those aggregates, no unmasked value of a
masked column. Every aggregate's argument is a plain column, so every aggregate covers exactly
the group that was checked for size.

Why each allowed aggregate form covers exactly the checked group. DuckDB's AST lets an
aggregate carry a FILTER, DISTINCT, an ORDER BY, EXPORT_STATE, named arguments, several
arguments, and any expression as its argument. Each of these except DISTINCT is refused for
every column: FILTER and an expression argument (``SUM(CASE WHEN ...)``) select a subset of
the rows that nobody checked for size; ORDER BY inside an aggregate only matters to
order-sensitive aggregates, none of which is allowed; EXPORT_STATE hands out internal state;
named and extra arguments belong to functions outside the allowlist. What remains is
``AGG(column)``, ``AGG(literal)`` and ``COUNT(*)``, which read every row of the group.
DISTINCT aggregates the group's *distinct values* rather than its rows, so for a sensitive
(or masked) column the difference between ``SUM(x)`` and ``SUM(DISTINCT x)``, or ``COUNT(*)``
and ``COUNT(DISTINCT x)``, isolates exactly the values that occur more than once: one
subject's repeated rows, revealed from a group of hundreds. It is refused there. It stays
allowed where the distinct values are not protected: ``COUNT(DISTINCT key)`` counts subjects
(the very measure of group size); over public and internal columns, which may be group keys
and appear in the result raw, ``COUNT(DISTINCT region)`` or ``SUM(DISTINCT age)`` reveal
nothing that grouping by that column would not; DISTINCT of a literal is the literal. Beyond the result, an analyst learns how long the query
took and, if it fails, the kind of error: an expression over public or internal columns in
WHERE or GROUP BY that fails on some row (a CAST, say) tells that such a row exists (DuckDB's
message, which may quote the value, is withheld).

Out of scope: differencing across queries. Two approved queries whose groups differ by one
subject (``WHERE age >= 30`` and ``WHERE age >= 31``, or the same aggregate with and without
one region) reveal that subject's contribution by subtraction; the sandbox checks each query on
its own, so approvers must look at each query in the light of what was approved before (and
quotas bound how many can run). Within one query, the rules close the known routes: FILTER
clauses, expressions inside aggregates, ROLLUP/GROUPING SETS, set operations, joins, subqueries
in expressions.

Under differential privacy
--------------------------
A job with a DP policy goes through :func:`validate_dp` and :func:`run_dp` (or
``Workers.run_dp``) instead, and nothing they compute is released as such: they return the
EXACT aggregates (:class:`DpExact`) of a query of a narrower shape, ``SELECT <keys>,
COUNT(*)/COUNT(col)/SUM(col)/AVG(col) FROM t [WHERE ...] [GROUP BY <keys>]``, with

- the released groups fixed in advance: the product of the declared categories of each
  GROUP BY column (``DpSpec.categories``), every cell present, cells without rows 0, rows
  with undeclared key values excluded, so the data cannot decide which groups appear;
- each subject's contribution bounded: at most ``DpSpec.max_rows_per_subject = k`` rows of
  each subject are counted, and each summed value is clamped into its declared bounds and
  fixed to an integer, so one subject moves each exact vector by at most
  ``Measurement.sensitivity`` (L1 and L2);
- no HAVING, ORDER BY, LIMIT, DISTINCT, MIN/MAX/MEDIAN, post-processing or expression over
  aggregates, each of which would make the released values depend on the data in a way the
  sensitivity does not bound.

The node adds noise calibrated to those sensitivities (OpenDP, outside the sandbox) and
:func:`dp_result` turns the noisy values into a :class:`QueryResult`, which is then what the
analyst sees: the noisy values over the declared grid, nothing else from the data. The group
size rule does not apply under DP: deciding suppression on exact counts would itself release
them without noise; the noise protects the small cells. The time a query took and the kind
of a failure leave as in the normal path. Details and arguments in ``sandbox/_dp.py``.

The exact rules are in ``sandbox/_rules.py``; isolation, group-size enforcement and metering
in ``sandbox/_engine.py``; worker processes that make the limits hold against a hostile
query in ``sandbox/_workers.py``; the result's canonical serialization and digest in
``sandbox/_result.py``; masks in ``sandbox/_masks.py``.
"""

from __future__ import annotations

from veil.sandbox._dp import (
    DpExact,
    DpOutput,
    DpQuery,
    DpSpec,
    Measurement,
    dp_result,
    measurement_sensitivity,
    run_dp,
    validate_dp,
)
from veil.sandbox._engine import run
from veil.sandbox._errors import QueryLimitExceeded, QueryRejected, SandboxError
from veil.sandbox._model import (
    LEVELS,
    MASK_KINDS,
    Column,
    Limits,
    Meters,
    Policy,
    QueryResult,
    Table,
)
from veil.sandbox._query import ValidatedQuery, normalize, validate
from veil.sandbox._workers import Workers

__all__ = [
    "LEVELS",
    "MASK_KINDS",
    "Column",
    "DpExact",
    "DpOutput",
    "DpQuery",
    "DpSpec",
    "Limits",
    "Measurement",
    "Meters",
    "Policy",
    "QueryLimitExceeded",
    "QueryRejected",
    "QueryResult",
    "SandboxError",
    "Table",
    "ValidatedQuery",
    "Workers",
    "dp_result",
    "normalize",
    "run",
    "run_dp",
    "validate",
    "validate_dp",
    "measurement_sensitivity",
]

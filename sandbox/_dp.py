"""The differentially private query path: exact aggregates of bounded sensitivity, then noisy
values into a result.

Under a differential-privacy policy the node does not release what :func:`run` computes. It
calls :func:`validate_dp`, which accepts only queries whose sensitivity it can bound;
:func:`run_dp` (or ``Workers.run_dp``), which returns the EXACT aggregates (:class:`DpExact`,
never released) with every subject's contribution bounded; then it adds calibrated noise
(OpenDP, in the node process, not here) and calls :func:`dp_result` to turn the noisy values
into a :class:`QueryResult`. This module adds no noise and makes no privacy claim by itself:
its claim is the sensitivity of each exact vector, which the node's noise is calibrated to.

What a query may be. One SELECT over one dataset: ``SELECT <keys>, <aggregates> FROM t
[WHERE ...] [GROUP BY <keys>]``, where each key is a plain public or internal column with
declared categories (``DpSpec.categories``) and each aggregate is ``COUNT(*)``,
``COUNT(col)``, ``SUM(col)`` or ``AVG(col)`` of a plain column, summed columns with declared
bounds (``DpSpec.bounds``). The normal rules (:func:`validate`) hold first: core, denied and
masked columns, sensitive columns only inside COUNT/SUM/AVG, the WHERE rules, the function
allowlist. Refused on top: post-processing layers, HAVING, ORDER BY, LIMIT/OFFSET, DISTINCT
anywhere, MIN/MAX/MEDIAN (one row can move them arbitrarily far: unbounded sensitivity),
expressions over aggregates (``SUM(x)/COUNT(*)``: write ``AVG(x)``), aggregates of literals,
and declared bounds or categories that the query does not use (a typo must not pass).

What the exact values are, and their sensitivity. The *declared grid* is the product of the
categories in GROUP BY order (one empty cell without GROUP BY); it depends on the spec only, so
the data cannot decide which groups appear (releasing only the groups present would tell that
someone is in them). Each :class:`Measurement` is one integer per cell:

- ``count``: the number of rows (``COUNT(*)``) or of non-NULL values (``COUNT(col)``) among
  the *kept* rows of the cell: rows that pass WHERE, whose keys are declared values, and that
  are among the first ``k = max_rows_per_subject`` rows of their subject (``Table.key_column``
  value; a row with a NULL key is a subject of its own). Adding or removing one subject
  changes at most k kept rows, so the whole vector moves by at most k in L1 (and so in L2:
  the changes are integers).
- ``sum``: the sum over the kept rows of ``fixed(col)``, the value clamped to the declared
  ``[lo, hi]`` and scaled to an integer by ``10**scale`` (see :func:`_fixed`): each row moves
  the vector by at most ``B = max(|lo|, |hi|) * 10**scale``, one subject by ``k * B`` (L1,
  hence L2).

The group-size rule (``Policy.min_group_size``) does not apply here. Suppressing cells whose
exact subject count is small is itself a release of the exact count (whether the cell is
suppressed tells whether it has fewer than n subjects, with no noise), and it makes the set of
released cells depend on the data; under DP every declared cell is released and the noise is
what protects a small one.

Which rows a subject keeps. ``row_number() OVER (PARTITION BY key ORDER BY <the columns the
aggregates and keys read>) <= k``: deterministic up to rows that agree on every column the
aggregates read, which give the same values whichever is kept, so a replay computes the same
exact values. When the snapshot's largest per-subject row count (cached per snapshot by the
engine) is at most k, no subject has more than k rows anywhere, the cap keeps every row, and
the plain aggregate computes the same function: that is the fast path (``DpExact.capped`` is
False), and the query then costs about what the plain aggregate costs.

Beyond the exact values, an analyst learns what the normal path lets out besides the result:
the time a query took (it depends on whether the snapshot needed capping, which is one bit
about the largest subject, and on the data's size); for an expression in WHERE that fails
on some row, that such a row exists; and, when a SUM is refused because its bound times the
snapshot's row count could pass ``MAX_TOTAL``, that the dataset has more than
``MAX_TOTAL / B`` rows (a fact of the snapshot, the same for every query that asks). The
node's noise covers none of these. Rows whose GROUP BY value is NULL are in no declared cell,
like rows with undeclared values.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from veil.sandbox import _parse, _result
from veil.sandbox._engine import _TOP, _facts, _Session, _subject_stats, session_for
from veil.sandbox._errors import QueryRejected
from veil.sandbox._model import Limits, Meters, Policy, QueryResult, Table, fold
from veil.sandbox._parse import Node, quote_ident, quote_str
from veil.sandbox._query import validate
from veil.sandbox._rules import AGGREGATES, Core, CoreAnalyzer, _has_aggregate, find_shape

#: the largest ``max(|lo|, |hi|) * 10**scale`` of a summed column: exact in a double, and a
#: sum over 9,000 rows at the bound still fits a signed 64-bit integer
MAX_SCALED_BOUND = 10**15
MAX_ROWS_PER_SUBJECT = 10**3
MAX_SCALE = 15
#: the largest exact sum the node's noise is added to (signed 64-bit with room for noise)
MAX_TOTAL = 2**62

_INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
     "UINTEGER", "UBIGINT", "UHUGEINT"}
)  # fmt: skip
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE", "REAL"})
_TEXT_TYPES = frozenset({"VARCHAR"})
_UNBOUNDED = frozenset({"min", "max", "median"})
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class DpSpec:
    """What the job declares for a differentially private query.

    ``max_rows_per_subject`` (k >= 1): how many rows of one subject are counted at most;
    ``bounds``: summed or averaged column -> ``(lo, hi)``, each value clamped into it;
    ``categories``: GROUP BY column -> its declared values, the only groups released;
    ``scale``: decimal digits kept of summed values (they are summed as integers, ``value *
    10**scale`` rounded). Column names compare ignoring case. The constructor checks types
    only; :func:`validate_dp` checks the values against the query and the table.
    """

    max_rows_per_subject: int
    bounds: Mapping[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    categories: Mapping[str, tuple[str | int, ...]] = field(default_factory=dict)
    scale: int = 0

    def __post_init__(self) -> None:
        for name in ("max_rows_per_subject", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"dp.{name} must be an int, got {value!r}")
        if not isinstance(self.bounds, Mapping) or not isinstance(self.categories, Mapping):
            raise TypeError("dp.bounds and dp.categories must be mappings of column names")
        bounds: dict[str, tuple[Decimal, Decimal]] = {}
        for column, pair in self.bounds.items():
            if (
                not isinstance(column, str)
                or not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(isinstance(b, Decimal) for b in pair)
            ):
                raise TypeError(
                    f"dp.bounds must map a column name to a (lo, hi) pair of Decimal, "
                    f"got {column!r}: {pair!r}"
                )
            bounds[column] = pair
        categories: dict[str, tuple[str | int, ...]] = {}
        for column, values in self.categories.items():
            if not isinstance(column, str) or not isinstance(values, tuple):
                raise TypeError(
                    f"dp.categories must map a column name to a tuple of values, "
                    f"got {column!r}: {values!r}"
                )
            categories[column] = values
        for what, mapping in (("bounds", bounds), ("categories", categories)):
            folded = [fold(c) for c in mapping]
            if len(set(folded)) != len(folded):
                raise ValueError(f"dp.{what} names a column twice (ignoring case): {list(mapping)}")
        object.__setattr__(self, "bounds", types.MappingProxyType(bounds))
        object.__setattr__(self, "categories", types.MappingProxyType(categories))

    def __reduce__(self) -> tuple[Any, ...]:  # the mapping proxies do not pickle; dicts do
        return (DpSpec, (self.max_rows_per_subject, dict(self.bounds), dict(self.categories),
                         self.scale))

    def __hash__(self) -> int:
        return hash((self.max_rows_per_subject, frozenset(self.bounds.items()),
                     frozenset(self.categories.items()), self.scale))


@dataclass(frozen=True)
class Measurement:
    """One exact integer vector over the declared cells.

    ``kind`` is ``"count"`` (``COUNT(*)`` when ``column`` is None, else ``COUNT(column)``) or
    ``"sum"`` (of the clamped, scaled column); ``sensitivity`` bounds the change of the whole
    vector, in L1 and in L2 alike, when one subject is added or removed: k for a count,
    ``k * max(|lo|, |hi|) * 10**scale`` for a sum (see the module docstring)."""

    kind: str
    column: str | None
    sensitivity: int


@dataclass(frozen=True)
class DpOutput:
    """How one select item is made: ``kind`` ``"key"`` (``refs = (i,)``, the i-th GROUP BY
    column), ``"measurement"`` (``refs = (m,)``) or ``"avg"`` (``refs = (sum, count)``, two
    measurements of the same column)."""

    name: str
    kind: str
    refs: tuple[int, ...]


@dataclass(frozen=True)
class DpQuery:
    """A query that passed :func:`validate_dp`; only it makes these. Picklable.

    ``keys``: the GROUP BY columns in query order; ``cells``: the declared grid (the product
    of the categories in that order, one empty tuple without GROUP BY); ``measurements``: the
    distinct exact vectors to compute (``COUNT(*)`` once however often it appears, ``AVG(x)``
    as ``sum(x)`` and ``count(x)``); ``outputs``: one per select item, in order.
    """

    sql: str
    normalized: str
    table: Table
    keys: tuple[str, ...]
    cells: tuple[tuple[Any, ...], ...]
    measurements: tuple[Measurement, ...]
    outputs: tuple[DpOutput, ...]
    spec: DpSpec
    _core: Core = field(repr=False)  # the dataset query as validate() rewrote it
    _aggregates: tuple[str, ...] = field(repr=False)  # one SQL aggregate per measurement
    #: the same without the clamp, for a snapshot whose values all lie within the bounds
    _unclamped: tuple[str, ...] = field(repr=False)
    _read: tuple[str, ...] = field(repr=False)  # the columns keys and aggregates read, quoted
    _types: tuple[str, ...] = field(repr=False)  # the output column types, per output


@dataclass(frozen=True)
class DpExact:
    """What :func:`run_dp` returns; it never leaves the node. ``values[m][c]`` is measurement
    m over cell c, exact; ``capped``: whether rows had to be capped per subject."""

    values: tuple[tuple[int, ...], ...]
    meters: Meters
    capped: bool


# --------------------------------------------------------------------------- validation


def measurement_sensitivity(spec: DpSpec, kind: str, column: str | None) -> int:
    """How far one subject can move a measurement's whole vector (L1 and L2 alike), in its
    fixed-point units: k rows for a count, k clamped values for a sum of ``column``."""
    k = spec.max_rows_per_subject
    if kind == "count":
        return k
    assert column is not None and column in spec.bounds
    lo, hi = spec.bounds[column]
    return k * int(max(abs(lo), abs(hi)).scaleb(spec.scale))


def validate_dp(sql: str, table: Table, policy: Policy, limits: Limits, spec: DpSpec) -> DpQuery:
    """Check ``sql`` for the DP path against ``table``, ``policy`` and ``spec``; touch no data.

    Raises what :func:`validate` raises, then QueryRejected naming each construct that the DP
    path cannot bound and what to declare or change instead (see the module docstring). The
    result depends only on the arguments, so the last few hundred are remembered (a node
    validates a job at submission, at each run, and in the worker that runs it)."""
    if not isinstance(table, Table):
        raise TypeError(f"table must be a Table, got {type(table).__name__}")
    if not isinstance(spec, DpSpec):
        raise TypeError(f"spec must be a DpSpec, got {type(spec).__name__}")
    if not isinstance(sql, str) or not isinstance(policy, Policy) or not isinstance(limits, Limits):
        raise TypeError("sql must be a str, policy a Policy and limits a Limits")
    return _validate_dp(sql, table, policy, limits, spec)


@functools.lru_cache(maxsize=256)
def _validate_dp(sql: str, table: Table, policy: Policy, limits: Limits, spec: DpSpec) -> DpQuery:
    checked = validate(sql, [table], policy, limits)  # every classification rule first
    _check_spec(spec)
    shape = find_shape(_parse.serialize(sql), [table], policy)
    if shape.layers:
        raise QueryRejected(
            "subquery in FROM",
            "is not available under differential privacy: the noisy aggregates are the "
            "result; post-process them after release",
        )
    node = shape.core
    _check_clauses(node)
    analyzer = CoreAnalyzer(node, table, policy)

    keys: list[str] = []
    for g in analyzer._groups():
        keys.append(_key(analyzer, g, keys))
    cells = _grid(table, keys, spec, limits)

    measurements: list[Measurement] = []
    aggregates: list[str] = []
    unclamped: list[str] = []
    read = [quote_ident(k) for k in keys]

    def measure(kind: str, column: str | None) -> int:
        for i, m in enumerate(measurements):
            if (m.kind, m.column) == (kind, column):
                return i
        if kind == "count":
            aggregates.append("count(*)" if column is None else f"count({quote_ident(column)})")
            unclamped.append(aggregates[-1])
        else:
            assert column is not None
            lo, hi = _bounds(spec, column)
            aggregates.append(f"sum({_fixed(table, column, lo, hi, spec.scale)})")
            unclamped.append(f"sum({_scaled(table, column, spec.scale)})")
        sensitivity = measurement_sensitivity(spec, kind, column)
        if column is not None and quote_ident(column) not in read:
            read.append(quote_ident(column))
        measurements.append(Measurement(kind, column, sensitivity))
        return len(measurements) - 1

    names = checked._core.names
    outputs: list[DpOutput] = []
    output_types: list[str] = []
    for item, name in zip(analyzer.items, names):
        kind, refs, type_ = _item(analyzer, item, keys, spec, measure)
        outputs.append(DpOutput(name, kind, refs))
        output_types.append(type_)

    summed = {fold(m.column) for m in measurements if m.kind == "sum" and m.column is not None}
    for column in spec.bounds:
        if fold(column) not in summed:
            raise QueryRejected(
                f"dp.bounds for {column}",
                "is declared but the query does not SUM or AVG that column: remove it "
                "(or check its spelling)",
            )
    return DpQuery(
        sql=sql,
        normalized=checked.normalized,
        table=table,
        keys=tuple(keys),
        cells=cells,
        measurements=tuple(measurements),
        outputs=tuple(outputs),
        spec=spec,
        _core=checked._core,
        _aggregates=tuple(aggregates),
        _unclamped=tuple(unclamped),
        _read=tuple(read),
        _types=tuple(output_types),
    )


def _check_spec(spec: DpSpec) -> None:
    k = spec.max_rows_per_subject
    if not 1 <= k <= MAX_ROWS_PER_SUBJECT:
        raise QueryRejected(
            "dp.max_rows_per_subject",
            f"must be between 1 and {MAX_ROWS_PER_SUBJECT:,}, got {k}",
        )
    if not 0 <= spec.scale <= MAX_SCALE:
        raise QueryRejected("dp.scale", f"must be between 0 and {MAX_SCALE}, got {spec.scale}")


def _check_clauses(node: Node) -> None:
    for m in node["modifiers"]:
        kind = m.get("type")
        if kind == "ORDER_MODIFIER":
            raise QueryRejected(
                "ORDER BY",
                "is not available under differential privacy: cells come in the declared "
                "order of the categories",
            )
        if kind == "LIMIT_MODIFIER":
            raise QueryRejected(
                "LIMIT/OFFSET",
                "is not available under differential privacy: every declared cell is released",
            )
        if kind == "DISTINCT_MODIFIER":
            raise QueryRejected("SELECT DISTINCT", "is not available under differential privacy")
        raise QueryRejected(f"modifier {kind}", "is not supported")
    if node["having"] is not None:
        raise QueryRejected(
            "HAVING",
            "is not available under differential privacy: it would choose cells by their "
            "exact aggregates; filter the noisy result after release",
        )


def _key(analyzer: CoreAnalyzer, g: Node, seen: list[str]) -> str:
    if g.get("class") != "COLUMN_REF":
        raise QueryRejected(
            "GROUP BY expression",
            "is not available under differential privacy: group by plain columns with "
            "declared categories",
        )
    column = analyzer._column(g)
    role = analyzer._role(column)
    if role not in ("public", "internal"):
        raise QueryRejected(
            f"GROUP BY {column.name}",
            f"is not available under differential privacy: {column.name} is a {role} "
            "column; group by public or internal columns only",
        )
    if column.name in seen:
        raise QueryRejected(f"GROUP BY {column.name}", "names the column twice")
    return column.name


def _grid(
    table: Table, keys: list[str], spec: DpSpec, limits: Limits
) -> tuple[tuple[Any, ...], ...]:
    declared = {fold(c): (c, v) for c, v in spec.categories.items()}
    axes: list[tuple[str | int, ...]] = []
    size = 1
    for key in keys:
        if fold(key) not in declared:
            raise QueryRejected(
                f"GROUP BY {key}",
                f"needs declared categories under differential privacy (the data must not "
                f"decide which groups appear): declare the categories of {key}: "
                f"dp.categories = {{ {key} = [...] }}",
            )
        values = declared[fold(key)][1]
        column_type = _column_type(table, key)
        if column_type in _TEXT_TYPES:
            wanted: type = str
        elif column_type in _INTEGER_TYPES:
            wanted = int
        else:
            raise QueryRejected(
                f"GROUP BY {key}",
                f"is not available under differential privacy: {key} is {column_type}; "
                "categories can be declared for text and integer columns only",
            )
        if not values:
            raise QueryRejected(f"dp.categories for {key}", "must declare at least one value")
        for v in values:
            if type(v) is not wanted:  # bool is an int, but not a category of an integer
                raise QueryRejected(
                    f"dp.categories for {key}",
                    f"must be {wanted.__name__} values ({key} is {column_type}), got {v!r}",
                )
        if len(set(values)) != len(values):
            raise QueryRejected(f"dp.categories for {key}", "declares a value twice")
        size *= len(values)
        if size > limits.max_result_rows:
            raise QueryRejected(
                "dp.categories",
                f"make a grid of more than {limits.max_result_rows:,} cells, the result row "
                "limit: declare fewer categories or group by fewer columns",
            )
        axes.append(values)
    for name, _ in declared.values():
        if fold(name) not in {fold(k) for k in keys}:
            raise QueryRejected(
                f"dp.categories for {name}",
                "is declared but the query does not GROUP BY that column: remove it "
                "(or check its spelling)",
            )
    return tuple(itertools.product(*axes))


def _item(
    analyzer: CoreAnalyzer,
    item: Node,
    keys: list[str],
    spec: DpSpec,
    measure: Callable[[str, str | None], int],
) -> tuple[str, tuple[int, ...], str]:
    """What one select item is: (DpOutput kind, refs, output type)."""
    cls = item.get("class")
    if cls == "COLUMN_REF":  # validate() already made sure it is a GROUP BY column
        column = analyzer._column(item)
        return "key", (keys.index(column.name),), column.type
    name = fold(str(item.get("function_name", ""))) if cls == "FUNCTION" else ""
    if name not in AGGREGATES:
        if _has_aggregate(item):
            raise QueryRejected(
                "expression over aggregates",
                "is not available under differential privacy: select COUNT, SUM and AVG "
                "themselves (use AVG(x) rather than SUM(x)/COUNT(*)) and compute on the noisy "
                "values after release",
            )
        raise QueryRejected(
            "select item",
            "must be a GROUP BY column, COUNT(*), COUNT(col), SUM(col) or AVG(col) under "
            "differential privacy",
        )
    label = name.upper()
    if name in _UNBOUNDED:
        raise QueryRejected(
            label,
            "has unbounded sensitivity (one row can move it arbitrarily far) and is not "
            "available under differential privacy; use COUNT, SUM or AVG",
        )
    if item.get("distinct"):
        raise QueryRejected(
            f"{label}(DISTINCT ...)",
            "is not available under differential privacy: one subject's rows can change the "
            "distinct values without bound on k; aggregate every row",
        )
    if name == "count_star":
        return "measurement", (measure("count", None),), "BIGINT"
    arg = item["arguments"][0]["expression"]
    if arg.get("class") != "COLUMN_REF":  # validate() admits only a column or a literal
        raise QueryRejected(
            f"{label} of a literal",
            "is not available under differential privacy: aggregate a column (COUNT(*) "
            "counts rows)",
        )
    column = analyzer._column(arg)
    if name == "count":
        return "measurement", (measure("count", column.name),), "BIGINT"
    _numeric(analyzer.table, column.name)
    if name == "sum":
        return "measurement", (measure("sum", column.name),), _sum_type(spec)
    return "avg", (measure("sum", column.name), measure("count", column.name)), "DOUBLE"


def _column_type(table: Table, name: str) -> str:
    column = table.column(name)
    assert column is not None
    return "".join(column.type.split()).upper()


def _numeric(table: Table, name: str) -> None:
    t = _column_type(table, name)
    if t not in _INTEGER_TYPES and t not in _FLOAT_TYPES and not t.startswith("DECIMAL"):
        raise QueryRejected(
            f"SUM/AVG of {name}",
            f"needs a numeric column under differential privacy, and {name} is {t}",
        )


def _sum_type(spec: DpSpec) -> str:
    return "BIGINT" if spec.scale == 0 else "DOUBLE"


def _bounds(spec: DpSpec, column: str) -> tuple[Decimal, Decimal]:
    declared = {fold(c): pair for c, pair in spec.bounds.items()}
    if fold(column) not in declared:
        raise QueryRejected(
            f"SUM/AVG of {column}",
            f"needs declared bounds under differential privacy (each value is clamped into "
            f"them): declare bounds for {column}: dp.bounds = {{ {column} = [lo, hi] }}",
        )
    lo, hi = declared[fold(column)]
    construct = f"dp.bounds for {column}"
    if not (lo.is_finite() and hi.is_finite()):
        raise QueryRejected(construct, f"must be finite numbers, got [{lo}, {hi}]")
    if lo > hi:
        raise QueryRejected(construct, f"are inverted: lo {lo} is greater than hi {hi}")
    for b in (lo, hi):
        scaled = b.scaleb(spec.scale)
        if scaled != scaled.to_integral_value():
            raise QueryRejected(
                construct,
                f"has more decimal digits than dp.scale = {spec.scale} keeps: {b}; raise "
                "dp.scale or round the bound",
            )
        if abs(scaled) > MAX_SCALED_BOUND:
            raise QueryRejected(
                construct,
                f"are too large: |{b}| * 10**{spec.scale} is more than {MAX_SCALED_BOUND:.0e}, "
                "so sums could overflow; narrow the bounds or lower dp.scale",
            )
    if max(abs(lo), abs(hi)) == 0:  # the sum would have sensitivity 0
        raise QueryRejected(construct, f"[{lo}, {hi}] make every value 0: declare a wider range")
    return lo, hi


def _fixed(table: Table, column: str, lo: Decimal, hi: Decimal, scale: int) -> str:
    """SQL for the value of ``column`` that a sum adds: NULL for NULL, else clamped into
    ``[lo, hi]`` and scaled to an integer in ``[lo * 10**scale, hi * 10**scale]``.

    Why the bound holds for every value. DuckDB's ``greatest``/``least`` skip NULLs (so a NULL
    would become ``lo``: hence the explicit NULL test), order NaN above every number (so NaN
    becomes ``hi``) and infinities as numbers (``inf`` becomes ``hi``, ``-inf`` becomes
    ``lo``); the clamped value is therefore a number in ``[lo, hi]``. Integer columns at scale
    0 are clamped in integer arithmetic, exactly. Otherwise the clamped value is multiplied by
    ``10**scale``, rounded and cast to BIGINT. For DECIMAL columns and integers at a positive
    scale, DuckDB's decimal multiplication and rounding are exact, so the result lies in
    ``[L, H] = [lo * 10**scale, hi * 10**scale]`` (integers, since the bounds have at most
    ``scale`` digits). For doubles, ``lo`` and ``hi`` become the nearest doubles; as ``|L|,
    |H| <= 10**15 < 2**53``, the rounded products of those doubles with ``10**scale`` are
    within far less than 0.5 of L and H, and multiplication and rounding are monotone, so
    every value lands in ``[L, H]`` too; the cast cannot overflow.
    """
    ref = quote_ident(column)
    t = _column_type(table, column)
    if t in _INTEGER_TYPES and scale == 0:
        clamped = f"least(greatest({ref}, {int(lo)}), {int(hi)})"
    else:
        clamped = (
            f"CAST(round(least(greatest({ref}, {_literal(lo)}), {_literal(hi)}) "
            f"* {10**scale}) AS BIGINT)"
        )
    return f"CASE WHEN {ref} IS NULL THEN NULL ELSE {clamped} END"


def _scaled(table: Table, column: str, scale: int) -> str:
    """:func:`_fixed` without the clamp: the same integer for every value already in
    ``[lo, hi]`` (for a snapshot whose values all are: see :func:`_within_bounds`)."""
    ref = quote_ident(column)
    if _column_type(table, column) in _INTEGER_TYPES and scale == 0:
        return ref
    return f"CAST(round({ref} * {10**scale}) AS BIGINT)"


def _literal(d: Decimal) -> str:
    """A DECIMAL literal DuckDB reads exactly (never an exponent, which would be a DOUBLE)."""
    text = format(d, "f")
    return text if "." in text else text + ".0"


# --------------------------------------------------------------------------- execution


def run_dp(query: DpQuery, limits: Limits) -> DpExact:
    """Compute the exact, bounded aggregates of ``query`` under ``limits``, in this process,
    with the isolation of :func:`run`. Raises QueryLimitExceeded on timeout or memory,
    SandboxError when the snapshot is missing or differs from its declared schema, and
    QueryRejected when a sum over the snapshot's rows could exceed ``MAX_TOTAL``."""
    return _run_dp(query, limits, force_cap=False)


def _run_dp(query: DpQuery, limits: Limits, *, force_cap: bool) -> DpExact:
    """:func:`run_dp`; ``force_cap`` takes the capped path even when the snapshot does not
    need it (tests check that both paths agree)."""
    if not isinstance(query, DpQuery):
        raise TypeError(f"run_dp() takes a DpQuery from validate_dp(), got {type(query).__name__}")
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
    start = time.perf_counter()
    core, k = query._core, query.spec.max_rows_per_subject
    with session_for(core, limits) as (session, snapshot):
        _check_total(session, query, snapshot)
        stats = _subject_stats(session, core, 1, snapshot)
        assert stats is not None
        capped = force_cap or (stats.top[0] if stats.top else 0) > k
        heavy = _heavy_subjects(session, query, stats.top, snapshot) if capped else None
        clamp = [not _within_bounds(session, query, m, snapshot) for m in query.measurements]
        filtered = not _few_groups(session, query, snapshot)
        rows = session.execute(_statement(query, capped, clamp, filtered, heavy or None),
                               scans_data=True)
    width = len(query.keys)
    found = {tuple(r[:width]): r[width:] for r in rows}
    empty = (0,) * len(query.measurements)
    values = tuple(
        tuple(int(found.get(cell, empty)[m] or 0) for cell in query.cells)
        for m in range(len(query.measurements))
    )
    return DpExact(
        values=values,
        meters=Meters(
            rows_scanned=session.rows_scanned,
            result_rows=len(query.cells),
            cpu_ms=round(session.cpu_ms),
            wall_ms=round((time.perf_counter() - start) * 1000),
            bytes_out=0,  # nothing is serialized until dp_result
        ),
        capped=capped,
    )


def _statement(query: DpQuery, capped: bool, clamp: Sequence[bool] | None = None,
               filtered: bool = True, heavy: Sequence[Any] | None = None) -> str:
    """The one statement that computes every measurement over every present cell.

    ``clamp[m]`` False: measurement m's column lies within its bounds everywhere in the
    snapshot, so it is summed without the (then idle) clamp. ``filtered`` False: the snapshot
    has few enough groups that they are all computed and the undeclared ones dropped by the
    caller, instead of filtering every row against the declared values (rows a cap ranks are
    always filtered first, so that only declared rows count towards it). Both give the same
    values, only sooner (a few tens of ms on 10M rows each); both are facts of the immutable
    snapshot, decided before the analyst's WHERE, so what they tell (by the query's speed)
    is one bit each about the whole snapshot: whether some value lies outside the bounds,
    whether a grouping column has many distinct values.

    ``heavy``: the key values of the only subjects with more than k rows in the snapshot;
    only their rows go through the window that keeps k of them, every other subject's rows
    (at most k, so all kept) pass straight through. The same rows are kept as by the window
    over every row, at the cost of one membership test per row instead of a partition of
    all of them."""
    core = query._core
    keys = [quote_ident(k) for k in query.keys]
    analyst = [f"({core.where})"] if core.where is not None else []
    declared_only = []  # rows of a declared cell only: always before a cap ranks rows
    for key, values in zip(keys, zip(*query.cells) if query.cells[0] else ()):
        declared = dict.fromkeys(values)  # each value once, in declared order
        rendered = (quote_str(v) if isinstance(v, str) else str(v) for v in declared)
        declared_only.append(f"{key} IN ({', '.join(rendered)})")
    conditions = [*analyst, *declared_only]
    # rows that are not ranked may skip the filter: the undeclared groups are dropped after
    unranked = conditions if filtered else analyst
    where = f" WHERE {' AND '.join(unranked)}" if unranked else ""
    clamp = [True] * len(query.measurements) if clamp is None else clamp
    aggregates = [a if c else u for a, u, c in zip(query._aggregates, query._unclamped, clamp)]
    select = ", ".join([*keys, *aggregates])
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    if not capped:
        return f"SELECT {select} FROM {core.from_sql}{where}{group}"
    read = list(dict.fromkeys([_key_ref(query.table), *query._read]))
    k = query.spec.max_rows_per_subject
    window = (f"row_number() OVER (PARTITION BY {core.key_sql} "
              f"ORDER BY {', '.join(f'{c} ASC NULLS LAST' for c in read)}) AS __veil_rn")
    if heavy is None:
        everywhere = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        kept = f"SELECT {', '.join(read)}, {window} FROM {core.from_sql}{everywhere}"
        return (
            f"SELECT {select} FROM ({kept}) AS __veil_kept "
            f"WHERE __veil_rn <= {k} OR {core.key_sql} IS NULL{group}"
        )
    listed = ", ".join(quote_str(v) if isinstance(v, str) else str(int(v)) for v in heavy)

    def rows(among: list[str], condition: str) -> str:
        return f" WHERE {' AND '.join([*among, condition])}"

    light = (f"SELECT {', '.join(read)} FROM {core.from_sql}"
             + rows(unranked, f"({core.key_sql} IS NULL OR {core.key_sql} NOT IN ({listed}))"))
    ranked = (f"SELECT {', '.join(read)}, {window} FROM {core.from_sql}"
              + rows(conditions, f"{core.key_sql} IN ({listed})"))
    return (
        f"SELECT {select} FROM ({light} UNION ALL SELECT {', '.join(read)} FROM ({ranked}) "
        f"AS __veil_ranked WHERE __veil_rn <= {k}) AS __veil_kept{group}"
    )


#: at most this many groups (the product of the grouping columns' distinct values) are
#: computed in full rather than filtered to the declared ones
MAX_UNFILTERED_GROUPS = 10_000


def _within_bounds(session: _Session, query: DpQuery, m: Measurement,
                   snapshot: tuple[Any, ...]) -> bool:
    """Whether every value of a sum's column in the snapshot is finite and within its bounds
    (cached per snapshot and column: a snapshot never changes)."""
    if m.kind != "sum" or m.column is None:
        return True
    ref = quote_ident(m.column)
    cache_key = (*snapshot, "range", fold(m.column))
    facts = _facts.get(cache_key)
    if facts is None:
        floating = _column_type(query.table, m.column) in _FLOAT_TYPES
        odd = f"count(*) FILTER (WHERE isnan({ref}) OR isinf({ref}))" if floating else "0"
        facts = tuple(session.execute(
            f"SELECT min({ref}), max({ref}), {odd} FROM {quote_ident(query.table.name)}",
            metered=False)[0])
        _facts.put(cache_key, facts)
    low, high, odd_values = facts
    lo, hi = query.spec.bounds[m.column]
    if low is None:  # only NULLs: nothing to clamp
        return True
    # Decimal(x) of a double is its exact binary value: a value a hair above ``hi`` is clamped
    return odd_values == 0 and Decimal(low) >= lo and Decimal(high) <= hi


#: at most this many subjects over k rows are ranked apart from the others
MAX_HEAVY_SUBJECTS = 1024


def _heavy_subjects(session: _Session, query: DpQuery, top: Sequence[int],
                    snapshot: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The key values of the snapshot's subjects with more than k rows, when they are few
    (the engine's cached per-subject counts say how many) and their keys are integers or
    text; None otherwise (the window then ranks every row). Cached per snapshot and k."""
    k = query.spec.max_rows_per_subject
    over = sum(1 for n in top if n > k)
    if over == 0 or over > MAX_HEAVY_SUBJECTS or (over == len(top) and len(top) >= _TOP):
        return None  # none (nothing to cap), or too many, or more than the counts kept show
    key_type = _column_type(query.table, query.table.key_column)
    if key_type not in _INTEGER_TYPES and key_type != "VARCHAR":
        return None
    cache_key = (*snapshot, "heavy", fold(query.table.key_column), k)
    heavy = _facts.get(cache_key)
    if heavy is None:
        key = query._core.key_sql
        heavy = tuple(r[0] for r in session.execute(
            f"SELECT {key} FROM {quote_ident(query.table.name)} WHERE {key} IS NOT NULL "
            f"GROUP BY {key} HAVING count(*) > {k} ORDER BY {key}", metered=False))
        _facts.put(cache_key, heavy)
    return heavy


def _few_groups(session: _Session, query: DpQuery, snapshot: tuple[Any, ...]) -> bool:
    """Whether the snapshot's groups (the product of the grouping columns' distinct values,
    NULL included) number at most MAX_UNFILTERED_GROUPS (cached per snapshot and column)."""
    total = 1
    for key in query.keys:
        cache_key = (*snapshot, "distinct", fold(key))
        n = _facts.get(cache_key)
        if n is None:
            ref = quote_ident(key)
            n = int(session.execute(
                f"SELECT count(DISTINCT {ref}) + (count(*) > count({ref}))::INT "
                f"FROM {quote_ident(query.table.name)}", metered=False)[0][0])
            _facts.put(cache_key, n)
        total *= max(n, 1)
        if total > MAX_UNFILTERED_GROUPS:
            return False
    return True


def _key_ref(table: Table) -> str:
    column = table.column(table.key_column)
    assert column is not None
    return quote_ident(column.name)  # spelled as the columns are, so that it is read once


def _check_total(session: _Session, query: DpQuery, snapshot: tuple[Any, ...]) -> None:
    """Refuse a sum that could pass ``MAX_TOTAL`` over this snapshot: its row count (a fact of
    the snapshot, cached, read from the Parquet metadata) times the largest per-row value."""
    sums = [m for m in query.measurements if m.kind == "sum"]
    if not sums:
        return
    cache_key = (*snapshot, "rows")
    n = _facts.get(cache_key)
    if n is None:
        n = int(session.execute(
            f"SELECT count(*) FROM {quote_ident(query.table.name)}", metered=False
        )[0][0])
        _facts.put(cache_key, n)
    for m in sums:
        per_row = m.sensitivity // query.spec.max_rows_per_subject
        if n * per_row > MAX_TOTAL:
            raise QueryRejected(
                f"SUM/AVG of {m.column}",
                f"could reach {n:,} rows x {per_row:,}, more than 2**62, over this dataset: "
                "narrow dp.bounds or lower dp.scale",
            )


# --------------------------------------------------------------------------- release


def dp_result(query: DpQuery, noisy: Sequence[Sequence[int]], meters: Meters) -> QueryResult:
    """The released result: ``noisy[m][c]`` (the exact value plus the node's noise) per cell,
    in the declared order, columns in select order.

    Keys keep their column type; COUNT is BIGINT; SUM is BIGINT at scale 0, else DOUBLE
    ``value / 10**scale``; AVG is DOUBLE ``sum / 10**scale / count`` (one correctly rounded
    division of integers), NULL when the noisy count is 0 or less. Noisy counts are NOT clamped
    to 0: clamping would bias small cells upwards, and the node's noise is unbiased as given.
    This is post-processing of the noisy values and the declared grid only, so it reveals
    nothing the noisy values do not; it is deterministic, so the same exact values and the
    same stored noise give the same digest on replay. ``suppressed_groups`` is 0: nothing is
    suppressed under DP. ``meters`` are the run's, with ``result_rows`` and ``bytes_out`` from
    the serialization.
    """
    if not isinstance(query, DpQuery):
        raise TypeError(f"dp_result() takes a DpQuery, got {type(query).__name__}")
    if not isinstance(meters, Meters):
        raise TypeError(f"meters must be Meters, got {type(meters).__name__}")
    n_cells = len(query.cells)
    if len(noisy) != len(query.measurements) or any(len(v) != n_cells for v in noisy):
        raise ValueError(
            f"noisy must hold {len(query.measurements)} vectors of {n_cells} values, one per "
            f"measurement and cell, got {[len(v) for v in noisy]}"
        )
    for vector in noisy:
        for v in vector:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"noisy values must be ints, got {v!r}")
            if not _INT64[0] <= v <= _INT64[1]:
                raise ValueError(f"noisy value {v} does not fit a signed 64-bit integer")
    factor = 10**query.spec.scale
    rows: list[tuple[Any, ...]] = []
    for c, cell in enumerate(query.cells):
        row: list[Any] = []
        for out in query.outputs:
            if out.kind == "key":
                row.append(cell[out.refs[0]])
            elif out.kind == "measurement":
                m = out.refs[0]
                value = noisy[m][c]
                scaled = query.measurements[m].kind == "sum" and factor != 1
                row.append(value / factor if scaled else value)
            else:
                total, count = noisy[out.refs[0]][c], noisy[out.refs[1]][c]
                row.append(total / (count * factor) if count > 0 else None)
        rows.append(tuple(row))
    columns = _result.unique_names([o.name for o in query.outputs])
    serialized = _result.serialize(columns, query._types, rows, 0)
    arrays = _result.arrays(columns, query._types, rows)
    return QueryResult(
        columns=columns,
        types=query._types,
        arrays=types.MappingProxyType(arrays),
        suppressed_groups=0,
        meters=dataclasses.replace(meters, result_rows=len(rows), bytes_out=len(serialized)),
        digest=_result.digest(serialized),
        tables_used=(query.table.name,),
    )


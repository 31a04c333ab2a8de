"""validate(): from an analyst's SQL text to a ValidatedQuery, before any data is touched."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from veil.sandbox import _parse
from veil.sandbox._errors import QueryLimitExceeded, QueryRejected
from veil.sandbox._model import Limits, Policy, Table, fold
from veil.sandbox._parse import Node, quote_ident
from veil.sandbox._rules import Core, CoreAnalyzer, check_layer, find_shape


@dataclass(frozen=True)
class ValidatedQuery:
    """A query that passed validation; only :func:`validate` makes these.

    ``normalized`` is the canonical text approvals bind to (see :func:`normalize`);
    ``tables_used`` the datasets it reads. The rest is the rewritten plan that :func:`run`
    executes: the dataset query with the hidden subject count, and the post-processing layers.
    """

    sql: str
    normalized: str
    tables_used: tuple[str, ...]
    min_group_size: int
    _core: Core = field(repr=False)
    _outer_sql: str | None = field(repr=False)


#: the longest text ``normalize`` parses (a node's own ``max_sql_bytes`` is usually lower)
MAX_NORMALIZE_BYTES = 1_000_000


def normalize(sql: str) -> str:
    """Canonical text of ``sql`` via DuckDB's parser (``json_serialize_sql`` then
    ``json_deserialize_sql``): whitespace, comments and keyword case do not matter; any change
    of meaning does. Raises QueryRejected when the text is not made of SELECT statements."""
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, got {type(sql).__name__}")
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > MAX_NORMALIZE_BYTES:  # parsing is not free: refuse before DuckDB sees it
        raise QueryLimitExceeded(
            "sql size", f"the query text is {size:,} bytes, more than {MAX_NORMALIZE_BYTES:,}"
        )
    _check_statements(sql)
    return _parse.normalize(sql)


def _check_statements(sql: str) -> None:
    """Exactly one SELECT; anything else is named (``COPY statement is not allowed``)."""
    kinds = _parse.statement_kinds(sql)
    for kind in kinds:
        if kind != "SELECT":
            raise QueryRejected(f"{kind} statement", "is not allowed: only one SELECT statement is")
    if len(kinds) != 1:
        raise QueryRejected("SQL", f"must be exactly one SELECT statement, got {len(kinds)}")


def validate(sql: str, tables: Sequence[Table], policy: Policy, limits: Limits) -> ValidatedQuery:
    """Check ``sql`` against the job's ``tables`` and ``policy``; touch no data.

    Raises QueryLimitExceeded("sql size") for text over ``limits.max_sql_bytes`` (before
    parsing), QueryRejected naming the construct for anything the rules refuse. The result
    depends only on the arguments, so the last few hundred accepted queries are remembered
    (a job's query is typically validated when submitted and again at each run).
    """
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, got {type(sql).__name__}")
    tables = tuple(tables)
    if not tables or not all(isinstance(t, Table) for t in tables):
        raise TypeError("tables must be a non-empty sequence of Table")
    if not isinstance(policy, Policy) or not isinstance(limits, Limits):
        raise TypeError("policy must be a Policy and limits a Limits")
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > limits.max_sql_bytes:
        raise QueryLimitExceeded(
            "sql size",
            f"the query text is {size:,} bytes, more than the limit of {limits.max_sql_bytes:,}",
        )
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QueryRejected("SQL", f"is not valid Unicode text (at character {e.start})") from None
    return _validate(sql, tables, policy)


@functools.lru_cache(maxsize=256)
def _validate(sql: str, tables: tuple[Table, ...], policy: Policy) -> ValidatedQuery:
    if len({fold(t.name) for t in tables}) != len(tables):
        raise ValueError(f"table names must be unique: {[t.name for t in tables]}")
    _check_statements(sql)
    tree = _parse.serialize(sql)
    try:
        shape = find_shape(tree, tables, policy)
        for i, layer in enumerate(shape.layers):
            check_layer(layer, outermost=i == 0)
        analyzer = CoreAnalyzer(shape.core, shape.table, policy)
        expressions, make_core = analyzer.analyze()
    except RecursionError:
        raise QueryRejected("expression", "is nested too deeply to check") from None
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        # an AST shape the rules do not model: refuse rather than guess (fail closed)
        raise QueryRejected(
            "query", f"uses a construct the sandbox cannot check ({type(e).__name__}: {e})"
        ) from None

    # one round trip renders everything: the rewritten expressions, the dataset query as the
    # analyst wrote it, the whole query normalized
    whole = [s["node"] for s in tree["statements"]]
    texts = _parse.deserialize_many([*_parse.expression_nodes(expressions), [shape.core], whole])
    normalized, core_text = texts.pop(), texts.pop()
    # bind on empty tables of the declared schema: DuckDB's binder reports what the rules do
    # not model (types, GROUP BY completeness) and names the output columns
    core_names, width = _bind(
        shape.table, analyzer.visible(), core_text, normalized if shape.layers else None
    )
    core = make_core([_parse.expression_text(t) for t in texts], core_names)
    return ValidatedQuery(
        sql=sql,
        normalized=normalized,
        tables_used=(shape.table.name,),
        min_group_size=policy.min_group_size,
        _core=core,
        _outer_sql=_outer_sql(shape.layers, width) if shape.layers else None,
    )


def _bind(
    table: Table, visible: Sequence[str], core: str, whole: str | None
) -> tuple[tuple[str, ...], int]:
    """Output names of the dataset query, and the width of the whole query's output."""
    con = _parse.connection()
    columns = ", ".join(
        f"{quote_ident(c.name)} {c.type}" for c in table.columns if c.name in visible
    )
    # the parse connection keeps one empty temp table per name, re-created when it changes
    schemas: dict[str, str] = _parse.thread_state().setdefault("schemas", {})
    if schemas.get(fold(table.name)) != columns:
        schemas.pop(fold(table.name), None)
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {quote_ident(table.name)} ({columns})")
        except duckdb.Error as e:
            raise ValueError(
                f"table {table.name}: declared column types do not parse: {e}"
            ) from None
        schemas[fold(table.name)] = columns
    try:
        core_desc = con.execute("DESCRIBE " + core).fetchall()
        width = (
            len(con.execute("DESCRIBE " + whole).fetchall())
            if whole is not None
            else len(core_desc)
        )
    except duckdb.Error as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QueryRejected("query", f"does not bind: {message}") from None
    return tuple(str(r[0]) for r in core_desc), width


def _outer_sql(layers: tuple[Node, ...], width: int) -> str:
    """The post-processing layers as SQL over ``__veil_core`` (the checked dataset query),
    with a total order appended to the outermost one so that the output is deterministic."""
    outer = copy.deepcopy(layers[0])  # holds the inner layers too
    inner = outer
    while inner["from_table"]["subquery"]["node"]["from_table"].get("type") == "SUBQUERY":
        inner = inner["from_table"]["subquery"]["node"]
    sub = inner["from_table"]
    ref = _parse.parse_from("__veil_core")
    ref["alias"] = sub.get("alias", "")
    ref["column_name_alias"] = sub.get("column_name_alias", [])
    inner["from_table"] = ref

    ties = []
    for i in range(1, width + 1):
        const = _parse.parse_expression("1")
        const["literal"]["text"] = str(i)
        ties.append({"type": "ASCENDING", "null_order": "NULLS LAST", "expression": const})
    modifiers = outer["modifiers"]
    order = next((m for m in modifiers if m.get("type") == "ORDER_MODIFIER"), None)
    if order is None:
        order = {"type": "ORDER_MODIFIER", "orders": []}
        at = next(
            (i for i, m in enumerate(modifiers) if m.get("type") == "LIMIT_MODIFIER"),
            len(modifiers),
        )
        modifiers.insert(at, order)
    order["orders"].extend(ties)
    return _parse.deserialize([outer])

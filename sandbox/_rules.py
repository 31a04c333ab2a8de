"""The analysis rules: what an analyst's query may do, checked on DuckDB's own AST.

The accepted shape is deliberately small, so that every rule can be checked exactly:

- The **dataset query** (the "core") is one SELECT over exactly one of the job's datasets
  (``FROM customers`` or ``FROM customers AS c``): no joins, no table functions, no CTEs, no
  set operations, no subqueries in expressions, no window functions, no SAMPLE or QUALIFY,
  no SELECT DISTINCT. It must aggregate: GROUP BY, or aggregate functions, or both.
- Optionally, **post-processing** layers wrap it: ``SELECT ... FROM (<dataset query>) AS s``,
  nested as deep as wanted, each with exactly one subquery in FROM. They only ever see the
  dataset query's output after small groups were removed, so they may do anything the
  function allowlist allows (group again, filter, order, compute ratios); LIMIT is allowed in
  the outermost one only.

Classification rules for columns of the dataset query (levels from ``Column.level``):

- ``core`` columns and the policy's ``denied_columns`` cannot be named anywhere.
- The **key column** can only be counted: ``COUNT(key)`` or ``COUNT(DISTINCT key)``.
- ``sensitive`` columns can only be the direct argument of COUNT, SUM or AVG (and MIN/MAX
  when ``Policy.allow_min_max``): never in the select list raw, GROUP BY, WHERE, ORDER BY, or
  inside any other expression.
- ``internal`` and ``public`` columns may be used anywhere: select list (as group keys),
  WHERE, GROUP BY, HAVING, ORDER BY, aggregates.
- Masked columns (``Policy.masked_columns``) are replaced by their mask everywhere; masked,
  they may be used like internal columns, except that inside an aggregate they can only be
  counted (a MIN of masked phones would show one subject's masked phone).
- **Every aggregate argument is a plain column, ``*`` or a literal**, and aggregates take no
  FILTER clause, no ORDER BY, no EXPORT_STATE, no named and no second argument; DISTINCT only
  in COUNT, and never on a ``sensitive`` column. An expression inside an aggregate (``SUM(CASE WHEN name = 'Bob' THEN salary
  END)``) or a FILTER would aggregate over a subset of the group that nobody checked for size,
  which is exactly how one person is singled out; compute on the aggregates instead.
- No GROUPING SETS, ROLLUP or CUBE: a subtotal next to its parts reveals a suppressed part by
  subtraction within one query.

Functions are allowlisted (``SCALARS``, ``AGGREGATES``) minus ``Policy.denied_functions``;
anything else is refused by name, wherever it occurs (this is what refuses ``read_csv``,
``getenv``, ``current_setting``, ``duckdb_settings`` ...). The allowlist holds deterministic
functions with bounded output only: a replayed query must give the same digest, and one
expression must not be able to allocate gigabytes from a short literal.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from veil.sandbox import _masks
from veil.sandbox._errors import QueryRejected
from veil.sandbox._model import RESERVED_PREFIX, Column, Policy, Table, fold
from veil.sandbox._parse import Node, parse_expression, quote_ident, strip_locations, substitute

SCALARS = frozenset(
    {
        # operators (DuckDB spells them as functions)
        "+", "-", "*", "/", "//", "%", "||", "~~", "!~~", "~~*", "!~~*", "^@",
        # numbers
        "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "exp",
        "ln", "log", "log2", "log10", "pow", "power", "greatest", "least", "isnan", "isinf",
        "isfinite", "even",
        # text (no repeat/lpad/rpad/replace: their output can dwarf their input)
        "lower", "upper", "lcase", "ucase", "length", "strlen", "char_length", "substr",
        "substring", "left", "right", "trim", "ltrim", "rtrim", "concat", "starts_with",
        "ends_with", "prefix", "suffix", "contains", "strpos", "instr", "position",
        "split_part", "reverse", "regexp_matches", "regexp_full_match", "like_escape",
        "ilike_escape",
        # dates and times (no now()/current_date: a replay must give the same answer)
        "year", "month", "day", "hour", "minute", "second", "quarter", "week", "weekofyear",
        "dayofweek", "isodow", "dayofyear", "dayofmonth", "yearweek", "date_trunc",
        "datetrunc", "date_part", "datepart", "date_diff", "datediff", "date_sub", "datesub",
        "strftime", "make_date", "last_day", "monthname", "dayname", "epoch", "to_days",
        "to_hours", "to_minutes", "to_seconds", "to_months", "to_years", "to_weeks",
        # NULL handling and conditions
        "nullif", "ifnull", "if",
    }
)  # fmt: skip

AGGREGATES = frozenset({"count", "count_star", "sum", "avg", "mean", "min", "max", "median"})
_SENSITIVE_AGGREGATES = frozenset({"count", "sum", "avg", "mean"})
_MIN_MAX = frozenset({"min", "max"})
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8"})
_CAST_TYPES = frozenset(
    {
        "BOOLEAN", "BOOL", "TINYINT", "SMALLINT", "INTEGER", "INT", "INT1", "INT2", "INT4",
        "INT8", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "FLOAT",
        "FLOAT4", "FLOAT8", "REAL", "DOUBLE", "DECIMAL", "NUMERIC", "VARCHAR", "TEXT", "STRING",
        "CHAR", "BPCHAR", "DATE", "TIME", "TIMESTAMP", "DATETIME", "INTERVAL",
    }
)  # fmt: skip
_COMPARISONS = frozenset(
    {
        "COMPARE_EQUAL", "COMPARE_NOTEQUAL", "COMPARE_LESSTHAN", "COMPARE_GREATERTHAN",
        "COMPARE_LESSTHANOREQUALTO", "COMPARE_GREATERTHANOREQUALTO", "COMPARE_DISTINCT_FROM",
        "COMPARE_NOT_DISTINCT_FROM",
    }
)  # fmt: skip
_OPERATORS = frozenset(
    {
        "OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN",
        "COMPARE_NOT_IN", "OPERATOR_COALESCE",
    }
)  # fmt: skip
_LITERALS = frozenset({"INTEGER", "NUMERIC", "STRING", "BOOLEAN", "NULL_LITERAL"})
_CLASSES = frozenset(
    {"COLUMN_REF", "CONSTANT", "FUNCTION", "COMPARISON", "CONJUNCTION", "OPERATOR", "CASE",
     "CAST", "BETWEEN", "STAR", "TYPE"}
)  # fmt: skip
_CLASS_NAMES = {
    "SUBQUERY": "subquery in an expression",
    "WINDOW": "window function",
    "LAMBDA": "lambda expression",
    "PARAMETER": "prepared-statement parameter",
    "POSITIONAL_REFERENCE": "positional reference (#n)",
    "COLLATE": "COLLATE",
    "DEFAULT": "DEFAULT",
}
_NODE_NAMES = {
    "SET_OPERATION_NODE": (
        "UNION/INTERSECT/EXCEPT",
        "is not supported: it would let one query compare aggregates over different sets of rows",
    ),
    "RECURSIVE_CTE_NODE": ("recursive CTE", "is not allowed"),
    "CTE_NODE": ("WITH clause", "is not supported; use a subquery in FROM"),
}
_FROM_NAMES = {
    "JOIN": (
        "JOIN",
        (
            "is not supported: a query reads exactly one dataset (single-table queries only; "
            "the subjects of a join are not well defined)"
        ),
    ),
    "TABLE_FUNCTION": ("table function", "is not allowed: a query reads only the job's datasets"),
    "EXPRESSION_LIST": ("VALUES list", "is not allowed: a query reads only the job's datasets"),
    "SHOW_REF": ("DESCRIBE/SHOW/SUMMARIZE", "is not allowed"),
    "PIVOT": ("PIVOT/UNPIVOT", "is not supported"),
    "EMPTY": (
        "SELECT without FROM",
        "is not allowed: a query must read one of the job's datasets",
    ),
}
# keys of a SELECT node and of a base table reference that we check, or know to be inert
_SELECT_KEYS = frozenset(
    {"type", "modifiers", "cte_map", "select_list", "from_table", "where_clause",
     "group_expressions", "group_sets", "aggregate_handling", "having", "sample", "qualify"}
)  # fmt: skip
_BASE_TABLE_KEYS = frozenset(
    {"type", "alias", "sample", "query_location", "query_location_length", "schema_name",
     "table_name", "column_name_alias", "catalog_name", "at_clause", "qualified_name"}
)  # fmt: skip


@dataclass(frozen=True)
class Core:
    """The dataset query, split for the engine (see ``_engine``) into two steps.

    The *group pass* reads the dataset once: ``SELECT <keys>, <aggregates> FROM <from_sql>
    WHERE <where> GROUP BY <keys>``, stored as columns ``__veil_k<i>`` and ``__veil_a<j>``.
    The *output pass* runs over the groups that were large enough, only: the select list,
    HAVING and ORDER BY, rewritten over those columns. So no expression over aggregates is
    ever evaluated for a small group (an error or a HAVING there would tell something about
    it), and ``suppressed_groups`` does not depend on HAVING.

    Each fragment is DuckDB's own rendering of a validated, rewritten AST node (masks applied,
    floating-point SUM/AVG made order-independent), wrapped in parentheses.
    """

    table: Table
    visible: tuple[str, ...]  # names of the columns the connection may see (no core, no denied)
    from_sql: str  # '"customers" AS "c"'
    key_sql: str  # the quoted key column
    where: str | None  # group pass
    keys: tuple[str, ...]  # group pass: GROUP BY expressions; () for a global aggregate
    aggregates: tuple[str, ...]  # group pass: the aggregate calls, each once
    items: tuple[str, ...]  # output pass: the select list
    names: tuple[str, ...]  # the select list's output names, as DuckDB derives them
    having: str | None  # output pass
    orders: tuple[str, ...]  # output pass: ORDER BY terms (positions or expressions)
    limit: int | None
    offset: int | None


@dataclass(frozen=True)
class Shape:
    """What the analyzer found: the core node and the post-processing layers around it."""

    core: Node
    layers: tuple[Node, ...]  # outermost first
    table: Table


def find_shape(tree: Node, tables: Sequence[Table], policy: Policy) -> Shape:
    """Check the whole AST's structure and allowlists; return the core and its layers."""
    statements = tree["statements"]
    if len(statements) != 1:
        raise QueryRejected("SQL", f"must be exactly one SELECT statement, got {len(statements)}")
    if statements[0].get("named_param_map"):
        raise QueryRejected("prepared-statement parameter", "is not supported; write literals")
    node = statements[0]["node"]
    _scan(node, tables, policy)
    layers: list[Node] = []
    while True:
        _check_query_node(node)
        from_table = node["from_table"]
        kind = from_table.get("type")
        if kind == "SUBQUERY":
            layers.append(node)
            node = from_table["subquery"]["node"]
            continue
        if kind == "BASE_TABLE":
            return Shape(core=node, layers=tuple(layers), table=_table(from_table, tables))
        construct, reason = _FROM_NAMES.get(
            kind, (f"FROM clause of type {kind}", "is not supported")
        )
        raise QueryRejected(construct, reason)


def _scan(node: Any, tables: Sequence[Table], policy: Policy) -> None:
    """Fail-closed net over every node of the tree, whatever its position: each function is
    allowlisted, each expression class known, each table reference one of the job's datasets.
    The structural checks below then decide what may appear where."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
            continue
        if not isinstance(n, dict):
            continue
        for name in [
            n.get("alias"),
            n.get("table_name"),
            *n.get("column_names", ()),
            *n.get("column_name_alias", ()),
        ]:
            if isinstance(name, str) and fold(name).startswith(RESERVED_PREFIX):
                raise QueryRejected(f"name '{name}'", "is reserved for the sandbox's own use")
        cls = n.get("class")
        if cls is not None:
            if cls == "FUNCTION":
                _check_function_name(n, policy)
            elif cls == "WINDOW":
                raise QueryRejected(
                    f"window function {n.get('function_name', '')}".rstrip(), "is not allowed"
                )
            elif cls not in _CLASSES:
                raise QueryRejected(_CLASS_NAMES.get(cls, f"{cls} expression"), "is not allowed")
            if cls == "CONSTANT" and n.get("literal", {}).get("kind") not in _LITERALS:
                raise QueryRejected(
                    f"literal of kind {n.get('literal', {}).get('kind')}", "is not supported"
                )
        else:
            kind = n.get("type") if isinstance(n.get("type"), str) else None
            if kind == "TABLE_FUNCTION" and isinstance(n.get("function"), dict):
                _check_function_name(n["function"], policy)  # names read_csv, glob, range ...
            if kind in _NODE_NAMES:
                raise QueryRejected(*_NODE_NAMES[kind])
            if kind in _FROM_NAMES and kind not in ("EMPTY",):
                raise QueryRejected(*_FROM_NAMES[kind])
            if "table_name" in n:
                _table(n, tables)
            cte_map = n.get("cte_map")
            if isinstance(cte_map, dict) and cte_map.get("map"):
                _reject_cte(cte_map)
        stack.extend(n.values())


def _check_function_name(n: Node, policy: Policy) -> str:
    name = fold(str(n.get("function_name", "")))
    qualifier = ".".join(p for p in (n.get("catalog", ""), n.get("schema", "")) if p)
    if qualifier:
        raise QueryRejected(
            f"function {qualifier}.{name}",
            "is not allowed: call functions unqualified, e.g. upper(x) rather than x.upper()",
        )
    path = n.get("qualified_name", {"path": [name]}).get("path")
    if [fold(str(p)) for p in path] != [name]:  # what the deserializer and binder may use
        raise QueryRejected(f"function {'.'.join(map(str, path))}", "is not allowed")
    if name not in SCALARS and name not in AGGREGATES:
        raise QueryRejected(f"function {name}", "is not allowed")
    if name in policy.denied_functions or (
        name == "count_star" and "count" in policy.denied_functions
    ):
        raise QueryRejected(f"function {name}", "is on the policy's negative list")
    return name


def _reject_cte(cte_map: Node) -> None:
    for entry in cte_map["map"]:
        if entry.get("value", {}).get("query_node", {}).get("type") == "RECURSIVE_CTE_NODE":
            raise QueryRejected(*_NODE_NAMES["RECURSIVE_CTE_NODE"])
    raise QueryRejected(*_NODE_NAMES["CTE_NODE"])


def _check_query_node(node: Node) -> None:
    if node.get("type") != "SELECT_NODE":
        kind = str(node.get("type"))
        raise QueryRejected(*_NODE_NAMES.get(kind, (f"query node {kind}", "is not supported")))
    for key, value in node.items():
        if key not in _SELECT_KEYS and value not in (None, [], {}, "", False):
            raise QueryRejected(f"SELECT clause {key!r}", "is not supported")
    if node["cte_map"]["map"]:
        _reject_cte(node["cte_map"])
    if node.get("sample") is not None:
        raise QueryRejected("SAMPLE", "is not allowed: a replayed query must give the same answer")
    if node.get("qualify") is not None:
        raise QueryRejected("QUALIFY", "is not allowed")
    if node["aggregate_handling"] not in ("STANDARD_HANDLING", "FORCE_AGGREGATES"):
        raise QueryRejected(f"aggregate handling {node['aggregate_handling']}", "is not supported")


def _table(ref: Node, tables: Sequence[Table]) -> Table:
    name = str(ref.get("table_name", ""))
    known = ", ".join(t.name for t in tables)
    qualified = ".".join(
        p for p in (ref.get("catalog_name", ""), ref.get("schema_name", ""), name) if p
    )
    if qualified != name:
        raise QueryRejected(
            f"table '{qualified}'",
            f"is not one of the job's datasets ({known}): name it unqualified",
        )
    path = ref.get("qualified_name", {"path": [name]}).get("path")
    if [fold(str(p)) for p in path] != [fold(name)]:
        raise QueryRejected(
            f"table '{'.'.join(map(str, path))}'", f"is not one of the job's datasets ({known})"
        )
    for t in tables:
        if fold(t.name) == fold(name):
            break
    else:
        raise QueryRejected(f"table '{name}'", f"is not one of the job's datasets ({known})")
    for key, value in ref.items():
        if key not in _BASE_TABLE_KEYS and value not in (None, [], {}, "", False):
            raise QueryRejected(f"table '{name}' option {key!r}", "is not supported")
    if ref.get("column_name_alias"):
        raise QueryRejected(f"column aliases on table '{name}'", "are not supported")
    if ref.get("at_clause") is not None:
        raise QueryRejected(f"AT clause on table '{name}'", "is not supported")
    if ref.get("sample") is not None:
        raise QueryRejected("SAMPLE", "is not allowed: a replayed query must give the same answer")
    return t


# --------------------------------------------------------------------------- the core


class CoreAnalyzer:
    """Checks the dataset query against the classification and rewrites it into a Core."""

    def __init__(self, node: Node, table: Table, policy: Policy) -> None:
        self.node = node
        self.table = table
        self.policy = policy
        ref = node["from_table"]
        self.alias = str(ref.get("alias") or "")
        self.qualifier = fold(self.alias or table.name)
        self.items: list[Node] = list(node["select_list"])
        self.item_aliases = [fold(str(i.get("alias") or "")) for i in self.items]

    # ---------------------------------------------------------------- entry point

    def analyze(self) -> tuple[list[Node], Callable[[list[str], tuple[str, ...]], Core]]:
        """Check the dataset query; return the expressions to render as SQL (by the caller, in
        one batch) and a function that takes their SQL texts and the output names and makes
        the Core."""
        node = self.node
        for item in self.items:
            if item.get("class") == "STAR":
                raise QueryRejected(
                    "SELECT *",
                    "is not allowed: it is row-level output; name group keys and aggregates",
                )
        order_terms, limit, offset = self._modifiers()
        groups = self._groups()
        where, having = node["where_clause"], node["having"]
        if where is not None:
            self._check(where, "WHERE")
        for g in groups:
            self._check(g, "GROUP BY")
        for item in self.items:
            self._check(item, "SELECT")
        if having is not None:
            self._check(having, "HAVING")
        orders = self._orders(order_terms)
        hidden = [e for _, e, _ in orders if e is not None]
        for h in hidden:
            self._check(h, "ORDER BY")
        if (
            not groups
            and node["group_sets"] != [[]]
            and not any(_has_aggregate(e) for e in [*self.items, having, *hidden])
        ):
            raise QueryRejected(
                "query",
                "must aggregate (GROUP BY or an aggregate function): row-level output is not allowed",
            )

        # the output pass sees group keys and aggregates as stored columns
        group_index = {self._canon(g): i for i, g in reversed(list(enumerate(groups)))}
        aggregates: list[Node] = []
        aggregate_index: dict[str, int] = {}
        out = _OutputRewriter(self, group_index, aggregates, aggregate_index)
        items = [out.rewrite(i, "SELECT") for i in self.items]
        having_out = out.rewrite(having, "HAVING") if having is not None else None
        hidden_out = [out.rewrite(h, "ORDER BY") for h in hidden]

        group_pass = [self._rewrite(e) for e in [*groups, *aggregates]]
        if where is not None:
            group_pass.append(self._rewrite(where))
        output_pass = [*items, *([having_out] if having_out is not None else []), *hidden_out]

        def finish(texts_: list[str], names: tuple[str, ...]) -> Core:
            texts = iter(texts_)
            keys = tuple(next(texts) for _ in groups)
            aggregates_sql = tuple(next(texts) for _ in aggregates)
            where_sql = next(texts) if where is not None else None
            items_sql = tuple(next(texts) for _ in items)
            having_sql = next(texts) if having_out is not None else None
            order_sql = tuple(
                (position if expression is None else next(texts)) + suffix
                for position, expression, suffix in orders
            )
            alias = f" AS {quote_ident(self.alias)}" if self.alias else ""
            return Core(
                table=self.table,
                visible=self.visible(),
                from_sql=quote_ident(self.table.name) + alias,
                key_sql=quote_ident(self.table.key_column),
                where=where_sql,
                keys=keys,
                aggregates=aggregates_sql,
                items=items_sql,
                names=names,
                having=having_sql,
                orders=order_sql,
                limit=limit,
                offset=offset,
            )

        return [*group_pass, *output_pass], finish

    def _canon(self, e: Node) -> str:
        """A comparable form of an expression: no positions or aliases, columns resolved."""

        def walk(n: Any) -> Any:
            if isinstance(n, dict):
                if n.get("class") == "COLUMN_REF":
                    return {"column": fold(self._column(n).name)}
                return {
                    k: walk(v)
                    for k, v in n.items()
                    if k not in ("query_location", "query_location_length", "alias")
                }
            if isinstance(n, list):
                return [walk(v) for v in n]
            return n

        return json.dumps(walk(e), sort_keys=True)

    def visible(self) -> tuple[str, ...]:
        """The columns the run's connection may see: all but core and denied ones, plus the
        key (which the engine counts)."""
        key = fold(self.table.key_column)
        return tuple(
            c.name for c in self.table.columns if not self._unusable(c) or fold(c.name) == key
        )

    # ---------------------------------------------------------------- clauses

    def _modifiers(self) -> tuple[list[Node], int | None, int | None]:
        orders: list[Node] = []
        limit = offset = None
        for m in self.node["modifiers"]:
            kind = m.get("type")
            if kind == "ORDER_MODIFIER":
                orders.extend(m["orders"])
            elif kind == "LIMIT_MODIFIER":
                limit, offset = _limit(m)
            elif kind == "DISTINCT_MODIFIER":
                raise QueryRejected(
                    "SELECT DISTINCT",
                    "is not supported on the dataset query: GROUP BY makes groups distinct",
                )
            else:
                raise QueryRejected(f"modifier {kind}", "is not supported")
        return orders, limit, offset

    def _groups(self) -> list[Node]:
        node = self.node
        if node["aggregate_handling"] == "FORCE_AGGREGATES":  # GROUP BY ALL
            return [_no_alias(i) for i in self.items if not _has_aggregate(i)]
        groups = [self._resolve_group(g) for g in node["group_expressions"]]
        sets = node["group_sets"]
        if groups and sets != [list(range(len(groups)))]:
            raise QueryRejected(
                "GROUPING SETS/ROLLUP/CUBE",
                "is not allowed: a subtotal next to its parts reveals a suppressed part by subtraction",
            )
        if not groups and sets not in ([], [[]]):
            raise QueryRejected("GROUPING SETS", "is not allowed")
        return groups

    def _resolve_group(self, g: Node) -> Node:
        index = _integer_constant(g)
        if index is not None:  # GROUP BY 2 means the second select item
            if not 1 <= index <= len(self.items):
                raise QueryRejected(
                    f"GROUP BY {index}",
                    f"is out of range: the select list has {len(self.items)} items",
                )
            return _no_alias(self.items[index - 1])
        if g.get("class") == "COLUMN_REF" and len(g["column_names"]) == 1:
            name = fold(g["column_names"][0])
            # a table column wins over a select alias of the same name, as in DuckDB
            if self.table.column(name) is None and name in self.item_aliases:
                return _no_alias(self.items[self.item_aliases.index(name)])
        return g

    def _orders(self, terms: list[Node]) -> list[tuple[str, Node | None, str]]:
        """ORDER BY terms as ``(position, None, suffix)`` for an output column (named by
        position, alias, ALL or the same expression) and ``("", expression, suffix)`` for
        anything else; the suffix is the direction and NULLS order."""
        out: list[tuple[str, Node | None, str]] = []
        canon = [self._canon_loose(i) for i in self.items]
        for term in terms:
            direction = {"ASCENDING": " ASC", "DESCENDING": " DESC", "ORDER_DEFAULT": ""}.get(
                term["type"]
            )
            nulls = {
                "ORDER_DEFAULT": "",
                "NULLS FIRST": " NULLS FIRST",
                "NULLS LAST": " NULLS LAST",
            }.get(term["null_order"])
            if direction is None or nulls is None:
                raise QueryRejected(
                    f"ORDER BY {term['type']} {term['null_order']}", "is not supported"
                )
            e = term["expression"]
            index = _integer_constant(e)
            refs: list[tuple[str, Node | None]]
            if e.get("class") == "STAR":
                if not e.get("columns") or e.get("expr") is not None:
                    raise QueryRejected("ORDER BY *", "is not supported; use ORDER BY ALL")
                refs = [(str(i + 1), None) for i in range(len(self.items))]  # ORDER BY ALL
            elif index is not None:
                if not 1 <= index <= len(self.items):
                    raise QueryRejected(
                        f"ORDER BY {index}",
                        f"is out of range: the select list has {len(self.items)} items",
                    )
                refs = [(str(index), None)]
            elif (
                e.get("class") == "COLUMN_REF"
                and len(e["column_names"]) == 1
                and fold(e["column_names"][0]) in self.item_aliases
            ):  # a bare name in ORDER BY means the select alias first, as in DuckDB
                refs = [(str(self.item_aliases.index(fold(e["column_names"][0])) + 1), None)]
            elif self._canon_loose(e) in canon:
                refs = [(str(canon.index(self._canon_loose(e)) + 1), None)]
            else:
                refs = [("", e)]
            out.extend((position, expression, direction + nulls) for position, expression in refs)
        return out

    def _canon_loose(self, e: Node) -> Any:
        return _no_alias(strip_locations(e))

    # ---------------------------------------------------------------- expressions

    def _check(self, e: Node, clause: str) -> None:
        """Check one expression of ``clause`` (WHERE, GROUP BY, SELECT, HAVING, ORDER BY)."""
        cls = e["class"]
        if cls == "COLUMN_REF":
            self._outside_aggregate(self._column(e), clause)
        elif cls == "CONSTANT":
            pass
        elif cls == "FUNCTION":
            name = fold(e["function_name"])
            if name in AGGREGATES:
                if clause in ("WHERE", "GROUP BY"):
                    raise QueryRejected(f"aggregate {name}", f"is not allowed in {clause}")
                self._aggregate(e, name)
                return
            _plain_call(e, name)
            for a in e["arguments"]:
                self._check(a["expression"], clause)
        elif cls == "COMPARISON":
            if e["type"] not in _COMPARISONS:
                raise QueryRejected(f"comparison {e['type']}", "is not supported")
            self._check(e["left"], clause)
            self._check(e["right"], clause)
        elif cls in ("CONJUNCTION", "OPERATOR"):
            if cls == "OPERATOR" and e["type"] not in _OPERATORS:
                raise QueryRejected(f"operator {e['type']}", "is not supported")
            for c in e["children"]:
                self._check(c, clause)
        elif cls == "CASE":
            for check in e["case_checks"]:
                self._check(check["when_expr"], clause)
                self._check(check["then_expr"], clause)
            self._check(e["else_expr"], clause)
        elif cls == "CAST":
            _check_type(e["type_expr"])
            self._check(e["child"], clause)
        elif cls == "BETWEEN":
            for k in ("input", "lower", "upper"):
                self._check(e[k], clause)
        elif cls == "STAR":
            raise QueryRejected("*", f"is not allowed in {clause}")
        else:
            raise QueryRejected(_CLASS_NAMES.get(cls, f"{cls} expression"), "is not allowed")

    def _aggregate(self, e: Node, name: str) -> None:
        label = name.upper()
        if e.get("filter") is not None:
            raise QueryRejected(
                f"FILTER clause on {label}",
                "is not allowed: it aggregates a subset of the group whose size nobody checked",
            )
        if e.get("order_bys", {}).get("orders") or e.get("export_state"):
            raise QueryRejected(f"ORDER BY or EXPORT_STATE inside {label}", "is not allowed")
        args = e["arguments"]
        if any(a.get("name") for a in args):
            raise QueryRejected(f"named argument of {label}", "is not allowed")
        if name == "count_star":
            if args:
                raise QueryRejected(f"{label} with arguments", "is not supported")
            return
        if len(args) != 1:
            raise QueryRejected(f"{label} with {len(args)} arguments", "is not supported")
        arg = args[0]["expression"]
        if arg.get("class") == "CONSTANT":
            if e.get("distinct") and name != "count":
                raise QueryRejected(f"DISTINCT inside {label}", "is not allowed")
            return
        if arg.get("class") != "COLUMN_REF":
            what = "*" if arg.get("class") == "STAR" else "an expression"
            raise QueryRejected(
                f"argument of {label}",
                f"must be a plain column, * or a literal, got {what}: an expression inside an "
                "aggregate can select a subset smaller than the group; compute on the aggregates "
                "instead",
            )
        column = self._column(arg)
        role = self._role(column)
        if e.get("distinct") and (name != "count" or role == "sensitive"):
            # COUNT(*) - COUNT(DISTINCT x) and SUM(x) - SUM(DISTINCT x) isolate the values
            # that occur more than once: one subject's repeated rows, out of a large group
            raise QueryRejected(
                f"DISTINCT inside {label}({column.name})",
                "is not allowed: it aggregates a subset of the group (its distinct values) whose "
                "size nobody checked; only COUNT(DISTINCT) of a key, public, internal or masked "
                "column is allowed",
            )
        if role == "key":
            if name != "count":
                raise QueryRejected(
                    f"key column '{column.name}'",
                    f"may only be counted (COUNT(DISTINCT {column.name})), not used in {label}",
                )
        elif role == "masked":
            if name != "count":
                raise QueryRejected(
                    f"masked column '{column.name}'",
                    f"may only be counted inside an aggregate, not used in {label}: that would show "
                    "one subject's masked value",
                )
        elif role == "sensitive":
            if name in _MIN_MAX and not self.policy.allow_min_max:
                raise QueryRejected(
                    f"{label} on sensitive column '{column.name}'", "is not allowed by the policy"
                )
            if name not in _SENSITIVE_AGGREGATES and name not in _MIN_MAX:
                raise QueryRejected(
                    f"sensitive column '{column.name}'",
                    f"may only be the argument of {self._sensitive_aggregates()}, not {label}",
                )

    def _outside_aggregate(self, column: Column, clause: str) -> None:
        role = self._role(column)
        if role == "key":
            doing = {"WHERE": "compared in WHERE", "GROUP BY": "grouped by"}.get(
                clause, f"used in {clause} outside COUNT"
            )
            raise QueryRejected(
                f"key column '{column.name}'",
                f"may not be {doing}: it may only be counted, COUNT(DISTINCT {column.name})",
            )
        if role == "sensitive":
            raise QueryRejected(
                f"sensitive column '{column.name}'",
                f"may only be the argument of {self._sensitive_aggregates()}, not used in {clause}",
            )

    def _sensitive_aggregates(self) -> str:
        return "COUNT, SUM, AVG, MIN or MAX" if self.policy.allow_min_max else "COUNT, SUM or AVG"

    def _column(self, ref: Node) -> Column:
        parts = [str(p) for p in ref["column_names"]]
        if len(parts) == 2 and fold(parts[0]) == self.qualifier:
            parts = parts[1:]
        if len(parts) != 1:
            raise QueryRejected(
                f"column reference {'.'.join(parts)}",
                f"is not a column of {self.alias or self.table.name}",
            )
        column = self.table.column(parts[0])
        if column is None:
            raise QueryRejected(
                f"column '{parts[0]}'",
                f"does not exist in {self.table.name} (select-list aliases can be used only in "
                "GROUP BY and ORDER BY)",
            )
        if self._unusable(column):
            if column.level == "core":
                raise QueryRejected(
                    f"column '{column.name}'", "is classified core and may not be used"
                )
            raise QueryRejected(f"column '{column.name}'", "is on the policy's negative list")
        return column

    def _unusable(self, column: Column) -> bool:
        return column.level == "core" or fold(column.name) in self.policy.denied_columns

    def _role(self, column: Column) -> str:
        if fold(column.name) == fold(self.table.key_column):
            return "key"
        if fold(column.name) in self.policy.masked_columns:
            return "masked"
        return column.level

    # ---------------------------------------------------------------- rewriting

    def _rewrite(self, e: Node) -> Node:
        """A copy of ``e`` with masks applied and float SUM/AVG made order-independent."""
        if e.get("class") == "COLUMN_REF":
            column = self._column(e)
            kind = self.policy.masked_columns.get(fold(column.name))
            if kind is not None and self._role(column) == "masked":
                return _masks.mask(kind, e)
            return copy.deepcopy(e)
        if e.get("class") == "FUNCTION" and fold(e["function_name"]) in ("sum", "avg", "mean"):
            arg = e["arguments"][0]["expression"] if e["arguments"] else None
            if arg is not None and arg.get("class") == "COLUMN_REF":
                column = self._column(arg)
                if self._role(column) != "masked" and column.type.upper() in _FLOAT_TYPES:
                    return _compensated(e, arg)
        return {k: self._rewrite_any(v) for k, v in e.items()}

    def _rewrite_any(self, v: Any) -> Any:
        if isinstance(v, dict):
            return (
                self._rewrite(v)
                if "class" in v
                else {k: self._rewrite_any(x) for k, x in v.items()}
            )
        if isinstance(v, list):
            return [self._rewrite_any(x) for x in v]
        return v


def _compensated(e: Node, arg: Node) -> Node:
    """SUM/AVG of a floating-point column as Kahan-Babuska sums.

    A parallel SUM over doubles depends on how DuckDB's threads happened to split the rows, so
    its last bits vary from run to run, and so would the digest; compensated summation gives
    the correctly rounded sum in all but astronomically rare cases, whatever the split. AVG
    becomes ``fsum(x) / count(x)``, which shares the one ``fsum`` with a SUM of the same column
    and costs about nothing more (``favg`` is a second compensated sum).
    """
    template = (
        "fsum(__veil_x)"
        if fold(e["function_name"]) == "sum"
        else "fsum(__veil_x) / count(__veil_x)"
    )
    out: Node = substitute(parse_expression(template), "__veil_x", arg)
    for n in _walk(out):
        if n.get("class") == "FUNCTION" and n["function_name"] in ("fsum", "count"):
            n["distinct"] = bool(e.get("distinct"))
    return out


class _OutputRewriter:
    """Rewrites select list, HAVING and ORDER BY expressions over the stored group columns:
    a GROUP BY expression becomes ``__veil_k<i>``, an aggregate call ``__veil_a<j>``."""

    def __init__(
        self,
        analyzer: CoreAnalyzer,
        group_index: dict[str, int],
        aggregates: list[Node],
        aggregate_index: dict[str, int],
    ) -> None:
        self.analyzer = analyzer
        self.group_index = group_index
        self.aggregates = aggregates
        self.aggregate_index = aggregate_index

    def rewrite(self, e: Node, clause: str) -> Node:
        canon = self.analyzer._canon(e)
        if canon in self.group_index:
            return _column_ref(f"__veil_k{self.group_index[canon]}")
        if e.get("class") == "FUNCTION" and fold(e["function_name"]) in AGGREGATES:
            if canon not in self.aggregate_index:
                self.aggregate_index[canon] = len(self.aggregates)
                self.aggregates.append(e)
            return _column_ref(f"__veil_a{self.aggregate_index[canon]}")
        if e.get("class") == "COLUMN_REF":
            name = self.analyzer._column(e).name
            raise QueryRejected(
                f"column '{name}' in {clause}",
                "must be a GROUP BY expression or inside an aggregate (write it exactly as in GROUP BY)",
            )
        return {k: self._any(v, clause) for k, v in e.items()}

    def _any(self, v: Any, clause: str) -> Any:
        if isinstance(v, dict):
            return (
                self.rewrite(v, clause)
                if "class" in v and v["class"] != "TYPE"
                else {k: self._any(x, clause) for k, x in v.items()}
            )
        if isinstance(v, list):
            return [self._any(x, clause) for x in v]
        return v


def _column_ref(name: str) -> Node:
    ref = parse_expression("__veil_placeholder")
    ref["column_names"] = [name]
    return ref


# --------------------------------------------------------------------------- post-processing


def check_layer(node: Node, outermost: bool) -> None:
    """A post-processing layer sees only the core's checked output: any allowlisted
    expression goes (``_scan`` already checked every function and expression class)."""
    for m in node["modifiers"]:
        kind = m.get("type")
        if kind == "LIMIT_MODIFIER":
            if not outermost:
                raise QueryRejected(
                    "LIMIT in an inner subquery", "is not supported; limit the outer query"
                )
            _limit(m)
        elif kind not in ("ORDER_MODIFIER", "DISTINCT_MODIFIER"):
            raise QueryRejected(f"modifier {kind}", "is not supported")
    for n in _walk(node, skip=node["from_table"]):
        if n.get("class") == "CAST":
            _check_type(n["type_expr"])
        if n.get("class") == "FUNCTION":
            name = fold(n["function_name"])
            if name in AGGREGATES:
                if n.get("order_bys", {}).get("orders") or n.get("export_state"):
                    raise QueryRejected(
                        f"ORDER BY or EXPORT_STATE inside {name.upper()}", "is not allowed"
                    )
            else:
                _plain_call(n, name)
    sub = node["from_table"]
    for key, value in sub.items():
        if key not in (
            "type",
            "alias",
            "sample",
            "query_location",
            "query_location_length",
            "subquery",
            "column_name_alias",
        ) and value not in (None, [], {}, "", False):
            raise QueryRejected(f"subquery option {key!r}", "is not supported")
    if sub.get("sample") is not None:
        raise QueryRejected("SAMPLE", "is not allowed: a replayed query must give the same answer")


# --------------------------------------------------------------------------- helpers


def _walk(node: Any, skip: Any = None) -> Iterator[Node]:
    """Every dict in ``node``, not descending into ``skip``."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n is skip:
            continue
        if isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, dict):
            yield n
            stack.extend(n.values())


def _plain_call(e: Node, name: str) -> None:
    if e.get("filter") is not None or e.get("distinct") or e.get("order_bys", {}).get("orders"):
        raise QueryRejected(f"FILTER, DISTINCT or ORDER BY on function {name}", "is not allowed")
    if any(a.get("name") for a in e["arguments"]):
        raise QueryRejected(f"named argument of function {name}", "is not allowed")


def _check_type(t: Node) -> None:
    name = str(t.get("type_name", "")).upper()
    if t.get("class") != "TYPE" or name not in _CAST_TYPES or t.get("catalog") or t.get("schema"):
        raise QueryRejected(f"CAST to {name or '?'}", "is not supported")
    for c in t.get("children", []):
        if c.get("class") != "CONSTANT" or c["literal"]["kind"] != "INTEGER":
            raise QueryRejected(f"type parameter of {name}", "must be an integer literal")


def _limit(m: Node) -> tuple[int | None, int | None]:
    if m.get("limit_type") != "ROW_COUNT":
        raise QueryRejected(
            f"LIMIT of type {m.get('limit_type')}", "is not supported; give a row count"
        )
    values: list[int | None] = []
    for key in ("limit", "offset"):
        e = m.get(key)
        if e is None:
            values.append(None)
            continue
        n = _integer_constant(e)
        if n is None or n < 0:
            raise QueryRejected(key.upper(), "must be a non-negative integer literal")
        values.append(n)
    return values[0], values[1]


def _integer_constant(e: Node) -> int | None:
    if e.get("class") == "CONSTANT" and e["literal"]["kind"] == "INTEGER":
        return int(e["literal"]["text"])
    return None


def _has_aggregate(e: Any) -> bool:
    return any(
        n.get("class") == "FUNCTION" and fold(str(n.get("function_name"))) in AGGREGATES
        for n in _walk(e)
    )


def _no_alias(e: Node) -> Node:
    return dict(e, alias="")

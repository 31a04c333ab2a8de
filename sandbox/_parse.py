"""DuckDB's own parser, used without data: SQL -> JSON AST -> SQL.

Validation never guesses at SQL syntax: ``json_serialize_sql`` parses with the very parser
that will run the query, and ``json_deserialize_sql`` turns a (rewritten) AST back into text.
Both run on a per-thread, in-memory DuckDB connection that has no tables, no file access
and a locked configuration, so parsing an attacker's text can do nothing but parse it.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from typing import Any

import duckdb

from veil.sandbox._errors import QueryRejected

Node = dict[str, Any]

_local = threading.local()
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*\n?|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)


def connection() -> duckdb.DuckDBPyConnection:
    """This thread's parse-only connection (created on first use, then reused)."""
    con: duckdb.DuckDBPyConnection | None = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(
            ":memory:",
            config={
                "threads": 1,
                "memory_limit": "256MB",
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "temp_directory": "",
            },
        )
        con.execute("SET allowed_directories = []")
        con.execute("SET allowed_paths = []")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        _local.con = con
        _local.state = {}
    return con


def thread_state() -> dict[str, Any]:
    """Per-thread scratch state that lives as long as this thread's parse connection."""
    connection()
    state: dict[str, Any] = _local.state
    return state


def statement_kinds(sql: str) -> list[str]:
    """The kind of every statement in ``sql`` (``SELECT``, ``COPY``, ``INSTALL`` ...), parsed
    but not run; raises QueryRejected("SQL syntax", ...) when it does not parse."""
    try:
        statements = connection().extract_statements(sql)
    except duckdb.Error as e:
        raise QueryRejected("SQL syntax", f"is invalid: {_first_line(e)}") from None
    kinds = []
    for s in statements:
        kind = str(s.type).rsplit(".", 1)[-1].upper()
        if kind != "SELECT":
            # name what the analyst wrote: INSTALL and LOAD share a type, USE is a SET ...
            m = _FIRST_WORD.match(s.query)
            kind = m.group(1).upper() if m else kind
        kinds.append(kind)
    return kinds


def serialize(sql: str) -> Node:
    """``json_serialize_sql(sql)`` as a dict; raises QueryRejected when DuckDB reports an error."""
    text = connection().execute("SELECT json_serialize_sql($1)", [sql]).fetchone()
    assert text is not None
    try:
        tree: Node = json.loads(text[0])
    except RecursionError:
        raise QueryRejected("expression", "is nested too deeply to check") from None
    if tree.get("error"):
        message = str(tree.get("error_message", "unknown error"))
        raise QueryRejected("SQL", f"cannot be parsed as a single SELECT: {message}")
    return tree


def deserialize(statements: list[Node]) -> str:
    """SQL text for SELECT nodes, via ``json_deserialize_sql``."""
    return deserialize_many([statements])[0]


def deserialize_many(batches: list[list[Node]]) -> list[str]:
    """``deserialize`` for several statement lists in one round trip."""
    trees = [
        json.dumps(
            {"error": False, "statements": [{"node": n, "named_param_map": []} for n in nodes]}
        )
        for nodes in batches
    ]
    try:
        row = (
            connection()
            .execute(
                "SELECT list_transform($1::VARCHAR[], lambda j: json_deserialize_sql(j))", [trees]
            )
            .fetchone()
        )
    except duckdb.Error as e:  # e.g. "Serialized JSON exceeds the maximum nesting depth"
        raise QueryRejected("query", f"cannot be rendered back to SQL: {_first_line(e)}") from None
    assert row is not None and len(row[0]) == len(batches)
    return [str(text) for text in row[0]]


def expression_nodes(expressions: list[Node]) -> list[list[Node]]:
    """Statements whose text, fed to :func:`expression_text`, is each expression's SQL."""
    return [[select_node([dict(e, alias="")])] for e in expressions]


def expression_text(select_text: str) -> str:
    """The expression of a deserialized ``SELECT <expression>``, wrapped in parentheses."""
    if not select_text.startswith("SELECT "):
        raise AssertionError(f"unexpected deserialized form {select_text[:40]!r}")
    return f"({select_text[len('SELECT ') :]})"


def normalize(sql: str) -> str:
    """Canonical text of a query as DuckDB parses it: whitespace, comments and the case of
    keywords disappear; everything that changes the meaning stays (identifiers keep their
    case, literals their text). Raises QueryRejected for text that is not SELECT statements."""
    return deserialize([s["node"] for s in serialize(sql)["statements"]])


def select_node(select_list: list[Node]) -> Node:
    """A bare ``SELECT <list>`` node, as the parser would produce it."""
    return {
        "type": "SELECT_NODE",
        "modifiers": [],
        "cte_map": {"map": []},
        "select_list": select_list,
        "from_table": {
            "type": "EMPTY",
            "alias": "",
            "sample": None,
            "query_location": 18446744073709551615,
            "query_location_length": 0,
        },
        "where_clause": None,
        "group_expressions": [],
        "group_sets": [],
        "aggregate_handling": "STANDARD_HANDLING",
        "having": None,
        "sample": None,
        "qualify": None,
    }


@functools.cache
def _parsed(sql: str) -> Node:
    return serialize(sql)


def parse_expression(sql: str) -> Node:
    """The AST of one expression written by us (masks, constants); a fresh copy each time."""
    return copy.deepcopy(_parsed(f"SELECT {sql}")["statements"][0]["node"]["select_list"][0])


def parse_from(sql: str) -> Node:
    """The FROM clause of ``SELECT 1 FROM <sql>`` written by us; a fresh copy each time."""
    return copy.deepcopy(_parsed(f"SELECT 1 FROM {sql}")["statements"][0]["node"]["from_table"])


def substitute(node: Any, placeholder: str, replacement: Node) -> Any:
    """``node`` with every column reference named ``placeholder`` replaced by ``replacement``."""
    if isinstance(node, dict):
        if node.get("class") == "COLUMN_REF" and node.get("column_names") == [placeholder]:
            return dict(replacement, alias="")
        return {k: substitute(v, placeholder, replacement) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, placeholder, replacement) for v in node]
    return node


def strip_locations(node: Any) -> Any:
    """``node`` without parser positions, for structural comparison."""
    if isinstance(node, dict):
        return {
            k: strip_locations(v)
            for k, v in node.items()
            if k not in ("query_location", "query_location_length")
        }
    if isinstance(node, list):
        return [strip_locations(v) for v in node]
    return node


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

"""The sandbox's values: frozen, validated dataclasses.

Every constructor checks its arguments and raises ``ValueError`` naming the field and what
was expected: these values come from the node's own catalog and configuration, so a bad one
is a programming or configuration error, not something an analyst caused.
"""

from __future__ import annotations

import math
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy

LEVELS = ("public", "internal", "sensitive", "core")
MASK_KINDS = ("phone", "email", "id_number")

# the node's snapshot rule for column and dataset names (node/snapshot.py): SQL identifiers
# usable without quoting, compared ignoring case
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_ ,()\[\]]*")
_GLOB_CHARS = frozenset("*?[]{}")
RESERVED_PREFIX = "__veil"


def fold(name: str) -> str:
    """How SQL compares identifiers: ASCII case-insensitively."""
    return name.lower()


def _identifier(what: str, value: object) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{what} must be an ASCII letter or _ then letters, digits or _ "
            f"(at most 63 characters), got {value!r}"
        )
    if fold(value).startswith(RESERVED_PREFIX):
        raise ValueError(f"{what} must not start with {RESERVED_PREFIX!r}, got {value!r}")
    return value


@dataclass(frozen=True)
class Column:
    """One column of a dataset: its name, its DuckDB type and its classification level."""

    name: str
    type: str  # the DuckDB type as DESCRIBE prints it, e.g. "BIGINT", "DECIMAL(12,2)"
    level: str  # one of LEVELS

    def __post_init__(self) -> None:
        _identifier("column name", self.name)
        if not isinstance(self.type, str) or not _TYPE.fullmatch(self.type):
            raise ValueError(
                f"column {self.name}: type must be a DuckDB type name, got {self.type!r}"
            )
        if self.level not in LEVELS:
            raise ValueError(
                f"column {self.name}: level must be one of {', '.join(LEVELS)}, got {self.level!r}"
            )


@dataclass(frozen=True)
class Table:
    """A dataset as the analyst sees it: an SQL name over an immutable Parquet snapshot."""

    name: str  # the SQL name the analyst uses, e.g. "customers"
    path: str  # absolute path of the immutable Parquet snapshot
    columns: tuple[Column, ...]
    key_column: str  # the data subject key: distinct values count distinct people

    def __post_init__(self) -> None:
        _identifier("table name", self.name)
        if not isinstance(self.path, str) or not os.path.isabs(self.path) or "\0" in self.path:
            raise ValueError(
                f"table {self.name}: path must be an absolute file path, got {self.path!r}"
            )
        if _GLOB_CHARS & set(self.path):
            raise ValueError(
                f"table {self.name}: path must not contain * ? [ ] {{ }}, which DuckDB would "
                f"expand as a glob pattern: {self.path!r}"
            )
        columns = tuple(self.columns)
        object.__setattr__(self, "columns", columns)
        if not columns or not all(isinstance(c, Column) for c in columns):
            raise ValueError(f"table {self.name}: columns must be a non-empty sequence of Column")
        seen: set[str] = set()
        for c in columns:
            if fold(c.name) in seen:
                raise ValueError(
                    f"table {self.name}: column {c.name!r} appears twice (ignoring case)"
                )
            seen.add(fold(c.name))
        if not isinstance(self.key_column, str) or fold(self.key_column) not in seen:
            raise ValueError(
                f"table {self.name}: key_column {self.key_column!r} is not one of its columns"
            )

    def column(self, name: str) -> Column | None:
        """The column called ``name`` (ignoring case), or None."""
        for c in self.columns:
            if fold(c.name) == fold(name):
                return c
        return None


@dataclass(frozen=True)
class Policy:
    """What the data holder allows analysts to do with the job's datasets.

    ``masked_columns`` maps a column name (in any of the job's tables) to a mask kind (one of
    ``MASK_KINDS``); such a column is replaced by its masked value everywhere in a query, which
    makes it usable as a GROUP BY key (the groups still need ``min_group_size`` subjects).
    ``denied_columns`` and ``denied_functions`` are the negative list: names, compared
    ignoring case. A core or denied column stays unusable even when it is also masked.
    """

    min_group_size: int = 10
    allow_min_max: bool = False  # MIN/MAX on sensitive columns
    masked_columns: Mapping[str, str] = field(default_factory=dict)
    denied_columns: frozenset[str] = frozenset()
    denied_functions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.min_group_size, bool) or not isinstance(self.min_group_size, int):
            raise TypeError(f"min_group_size must be an int, got {self.min_group_size!r}")
        if self.min_group_size < 1:
            raise ValueError(f"min_group_size must be at least 1, got {self.min_group_size}")
        if not isinstance(self.allow_min_max, bool):
            raise TypeError(f"allow_min_max must be a bool, got {self.allow_min_max!r}")
        masked: dict[str, str] = {}
        for name, kind in dict(self.masked_columns).items():
            _identifier("masked column", name)
            if kind not in MASK_KINDS:
                raise ValueError(
                    f"masked column {name}: mask kind must be one of {', '.join(MASK_KINDS)}, "
                    f"got {kind!r}"
                )
            masked[fold(name)] = kind
        object.__setattr__(self, "masked_columns", types.MappingProxyType(masked))
        for attr in ("denied_columns", "denied_functions"):
            value = getattr(self, attr)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{attr} must be a set of names, got {value!r}")
            object.__setattr__(self, attr, frozenset(fold(v) for v in value))

    def __reduce__(self) -> tuple[Any, ...]:  # the mapping proxy does not pickle; a dict does
        return (Policy, (self.min_group_size, self.allow_min_max, dict(self.masked_columns),
                         self.denied_columns, self.denied_functions))

    def __hash__(self) -> int:  # the mapping proxy is not hashable; its items are
        return hash(
            (
                self.min_group_size,
                self.allow_min_max,
                tuple(sorted(self.masked_columns.items())),
                self.denied_columns,
                self.denied_functions,
            )
        )


@dataclass(frozen=True)
class Limits:
    """Resource limits for one query: DuckDB's memory and threads, wall time, output size."""

    memory_limit_mb: int = 1024
    threads: int = 2
    timeout_s: float = 30.0
    max_result_rows: int = 10_000
    max_sql_bytes: int = 100_000
    max_result_bytes: int = 1_000_000  # the serialized result; the wire carries about twice that

    #: the smallest value of each integer limit (a smaller one is a configuration error)
    MINIMUMS: ClassVar[Mapping[str, int]] = types.MappingProxyType({
        "memory_limit_mb": 16, "threads": 1, "max_result_rows": 1, "max_sql_bytes": 16,
        "max_result_bytes": 64,
    })

    def __post_init__(self) -> None:
        for attr, low in self.MINIMUMS.items():
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{attr} must be an int of at least {low}, got {value!r}")
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {t!r}")


@dataclass(frozen=True)
class Meters:
    """What one run cost, in exact integers (the node prices and logs these)."""

    rows_scanned: int  # rows DuckDB read from the datasets' Parquet files
    result_rows: int  # rows returned to the analyst
    cpu_ms: int  # CPU time of DuckDB's threads for the query plus this thread's own work
    wall_ms: int  # wall time of run(), connection set-up included
    bytes_out: int  # size of the canonical serialization of the result (see digest)


@dataclass(frozen=True)
class QueryResult:
    """An approved query's answer: aggregates over groups of at least min_group_size subjects.

    ``arrays`` holds one array per column, in result order. Integer, floating-point and
    boolean columns are numpy arrays of the natural dtype (``numpy.ma.MaskedArray`` with NULLs
    masked when the column has NULLs); DECIMAL, HUGEINT, text, temporal and nested columns are
    object arrays of exact Python values (``decimal.Decimal``, ``int``, ``str``, ``datetime``
    ...), with ``None`` for NULL. Column names are unique: a repeated name gets ``_1``, ``_2``.
    ``digest`` is the hex SHA-256 of the canonical serialization described in
    ``sandbox/_result.py``; the same query on the same snapshots gives the same digest.
    """

    columns: tuple[str, ...]
    types: tuple[str, ...]
    arrays: Mapping[str, numpy.ndarray]
    suppressed_groups: int
    meters: Meters
    digest: str
    tables_used: tuple[str, ...]

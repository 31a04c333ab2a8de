"""run(): execute a ValidatedQuery in a fresh, locked-down DuckDB and enforce group sizes.

Isolation. Every run gets an in-memory DuckDB database of its own for its duration (a
fresh one, or an idle one made for exactly the same snapshot, columns and limits: ``_Pool``). Before
anything of the analyst's runs, it gets one read-only view per dataset used, over that
dataset's Parquet snapshot and showing only its usable columns (core and denied columns are
not even in the view; the key column is, for counting); then ``allowed_paths`` is set to
exactly those snapshot files, ``allowed_directories`` to none, external access, extension
autoloading and autoinstalling are switched off, spilling to disk is disabled
(``temp_directory=''``), memory and threads are capped, and ``lock_configuration`` makes all of
it final. Even if validation had a hole, the connection cannot read another file, write one,
load an extension or change a setting. A watchdog thread calls ``interrupt()`` at the
deadline (and keeps calling until the run ends, so no statement escapes it). ``session_for`` is all of
this in one place; the differentially private path (``sandbox/_dp.py``) runs in it too.

Two passes. The *group pass* reads the dataset once, into a temporary table with one row per
group: the GROUP BY keys, each aggregate call of the query (plain column arguments only, see
``_rules``) and a test of the group's size. Groups that fail the test are counted
(``suppressed_groups``) and deleted. Only then does the *output pass* evaluate the select
list, HAVING, ORDER BY, LIMIT and any post-processing layers, over the surviving groups, with
a tie-break on every output column so that the row order, hence the digest, is deterministic.
So HAVING cannot change the suppressed count (``HAVING sum(salary) > x`` over a small group
would otherwise answer a question about it), and no expression ever runs on a small group's
aggregates (one that fails there, like a CAST, would tell by failing).

Group sizes, exactly. A group passes when it covers at least ``min_group_size = k`` distinct
subjects (non-NULL key values):

- Exact, expensive: ``count(DISTINCT key) >= k``. A distinct count over 10M rows costs about
  15x the plain aggregate, so this is the fallback only (``k > 1025``).
- Exact, cheap, used otherwise: ``rows > S``, where ``rows`` is the group's number of rows
  with a non-NULL key and ``S`` the sum of the ``k - 1`` largest per-subject row counts in the
  whole snapshot. A group with at most ``k - 1`` subjects has at most ``S`` rows, so
  ``rows > S`` proves ``>= k`` subjects, and ``rows < k`` proves fewer. Only groups in between
  are undecided; for those alone (rows filtered by a hash of their group key) a second pass
  counts distinct keys exactly. ``S`` comes from one GROUP BY over the key per snapshot, made
  by the first query on that snapshot in this process (within its time limit, outside its
  meters) and cached by file identity, since snapshots are immutable. When the key has no
  NULLs, ``rows`` is just ``count(*)``, which DuckDB shares with the analyst's own COUNT(*).

Errors. Interrupts become QueryLimitExceeded("timeout"), DuckDB's out-of-memory errors
QueryLimitExceeded("memory"); any other runtime error becomes a SandboxError naming only the
error's kind, because DuckDB's messages can quote row values (``Could not convert 'Alice'``).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import duckdb

from veil.sandbox import _result
from veil.sandbox._errors import QueryLimitExceeded, SandboxError
from veil.sandbox._model import Limits, Meters, QueryResult, fold
from veil.sandbox._parse import quote_ident, quote_str
from veil.sandbox._query import ValidatedQuery
from veil.sandbox._rules import Core

_TOP = 1024  # per-subject row counts kept per snapshot: enough for min_group_size <= 1025


@dataclass(frozen=True)
class _Stats:
    top: tuple[int, ...]  # the largest per-subject row counts, descending
    null_keys: int  # rows whose key is NULL (they belong to no subject)


class _SnapshotFacts:
    """What the engine learns once about a snapshot file: its column types, its subjects' row
    counts. Keyed by the file's identity (path, device, inode, size, mtime): snapshots are
    immutable, and a file replaced in place gets a new identity anyway."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()

    def get(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_facts = _SnapshotFacts(512)


def _identity(path: str) -> tuple[Any, ...]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SandboxError(f"snapshot file {path} does not exist") from None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def run(query: ValidatedQuery, limits: Limits) -> QueryResult:
    """Run a validated query under ``limits``; return only groups of at least
    ``min_group_size`` subjects. Raises QueryLimitExceeded on timeout, memory or result rows,
    SandboxError when a snapshot is missing or differs from its declared schema."""
    if not isinstance(query, ValidatedQuery):
        raise TypeError(f"run() takes a ValidatedQuery from validate(), got {type(query).__name__}")
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
    start = time.perf_counter()
    core = query._core
    with session_for(core, limits) as (session, snapshot):
        stats = _subject_stats(session, core, query.min_group_size, snapshot)
        columns, column_types, rows, suppressed = _execute(session, query, stats, limits)
    cpu_start = time.thread_time()
    columns = _result.unique_names(columns)
    serialized = _result.serialize(columns, column_types, rows, suppressed)
    if len(serialized) > limits.max_result_bytes:
        # refused here, before any caller logs or charges it as released
        raise QueryLimitExceeded(
            "result bytes",
            f"the result is {len(serialized):,} bytes, more than the limit of "
            f"{limits.max_result_bytes:,} bytes; aggregate more coarsely or add a LIMIT",
        )
    arrays = _result.arrays(columns, column_types, rows)
    cpu_ms = session.cpu_ms + (time.thread_time() - cpu_start) * 1000
    return QueryResult(
        columns=columns,
        types=column_types,
        arrays=types.MappingProxyType(arrays),
        suppressed_groups=suppressed,
        meters=Meters(
            rows_scanned=session.rows_scanned,
            result_rows=len(rows),
            cpu_ms=round(cpu_ms),
            wall_ms=round((time.perf_counter() - start) * 1000),
            bytes_out=len(serialized),
        ),
        digest=_result.digest(serialized),
        tables_used=query.tables_used,
    )


# --------------------------------------------------------------------------- isolation


@contextlib.contextmanager
def session_for(core: Core, limits: Limits) -> Iterator[tuple[_Session, tuple[Any, ...]]]:
    """A watched session on a locked-down connection for ``core``'s dataset (pooled or
    fresh), and the snapshot's identity. The engine's temporary tables are dropped before the
    connection goes back to the pool; after a timeout or an error it is closed instead."""
    snapshot = _identity(core.table.path)
    key = (snapshot, core.table.name, core.table.columns, core.visible, limits.threads,
           limits.memory_limit_mb)
    con = _pool.take(key) or open_connection(core, limits, snapshot)
    reusable = False
    try:
        with _Session(con, limits) as session:
            yield session, snapshot
            session.execute("DROP TABLE IF EXISTS __veil_g; DROP TABLE IF EXISTS __veil_p",
                            metered=False)
        # after __exit__ the watchdog can no longer touch this session: an interrupt that
        # landed after the last statement would otherwise stay with a pooled connection
        reusable = not session.expired
    finally:
        if reusable:
            _pool.give(key, con)
        else:  # a timeout, an error: never reuse a connection in an unknown state
            con.close()


class _Pool:
    """Idle locked-down connections, reused only for the same snapshot file, the same
    declared and visible columns and the same limits: exactly what a fresh one would be, minus the
    ~14 ms DuckDB takes to create an in-memory database. Only validated SELECTs and the
    engine's own statements ever run on them, and the engine drops its temporary tables
    before giving one back; a run that fails closes its connection instead."""

    def __init__(self, per_key: int, keys: int) -> None:
        self._idle: collections.OrderedDict[Any, list[duckdb.DuckDBPyConnection]] = (
            collections.OrderedDict()
        )
        self._per_key, self._keys = per_key, keys
        self._lock = threading.Lock()

    def take(self, key: Any) -> duckdb.DuckDBPyConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                self._idle.move_to_end(key)
                return idle.pop()
        return None

    def give(self, key: Any, con: duckdb.DuckDBPyConnection) -> None:
        evicted: list[duckdb.DuckDBPyConnection] = []
        with self._lock:
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) < self._per_key:
                idle.append(con)
            else:
                evicted.append(con)
            while len(self._idle) > self._keys:
                evicted += self._idle.popitem(last=False)[1]
        for c in evicted:
            c.close()


_pool = _Pool(per_key=8, keys=32)


@atexit.register
def _close_idle() -> None:
    """Close the idle connections before the interpreter finalizes: a DuckDB connection torn
    down during finalization, with its threads still running, can abort the process."""
    with _pool._lock:
        idle = [c for cons in _pool._idle.values() for c in cons]
        _pool._idle.clear()
    for c in idle:
        c.close()



def open_connection(
    core: Core, limits: Limits, snapshot: tuple[Any, ...] | None = None
) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB that sees the core's dataset and nothing else, locked."""
    table = core.table
    if not os.path.isfile(table.path):
        raise SandboxError(f"table {table.name}: snapshot file {table.path} does not exist")
    types_key = (*(snapshot or _identity(table.path)), "types", core.visible)
    con = duckdb.connect(
        ":memory:",
        config={
            "threads": limits.threads,
            "memory_limit": f"{limits.memory_limit_mb}MB",
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "temp_directory": "",  # no spilling: the sandbox writes no file
        },
    )
    try:
        columns = ", ".join(quote_ident(c) for c in core.visible)
        try:
            con.execute(
                f"CREATE VIEW {quote_ident(table.name)} AS "
                f"SELECT {columns} FROM read_parquet({quote_str(table.path)})"
            )
            actual = _facts.get(types_key)
            if actual is None:
                described = con.execute(f"DESCRIBE {quote_ident(table.name)}").fetchall()
                actual = {fold(str(r[0])): str(r[1]) for r in described}
                _facts.put(types_key, actual)
        except duckdb.Error as e:
            raise SandboxError(
                f"table {table.name}: snapshot {table.path} cannot be read as declared: {_first_line(e)}"
            ) from None
        for c in table.columns:
            if c.name in core.visible and _type_key(actual[fold(c.name)]) != _type_key(c.type):
                raise SandboxError(
                    f"table {table.name}: column {c.name} is declared {c.type} "
                    f"but the snapshot has {actual[fold(c.name)]}"
                )
        con.execute(
            f"SET allowed_paths = [{quote_str(table.path)}]; "
            "SET allowed_directories = []; "
            "SET enable_external_access = false; "
            "SET enable_profiling = 'no_output'; "
            "SET lock_configuration = true"
        )
    except BaseException:
        con.close()
        raise
    return con


class _Watchdog:
    """One thread that interrupts every session past its deadline.

    A thread per run cost more than a small query (start and join on every run). Once a
    session expires it is interrupted again every 10 ms until it ends, since an interrupt
    that lands between two statements would be lost.
    """

    def __init__(self) -> None:
        self._sessions: set[_Session] = set()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="veil-sandbox-watchdog", daemon=True
                )
                self._thread.start()

    def watch(self, session: _Session) -> None:
        self.start()
        with self._wake:
            self._sessions.add(session)
            self._wake.notify()

    def forget(self, session: _Session) -> None:
        with self._wake:
            self._sessions.discard(session)

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for session in [s for s in self._sessions if s.deadline <= now]:
                    session.expired = True
                    session.con.interrupt()
                pending = [s.deadline for s in self._sessions if not s.expired]
                if any(s.expired for s in self._sessions):
                    timeout: float | None = 0.01
                else:
                    timeout = max(0.0, min(pending) - now) if pending else None
                self._wake.wait(timeout)


_watchdog = _Watchdog()


class _Session:
    """Runs statements on one connection under the deadline, translating errors, metering."""

    def __init__(self, con: duckdb.DuckDBPyConnection, limits: Limits) -> None:
        self.con = con
        self.limits = limits
        self.rows_scanned = 0
        self.cpu_ms = 0.0
        self.deadline = time.monotonic() + limits.timeout_s
        self.expired = False

    def __enter__(self) -> Self:
        _watchdog.watch(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _watchdog.forget(self)

    def execute(
        self, sql: str, *, scans_data: bool = False, metered: bool = True, fetch: int | None = None
    ) -> Any:
        """Run one statement; return all rows, or at most ``fetch`` rows plus the description.
        ``scans_data``: count its rows scanned; ``metered=False``: count nothing (our own work
        that is done once per snapshot, not per query)."""
        self._check_deadline()
        try:
            result = self.con.execute(sql)
            rows = result.fetchall() if fetch is None else result.fetchmany(fetch)
            description = result.description
            profile = json.loads(self.con.get_profiling_information()).get("query", {})
        except duckdb.InterruptException:
            raise self._timeout() from None
        except duckdb.OutOfMemoryException:
            raise QueryLimitExceeded(
                "memory",
                f"the query needed more than the memory limit of {self.limits.memory_limit_mb:,} MB",
            ) from None
        except duckdb.Error as e:
            if self.expired:
                raise self._timeout() from None
            raise SandboxError(
                f"the query failed while running ({type(e).__name__}); DuckDB's message is "
                "withheld because it may quote row values"
            ) from None
        self._check_deadline()
        if not metered:
            return rows if fetch is None else (rows, description)
        self.cpu_ms += float(profile.get("cpu_time", 0.0)) * 1000
        if scans_data:
            self.rows_scanned += int(profile.get("total_rows_scanned", 0))
        return rows if fetch is None else (rows, description)

    def _check_deadline(self) -> None:
        if self.expired or time.monotonic() > self.deadline:
            raise self._timeout()

    def _timeout(self) -> QueryLimitExceeded:
        return QueryLimitExceeded(
            "timeout", f"the query ran longer than the limit of {self.limits.timeout_s:g} s"
        )


# --------------------------------------------------------------------------- group sizes


def _subject_stats(
    session: _Session, core: Core, k: int, snapshot: tuple[Any, ...]
) -> _Stats | None:
    """The snapshot's largest per-subject row counts (cached), or None when k is too large."""
    if k - 1 > _TOP:
        return None
    table = core.table
    cache_key = (*snapshot, "subjects", fold(table.key_column))
    cached: _Stats | None = _facts.get(cache_key)
    if cached is not None:
        return cached
    view, key = quote_ident(table.name), core.key_sql
    null_keys = session.execute(
        f"SELECT count(*) FILTER (WHERE {key} IS NULL) FROM {view}", metered=False
    )[0][0]
    top = session.execute(
        f"SELECT count(*) AS n FROM {view} WHERE {key} IS NOT NULL GROUP BY {key} "
        f"ORDER BY n DESC LIMIT {_TOP}",
        metered=False,
    )
    stats = _Stats(top=tuple(int(r[0]) for r in top), null_keys=int(null_keys))
    _facts.put(cache_key, stats)
    return stats


def _execute(
    session: _Session, query: ValidatedQuery, stats: _Stats | None, limits: Limits
) -> tuple[tuple[str, ...], tuple[str, ...], list[tuple[Any, ...]], int]:
    core, k = query._core, query.min_group_size

    # the group pass: group keys, aggregates and the subject test, for every group
    columns = [f"{e} AS __veil_k{m}" for m, e in enumerate(core.keys)]
    columns += [f"{e} AS __veil_a{j}" for j, e in enumerate(core.aggregates)]
    if stats is None:
        columns.append(f"count(DISTINCT {core.key_sql}) >= {k} AS __veil_ok")
        undecided = "false"
    else:
        rows = "count(*)" if stats.null_keys == 0 else f"count({core.key_sql})"
        columns += [f"{rows} > {sum(stats.top[: k - 1])} AS __veil_ok", f"{rows} AS __veil_r"]
        undecided = f"NOT __veil_ok AND __veil_r >= {k}"
    group_pass = f"CREATE TEMP TABLE __veil_g AS SELECT {', '.join(columns)} FROM {core.from_sql}"
    if core.where is not None:
        group_pass += f" WHERE {core.where}"
    if core.keys:
        group_pass += f" GROUP BY {', '.join(core.keys)}"
    session.execute(group_pass, scans_data=True)
    suppressed, n_undecided = session.execute(
        f"SELECT count(*) FILTER (WHERE NOT __veil_ok), count(*) FILTER (WHERE {undecided}) FROM __veil_g"
    )[0]
    if n_undecided:
        _settle_undecided(session, core, k, undecided)
        suppressed = session.execute("SELECT count(*) FROM __veil_g WHERE NOT __veil_ok")[0][0]
    if suppressed:
        # from here on, nothing is computed over a small group
        session.execute("DELETE FROM __veil_g WHERE NOT __veil_ok")

    # the output pass: select list, HAVING, ORDER BY and LIMIT over the surviving groups,
    # then a tie-break on every output column so that the order is total
    names = _result.unique_names(core.names)
    output = f"SELECT {', '.join(f'{e} AS {quote_ident(n)}' for e, n in zip(core.items, names))} FROM __veil_g"
    if core.having is not None:
        output += f" WHERE {core.having}"
    order = [*core.orders, *(f"{i} ASC NULLS LAST" for i in range(1, len(core.items) + 1))]
    output += f" ORDER BY {', '.join(order)}"
    if core.limit is not None:
        output += f" LIMIT {core.limit}"
    if core.offset is not None:
        output += f" OFFSET {core.offset}"
    if query._outer_sql is not None:
        output = f"WITH __veil_core AS ({output}) {query._outer_sql}"
    rows_out, description = session.execute(output, fetch=limits.max_result_rows + 1)
    if len(rows_out) > limits.max_result_rows:
        raise QueryLimitExceeded(
            "result rows",
            f"the result has more than {limits.max_result_rows:,} rows, the limit; "
            "group more coarsely or add a LIMIT",
        )
    return (
        tuple(str(d[0]) for d in description),
        tuple(str(d[1]) for d in description),
        rows_out,
        int(suppressed),
    )


def _settle_undecided(session: _Session, core: Core, k: int, undecided: str) -> None:
    """Count distinct subjects exactly for the groups the row-count bound left undecided."""
    where = f"({core.where})" if core.where is not None else "true"
    if core.keys:
        stored = ", ".join(f"__veil_k{m}" for m in range(len(core.keys)))
        keys = ", ".join(f"{e} AS __veil_k{m}" for m, e in enumerate(core.keys))
        # rows whose group-key hash matches an undecided group: a hash collision only adds rows
        # of other groups, which the GROUP BY below keeps apart
        session.execute(
            f"CREATE TEMP TABLE __veil_p AS SELECT {keys}, count(DISTINCT {core.key_sql}) AS __veil_n "
            f"FROM {core.from_sql} WHERE {where} AND hash({', '.join(core.keys)}) IN "
            f"(SELECT hash({stored}) FROM __veil_g WHERE {undecided}) "
            f"GROUP BY {', '.join(core.keys)}",
            scans_data=True,
        )
        same = " AND ".join(
            f"__veil_g.__veil_k{m} IS NOT DISTINCT FROM __veil_p.__veil_k{m}"
            for m in range(len(core.keys))
        )
        session.execute(
            f"UPDATE __veil_g SET __veil_ok = true FROM __veil_p WHERE {undecided} "
            f"AND __veil_p.__veil_n >= {k} AND {same}"
        )
    else:
        session.execute(
            f"CREATE TEMP TABLE __veil_p AS SELECT count(DISTINCT {core.key_sql}) AS __veil_n "
            f"FROM {core.from_sql} WHERE {where}",
            scans_data=True,
        )
        session.execute(
            f"UPDATE __veil_g SET __veil_ok = true FROM __veil_p WHERE {undecided} AND __veil_p.__veil_n >= {k}"
        )


def _type_key(t: str) -> str:
    return "".join(t.split()).upper()


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

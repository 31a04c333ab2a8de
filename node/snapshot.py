"""Immutable, content-addressed dataset snapshots.

:func:`import_file` turns a ``.csv`` or ``.parquet`` file into a Parquet snapshot named by the
SHA-256 of its bytes, ``<snapshots_dir>/<sha256>.parquet`` (read-only, never rewritten). The same
input content gives the byte-identical snapshot, whatever the number of DuckDB threads, so a
registered version can always be found again and a logged call replayed against it. (The bytes
depend on the DuckDB version that wrote them; the name stays honest either way, because it is
the hash of the bytes.)

CSV is read strictly: RFC 4180 dialect (``,`` separator, ``"`` quote, ``""`` escape, UTF-8, an
optional BOM), the first line is the header, every data row must have as many fields as the
header; blank lines are skipped; nothing is treated as a comment. Column types are detected by
DuckDB from the data.

Column names must be usable in SQL as they are, without quoting: an ASCII letter or ``_``, then
letters, digits or ``_``, at most 63 characters (PostgreSQL's limit), not a reserved SQL keyword,
and unique ignoring case (SQL identifiers are case-insensitive). Non-ASCII names are refused on
purpose: they invite look-alike names that a policy or an analyst would confuse.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import dataclasses
import re
from collections.abc import Callable, Mapping
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from veil.node.errors import InvalidInput

__all__ = ["IDENTIFIER_RULE", "Snapshot", "import_file"]

IDENTIFIER_RULE = (
    "an ASCII letter or _, then letters, digits or _ (at most 63), not a reserved SQL keyword"
)
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SUFFIXES = (".csv", ".parquet")
_HASH_CHUNK = 1 << 22  # 4 MiB: big reads keep hashlib at memory speed and release the GIL
# the CSV reading options: a fixed dialect, never sniffed, so a ragged row is an error
_CSV_OPTIONS = (
    "header = true, strict_mode = true, delim = ',', quote = '\"', escape = '\"', "
    "skip = 0, comment = '', null_padding = false, ignore_errors = false"
)  # encoding: UTF-8, DuckDB's default (naming it explicitly measured ~5% slower)
_RESERVED: frozenset[str] | None = None


@dataclass(frozen=True)
class Snapshot:
    """One registered dataset version: a read-only Parquet file named by its SHA-256."""

    sha256: str  # hex SHA-256 of the snapshot's bytes; its file name
    path: Path
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type), in file order
    bytes: int
    source_sha256: str  # hex SHA-256 of the imported file's bytes
    #: text columns most of whose values read as numbers (a stray value made them VARCHAR)
    numeric_looking: tuple[str, ...] = ()


#: the types ``--type COLUMN=TYPE`` may force on a CSV column
_FORCED_TYPE = re.compile(
    r"(BOOLEAN|SMALLINT|INTEGER|BIGINT|DOUBLE|VARCHAR|DATE|TIMESTAMP|DECIMAL\([1-9][0-9]?,[0-9]{1,2}\))"
)


def check_types(types: Mapping[str, str]) -> dict[str, str]:
    """``{"amount": "decimal(12, 2)"}`` → ``{"amount": "DECIMAL(12,2)"}``, or InvalidInput."""
    out = {}
    for column, type_ in types.items():
        norm = "".join(type_.split()).upper()
        if not _FORCED_TYPE.fullmatch(norm):
            raise InvalidInput(
                f"--type {column}={type_}: expected one of BOOLEAN, SMALLINT, INTEGER, BIGINT, "
                "DOUBLE, VARCHAR, DATE, TIMESTAMP or DECIMAL(P,S)"
            )
        out[column] = norm
    return out


#: called with the fraction of the source converted so far, 0.0 to 1.0 (1.0 exactly once, last)
Progress = Callable[[float], None]


def import_file(source: Path, snapshots_dir: Path, *, threads: int | None = None,
                types: Mapping[str, str] | None = None,
                progress: Progress | None = None) -> Snapshot:
    """Import a ``.csv`` or ``.parquet`` file as a content-addressed Parquet snapshot.

    Writes to a temporary file in ``snapshots_dir`` and links it to ``<sha256>.parquet`` (an
    existing snapshot of that name is kept as it is). Any failure removes the temporary file.
    ``threads`` caps DuckDB's threads (default: DuckDB's, one per core); it does not change
    the result. ``progress``, if given, is called from a second thread with the fraction of
    the conversion done (DuckDB's own estimate, read every 0.2 s), and with 1.0 at the end.
    Raises InvalidInput naming the file and what is wrong with it.
    """
    source = Path(source)
    snapshots_dir = Path(snapshots_dir)
    kind = source.suffix.lower()
    if kind not in _SUFFIXES:
        raise InvalidInput(
            f"{source}: unsupported file type {source.suffix or '(none)'!r}; "
            "expected a .csv or .parquet file"
        )
    for path in (source, snapshots_dir):
        if any(c in str(path) for c in "*?[]{}"):
            # DuckDB expands these as glob patterns; refuse rather than read other files
            raise InvalidInput(f"{path}: the path contains one of * ? [ ] {{ }}; rename it")
    forced = check_types(types or {})
    if forced and kind != ".csv":
        raise InvalidInput(f"{source}: --type applies to CSV files; a Parquet file has its types")
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise InvalidInput(f"threads must be a whole number >= 1, got {threads!r}")
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang us
    except FileNotFoundError:
        raise InvalidInput(f"{source}: no such file") from None
    except OSError as e:
        raise InvalidInput(f"{source}: cannot read the file ({e.strerror})") from None
    before = os.fstat(fd)
    if not stat.S_ISREG(before.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(before.st_mode) else "not a regular file"
        raise InvalidInput(f"{source}: is {what}, expected a .csv or .parquet file")

    with os.fdopen(fd, "rb") as src:
        if before.st_size == 0:
            raise InvalidInput(f"{source}: the file is empty; expected a header and data rows")
        if kind == ".csv":
            header = _csv_header(source, src)
        snapshots_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".import-", dir=snapshots_dir))
        try:
            tmp = work / "snapshot.parquet"
            con = _connect(work, threads, progress is not None)
            try:
                if kind == ".parquet":
                    header = _parquet_header(con, source)
                _check_names(source, header, con)
                unknown = sorted(set(forced) - set(header))
                if unknown:
                    raise InvalidInput(
                        f"--type names unknown column(s) {', '.join(unknown)} in {source.name}; "
                        f"columns are {', '.join(header)}"
                    )
                # hash the source on a second core while DuckDB converts it
                hasher = _Hasher(src.fileno())
                hasher.start()
                watcher = _Watcher(con, progress) if progress is not None else None
                try:
                    rows = _copy(con, source, kind, tmp, forced)
                except BaseException:
                    hasher.cancel()
                    raise
                finally:
                    if watcher is not None:
                        watcher.stop()
                source_sha256 = hasher.result()
                columns = tuple(
                    (str(name), str(type_))
                    for name, type_, *_ in con.execute(
                        "DESCRIBE SELECT * FROM read_parquet($1)", [str(tmp)]
                    ).fetchall()
                )
                numeric_looking = _numeric_looking(con, tmp, columns, set(forced))
            finally:
                con.close()
            after = os.stat(source)
            if (after.st_ino, after.st_size, after.st_mtime_ns) != (
                before.st_ino,
                before.st_size,
                before.st_mtime_ns,
            ):
                raise InvalidInput(f"{source}: the file changed while it was imported; try again")
            if rows == 0:
                what = "has a header but no data rows" if kind == ".csv" else "has no rows"
                raise InvalidInput(f"{source}: the file {what}")
            if [c for c, _ in columns] != header:
                raise InvalidInput(  # a guard: DuckDB renamed a column we had accepted
                    f"{source}: DuckDB read columns {[c for c, _ in columns]}, "
                    f"expected {header}; rename the columns"
                )
            snap = _publish(tmp, snapshots_dir, rows, columns, source_sha256)
            if progress is not None:
                progress(1.0)
            return dataclasses.replace(snap, numeric_looking=numeric_looking)
        finally:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- steps


class _Watcher:
    """Reads DuckDB's progress estimate of the running COPY while it runs, on its own thread.

    Reports only increases, capped below 1.0: the caller hears 1.0 once, when the snapshot is
    published, never from an estimate.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, progress: Progress) -> None:
        self._con, self._progress = con, progress
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="import-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = 0.0
        while not self._done.wait(0.2):
            percent = self._con.query_progress()
            fraction = min(percent / 100.0, 0.999)
            if fraction > last:
                last = fraction
                self._progress(fraction)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _connect(work: Path, threads: int | None,
             tracked: bool = False) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {
        "preserve_insertion_order": True,  # the snapshot keeps the source's row order
        "temp_directory": str(work / "spill"),
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if threads is not None:
        config["threads"] = threads
    con = duckdb.connect(":memory:", config=config)
    # progress is tracked (for query_progress) only when someone watches, and never printed
    con.execute(f"SET enable_progress_bar = {'true' if tracked else 'false'}")
    con.execute("SET enable_progress_bar_print = false")
    return con


def _numeric_looking(con: duckdb.DuckDBPyConnection, tmp: Path,
                     columns: tuple[tuple[str, str], ...], forced: set[str]) -> tuple[str, ...]:
    """VARCHAR columns (not forced so) at least 90% of whose values read as numbers."""
    text = [c for c, t in columns if t == "VARCHAR" and c not in forced]
    if not text:
        return ()
    parts = ", ".join(
        f'count(TRY_CAST("{c}" AS DOUBLE)), count("{c}")' for c in text
    )
    row = con.execute(f"SELECT {parts} FROM read_parquet($1)", [str(tmp)]).fetchone()
    assert row is not None
    return tuple(c for i, c in enumerate(text) if row[2 * i + 1] and row[2 * i] >= 0.9 * row[2 * i + 1])


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _copy(con: duckdb.DuckDBPyConnection, source: Path, kind: str, tmp: Path,
          forced: Mapping[str, str] | None = None) -> int:
    """Convert ``source`` to Parquet at ``tmp``; return the number of rows written."""
    target = _sql_string(str(tmp))
    options = "FORMAT parquet, COMPRESSION zstd, PARQUET_VERSION v2"
    csv_options = _CSV_OPTIONS
    if forced:
        pairs = ", ".join(f"{_sql_string(c)}: {_sql_string(t)}" for c, t in forced.items())
        csv_options += f", types = {{{pairs}}}"
    if kind == ".parquet":
        query = "SELECT * FROM read_parquet($1)"
    else:
        query = f"SELECT * FROM read_csv($1, {csv_options})"
    try:
        try:
            row = con.execute(f"COPY ({query}) TO {target} ({options})", [str(source)]).fetchone()
        except duckdb.ConversionException:
            if kind != ".csv":
                raise
            # a column's type was detected from the first rows and a later row disagrees:
            # detect types from the whole file instead (slower, only on this path)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            query = f"SELECT * FROM read_csv($1, {csv_options}, sample_size = -1)"
            row = con.execute(f"COPY ({query}) TO {target} ({options})", [str(source)]).fetchone()
    except duckdb.Error as e:
        raise _explain(source, kind, e) from None
    assert row is not None
    return int(row[0])


def _publish(
    tmp: Path,
    snapshots_dir: Path,
    rows: int,
    columns: tuple[tuple[str, str], ...],
    source_sha256: str,
) -> Snapshot:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = os.fstat(f.fileno()).st_size
    os.chmod(tmp, 0o444)
    final = snapshots_dir / f"{digest}.parquet"
    with contextlib.suppress(FileExistsError):  # content-addressed: keep the one already there
        os.link(tmp, final)
    fd = os.open(snapshots_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return Snapshot(
        sha256=digest,
        path=final,
        rows=rows,
        columns=columns,
        bytes=size,
        source_sha256=source_sha256,
    )


class _Hasher(threading.Thread):
    """SHA-256 of an open file, read with pread (the file position is left alone)."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="veil-import-hash", daemon=True)
        self._fd = fd
        self._digest: str | None = None
        self._error: OSError | None = None
        self._cancelled = threading.Event()

    def run(self) -> None:
        try:
            h = hashlib.sha256()
            offset = 0
            while not self._cancelled.is_set() and (
                chunk := os.pread(self._fd, _HASH_CHUNK, offset)
            ):
                h.update(chunk)
                offset += len(chunk)
            if not self._cancelled.is_set():
                self._digest = h.hexdigest()
        except OSError as e:  # reported by result()
            self._error = e

    def cancel(self) -> None:
        self._cancelled.set()
        self.join()

    def result(self) -> str:
        self.join()
        if self._error is not None or self._digest is None:
            raise InvalidInput(f"cannot read the file while hashing it: {self._error}") from None
        return self._digest


# --------------------------------------------------------------------------- column names


def _csv_header(source: Path, src: io.BufferedReader) -> list[str]:
    """The header fields exactly as written (DuckDB renames duplicates, so read them here)."""
    raw = src.read(1 << 20)
    src.seek(0)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(raw) - 3:  # not just a character cut at the 1 MiB boundary
            raise InvalidInput(
                f"{source}: the header is not UTF-8 (byte {e.start + 1}); save the file as UTF-8"
            ) from None
        text = raw[: e.start].decode("utf-8")
    try:
        row = next(csv.reader(io.StringIO(text, newline=""), strict=True), None)
    except csv.Error as e:
        raise InvalidInput(f"{source}: line 1 (the header) is not valid CSV: {e}") from None
    if not row or row == [""]:
        raise InvalidInput(f"{source}: line 1 is empty; expected a header naming the columns")
    return row


def _parquet_header(con: duckdb.DuckDBPyConnection, source: Path) -> list[str]:
    """Top-level column names as stored (DuckDB renames duplicates when reading)."""
    try:
        schema = con.execute(
            "SELECT name, num_children FROM parquet_schema($1)", [str(source)]
        ).fetchall()
    except duckdb.Error as e:
        raise _explain(source, ".parquet", e) from None
    # a depth-first listing: the root, then each top-level column followed by its subtree;
    # ``remaining`` counts the children still to come at each open level
    names: list[str] = []
    remaining = [int(schema[0][1] or 0)] if schema else []
    for name, children in schema[1:]:
        if len(remaining) == 1:
            names.append(str(name))
        remaining[-1] -= 1
        if children:
            remaining.append(int(children))
        while len(remaining) > 1 and remaining[-1] == 0:
            remaining.pop()
    return names


def _reserved_keywords(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    global _RESERVED
    if _RESERVED is None:
        rows = con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'"
        ).fetchall()
        _RESERVED = frozenset(str(r[0]).lower() for r in rows)
    return _RESERVED


def _check_names(source: Path, names: list[str], con: duckdb.DuckDBPyConnection) -> None:
    reserved = _reserved_keywords(con)
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not _IDENTIFIER_RE.fullmatch(name):
            raise InvalidInput(
                f"{source}: column {position} is named {name!r}, which is not a usable "
                f"column name: expected {IDENTIFIER_RULE}; rename it in the header"
            )
        if name.lower() in reserved:
            raise InvalidInput(
                f"{source}: column {position} is named {name!r}, a reserved SQL keyword; "
                "rename it in the header"
            )
        first = seen.setdefault(name.lower(), position)
        if first != position:
            raise InvalidInput(
                f"{source}: duplicate column name: column {position} {name!r} repeats column "
                f"{first} {names[first - 1]!r} (names are compared ignoring case); "
                "rename one of them"
            )


# --------------------------------------------------------------------------- error messages

_LINE_RE = re.compile(r"CSV Error on Line: (\d+)")


def _explain(source: Path, kind: str, e: duckdb.Error) -> InvalidInput:
    """Turn a DuckDB error into one line that names the file, the place and the problem.

    Never quotes a row's content: the file may hold personal data and messages get logged.
    """
    text = str(e)
    if kind == ".parquet":
        return InvalidInput(
            f"{source}: not a readable Parquet file ({_first_reason(text) or type(e).__name__})"
        )
    line = _LINE_RE.search(text)
    if "Error when sniffing file" in text or (line is None and "sniff" in text.lower()):
        # DuckDB's sniffer rejects a bad row among the first ones without saying where
        return _diagnose_csv(source) or InvalidInput(
            f"{source}: not a valid CSV file with a header (',' separated, '\"' quoted, UTF-8)"
        )
    where = f"line {line.group(1)}" if line else "somewhere in the file"
    if m := re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text):
        return _ragged(source, where, int(m.group(2)), int(m.group(1)))
    if "not utf-8" in text.lower() or "invalid unicode" in text.lower():
        return InvalidInput(f"{source}: {where} is not valid UTF-8; save the file as UTF-8")
    if "unterminated quote" in text:
        return InvalidInput(f"{source}: {where} opens a quote that is never closed")
    if m := re.search(
        r'converting column "([^"]*)"\. Could not convert string .* to \'([^\']+)\'', text
    ):
        return InvalidInput(
            f"{source}: {where}: column {m.group(1)!r} holds a value that is not {m.group(2)}"
        )
    return InvalidInput(f"{source}: {where}: {_first_reason(text) or type(e).__name__}")


def _first_reason(text: str) -> str:
    """The first line of a DuckDB message that explains, without the row it quotes."""
    for raw in text.splitlines():
        line = _LINE_RE.sub("", re.sub(r"^[A-Za-z ]+Error: ", "", raw)).strip(" :")
        if line and not line.startswith("Original Line"):
            return line
    return ""


def _ragged(source: Path, where: str, found: int, expected: int) -> InvalidInput:
    return InvalidInput(
        f"{source}: {where} has {found} field{'s' if found != 1 else ''}, expected {expected} "
        "like the header; fix the row, or quote fields that contain commas"
    )


def _diagnose_csv(source: Path, max_records: int = 100_000) -> InvalidInput | None:
    """Find the first bad record among the first ``max_records`` (the error path only)."""
    try:
        with open(source, encoding="utf-8-sig", newline="", errors="strict") as f:
            reader = csv.reader(f, strict=True)
            width = None
            line = 0
            for record in reader:
                if not record:
                    line = reader.line_num
                    continue  # blank line: skipped, as DuckDB does
                if width is None:
                    width = len(record)
                elif len(record) != width:
                    return _ragged(source, f"line {line + 1}", len(record), width)
                line = reader.line_num
                if reader.line_num > max_records:
                    break
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            return InvalidInput(f"{source}: line {line + 1} opens a quote that is never closed")
        return InvalidInput(f"{source}: line {line + 1} is not valid CSV ({e})")
    except UnicodeDecodeError:
        return InvalidInput(f"{source}: the file is not valid UTF-8; save it as UTF-8")
    return None


def subset(source: Path, rows: list[int], snapshots_dir: Path) -> Snapshot:
    """A new content-addressed snapshot holding the rows of snapshot ``source`` whose file
    row numbers are in ``rows`` (ascending), in their order: a PSI membership result. Its
    ``source_sha256`` is the source snapshot's name, so the registration names what it was
    derived from. Any failure removes the temporary file."""
    source, snapshots_dir = Path(source), Path(snapshots_dir)
    work = Path(tempfile.mkdtemp(prefix=".subset-", dir=snapshots_dir))
    try:
        tmp = work / "snapshot.parquet"
        con = _connect(work, 2)
        try:
            con.execute(
                "COPY (SELECT * EXCLUDE (file_row_number) FROM read_parquet($1, "
                "file_row_number = true) WHERE file_row_number IN (SELECT unnest($2::BIGINT[])) "
                f"ORDER BY file_row_number) TO {_sql_string(str(tmp))} "
                "(FORMAT parquet, COMPRESSION zstd, PARQUET_VERSION v2)",
                [str(source), rows],
            )
            columns = tuple(
                (str(name), str(type_))
                for name, type_, *_ in con.execute(
                    "DESCRIBE SELECT * FROM read_parquet($1)", [str(tmp)]).fetchall()
            )
        finally:
            con.close()
        return _publish(tmp, snapshots_dir, len(rows), columns, source.stem)
    finally:
        shutil.rmtree(work, ignore_errors=True)

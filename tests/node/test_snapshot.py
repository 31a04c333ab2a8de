"""Content-addressed dataset snapshots: import, determinism, and every way a file can be wrong."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import duckdb
import pytest

from veil.node import snapshot as snapshot_module
from veil.node.errors import InvalidInput
from veil.node.snapshot import Snapshot, import_file

CSV = (
    "id,region,age,amount,phone\n"
    "1,north,34,12.50,13800000001\n"
    "2,south,51,7.25,13800000002\n"
    '3,"east, upper",29,100.00,13800000003\n'
)


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _leftovers(snapshots: Path) -> list[str]:
    """Anything in the snapshot directory that is not a finished snapshot."""
    if not snapshots.exists():
        return []
    return sorted(n for n in os.listdir(snapshots) if not n.endswith(".parquet") or n[0] == ".")


# --------------------------------------------------------------------------- the happy path


def test_import_csv(tmp_path: Path) -> None:
    source = _write(tmp_path / "people.csv", CSV)
    snaps = tmp_path / "snapshots"
    snap = import_file(source, snaps)

    assert isinstance(snap, Snapshot)
    assert snap.path == snaps / f"{snap.sha256}.parquet"
    assert hashlib.sha256(snap.path.read_bytes()).hexdigest() == snap.sha256
    assert snap.bytes == snap.path.stat().st_size
    assert snap.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert snap.rows == 3
    assert snap.columns == (
        ("id", "BIGINT"),
        ("region", "VARCHAR"),
        ("age", "BIGINT"),
        ("amount", "DOUBLE"),
        ("phone", "BIGINT"),
    )
    assert stat.S_IMODE(snap.path.stat().st_mode) == 0o444
    assert os.listdir(snaps) == [snap.path.name]

    rows = duckdb.connect().execute(
        "SELECT id, region FROM read_parquet($1) ORDER BY id", [str(snap.path)]
    ).fetchall()
    assert rows == [(1, "north"), (2, "south"), (3, "east, upper")]
    meta = duckdb.connect().execute(
        "SELECT DISTINCT compression FROM parquet_metadata($1)", [str(snap.path)]
    ).fetchall()
    assert meta == [("ZSTD",)]


def test_same_content_gives_the_same_snapshot(tmp_path: Path) -> None:
    a = import_file(_write(tmp_path / "a.csv", CSV), tmp_path / "s1")
    b = import_file(_write(tmp_path / "b.CSV", CSV), tmp_path / "s2")
    assert a.sha256 == b.sha256
    assert a.path.read_bytes() == b.path.read_bytes()


def test_an_existing_snapshot_is_kept(tmp_path: Path) -> None:
    source = _write(tmp_path / "a.csv", CSV)
    first = import_file(source, tmp_path / "s")
    inode = first.path.stat().st_ino
    again = import_file(source, tmp_path / "s")
    assert again == first
    assert again.path.stat().st_ino == inode
    assert os.listdir(tmp_path / "s") == [first.path.name]


def test_snapshot_is_the_same_with_any_thread_count(tmp_path: Path) -> None:
    # big enough for DuckDB to split the CSV across threads and write many row groups
    source = tmp_path / "big.csv"
    duckdb.connect().execute(
        f"""COPY (SELECT i AS id, repeat('x', (hash(i) % 40)::INTEGER) AS s,
                         CASE WHEN i % 7 = 0 THEN NULL ELSE (hash(i, 3) % 1000) / 7.0 END AS v
                  FROM range(600000) t(i)) TO '{source}' (FORMAT csv, HEADER true)"""
    )
    digests = {
        threads: import_file(source, tmp_path / f"s{threads}", threads=threads).sha256
        for threads in (1, 2, 4)
    }
    assert len(set(digests.values())) == 1, digests
    groups = duckdb.connect().execute(
        "SELECT count(DISTINCT row_group_id) FROM parquet_metadata($1)",
        [str(tmp_path / "s1" / f"{digests[1]}.parquet")],
    ).fetchone()
    assert groups is not None and groups[0] > 1


def test_import_parquet(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    duckdb.connect().execute(
        f"COPY (SELECT range AS id, range % 3 AS k FROM range(1000)) TO '{source}' (FORMAT parquet)"
    )
    snap = import_file(source, tmp_path / "s")
    assert snap.rows == 1000
    assert snap.columns == (("id", "BIGINT"), ("k", "BIGINT"))
    assert snap.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert import_file(source, tmp_path / "s2").sha256 == snap.sha256


def test_import_parquet_with_nested_columns(tmp_path: Path) -> None:
    source = tmp_path / "nested.parquet"
    duckdb.connect().execute(
        f"""COPY (SELECT 1 AS id, {{'a': 1, 'b': [1, 2]}} AS s, [[1], [2, 3]] AS l, 'x' AS tail)
            TO '{source}' (FORMAT parquet)"""
    )
    snap = import_file(source, tmp_path / "s")
    assert [c for c, _ in snap.columns] == ["id", "s", "l", "tail"]
    assert snap.columns[1] == ("s", "STRUCT(a INTEGER, b INTEGER[])")


def test_csv_dialect_details(tmp_path: Path) -> None:
    # BOM, CRLF, no final newline, blank line, a '#' that is data not a comment, quoted comma
    text = b'\xef\xbb\xbfa,b\r\n#1,"x,y"\r\n\r\n2,z'
    snap = import_file(_write(tmp_path / "d.csv", text), tmp_path / "s")
    rows = duckdb.connect().execute("SELECT * FROM read_parquet($1)", [str(snap.path)]).fetchall()
    assert rows == [("#1", "x,y"), ("2", "z")]
    assert [c for c, _ in snap.columns] == ["a", "b"]


def test_a_type_that_changes_late_in_the_file_is_detected(tmp_path: Path) -> None:
    lines = ["id,v"] + [f"{i},{i}" for i in range(30000)] + ["A-1,5"]
    snap = import_file(_write(tmp_path / "late.csv", "\n".join(lines) + "\n"), tmp_path / "s")
    assert snap.rows == 30001
    assert snap.columns == (("id", "VARCHAR"), ("v", "BIGINT"))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.txt", "a\n1\n", r"unsupported file type '\.txt'; expected a \.csv or \.parquet"),
        ("x", "a\n1\n", r"unsupported file type '\(none\)'"),
        ("empty.csv", "", "the file is empty"),
        ("header.csv", "a,b\n", "has a header but no data rows"),
        ("blankhead.csv", "\n1,2\n", "line 1 is empty; expected a header"),
        ("ragged.csv", "a,b,c\n1,2,3\n4,5\n6,7,8\n", "line 3 has 2 fields, expected 3"),
        ("long.csv", "a,b\n1,2,3\n", "line 2 has 3 fields, expected 2"),
        ("one.csv", "a,b\n1,2\n3\n", "line 3 has 1 field, expected 2"),
        ("quote.csv", 'a,b\n1,"2\n', "line 2 opens a quote that is never closed"),
        ("dup.csv", "id,v,id\n1,2,3\n", "duplicate column name: column 3 'id' repeats column 1"),
        ("dupcase.csv", "id,ID\n1,2\n", "column 2 'ID' repeats column 1 'id'"),
        ("space.csv", "id,first name\n1,2\n", "column 2 is named 'first name', which is not"),
        ("empty-name.csv", "id,,v\n1,2,3\n", "column 2 is named '', which is not"),
        ("digit.csv", "1st,b\n1,2\n", "column 1 is named '1st'"),
        ("keyword.csv", "id,select\n1,2\n", "column 2 is named 'select', a reserved SQL keyword"),
        ("long-name.csv", "a" * 64 + "\n1\n", "at most 63"),
        ("unicode.csv", "id,年龄\n1,2\n", "column 2 is named '年龄'"),
        ("semicolon.csv", "a;b\n1;2\n", "column 1 is named 'a;b'"),
        ("latin1.csv", b"a,b\n1,caf\xe9\n", "line 2 is not valid UTF-8"),
        ("latin1-head.csv", b"caf\xe9,b\n1,2\n", "the header is not UTF-8"),
        ("fake.parquet", "a,b\n1,2\n", "not a readable Parquet file"),
    ],
)
def test_bad_files_are_refused_and_leave_nothing(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    source = _write(tmp_path / name, content)
    snaps = tmp_path / "snapshots"
    with pytest.raises(InvalidInput, match=message) as err:
        import_file(source, snaps)
    assert str(err.value).startswith(f"{source}: ")
    assert not snaps.exists() or os.listdir(snaps) == []


def test_a_bad_row_far_into_the_file_is_named_by_line(tmp_path: Path) -> None:
    lines = ["id,v"] + [f"{i},{i}" for i in range(60000)] + ["7"]
    source = _write(tmp_path / "far.csv", "\n".join(lines) + "\n")
    with pytest.raises(InvalidInput, match="line 60002 has 1 field, expected 2"):
        import_file(source, tmp_path / "s")
    assert os.listdir(tmp_path / "s") == []


def test_error_messages_do_not_quote_row_content(tmp_path: Path) -> None:
    lines = ["id,v"] + [f"{i},{i}" for i in range(30000)] + ['1,"secret-13800000009']
    source = _write(tmp_path / "q.csv", "\n".join(lines) + "\n")
    with pytest.raises(InvalidInput) as err:
        import_file(source, tmp_path / "s")
    assert "secret" not in str(err.value)
    assert "line 30002" in str(err.value)


def test_parquet_with_duplicate_column_names(tmp_path: Path) -> None:
    # DuckDB renames duplicates when it writes, so forge them: rename 'xb' to 'xa' in the footer
    source = tmp_path / "dup.parquet"
    duckdb.connect().execute(f"COPY (SELECT 1 AS xa, 2 AS xb) TO '{source}' (FORMAT parquet)")
    source.write_bytes(source.read_bytes().replace(b"xb", b"xa"))
    assert duckdb.connect().execute("SELECT name FROM parquet_schema($1)", [str(source)]).fetchall()[1:] == [
        ("xa",),
        ("xa",),
    ]
    with pytest.raises(InvalidInput, match="duplicate column name: column 2 'xa'"):
        import_file(source, tmp_path / "s")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="nope.csv: no such file"):
        import_file(tmp_path / "nope.csv", tmp_path / "s")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InvalidInput, match="is a directory"):
        import_file(tmp_path / "dir.csv", tmp_path / "s")


def test_glob_characters_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", CSV)
    with pytest.raises(InvalidInput, match=r"contains one of \* \?"):
        import_file(tmp_path / "*.csv", tmp_path / "s")


def test_a_failure_after_writing_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_publish(*args: object) -> Snapshot:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot_module, "_publish", failing_publish)
    with pytest.raises(OSError, match="No space"):
        import_file(_write(tmp_path / "a.csv", CSV), tmp_path / "s")
    assert os.listdir(tmp_path / "s") == []


def test_a_source_that_changes_during_import_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _write(tmp_path / "a.csv", CSV)
    real_copy = snapshot_module._copy

    def copy_then_touch(*args: object) -> int:
        rows = real_copy(*args)  # type: ignore[arg-type]
        with open(source, "a") as f:
            f.write("4,west,40,1.00,13800000004\n")
        return rows

    monkeypatch.setattr(snapshot_module, "_copy", copy_then_touch)
    with pytest.raises(InvalidInput, match="changed while it was imported"):
        import_file(source, tmp_path / "s")
    assert os.listdir(tmp_path / "s") == []


def _big_csv(path: Path, rows: int) -> Path:
    with open(path, "w") as f:
        f.write("id,amount,region\n")
        f.writelines(f"{i},{i * 3},r{i % 97}\n" for i in range(rows))
    return path


@pytest.mark.slow
def test_import_progress_rises_and_ends_at_one_exactly_once(tmp_path: Path) -> None:
    """`veil dataset add` shows progress from this callback: it may only rise, it ends with
    1.0 reported once, and only after the snapshot exists."""
    source = _big_csv(tmp_path / "big.csv", 2_000_000)
    seen: list[tuple[float, bool]] = []
    snapshots = tmp_path / "snapshots"

    def progress(fraction: float) -> None:
        seen.append((fraction, any(snapshots.glob("*.parquet"))))

    snap = import_file(source, snapshots, progress=progress)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert fractions.count(1.0) == 1 and fractions[-1] == 1.0
    assert seen[-1][1], "1.0 was reported before the snapshot was published"
    assert all(0.0 < f < 1.0 for f in fractions[:-1])
    assert len(fractions) > 1, "no progress was reported during a multi-second import"
    assert snap.rows == 2_000_000


def test_a_failed_import_never_reports_completion(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("id,amount\n1,2\n3,4,5,6\n")
    seen: list[float] = []
    with pytest.raises(InvalidInput):
        import_file(source, tmp_path / "snapshots", progress=seen.append)
    assert 1.0 not in seen

"""Dataset import: Veil's content-addressed snapshot vs DuckDB's own CSV -> Parquet COPY.

Generates a CSV once (cached in /tmp/veil-bench; columns id, region, age, amount, phone), then
in one run times Veil's ``import_file`` (strict CSV, zstd Parquet, SHA-256 of the source and of
the snapshot, fsync, content-addressed rename) and DuckDB's plain
``COPY (SELECT * FROM read_csv(...)) TO 'x.parquet' (FORMAT parquet)``, and prints rows/s for
each and their ratio. Target: Veil >= 0.8x DuckDB's rate.

    python -m benchmarks catalog_import [--rows N] [--repeat K] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import duckdb

from benchmarks._table import header, table, timed, verdict
from veil.node.snapshot import Snapshot, import_file

SAME_AS_VEIL = "FORMAT parquet, COMPRESSION zstd, PARQUET_VERSION v2"

CACHE = Path("/tmp/veil-bench")


def dataset(rows: int) -> Path:
    """A deterministic CSV with ``rows`` data rows, generated once and cached."""
    path = CACHE / f"catalog_import-{rows}.csv"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    print(f"generating {path} ...", flush=True)
    con = duckdb.connect()
    con.execute(
        f"""
        COPY (
          SELECT i AS id,
                 (['north', 'south', 'east', 'west', 'central', 'harbour', 'hills', 'plains'])
                     [1 + (hash(i, 1) % 8)::INTEGER] AS region,
                 (18 + hash(i, 2) % 73)::INTEGER AS age,
                 round((hash(i, 3) % 10000000)::DOUBLE / 100, 2) AS amount,
                 '1' || (30 + hash(i, 4) % 60)::VARCHAR
                     || lpad((hash(i, 5) % 100000000)::VARCHAR, 8, '0') AS phone
          FROM range({int(rows)}) t(i) ORDER BY i
        ) TO '{tmp}' (FORMAT csv, HEADER true)
        """
    )
    con.close()
    os.replace(tmp, path)
    return path


def _veil(source: Path, snapshots: Path, threads: int | None) -> tuple[Snapshot, float]:
    snapshot, seconds = timed(lambda: import_file(source, snapshots, threads=threads))
    shutil.rmtree(snapshots)
    return snapshot, seconds


def _duckdb(source: Path, out: Path, threads: int | None, options: str) -> tuple[int, float, int]:
    """DuckDB's own CSV -> Parquet COPY; returns (rows, seconds, bytes written)."""
    con = duckdb.connect(config={"threads": threads} if threads else {})
    query = f"COPY (SELECT * FROM read_csv('{source}')) TO '{out}' ({options})"
    row, seconds = timed(lambda: con.execute(query).fetchone())
    con.close()
    size = out.stat().st_size
    out.unlink()
    assert row is not None
    return int(row[0]), seconds, size


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks catalog_import")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (both sides)")
    args = parser.parse_args(argv)

    source = dataset(args.rows)
    header(f"catalog_import: {args.rows:,} rows, {source.stat().st_size / 1e6:,.0f} MB CSV")
    with open(source, "rb") as f:  # warm the page cache so neither side pays the first read
        while f.read(1 << 24):
            pass

    work = Path(tempfile.mkdtemp(prefix="catalog_import-", dir=CACHE))
    try:
        veil: list[tuple[Snapshot, float]] = []
        plain: list[tuple[int, float, int]] = []
        same: list[tuple[int, float, int]] = []
        for i in range(args.repeat):
            veil.append(_veil(source, work / f"snapshots-{i}", args.threads))
            plain.append(_duckdb(source, work / "plain.parquet", args.threads, "FORMAT parquet"))
            same.append(_duckdb(source, work / "same.parquet", args.threads, SAME_AS_VEIL))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    snapshot, veil_s = min(veil, key=lambda r: r[1])
    plain_rows, plain_s, plain_bytes = min(plain, key=lambda r: r[1])
    _, same_s, same_bytes = min(same, key=lambda r: r[1])
    assert snapshot.rows == plain_rows == args.rows, (snapshot.rows, plain_rows)
    veil_rate, plain_rate, same_rate = (args.rows / t for t in (veil_s, plain_s, same_s))
    table(
        ["tool", "seconds", "rows/s", "output MB", "vs duckdb COPY", "what it does"],
        [
            [
                "veil import_file",
                veil_s,
                veil_rate,
                snapshot.bytes / 1e6,
                veil_rate / plain_rate,
                "strict CSV, zstd Parquet v2, SHA-256 of source+snapshot, fsync, link",
            ],
            [
                "duckdb COPY",
                plain_s,
                plain_rate,
                plain_bytes / 1e6,
                1.0,
                "defaults: sniffed CSV, snappy Parquet v1",
            ],
            [
                "duckdb COPY (zstd v2)",
                same_s,
                same_rate,
                same_bytes / 1e6,
                same_rate / plain_rate,
                "for reference: Veil's Parquet options, no hashing",
            ],
        ],
    )
    print(f"best of {args.repeat}; snapshot {snapshot.sha256}")
    print(f"columns {', '.join(f'{n} {t}' for n, t in snapshot.columns)}")
    verdict("veil rows/s / duckdb COPY rows/s", veil_rate / plain_rate, 0.8, higher_is_better=True)
    return 0

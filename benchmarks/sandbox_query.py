"""Sandboxed SQL (validate + run) vs raw DuckDB on the same 10M-row Parquet snapshot.

The query: ``SELECT region, COUNT(*), SUM(amount), AVG(amount) FROM t GROUP BY region``
over ``--rows`` rows (default 10,000,000) of 1,000,000 customers in 20 regions, generated
once into ``--cache`` (default /tmp/veil-bench). Veil's side is the whole job execution:
validation with DuckDB's parser and the analysis rules, a fresh locked-down in-memory DuckDB,
the exact minimum-group-size check, metering, the canonical result and its digest. DuckDB's
side is the same query on ``read_parquet``, twice: on a connection that is already open, and
on a new connection per query. The sides are interleaved, ``--repeat`` times, medians shown.
Run under ``flock /tmp/veil-bench.lock python -m benchmarks sandbox_query [--rows N]``.

Target: at most 1.15x raw DuckDB. Against a new DuckDB connection per query it is met
(about 1.12 with DOUBLE amounts, 1.09 with ``--decimal``, on this 2-core machine). Against
an already-open connection it is not (about 1.4): isolation requires a new database per run,
and creating plus closing one costs about 18 ms of CPU here, 28% of this 64 ms query; the
ratio falls as queries grow. Where the rest goes, and what keeps it small:

- The exact group-size check would cost ~15x the query as ``count(DISTINCT key)`` per group.
  Instead the engine proves ``>= k`` subjects from the row count: a group with more rows than
  the ``k - 1`` heaviest subjects have in total holds ``k`` subjects. Those per-subject counts
  are computed once per snapshot (one GROUP BY over the key: the "first run" row) and cached;
  with no NULL keys the row count is the ``COUNT(*)`` the query computes anyway. Groups the
  bound leaves undecided (none here) get an exact distinct count, only them. Suppression stays
  exact; nothing is approximated.
- ``SUM`` over DOUBLE runs as DuckDB's compensated ``fsum`` and ``AVG`` as ``fsum/count``, so
  that the digest does not depend on how threads split the rows (plain ``SUM`` differs in the
  last bits from run to run): a few percent. ``favg`` would be a second compensated sum, ~12%.
- The query runs in two passes (groups into a temporary table, then the output over the
  surviving groups only): ~3 ms of small statements.
- The node runs each query in a worker process (``sandbox/_workers.py``): the "in a worker
  process" row is that path, the difference to in-process its cost (the IPC of the task and
  the result, a few hundred microseconds).
- ``validate`` costs ~3 ms (the "not remembered" row); its result is remembered per query
  text, table set and policy, as a node validates a job's query at submission and at each run.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import duckdb

from veil import sandbox
from benchmarks._table import header, table, timed, verdict

QUERY = "SELECT region, COUNT(*), SUM(amount), AVG(amount) FROM {t} GROUP BY region"
TARGET = 1.15


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks sandbox_query", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="rows in the dataset (default 10,000,000)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side (default 5)")
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/veil-bench"), help="where the Parquet file is kept"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="DuckDB threads on both sides (default 2)"
    )
    parser.add_argument(
        "--decimal", action="store_true", help="amount as DECIMAL(12,2) instead of DOUBLE"
    )
    args = parser.parse_args(argv)

    amount_type = "DECIMAL(12,2)" if args.decimal else "DOUBLE"
    path = _dataset(args.cache, args.rows, amount_type)
    header(
        f"sandbox query vs raw DuckDB, {args.rows:,} rows, amount {amount_type}, {args.threads} threads"
    )
    tbl = sandbox.Table(
        "t",
        str(path),
        (
            sandbox.Column("customer_id", "BIGINT", "sensitive"),
            sandbox.Column("region", "VARCHAR", "internal"),
            sandbox.Column("amount", amount_type, "sensitive"),
        ),
        "customer_id",
    )
    policy = sandbox.Policy(min_group_size=10)
    limits = sandbox.Limits(threads=args.threads, timeout_s=600.0)
    sql = QUERY.format(t="t")
    raw_sql = QUERY.format(t=f"read_parquet('{path}')")
    open_con = duckdb.connect(config={"threads": args.threads})
    fresh_validations = itertools.count()

    def veil() -> sandbox.QueryResult:
        return sandbox.run(sandbox.validate(sql, [tbl], policy, limits), limits)

    workers = sandbox.Workers(1)

    def veil_worker() -> sandbox.QueryResult:  # what a node runs: the same in a worker process
        return workers.run(sql, [tbl], policy, limits)

    def raw_open() -> object:
        return open_con.execute(raw_sql).fetchnumpy()

    def raw_fresh() -> object:
        con = duckdb.connect(config={"threads": args.threads})
        try:
            return con.execute(raw_sql).fetchnumpy()
        finally:
            con.close()

    def validate_uncached() -> object:  # a new comment makes a new text: no remembered result
        return sandbox.validate(f"{sql} -- {next(fresh_validations)}", [tbl], policy, limits)

    cold, cold_s = timed(veil)  # includes the once-per-snapshot subject statistics
    veil_worker()  # the worker's own first run, with its subject statistics
    sides = {"open": raw_open, "fresh": raw_fresh, "veil": veil, "worker": veil_worker,
             "validate": validate_uncached}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():
        fn()  # warm-up
    for _ in range(args.repeat):  # interleaved, so that load from elsewhere hits all sides alike
        for name, fn in sides.items():
            samples[name].append(timed(fn)[1])
    med = {name: statistics.median(v) for name, v in samples.items()}

    result = veil()
    check = open_con.execute(raw_sql + " ORDER BY region").fetchall()
    assert [r[0] for r in check] == result.arrays["region"].tolist(), "the two sides disagree"
    assert [r[1] for r in check] == result.arrays["count_star()"].tolist(), "the two sides disagree"
    assert cold.digest == result.digest, "digest changed between runs"
    assert veil_worker().digest == result.digest, "the worker's answer differs"
    workers.close()

    open_s, fresh_s, veil_s = med["open"], med["fresh"], med["veil"]
    table(
        ["side", "median ms", "ratio vs raw, open", "ratio vs raw, new connection"],
        [
            ["raw DuckDB, open connection", open_s * 1000, 1.0, open_s / fresh_s],
            ["raw DuckDB, new connection per query", fresh_s * 1000, fresh_s / open_s, 1.0],
            ["veil sandbox validate+run", veil_s * 1000, veil_s / open_s, veil_s / fresh_s],
            ["veil sandbox in a worker process (the node's path)", med["worker"] * 1000,
             med["worker"] / open_s, med["worker"] / fresh_s],
            ["  of which validate, not remembered", med["validate"] * 1000, "", ""],
            [
                "veil sandbox, first run (subject stats)",
                cold_s * 1000,
                cold_s / open_s,
                cold_s / fresh_s,
            ],
        ],
    )
    m = result.meters
    print(
        f"meters: rows_scanned={m.rows_scanned:,} result_rows={m.result_rows} cpu_ms={m.cpu_ms} "
        f"wall_ms={m.wall_ms} bytes_out={m.bytes_out} suppressed={result.suppressed_groups} "
        f"digest={result.digest[:16]}…"
    )
    verdict(
        "veil / raw DuckDB, new connection per query",
        veil_s / fresh_s,
        TARGET,
        higher_is_better=False,
    )
    verdict("veil / raw DuckDB, open connection", veil_s / open_s, TARGET, higher_is_better=False)
    print(f"worker process overhead: {(med['worker'] - veil_s) * 1000:+.1f} ms per query")
    return 0


def _dataset(cache: Path, rows: int, amount_type: str) -> Path:
    """The benchmark's Parquet file, generated once per row count and amount type."""
    cache.mkdir(parents=True, exist_ok=True)
    suffix = "decimal" if amount_type.startswith("DECIMAL") else "double"
    path = cache / f"sandbox_query_{rows}_{suffix}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        start = time.perf_counter()
        con = duckdb.connect()
        try:
            con.execute(
                f"""COPY (SELECT (hash(i) % 1000000)::BIGINT AS customer_id,
                          'region_' || lpad((hash(i * 7 + 1) % 20)::VARCHAR, 2, '0') AS region,
                          round((hash(i * 13 + 5) % 100000) / 100.0, 2)::{amount_type} AS amount
                   FROM range({rows}) r(i)) TO '{tmp}' (FORMAT parquet)"""
            )
        finally:
            con.close()
        tmp.rename(path)
        print(f"# generated {path} in {time.perf_counter() - start:.1f} s")
    return path

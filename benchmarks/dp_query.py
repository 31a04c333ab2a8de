"""Differential privacy: what a DP query costs over the plain one, and how accurate it is.

``python -m benchmarks dp_query [--rows N] [--repeat R] [--trials T]``; run it under
``flock /tmp/veil-bench.lock``. Smoke mode (seconds): ``--rows 100000 --repeat 2 --trials 200``.

Cost. ``SELECT region, COUNT(*), SUM(amount), AVG(amount) FROM t GROUP BY region`` over
``--rows`` rows (default 10,000,000) in 20 regions, generated once into ``--cache``, through
the node's own path in a sandbox worker process: without DP ``Workers.run``; with DP (ε = 1,
amount bounded to [0, 1000] at scale 2, the 20 regions declared) what ``_run_dp`` in
``node/kinds/query.py`` does: ``validate_dp``, ``Workers.run_dp`` for the exact bounded
aggregates, then in the node ``plan`` (calibration against OpenDP's privacy map),
``draw`` (OpenDP's exact discrete Laplace) and ``dp_result``. Two variants of the subject
key: ``row_id`` (one row per subject, k = 1: the fast path, the plain aggregate) and
``customer_id`` (``--rows`` / 10 customers, about 10 rows each, k = 5: every subject's rows beyond
5 are left out by a window over the key, the capping path). The sides are interleaved,
``--repeat`` times, medians shown; raw DuckDB on the same query is the reference row. The
budget ledger, the log entry and gRPC are not in these rows (a node's cost for them is in
``query_latency``); they are the same for a DP and a plain query but for one small
transaction.

Accuracy. The exact bounded aggregates of one region are computed once; then ``--trials``
releases are drawn with the node's code (``plan`` + ``draw`` + ``dp_result``) at
ε ∈ {0.1, 0.5, 1, 2} and at ρ = ε²/2 (zCDP, discrete Gaussian: the ρ a pure ε release
also satisfies), and the measured RMS relative error of COUNT(*), SUM(amount) and AVG(amount)
is printed next to the theory: std/N, std/S with ``Noise.std()``, and for AVG the delta method
sqrt((σ_S/S)² + (σ_N/N)²) (the AVG's count is COUNT(amount), its own measurement). The run's ε
is split over the three measurements (COUNT(*), SUM(amount), COUNT(amount)), ε/3 each.

Measured on this 2-core machine (10,000,000 rows, 5 repeats, 2000 trials), two runs:

(filled in below after the runs)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from veil import sandbox
from veil.node import dp, queries
from veil.node.jobs import DpRequest
from veil.node.jobs._dp import parse_request
from veil.protocols import dp as mech
from benchmarks._table import header, table, timed, verdict

QUERY = "SELECT region, COUNT(*), SUM(amount), AVG(amount) FROM {t} GROUP BY region"
REGIONS = tuple(f"region_{i:02d}" for i in range(20))
TARGET = 1.1
EPSILONS = ("0.1", "0.5", "1", "2")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks dp_query", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=10_000_000,
                        help="rows in the dataset (default 10,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side (default 5)")
    parser.add_argument("--trials", type=int, default=2000,
                        help="noisy releases per ε for the accuracy table (default 2000)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/veil-bench"),
                        help="where the Parquet file is kept")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    args = parser.parse_args(argv)
    for name in ("rows", "repeat", "trials", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")

    path = _dataset(args.cache, args.rows)
    header(f"DP query vs the plain query, {args.rows:,} rows, {args.threads} threads")
    limits = sandbox.Limits(threads=args.threads, timeout_s=600.0, memory_limit_mb=4096)
    policy = sandbox.Policy(min_group_size=10)
    workers = sandbox.Workers(1)
    try:
        exact = _cost(path, workers, policy, limits, args.repeat, args.threads)
    finally:
        workers.close()
    _accuracy(*exact, args.trials)
    return 0


# --------------------------------------------------------------------------- cost


def _table(path: Path, key: str) -> sandbox.Table:
    return sandbox.Table("t", str(path), (
        sandbox.Column("row_id", "BIGINT", "sensitive"),
        sandbox.Column("customer_id", "BIGINT", "sensitive"),
        sandbox.Column("region", "VARCHAR", "internal"),
        sandbox.Column("amount", "DOUBLE", "sensitive"),
    ), key)


def request(k: int, **spend: str) -> DpRequest:
    """A job's [dp] table as the node parses it: amount in [0, 1000] at cents, 20 regions."""
    return parse_request({**spend, "max_rows_per_subject": k, "scale": 2,
                          "bounds": {"amount": [0, 1000]}, "categories": {"region": list(REGIONS)}})


def _release(q: queries.QueryInputs, limits: sandbox.Limits, req: DpRequest,
             workers: sandbox.Workers, parts: dict[str, float]) -> sandbox.QueryResult:
    """What the node's ``_run_dp`` does for a release, timing each part into ``parts``."""
    spec = dp.sandbox_spec(req)
    t0 = time.perf_counter()
    dq = queries.validate_dp(q, limits, spec)
    t1 = time.perf_counter()
    exact = queries.run_dp(q, limits, spec, workers)
    t2 = time.perf_counter()
    noises = dp.plan(req, [m.sensitivity for m in dq.measurements])
    draws = [mech.draw(n, len(dq.cells)) for n in noises]
    result = queries.dp_result(dq, exact, draws)
    t3 = time.perf_counter()
    for name, s in (("validate_dp", t1 - t0), ("run_dp", t2 - t1), ("noise", t3 - t2)):
        parts[name] = parts.get(name, 0.0) + s
    return result


def _cost(path: Path, workers: sandbox.Workers, policy: sandbox.Policy, limits: sandbox.Limits,
          repeat: int, threads: int) -> tuple[sandbox.DpQuery, sandbox.DpExact, int]:
    sql = QUERY.format(t="t")
    raw_sql = QUERY.format(t=f"read_parquet('{path}')")
    con = duckdb.connect(config={"threads": threads})
    variants = {"fast path: key row_id, k = 1": ("row_id", 1),
                "capping path: key customer_id, k = 5": ("customer_id", 5)}
    sides: dict[str, Callable[[], Any]] = {"raw": lambda: con.execute(raw_sql).fetchnumpy()}
    parts: dict[str, dict[str, float]] = {}
    inputs = {}
    for name, (key, k) in variants.items():
        q = queries.QueryInputs(sql, _table(path, key), policy)
        req = request(k, epsilon=1)
        inputs[name] = q, req
        parts[name] = {}
        sides[f"plain {name}"] = lambda q=q: queries.run(q, limits, workers)
        sides[f"dp {name}"] = lambda q=q, req=req, p=parts[name]: _release(
            q, limits, req, workers, p)
    for fn in sides.values():
        fn()  # warm-up: each snapshot's subject statistics, the remembered validations
    for p in parts.values():
        p.clear()
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeat):  # interleaved, so that load from elsewhere hits all sides alike
        for name, fn in sides.items():
            samples[name].append(timed(fn)[1])
    med = {name: statistics.median(v) for name, v in samples.items()}

    raw = med["raw"]
    rows: list[list[object]] = [["raw DuckDB, open connection", raw * 1000, 1.0, ""]]
    ratios = {}
    for name in variants:
        plain, noisy = med[f"plain {name}"], med[f"dp {name}"]
        ratios[name] = noisy / plain
        rows.append([f"veil, no DP, {name}", plain * 1000, plain / raw, ""])
        rows.append([f"veil, DP ε = 1, {name}", noisy * 1000, noisy / raw, noisy / plain])
        for part, total in parts[name].items():
            rows.append([f"  of which {part} (mean)", total / repeat * 1000, "", ""])
    table(["side (median of interleaved runs)", "ms", "vs raw", "DP / no DP"], rows)

    # the exact aggregates the accuracy table starts from: the capping path's, as released
    q, req = inputs[list(variants)[1]]
    spec = dp.sandbox_spec(req)
    dq = queries.validate_dp(q, limits, spec)
    exact = queries.run_dp(q, limits, spec, workers)
    assert exact.capped, "the customer_id variant should need capping at k = 5"
    fast_q, fast_req = inputs[list(variants)[0]]
    fast = queries.run_dp(fast_q, limits, dp.sandbox_spec(fast_req), workers)
    assert not fast.capped, "one row per subject should need no capping at k = 1"
    raw_counts = dict(con.execute(f"SELECT region, count(*) FROM read_parquet('{path}') "
                                  "GROUP BY region").fetchall())
    expected = [raw_counts.get(r, 0) for r in REGIONS]
    assert list(fast.values[0]) == expected, "the fast path's exact COUNT(*) is not DuckDB's"
    assert sum(exact.values[0]) < sum(expected), "capping at k = 5 left every row in"
    con.close()
    for name, r in ratios.items():
        verdict(f"DP / no DP, {name}", r, TARGET, higher_is_better=False)
    print()
    return dq, exact, 0  # region_00: the first declared cell


# --------------------------------------------------------------------------- accuracy


def _accuracy(dq: sandbox.DpQuery, exact: sandbox.DpExact, cell: int, trials: int) -> None:
    """Measured RMS relative error of T releases against the theory, per ε (and ρ)."""
    kinds = [(m.kind, m.column) for m in dq.measurements]
    i_n, i_s, i_c = (kinds.index(k) for k in
                     (("count", None), ("sum", "amount"), ("count", "amount")))
    n, s, c = (exact.values[i][cell] for i in (i_n, i_s, i_c))
    factor = 10**dq.spec.scale
    avg = s / (c * factor)
    names = [o.name for o in dq.outputs]
    col_n, col_s, col_a = names[1], names[2], names[3]
    print(f"# accuracy: {REGIONS[cell]}, exact bounded COUNT(*) = {n:,}, "
          f"SUM(amount) = {s / factor:,.2f}, AVG(amount) = {avg:.4f}; {trials} releases each")
    rows: list[list[object]] = []
    for label, spend in [(f"ε = {e}", {"epsilon": e}) for e in EPSILONS] + [
            (f"ρ = {Decimal(e) ** 2 / 2}", {"rho": str(Decimal(e) ** 2 / 2)}) for e in EPSILONS]:
        req = request(dq.spec.max_rows_per_subject, **spend)
        noises = dp.plan(req, [m.sensitivity for m in dq.measurements])
        err_n = err_s = err_a = 0.0
        for _ in range(trials):
            draws = [mech.draw(x, len(dq.cells)) for x in noises]
            out = queries.dp_result(dq, exact, draws).arrays
            err_n += (float(out[col_n][cell]) / n - 1) ** 2
            err_s += (float(out[col_s][cell]) * factor / s - 1) ** 2
            noisy_avg = out[col_a][cell]
            err_a += (float(noisy_avg) / avg - 1) ** 2 if noisy_avg is not None else math.inf
        theory = {"COUNT(*)": noises[i_n].std() / n, "SUM(amount)": noises[i_s].std() / s,
                  "AVG(amount)": math.hypot(noises[i_s].std() / s, noises[i_c].std() / c)}
        measured = {"COUNT(*)": err_n, "SUM(amount)": err_s, "AVG(amount)": err_a}
        for agg, th in theory.items():
            rms = math.sqrt(measured[agg] / trials)
            rows.append([label, agg, noises[0].mechanism, rms, th, rms / th])
    table(["spend per run", "aggregate", "noise", "RMS rel. error, measured", "theory",
           "measured / theory"], [[a, b, m, _sci(x), _sci(y), z] for a, b, m, x, y, z in rows])


def _sci(x: float) -> str:
    return f"{x:.3e}"


# --------------------------------------------------------------------------- data


def _dataset(cache: Path, rows: int) -> Path:
    """The benchmark's Parquet file, generated once per row count: sandbox_query's columns
    (rows / 10 customers, 20 regions, amounts 0.00 to 999.99) and a unique ``row_id``."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"dp_query_{rows}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        start = time.perf_counter()
        con = duckdb.connect()
        try:
            con.execute(
                f"""COPY (SELECT i::BIGINT AS row_id,
                          (hash(i) % {max(1, rows // 10)})::BIGINT AS customer_id,
                          'region_' || lpad((hash(i * 7 + 1) % 20)::VARCHAR, 2, '0') AS region,
                          round((hash(i * 13 + 5) % 100000) / 100.0, 2)::DOUBLE AS amount
                   FROM range({rows}) r(i)) TO '{tmp}' (FORMAT parquet)"""
            )
        finally:
            con.close()
        tmp.rename(path)
        print(f"# generated {path} in {time.perf_counter() - start:.1f} s")
    return path

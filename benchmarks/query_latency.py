"""End-to-end latency of a small approved query: gRPC + mTLS + grant + sandbox + durable log.

python -m benchmarks query_latency [--analysts 8] [--calls 50] [--rows 10000]

One node on loopback, one approved query job per analyst, every analyst (a process of
its own, as on its own machine) querying at once. Each call is the full path a user gets: TLS, the gate, the grant and quota check,
validation, an isolated DuckDB connection on the Parquet snapshot, group suppression,
the durable log entry with its checkpoint, and the charge. The baseline is the same SQL
through raw DuckDB on the same file in-process (what an analyst with the data would
run); its ratio shows what Veil's guarantees cost per call. Targets: median ≤ 25 ms,
p99 ≤ 100 ms with 8 analysts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from benchmarks._table import header, table, verdict

SQL = "SELECT region, COUNT(*) AS n, AVG(amount) AS avg_amount FROM customers GROUP BY region"


def _setup(root: Path, rows: int, analysts: int, threads: int | None = None):  # type: ignore[no-untyped-def]
    from veil.node import catalog, pki
    from veil.node.client import Client
    from veil.node.home import init_node
    from veil.node.server import start

    fed = root / "fed"
    pki.init_federation(fed, "bench")
    home = init_node(root / "bank", "bank", federation_dir=fed)
    csv = root / "customers.csv"
    with csv.open("w") as f:
        f.write("customer_id,region,amount\n")
        for i in range(rows):
            f.write(f"c{i},r{i % 8},{i % 1000}\n")
    conn, log = home.connect(), home.open_log()
    ds = catalog.register(conn, log, home.identity, home.snapshots, node="bank", name="customers",
                          source=csv, key_column="customer_id",
                          levels={"region": "public"}).dataset
    log.close()
    conn.close()
    if threads:
        toml = home.config_path.read_text().replace("threads = 2 ", f"threads = {threads} ")
        home.config_path.write_text(toml)
    node = start(home.path, "127.0.0.1:0")
    for role, name in (("operator", "olga"), ("subject-representative", "sam")):
        pki.issue(fed, role, name, root / name)
    job = f'''purpose = "latency benchmark"
kind = "query"
expires = "1d"
[quota]
runs = 100000
[[nodes]]
name = "bank"
dataset = "customers"
columns = ["region", "amount"]
[params]
sql = "{SQL}"
'''
    clients = []
    with Client(node.address, root / "olga") as olga, Client(node.address, root / "sam") as sam:
        for a in range(analysts):
            pki.issue(fed, "analyst", f"a{a}", root / f"a{a}")
            c = Client(node.address, root / f"a{a}")
            j = c.submit_job(job)
            olga.approve(j.id)
            sam.approve(j.id)
            clients.append((c, j.id))
    return node, clients, ds.snapshot_path(home.snapshots)


def _analyst(address: str, identity: str, job: str, calls: int) -> list[float]:
    from veil.node.client import Client

    with Client(address, identity) as c:
        c.query(job)  # connect and warm up outside the measurement
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            c.query(job)
            out.append((time.perf_counter() - t) * 1000)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks query_latency")
    ap.add_argument("--analysts", type=int, default=8)
    ap.add_argument("--calls", type=int, default=50, help="calls per analyst")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--threads", type=int, help="DuckDB threads per query (node.toml limits)")
    args = ap.parse_args(argv)
    header(f"query latency: {args.analysts} analysts × {args.calls} calls, {args.rows:,} rows")
    with tempfile.TemporaryDirectory() as tmp:
        node, clients, snapshot = _setup(Path(tmp), args.rows, args.analysts, args.threads)
        try:
            for c, job in clients:  # warm up channels and the page cache
                c.query(job)
            # each analyst is its own process, as on its own machine: the load generator
            # must not share the node's interpreter lock
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(len(clients)) as pool:
                start = time.perf_counter()
                parts = pool.starmap(
                    _analyst,
                    [(node.address, str(c.identity.directory), job, args.calls)
                     for c, job in clients],
                )
                wall = time.perf_counter() - start
            latencies = [ms for part in parts for ms in part]
            with ctx.Pool(1) as pool:  # one analyst alone: latency without queueing
                c, job = clients[0]
                alone = pool.apply(_analyst, (node.address, str(c.identity.directory), job,
                                              args.calls))
        finally:
            for c, _ in clients:
                c.close()
            node.stop(grace=1)
        raw = []
        con = duckdb.connect()
        con.execute(f"CREATE VIEW customers AS SELECT * FROM read_parquet('{snapshot}')")
        for _ in range(200):
            t = time.perf_counter()
            con.execute(SQL).fetchall()
            raw.append((time.perf_counter() - t) * 1000)
    latencies.sort()
    med = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    raw_med = statistics.median(raw)
    table(
        ("path", "median ms", "p99 ms", "calls/s"),
        [
            ("veil: gRPC+mTLS+grant+sandbox+durable log", med, p99, len(latencies) / wall),
            ("veil, one analyst alone", statistics.median(alone),
             sorted(alone)[int(0.99 * (len(alone) - 1))], 1000 / statistics.median(alone)),
            ("raw DuckDB, in-process, same file", raw_med, sorted(raw)[int(0.99 * 199)], 1000 / raw_med),
        ],
    )
    print(f"ratio veil/raw median: {med / raw_med:.1f}x (8 at once), "
          f"{statistics.median(alone) / raw_med:.1f}x (alone)")
    verdict("median latency ms", med, 25, higher_is_better=False)
    verdict("p99 latency ms", p99, 100, higher_is_better=False)
    return 0

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
import os
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


def _analyst(address: str, identity: str, job: str, calls: int) -> tuple[list[float], float]:
    from veil.node.client import Client

    with Client(address, identity) as c:
        c.query(job)  # connect and warm up outside the measurement
        out = []
        cpu = time.process_time()
        for _ in range(calls):
            t = time.perf_counter()
            c.query(job)
            out.append((time.perf_counter() - t) * 1000)
        cpu = time.process_time() - cpu
    return out, cpu


def _workers_cpu(node) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds used so far by the node's sandbox worker processes."""
    total = 0.0
    with node.ctx.workers._cond:
        pids = [w.proc.pid for w in node.ctx.workers._idle]
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle, iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


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
                node_cpu, workers_cpu = time.process_time(), _workers_cpu(node)
                busy = _machine_busy()
                start = time.perf_counter()
                parts = pool.starmap(
                    _analyst,
                    [(node.address, str(c.identity.directory), job, args.calls)
                     for c, job in clients],
                )
                wall = time.perf_counter() - start
                node_cpu = time.process_time() - node_cpu
                workers_cpu = _workers_cpu(node) - workers_cpu
                busy = _machine_busy() - busy
            latencies = [ms for part, _ in parts for ms in part]
            analysts_cpu = sum(cpu for _, cpu in parts)
            with ctx.Pool(1) as pool:  # one analyst alone: latency without queueing
                c, job = clients[0]
                alone, _ = pool.apply(_analyst, (node.address, str(c.identity.directory), job,
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
    n = len(latencies)
    print(f"CPU per call, {args.analysts} at once: node process {node_cpu / n * 1000:.1f} ms, "
          f"sandbox workers {workers_cpu / n * 1000:.1f} ms, analysts' clients "
          f"{analysts_cpu / n * 1000:.1f} ms; wall {wall / n * 1000:.1f} ms per call on "
          f"{multiprocessing.cpu_count()} cores, whose busy time was {busy / n * 1000:.1f} ms "
          "per call (the rest: other processes of the machine)")
    print(f"ratio veil/raw median: {med / raw_med:.1f}x (8 at once), "
          f"{statistics.median(alone) / raw_med:.1f}x (alone)")
    verdict("median latency ms", med, 25, higher_is_better=False)
    verdict("p99 latency ms", p99, 100, higher_is_better=False)
    return 0

"""Sum rows: one column over 1,000,000 rows at each of three node processes vs raw DuckDB.

``python -m benchmarks sum_rows [--rows 1000000]``

Three nodes (``veil node serve`` processes, own node directories, one federation) each hold
``--rows`` rows with an integer ``amount`` in [-1000, 1000]. One sum job (no grouping) is
submitted and approved everywhere before timing. Timed: the analyst's ``Client.run_sum``
from RunSum to the decrypted total, cold (first run) and warm (second run). Baseline: raw
DuckDB in this process summing the same three Parquet snapshots (what someone holding all
three files would run). Where the time goes: each node's CPU (with its sandbox workers)
during the run, and each node's log entry meters (sandbox CPU of the local query).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks._federation import (
    NODES,
    log_entries,
    submit_and_approve,
    sum_job,
    three_nodes,
    tree_cpu_seconds,
)
from benchmarks._table import header, table, timed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks sum_rows")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows at each node")
    args = ap.parse_args(argv)
    if args.rows < 10:
        ap.error("--rows must be >= 10 (the nodes' minimum group size)")
    header(f"sum_rows: SUM(amount) over {args.rows:,} rows at each of 3 node processes vs "
           "raw DuckDB on the same three files")
    from veil.node import keys
    from veil.node.client import Client

    amounts: dict[str, np.ndarray] = {}

    def write(name: str, path: Path) -> None:
        a = np.random.default_rng(NODES.index(name) + 11).integers(-1000, 1001, args.rows)
        amounts[name] = a
        with path.open("w") as f:
            f.write("id,amount\n")
            f.write("".join(f"{i},{v}\n" for i, v in enumerate(a.tolist())))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (key_dir := root / "key").mkdir()
        keys.generate(key_dir)
        private = keys.load_private(key_dir)
        start = time.perf_counter()
        with three_nodes(root, write, levels={"amount": "sensitive"}, key_column="id") as nodes:
            job_id = submit_and_approve(root, sum_job(
                nodes, key_dir / keys.PUBLIC_FILE, columns=["amount"],
                bound=str(1001 * args.rows)))
            print(f"set-up (not timed): CSVs written, registered, nodes started, job approved "
                  f"in {time.perf_counter() - start:.1f} s\n")
            runs = []
            with Client(nodes[NODES[0]].address, root / "alice", node=NODES[0],
                        timeout=600) as alice:
                alice.job(job_id)
                for label in ("cold", "warm"):
                    cpu0 = {n: tree_cpu_seconds(v.proc.pid) for n, v in nodes.items()}
                    result, wall = timed(lambda: alice.run_sum(job_id, private))
                    cpu = {n: tree_cpu_seconds(v.proc.pid) - cpu0[n] for n, v in nodes.items()}
                    runs.append((label, wall, cpu, result))
            expected = int(sum(int(a.sum()) for a in amounts.values()))
            for label, _, _, result in runs:
                got = int(result.totals["amount"][0])
                assert got == expected, f"{label} run: total {got} != numpy's {expected}"
                assert int(result.counts[0]) == 3 * args.rows
            print(f"both runs' totals equal numpy's: {expected:,} over {3 * args.rows:,} rows\n")
            entries = {n: [e for e in log_entries(v, job_id)
                           if e.get("method", "").endswith(("RunSum", "ContributeSum"))]
                       for n, v in nodes.items()}
            files = [str(next(v.home.snapshots.rglob("*.parquet"))) for v in nodes.values()]
            con = duckdb.connect()
            con.execute(f"SELECT SUM(amount) FROM read_parquet({files})").fetchall()  # warm
            raws = []
            for _ in range(5):
                row, t = timed(lambda: con.execute(
                    f"SELECT SUM(amount) FROM read_parquet({files})").fetchone())
                raws.append(t)
            assert row is not None and int(row[0]) == expected
            raw = sorted(raws)[2]
    rows = [["raw DuckDB, in-process, the 3 Parquet files (median of 5)", raw, 1.0]]
    for label, wall, _, _ in runs:
        rows.append([f"veil {label} run: RunSum -> decrypted total", wall, wall / raw])
    table(["path", "seconds", "vs raw DuckDB (x slower)"], rows)
    table(["run", "wall s", *[f"{n} CPU s (+workers)" for n in NODES]],
          [[label, wall, *[cpu[n] for n in NODES]] for label, wall, cpu, _ in runs])
    table(["node", "method", "rows_scanned", "cpu_ms (sandbox query)", "ciphertexts"],
          [[n, e["method"].rsplit("/", 1)[1], e.get("meters", {}).get("rows_scanned", 0),
            e.get("meters", {}).get("cpu_ms", 0), e.get("meters", {}).get("ciphertexts", 0)]
           for n in NODES for e in entries[n]])
    print("The local query is the sandbox's SUM/COUNT on each node's snapshot (cpu_ms above);"
          " the rest of a warm run is the fixed cost of one run: mask keys (two rounds of "
          "node-to-node mTLS calls), three ciphertexts per node, durable log entries with "
          "checkpoints at every node, and the analyst's decryption.")
    return 0

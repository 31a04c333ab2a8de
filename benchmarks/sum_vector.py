"""Sum vector: 100,000 totals across three node processes vs one stock phe ciphertext per value.

``python -m benchmarks sum_vector [--columns 16] [--categories 6250] [--sample 200]``

The vector is ``--columns`` columns (``a0`` ...) grouped by a public column (``cat``) over
``--categories`` declared categories: 16 x 6,250 = 100,000 totals by default (plus, as every
sum job carries them, one row count and one withheld flag per category). One column over
100,000 categories (``--columns 1 --categories 100000``) does not finish: the node's
``_aggregate`` (node/kinds/sum.py) calls ``.tolist()`` on whole result columns once per
group, quadratic in the groups (~300 s per node at 100,000), beyond the aggregator's
120 s peer deadline. Each of three nodes
(``veil node serve`` in its own process, its own node directory, one federation) holds two
rows per category (its ``min_group_size`` is set to 2, so no group is withheld), integer
amounts in [-1000, 1000]. The job is submitted to all three and approved before anything
is timed. Timed: the analyst's ``Client.run_sum`` at the aggregator, from the RunSum call
to decrypted numpy totals — twice, a cold first run (each node builds its fixed-base table
and starts its sandbox worker) and a warm second one. The totals are checked against numpy
over the three CSV files.

Baseline (the tool a user would pick instead): stock ``phe``, one ciphertext per value,
timed on ``--sample`` values — ``public_key.encrypt``, ``EncryptedNumber`` addition of the
three nodes' ciphertexts, ``private_key.decrypt`` — and scaled linearly to 3 nodes ×
categories encryptions, categories × 2 additions and categories decryptions, all on one
core (its transfer, 3 × 100,000 × 512 bytes, is not even counted). The output says so.

Where Veil's time goes: the CPU seconds of every node process (and its sandbox workers)
during the run, each node's log entry meters, and the same steps as the nodes run them
replayed in this process on node bank-a's data: local query (DuckDB on its snapshot),
packing, masks, encryption, serialization, aggregation (add + re-randomize), decryption
with unpacking. The remainder of the wall time is transfer, gRPC, logging and the gate.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks._federation import (
    NODES,
    Node,
    log_entries,
    submit_and_approve,
    sum_job,
    three_nodes,
    tree_cpu_seconds,
)
from benchmarks._table import header, table, timed, verdict

def _write(categories: int, columns: int) -> tuple[dict[str, np.ndarray], object]:
    amounts: dict[str, np.ndarray] = {}

    def write(name: str, path: Path) -> None:
        rng = np.random.default_rng(NODES.index(name) + 1)
        a = rng.integers(-1000, 1001, size=(2 * categories, columns), dtype=np.int64)
        amounts[name] = a
        cats = np.arange(2 * categories) % categories
        with path.open("w") as f:
            f.write("id,cat," + ",".join(f"a{j}" for j in range(columns)) + "\n")
            f.write("".join(f"{name}-{i},{c}," + ",".join(map(str, v)) + "\n"
                            for i, (c, v) in enumerate(zip(cats.tolist(), a.tolist()))))

    return amounts, write


def _phe_baseline(pk, sk, sample: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Seconds per value of phe's encrypt, a 3-way add, and decrypt, on ``sample`` values."""
    rng = random.Random(1)
    values = [[rng.randint(-1000, 1000) for _ in range(sample)] for _ in range(3)]
    start = time.perf_counter()
    cts = [[pk.encrypt(v) for v in node] for node in values]
    enc = (time.perf_counter() - start) / (3 * sample)
    start = time.perf_counter()
    totals = [a + b + c for a, b, c in zip(*cts)]
    add = (time.perf_counter() - start) / sample
    start = time.perf_counter()
    plain = [sk.decrypt(t) for t in totals]
    dec = (time.perf_counter() - start) / sample
    assert plain == [a + b + c for a, b, c in zip(*values)]
    return {"encrypt": enc, "add": add, "decrypt": dec}


def _replay_steps(node: Node, job_id: str, private, categories: int, columns: int) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    """The nodes' steps for one node's part (and the aggregator's and the analyst's), timed
    here on bank-a's snapshot with the node's own code paths."""
    from veil.node.jobs import spec_from_canonical, sum_params
    from veil.node.jobs._sum import decode, packings
    from veil.protocols import masks as mask_protocol
    from veil.protocols import paillier
    from veil.protocols.paillier import Decryptor

    key = private.public_key
    conn = node.home.connect()
    try:
        canonical = bytes(conn.execute("SELECT canonical FROM jobs WHERE id = ?",
                                       (job_id,)).fetchone()[0])
    finally:
        conn.close()
    spec = spec_from_canonical(canonical)
    p = sum_params(spec.params)
    [parquet] = node.home.snapshots.rglob("*.parquet")  # the node's one dataset version
    steps: list[tuple[str, float]] = []
    con = duckdb.connect()
    items = ", ".join(f"SUM(a{j})" for j in range(columns))
    rows, t = timed(lambda: con.execute(
        f"SELECT cat AS g, {items}, COUNT(*) AS n FROM read_parquet('{parquet}') "
        "GROUP BY cat").fetchall())
    steps.append(("local query (raw DuckDB on the snapshot, in-process)", t))
    by = {str(r[0]): r[1:] for r in rows}
    sums = [None if c not in by else int(by[c][j]) for c in p.categories for j in range(columns)]
    counts = [int(by[c][-1]) if c in by else None for c in p.categories]
    flags = [0 if c in by else 1 for c in p.categories]
    sp, cp, fp = packings(p, len(spec.nodes))
    plain, t = timed(lambda: sp.pack(sums) + cp.pack(counts) + fp.pack(flags))
    steps.append((f"packing {(columns + 2) * categories:,} slots into {len(plain):,} plaintexts", t))
    from cryptography.hazmat.primitives.asymmetric import x25519
    me, others = x25519.X25519PrivateKey.generate(), [x25519.X25519PrivateKey.generate()
                                                      for _ in range(2)]
    from cryptography.hazmat.primitives import serialization
    raw = {n.name: k.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
           for n, k in zip(spec.nodes, [me, *others])}
    masks, t = timed(lambda: mask_protocol.masks(job_id, "0" * 32, [n.name for n in spec.nodes],
                                                 spec.nodes[0].name, me, raw, key.n, len(plain)))
    steps.append(("masks (X25519 + SHAKE-256 expansion, reduce mod n)", t))
    enc, t = timed(lambda: paillier.Encryptor(key))
    steps.append(("  encryptor table build (once per key and process)", t))
    masked = [(m + r) % key.n for m, r in zip(plain, masks)]
    cts, t = timed(lambda: enc.encrypt_all(masked))
    steps.append((f"encryption of {len(cts):,} plaintexts, one node, one core", t))
    blobs, t = timed(lambda: [paillier.ciphertext_to_bytes(key, c) for c in cts])
    steps.append(("serialize (bytes out), one node", t))
    back, t = timed(lambda: [paillier.ciphertext_from_bytes(key, b) for b in blobs])
    steps.append(("parse and check, per node's part at the aggregator", t))
    total, t = timed(lambda: enc.rerandomize_all(enc.add_vectors([back, back, back])))
    steps.append(("aggregation: add 3 parts + re-randomize", t))
    d = Decryptor(private)
    a = sp.plaintexts_for(categories * columns)
    b = a + cp.plaintexts_for(categories)
    # decrypt the (unmasked) plaintexts of one node three times: the same shape as a total
    plain_cts = enc.encrypt_all(plain)
    _, t = timed(lambda: decode(p, 3, plain_cts[:a], plain_cts[a:b], plain_cts[b:], d))
    steps.append(("decryption (CRT) + unpacking at the analyst", t))
    return steps


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks sum_vector")
    ap.add_argument("--categories", type=int, default=6_250, help="declared categories")
    ap.add_argument("--columns", type=int, default=16, help="columns summed (1-16)")
    ap.add_argument("--sample", type=int, default=200, help="phe values timed per step")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip the in-process replay of the steps")
    args = ap.parse_args(argv)
    if args.categories < 1 or args.sample < 5 or not 1 <= args.columns <= 16:
        ap.error("--categories must be >= 1, --columns 1-16 and --sample >= 5")
    cats, cols = args.categories, args.columns
    slots = cats * cols
    header(f"sum_vector: {slots:,} totals ({cols} columns x {cats:,} categories) across 3 node "
           f"processes on loopback, 2048-bit key; phe baseline timed on {args.sample} values "
           "and scaled")
    from veil.node import keys
    from veil.node.client import Client

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        amounts, write = _write(cats, cols)
        (key_file := root / "key").mkdir()
        keys.generate(key_file)
        private = keys.load_private(key_file)
        setup_start = time.perf_counter()
        levels = {"cat": "public", **{f"a{j}": "sensitive" for j in range(cols)}}
        with three_nodes(root, write, levels=levels, key_column="id",  # type: ignore[arg-type]
                         min_group_size=2) as nodes:
            names = [f"a{j}" for j in range(cols)]
            text = sum_job(nodes, key_file / keys.PUBLIC_FILE, columns=names,
                           group_by="cat", categories=[str(i) for i in range(cats)],
                           bound="1000000")
            print(f"job text: {len(text):,} bytes (the job language's limit on a signed job "
                  "is 1 MiB of canonical JSON)")
            job_id = submit_and_approve(root, text)
            print(f"set-up (not timed): 3 nodes, {2 * cats:,} rows each, job submitted and "
                  f"approved in {time.perf_counter() - setup_start:.1f} s\n")
            runs = []
            with Client(nodes[NODES[0]].address, root / "alice", node=NODES[0],
                        timeout=600) as alice:
                alice.job(job_id)  # connect outside the measurement
                for label in ("cold", "warm"):
                    cpu0 = {n: tree_cpu_seconds(v.proc.pid) for n, v in nodes.items()}
                    me0 = time.process_time()
                    result, wall = timed(lambda: alice.run_sum(job_id, private))
                    me = time.process_time() - me0
                    cpu = {n: tree_cpu_seconds(v.proc.pid) - cpu0[n] for n, v in nodes.items()}
                    runs.append((label, wall, cpu, me, result))
            group = np.arange(2 * cats) % cats
            expected = np.sum([np.stack([np.bincount(group, weights=a[:, j], minlength=cats)
                                         for j in range(cols)], axis=1).astype(np.int64)
                               for a in amounts.values()], axis=0)
            for label, _, _, _, result in runs:
                got = np.stack([np.array([int(v) for v in result.totals[c]], dtype=np.int64)
                                for c in names], axis=1)
                assert np.array_equal(got, expected), f"{label} run: totals differ from numpy"
                assert result.counts.tolist() == [6] * cats, "counts differ"
                assert result.withheld.tolist() == [0] * cats, "withheld differ"
            print(f"totals of both runs equal numpy's over the three CSV files "
                  f"({slots:,} totals, e.g. a0 of group 0: {int(expected[0, 0])})\n")
            entries = {n: [e for e in log_entries(v, job_id)
                           if e.get("method", "").endswith(("RunSum", "ContributeSum"))]
                       for n, v in nodes.items()}
            steps = [] if args.no_breakdown else _replay_steps(
                nodes[NODES[0]], job_id, private, cats, cols)

    baseline = _phe_baseline(private.public_key, private, args.sample)
    phe_enc = baseline["encrypt"] * 3 * slots
    phe_add = baseline["add"] * slots
    phe_dec = baseline["decrypt"] * slots
    phe_total = phe_enc + phe_add + phe_dec
    rows = [
        [f"phe: encrypt 3 x {slots:,} values (SCALED from {3 * args.sample})", phe_enc, ""],
        [f"phe: add 3 ciphertexts per value, {slots:,} (SCALED from {args.sample})", phe_add, ""],
        [f"phe: decrypt {slots:,} totals (SCALED from {args.sample})", phe_dec, ""],
        ["phe total, one core, no transfer (SCALED)", phe_total, 1.0],
    ]
    for label, wall, _, _, _ in runs:
        rows.append([f"veil {label} run: RunSum -> decrypted numpy totals", wall,
                     phe_total / wall])
    table(["step", "seconds", "phe / veil (x)"], rows)
    cores = os.cpu_count() or 1
    par = phe_enc / min(3, cores) + phe_add + phe_dec
    print(f"phe with the 3 nodes encrypting in parallel on this machine's {cores} cores "
          f"(SCALED): {par:.1f} s; vs veil warm: {par / runs[-1][1]:.0f}x\n")
    cpu_rows = []
    for label, wall, cpu, me, _ in runs:
        cpu_rows.append([label, wall, *[cpu[n] for n in NODES], me])
    table(["run", "wall s", *[f"{n} CPU s (+workers)" for n in NODES], "analyst CPU s"],
          cpu_rows)
    meter_rows = []
    for n in NODES:
        for e in entries[n]:
            m = e.get("meters", {})
            meter_rows.append([n, e["method"].rsplit("/", 1)[1], e.get("status"),
                               m.get("rows_scanned", 0), m.get("cpu_ms", 0),
                               m.get("ciphertexts", 0), m.get("bytes_out", 0)])
    table(["node", "method", "status", "rows_scanned", "cpu_ms (sandbox)", "ciphertexts",
           "bytes_out"], meter_rows)
    if steps:
        table(["step (replayed in this process on bank-a's data)", "seconds"],
              [[s, t] for s, t in steps])
    for label, wall, *_ in runs:
        verdict(f"sum_vector {label}: phe (scaled) / veil (x)", phe_total / wall, 100.0,
                higher_is_better=True)
    return 0

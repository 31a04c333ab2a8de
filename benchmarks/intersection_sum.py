"""Intersection sum end to end: two node processes, N x N keys, two value columns, vs stock phe.

``python -m benchmarks intersection_sum [--items 100000] [--sample 200] [--profile DIR]``

Node ``bank`` holds ``--items`` keys, node ``telco`` as many (half shared, as in
``benchmarks.psi``) with two value columns: ``spend`` (a decimal in [0, 10000] with 2
digits) and ``visits`` (an integer in [0, 100]). The intersection-sum job (scale 2, bound
1,000,000, the analyst's 2048-bit Paillier key) is submitted to both and approved before
anything is timed. Timed, twice (cold: each node starts its blind pool and builds its
fixed-base table; warm: the steady state the ratio uses): the analyst's ``Client.run_psi``
at the leader (``bank``), from the RunPsi call to the decrypted sums. ``telco`` packs each
key's two values into one plaintext and encrypts it with Veil's fixed-base encryption
(``veil.protocols.paillier.Encryptor``), sending it beside the key's blinded point; ``bank``
adds the ciphertexts of the matching points and re-randomizes the totals; the analyst
decrypts. The sums are checked against exact sums over the shared keys' values.

Baseline, the same protocol with stock ``phe`` in place of Veil's encryption: one
``EncryptedNumber`` per value (``public_key.encrypt``, serialized to 512 bytes as it would
travel), ``EncryptedNumber`` addition over the intersection, ``obfuscate`` on the totals and
``private_key.decrypt``, timed on ``--sample`` keys and scaled linearly to N keys (and N / 2
matching keys). The same steps Veil's nodes run (``Packing.pack`` then ``encrypt_all`` then
``ciphertext_to_bytes`` per key, ``add_many`` over the matching keys, ``rerandomize``) are
timed here the same way on ten times as many keys. The phe protocol's time is then
``veil warm wall - veil's crypto steps + phe's crypto steps``; where the node overlaps its
encryption with the blinding, the subtraction takes out more than the encryption cost the
wall time, so the estimate favours phe.

Measured here (2026-12-04, 100,000 x 100,000, 2 cores). Before the values node encrypted
ahead on all cores: warm run 129 s / 102 s, 19.6x / 22.9x the phe protocol; 67% of the
values node's samples were one-key-at-a-time encryption in its sending thread
(``_FixedBase.pow``, ~0.93 ms per key) while the leader idled. After (``_AheadEncryption``,
a ParallelEncryptor fed in sending order): warm run 59 s / 62 s, 38.9x / 36.8x; the
machine's 2 cores are busy throughout (the encryption workers show as "other processes" in
the timeline: they are spawned, not forked, children of the values node).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks._federation import log_entries, submit_and_approve, tree_cpu_seconds
from benchmarks._table import header, table, timed, verdict
from benchmarks.psi import (
    PSI_NODES,
    RssSampler,
    Timeline,
    hwm_mib,
    key_sets,
    profile_tables,
    profiled,
    psi_job,
    two_nodes,
)

BOUND = 1_000_000
SCALE = 2


def _values(n: int) -> list[tuple[Decimal, int]]:
    rng = random.Random(13)
    return [(Decimal(rng.randint(0, 1_000_000)).scaleb(-SCALE), rng.randint(0, 100))
            for _ in range(n)]


def _write(path: Path, name: str, keys: list[str],
           values: list[tuple[Decimal, int]] | None) -> None:
    with path.open("w") as f:
        if values is None:
            f.write("id,key\n")
            f.write("".join(f"{name}-{i},{k}\n" for i, k in enumerate(keys)))
        else:
            f.write("id,key,spend,visits\n")
            f.write("".join(f"{name}-{i},{k},{s},{v}\n"
                            for i, (k, (s, v)) in enumerate(zip(keys, values))))


def _phe_steps(pub: Any, private: Any, values: list[tuple[Decimal, int]]) -> dict[str, float]:
    """Seconds per key of stock phe's steps: encrypt 2 values (to bytes), add 2 ciphertexts
    into the totals; and once: obfuscate and decrypt 2 totals."""
    scaled = [(int(s.scaleb(SCALE)), v) for s, v in values]
    size = (2 * pub.n.bit_length() + 7) // 8
    start = time.perf_counter()
    cts = [(pub.encrypt(s), pub.encrypt(v)) for s, v in scaled]
    wire = [(a.ciphertext(be_secure=False).to_bytes(size, "big"),
             b.ciphertext(be_secure=False).to_bytes(size, "big")) for a, b in cts]
    enc = (time.perf_counter() - start) / len(values)
    assert len(wire) == len(values)
    start = time.perf_counter()
    total_a, total_b = cts[0]
    for a, b in cts[1:]:
        total_a, total_b = total_a + a, total_b + b
    add = (time.perf_counter() - start) / (len(values) - 1)
    start = time.perf_counter()
    total_a.obfuscate()
    total_b.obfuscate()
    got = (private.decrypt(total_a), private.decrypt(total_b))
    once = time.perf_counter() - start
    assert got == (sum(s for s, _ in scaled), sum(v for _, v in scaled))
    return {"encrypt": enc, "add": add, "once": once}


def _veil_steps(node: Any, job_id: str, values: list[tuple[Decimal, int]],
                addends: int) -> dict[str, float]:
    """Seconds per key of the values node's and the leader's crypto, as the nodes run it
    (node/kinds/psi.py ``_Run.encryptor`` and ``_LeaderRun._match``), here in one process."""
    from phe.paillier import PaillierPublicKey

    from veil.node.jobs import psi_params, spec_from_canonical, values_packing
    from veil.protocols import paillier

    conn = node.home.connect()
    try:
        canonical = bytes(conn.execute("SELECT canonical FROM jobs WHERE id = ?",
                                       (job_id,)).fetchone()[0])
    finally:
        conn.close()
    p = psi_params(spec_from_canonical(canonical))
    assert p.paillier_n is not None
    key = PaillierPublicKey(p.paillier_n)
    packing = values_packing(p, addends)
    start = time.perf_counter()
    enc = paillier.Encryptor(key)
    table_s = time.perf_counter() - start
    sums = [[s, Decimal(v)] for s, v in values]
    start = time.perf_counter()
    wire = [b"".join(paillier.ciphertext_to_bytes(key, c)
                     for c in enc.encrypt_all(packing.pack(acc))) for acc in sums]
    per_key = (time.perf_counter() - start) / len(values)
    size = paillier.ciphertext_size(key)
    width = packing.plaintexts_for(2)
    start = time.perf_counter()
    columns = [[paillier.ciphertext_from_bytes(key, w[k * size:(k + 1) * size]) for w in wire]
               for k in range(width)]
    totals = [enc.add_many(col) for col in columns]
    add = (time.perf_counter() - start) / len(values)
    start = time.perf_counter()
    [paillier.ciphertext_to_bytes(key, enc.rerandomize(t)) for t in totals]
    once = time.perf_counter() - start
    return {"encrypt": per_key, "add": add, "once": once, "table": table_s,
            "plaintexts": float(width)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks intersection_sum")
    ap.add_argument("--items", type=int, default=100_000, help="keys per node")
    ap.add_argument("--sample", type=int, default=200, help="keys phe's steps are timed on")
    ap.add_argument("--profile", type=Path, default=None,
                    help="run py-spy on both nodes during the warm run, stacks in this dir")
    args = ap.parse_args(argv)
    if args.items < 400 or args.sample < 10:
        ap.error("--items must be at least 400 and --sample at least 10")
    n = args.items
    cores = len(os.sched_getaffinity(0))
    header(f"intersection_sum: {n:,} x {n:,} keys, half shared, 2 value columns, 2 node "
           f"processes on loopback, 2048-bit key, {cores} cores (load average before: "
           f"{os.getloadavg()[0]:.2f})")
    from veil.node import keys
    from veil.node.client import Client

    a_keys, b_keys = key_sets(n)
    values = _values(n)
    want_spend = sum((s for s, _ in values[:n // 2]), Decimal(0))
    want_visits = Decimal(sum(v for _, v in values[:n // 2]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (key_dir := root / "key").mkdir()
        keys.generate(key_dir)
        private = keys.load_private(key_dir)
        setup = time.perf_counter()

        def write(name: str, path: Path) -> None:
            if name == "bank":
                _write(path, name, a_keys, None)
            else:
                _write(path, name, b_keys, values)

        with two_nodes(root, write, levels={"key": "sensitive", "spend": "sensitive",
                                            "visits": "internal"}) as nodes:
            text = psi_job(nodes, kind="intersection_sum",
                           columns={"bank": ["key"], "telco": ["key", "spend", "visits"]},
                           params=f'values = ["spend", "visits"]\nscale = {SCALE}\n'
                                  f'bound = "{BOUND}"\n'
                                  f'paillier_key = "{key_dir / keys.PUBLIC_FILE}"\n')
            job_id = submit_and_approve(root, text)
            print(f"set-up (not timed): 2 nodes, {n:,} rows each registered, job submitted "
                  f"and approved, in {time.perf_counter() - setup:.1f} s")
            leader = nodes["bank"]
            runs: list[tuple[str, Any, float]] = []
            with Client(leader.address, root / "alice", node="bank",
                        timeout=3600) as alice, RssSampler(nodes) as rss:
                alice.job(job_id)  # connect outside the measurement
                out, cold = timed(lambda: alice.run_psi(job_id, private))
                runs.append(("cold", out, cold))
                cpu0 = {k: tree_cpu_seconds(v.proc.pid) for k, v in nodes.items()}
                with profiled(nodes, args.profile) as prof, Timeline(nodes) as line:
                    out, wall = timed(lambda: alice.run_psi(job_id, private))
                runs.append(("warm", out, wall))
                cpu = {k: tree_cpu_seconds(v.proc.pid) - cpu0[k] for k, v in nodes.items()}
            mem = {k: hwm_mib(v.proc.pid) for k, v in nodes.items()}
            entries = {k: [e for e in log_entries(v, job_id) if "Psi" in e.get("method", "")]
                       for k, v in nodes.items()}
            veil_steps = _veil_steps(nodes["telco"], job_id,
                                     values[:min(n, 10 * args.sample)], n)
    for label, got, _ in runs:
        if got.cardinality != n // 2 or got.sums != {"spend": want_spend,
                                                     "visits": want_visits}:
            print(f"Veil's {label} run: count {got.cardinality:,}, sums {got.sums}; expected "
                  f"{n // 2:,}, spend {want_spend}, visits {want_visits}")
            return 1
    print(f"both runs: count {n // 2:,} and sums (spend {want_spend}, visits {want_visits}) "
          "equal the exact sums over the shared keys\n")

    phe_steps = _phe_steps(private.public_key, private, values[:args.sample])
    matched = n // 2
    phe_crypto = phe_steps["encrypt"] * n + phe_steps["add"] * matched + phe_steps["once"]
    veil_crypto = veil_steps["encrypt"] * n + veil_steps["add"] * matched + veil_steps["once"]
    phe_protocol = wall - veil_crypto + phe_crypto
    vs = 10 * args.sample
    rows: list[list[object]] = [
        [f"phe: encrypt 2 values x {n:,} keys (SCALED from {args.sample})",
         phe_steps["encrypt"] * n, ""],
        [f"phe: add over {matched:,} matching keys (SCALED)", phe_steps["add"] * matched, ""],
        ["phe: obfuscate + decrypt 2 totals", phe_steps["once"], ""],
        [f"veil: pack + encrypt {veil_steps['plaintexts']:.0f} plaintext x {n:,} keys "
         f"(SCALED from {vs})", veil_steps["encrypt"] * n, ""],
        [f"veil: add over {matched:,} matching keys (SCALED)", veil_steps["add"] * matched, ""],
        ["veil: re-randomize totals", veil_steps["once"], ""],
        ["veil: fixed-base table (once per key and process)", veil_steps["table"], ""],
        ["Veil cold run: Client.run_psi -> decrypted sums", cold, phe_protocol / cold],
        ["Veil warm run: Client.run_psi -> decrypted sums", wall, phe_protocol / wall],
        ["same protocol with stock phe (warm - veil crypto + phe crypto)", phe_protocol, 1.0],
    ]
    table(["step", "seconds", "phe protocol / veil (x)"], rows)
    print(f"crypto alone: phe {phe_crypto:.1f} s / veil {veil_crypto:.1f} s = "
          f"{phe_crypto / veil_crypto:.1f}x (one core each, as each node runs it)\n")
    print("the warm run, second by second (cores in use; 1.0 = one core busy):")
    line.print()
    print("CPU: the warm run; memory: peaks over both runs")
    table(["node", "CPU s (+children)", "own peak MiB", "sum of peaks MiB (procs)",
           "sampled peak MiB"],
          [[k, cpu[k], mem[k][0], f"{mem[k][1]:,.0f} ({mem[k][2]})", rss.peak[k]]
           for k in PSI_NODES])
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    table(["node", "method", "status", "items", "bytes_out"],
          [[k, e["method"].rsplit("/", 1)[1], e.get("status"),
            e.get("meters", {}).get("items", 0), e.get("meters", {}).get("bytes_out", 0)]
           for k in PSI_NODES for e in entries[k]])
    if prof:
        profile_tables(prof)
    verdict("intersection_sum warm: same protocol with phe / veil (x)", phe_protocol / wall,
            1.0, higher_is_better=True)
    return 0

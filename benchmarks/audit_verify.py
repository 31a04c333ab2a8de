"""Audit log verification: full-log root recompute and proof generation vs. a naive RFC 6962 MTH.

``python -m benchmarks audit_verify [--entries N]`` (default 1,000,000 entries of 200 bytes).

- Full verification: leaf-hash every entry and recompute the root, as an auditor does when
  checking a whole log against a checkpoint. Veil's streaming ``root_hash`` against the
  textbook recursive ``MTH`` of RFC 6962 section 2.1 over a list (what one writes from the
  RFC), same leaves, same root.
- Proofs: inclusion and consistency proofs at size N from a ``MemoryTree`` (the reference
  subtree store), median of 1000 random requests; with the number of subtree lookups, the
  figure that matters when each lookup is a SQLite point query.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from collections.abc import Callable

from benchmarks._table import header, table, timed, verdict
from veil.node.audit import (
    Frontier,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_at,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

ENTRY_SIZE = 200
PROOF_REQUESTS = 1000


def naive_mth(entries: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 ``MTH`` transcribed literally: recursion on list slices."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + naive_mth(entries[:k]) + naive_mth(entries[k:])).digest()


def _median_ms(fn: Callable[[int], object], args: list[int]) -> tuple[float, float]:
    """Median and 99th percentile of ``fn(arg)`` over ``args``, in milliseconds."""
    times = []
    for a in args:
        start = time.perf_counter()
        fn(a)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks audit_verify")
    parser.add_argument("--entries", type=int, default=1_000_000, help="log size N")
    args = parser.parse_args(argv)
    n: int = args.entries
    if n < 2:
        parser.error("--entries must be at least 2")

    header(f"audit_verify: {n:,} entries of {ENTRY_SIZE} bytes")
    rng = random.Random(6962)
    blob = rng.randbytes(n * ENTRY_SIZE)
    entries = [blob[i : i + ENTRY_SIZE] for i in range(0, len(blob), ENTRY_SIZE)]
    del blob

    veil_root, veil_s = timed(lambda: root_hash(entries))
    naive_root, naive_s = timed(lambda: naive_mth(entries))
    assert veil_root == naive_root, "roots differ"
    table(
        ["full verification (leaf hash + root)", "seconds", "entries/s", "vs naive"],
        [
            ["veil root_hash (streaming, O(log n) memory)", veil_s, n / veil_s, naive_s / veil_s],
            ["naive recursive RFC 6962 MTH", naive_s, n / naive_s, 1.0],
        ],
    )

    leaf_hashes = [leaf_hash(e) for e in entries]
    entries.clear()  # free ~230 MB before building the tree
    tree, build_s = timed(lambda: MemoryTree(leaf_hashes))

    def append_all() -> Frontier:
        frontier = Frontier()
        for h in leaf_hashes:
            frontier.append(h)
        return frontier

    frontier, append_s = timed(append_all)
    assert frontier.root() == veil_root == tree.root()

    lookups = 0

    def subtree(level: int, index: int) -> bytes:
        nonlocal lookups
        lookups += 1
        return tree.subtree(level, index)

    def max_lookups(fn: Callable[[int], object], args: list[int]) -> int:
        nonlocal lookups
        most = 0
        for a in args:
            lookups = 0
            fn(a)
            most = max(most, lookups)
        return most

    indexes = [rng.randrange(n) for _ in range(PROOF_REQUESTS)]
    old_sizes = [rng.randrange(1, n) for _ in range(PROOF_REQUESTS)]
    old_roots = {m: root_at(m, tree.subtree) for m in old_sizes}

    def make_inclusion(i: int) -> list[bytes]:
        return inclusion_proof(i, n, tree.subtree)

    def make_consistency(m: int) -> list[bytes]:
        return consistency_proof(m, n, tree.subtree)

    def check_inclusion(i: int) -> None:
        verify_inclusion(leaf_hashes[i], i, n, inclusion_proof(i, n, tree.subtree), veil_root)

    def check_consistency(m: int) -> None:
        verify_consistency(m, n, old_roots[m], veil_root, consistency_proof(m, n, tree.subtree))

    inc_med, inc_p99 = _median_ms(make_inclusion, indexes)
    con_med, con_p99 = _median_ms(make_consistency, old_sizes)
    incv_med, incv_p99 = _median_ms(check_inclusion, indexes)
    conv_med, conv_p99 = _median_ms(check_consistency, old_sizes)
    inc_lookups = max_lookups(lambda i: inclusion_proof(i, n, subtree), indexes)
    con_lookups = max_lookups(lambda m: consistency_proof(m, n, subtree), old_sizes)
    table(
        [f"at N = {n:,} (MemoryTree)", "median ms", "p99 ms", "max lookups"],
        [
            ["inclusion proof", inc_med, inc_p99, inc_lookups],
            ["consistency proof", con_med, con_p99, con_lookups],
            ["inclusion proof + verify", incv_med, incv_p99, inc_lookups],
            ["consistency proof + verify", conv_med, conv_p99, con_lookups],
        ],
    )
    table(
        ["building the log", "seconds", "entries/s"],
        [
            ["MemoryTree from leaf hashes (bulk)", build_s, n / build_s],
            ["Frontier.append, one leaf at a time", append_s, n / append_s],
        ],
    )

    verdict("full verification seconds", veil_s, 10.0, higher_is_better=False)
    verdict("inclusion proof median ms", inc_med, 5.0, higher_is_better=False)
    verdict("consistency proof median ms", con_med, 5.0, higher_is_better=False)
    print(f"naive MTH / veil root_hash time ratio: {naive_s / veil_s:.2f}x")
    return 0

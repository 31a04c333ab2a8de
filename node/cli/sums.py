"""`veil run`: run an approved job and print its result (``run sum``, ``run psi``, ``run query``)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from veil.node.cli._common import Commands, add_client_options, client_for, job_id, print_table
from veil.node.errors import InvalidInput


def cmd_run_sum(args: argparse.Namespace) -> int:
    """Ask the job's aggregator for one run, decrypt locally, print totals and receipts.
    ``--node`` may be any node of the job: the job itself says which node aggregates."""
    from veil.node import keys

    private = keys.load_private(Path(args.key))  # before any call: a run is charged
    with client_for(args) as first:
        job = first.job(job_id(first, args.job_id))
        here = first.node_name
    aggregator = job.params.get("aggregator")
    if job.kind != "sum" or not aggregator:
        raise InvalidInput(f"job {job.id} is a {job.kind} job, not a sum: run it with "
                           f"`veil run {job.kind}`")
    address = args.node if aggregator == here else next(
        (p.get("address") for p in job.parts if p["name"] == aggregator), None)
    if address is None:
        raise InvalidInput(f"job {job.id} gives no address for its aggregator {aggregator!r}")
    with client_for(args, address, node=aggregator) as client:
        result = client.run_sum(job.id, private)
    doc = result.to_json()
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return 0
    columns = list(result.totals)
    rows = [[g, *(doc["totals"][c][i] for c in columns), doc["counts"][i], doc["withheld"][i]]
            for i, g in enumerate(result.groups)]
    if args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["group", *columns, "rows", "withheld_by"])
        w.writerows(rows)
        return 0
    print_table(["group", *columns, "rows", "withheld by"],
                [[r[0], *(_number(v) for v in r[1:-2]), f"{r[-2]:,}", _nodes(r[-1])]
                 for r in rows])
    nodes = len(result.receipts)
    if job.dp is not None:
        from veil.node import dp
        from veil.node.jobs import spec_from_canonical

        print(f"{len(rows)} groups summed across {nodes} nodes (run {result.run_id}), every "
              "declared group, under differential privacy:")
        for line in dp.sum_noise_lines(spec_from_canonical(job.canonical)):
            print(f"  {line}")
    else:
        print(f"{len(rows)} groups summed across {nodes} nodes (run {result.run_id}); "
              "\"withheld by\" counts the nodes that did not contribute a group (fewer "
              "subjects than their minimum, or no rows), never which")
    print("receipts (verify with `veil audit prove`):")
    for r in result.receipts:
        print(f"  {r['node']}: log index {r['log_index']}, checkpoint {_checkpoint(r['checkpoint'])}")
    return 0


def cmd_run_psi(args: argparse.Namespace) -> int:
    """Ask the job's leader for one PSI run (a psi or intersection_sum job); print the count,
    an intersection sum's decrypted totals, the receivers' new datasets and both receipts.
    ``--node`` may be either node of the job: the job itself says which node leads."""
    from veil.node import keys
    from veil.node.jobs import PSI_KINDS, leader, spec_from_canonical

    with client_for(args) as first:
        job = first.job(job_id(first, args.job_id))
        here = first.node_name
    if job.kind not in PSI_KINDS:
        raise InvalidInput(f"job {job.id} is a {job.kind} job, not a PSI: run it with "
                           f"`veil run {job.kind}`")
    private = None
    if job.kind == "intersection_sum":
        if not args.key:
            raise InvalidInput(f"job {job.id} is an intersection sum: give your Paillier key "
                               "pair with --key DIR (the totals come back encrypted to it)")
        private = keys.load_private(Path(args.key))  # before the call: a run is charged
    lead = leader(spec_from_canonical(job.canonical))
    address = args.node if lead == here else next(
        (p.get("address") for p in job.parts if p["name"] == lead), None)
    if address is None:
        raise InvalidInput(f"job {job.id} gives no address for its leader {lead!r}")
    bar = _ItemsBar(f"psi {job.id[:12]}")
    with client_for(args, address, node=lead) as client:
        try:
            result = client.run_psi(job.id, private, progress=bar.update)
        finally:
            bar.end()
    doc = result.to_json()
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return 0
    a, b = result.set_size, result.peer_set_size
    print(f"intersection: {result.cardinality:,} distinct keys (sets of {a:,} and {b:,}; "
          f"run {result.run_id})")
    if result.kind == "intersection_sum":
        print_table(["column", "total over the intersection"],
                    [[c, _number(v)] for c, v in result.sums.items()])
    for d in result.datasets:
        print(f"new dataset at {d['node']}: {d['dataset']} version {d['version']} "
              f"({d['rows']:,} matching rows, sha256 {d['sha256'][:12]}, "
              f"log index {d['log_index']})")
    print("receipts (verify with `veil audit prove`):")
    for r in result.receipts:
        print(f"  {r['node']}: log index {r['log_index']}, checkpoint {_checkpoint(r['checkpoint'])}")
    return 0


class _ItemsBar:
    """Points blinded at the leader, of its run's total, with the rate: one rewritten line
    on a terminal (stderr), nothing when piped."""

    def __init__(self, label: str) -> None:
        import time

        self.label, self.clock = label, time.monotonic
        self.start = self.clock()
        self.shown = sys.stderr.isatty()
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        if not self.shown or not total:
            return
        rate = done / max(self.clock() - self.start, 1e-9)
        width = 30
        filled = min(width, width * done // total)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done:,}/{total:,} points ({rate:,.0f} items/s)   ")
        sys.stderr.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _number(v: Any) -> str:
    s = str(v)
    whole, dot, frac = s.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-') or 0):,}{dot}{frac}"


def _nodes(n: int) -> str:
    return "-" if n == 0 else f"{n} node{'s' if n > 1 else ''}"


def _checkpoint(note: str) -> str:
    lines = note.splitlines()
    return f"{lines[0]} size {lines[1]}" if len(lines) >= 2 else "(none)"


def register(c: Commands) -> None:
    from veil.node.cli.jobs import cmd_query

    g = c.group("run", "run an approved job once (charged to its quota) and print the result")
    p = c.command(g, "sum", cmd_run_sum,
                  "a federated sum: the aggregator returns encrypted totals; decrypted here")
    p.add_argument("job_id", metavar="JOB_ID")
    add_client_options(p)
    p.add_argument("--key", required=True, metavar="DIR",
                   help="your Paillier key pair (from `veil keys paillier`)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p = c.command(g, "psi", cmd_run_psi,
                  "a private set intersection (psi or intersection_sum job) between two nodes")
    p.add_argument("job_id", metavar="JOB_ID")
    add_client_options(p)
    p.add_argument("--key", metavar="DIR",
                   help="your Paillier key pair, for an intersection_sum job")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = c.command(g, "query", cmd_query, "a query job (the same as `veil query`)")
    p.add_argument("job_id", metavar="JOB_ID")
    add_client_options(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

"""`veil run`: run an approved job and print its result (``run sum``, ``run query``)."""

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
    print(f"{len(rows)} groups summed across {nodes} nodes (run {result.run_id}); "
          "\"withheld by\" counts the nodes that did not contribute a group (fewer subjects "
          "than their minimum, or no rows), never which")
    print("receipts (verify with `veil audit prove`):")
    for r in result.receipts:
        print(f"  {r['node']}: log index {r['log_index']}, checkpoint {_checkpoint(r['checkpoint'])}")
    return 0


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
    p = c.command(g, "query", cmd_query, "a query job (the same as `veil query`)")
    p.add_argument("job_id", metavar="JOB_ID")
    add_client_options(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

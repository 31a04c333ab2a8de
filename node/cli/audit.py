"""`veil` commands for auditing a node's log: verify, list, prove, reconcile, replay."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from veil.node.cli._common import EXIT_ERROR, IDENTITY_ENV, Commands, add_client_options, client_for, parse_time, print_table
from veil.node.errors import InvalidInput


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from veil.node import auditor

    source, client = _log_source(args)

    show = not args.quiet and (sys.stderr.isatty() or bool(os.environ.get("VEIL_PROGRESS")))

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\r  verified {done:,} / {total:,} entries", end="", file=sys.stderr, flush=True)

    try:
        report = auditor.verify(source, auditor.open_state(args.state), progress)
    finally:
        if client is not None:
            client.close()
    if show:
        print(file=sys.stderr)
    print(report.summary())
    print(report.checkpoint.to_text().rstrip("\n").replace("\n", "\n    ").join(("    ", "")))
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    from veil.node import auditor

    source, client = _log_source(args)
    flt = auditor.LogFilter(args.caller, args.job, args.method, parse_time(args.since, "--since"),
                            parse_time(args.until, "--until"), args.outcome)
    try:
        rows = list(auditor.read_entries(source, flt))
    finally:
        if client is not None:
            client.close()
    if args.format == "json":
        for index, record in rows:
            print(json.dumps({"index": index, **record}, sort_keys=True))
        return 0
    table = []
    for index, r in rows:
        caller = r.get("caller") or {}
        who = f"{caller.get('role')}:{caller.get('name')}" if caller else "-"
        what = r.get("method", "").rsplit("/", 1)[-1] if r.get("kind") == "call" else r.get("event")
        meters = ",".join(f"{k}={v}" for k, v in sorted((r.get("meters") or {}).items()) if v)
        table.append((index, r.get("t", "")[:23], who, what, (r.get("job") or "-")[:12],
                      r.get("status", "event"), meters))
    print_table(("index", "time", "caller", "method/event", "job", "outcome", "meters"), table)
    print(f"{len(rows)} entries")
    return 0


def cmd_audit_prove(args: argparse.Namespace) -> int:
    from veil.node import auditor

    try:
        receipt = json.loads(Path(args.receipt).read_text())
        index, note = int(receipt["log_index"]), str(receipt["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{args.receipt} is not a receipt file: {exc}") from None
    with client_for(args) as client:
        proven = auditor.prove(client, index, note)
    e = proven.entry
    print(
        f"entry {proven.index} is in {proven.checkpoint.origin}'s log of size "
        f"{proven.checkpoint.size} (root {proven.checkpoint.root_hash.hex()[:16]}…): inclusion "
        "proof and checkpoint signature verified"
    )
    print(f"  {e.get('t')} {e.get('method') or e.get('event')} -> {e.get('status', 'event')}")
    return 0


def cmd_audit_reconcile(args: argparse.Namespace) -> int:
    from veil.node import auditor

    try:
        statement = json.loads(Path(args.statement).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read statement {args.statement}: {exc}") from None
    with client_for(args) as client:
        result = auditor.reconcile(client, statement)
    print(result)
    return 0


def cmd_audit_replay(args: argparse.Namespace) -> int:
    from veil.node import kinds

    node_dir = args.node_dir or args.node_dir_option
    if not node_dir:
        raise InvalidInput("name the node directory to replay: `veil audit replay NODEDIR`")
    results = kinds.replay(Path(node_dir), args.start)
    bad = [r for r in results if not r.ok]
    for r in results:
        mark = "ok      " if r.ok else "MISMATCH"
        print(f"{mark} entry {r.index} job {r.job[:12]} logged {r.logged[:16]} "
              f"replayed {r.replayed[:16]}")
    print(f"{len(results)} compute calls replayed, {len(bad)} mismatched")
    return EXIT_ERROR if bad else 0


def _add_log_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("node_dir", nargs="?", metavar="NODEDIR", help="audit this node directory offline")
    p.add_argument("--node", metavar="HOST:PORT", help="audit this node over the network")
    p.add_argument("--identity", metavar="DIR", help=f"auditor identity (default: ${IDENTITY_ENV})")


def _log_source(args: argparse.Namespace) -> tuple[Any, Any]:
    """(source, client-or-None) from either NODEDIR or --node."""
    from veil.node import auditor

    if bool(args.node_dir) == bool(args.node):
        raise InvalidInput("give either NODEDIR (offline) or --node HOST:PORT (remote), not both")
    if args.node_dir:
        return auditor.LocalLog(Path(args.node_dir)), None
    client = client_for(args)
    return auditor.RemoteLog(client), client



def register(c: Commands) -> None:
    g = c.group("audit", "verify a node's log, list entries, prove receipts, replay runs")
    p = c.command(g, "verify", cmd_audit_verify,
                  "verify a node's whole log (remote with --node, offline with NODEDIR)")
    _add_log_source(p)
    p.add_argument("--state", metavar="DIR",
                   help="auditor state: what was verified last time (default ~/.veil/auditor)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p = c.command(g, "log", cmd_audit_log, "list log entries, filtered")
    _add_log_source(p)
    p.add_argument("--caller", help="caller name")
    p.add_argument("--job", help="job id")
    p.add_argument("--method", help="substring of the method or event name")
    p.add_argument("--since", metavar="TIME", help="RFC 3339 time, inclusive")
    p.add_argument("--until", metavar="TIME", help="RFC 3339 time, exclusive")
    p.add_argument("--outcome", help="status: OK, PERMISSION_DENIED, …")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = c.command(g, "prove", cmd_audit_prove,
                  "fetch and verify the inclusion proof of a call's receipt")
    p.add_argument("receipt", metavar="RECEIPT", help="a receipt file (--receipt-out)")
    add_client_options(p)
    p = c.command(g, "reconcile", cmd_audit_reconcile,
                  "check a usage statement line by line against the verified log")
    p.add_argument("statement", metavar="STATEMENT.json", help="from `veil usage --out`")
    add_client_options(p)
    p = c.command(g, "replay", cmd_audit_replay,
                  "re-run logged query and sum calls on their exact dataset versions; compare")
    p.add_argument("node_dir", nargs="?", metavar="NODEDIR", help="the node directory")
    p.add_argument("--node-dir", dest="node_dir_option", help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--from", dest="start", type=int, default=0, metavar="INDEX",
                   help="replay from this log index on")

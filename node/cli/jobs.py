"""`veil` commands for jobs: submit, list, show, approve, reject, revoke; query runs; usage."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from veil.node.cli._common import EXIT_ERROR, IDENTITY_ENV, Commands, add_client_options, client_for, fmt, identity, job_id, parse_time, print_table
from veil.node.errors import InvalidInput, VeilError


def cmd_job_submit(args: argparse.Namespace) -> int:
    """Sign once (the same job id everywhere) and submit to every node: the ones given with
    --node, else each node the job names at the address it gives (certificates checked)."""
    from veil.node import pki
    from veil.node.client import Client, sign_job_text, submit_everywhere

    job_file = Path(args.job)
    try:
        text = job_file.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read job file {args.job}: {exc.strerror}") from None
    local = pki.load_identity(identity(args))
    answers: dict[str, Any] = {}
    if args.node:
        signed = sign_job_text(text, local, base_dir=job_file.parent)
        for address in args.node:
            try:
                with Client(address, local) as client:
                    answers[address] = client.submit_signed(signed)
            except VeilError as exc:
                answers[address] = exc
    else:
        answers = submit_everywhere(text, local, base_dir=job_file.parent)
    refused = 0
    for where, job in answers.items():
        if isinstance(job, VeilError):
            refused += 1
            print(f"{where}: refused: {job}", file=sys.stderr)
        else:
            print(f"{where}: job {job.id} {job.state}; needs {', '.join(job.required_roles)}")
            for line in job.estimate.get("lines", []):
                if line.startswith("warning:"):  # the dry run found a problem: say so now
                    print(f"  {line}", file=sys.stderr)
    if refused:
        print(f"veil: error: {refused} of {len(answers)} nodes refused the job; it runs only "
              "once every node it names has approved it", file=sys.stderr)
        return EXIT_ERROR
    return 0


_PAST = {"approve": "approved", "reject": "rejected", "withdraw": "withdrew"}


def _show_job(job: Any, address: str) -> None:
    print(f"job {job.id} at {address}: {job.state}")
    print(f"  analyst {job.analyst}, kind {job.kind}, expires {job.expires}")
    print(f"  purpose: {job.purpose}")
    for part in job.parts:
        print(f"  node {part['name']}: dataset {part['dataset']}, columns "
              f"{', '.join(part['columns'])}")
    for name, value in sorted(job.params.items()):
        if name == "sql":
            print("  sql (exactly as signed and as it will run):")
            print("\n".join("    " + line for line in value.splitlines()))
        elif name == "paillier_n":  # 600+ digits: show what identifies the key
            n = int(value)
            digest = hashlib.sha256(str(n).encode()).hexdigest()[:16]
            print(f"  paillier key: {n.bit_length()} bits, sha256 of n {digest}… (the analyst's; "
                  "totals are encrypted to it)")
        else:
            print(f"  {name}: {value}")
    approvals = ", ".join(f"{a['role']} {a['approver']} {_PAST.get(a['decision'], a['decision'])}"
                          for a in job.approvals)
    print(f"  approvals: {approvals or 'none'}; missing: {', '.join(job.missing_roles) or 'none'}")
    if job.revoked_reason:
        print(f"  revoked: {job.revoked_reason}")
    quota = ", ".join(
        f"{k} {job.used.get(k, 0)}/{v if v else 'unlimited'}" for k, v in job.quota.items()
    )
    print(f"  quota used/granted: {quota}")
    for line in job.estimate.get("lines", []):
        print(f"  estimate: {line}")


def cmd_job_list(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        jobs = client.jobs(analyst=args.analyst or "", state=args.state or "")
    rows = [(j.id, j.analyst, j.kind, j.state, ",".join(j.missing_roles) or "-",
             f"{j.used.get('runs', 0)}/{j.quota.get('runs') or '∞'}") for j in jobs]
    print_table(("job", "analyst", "kind", "state", "missing", "runs"), rows)
    return 0


def cmd_job_show(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        job = client.job(job_id(client, args.job_id))
        _show_job(job, args.node)
        here = client.node_name
    others = [p for p in job.parts if p["name"] != here and p.get("address")]
    if others:  # a multi-node job runs only once every node has approved its own part
        from veil.node.client import Client

        print("  at the job's other nodes:")
        for part in others:
            try:
                with Client(part["address"], identity(args), node=part["name"]) as c:
                    there = c.job(job.id)
                missing = ", ".join(there.missing_roles) or "none"
                print(f"    {part['name']} ({part['address']}): {there.state}; missing: {missing}")
            except VeilError as exc:
                print(f"    {part['name']} ({part['address']}): unknown: {exc}")
    return 0


def cmd_job_approve(args: argparse.Namespace) -> int:
    quota = {k: v for k, v in (("runs", args.runs), ("rows_scanned", args.rows_scanned),
                               ("items", args.items)) if v is not None}
    with client_for(args) as client:
        # what is approved is shown first, from the signed bytes: the decision binds its id
        full = job_id(client, args.job_id)
        _show_job(client.job(full), args.node)
        job = client.approve(full, quota=quota or None, reason=args.reason or "")
    print(f"your approval of job {job.id} is recorded; the job is {job.state}"
          f" (missing: {', '.join(job.missing_roles) or 'none'})")
    return 0


def cmd_job_reject(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        job = client.reject(job_id(client, args.job_id), args.reason)
    _show_job(job, args.node)
    return 0


def cmd_job_revoke(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        job = client.revoke(job_id(client, args.job_id), args.reason)
    _show_job(job, args.node)
    return 0


def _figure(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _spent(dp: dict[str, str] | None) -> str:
    if not dp:
        return ""
    return f"{'ε' if dp['measure'] == 'epsilon' else 'ρ'} {dp['spent']} on {dp['dataset']}"


def cmd_usage(args: argparse.Namespace) -> int:
    args.start, args.end = parse_time(args.start, "--since"), parse_time(args.end, "--until")
    with client_for(args) as client:
        st = client.statement(args.analyst or "", args.start or "", args.end or "")
    if args.format == "json":
        print(json.dumps({**st.to_json(), "from": args.start or "", "to": args.end or ""},
                         indent=2))
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["log_index", "time", "job", "method", "runs", "rows_scanned", "result_rows",
                    "items", "ciphertexts", "cpu_ms", "bytes_out", "amount", "currency",
                    "dp_measure", "dp_spent"])
        for line in st.lines:
            m = line["meters"]
            w.writerow([line["log_index"], line["time"], line["job"], line["method"], m["runs"],
                        m["rows_scanned"], m["result_rows"], m["items"], m["ciphertexts"],
                        m["cpu_ms"], m["bytes_out"], line["amount"], st.currency,
                        line.get("dp", {}).get("measure", ""), line.get("dp", {}).get("spent", "")])
    else:
        print(f"usage statement: analyst {st.analyst} at node {st.node}")
        print_table(
            ("log index", "time", "job", "method", "rows scanned", "amount", "privacy spent"),
            [(line["log_index"], line["time"][:19], line["job"][:12],
              line["method"].rsplit("/", 1)[-1], line["meters"]["rows_scanned"],
              f"{line['amount']} {st.currency}", _spent(line.get("dp"))) for line in st.lines],
        )
        print(f"total: {st.total} {st.currency} for {len(st.lines)} charged calls")
        if st.budgets:
            print(f"differential-privacy budgets of {st.analyst} at {st.node}, now:")
            print_table(
                ("dataset", "measure", "spent", "left", "of", "per run at most", "renews"),
                [(b["dataset"], b["measure"], b["spent"], b["remaining"], b["total"],
                  b["max_per_run"], b["period_end"] or "never") for b in st.budgets],
            )
    if args.out:
        doc = {**st.to_json(), "from": args.start or "", "to": args.end or ""}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        result = client.query(job_id(client, args.job_id))
        receipt = client.last_receipt
    rows = result.records()
    if args.format == "json":
        print(json.dumps({
            "columns": list(result.columns), "rows": [list(r) for r in rows],
            "suppressed_groups": result.suppressed_groups, "meters": result.meters,
            "result_sha256": result.result_sha256,
            "log_index": receipt.log_index if receipt else None,
            **({"dp": list(result.dp), "budget": result.budget} if result.dp else {}),
        }, indent=2, default=str))
        return 0
    if args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(result.columns)
        w.writerows(rows)
        return 0
    print_table(result.columns, [[fmt(v) for v in r] for r in rows])
    at = f"; log index {receipt.log_index}" if receipt else ""
    if not result.dp:
        print(f"{len(rows)} groups; {result.suppressed_groups} suppressed (fewer subjects than "
              f"the node's minimum group size); {result.meters['rows_scanned']:,} rows "
              f"scanned{at}")
        return 0
    print(f"{len(rows)} groups, every declared category, each with differentially private "
          f"noise; {result.meters['rows_scanned']:,} rows scanned{at}")
    print_table(("measurement", "columns", "mechanism", "spent", "noise scale", "±95%"),
                [(d["measurement"], ", ".join(d["columns"]), d["mechanism"],
                  f"{'ε' if d['measure'] == 'epsilon' else 'ρ'} = {d['spent']}",
                  _figure(d["scale"]), _figure(d["ci95"])) for d in result.dp])
    b = result.budget
    if b:
        unit = "ε" if b["measure"] == "epsilon" else "ρ"
        until = f", until {b['period_end']}" if b["period_end"] else ", never renewed"
        print(f"budget on {b['dataset']}: {unit} = {b['remaining']} left of {b['total']}{until}")
    return 0



def register(c: Commands) -> None:
    p = c.command(None, "query", cmd_query, "run an approved query job; prints aggregates only")
    p.add_argument("job_id", metavar="JOB_ID")
    add_client_options(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    g = c.group("job", "submit, approve and manage jobs")
    p = c.command(g, "submit", cmd_job_submit, "sign a job spec and submit it to its nodes")
    p.add_argument("job", metavar="JOB.toml")
    p.add_argument("--node", action="append", metavar="HOST:PORT",
                   help="a node the job names (repeat for each; default: every node at the "
                   "address the job gives)")
    p.add_argument("--identity", metavar="DIR", help=f"analyst identity (default: ${IDENTITY_ENV})")
    p = c.command(g, "list", cmd_job_list, "list jobs with status, missing approvals, quota")
    add_client_options(p)
    p.add_argument("--analyst")
    p.add_argument("--state", choices=("pending", "approved", "rejected", "revoked", "expired"))
    for name, fn, text in (("show", cmd_job_show, "a job with its dry-run estimate"),
                           ("approve", cmd_job_approve, "sign and send an approval"),
                           ("reject", cmd_job_reject, "sign and send a rejection"),
                           ("revoke", cmd_job_revoke, "stop a job's grant at once (operator)"),
                           ("withdraw", cmd_job_revoke, "withdraw the data subjects' consent: "
                            "stops the job at once (subjects' representative)")):
        p = c.command(g, name, fn, text)
        p.add_argument("job_id", metavar="JOB_ID")
        add_client_options(p)
        if name == "approve":
            p.add_argument("--runs", type=int, help="narrow the quota: runs")
            p.add_argument("--rows-scanned", type=int, help="narrow the quota: rows scanned")
            p.add_argument("--items", type=int, help="narrow the quota: items")
            p.add_argument("--reason", help="a note for the analyst")
        elif name in ("reject", "revoke", "withdraw"):
            p.add_argument("--reason", required=True)

    p = c.command(None, "usage", cmd_usage,
                  "a priced usage statement; each line cites its log index")
    add_client_options(p)
    p.add_argument("--analyst", help="whose (analysts: their own)")
    p.add_argument("--since", "--from", dest="start", metavar="TIME",
                   help="RFC 3339 time, inclusive")
    p.add_argument("--until", "--to", dest="end", metavar="TIME", help="RFC 3339 time, exclusive")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--out", metavar="FILE", help="also write the statement as JSON here")

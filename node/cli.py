"""The `veil` command line: one entry point for data holders, analysts and auditors.

Every command is a thin shell over the library (`node.client`, `node.home`,
`node.catalog`, `node.auditor`); every error a user can cause is a VeilError, printed
as one line on stderr with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veil.node.errors import InvalidInput, VeilError

EXIT_ERROR = 1
IDENTITY_ENV = "VEIL_IDENTITY"


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _identity(args: argparse.Namespace) -> Path:
    value = args.identity or os.environ.get(IDENTITY_ENV)
    if not value:
        raise InvalidInput(
            f"no identity: pass --identity DIR (made by `veil pki issue`) or set {IDENTITY_ENV}"
        )
    return Path(value).expanduser()


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from veil.node.client import Client

    return Client(args.node, _identity(args))


def _write_receipt(args: argparse.Namespace, client: Any) -> None:
    path = getattr(args, "receipt_out", None)
    if path and client.last_receipt is not None:
        Path(path).write_text(json.dumps(client.last_receipt.to_json(), indent=2) + "\n")


# -- pki ---------------------------------------------------------------------------


def cmd_pki_init(args: argparse.Namespace) -> int:
    from veil.node import pki

    fed = pki.init_federation(Path(args.dir), args.federation)
    print(f"federation {fed.name!r} created in {fed.directory}")
    print(f"  CA certificate: {fed.ca_cert}  (fingerprint {fed.fingerprint[:16]}…)")
    print("  keep ca.key offline; issue identities with `veil pki issue`")
    return 0


def cmd_pki_issue(args: argparse.Namespace) -> int:
    from veil.node import pki

    issued = pki.issue(
        Path(args.dir), args.role, args.name, Path(args.out), hosts=tuple(args.host), days=args.days
    )
    print(f"issued {issued.role} {issued.name!r} (serial {issued.serial:#x}) into {issued.directory}")
    print(f"  valid until {issued.not_after:%Y-%m-%d}; private keys are readable by the owner only")
    return 0


def cmd_pki_revoke(args: argparse.Namespace) -> int:
    from veil.node import pki

    if (args.name is None) == (args.serial is None):
        raise InvalidInput("name the certificate to revoke: --name NAME or --serial SERIAL")
    serial = pki.revoke(Path(args.dir), name=args.name, serial=args.serial, role=args.role,
                        reason=args.reason)
    print(f"revoked serial {serial:#x}; nodes pick up {Path(args.dir) / 'crl.pem'} on its change")
    return 0


def cmd_pki_check(args: argparse.Namespace) -> int:
    from veil.node import pki

    legacy = pki.legacy_certificates(Path(args.dir))
    if not legacy:
        print(f"{args.dir}: every valid certificate uses OIDs that Go and other TLS stacks parse")
        return 0
    print(f"{args.dir}: {len(legacy)} certificate(s) carry the legacy signing-key OID "
          f"{pki.LEGACY_SIGNING_KEY_OID.dotted_string}, which Go's crypto/x509 refuses:")
    for c in legacy:
        subject = c.subject.rfc4514_string()
        print(f"  serial {c.serial_number:#x}  {subject}")
    print("veil nodes still accept them; reissue each with `veil pki issue DIR --role R --name N "
          "--out NEWDIR`, install it, then revoke the old one by its serial: "
          "`veil pki revoke DIR --serial SERIAL`.")
    return 1


# -- node --------------------------------------------------------------------------


def cmd_node_init(args: argparse.Namespace) -> int:
    from veil.node.home import init_node

    home = init_node(
        Path(args.node_dir),
        args.name,
        identity_dir=Path(args.identity) if args.identity else None,
        federation_dir=Path(args.federation) if args.federation else None,
        listen=args.listen,
        hosts=tuple(args.host),
    )
    print(f"node {args.name!r} initialized in {home.path}")
    print(f"  edit {home.config_path} for policy and tariff, then `veil node serve {home.path}`")
    return 0


def cmd_node_serve(args: argparse.Namespace) -> int:
    from veil.node.server import serve

    if args.detach:
        return _serve_detached(Path(args.node_dir), args.listen)
    serve(Path(args.node_dir), args.listen)
    return 0


def _serve_detached(node_dir: Path, listen: str | None) -> int:
    """Start `veil node serve` in the background; return once it listens (or failed)."""
    import subprocess
    import time

    from veil.node.home import NodeHome

    home = NodeHome(node_dir)
    home.check()
    pid_file, log_file = node_dir / "serve.pid", node_dir / "serve.log"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise InvalidInput(f"node in {node_dir} already runs as pid {pid_file.read_text().strip()}")
    cmd = [sys.executable, "-m", "veil.node.cli", "node", "serve", str(node_dir)]
    if listen:
        cmd += ["--listen", listen]
    with log_file.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_file.read_text()
        if "listening on" in text:
            pid_file.write_text(f"{proc.pid}\n")
            print(text.strip().splitlines()[0])
            print(f"  pid {proc.pid}; output in {log_file}; stop with `veil node stop {node_dir}`")
            return 0
        if proc.poll() is not None:
            print(text.strip(), file=sys.stderr)
            return EXIT_ERROR
        time.sleep(0.05)
    proc.terminate()
    raise InvalidInput(f"node did not start listening within 30 s; see {log_file}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def cmd_node_stop(args: argparse.Namespace) -> int:
    import signal
    import time

    pid_file = Path(args.node_dir) / "serve.pid"
    if not pid_file.exists():
        raise InvalidInput(f"no detached node runs from {args.node_dir} (no serve.pid)")
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    pid_file.unlink()
    print(f"node in {args.node_dir} stopped")
    return 0


# -- dataset -----------------------------------------------------------------------


def cmd_dataset_add(args: argparse.Namespace) -> int:
    from veil.node import catalog
    from veil.node.home import NodeHome

    home = NodeHome(Path(args.node_dir))
    home.check()
    levels = catalog.parse_levels(args.level)
    conn = home.connect()
    log = home.open_log()
    try:
        reg = catalog.register(
            conn, log, home.identity, home.snapshots,
            node=home.config.name, name=args.name, source=Path(args.file),
            key_column=args.key, levels=levels, declassify=tuple(args.declassify),
            types=_pairs(args.type, "--type"),
        )
    finally:
        log.close()
        conn.close()
    ds = reg.dataset
    if reg.created:
        print(f"registered {ds.name} version {ds.version}: {ds.rows:,} rows, sha256 {ds.sha256}")
    else:
        print(
            f"identical content already registered as {ds.name} version {ds.version} "
            f"(sha256 {ds.sha256}); nothing added"
        )
    _print_table(("column", "type", "level"), [(c.name, c.type, c.level) for c in ds.columns])
    for ch in reg.changes:
        what = "DECLASSIFIED" if ch.lowers else "raised"
        print(f"  level of {ch.column}: {ch.old} -> {ch.new} ({what}, from version {ds.version - 1})")
    for column in reg.numeric_looking:
        print(f"  warning: column {column} was typed VARCHAR but most of its values are numbers;"
              f" if it is numeric, re-add with --type {column}=DOUBLE (or DECIMAL(P,S), BIGINT)",
              file=sys.stderr)
    receipt = _receipt_json(ds, home.identity.read_tls_cert().decode())
    if args.receipt_out:
        Path(args.receipt_out).write_text(json.dumps(receipt, indent=2) + "\n")
        print(f"receipt written to {args.receipt_out} (log index {ds.log_index})")
    return 0


def _pairs(specs: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        column, sep, value = spec.partition("=")
        if not sep or not column or not value:
            raise InvalidInput(f"{flag} takes COLUMN=VALUE, got {spec!r}")
        out[column] = value
    return out


def _receipt_json(ds: Any, cert_pem: str) -> dict[str, Any]:
    return {
        "body": base64.b64encode(ds.receipt).decode(),
        "signature": base64.b64encode(ds.signature).decode(),
        "certificate": cert_pem,
    }


def cmd_dataset_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        pairs = client.dataset_receipts()
        _write_receipt(args, client)
    if args.format == "json":
        out = [
            {
                "name": ds.name,
                "version": ds.version,
                "sha256": ds.sha256,
                "rows": ds.rows,
                "key_column": ds.key_column,
                "registered_at": ds.registered_at,
                "columns": [{"name": c.name, "type": c.type, "level": c.level} for c in ds.columns],
                "receipt": _receipt_json(ds, pem),
            }
            for ds, pem in pairs
        ]
        print(json.dumps(out, indent=2))
        return 0
    if not pairs:
        print("no datasets registered")
    for ds, _ in pairs:
        print(f"{ds.name} v{ds.version}  {ds.rows:,} rows  key={ds.key_column}  "
              f"sha256={ds.sha256[:16]}…  registered {ds.registered_at}")
        _print_table(
            ("  column", "type", "level"), [("  " + c.name, c.type, c.level) for c in ds.columns]
        )
    return 0


def cmd_dataset_verify(args: argparse.Namespace) -> int:
    from veil.node import catalog, pki

    try:
        receipt = json.loads(Path(args.receipt).read_text())
        body = base64.b64decode(receipt["body"], validate=True)
        signature = base64.b64decode(receipt["signature"], validate=True)
        cert_pem = receipt["certificate"].encode()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{args.receipt} is not a Veil receipt file: {exc}") from None
    trust = pki.TrustStore.load(Path(args.ca))
    signer = trust.identify(cert_pem)
    if signer.role != "node":
        raise InvalidInput(f"receipt is signed by a {signer.role!r}, not a node")
    parsed = catalog.verify_receipt(body, signature, signer.signing_key)
    print(
        f"valid receipt: node {signer.name!r} registered {parsed['dataset']} "
        f"version {parsed['version']} ({parsed['rows']:,} rows) at {parsed['registered_at']}"
    )
    print(f"  snapshot sha256 {parsed['sha256']}")
    return 0


# -- audit -------------------------------------------------------------------------


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
    flt = auditor.LogFilter(args.caller, args.job, args.method, _time(args.since, "--since"),
                            _time(args.until, "--until"), args.outcome)
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
    _print_table(("index", "time", "caller", "method/event", "job", "outcome", "meters"), table)
    print(f"{len(rows)} entries")
    return 0


def cmd_audit_prove(args: argparse.Namespace) -> int:
    from veil.node import auditor

    try:
        receipt = json.loads(Path(args.receipt).read_text())
        index, note = int(receipt["log_index"]), str(receipt["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{args.receipt} is not a receipt file: {exc}") from None
    with _client(args) as client:
        proven = auditor.prove(client, index, note)
    e = proven.entry
    print(
        f"entry {proven.index} is in {proven.checkpoint.origin}'s log of size "
        f"{proven.checkpoint.size} (root {proven.checkpoint.root_hash.hex()[:16]}…): inclusion "
        "proof and checkpoint signature verified"
    )
    print(f"  {e.get('t')} {e.get('method') or e.get('event')} -> {e.get('status', 'event')}")
    return 0


# -- jobs --------------------------------------------------------------------------


def cmd_job_submit(args: argparse.Namespace) -> int:
    from veil.node.client import Client, sign_job_text

    try:
        text = Path(args.job).read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read job file {args.job}: {exc.strerror}") from None
    ident = _identity(args)
    from veil.node import pki

    local = pki.load_identity(ident)
    signed = sign_job_text(text, local)  # one signature, the same job id at every node
    for address in args.node:
        with Client(address, local) as client:
            job = client.submit_signed(signed)
        print(f"{address}: job {job.id} {job.state}; needs {', '.join(job.required_roles)}")
    return 0


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
        else:
            print(f"  {name}: {value}")
    approvals = ", ".join(f"{a['role']} {a['approver']} {a['decision']}d" for a in job.approvals)
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
    with _client(args) as client:
        jobs = client.jobs(analyst=args.analyst or "", state=args.state or "")
    rows = [(j.id, j.analyst, j.kind, j.state, ",".join(j.missing_roles) or "-",
             f"{j.used.get('runs', 0)}/{j.quota.get('runs') or '∞'}") for j in jobs]
    _print_table(("job", "analyst", "kind", "state", "missing", "runs"), rows)
    return 0


def cmd_job_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show_job(client.job(args.job_id), args.node)
    return 0


def cmd_job_approve(args: argparse.Namespace) -> int:
    quota = {k: v for k, v in (("runs", args.runs), ("rows_scanned", args.rows_scanned),
                               ("items", args.items)) if v is not None}
    with _client(args) as client:
        # what is approved is shown first, from the signed bytes: the decision binds its id
        _show_job(client.job(args.job_id), args.node)
        job = client.approve(args.job_id, quota=quota or None, reason=args.reason or "")
    print(f"your approval of job {job.id} is recorded; the job is {job.state}"
          f" (missing: {', '.join(job.missing_roles) or 'none'})")
    return 0


def cmd_job_reject(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.reject(args.job_id, args.reason)
    _show_job(job, args.node)
    return 0


def cmd_job_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.revoke(args.job_id, args.reason)
    _show_job(job, args.node)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    args.start, args.end = _time(args.start, "--from"), _time(args.end, "--to")
    with _client(args) as client:
        st = client.statement(args.analyst or "", args.start or "", args.end or "")
    if args.format == "json":
        print(json.dumps({**st.to_json(), "from": args.start or "", "to": args.end or ""},
                         indent=2))
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["log_index", "time", "job", "method", "runs", "rows_scanned", "result_rows",
                    "items", "ciphertexts", "cpu_ms", "bytes_out", "amount", "currency"])
        for line in st.lines:
            m = line["meters"]
            w.writerow([line["log_index"], line["time"], line["job"], line["method"], m["runs"],
                        m["rows_scanned"], m["result_rows"], m["items"], m["ciphertexts"],
                        m["cpu_ms"], m["bytes_out"], line["amount"], st.currency])
    else:
        print(f"usage statement: analyst {st.analyst} at node {st.node}")
        _print_table(
            ("log index", "time", "job", "method", "rows scanned", "amount"),
            [(line["log_index"], line["time"][:19], line["job"][:12],
              line["method"].rsplit("/", 1)[-1], line["meters"]["rows_scanned"],
              f"{line['amount']} {st.currency}") for line in st.lines],
        )
        print(f"total: {st.total} {st.currency} for {len(st.lines)} charged calls")
    if args.out:
        doc = {**st.to_json(), "from": args.start or "", "to": args.end or ""}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.query(args.job_id)
        _write_receipt(args, client)
        receipt = client.last_receipt
    rows = result.records()
    if args.format == "json":
        print(json.dumps({
            "columns": list(result.columns), "rows": [list(r) for r in rows],
            "suppressed_groups": result.suppressed_groups, "meters": result.meters,
            "result_sha256": result.result_sha256,
            "log_index": receipt.log_index if receipt else None,
        }, indent=2, default=str))
        return 0
    if args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(result.columns)
        w.writerows(rows)
        return 0
    _print_table(result.columns, [[_fmt(v) for v in r] for r in rows])
    print(f"{len(rows)} groups; {result.suppressed_groups} suppressed (fewer subjects than the "
          f"node's minimum group size); {result.meters['rows_scanned']:,} rows scanned"
          + (f"; log index {receipt.log_index}" if receipt else ""))
    return 0


def _time(value: str | None, flag: str) -> str | None:
    from veil.node.log import parse_user_time

    return parse_user_time(value, flag) if value else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".")
    return "NULL" if v is None else str(v)


def cmd_audit_replay(args: argparse.Namespace) -> int:
    from veil.node import kinds

    results = kinds.replay(Path(args.node_dir), args.start)
    bad = [r for r in results if not r.ok]
    for r in results:
        mark = "ok      " if r.ok else "MISMATCH"
        print(f"{mark} entry {r.index} job {r.job[:12]} logged {r.logged[:16]} "
              f"replayed {r.replayed[:16]}")
    print(f"{len(results)} query calls replayed, {len(bad)} mismatched")
    return EXIT_ERROR if bad else 0


def cmd_audit_reconcile(args: argparse.Namespace) -> int:
    from veil.node import auditor

    try:
        statement = json.loads(Path(args.statement).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read statement {args.statement}: {exc}") from None
    with _client(args) as client:
        result = auditor.reconcile(client, statement)
    print(result)
    return 0


# -- parser ------------------------------------------------------------------------


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, metavar="HOST:PORT", help="the node to call")
    p.add_argument(
        "--identity", metavar="DIR", help=f"your identity directory (default: ${IDENTITY_ENV})"
    )
    p.add_argument("--receipt-out", metavar="FILE", help="write the call's log receipt here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veil",
        description="Veil: a privacy-preserving computation node. Data stays local; "
        "approved jobs get aggregates, never rows; every call is logged.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def group(name: str, help_: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        g = sub.add_parser(name, help=help_, description=help_)
        return g.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    def command(
        g: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help_: str,
    ) -> argparse.ArgumentParser:
        p = g.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        return p

    pki_ = group("pki", "federation PKI: CA, identities, revocation")
    p = command(pki_, "init", cmd_pki_init, "create a federation CA in DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--federation", required=True, metavar="NAME")
    p = command(pki_, "issue", cmd_pki_issue, "issue a key and certificate for one identity")
    p.add_argument("dir", metavar="DIR", help="the federation directory")
    p.add_argument("--role", required=True,
                   help="node, analyst, auditor, approver, operator or subject-representative")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, metavar="OUTDIR")
    p.add_argument("--host", action="append", default=[], help="extra DNS name or IP (nodes)")
    p.add_argument("--days", type=int, default=365)
    p = command(pki_, "revoke", cmd_pki_revoke, "add a certificate to the federation's CRL")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--name")
    p.add_argument("--serial", type=lambda v: int(v, 0), metavar="SERIAL",
                   help="the certificate's serial, e.g. 0x1f… (as `veil pki check` prints it)")
    p.add_argument("--role")
    p.add_argument("--reason", default="unspecified")
    p = command(pki_, "check", cmd_pki_check, "list certificates other TLS stacks cannot parse")
    p.add_argument("dir", metavar="DIR", help="the federation directory")

    node_ = group("node", "run a node: init, serve")
    p = command(node_, "init", cmd_node_init, "create a node directory")
    p.add_argument("node_dir", metavar="NODEDIR")
    p.add_argument("--name", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--identity", metavar="DIR", help="a node identity from `veil pki issue`")
    src.add_argument("--federation", metavar="DIR", help="issue the node identity from this CA")
    p.add_argument("--listen", default="127.0.0.1:7400", metavar="HOST:PORT")
    p.add_argument("--host", action="append", default=[], help="extra DNS name or IP")
    p = command(node_, "serve", cmd_node_serve, "serve the node over gRPC with mTLS")
    p.add_argument("node_dir", metavar="NODEDIR")
    p.add_argument("--listen", metavar="HOST:PORT", help="override node.toml (port 0: any free)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background; return once listening (stop: `veil node stop`)")
    p = command(node_, "stop", cmd_node_stop, "stop a node started with --detach (SIGTERM)")
    p.add_argument("node_dir", metavar="NODEDIR")

    ds_ = group("dataset", "register, list and verify datasets")
    p = command(ds_, "add", cmd_dataset_add, "register a CSV or Parquet file as a new version")
    p.add_argument("node_dir", metavar="NODEDIR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--key", required=True, metavar="COLUMN", help="the data subject key column")
    p.add_argument("--level", action="append", default=[], metavar="COLUMN=LEVEL",
                   help="public, internal, sensitive or core (default: the previous version's "
                   "level, else sensitive)")
    p.add_argument("--type", action="append", default=[], metavar="COLUMN=TYPE",
                   help="force a CSV column's type (BIGINT, DOUBLE, DECIMAL(P,S), VARCHAR, ...)")
    p.add_argument("--declassify", action="append", default=[], metavar="COLUMN",
                   help="allow --level to lower COLUMN's level (logged as a declassification)")
    p.add_argument("--receipt-out", metavar="FILE", help="write the signed receipt here")
    p = command(ds_, "list", cmd_dataset_list, "show a node's catalog (no values)")
    _add_client_options(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = command(ds_, "verify", cmd_dataset_verify, "verify a registration receipt")
    p.add_argument("receipt", metavar="RECEIPT")
    p.add_argument("--ca", required=True, metavar="CA.crt", help="the federation CA certificate")

    audit_ = group("audit", "verify a node's log, list entries, prove receipts")
    p = command(audit_, "verify", cmd_audit_verify,
                "verify a node's whole log (remote with --node, offline with NODEDIR)")
    _add_log_source(p)
    p.add_argument("--state", metavar="DIR",
                   help="auditor state: what was verified last time (default ~/.veil/auditor)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p = command(audit_, "log", cmd_audit_log, "list log entries, filtered")
    _add_log_source(p)
    p.add_argument("--caller", help="caller name")
    p.add_argument("--job", help="job id")
    p.add_argument("--method", help="substring of the method or event name")
    p.add_argument("--since", metavar="TIME", help="RFC 3339 time, inclusive")
    p.add_argument("--until", metavar="TIME", help="RFC 3339 time, exclusive")
    p.add_argument("--outcome", help="status: OK, PERMISSION_DENIED, …")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = command(audit_, "prove", cmd_audit_prove,
                "fetch and verify the inclusion proof of a call's receipt")
    p.add_argument("receipt", metavar="RECEIPT", help="a receipt file (--receipt-out)")
    _add_client_options(p)
    p = command(audit_, "reconcile", cmd_audit_reconcile,
                "check a usage statement line by line against the verified log")
    p.add_argument("statement", metavar="STATEMENT.json", help="from `veil usage --out`")
    _add_client_options(p)

    p = command(audit_, "replay", cmd_audit_replay,
                "re-run logged query calls on their exact dataset versions; compare digests")
    p.add_argument("--node-dir", required=True, metavar="NODEDIR")
    p.add_argument("--from", dest="start", type=int, default=0, metavar="INDEX")

    p = command(sub, "query", cmd_query, "run an approved query job; prints aggregates only")
    p.add_argument("job_id", metavar="JOB_ID")
    _add_client_options(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    job_ = group("job", "submit, approve and manage jobs")
    p = command(job_, "submit", cmd_job_submit, "sign a job spec and submit it to its nodes")
    p.add_argument("job", metavar="JOB.toml")
    p.add_argument("--node", action="append", required=True, metavar="HOST:PORT",
                   help="a node the job names (repeat for each)")
    p.add_argument("--identity", metavar="DIR", help=f"analyst identity (default: ${IDENTITY_ENV})")
    p = command(job_, "list", cmd_job_list, "list jobs with status, missing approvals, quota")
    _add_client_options(p)
    p.add_argument("--analyst")
    p.add_argument("--state", choices=("pending", "approved", "rejected", "revoked", "expired"))
    for name, fn, text in (("show", cmd_job_show, "a job with its dry-run estimate"),
                           ("approve", cmd_job_approve, "sign and send an approval"),
                           ("reject", cmd_job_reject, "sign and send a rejection"),
                           ("revoke", cmd_job_revoke, "stop a job's grant at once (operator)")):
        p = command(job_, name, fn, text)
        p.add_argument("job_id", metavar="JOB_ID")
        _add_client_options(p)
        if name == "approve":
            p.add_argument("--runs", type=int, help="narrow the quota: runs")
            p.add_argument("--rows-scanned", type=int, help="narrow the quota: rows scanned")
            p.add_argument("--items", type=int, help="narrow the quota: items")
            p.add_argument("--reason", help="a note for the analyst")
        elif name in ("reject", "revoke"):
            p.add_argument("--reason", required=True)

    p = command(sub, "usage", cmd_usage, "a priced usage statement; each line cites its log index")
    _add_client_options(p)
    p.add_argument("--analyst", help="whose (analysts: their own)")
    p.add_argument("--from", dest="start", metavar="TIME", help="RFC 3339, inclusive")
    p.add_argument("--to", dest="end", metavar="TIME", help="RFC 3339, exclusive")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--out", metavar="FILE", help="also write the statement as JSON here")
    return parser


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
    client = _client(args)
    return auditor.RemoteLog(client), client


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VeilError as exc:
        print(f"veil: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("veil: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `veil … | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file or directory the user named: say which, no traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"veil: error: {exc.strerror or exc}:{where}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""`veil` commands for registering, listing and verifying datasets."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from veil.node.cli._common import (
    Commands,
    ProgressLine,
    add_client_options,
    client_for,
    pairs,
    print_table,
)
from veil.node.errors import InvalidInput


def cmd_dataset_add(args: argparse.Namespace) -> int:
    from veil.node import catalog
    from veil.node.home import NodeHome

    home = NodeHome(Path(args.node_dir))
    home.check()
    levels = catalog.parse_levels(args.level)
    source = Path(args.file)
    try:
        size = source.stat().st_size
    except OSError:
        size = 0  # register names the problem
    line = ProgressLine(f"importing {source.name}", size)
    conn = home.connect()
    log = home.open_log()
    try:
        reg = catalog.register(
            conn, log, home.identity, home.snapshots,
            node=home.config.name, name=args.name, source=source,
            key_column=args.key, levels=levels, declassify=tuple(args.declassify),
            types=pairs(args.type, "--type"), progress=line.update if line.shown else None,
        )
    finally:
        log.close()
        conn.close()
    ds = reg.dataset
    line.finish(ds.rows)
    if reg.created:
        print(f"registered {ds.name} version {ds.version}: {ds.rows:,} rows, sha256 {ds.sha256}")
    else:
        print(
            f"identical content already registered as {ds.name} version {ds.version} "
            f"(sha256 {ds.sha256}); nothing added"
        )
    print_table(("column", "type", "level"), [(c.name, c.type, c.level) for c in ds.columns])
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


def _receipt_json(ds: Any, cert_pem: str) -> dict[str, Any]:
    return {
        "body": base64.b64encode(ds.receipt).decode(),
        "signature": base64.b64encode(ds.signature).decode(),
        "certificate": cert_pem,
    }


def cmd_dataset_list(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        pairs = client.dataset_receipts()
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
        print_table(
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



def register(c: Commands) -> None:
    g = c.group("dataset", "register, list and verify datasets")
    p = c.command(g, "add", cmd_dataset_add, "register a CSV or Parquet file as a new version")
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
    p = c.command(g, "list", cmd_dataset_list, "show a node's catalog (no values)")
    add_client_options(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = c.command(g, "verify", cmd_dataset_verify, "verify a registration receipt")
    p.add_argument("receipt", metavar="RECEIPT")
    p.add_argument("--ca", required=True, metavar="CA.crt", help="the federation CA certificate")

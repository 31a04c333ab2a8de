"""`veil` commands for federation PKI: CA, identities, revocation."""

from __future__ import annotations

import argparse
from pathlib import Path

from veil.node.cli._common import Commands
from veil.node.errors import InvalidInput


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
        Path(args.dir), args.role, args.name, Path(args.out), hosts=tuple(args.host),
        days=args.days, unique=True, rotate=args.rotate,
    )
    if issued.supersedes:
        old = ", ".join(f"{serial:#x}" for serial in issued.supersedes)
        print(f"  rotated: supersedes serial {old} (recorded in {Path(args.dir) / pki.ROTATIONS});"
              " revoke it once the new identity is installed")
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



def register(c: Commands) -> None:
    g = c.group("pki", "federation PKI: CA, identities, revocation")
    p = c.command(g, "init", cmd_pki_init, "create a federation CA in DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--federation", required=True, metavar="NAME")
    p = c.command(g, "issue", cmd_pki_issue, "issue a key and certificate for one identity")
    p.add_argument("dir", metavar="DIR", help="the federation directory")
    p.add_argument("--role", required=True,
                   help="node, analyst, auditor, approver, operator or subject-representative")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, metavar="OUTDIR")
    p.add_argument("--host", action="append", default=[], help="extra DNS name or IP (nodes)")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--rotate", action="store_true",
                   help="issue although the name holds a valid certificate (recorded)")
    p = c.command(g, "revoke", cmd_pki_revoke, "add a certificate to the federation's CRL")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--name")
    p.add_argument("--serial", type=lambda v: int(v, 0), metavar="SERIAL",
                   help="the certificate's serial, e.g. 0x1f… (as `veil pki check` prints it)")
    p.add_argument("--role")
    p.add_argument("--reason", default="unspecified")
    p = c.command(g, "check", cmd_pki_check, "list certificates other TLS stacks cannot parse")
    p.add_argument("dir", metavar="DIR", help="the federation directory")

"""The federation PKI: one CA per federation, certificates that carry a role and a signing key.

A *federation* is a directory an operator keeps offline::

    ca.key      the CA's ECDSA P-256 private key (0600)
    ca.crt      the CA certificate: O=<federation>, CN=<federation> federation CA
    crl.pem     the certificate revocation list, signed by the CA (starts empty)
    issued/     a copy of every certificate issued, named <serial hex>.crt,
                so that a certificate can be revoked by name
    .lock       serializes issue and revoke

Every identity (a node, an analyst, an auditor, an approver ...) gets a directory::

    tls.key     ECDSA P-256 private key for mTLS (0600); grpcio's TLS refuses Ed25519 certificates
    tls.crt     its certificate: O=<federation>, OU=<role>, CN=<name>
    sign.key    an Ed25519 private key (PKCS#8 PEM, 0600) for signing jobs, approvals,
                receipts and checkpoints
    ca.crt      a copy of the federation CA certificate

The Ed25519 *public* key is bound into the TLS certificate, so a peer can verify a signature
by an identity from its certificate alone. It sits in a non-critical X.509 extension:

    OID   1.3.6.1.4.1.999999.1.1   (``SIGNING_KEY_OID``)
    value DER OCTET STRING holding the raw 32-byte Ed25519 public key (RFC 8032)

Every arc of that OID fits in 31 bits, because Go's crypto/x509 (and so every Go TLS client,
and other stacks that parse arcs into 32-bit integers) refuses a certificate with a wider
arc. ``999999`` under the IANA enterprise arc ``1.3.6.1.4.1`` is a *placeholder*: no
Private Enterprise Number is registered for Veil, and IANA has assigned numbers only up to
the tens of thousands, so it collides with no assignment today. Trade-off: unlike a UUID arc
it is not collision-proof forever; replace it with a registered PEN before wide deployment
(keep the old one in ``_LEGACY_SIGNING_KEY_OIDS``).

Certificates issued before this change carry the key under
``2.25.150688744800780258384582996978312456887.1`` (ITU-T X.667, a 127-bit UUID arc that no
Go program can parse). Nodes still *read* that OID, so existing federations keep working
among Python peers; :func:`legacy_certificates` lists them and ``veil pki check DIR`` tells
the operator to reissue them (``veil pki issue`` with the same role and name, then revoke the
old serial).

A node checks peers with :class:`TrustStore`: signed by the CA, within validity, not on the CRL,
a known role. Private keys stay in files; the wrappers here that hold one refuse pickling.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veil.node.errors import (
    AlreadyExists,
    ConfigError,
    InvalidInput,
    NotFound,
    Unauthenticated,
    VerificationError,
)

if TYPE_CHECKING:
    from veil.node.audit import NoteSigner

__all__ = [
    "APPROVER_ROLES",
    "ROLES",
    "SIGNING_KEY_OID",
    "LEGACY_SIGNING_KEY_OID",
    "legacy_certificates",
    "Federation",
    "Identity",
    "IssuedIdentity",
    "LocalIdentity",
    "TrustStore",
    "init_federation",
    "issue",
    "load_identity",
    "revoke",
]

ROLES: tuple[str, ...] = (
    "node",
    "analyst",
    "auditor",
    "approver",
    "operator",
    "subject-representative",
)
APPROVER_ROLES: frozenset[str] = frozenset({"approver", "operator", "subject-representative"})

#: X.509 extension carrying the raw Ed25519 signing public key (see module docstring).
SIGNING_KEY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.999999.1.1")
#: Read but never written: the UUID-arc OID of earlier releases (its arc exceeds 31 bits).
LEGACY_SIGNING_KEY_OID = x509.ObjectIdentifier("2.25.150688744800780258384582996978312456887.1")
_LEGACY_SIGNING_KEY_OIDS = (LEGACY_SIGNING_KEY_OID,)

CA_KEY, CA_CRT, CRL_PEM, ISSUED_DIR = "ca.key", "ca.crt", "crl.pem", "issued"
TLS_KEY, TLS_CRT, SIGN_KEY = "tls.key", "tls.crt", "sign.key"
_IDENTITY_FILES = (TLS_KEY, TLS_CRT, SIGN_KEY, CA_CRT)

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CA_DAYS = 3650
_CRL_DAYS = 365
# Revocation reasons an operator may give; certificateHold/removeFromCRL (holds, delta CRLs)
# are not supported: a revocation here is final.
_REASONS = {
    r.value: r
    for r in x509.ReasonFlags
    if r not in (x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl)
}


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate says its holder is."""

    role: str
    name: str
    federation: str
    fingerprint: str  # hex SHA-256 of the certificate's DER
    serial: int
    signing_key: ed25519.Ed25519PublicKey = field(compare=False, repr=False)
    not_after: datetime = field(compare=False)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an Ed25519 signature by this identity; raise VerificationError if it fails."""
        try:
            self.signing_key.verify(signature, data)
        except InvalidSignature:
            raise VerificationError(
                f"signature by {self.role} {self.name!r} does not verify with the signing key "
                f"in certificate serial {self.serial:#x}"
            ) from None


@dataclass(frozen=True)
class Federation:
    """A federation directory as created by :func:`init_federation`."""

    directory: Path
    name: str
    ca_cert: Path
    ca_key: Path
    crl: Path
    fingerprint: str  # hex SHA-256 of the CA certificate's DER


@dataclass(frozen=True)
class IssuedIdentity:
    """What :func:`issue` wrote: paths only, no key material in memory."""

    directory: Path
    role: str
    name: str
    serial: int
    fingerprint: str
    tls_key: Path
    tls_cert: Path
    signing_key: Path
    ca_cert: Path
    not_after: datetime
    #: serials of the certificates this one rotated (still valid until revoked)
    supersedes: tuple[int, ...] = ()


class LocalIdentity:
    """This process's own identity: paths of its TLS files, its Ed25519 signing key.

    The TLS private key stays on disk (gRPC reads it via :meth:`read_tls_key`, an explicit
    step); the signing key is held in memory and never leaves this object except as
    signatures. Refuses pickling.
    """

    __slots__ = ("_signing_key", "ca_cert", "directory", "identity", "tls_cert", "tls_key")

    def __init__(
        self,
        directory: Path,
        tls_key: Path,
        tls_cert: Path,
        ca_cert: Path,
        identity: Identity,
        signing_key: ed25519.Ed25519PrivateKey,
    ) -> None:
        self.directory = directory
        self.tls_key = tls_key
        self.tls_cert = tls_cert
        self.ca_cert = ca_cert
        self.identity = identity
        self._signing_key = signing_key

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data``; verifiable with ``identity.signing_key``."""
        return self._signing_key.sign(data)

    @property
    def signing_public_key(self) -> ed25519.Ed25519PublicKey:
        return self._signing_key.public_key()

    def read_tls_key(self) -> bytes:
        """The TLS private key PEM, for ``grpc.ssl_*_credentials``. Handle with care."""
        return self.tls_key.read_bytes()

    def read_tls_cert(self) -> bytes:
        return self.tls_cert.read_bytes()

    def read_ca_cert(self) -> bytes:
        return self.ca_cert.read_bytes()

    def __reduce__(self) -> NoReturn:
        raise TypeError("LocalIdentity holds a private key and cannot be pickled")

    def __repr__(self) -> str:
        i = self.identity
        return (
            f"LocalIdentity({i.role} {i.name!r} of {i.federation!r}, dir={str(self.directory)!r})"
        )


# --------------------------------------------------------------------------- small helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _z(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _check_name(name: str, what: str = "name") -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} {name!r}: expected 1-64 characters of A-Z a-z 0-9 . _ -"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (must not exist) with ``mode`` from the start, write and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        _write(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _signing_key_extension(public: ed25519.Ed25519PublicKey) -> x509.UnrecognizedExtension:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return x509.UnrecognizedExtension(SIGNING_KEY_OID, b"\x04\x20" + raw)  # DER OCTET STRING


def _signing_key_from(cert: x509.Certificate) -> ed25519.Ed25519PublicKey | None:
    for oid in (SIGNING_KEY_OID, *_LEGACY_SIGNING_KEY_OIDS):
        try:
            ext = cert.extensions.get_extension_for_oid(oid).value
            break
        except x509.ExtensionNotFound:
            continue
    else:
        return None
    value = getattr(ext, "value", b"")
    if len(value) != 34 or value[:2] != b"\x04\x20":
        return None
    return ed25519.Ed25519PublicKey.from_public_bytes(value[2:])


def _load_pem_cert(path: Path, what: str) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{what} {path} is not a PEM X.509 certificate") from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize issue/revoke on one federation directory (across processes)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- federation (CA side)


def init_federation(directory: Path, name: str) -> Federation:
    """Create a federation CA in ``directory`` (which must be absent or empty).

    Everything is written to a temporary sibling directory and renamed into place, so a
    failure leaves nothing behind.
    """
    directory = Path(directory)
    _check_name(name, "federation name")
    if directory.exists():
        if not directory.is_dir():
            raise AlreadyExists(f"{directory} exists and is not a directory; choose a new path")
        if any(directory.iterdir()):
            raise AlreadyExists(
                f"federation directory {directory} is not empty; choose a new path or remove it"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)

    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} federation CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    crl = _build_crl(cert, key, [], number=1, now=now)

    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        _write(tmp / CA_KEY, _key_pem(key), 0o600)
        _write(tmp / CA_CRT, cert.public_bytes(serialization.Encoding.PEM))
        _write(tmp / CRL_PEM, crl.public_bytes(serialization.Encoding.PEM))
        (tmp / ISSUED_DIR).mkdir()
        os.chmod(tmp, 0o700)
        _fsync_dir(tmp)
        try:
            # rename(2) replaces an empty directory; it fails if someone filled it meanwhile
            os.rename(tmp, directory)
        except OSError:
            raise AlreadyExists(
                f"federation directory {directory} appeared or filled up while initializing; "
                "choose a new path"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(directory.parent)
    return _federation(directory)


def _federation(directory: Path) -> Federation:
    directory = Path(directory)
    if not (directory / CA_KEY).is_file() or not (directory / CA_CRT).is_file():
        raise ConfigError(
            f"{directory} is not a federation directory (no {CA_KEY}/{CA_CRT}); "
            "create one with init_federation (veil pki init)"
        )
    cert = _load_pem_cert(directory / CA_CRT, "federation CA certificate")
    name = _attr(cert.subject, NameOID.ORGANIZATION_NAME)
    if name is None:
        raise ConfigError(f"{directory / CA_CRT} has no single O= (federation name) in its subject")
    return Federation(
        directory=directory,
        name=name,
        ca_cert=directory / CA_CRT,
        ca_key=directory / CA_KEY,
        crl=directory / CRL_PEM,
        fingerprint=_fingerprint(cert),
    )


def _load_ca(directory: Path) -> tuple[Federation, x509.Certificate, ec.EllipticCurvePrivateKey]:
    fed = _federation(directory)
    cert = _load_pem_cert(fed.ca_cert, "federation CA certificate")
    try:
        key = serialization.load_pem_private_key(fed.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot load the federation CA key {fed.ca_key}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"{fed.ca_key} does not match {fed.ca_cert}")
    return fed, cert, key


def _build_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: Iterable[x509.RevokedCertificate],
    *,
    number: int,
    now: datetime,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=_CRL_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256())


def issue(
    federation_dir: Path,
    role: str,
    name: str,
    out_dir: Path,
    *,
    hosts: Iterable[str] = (),
    days: int = 365,
    not_before: datetime | None = None,
    unique: bool = False,
    rotate: bool = False,
) -> IssuedIdentity:
    """Issue a certificate for ``(role, name)`` and write the identity files into ``out_dir``.

    With ``unique`` (what ``veil pki issue`` does), a name that already holds a valid
    (unexpired, unrevoked) certificate in that role is refused unless ``rotate``; a rotation
    is recorded in ``rotations.jsonl`` with the serials it supersedes (which stay valid until
    revoked, so the holder can switch over first).

    ``hosts`` adds SubjectAltNames (DNS names or IP addresses) to a node certificate on top of
    localhost, 127.0.0.1 and ::1. ``not_before`` (default: now) and ``days`` set the validity;
    backdating ``not_before`` is for tests and operations (e.g. an already-expired certificate).
    ``out_dir`` may exist, but must not hold any identity file yet.
    """
    federation_dir = Path(federation_dir)
    out_dir = Path(out_dir)
    _check_role(role)
    _check_name(name)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InvalidInput(f"invalid days {days!r}: expected a whole number of days >= 1")
    hosts = tuple(hosts)
    if hosts and role != "node":
        raise InvalidInput(f"hosts are only for node certificates, not for role {role!r}")
    san_entries = _san_entries(hosts, name) if role == "node" else []
    _refuse_existing_identity(out_dir)

    fed, ca_cert, ca_key = _load_ca(federation_dir)
    start = (not_before or _now() - timedelta(minutes=5)).astimezone(UTC)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    sign_key = ed25519.Ed25519PrivateKey.generate()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, fed.name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(tls_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(_signing_key_extension(sign_key.public_key()), critical=False)
    )
    if san_entries:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_entries), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    files = {
        TLS_KEY: (_key_pem(tls_key), 0o600),
        TLS_CRT: (cert_pem, 0o644),
        SIGN_KEY: (_key_pem(sign_key), 0o600),
        CA_CRT: (fed.ca_cert.read_bytes(), 0o644),
    }
    with _locked(fed.directory):
        current = current_certificates(fed.directory, role, name) if unique else []
        if current and not rotate:
            serials = ", ".join(f"{c.serial_number:#x}" for c in current)
            until = max(c.not_valid_after_utc for c in current)
            raise AlreadyExists(
                f"{role} {name!r} already has a valid certificate (serial {serials}, valid "
                f"until {until:%Y-%m-%d}); to issue a new one pass --rotate (the old one stays "
                f"valid until you revoke it with `veil pki revoke {fed.directory} --serial "
                "SERIAL`)"
            )
        created = not out_dir.exists()
        placed = _place_identity(out_dir, files)
        try:
            issued = fed.directory / ISSUED_DIR
            issued.mkdir(exist_ok=True)
            _write(issued / f"{cert.serial_number:x}.crt", cert_pem)
            _fsync_dir(issued)
            if current:  # a rotation: say what it supersedes, append-only
                line = json.dumps({"time": _now().isoformat(), "role": role, "name": name,
                                   "serial": f"{cert.serial_number:#x}",
                                   "supersedes": [f"{c.serial_number:#x}" for c in current]})
                with (fed.directory / ROTATIONS).open("a") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    out_dir.rmdir()
            raise
    return IssuedIdentity(
        directory=out_dir,
        role=role,
        name=name,
        serial=cert.serial_number,
        fingerprint=_fingerprint(cert),
        tls_key=out_dir / TLS_KEY,
        tls_cert=out_dir / TLS_CRT,
        signing_key=out_dir / SIGN_KEY,
        ca_cert=out_dir / CA_CRT,
        not_after=cert.not_valid_after_utc,
        supersedes=tuple(c.serial_number for c in current),
    )


#: every node certificate also names its node as ``<name>.nodes.veil``, so that a caller can
#: make the TLS handshake itself check *which* node answers (``channel(..., node=NAME)``)
NODE_NAME_SUFFIX = ".nodes.veil"


def node_host(name: str) -> str:
    """The TLS name of node ``name``: what a caller expects to find in its certificate."""
    return f"{name.lower()}{NODE_NAME_SUFFIX}"


def _san_entries(hosts: tuple[str, ...], name: str) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = [
        x509.DNSName(node_host(name)),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for host in hosts:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
                raise InvalidInput(
                    f"invalid host {host!r}: expected a DNS name or an IP address"
                ) from None
            entry = x509.DNSName(host.lower())
        if entry not in entries:
            entries.append(entry)
    return entries


def _refuse_existing_identity(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise AlreadyExists(f"{out_dir} exists and is not a directory; choose another output path")
    present = [f for f in _IDENTITY_FILES if (out_dir / f).exists()]
    if present:
        raise AlreadyExists(
            f"{out_dir} already holds an identity ({', '.join(present)}); "
            "choose an empty directory or revoke and remove the old one first"
        )


def _place_identity(out_dir: Path, files: dict[str, tuple[bytes, int]]) -> list[Path]:
    """Write ``files`` into ``out_dir`` all-or-nothing; return the paths placed.

    A missing ``out_dir`` is built as a temporary sibling and renamed into place. An existing
    one gets the files in a temporary subdirectory first, then each is hard-linked into place
    (link(2) never overwrites) and every link is undone if one fails.
    """
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            for fname, (data, mode) in files.items():
                _write(tmp / fname, data, mode)
            os.chmod(tmp, 0o700)
            _fsync_dir(tmp)
            try:
                os.rename(tmp, out_dir)
            except OSError:
                raise AlreadyExists(
                    f"{out_dir} was created by someone else while issuing; choose another path"
                ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(out_dir.parent)
        return [out_dir / f for f in files]

    tmp = Path(tempfile.mkdtemp(prefix=".issue.", dir=out_dir))
    placed: list[Path] = []
    try:
        for fname, (data, mode) in files.items():
            _write(tmp / fname, data, mode)
        for fname in files:
            try:
                os.link(tmp / fname, out_dir / fname)
            except FileExistsError:
                raise AlreadyExists(
                    f"{out_dir / fname} appeared while issuing; choose an empty directory"
                ) from None
            placed.append(out_dir / fname)
        _fsync_dir(out_dir)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return placed


def revoke(
    federation_dir: Path,
    *,
    name: str | None = None,
    serial: int | None = None,
    role: str | None = None,
    reason: str = "unspecified",
) -> int:
    """Put one issued certificate on the CRL (re-signed, replaced atomically); return its serial.

    Pick it by ``serial``, or by ``name`` (and ``role`` when the name alone is ambiguous).
    Revocation is final. Nodes pick up the new ``crl.pem`` with :meth:`TrustStore.reload`.
    """
    federation_dir = Path(federation_dir)
    if (name is None) == (serial is None):
        raise InvalidInput("revoke needs exactly one of name= or serial=")
    if role is not None:
        _check_role(role)
    if reason not in _REASONS:
        raise InvalidInput(
            f"unknown revocation reason {reason!r}: expected one of {', '.join(_REASONS)}"
        )
    fed, ca_cert, ca_key = _load_ca(federation_dir)
    with _locked(fed.directory):
        crl = _load_crl(fed.crl, ca_cert)
        revoked = {entry.serial_number: entry for entry in crl}
        issued = _issued_certificates(fed.directory)
        if serial is not None:
            target = next((c for c in issued if c.serial_number == serial), None)
            if target is None:
                raise NotFound(
                    f"no certificate with serial {serial:#x} was issued by federation "
                    f"{fed.name!r} (looked in {fed.directory / ISSUED_DIR})"
                )
            if role is not None and _attr(target.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) != role:
                raise InvalidInput(f"certificate serial {serial:#x} is not for role {role!r}")
        else:
            assert name is not None
            matches = [
                c
                for c in issued
                if _attr(c.subject, NameOID.COMMON_NAME) == name
                and (role is None or _attr(c.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == role)
            ]
            who = f"{role} {name!r}" if role else repr(name)
            if not matches:
                raise NotFound(
                    f"no certificate for {who} was issued by federation {fed.name!r}; "
                    "check the name, or revoke by serial"
                )
            live = [c for c in matches if c.serial_number not in revoked]
            if not live:
                serials = ", ".join(f"{c.serial_number:#x}" for c in matches)
                raise AlreadyExists(f"every certificate for {who} is already revoked ({serials})")
            if len(live) > 1:
                listing = ", ".join(
                    f"{c.serial_number:#x} ({_attr(c.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)}, "
                    f"until {_z(c.not_valid_after_utc)})"
                    for c in live
                )
                raise InvalidInput(
                    f"{len(live)} unrevoked certificates for {who}: {listing}; "
                    "pass role= or serial= to pick one"
                )
            target = live[0]
        if target.serial_number in revoked:
            raise AlreadyExists(f"certificate serial {target.serial_number:#x} is already revoked")
        now = _now()
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(target.serial_number)
            .revocation_date(now)
            .add_extension(x509.CRLReason(_REASONS[reason]), critical=False)
            .build()
        )
        new = _build_crl(ca_cert, ca_key, [*crl, entry], number=_crl_number(crl) + 1, now=now)
        _replace_atomically(fed.crl, new.public_bytes(serialization.Encoding.PEM))
    return target.serial_number


ROTATIONS = "rotations.jsonl"


def current_certificates(directory: Path, role: str, name: str) -> list[x509.Certificate]:
    """The unexpired, unrevoked certificates the federation in ``directory`` issued to
    ``(role, name)``."""
    fed = _federation(directory)
    ca_cert = _load_pem_cert(fed.ca_cert, "federation CA certificate")
    crl = _load_crl(directory / CRL_PEM, ca_cert)
    now = _now()
    out = []
    for cert in _issued_certificates(directory):
        subject = {a.oid: a.value for a in cert.subject}
        if (subject.get(NameOID.ORGANIZATIONAL_UNIT_NAME), subject.get(NameOID.COMMON_NAME)) != (
                role, name):
            continue
        if cert.not_valid_after_utc <= now:
            continue
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            continue
        out.append(cert)
    return out


def _issued_certificates(directory: Path) -> list[x509.Certificate]:
    out = []
    for path in sorted((directory / ISSUED_DIR).glob("*.crt")):
        out.append(_load_pem_cert(path, "issued certificate"))
    return out


def legacy_certificates(directory: Path) -> list[x509.Certificate]:
    """Unrevoked, unexpired certificates of the federation in ``directory`` (and its CA) whose
    OIDs Go's crypto/x509 cannot parse: they carry the legacy signing-key OID."""
    ca_cert = _load_pem_cert(_federation(directory).ca_cert, "federation CA certificate")
    crl = _load_crl(directory / CRL_PEM, ca_cert)
    now = _now()
    out = []
    for cert in [ca_cert, *_issued_certificates(directory)]:
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            continue
        if cert.not_valid_after_utc <= now:
            continue
        oids = {e.oid for e in cert.extensions}
        if oids & set(_LEGACY_SIGNING_KEY_OIDS):
            out.append(cert)
    return out


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _load_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the CRL {path}: {e.strerror}") from None
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM X.509 CRL") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise ConfigError(
            f"the CRL {path} is not signed by the federation CA "
            f"{ca_cert.subject.rfc4514_string()!r}; fetch crl.pem from the federation operator"
        )
    return crl


# --------------------------------------------------------------------------- node side


class TrustStore:
    """The federation CA and its CRL, as a node uses them to identify peers.

    Thread-safe: :meth:`identify` may run on many gRPC threads while :meth:`reload` swaps in
    a new CRL.
    """

    def __init__(
        self,
        ca_cert: x509.Certificate,
        crl_path: Path | None = None,
        *,
        ca_path: Path | None = None,
    ) -> None:
        federation = _attr(ca_cert.subject, NameOID.ORGANIZATION_NAME)
        if federation is None:
            raise ConfigError("the federation CA certificate has no single O= in its subject")
        self.ca_cert = ca_cert
        self.ca_path = ca_path
        self.federation = federation
        self.crl_path = Path(crl_path) if crl_path is not None else None
        self._lock = threading.Lock()
        self._revoked: frozenset[int] = frozenset()
        self._crl_number = -1
        self._crl_stamp: tuple[int, int, int] | None = None
        if self.crl_path is not None:
            self.reload()

    @classmethod
    def load(cls, ca_path: Path, crl_path: Path | None = None) -> TrustStore:
        ca_path = Path(ca_path)
        return cls(_load_pem_cert(ca_path, "federation CA certificate"), crl_path, ca_path=ca_path)

    @property
    def revoked_serials(self) -> frozenset[int]:
        return self._revoked

    def reload(self) -> bool:
        """Re-read the CRL if its file changed; return whether it did.

        A CRL that does not verify, or is older (lower CRL number) than the one held, is
        refused with ConfigError and the one held stays in force.
        """
        if self.crl_path is None:
            return False
        with self._lock:
            try:
                st = self.crl_path.stat()
            except OSError as e:
                raise ConfigError(f"cannot read the CRL {self.crl_path}: {e.strerror}") from None
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._crl_stamp:
                return False
            crl = _load_crl(self.crl_path, self.ca_cert)
            number = _crl_number(crl)
            if number < self._crl_number:
                raise ConfigError(
                    f"the CRL {self.crl_path} has number {number}, older than the one in force "
                    f"({self._crl_number}); refusing to roll back revocations"
                )
            self._revoked = frozenset(entry.serial_number for entry in crl)
            self._crl_number = number
            self._crl_stamp = stamp
            return True

    def identify(self, cert_pem: bytes, now: datetime | None = None) -> Identity:
        """Verify a peer's PEM certificate against this federation; return who it is.

        Raises Unauthenticated naming exactly what is wrong.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError):
            raise Unauthenticated("certificate is not a PEM X.509 certificate") from None
        return self.identify_certificate(cert, now)

    def identify_certificate(self, cert: x509.Certificate, now: datetime | None = None) -> Identity:
        now = (now or _now()).astimezone(UTC)
        subject = cert.subject.rfc4514_string()
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise Unauthenticated(
                f"certificate {subject!r} not issued by federation {self.federation!r} CA "
                f"(its issuer is {cert.issuer.rfc4514_string()!r}); "
                "ask this federation's operator for a certificate"
            ) from None
        if now < cert.not_valid_before_utc:
            raise Unauthenticated(
                f"certificate {subject!r} is not valid before {_z(cert.not_valid_before_utc)} "
                f"(now {_z(now)}); check the clocks"
            )
        if now > cert.not_valid_after_utc:
            raise Unauthenticated(
                f"certificate expired on {_z(cert.not_valid_after_utc)} ({subject!r}); "
                "ask the federation operator for a new one"
            )
        if cert.serial_number in self._revoked:
            raise Unauthenticated(
                f"certificate serial {cert.serial_number:#x} was revoked ({subject!r})"
            )
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or bc.ca:
            raise Unauthenticated(f"certificate {subject!r} is not an end-entity certificate")
        role = _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if role not in ROLES:
            raise Unauthenticated(
                f"certificate carries unknown role {role!r}; expected one of {', '.join(ROLES)}"
            )
        name = _attr(cert.subject, NameOID.COMMON_NAME)
        if name is None or not _NAME_RE.fullmatch(name):
            raise Unauthenticated(f"certificate {subject!r} carries no valid CN name")
        federation = _attr(cert.subject, NameOID.ORGANIZATION_NAME)
        if federation != self.federation:
            raise Unauthenticated(
                f"certificate {subject!r} names federation {federation!r}, "
                f"expected {self.federation!r}"
            )
        signing_key = _signing_key_from(cert)
        if signing_key is None:
            raise Unauthenticated(
                f"certificate {subject!r} carries no Ed25519 signing key "
                f"(extension {SIGNING_KEY_OID.dotted_string})"
            )
        return Identity(
            role=role,
            name=name,
            federation=federation,
            fingerprint=_fingerprint(cert),
            serial=cert.serial_number,
            signing_key=signing_key,
            not_after=cert.not_valid_after_utc,
        )


def load_identity(directory: Path) -> LocalIdentity:
    """Load an identity directory written by :func:`issue` and check it is consistent.

    Checks that the TLS key matches the certificate, that the signing key matches the key
    bound in the certificate, and that the certificate was issued by ``ca.crt``. It does not
    refuse an expired or revoked certificate (peers do that); see ``identity.not_after``.
    """
    directory = Path(directory)
    missing = [f for f in _IDENTITY_FILES if not (directory / f).is_file()]
    if missing:
        raise ConfigError(
            f"identity directory {directory} lacks {', '.join(missing)}; "
            "issue one with `veil pki issue`"
        )
    ca = _load_pem_cert(directory / CA_CRT, "CA certificate")
    cert = _load_pem_cert(directory / TLS_CRT, "certificate")
    store = TrustStore(ca, ca_path=directory / CA_CRT)
    try:
        identity = store.identify_certificate(cert, now=cert.not_valid_before_utc)
    except Unauthenticated as e:
        raise ConfigError(f"{directory / TLS_CRT}: {e}") from None
    try:
        tls_key = serialization.load_pem_private_key((directory / TLS_KEY).read_bytes(), None)
        sign_key = serialization.load_pem_private_key((directory / SIGN_KEY).read_bytes(), None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{directory}: a key file is not an unencrypted PEM private key"
        ) from None
    if (
        not isinstance(tls_key, ec.EllipticCurvePrivateKey)
        or tls_key.public_key() != cert.public_key()
    ):
        raise ConfigError(f"{directory / TLS_KEY} does not match {directory / TLS_CRT}")
    if (
        not isinstance(sign_key, ed25519.Ed25519PrivateKey)
        or sign_key.public_key() != identity.signing_key
    ):
        raise ConfigError(
            f"{directory / SIGN_KEY} does not match the signing key bound in {directory / TLS_CRT}"
        )
    for f in (TLS_KEY, SIGN_KEY):
        mode = (directory / f).stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{directory / f} is readable by others (mode {mode:04o}); run chmod 600 on it"
            )
    return LocalIdentity(
        directory=directory,
        tls_key=directory / TLS_KEY,
        tls_cert=directory / TLS_CRT,
        ca_cert=directory / CA_CRT,
        identity=identity,
        signing_key=sign_key,
    )


def note_signer(local: LocalIdentity, name: str) -> NoteSigner:
    """A signed-note signer with this identity's Ed25519 key (a node signs its checkpoints).

    The one sanctioned way for the key to leave :class:`LocalIdentity`: into another
    key-holding object that refuses pickling too.
    """
    from veil.node.audit import NoteSigner

    return NoteSigner(name, local._signing_key)

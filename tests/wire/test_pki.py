"""The federation PKI: issuing, revoking, identifying; and what gRPC's TLS really does with it."""

from __future__ import annotations

import os
import pickle
import stat
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from veil.node import pki
from veil.node.errors import (
    AlreadyExists,
    ConfigError,
    InvalidInput,
    NotFound,
    Unauthenticated,
    VerificationError,
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> pki.Federation:
    return pki.init_federation(tmp_path_factory.mktemp("pki") / "fed", "acme")


@pytest.fixture
def store(fed: pki.Federation) -> pki.TrustStore:
    return pki.TrustStore.load(fed.ca_cert, fed.crl)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ca(fed: pki.Federation) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(fed.ca_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


# --------------------------------------------------------------------------- federation


def test_init_federation_layout_and_ca_extensions(tmp_path: Path) -> None:
    # a federation of its own: the module's `fed` gains revocations in other tests, and the
    # suite runs in random order
    fed = pki.init_federation(tmp_path / "fed", "acme")
    assert fed.name == "acme"
    assert _mode(fed.ca_key) == 0o600
    assert (fed.directory / "issued").is_dir()
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    crl = x509.load_pem_x509_crl(fed.crl.read_bytes())
    assert len(crl) == 0 and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]


def test_init_federation_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "fed").mkdir()
    (tmp_path / "fed" / "notes.txt").write_text("keep me")
    with pytest.raises(AlreadyExists, match="not empty"):
        pki.init_federation(tmp_path / "fed", "acme")
    assert os.listdir(tmp_path / "fed") == ["notes.txt"]


def test_init_federation_accepts_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "fed").mkdir()
    fed = pki.init_federation(tmp_path / "fed", "acme")
    assert fed.ca_cert.is_file()


def test_init_federation_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = pki._write

    def failing_write(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name == "crl.pem":
            raise OSError(28, "No space left on device")
        real_write(path, data, mode)

    monkeypatch.setattr(pki, "_write", failing_write)
    with pytest.raises(OSError, match="No space"):
        pki.init_federation(tmp_path / "fed", "acme")
    assert os.listdir(tmp_path) == []


def test_init_federation_validates_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="invalid federation name 'a b'"):
        pki.init_federation(tmp_path / "fed", "a b")


# --------------------------------------------------------------------------- issue


@pytest.mark.parametrize("role", pki.ROLES)
def test_issue_round_trip_for_each_role(
    fed: pki.Federation, store: pki.TrustStore, tmp_path: Path, role: str
) -> None:
    issued = pki.issue(fed.directory, role, f"{role}-1", tmp_path / "id")
    for f in ("tls.key", "sign.key"):
        assert _mode(tmp_path / "id" / f) == 0o600
    assert (tmp_path / "id" / "ca.crt").read_bytes() == fed.ca_cert.read_bytes()
    assert (fed.directory / "issued" / f"{issued.serial:x}.crt").read_bytes() == (
        issued.tls_cert.read_bytes()
    )

    local = pki.load_identity(tmp_path / "id")
    ident = store.identify(issued.tls_cert.read_bytes())
    assert ident == local.identity
    assert (ident.role, ident.name, ident.federation) == (role, f"{role}-1", "acme")
    assert ident.serial == issued.serial and ident.fingerprint == issued.fingerprint
    cert = x509.load_pem_x509_certificate(issued.tls_cert.read_bytes())
    assert ident.fingerprint == cert.fingerprint(hashes.SHA256()).hex()

    # the Ed25519 key bound in the certificate verifies what the identity signs
    sig = local.sign(b"job 42")
    ident.verify(sig, b"job 42")
    with pytest.raises(VerificationError, match=f"{role} '{role}-1'"):
        ident.verify(sig, b"job 43")

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ext = cert.extensions.get_extension_for_oid(pki.SIGNING_KEY_OID)
    assert not ext.critical
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_node_certificate_subject_alt_names(fed: pki.Federation, tmp_path: Path) -> None:
    issued = pki.issue(
        fed.directory, "node", "n1", tmp_path / "n1", hosts=["Node1.Example.org", "10.0.0.7"]
    )
    cert = x509.load_pem_x509_certificate(issued.tls_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # The first name is the node's own: peers check it in the TLS handshake, whatever the address.
    assert san.get_values_for_type(x509.DNSName) == [
        pki.node_host("n1"),
        "localhost",
        "node1.example.org",
    ]
    assert pki.node_host("n1") == "n1.nodes.veil"
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "10.0.0.7",
    ]
    names = {a.oid: a.value for a in cert.subject}
    assert names == {
        NameOID.ORGANIZATION_NAME: "acme",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "node",
        NameOID.COMMON_NAME: "n1",
    }


def test_hosts_only_for_nodes_and_must_be_hostnames(fed: pki.Federation, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="only for node certificates"):
        pki.issue(fed.directory, "analyst", "a", tmp_path / "a", hosts=["x.org"])
    with pytest.raises(InvalidInput, match="invalid host 'bad host'"):
        pki.issue(fed.directory, "node", "n", tmp_path / "n", hosts=["bad host"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "n").exists()


def test_issue_unknown_role_lists_the_valid_ones(fed: pki.Federation, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        pki.issue(fed.directory, "admin", "x", tmp_path / "x")
    assert str(err.value) == (
        "unknown role 'admin': expected one of node, analyst, auditor, approver, operator, "
        "subject-representative"
    )


@pytest.mark.parametrize("name", ["", "a" * 65, "alice smith", "a/b", "ünï"])
def test_issue_invalid_name(fed: pki.Federation, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="expected 1-64 characters"):
        pki.issue(fed.directory, "analyst", name, tmp_path / "x")


def test_issue_refuses_a_directory_with_keys(fed: pki.Federation, tmp_path: Path) -> None:
    pki.issue(fed.directory, "analyst", "alice", tmp_path / "alice")
    before = (tmp_path / "alice" / "tls.crt").read_bytes()
    with pytest.raises(AlreadyExists, match="already holds an identity"):
        pki.issue(fed.directory, "analyst", "alice", tmp_path / "alice")
    assert (tmp_path / "alice" / "tls.crt").read_bytes() == before


def test_issue_into_existing_directory_keeps_other_files(
    fed: pki.Federation, tmp_path: Path
) -> None:
    (tmp_path / "nodedir").mkdir()
    (tmp_path / "nodedir" / "node.toml").write_text("x = 1\n")
    pki.issue(fed.directory, "node", "n2", tmp_path / "nodedir")
    assert sorted(os.listdir(tmp_path / "nodedir")) == [
        "ca.crt",
        "node.toml",
        "sign.key",
        "tls.crt",
        "tls.key",
    ]


def test_issue_failure_leaves_nothing_in_a_new_directory(
    fed: pki.Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = pki._write

    def failing_write(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name == "sign.key":
            raise OSError(28, "No space left on device")
        real_write(path, data, mode)

    issued_before = set(os.listdir(fed.directory / "issued"))
    monkeypatch.setattr(pki, "_write", failing_write)
    with pytest.raises(OSError):
        pki.issue(fed.directory, "analyst", "carol", tmp_path / "carol")
    assert os.listdir(tmp_path) == []
    assert set(os.listdir(fed.directory / "issued")) == issued_before


def test_issue_failure_leaves_nothing_in_an_existing_directory(
    fed: pki.Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d").mkdir()
    real_link = os.link
    calls = []

    def failing_link(src: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        real_link(src, dst)

    monkeypatch.setattr(pki.os, "link", failing_link)
    with pytest.raises(OSError, match="Input/output"):
        pki.issue(fed.directory, "analyst", "dave", tmp_path / "d")
    assert os.listdir(tmp_path / "d") == []


def test_issue_failure_to_record_rolls_back_the_identity(
    fed: pki.Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = pki._write

    def failing_write(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.parent.name == "issued":
            raise OSError(28, "No space left on device")
        real_write(path, data, mode)

    monkeypatch.setattr(pki, "_write", failing_write)
    with pytest.raises(OSError):
        pki.issue(fed.directory, "analyst", "erin", tmp_path / "erin")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- identify


def test_identify_refuses_expired_and_not_yet_valid(
    fed: pki.Federation, store: pki.TrustStore, tmp_path: Path
) -> None:
    start = datetime(2025, 12, 1, tzinfo=UTC)
    issued = pki.issue(fed.directory, "analyst", "old", tmp_path / "old", not_before=start, days=31)
    pem = issued.tls_cert.read_bytes()
    with pytest.raises(Unauthenticated, match=r"^certificate expired on 2026-01-01T00:00:00Z"):
        store.identify(pem, now=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC))
    with pytest.raises(Unauthenticated, match="not valid before 2025-12-01T00:00:00Z"):
        store.identify(pem, now=datetime(2025, 11, 30, tzinfo=UTC))
    assert store.identify(pem, now=datetime(2025, 12, 15, tzinfo=UTC)).name == "old"
    # the owner can still load it (the peer refuses it); the expiry is visible
    assert pki.load_identity(tmp_path / "old").identity.not_after == start + timedelta(days=31)


def test_identify_refuses_a_foreign_ca_with_the_same_name(
    fed: pki.Federation, store: pki.TrustStore, tmp_path: Path
) -> None:
    other = pki.init_federation(tmp_path / "other", "acme")
    issued = pki.issue(other.directory, "analyst", "mallory", tmp_path / "mallory")
    with pytest.raises(Unauthenticated, match="not issued by federation 'acme' CA"):
        store.identify(issued.tls_cert.read_bytes())


def test_identify_refuses_a_tampered_certificate(
    fed: pki.Federation, store: pki.TrustStore, tmp_path: Path
) -> None:
    issued = pki.issue(fed.directory, "analyst", "alice2", tmp_path / "a")
    der = x509.load_pem_x509_certificate(issued.tls_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    # analyst -> auditor in the subject: same length, still parses, signature breaks
    forged_der = der.replace(b"analyst", b"auditor")
    assert forged_der != der
    forged = x509.load_der_x509_certificate(forged_der)
    with pytest.raises(Unauthenticated, match="not issued by federation 'acme' CA"):
        store.identify(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(Unauthenticated, match="not a PEM X.509 certificate"):
        store.identify(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def _leaf_signed_by_ca(fed: pki.Federation, subject: x509.Name, *, signing_ext: bool) -> bytes:
    ca_cert, ca_key = _ca(fed)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if signing_ext:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        builder = builder.add_extension(
            pki._signing_key_extension(ed25519.Ed25519PrivateKey.generate().public_key()),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_identify_refuses_an_unknown_role(fed: pki.Federation, store: pki.TrustStore) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "foo"),
            x509.NameAttribute(NameOID.COMMON_NAME, "x"),
        ]
    )
    pem = _leaf_signed_by_ca(fed, subject, signing_ext=True)
    with pytest.raises(Unauthenticated, match="^certificate carries unknown role 'foo'"):
        store.identify(pem)


def test_identify_refuses_a_certificate_without_signing_key(
    fed: pki.Federation, store: pki.TrustStore
) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "analyst"),
            x509.NameAttribute(NameOID.COMMON_NAME, "x"),
        ]
    )
    pem = _leaf_signed_by_ca(fed, subject, signing_ext=False)
    with pytest.raises(Unauthenticated, match="carries no Ed25519 signing key"):
        store.identify(pem)


def test_identify_refuses_the_ca_itself(fed: pki.Federation, store: pki.TrustStore) -> None:
    with pytest.raises(Unauthenticated, match="not an end-entity certificate"):
        store.identify(fed.ca_cert.read_bytes())


# --------------------------------------------------------------------------- revoke and CRL


def test_revoke_by_name_then_reload(fed: pki.Federation, tmp_path: Path) -> None:
    store = pki.TrustStore.load(fed.ca_cert, fed.crl)
    issued = pki.issue(fed.directory, "analyst", "bob", tmp_path / "bob")
    pem = issued.tls_cert.read_bytes()
    assert store.identify(pem).name == "bob"
    assert store.reload() is False

    serial = pki.revoke(fed.directory, name="bob", reason="keyCompromise")
    assert serial == issued.serial
    assert store.identify(pem).name == "bob"  # not yet reloaded
    assert store.reload() is True
    with pytest.raises(Unauthenticated, match=f"^certificate serial {serial:#x} was revoked"):
        store.identify(pem)
    crl = x509.load_pem_x509_crl(fed.crl.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    # a fresh store sees it too
    with pytest.raises(Unauthenticated, match="was revoked"):
        pki.TrustStore.load(fed.ca_cert, fed.crl).identify(pem)

    with pytest.raises(AlreadyExists, match="already revoked"):
        pki.revoke(fed.directory, name="bob")
    with pytest.raises(AlreadyExists, match="already revoked"):
        pki.revoke(fed.directory, serial=serial)


def test_revoke_by_serial_and_role_disambiguation(fed: pki.Federation, tmp_path: Path) -> None:
    a = pki.issue(fed.directory, "approver", "zed", tmp_path / "a")
    b = pki.issue(fed.directory, "auditor", "zed", tmp_path / "b")
    with pytest.raises(InvalidInput, match="2 unrevoked certificates for 'zed'.*pass role="):
        pki.revoke(fed.directory, name="zed")
    assert pki.revoke(fed.directory, name="zed", role="auditor") == b.serial
    assert pki.revoke(fed.directory, serial=a.serial) == a.serial


def test_revoke_errors(fed: pki.Federation) -> None:
    with pytest.raises(NotFound, match="no certificate for 'nobody' was issued"):
        pki.revoke(fed.directory, name="nobody")
    with pytest.raises(NotFound, match="no certificate with serial 0x1 "):
        pki.revoke(fed.directory, serial=1)
    with pytest.raises(InvalidInput, match="exactly one of"):
        pki.revoke(fed.directory)
    with pytest.raises(InvalidInput, match="unknown revocation reason 'oops'"):
        pki.revoke(fed.directory, name="x", reason="oops")


def test_truststore_refuses_a_crl_from_another_ca(fed: pki.Federation, tmp_path: Path) -> None:
    other = pki.init_federation(tmp_path / "other", "acme")
    with pytest.raises(ConfigError, match="not signed by the federation CA"):
        pki.TrustStore.load(fed.ca_cert, other.crl)


def test_truststore_refuses_to_roll_back_the_crl(tmp_path: Path) -> None:
    fed = pki.init_federation(tmp_path / "fed", "acme")
    pki.issue(fed.directory, "analyst", "a", tmp_path / "a")
    old_crl = fed.crl.read_bytes()
    pki.revoke(fed.directory, name="a")
    store = pki.TrustStore.load(fed.ca_cert, fed.crl)
    revoked = store.revoked_serials
    fed.crl.write_bytes(old_crl)
    with pytest.raises(ConfigError, match="refusing to roll back"):
        store.reload()
    assert store.revoked_serials == revoked


# --------------------------------------------------------------------------- local identity


def test_local_identity_refuses_pickling(fed: pki.Federation, tmp_path: Path) -> None:
    pki.issue(fed.directory, "node", "n9", tmp_path / "n9")
    local = pki.load_identity(tmp_path / "n9")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(local)
    assert "PRIVATE" not in repr(local)
    assert local.read_tls_key().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_load_identity_checks_consistency(fed: pki.Federation, tmp_path: Path) -> None:
    pki.issue(fed.directory, "node", "p", tmp_path / "p")
    pki.issue(fed.directory, "node", "q", tmp_path / "q")
    (tmp_path / "p" / "sign.key").unlink()
    with pytest.raises(ConfigError, match="lacks sign.key"):
        pki.load_identity(tmp_path / "p")
    os.link(tmp_path / "q" / "sign.key", tmp_path / "p" / "sign.key")
    with pytest.raises(ConfigError, match="sign.key does not match the signing key bound"):
        pki.load_identity(tmp_path / "p")
    os.chmod(tmp_path / "q" / "tls.key", 0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\)"):
        pki.load_identity(tmp_path / "q")


# --------------------------------------------------------------------------- the wire

# What grpcio 1.85.1 actually does with client certificates. grpcio's Python API has only
# two modes: require_client_auth=False maps to GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE (the
# server never asks, so it never sees a certificate, even a valid one), and True maps to
# REQUEST_AND_REQUIRE_..._AND_VERIFY (the handshake refuses a missing, expired or foreign
# certificate, and the client sees UNAVAILABLE with no message from us). A revoked
# certificate passes the handshake: grpcio knows nothing of our CRL, so the node must check.

_WIRE_CASES = [
    # (require_client_auth, client, expected outcome, server sees x509_pem_cert)
    (False, "valid", "OK", False),
    (False, "none", "OK", False),
    (False, "expired", "OK", False),
    (False, "foreign", "OK", False),
    (True, "valid", "OK", True),
    (True, "none", "UNAVAILABLE", None),
    (True, "expired", "UNAVAILABLE", None),
    (True, "foreign", "UNAVAILABLE", None),
    (True, "revoked", "OK", True),
]


@pytest.fixture(scope="module")
def wire_ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pki.IssuedIdentity | None]:
    """Identities for the wire test; the federation lives in ``<server dir>/../fed``."""
    base = tmp_path_factory.mktemp("wire")
    fed = pki.init_federation(base / "fed", "acme")
    other = pki.init_federation(base / "other", "acme")
    ids: dict[str, pki.IssuedIdentity | None] = {
        "server": pki.issue(fed.directory, "node", "n1", base / "n1"),
        "valid": pki.issue(fed.directory, "analyst", "alice", base / "alice"),
        "none": None,
        "expired": pki.issue(
            fed.directory,
            "analyst",
            "old",
            base / "old",
            not_before=datetime.now(UTC) - timedelta(days=10),
            days=1,
        ),
        "foreign": pki.issue(other.directory, "analyst", "mallory", base / "mallory"),
        "revoked": pki.issue(fed.directory, "analyst", "bob", base / "bob"),
    }
    pki.revoke(fed.directory, name="bob")
    return ids


class _RecordingHealth(health.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, list[bytes]]] = []

    def Check(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.append(dict(context.auth_context()))
        return super().Check(request, context)


@pytest.mark.parametrize(("require", "client", "outcome", "server_sees_cert"), _WIRE_CASES)
def test_grpc_tls_client_certificates(
    wire_ids: dict[str, pki.IssuedIdentity | None],
    require: bool,
    client: str,
    outcome: str,
    server_sees_cert: bool | None,
) -> None:
    server_id = wire_ids["server"]
    assert server_id is not None
    ca = server_id.ca_cert.read_bytes()
    servicer = _RecordingHealth()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(server_id.tls_key.read_bytes(), server_id.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=require,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        ident = wire_ids[client]
        if ident is None:
            channel_creds = grpc.ssl_channel_credentials(root_certificates=ca)
        else:
            channel_creds = grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=ident.tls_key.read_bytes(),
                certificate_chain=ident.tls_cert.read_bytes(),
            )
        with grpc.secure_channel(f"localhost:{port}", channel_creds) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                got, details = "OK", ""
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError as e:
                got, details = e.code().name, e.details() or ""
    finally:
        server.stop(None)

    assert got == outcome, details
    if outcome != "OK":
        # the handshake failed: the client learns nothing beyond a closed socket
        assert details.startswith("failed to connect to all addresses"), details
        assert servicer.seen == []
        return
    [auth] = servicer.seen
    assert auth["transport_security_type"] == [b"ssl"]
    if server_sees_cert:
        assert ident is not None
        assert auth["x509_pem_cert"] == [ident.tls_cert.read_bytes()]
        assert auth["x509_subject"] == [f"CN={ident.name},OU={ident.role},O=acme".encode()]
        if client == "revoked":
            fed_dir = server_id.directory.parent / "fed"
            store = pki.TrustStore.load(fed_dir / "ca.crt", fed_dir / "crl.pem")
            with pytest.raises(Unauthenticated, match="was revoked"):
                store.identify(auth["x509_pem_cert"][0])
    else:
        assert "x509_pem_cert" not in auth


# --------------------------------------------------------------------------- interop: OID arcs


def _der_oids(der: bytes) -> list[tuple[int, ...]]:
    """Every OBJECT IDENTIFIER in ``der``, also inside OCTET/BIT STRINGs that hold DER."""
    out: list[tuple[int, ...]] = []

    def walk(buf: bytes) -> bool:
        i, found = 0, []
        while i < len(buf):
            if i + 2 > len(buf):
                return False
            tag, n = buf[i], buf[i + 1]
            i += 2
            if n & 0x80:
                k = n & 0x7F
                if k == 0 or k > 4 or i + k > len(buf):
                    return False
                n = int.from_bytes(buf[i : i + k], "big")
                i += k
            if i + n > len(buf):
                return False
            found.append((tag, buf[i : i + n]))
            i += n
        for tag, body in found:
            if tag == 0x06:
                arcs, v = [], 0
                for b in body:
                    v = (v << 7) | (b & 0x7F)
                    if not b & 0x80:
                        arcs.append(v)
                        v = 0
                first = min(arcs[0] // 40, 2)
                out.append((first, arcs[0] - 40 * first, *arcs[1:]))
            elif tag & 0x20:
                walk(body)
            elif tag == 0x04:
                walk(body)
            elif tag == 0x03 and body:
                walk(body[1:])
        return True

    walk(der)
    return out


@pytest.mark.parametrize("role", pki.ROLES)
def test_every_oid_arc_in_every_issued_certificate_fits_in_31_bits(
    fed: pki.Federation, tmp_path: Path, role: str
) -> None:
    # Go's crypto/x509 (and other TLS stacks) refuse a certificate with an OID arc >= 2**31.
    issued = pki.issue(
        fed.directory,
        role,
        f"{role}-arcs",
        tmp_path / "id",
        hosts=(("node.example", "127.0.0.1") if role == "node" else ()),
    )
    for path in (fed.ca_cert, issued.tls_cert):
        der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        oids = _der_oids(der)
        assert (2, 5, 29, 19) in oids  # the walker sees the extensions (basicConstraints)
        wide = [o for o in oids if any(a >= 2**31 for a in o)]
        assert not wide, f"{path.name}: OIDs with arcs over 31 bits: {wide}"


def _reissue_with_legacy_oid(fed: pki.Federation, cert_path: Path) -> x509.Certificate:
    """The certificate at ``cert_path`` as an earlier release wrote it: same key, legacy OID."""
    ca, ca_key = _ca(fed)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    b = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca.subject)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for e in cert.extensions:
        if e.oid == pki.SIGNING_KEY_OID:
            e = x509.Extension(
                pki.LEGACY_SIGNING_KEY_OID,
                e.critical,
                x509.UnrecognizedExtension(pki.LEGACY_SIGNING_KEY_OID, e.value.value),  # type: ignore[attr-defined]
            )
        b = b.add_extension(e.value, e.critical)
    legacy = b.sign(ca_key, hashes.SHA256())
    cert_path.write_bytes(legacy.public_bytes(serialization.Encoding.PEM))
    return legacy


def test_certificate_with_legacy_signing_key_oid_still_verifies_and_is_listed_for_reissue(
    tmp_path: Path,
) -> None:
    fed = pki.init_federation(tmp_path / "fed", "acme")
    issued = pki.issue(fed.directory, "analyst", "old-analyst", tmp_path / "id")
    pki.issue(fed.directory, "node", "new-node", tmp_path / "node")
    assert pki.legacy_certificates(fed.directory) == []
    legacy = _reissue_with_legacy_oid(fed, issued.tls_cert)
    _reissue_with_legacy_oid(fed, fed.directory / "issued" / f"{issued.serial:x}.crt")
    assert legacy.extensions.get_extension_for_oid(pki.LEGACY_SIGNING_KEY_OID)

    store = pki.TrustStore.load(fed.ca_cert)
    ident = store.identify(issued.tls_cert.read_bytes())
    local = pki.load_identity(tmp_path / "id")
    ident.verify(local.sign(b"job 1"), b"job 1")
    assert [c.serial_number for c in pki.legacy_certificates(fed.directory)] == [issued.serial]

    pki.revoke(fed.directory, name="old-analyst")
    assert pki.legacy_certificates(fed.directory) == []


def test_pki_check_names_legacy_certificates_and_the_command_that_reissues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from veil.node import cli

    fed = pki.init_federation(tmp_path / "fed", "acme")
    issued = pki.issue(fed.directory, "node", "old-node", tmp_path / "id")
    assert cli.main(["pki", "check", str(fed.directory)]) == 0
    assert "every valid certificate" in capsys.readouterr().out
    _reissue_with_legacy_oid(fed, fed.directory / "issued" / f"{issued.serial:x}.crt")
    assert cli.main(["pki", "check", str(fed.directory)]) == 1
    out = capsys.readouterr().out
    assert f"serial {issued.serial:#x}" in out and "CN=old-node" in out
    assert pki.LEGACY_SIGNING_KEY_OID.dotted_string in out and "veil pki issue" in out


def test_revoke_by_serial_when_a_name_has_two_certificates(tmp_path: Path) -> None:
    """`veil pki check` advises revoking the old certificate after a reissue; by name that is
    ambiguous (two valid certificates), so the CLI revokes by serial."""
    from tests.conftest import run_cli

    fed = pki.init_federation(tmp_path / "fed", "acme")
    old = pki.issue(fed.directory, "analyst", "ana", tmp_path / "old")
    pki.issue(fed.directory, "analyst", "ana", tmp_path / "new")
    by_name = run_cli("pki", "revoke", str(fed.directory), "--name", "ana")
    assert by_name.returncode == 1
    neither = run_cli("pki", "revoke", str(fed.directory))
    assert neither.returncode == 1 and "--name NAME or --serial SERIAL" in neither.stderr
    r = run_cli("pki", "revoke", str(fed.directory), "--serial", f"{old.serial:#x}")
    assert r.returncode == 0, r.stderr
    crl = x509.load_pem_x509_crl(fed.crl.read_bytes())
    assert [e.serial_number for e in crl] == [old.serial]

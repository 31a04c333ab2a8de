"""The node over the wire: real servers on loopback, real mTLS, every refusal's exact status.

What a client actually sees (the README's table says the same):
- no client certificate, an expired one, or one from another federation's CA: the TLS
  handshake fails, grpcio reports UNAVAILABLE (the node requires a client certificate
  at the handshake; the SDK adds a hint);
- a revoked certificate: UNAUTHENTICATED, naming the serial;
- a role not allowed for the method: PERMISSION_DENIED, naming the allowed roles;
- a garbage or truncated request body: INVALID_ARGUMENT "malformed veil.v1.… message".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from veil.node import pki
from veil.node.client import Client
from veil.node.errors import InvalidInput, PolicyDenied, RemoteError, Unauthenticated
from veil.node.server import RunningNode, start
from tests.conftest import Federation, ServeProcess, make_node, run_cli


def _channel(running: RunningNode, identity: Path | None, ca: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=(identity / "tls.key").read_bytes() if identity else None,
        certificate_chain=(identity / "tls.crt").read_bytes() if identity else None,
    )
    return grpc.secure_channel(running.address, creds)


def _get_info(channel: grpc.Channel) -> grpc.RpcError:
    call = channel.unary_unary("/veil.v1.NodeService/GetInfo")
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=10)
    return info.value


def test_catalog_shows_schema_levels_rows_and_receipt_but_no_values(client_for) -> None:
    analyst = client_for("analyst", "alice")
    [ds] = analyst.datasets()
    assert (ds.name, ds.version, ds.rows, ds.key_column) == ("customers", 1, 60, "customer_id")
    assert ds.levels() == {
        "customer_id": "sensitive", "region": "public", "age_band": "internal",
        "amount": "sensitive", "phone": "sensitive", "national_id": "core",
    }
    # the receipt is signed and verifiable from the node's certificate alone
    from veil.node.catalog import verify_receipt

    node_ident = pki.TrustStore.load(analyst.identity.ca_cert).identify(
        analyst.info().certificate_pem.encode()
    )
    body = verify_receipt(ds.receipt, ds.signature, node_ident.signing_key)
    assert body["sha256"] == ds.sha256 and body["rows"] == 60
    # no value of the dataset appears anywhere in what the catalog sends
    raw = analyst.channel.unary_unary("/veil.v1.CatalogService/ListDatasets")(b"", timeout=10)
    for value in (b"north", b"c00001", b"13800000001", b"ID0000000001"):
        assert value not in raw


def test_every_response_carries_a_receipt(client_for) -> None:
    analyst = client_for("analyst", "alice")
    analyst.info()
    first = analyst.last_receipt
    analyst.datasets()
    second = analyst.last_receipt
    assert first is not None and second is not None
    assert second.log_index > first.log_index
    assert "veil.testfed/bank-a" in second.checkpoint


def test_info_names_the_caller(client_for) -> None:
    info = client_for("auditor", "audrey").info()
    assert (info.name, info.federation, info.caller_role, info.caller_name) == (
        "bank-a", "testfed", "auditor", "audrey")


def test_wrong_role_is_permission_denied(client_for) -> None:
    analyst = client_for("analyst", "alice")
    with pytest.raises(PolicyDenied, match="role 'analyst' may not call .*GetCheckpoint.*auditor"):
        analyst.checkpoint()
    receipt = analyst.last_receipt
    assert receipt is not None
    # the denial was logged: the entry at the receipt's index is this call, refused
    auditor = client_for("auditor", "audrey")
    [(index, data)] = list(auditor.entries(receipt.log_index, receipt.log_index + 1))
    entry = json.loads(data)
    assert index == receipt.log_index
    assert entry["method"] == "/veil.v1.AuditService/GetCheckpoint"
    assert entry["status"] == "PERMISSION_DENIED"
    assert (entry["caller"]["role"], entry["caller"]["name"]) == ("analyst", "alice")
    assert "may not call" in entry["message"]


def test_no_client_certificate_fails_the_handshake(running: RunningNode, federation: Federation) -> None:
    err = _get_info(_channel(running, None, federation.dir / "ca.crt"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_federation_fails_the_handshake(
    running: RunningNode, federation: Federation, foreign_federation: Federation
) -> None:
    stranger = foreign_federation.identity("analyst", "eve")
    err = _get_info(_channel(running, stranger, federation.dir / "ca.crt"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_fails_the_handshake(running: RunningNode, federation: Federation) -> None:
    old = federation.identity(
        "analyst", "expired", days=1, not_before=datetime.now(UTC) - timedelta(days=3)
    )
    err = _get_info(_channel(running, old, federation.dir / "ca.crt"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # the SDK says why before it even connects
    with pytest.raises(Unauthenticated, match="your certificate .* expired on"):
        Client(running.address, old)


def test_revoked_certificate_is_unauthenticated(running: RunningNode, federation: Federation) -> None:
    # its own name: revoking a suite-wide identity would break any test that runs after it
    who = federation.identity("analyst", "revoked-rita")
    with Client(running.address, who) as c:
        c.info()  # works before revocation
        serial = pki.revoke(federation.dir, name="revoked-rita")
        with pytest.raises(Unauthenticated, match=f"{serial:#x}.*revoked|revoked.*{serial:#x}"):
            c.info()


def test_garbage_request_is_invalid_argument_and_logged(client_for) -> None:
    analyst = client_for("analyst", "alice")
    call = analyst.channel.unary_unary("/veil.v1.CatalogService/GetDataset")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed veil.v1.GetDatasetRequest message" in info.value.details()
    trailers = dict(info.value.trailing_metadata())
    assert "veil-log-index" in trailers
    # a truncated, otherwise valid message: field 1 says 10 bytes follow, 2 do
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\x0acu", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_dataset_is_not_found_naming_what_exists(client_for) -> None:
    from veil.node.errors import NotFound

    with pytest.raises(NotFound, match="no dataset named 'nope'.*customers"):
        client_for("analyst", "alice").dataset("nope")


def test_health_and_reflection_are_served(running: RunningNode, federation: Federation) -> None:
    channel = _channel(running, federation.identity("auditor", "audrey"), federation.dir / "ca.crt")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "veil.v1.CatalogService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [resp] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=10))
    names = {s.name for s in resp.list_services_response.service}
    assert {"veil.v1.CatalogService", "veil.v1.AuditService", "grpc.health.v1.Health"} <= names


def test_port_in_use_is_refused_clearly(running: RunningNode, federation: Federation, tmp_path: Path) -> None:
    other = make_node(federation, tmp_path, "bank-b")
    from veil.node.errors import ConfigError

    with pytest.raises(ConfigError, match=f"cannot listen on {running.address}"):
        start(other.path, running.address)
    result = run_cli("node", "serve", str(other.path), "--listen", running.address)
    assert result.returncode == 1
    assert f"cannot listen on {running.address}" in result.stderr


def test_client_refuses_address_without_port(federation: Federation) -> None:
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        Client("localhost", federation.identity("analyst", "alice"))


def test_unreachable_node_says_so(federation: Federation) -> None:
    with Client("127.0.0.1:1", federation.identity("analyst", "alice"), timeout=3) as c:
        with pytest.raises(RemoteError, match="UNAVAILABLE.*is the node running"):
            c.info()


@pytest.mark.slow
def test_sigterm_shuts_down_gracefully_and_logs_it(node_home, federation: Federation) -> None:
    proc = ServeProcess(node_home.path)
    with Client(proc.address, federation.identity("analyst", "alice")) as c:
        assert c.datasets()[0].name == "customers"
    code, out, err = proc.terminate()
    assert code == 0, err
    assert "stopped" in out
    from veil.node.auditor import LocalLog, read_entries, LogFilter

    events = [r.get("event") for _, r in read_entries(LocalLog(node_home.path), LogFilter())]
    assert events[-1] == "node.stopped"
    assert "node.started" in events


def test_a_changed_node_toml_is_logged_at_the_next_start(node_home) -> None:
    from veil.node.auditor import LocalLog, LogFilter, read_entries

    def events() -> list[tuple[str, dict]]:
        return [(r["event"], r["details"]) for _, r in
                read_entries(LocalLog(node_home.path), LogFilter()) if r["kind"] == "event"]

    start(node_home.path, "127.0.0.1:0").stop(grace=0)
    start(node_home.path, "127.0.0.1:0").stop(grace=0)
    assert [e for e, _ in events()].count("policy.changed") == 0
    toml = node_home.config_path.read_text().replace("min_group_size = 10", "min_group_size = 20")
    node_home.config_path.write_text(toml)
    start(node_home.path, "127.0.0.1:0").stop(grace=0)
    changed = [d for e, d in events() if e == "policy.changed"]
    assert len(changed) == 1
    assert changed[0]["config_sha256"] != changed[0]["previous_sha256"]
    started = [d for e, d in events() if e == "node.started"]
    assert started[-1]["config_sha256"] == changed[0]["config_sha256"]

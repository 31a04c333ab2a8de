"""The one channel factory and the peer check (a peer is its certificate, not its address)."""

from __future__ import annotations

import pytest

from veil.node import federation, pki
from veil.node.client import Client
from veil.node.errors import InvalidInput, PolicyDenied


def test_the_sdk_connects_through_the_factory(client_for) -> None:  # type: ignore[no-untyped-def]
    assert client_for("auditor", "audrey").info().caller_role == "auditor"


def test_an_address_without_a_port_is_refused(federation_dir=None) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        federation.channel("localhost", None)  # type: ignore[arg-type]


def test_a_peer_is_a_node_certificate_with_the_jobs_name(federation: object, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fed = federation  # conftest's Federation
    bank_b = pki.load_identity(fed.identity("node", "bank-b")).identity  # type: ignore[attr-defined]
    alice = pki.load_identity(fed.identity("analyst", "alice")).identity  # type: ignore[attr-defined]
    federation_mod = __import__("veil.node.federation", fromlist=["check_peer"])
    federation_mod.check_peer(bank_b, "bank-b")
    with pytest.raises(PolicyDenied, match="certificate names node 'bank-b'"):
        federation_mod.check_peer(bank_b, "bank-c")
    with pytest.raises(PolicyDenied, match="the caller is a analyst"):
        federation_mod.check_peer(alice, "bank-b")
    assert Client  # the SDK's Client uses federation.channel

"""The one channel factory and the peer check (a peer is its certificate, not its address)."""

from __future__ import annotations

import pytest

from veil.node import federation as fed
from veil.node import pki
from veil.node.errors import InvalidInput, PolicyDenied
from tests.conftest import Federation


def test_the_sdk_connects_through_the_factory(client_for) -> None:  # type: ignore[no-untyped-def]
    assert client_for("auditor", "audrey").info().caller_role == "auditor"


def test_an_address_without_a_port_is_refused(federation: Federation) -> None:
    me = pki.load_identity(federation.identity("analyst", "alice"))
    with pytest.raises(InvalidInput, match="HOST:PORT, got 'localhost'"):
        fed.channel("localhost", me)


def test_a_peer_is_a_node_certificate_with_the_jobs_name(federation: Federation) -> None:
    bank_b = pki.load_identity(federation.identity("node", "bank-b")).identity
    alice = pki.load_identity(federation.identity("analyst", "alice")).identity
    fed.check_peer(bank_b, "bank-b")
    with pytest.raises(PolicyDenied, match="certificate names node 'bank-b'"):
        fed.check_peer(bank_b, "bank-c")
    with pytest.raises(PolicyDenied, match="certificate is for analyst 'alice', not a node"):
        fed.check_peer(alice, "bank-b")

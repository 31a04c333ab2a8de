"""Talking to nodes: the one mTLS channel factory, and who a peer is.

The SDK's :class:`~veil.node.client.Client` and node-to-node calls (sums, PSI) open their
channels here, so every connection of the federation is made one way: the caller's own
certificate and key, the federation CA as the only root, the same message limits. A peer is
identified by its certificate, never by its address: :func:`check_peer` accepts only a
``node`` certificate with the name the job gives.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from veil.node import bounds, pki
from veil.node.errors import InvalidInput, PolicyDenied, Unauthenticated, VeilError



def channel(address: str, identity: pki.LocalIdentity, node: str | None = None) -> grpc.Channel:
    """An mTLS channel to ``address`` (HOST:PORT) authenticated as ``identity``.

    With ``node``, the TLS handshake also checks that the server's certificate is node
    ``node``'s (it names ``<node>.nodes.veil``, see ``pki.node_host``), so an address that
    points at another node of the federation fails to connect rather than answer for it.
    """
    if ":" not in address:
        raise InvalidInput(f"node address must be HOST:PORT, got {address!r}")
    expires = identity.identity.not_after
    if expires <= datetime.now(UTC):
        # the node would only drop the handshake; say why here instead
        raise Unauthenticated(
            f"your certificate ({identity.directory}) expired on "
            f"{expires:%Y-%m-%d %H:%M} UTC; ask the federation operator for a new one"
        )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=identity.read_ca_cert(),
        private_key=identity.read_tls_key(),
        certificate_chain=identity.read_tls_cert(),
    )
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", bounds.GRPC_MAX_RECEIVE),
        ("grpc.max_send_message_length", bounds.GRPC_MAX_RECEIVE),
    ]
    if node is not None:
        options.append(("grpc.ssl_target_name_override", pki.node_host(node)))
    return grpc.secure_channel(address, credentials, options=options)


def wrong_node(exc: grpc.RpcError, address: str, node: str) -> VeilError | None:
    """The clear error for a handshake that found another node's certificate at ``address``."""
    details = exc.details() or ""  # type: ignore[attr-defined]
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "hostname verification" in details.lower():  # type: ignore[attr-defined]
        return PolicyDenied(
            f"the node at {address} is not {node!r}: its certificate does not name it "
            "(a peer is identified by its certificate, not its address); check the address"
        )
    return None


def check_peer(peer: pki.Identity, expected_node: str) -> None:
    """A peer for a job's part is a ``node`` certificate with exactly the job's node name."""
    if peer.role != "node":
        raise PolicyDenied(
            f"expected node {expected_node!r}, but the caller's certificate is for "
            f"{peer.role} {peer.name!r}, not a node"
        )
    if peer.name != expected_node:
        raise PolicyDenied(
            f"expected node {expected_node!r}, but the caller's certificate names node "
            f"{peer.name!r}: a peer is identified by its certificate, not its address"
        )

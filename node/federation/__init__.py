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
from veil.node.errors import InvalidInput, PolicyDenied, Unauthenticated



def channel(address: str, identity: pki.LocalIdentity) -> grpc.Channel:
    """An mTLS channel to ``address`` (HOST:PORT) authenticated as ``identity``."""
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
    return grpc.secure_channel(
        address,
        credentials,
        options=[
            ("grpc.max_receive_message_length", bounds.GRPC_MAX_RECEIVE),
            ("grpc.max_send_message_length", bounds.GRPC_MAX_RECEIVE),
        ],
    )


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

"""The client SDK: everything the CLI does, for notebooks and scripts.

    from node.client import Client
    with Client("127.0.0.1:7400", identity="~/veil/alice") as node:
        for ds in node.datasets():
            print(ds.name, ds.version, ds.rows, ds.levels())
        print(node.last_receipt)          # where the call landed in the node's log

Every call returns plain dataclasses; the receipt of the last call (its log index
and the signed checkpoint covering it) is in ``last_receipt``. A refusal raises a
:class:`node.errors.VeilError` subclass whose message is the node's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from veil.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)

from node import pki
from node._convert import dataset_version_from_proto
from node._rpc import TRAILER_CHECKPOINT, TRAILER_INDEX
from node.catalog import DatasetVersion
from node.errors import InvalidInput, VeilError, remote_error

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class CallReceipt:
    """Where a call landed in the node's log; `veil audit prove` verifies it."""

    node: str
    log_index: int
    checkpoint: str  # signed note

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "log_index": self.log_index, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class NodeInfo:
    name: str
    federation: str
    version: str
    certificate_pem: str
    log_vkey: str
    log_origin: str
    job_kinds: tuple[str, ...]
    caller_role: str
    caller_name: str


class Client:
    """A connection to one node, authenticated with a federation identity directory."""

    def __init__(
        self,
        address: str,
        identity: Path | str | pki.LocalIdentity,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if ":" not in address:
            raise InvalidInput(f"node address must be HOST:PORT, got {address!r}")
        self.address = address
        self.identity = (
            identity
            if isinstance(identity, pki.LocalIdentity)
            else pki.load_identity(Path(identity).expanduser())
        )
        self.timeout = timeout
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.identity.read_ca_cert(),
            private_key=self.identity.read_tls_key(),
            certificate_chain=self.identity.read_tls_cert(),
        )
        self._channel = grpc.secure_channel(
            address,
            credentials,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        self._node = node_pb2_grpc.NodeServiceStub(self._channel)
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self.last_receipt: CallReceipt | None = None

    # -- plumbing ----------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def _receipt(self, trailers: Any) -> None:
        meta = dict(trailers or ())
        if TRAILER_INDEX in meta:
            checkpoint = meta.get(TRAILER_CHECKPOINT, b"")
            self.last_receipt = CallReceipt(
                self.address,
                int(meta[TRAILER_INDEX]),
                checkpoint.decode() if isinstance(checkpoint, bytes) else checkpoint,
            )

    def _error(self, exc: grpc.RpcError) -> VeilError:
        self._receipt(exc.trailing_metadata())  # type: ignore[attr-defined]
        code = exc.code()  # type: ignore[attr-defined]
        return remote_error(code.name, exc.details() or "", self.address)  # type: ignore[attr-defined]

    def call(self, method: Any, request: Any) -> Any:
        """Make one unary call; keep its receipt; turn a refusal into a VeilError."""
        self.last_receipt = None
        try:
            response, rpc = method.with_call(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        self._receipt(rpc.trailing_metadata())
        return response

    def stream(self, method: Any, request: Any) -> Iterator[Any]:
        self.last_receipt = None
        responses = method(request, timeout=None)
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        self._receipt(responses.trailing_metadata())

    # -- node and catalog ----------------------------------------------------------

    def info(self) -> NodeInfo:
        r = self.call(self._node.GetInfo, node_pb2.GetInfoRequest())
        return NodeInfo(
            r.name, r.federation, r.version, r.certificate_pem, r.log_vkey, r.log_origin,
            tuple(r.job_kinds), r.caller_role, r.caller_name,
        )

    def datasets(self) -> list[DatasetVersion]:
        """Every version of every dataset: names, schemas, levels, row counts, receipts."""
        r = self.call(self._catalog.ListDatasets, catalog_pb2.ListDatasetsRequest())
        return [dataset_version_from_proto(d.name, v) for d in r.datasets for v in d.versions]

    def dataset(self, name: str) -> list[DatasetVersion]:
        r = self.call(self._catalog.GetDataset, catalog_pb2.GetDatasetRequest(name=name))
        return [dataset_version_from_proto(r.name, v) for v in r.versions]

    def dataset_receipts(self) -> list[tuple[DatasetVersion, str]]:
        """Each dataset version with the PEM certificate of the node that signed it."""
        r = self.call(self._catalog.ListDatasets, catalog_pb2.ListDatasetsRequest())
        return [
            (dataset_version_from_proto(d.name, v), v.receipt.signer_certificate_pem)
            for d in r.datasets
            for v in d.versions
        ]

    # -- audit -------------------------------------------------------------------

    def checkpoint(self) -> tuple[int, str]:
        r = self.call(self._audit.GetCheckpoint, audit_pb2.GetCheckpointRequest())
        return r.size, r.note

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        for batch in self.stream(
            self._audit.GetEntries, audit_pb2.GetEntriesRequest(start=start, end=end)
        ):
            for e in batch.entries:
                yield e.index, e.data

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        r = self.call(
            self._audit.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size),
        )
        return list(r.hashes)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        r = self.call(
            self._audit.GetConsistencyProof,
            audit_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=new_size),
        )
        return list(r.hashes)

"""CatalogService: the node's datasets, versions, schemas and registration receipts; no values."""

from __future__ import annotations

from collections.abc import Mapping

from veil.v1 import catalog_pb2

from veil.node import catalog
from veil.node._convert import dataset_version_to_proto
from veil.node._rpc import Call, Rpc
from veil.node.context import NodeContext
from veil.node.errors import NotFound
from veil.node.services._roles import ANY_ROLE

SERVICE = "veil.v1.CatalogService"


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    def list_datasets(
        _req: catalog_pb2.ListDatasetsRequest, _call: Call
    ) -> catalog_pb2.ListDatasetsResponse:
        pem = ctx.cert_pem
        with ctx.lock:
            versions = catalog.all_versions(ctx.conn)
        return catalog_pb2.ListDatasetsResponse(
            datasets=[
                catalog_pb2.Dataset(
                    name=name, versions=[dataset_version_to_proto(v, pem) for v in vs]
                )
                for name, vs in versions.items()
            ]
        )

    def get_dataset(req: catalog_pb2.GetDatasetRequest, _call: Call) -> catalog_pb2.Dataset:
        pem = ctx.cert_pem
        with ctx.lock:
            versions = catalog.all_versions(ctx.conn).get(req.name)
            if versions is None:
                catalog.current(ctx.conn, req.name)  # raises NotFound naming what exists
                raise NotFound(req.name)
        return catalog_pb2.Dataset(
            name=req.name, versions=[dataset_version_to_proto(v, pem) for v in versions]
        )

    return {
        "ListDatasets": Rpc(ANY_ROLE, list_datasets),
        "GetDataset": Rpc(ANY_ROLE, get_dataset),
    }

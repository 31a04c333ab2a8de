"""Conversions between Veil's dataclasses and veil.v1 messages, at the boundary only."""

from __future__ import annotations

from collections.abc import Mapping

from veil.v1 import catalog_pb2, common_pb2

from node.catalog import ColumnInfo, DatasetVersion

LEVEL_TO_PROTO = {
    "public": common_pb2.LEVEL_PUBLIC,
    "internal": common_pb2.LEVEL_INTERNAL,
    "sensitive": common_pb2.LEVEL_SENSITIVE,
    "core": common_pb2.LEVEL_CORE,
}
LEVEL_FROM_PROTO = {v: k for k, v in LEVEL_TO_PROTO.items()}
METER_NAMES = ("runs", "rows_scanned", "result_rows", "items", "ciphertexts", "cpu_ms", "bytes_out")


def dataset_version_to_proto(ds: DatasetVersion, node_cert_pem: str) -> catalog_pb2.DatasetVersion:
    return catalog_pb2.DatasetVersion(
        version=ds.version,
        sha256=ds.sha256,
        rows=ds.rows,
        columns=[
            catalog_pb2.Column(name=c.name, type=c.type, level=LEVEL_TO_PROTO[c.level])
            for c in ds.columns
        ],
        key_column=ds.key_column,
        registered_at=ds.registered_at,
        receipt=catalog_pb2.SignedReceipt(
            body=ds.receipt, signature=ds.signature, signer_certificate_pem=node_cert_pem
        ),
    )


def dataset_version_from_proto(name: str, v: catalog_pb2.DatasetVersion) -> DatasetVersion:
    return DatasetVersion(
        name=name,
        version=v.version,
        sha256=v.sha256,
        rows=v.rows,
        columns=tuple(ColumnInfo(c.name, c.type, LEVEL_FROM_PROTO[c.level]) for c in v.columns),
        key_column=v.key_column,
        registered_at=v.registered_at,
        receipt=v.receipt.body,
        signature=v.receipt.signature,
        log_index=-1,
    )


def meters_to_proto(meters: Mapping[str, int]) -> common_pb2.Meters:
    return common_pb2.Meters(**{k: int(meters.get(k, 0)) for k in METER_NAMES})


def meters_from_proto(m: common_pb2.Meters) -> dict[str, int]:
    return {k: int(getattr(m, k)) for k in METER_NAMES}

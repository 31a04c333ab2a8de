"""Conversions between Veil's dataclasses and veil.v1 messages, at the boundary only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from veil.v1 import catalog_pb2, common_pb2, jobs_pb2, query_pb2

from veil.node.catalog import ColumnInfo, DatasetVersion
from veil.node.jobs import format_time

if TYPE_CHECKING:
    from veil import sandbox
    from veil.node.config import NodeConfig
    from veil.node.grants import JobView

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


def job_to_proto(view: "JobView", config: "NodeConfig",
                 dp_lines: Sequence[str] = ()) -> jobs_pb2.Job:
    """A job as approvers and analysts see it, with the dry-run estimate as JSON (and its
    differential-privacy lines, which the job's kind computes against this node's data)."""
    est = view.estimate(config)
    return jobs_pb2.Job(
        job_id=view.id,
        analyst=view.spec.analyst,
        kind=view.spec.kind,
        purpose=view.spec.purpose,
        state=view.state,
        canonical=view.signed.canonical,
        required_roles=sorted(view.required),
        missing_roles=sorted(view.status.missing),
        approvals=[
            jobs_pb2.Approval(
                approver=d.approver, role=d.role, decision=d.decision, reason=d.reason,
                time=format_time(d.time),
            )
            for d in view.decisions
        ],
        quota=common_pb2.Meters(
            runs=view.quota.runs or 0,
            rows_scanned=view.quota.rows_scanned or 0,
            items=view.quota.items or 0,
        ),
        used=meters_to_proto(view.used.to_dict()),
        expires=format_time(view.spec.expires),
        revoked_reason=view.revoked or "",
        estimate_json=json.dumps(
            {"lines": [*est.lines(), *dp_lines], "rows_total": est.rows_total, "max_level": est.max_level,
             "max_price": str(est.max_price), "currency": est.currency,
             "dataset": view.dataset.ref},
            ensure_ascii=False,
        ),
    )


def query_result_to_proto(result: "sandbox.QueryResult", datasets: list[str]) -> query_pb2.QueryResult:
    """Columns travel as typed arrays with a null mask; numbers stay exact where they are ints."""
    out = query_pb2.QueryResult(
        rows=result.meters.result_rows,
        suppressed_groups=result.suppressed_groups,
        meters=meters_to_proto({"runs": 1, **_sandbox_meters(result)}),
        result_sha256=result.digest,
        dataset_versions=datasets,
    )
    for name, type_ in zip(result.columns, result.types):
        values = result.arrays[name]
        col = out.columns.add(name=name, type=type_)
        nulls = [v is None or (isinstance(v, float) and v != v) for v in values.tolist()]
        # a masked array's NULLs come out of tolist() as None; they travel as 0 plus the mask
        if np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.bool_):
            col.ints.extend(0 if v is None else int(v) for v in values.tolist())
        elif np.issubdtype(values.dtype, np.floating):
            col.doubles.extend(0.0 if v is None else float(v) for v in values.tolist())
        else:
            items = values.tolist()
            if all(v is None or isinstance(v, int) and not isinstance(v, bool) for v in items):
                col.ints.extend(0 if v is None else v for v in items)
            elif all(v is None or isinstance(v, (int, float)) for v in items):
                col.doubles.extend(0.0 if v is None else float(v) for v in items)
            else:
                col.strings.extend("" if v is None else str(v) for v in items)
        if any(nulls):
            col.nulls.extend(nulls)
    return out


def _sandbox_meters(result: "sandbox.QueryResult") -> dict[str, int]:
    m = result.meters
    return {"rows_scanned": m.rows_scanned, "result_rows": m.result_rows, "cpu_ms": m.cpu_ms,
            "bytes_out": m.bytes_out}


def query_result_from_proto(r: query_pb2.QueryResult) -> dict[str, np.ndarray]:
    """Columns as numpy arrays (NULLs: NaN for floats, a masked-out None for the rest)."""
    arrays: dict[str, np.ndarray] = {}
    for col in r.columns:
        if col.doubles:
            arr = np.array(col.doubles, dtype=np.float64)
            if col.nulls:
                arr[np.array(col.nulls)] = np.nan
        elif col.ints:
            arr = np.array(col.ints, dtype=np.int64)
            if col.nulls and any(col.nulls):
                arr = np.array([None if n else v for v, n in zip(col.ints, col.nulls)], dtype=object)
        else:
            arr = np.array([None if col.nulls and col.nulls[i] else v
                            for i, v in enumerate(col.strings)], dtype=object)
        arrays[col.name] = arr
    return arrays

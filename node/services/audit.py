"""AuditService: checkpoints, entries and proofs, for auditors only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from veil.v1 import audit_pb2

from veil.node import bounds
from veil.node._rpc import Call, Rpc
from veil.node.context import NodeContext
from veil.node.errors import InvalidInput
from veil.node.log import Log
from veil.node.services._roles import AUDITOR

SERVICE = "veil.v1.AuditService"
ENTRY_BATCH_BYTES = bounds.ENTRY_BATCH_BYTES


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    log = ctx.log

    def get_checkpoint(_req: audit_pb2.GetCheckpointRequest, _call: Call) -> audit_pb2.Checkpoint:
        size, note = log.latest_checkpoint()
        return audit_pb2.Checkpoint(note=note, size=size)

    def get_entries(req: audit_pb2.GetEntriesRequest, call: Call) -> Iterator[audit_pb2.LogEntries]:
        size = log.size()
        end = req.end or size
        if req.start > end:
            raise InvalidInput(f"start {req.start} is past end {end}")
        if end > size:
            raise InvalidInput(f"end {end} is past the latest checkpoint's size {size}")
        call.details = {"start": req.start, "end": end}
        return _entry_batches(log, req.start, end)

    def get_inclusion_proof(
        req: audit_pb2.GetInclusionProofRequest, _call: Call
    ) -> audit_pb2.Proof:
        size = req.tree_size or log.size()
        if req.index >= size:
            raise InvalidInput(f"index {req.index} is past the tree size {size}")
        return audit_pb2.Proof(tree_size=size, hashes=log.inclusion_proof(req.index, size))

    def get_consistency_proof(
        req: audit_pb2.GetConsistencyProofRequest, _call: Call
    ) -> audit_pb2.Proof:
        size = req.new_size or log.size()
        if req.old_size > size:
            raise InvalidInput(f"old size {req.old_size} is larger than new size {size}")
        return audit_pb2.Proof(tree_size=size, hashes=log.consistency_proof(req.old_size, size))

    return {
        "GetCheckpoint": Rpc(AUDITOR, get_checkpoint),
        "GetEntries": Rpc(AUDITOR, get_entries),
        "GetInclusionProof": Rpc(AUDITOR, get_inclusion_proof),
        "GetConsistencyProof": Rpc(AUDITOR, get_consistency_proof),
    }


def _entry_batches(log: Log, start: int, end: int) -> Iterator[audit_pb2.LogEntries]:
    batch = audit_pb2.LogEntries()
    size = 0
    for i, data in log.entries(start, end):
        batch.entries.add(index=i, data=data)
        size += len(data)
        if size >= ENTRY_BATCH_BYTES:
            yield batch
            batch, size = audit_pb2.LogEntries(), 0
    if batch.entries:
        yield batch

"""The job kinds this node can run: one module per kind behind one protocol.

A kind validates a job's parameters against this node's data and policy at submission
(so approvers only ever see a job the node could run), estimates it for the dry run,
runs this node's part of one call under a grant, and replays a logged call for an
auditor. The gate charges what ``run`` returns; a kind never charges itself.

The job *language* (``veil.node.jobs``) knows more kinds than a node may run: a job of a
kind this node has no module for is refused at submission with UNIMPLEMENTED, and
``NodeInfo.job_kinds`` lists exactly :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from veil.node.errors import Unimplemented
from veil.node.jobs import DP_KINDS, KINDS

if TYPE_CHECKING:
    import sqlite3

    from veil import sandbox
    from veil.node._rpc import Call
    from veil.node.catalog import DatasetVersion
    from veil.node.config import NodeConfig
    from veil.node.context import NodeContext
    from veil.node.grants import Grant
    from veil.node.home import NodeHome
    from veil.node.jobs import JobSpec


class JobKind(Protocol):
    #: the kind's name in job specs, one of ``veil.node.jobs.KINDS``
    name: str
    #: the full gRPC method that runs one call of this kind
    method: str

    def validate(self, spec: JobSpec, dataset: DatasetVersion, config: NodeConfig,
                 snapshots: Path) -> None:
        """Refuse, at submission, a job this node could not run (before any approval)."""

    def run(self, ctx: NodeContext, request: Any, call: Call, grant: Grant) -> Any:
        """This node's part of one call, under ``grant``: an :class:`Outcome`, or for a
        streaming method a generator of interim messages that returns one; the gate logs
        and charges it."""

    def replay(self, conn: sqlite3.Connection, home: NodeHome, index: int,
               record: Mapping[str, Any], workers: sandbox.Workers) -> Replayed:
        """Re-run the logged call at ``index`` from the node's state, in ``workers`` under
        the node's limits; compare digests."""


class DpKind(JobKind, Protocol):
    """A kind that can run under differential privacy (``veil.node.jobs.DP_KINDS``)."""

    def dp_estimate(self, ctx: NodeContext, view: Any) -> list[str]:
        """The dry run's differential-privacy lines for a job of this kind with ``[dp]``:
        what a run spends, what the analyst has left, the error of each measurement."""


@dataclass(frozen=True)
class Replayed:
    """One replayed call: the digest the log holds and the one the replay produced."""

    index: int
    job: str
    logged: str
    replayed: str

    @property
    def ok(self) -> bool:
        return self.logged == self.replayed


def peer_receipt(trailing_metadata: Any) -> Any:
    """A peer's receipt for its part of a run (a ``common_pb2.Receipt``), read from the
    trailers of its answer, as the gate set them."""
    from veil.v1 import common_pb2

    from veil.node._rpc import TRAILER_CHECKPOINT, TRAILER_INDEX

    meta = dict(trailing_metadata or ())
    checkpoint = meta.get(TRAILER_CHECKPOINT, b"")
    return common_pb2.Receipt(
        log_index=int(meta.get(TRAILER_INDEX, 0)),
        checkpoint=checkpoint.decode() if isinstance(checkpoint, bytes) else checkpoint)


def _registry() -> Mapping[str, JobKind]:
    from veil.node.kinds.psi import INTERSECTION_SUM, PSI
    from veil.node.kinds.query import QUERY
    from veil.node.kinds.sum import SUM

    kinds: tuple[JobKind, ...] = (QUERY, SUM, PSI, INTERSECTION_SUM)
    for k in kinds:
        assert k.name in KINDS, f"kind module {k.name!r} is not a kind of the job language"
        assert hasattr(k, "dp_estimate") == (k.name in DP_KINDS), \
            f"kind module {k.name!r}: differential privacy support disagrees with DP_KINDS"
    return MappingProxyType({k.name: k for k in kinds})


REGISTRY: Mapping[str, JobKind] = _registry()


def get(name: str) -> JobKind:
    """The module for kind ``name``; UNIMPLEMENTED for a kind of the language it lacks."""
    kind = REGISTRY.get(name)
    if kind is None:
        raise Unimplemented(
            f"this node does not run {name} jobs yet (it runs: {', '.join(REGISTRY)}); "
            "submit the job to nodes that do"
        )
    return kind


def dp_kind(name: str) -> DpKind:
    """The module of a kind that runs under differential privacy."""
    kind = get(name)
    if not hasattr(kind, "dp_estimate"):
        raise Unimplemented(f"{name} jobs cannot run under differential privacy at this node")
    return kind  # type: ignore[return-value]


def by_method(method: str) -> JobKind | None:
    """The kind whose call (or a node's part of it) was logged as ``method``."""
    for k in REGISTRY.values():
        # a kind whose part also runs on a peer's call (a sum's ContributeSum) replays that too
        if method == k.method or method in getattr(k, "peer_methods", ()):
            return k
    return None


def replay(node_dir: Path, start: int = 0) -> list[Replayed]:
    """Re-run every logged successful compute call from ``start`` on, against the exact
    dataset version and policy it used, with the kind that ran it; compare result digests."""
    from veil import sandbox
    from veil.node import state
    from veil.node.auditor import LocalLog, check_entry
    from veil.node.home import NodeHome

    home = NodeHome(node_dir)
    source = LocalLog(node_dir)
    conn = state.connect(home.state_path, readonly=True)
    out = []
    workers = sandbox.Workers(1)
    try:
        size = int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_entries").fetchone()[0])
        for index, data in source.entries(start, size):
            record = check_entry(index, data)
            kind = by_method(str(record.get("method", "")))
            if kind is None or record.get("status") != "OK":
                continue
            out.append(kind.replay(conn, home, index, record, workers))
    finally:
        workers.close()
        conn.close()
    return out

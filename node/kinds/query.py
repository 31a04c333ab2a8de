"""The ``query`` kind: one analyst's SQL over this node's dataset, through the sandbox."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from veil.node import queries
from veil.node._convert import query_result_to_proto
from veil.node._rpc import Call, Outcome
from veil.node.catalog import DatasetVersion
from veil.node.config import NodeConfig
from veil.node.context import NodeContext
from veil.node.grants import Grant
from veil.node.home import NodeHome
from veil.node.jobs import JobSpec
from veil.node.kinds import Replayed


class QueryKind:
    name = "query"
    method = "/veil.v1.QueryService/RunQuery"

    def validate(self, spec: JobSpec, dataset: DatasetVersion, config: NodeConfig,
                 snapshots: Path) -> None:
        """Approvers only ever see SQL the sandbox would accept on this dataset."""
        q = queries.inputs(spec, config.name, dataset, snapshots, config)
        queries.validate(q, queries.limits(config))

    def run(self, ctx: NodeContext, request: Any, call: Call, grant: Grant) -> Outcome:
        config = ctx.home.config
        q = queries.inputs(grant.spec, ctx.name, grant.dataset, ctx.home.snapshots, config)
        call.details = {"query": q.settings()}
        datasets = (grant.dataset.ref,)
        result = queries.run(q, queries.limits(config))
        return Outcome(
            response=query_result_to_proto(result, list(datasets)),
            meters=queries.meters(result),
            datasets=datasets,
            digest=result.digest,
        )

    def replay(self, conn: sqlite3.Connection, home: NodeHome, index: int,
               record: Mapping[str, Any]) -> Replayed:
        r = queries._replay_one(conn, home, index, dict(record), queries.limits(home.config))
        return Replayed(r.index, r.job, r.logged, r.replayed)


QUERY = QueryKind()

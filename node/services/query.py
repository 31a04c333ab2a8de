"""QueryService: one run of an approved query job, under its grant."""

from __future__ import annotations

from collections.abc import Mapping

from veil.v1 import query_pb2

from veil.node import kinds
from veil.node._rpc import Call, Outcome, Rpc
from veil.node.context import NodeContext
from veil.node.grants import Grant
from veil.node.services._roles import ANALYST

SERVICE = "veil.v1.QueryService"


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    kind = kinds.get("query")

    def run_query(req: query_pb2.RunQueryRequest, call: Call, grant: Grant) -> Outcome:
        return kind.run(ctx, req, call, grant)

    return {"RunQuery": Rpc(ANALYST, run_query, kind=kind.name)}

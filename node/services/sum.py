"""SumService: one run of an approved sum job, asked of the job's aggregator."""

from __future__ import annotations

from collections.abc import Mapping

from veil.v1 import sum_pb2

from veil.node import kinds
from veil.node._rpc import Call, Outcome, Rpc
from veil.node.context import NodeContext
from veil.node.grants import Grant
from veil.node.services._roles import ANALYST

SERVICE = "veil.v1.SumService"


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    kind = kinds.get("sum")

    def run_sum(req: sum_pb2.RunSumRequest, call: Call, grant: Grant) -> Outcome:
        return kind.run(ctx, req, call, grant)

    return {"RunSum": Rpc(ANALYST, run_sum, kind=kind.name)}

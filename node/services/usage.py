"""UsageService: priced usage statements whose every line cites its log entry."""

from __future__ import annotations

from collections.abc import Mapping

from veil.v1 import common_pb2, usage_pb2

from veil.node import catalog, dp
from veil.node._convert import meters_to_proto
from veil.node._rpc import Call, Rpc
from veil.node.context import NodeContext
from veil.node.errors import InvalidInput, PolicyDenied
from veil.node.grants import statement_total
from veil.node.log import parse_user_time
from veil.node.services._roles import STATEMENT_READERS

SERVICE = "veil.v1.UsageService"


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    def get_statement(req: usage_pb2.GetStatementRequest, call: Call) -> usage_pb2.Statement:
        analyst = req.analyst or (call.identity.name if call.identity.role == "analyst" else "")
        if not analyst:
            raise InvalidInput("name the analyst whose statement you want")
        if call.identity.role == "analyst" and analyst != call.identity.name:
            raise PolicyDenied("analysts may read only their own statement")
        start = parse_user_time(req.from_time, "from_time") if req.from_time else None
        end = parse_user_time(req.to_time, "to_time") if req.to_time else None
        lines = ctx.grants.statement(analyst, start, end)
        with ctx.lock:
            spent = dp.releases(ctx.conn, analyst)
            budgets = dp.standings(ctx.conn, ctx.home.config.policy.dp, analyst,
                                   sorted(catalog.all_versions(ctx.conn)))
        return usage_pb2.Statement(
            node=ctx.name,
            analyst=analyst,
            currency=ctx.home.config.tariff.currency,
            lines=[
                usage_pb2.StatementLine(
                    log_index=line["log_index"], time=line["time"], job_id=line["job"],
                    method=line["method"], meters=meters_to_proto(line["meters"].to_dict()),
                    amount=str(line["amount"]),
                    **_dp_fields(spent.get(line["log_index"])),
                )
                for line in lines
            ],
            total=str(statement_total(lines)),
            budgets=[common_pb2.DpBudget(**b.to_dict()) for b in budgets],
        )

    return {"GetStatement": Rpc(STATEMENT_READERS, get_statement)}


def _dp_fields(release: Mapping[str, str] | None) -> dict[str, str]:
    if release is None:
        return {}
    return {"dp_dataset": release["dataset"], "dp_measure": release["measure"],
            "dp_spent": release["spent"]}

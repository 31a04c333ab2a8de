"""NodeService: who this node is, what it runs, and who the caller is to it."""

from __future__ import annotations

from collections.abc import Mapping

from veil.v1 import node_pb2

from veil.node import kinds
from veil.node._rpc import Call, Rpc
from veil.node.context import VERSION, NodeContext
from veil.node.services._roles import ANY_ROLE

SERVICE = "veil.v1.NodeService"


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    def get_info(_req: node_pb2.GetInfoRequest, call: Call) -> node_pb2.NodeInfo:
        return node_pb2.NodeInfo(
            name=ctx.name,
            federation=ctx.home.identity.identity.federation,
            version=VERSION,
            certificate_pem=ctx.cert_pem,
            log_vkey=ctx.log_vkey,
            log_origin=ctx.home.origin,
            job_kinds=list(kinds.REGISTRY),
            caller_role=call.identity.role,
            caller_name=call.identity.name,
        )

    return {"GetInfo": Rpc(ANY_ROLE, get_info)}

"""PsiService: one run of an approved psi or intersection_sum job, asked of the job's leader."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from veil.v1 import psi_pb2

from veil.node._rpc import Call, Rpc
from veil.node.context import NodeContext
from veil.node.grants import Grant
from veil.node.kinds.psi import PSI
from veil.node.jobs import PSI_KINDS
from veil.node.services._roles import ANALYST

SERVICE = "veil.v1.PsiService"


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    def run_psi(req: psi_pb2.RunPsiRequest, call: Call,
                grant: Grant) -> Iterator[psi_pb2.PsiUpdate]:
        return PSI.run(ctx, req, call, grant)

    return {"RunPsi": Rpc(ANALYST, run_psi, kind=tuple(PSI_KINDS))}

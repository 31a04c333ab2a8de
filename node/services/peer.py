"""PeerService: the calls one node of a job makes to another, with node certificates.

A node answers a peer only for a job that names that peer in that role (here: the job's
aggregator), only once its own approvals are complete, and under its own quota; the peer is
identified by its certificate, never by its address. Both sides log every call.
"""

from __future__ import annotations

from collections.abc import Mapping

from collections.abc import Iterator

from veil.v1 import peer_pb2, psi_pb2, sum_pb2

from veil.node._rpc import Call, Outcome, Rpc
from veil.node.context import NodeContext
from veil.node.grants import Grant
from veil.node.jobs import PSI_KINDS, JobSpec, leader
from veil.node.kinds.psi import PSI
from veil.node.kinds.sum import SUM
from veil.node.services._roles import NODE

SERVICE = peer_pb2.DESCRIPTOR.services_by_name["PeerService"].full_name


def _aggregator(spec: JobSpec) -> str:
    return str(spec.params["aggregator"])


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    def prepare_sum(req: sum_pb2.PrepareSumRequest, call: Call) -> sum_pb2.MaskKey:
        # checked like a compute call (the aggregator, approvals here, quota left), not charged:
        # the run is charged once, by the ContributeSum that follows
        call.job_id = req.job_id
        ctx.grants.admit(req.job_id, call.identity, SUM.name, _aggregator)
        call.details = {"sum": {"run": req.run_id[:64]}}
        return SUM.prepare_key(ctx, req.job_id, req.run_id)

    def contribute_sum(req: sum_pb2.ContributeSumRequest, call: Call, grant: Grant) -> Outcome:
        return SUM.contribute(ctx, req, call, grant)

    def exchange_psi(first: psi_pb2.PsiMessage, call: Call, grant: Grant,
                     incoming: Iterator[psi_pb2.PsiMessage]) -> Iterator[psi_pb2.PsiMessage]:
        return PSI.exchange(ctx, first, call, grant, incoming)

    return {
        "PrepareSum": Rpc(NODE, prepare_sum),
        "ContributeSum": Rpc(NODE, contribute_sum, kind=SUM.name, peer=_aggregator),
        # only the job's leader opens the exchange with the other node
        "ExchangePsi": Rpc(NODE, exchange_psi, kind=tuple(PSI_KINDS), peer=leader),
    }

"""JobService: submission, listing, decisions and revocation of jobs at this node."""

from __future__ import annotations

from collections.abc import Mapping

from veil.v1 import jobs_pb2

from veil.node import kinds
from veil.node._convert import job_to_proto as _job_to_proto
from veil.node._rpc import Call, Rpc
from veil.node.context import NodeContext
from veil.node.grants import JobView
from veil.node.errors import PolicyDenied, VeilError
from veil.node.jobs import PSI_KINDS, SignedJob
from veil.node.services._roles import ANALYST, ANY_ROLE, APPROVERS, OPERATOR

SERVICE = "veil.v1.JobService"


def rpcs(ctx: NodeContext) -> Mapping[str, Rpc]:
    grants = ctx.grants

    def job_to_proto(view: JobView) -> jobs_pb2.Job:
        lines: list[str] = []
        if view.spec.dp is not None:
            try:
                lines = kinds.dp_kind(view.spec.kind).dp_estimate(ctx, view)
            except VeilError as exc:  # the policy changed since submission: the job still lists
                lines = [f"differential privacy: no estimate under this node's policy now: {exc}"]
        return _job_to_proto(view, ctx.home.config, lines)

    def submit_job(req: jobs_pb2.SignedJob, call: Call) -> jobs_pb2.Job:
        view, _created = grants.submit(SignedJob(req.canonical, req.signature), call.identity)
        call.job_id = view.id
        if view.spec.kind in PSI_KINDS:
            ctx.warm_psi()  # start the blinding pool now, off the hot path of the first run
        return job_to_proto(view)

    def list_jobs(req: jobs_pb2.ListJobsRequest, call: Call) -> jobs_pb2.ListJobsResponse:
        analyst = req.analyst or None
        if call.identity.role == "analyst":
            if analyst not in (None, call.identity.name):
                raise PolicyDenied("analysts may list only their own jobs")
            analyst = call.identity.name
        views = [v for v in grants.jobs(analyst) if not req.state or v.state == req.state]
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(v) for v in views])

    def get_job(req: jobs_pb2.GetJobRequest, call: Call) -> jobs_pb2.Job:
        call.job_id = req.job_id
        return job_to_proto(grants.view(req.job_id, call.identity))

    def decide_job(req: jobs_pb2.SignedDecision, call: Call) -> jobs_pb2.Job:
        view = grants.decide(req.canonical, req.signature, call.identity)
        call.job_id = view.id
        return job_to_proto(view)

    def revoke_job(req: jobs_pb2.RevokeJobRequest, call: Call) -> jobs_pb2.Job:
        call.job_id = req.job_id
        return job_to_proto(grants.revoke(req.job_id, req.reason, call.identity))

    return {
        "SubmitJob": Rpc(ANALYST, submit_job),
        "ListJobs": Rpc(ANY_ROLE, list_jobs),
        "GetJob": Rpc(ANY_ROLE, get_job),
        "DecideJob": Rpc(APPROVERS, decide_job),
        "RevokeJob": Rpc(OPERATOR | {"subject-representative"}, revoke_job),
    }

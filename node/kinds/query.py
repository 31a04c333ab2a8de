"""The ``query`` kind: one analyst's SQL over this node's dataset, through the sandbox."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from veil import sandbox
from veil.v1 import common_pb2

from veil.node import catalog, dp, queries
from veil.node._convert import query_result_to_proto
from veil.node._rpc import Call, Outcome
from veil.node.catalog import DatasetVersion
from veil.node.config import NodeConfig
from veil.node.context import NodeContext
from veil.node.grants import Grant
from veil.node.home import NodeHome
from veil.node.errors import InvalidInput, VeilError
from veil.node.jobs import JobSpec, spec_from_canonical
from veil.node.kinds import Replayed
from veil.protocols import dp as mech


class QueryKind:
    name = "query"
    method = "/veil.v1.QueryService/RunQuery"

    def validate(self, spec: JobSpec, dataset: DatasetVersion, config: NodeConfig,
                 snapshots: Path) -> None:
        """Approvers only ever see SQL the sandbox would accept on this dataset (under
        differential privacy: SQL whose every output it can bound)."""
        q = queries.inputs(spec, config.name, dataset, snapshots, config)
        if spec.dp is not None:
            queries.validate_dp(q, config.limits, dp.sandbox_spec(spec.dp))
        else:
            queries.validate(q, config.limits)

    def run(self, ctx: NodeContext, request: Any, call: Call, grant: Grant) -> Outcome:
        config = ctx.home.config
        q = queries.inputs(grant.spec, ctx.name, grant.dataset, ctx.home.snapshots, config)
        call.details = {"query": q.settings()}
        datasets = (grant.dataset.ref,)
        if grant.spec.dp is not None:
            return _run_dp(ctx, q, call, grant)
        result = queries.run(q, config.limits, ctx.workers)
        return Outcome(
            response=query_result_to_proto(result, list(datasets)),
            meters=queries.meters(result),
            datasets=datasets,
            digest=result.digest,
        )

    def dp_estimate(self, ctx: NodeContext, view: Any) -> list[str]:
        """The dry run's differential-privacy lines for ``view`` (a DP query job)."""
        spec, config = view.spec, ctx.home.config
        q = queries.inputs(spec, ctx.name, view.dataset, ctx.home.snapshots, config)
        dq = queries.validate_dp(q, config.limits, dp.sandbox_spec(spec.dp))
        return dp.dry_run(ctx, spec, view.dataset.name, dq.measurements)

    def replay(self, conn: sqlite3.Connection, home: NodeHome, index: int,
               record: Mapping[str, Any], workers: sandbox.Workers) -> Replayed:
        return _replay_one(conn, home, index, record, home.config.limits, workers)


def _run_dp(ctx: NodeContext, q: queries.QueryInputs, call: Call, grant: Grant) -> Outcome:
    """A differentially private run: refuse early when the budget cannot pay for it, compute
    the bounded exact aggregates in a sandbox worker, add OpenDP's noise here, and release
    only the noisy result; the budget is spent by the log entry's own transaction."""
    spec, config = grant.spec, ctx.home.config
    assert spec.dp is not None
    funded = dp.admit(ctx, spec, grant.dataset.name)
    dspec = dp.sandbox_spec(spec.dp)
    dq = queries.validate_dp(q, config.limits, dspec)
    exact = queries.run_dp(q, config.limits, dspec, ctx.workers)
    noises = dp.plan(spec.dp, [m.sensitivity for m in dq.measurements])
    draws = [mech.draw(n, len(dq.cells)) for n in noises]
    result = queries.dp_result(dq, exact, draws, config.limits)
    datasets = (grant.dataset.ref,)
    call.details["dp"] = dp.log_details(funded.rule, funded.cost, dq, noises)
    response = query_result_to_proto(result, list(datasets))
    dp.describe_release(response, dq, noises, spec.dp.scale)

    def charged(left: dp.Standing) -> None:  # the exact remainder, inside the transaction
        response.budget.CopyFrom(common_pb2.DpBudget(**left.to_dict()))

    return Outcome(
        response=response,
        meters=queries.meters(result),
        datasets=datasets,
        digest=result.digest,
        effect=funded.charge(spec.analyst, dp.pack_noise(draws), charged),
    )


def _replay_one(conn: sqlite3.Connection, home: NodeHome, index: int,
                record: Mapping[str, Any], lim: sandbox.Limits,
                workers: sandbox.Workers) -> Replayed:
    job = record["job"]
    row = conn.execute("SELECT canonical FROM jobs WHERE id = ?", (job,)).fetchone()
    if row is None:
        raise InvalidInput(f"entry {index}: job {job} is not in the node's state")
    spec = spec_from_canonical(bytes(row[0]))
    [dataset] = record["datasets"]
    name, _, sha = dataset.partition("@")
    ds = catalog.version(conn, name, sha)
    settings = record["details"]["query"]
    columns = tuple(sandbox.Column(c.name, c.type, c.level) for c in ds.columns
                    if c.name in set(settings["columns"]))
    q = queries.QueryInputs(
        sql=spec.params["sql"],
        table=sandbox.Table(ds.name, str(ds.snapshot_path(home.snapshots).resolve()), columns,
                            ds.key_column),
        policy=sandbox.Policy(
            min_group_size=settings["min_group_size"],
            allow_min_max=settings["allow_min_max"],
            masked_columns=settings["masked_columns"],
            denied_columns=frozenset(settings["denied_columns"]),
            denied_functions=frozenset(settings["denied_functions"]),
        ),
    )
    try:
        if spec.dp is not None:
            dspec = dp.sandbox_spec(spec.dp)
            dq = queries.validate_dp(q, lim, dspec)
            exact = queries.run_dp(q, lim, dspec, workers)
            digest = queries.dp_result(dq, exact, dp.noise_of(conn, index), lim).digest
        else:
            digest = queries.run(q, lim, workers).digest
    except VeilError as exc:
        digest = f"error: {exc}"
    return Replayed(index, job, record.get("result_sha256", ""), digest)


QUERY = QueryKind()

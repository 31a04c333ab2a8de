"""Query jobs at a node: from an approved job and a pinned dataset version to the sandbox.

The sandbox (``sandbox/``) knows nothing of jobs or configuration; this module builds
its inputs from them: the table as the job may see it (only the columns the job was
approved for, plus the subject key used to count group sizes), the node's analysis
policy, and its limits. The same construction serves submission (validate the SQL
before any approver sees it), the run, and the auditor's replay, which rebuilds the
exact inputs from the log entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil import sandbox
from veil.node.catalog import DatasetVersion
from veil.node.config import NodeConfig
from veil.node.errors import InvalidInput, PolicyDenied, ResourceLimit, VeilError
from veil.node.jobs import JobSpec, Meters


@dataclass(frozen=True)
class QueryInputs:
    sql: str
    table: sandbox.Table
    policy: sandbox.Policy
    #: the dataset's columns the job does not list: absent from the table, named in refusals
    unlisted: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """The value-free policy facts a replay needs; recorded in the call's log entry."""
        return {
            "min_group_size": self.policy.min_group_size,
            "allow_min_max": self.policy.allow_min_max,
            "masked_columns": dict(sorted(self.policy.masked_columns.items())),
            "denied_columns": sorted(self.policy.denied_columns),
            "denied_functions": sorted(self.policy.denied_functions),
            "columns": [c.name for c in self.table.columns],
        }


def inputs(spec: JobSpec, node: str, ds: DatasetVersion, snapshots: Path,
           config: NodeConfig) -> QueryInputs:
    part = spec.part(node)
    if part is None:
        raise InvalidInput(f"the job has no part for node {node!r}")
    return inputs_for(spec.params["sql"], part.columns, ds, snapshots, config)


def inputs_for(sql: str, columns_used: Sequence[str], ds: DatasetVersion, snapshots: Path,
               config: NodeConfig) -> QueryInputs:
    """``sql`` over ``ds`` as a job may see it: its approved columns and the subject key."""
    allowed = set(columns_used) | {ds.key_column}
    columns = tuple(
        sandbox.Column(c.name, c.type, c.level) for c in ds.columns if c.name in allowed
    )
    policy = config.policy
    return QueryInputs(
        sql=sql,
        table=sandbox.Table(ds.name, str(ds.snapshot_path(snapshots).resolve()), columns,
                            ds.key_column),
        policy=sandbox.Policy(
            min_group_size=policy.min_group_size,
            allow_min_max=policy.allow_min_max,
            masked_columns=policy.masked_columns_for(ds.name),
            denied_columns=policy.denied_columns_for(ds.name, [c.name for c in ds.columns]),
            denied_functions=frozenset(policy.deny_functions),
        ),
        unlisted=tuple(c.name for c in ds.columns if c.name not in allowed),
    )


@contextmanager
def _as_veil_errors(refused: str, q: QueryInputs | None = None) -> Iterator[None]:
    """The one translation of sandbox errors into Veil's: refusals keep their kind."""
    try:
        yield
    except sandbox.QueryRejected as exc:
        unlisted = {c.casefold(): c for c in (q.unlisted if q is not None else ())}
        name = exc.construct.removeprefix("column '").removesuffix("'")
        if exc.construct.startswith("column '") and name.casefold() in unlisted and q is not None:
            listed = ", ".join(c.name for c in q.table.columns if c.name != q.table.key_column)
            raise PolicyDenied(
                f"query refused: column '{unlisted[name.casefold()]}' of {q.table.name} is not "
                f"in the job's columns for this node (it lists: {listed}); add it to the "
                "node's `columns` in the job file, so approvers see it, and submit again"
            ) from None
        raise PolicyDenied(f"query refused: {exc}") from None
    except sandbox.QueryLimitExceeded as exc:
        raise ResourceLimit(f"query {refused}: {exc}") from None
    except sandbox.SandboxError as exc:
        raise VeilError(f"query failed: {exc}") from None


def normalize(sql: str) -> str:
    """The sandbox's canonical SQL text, with its refusals as Veil errors (for job specs)."""
    with _as_veil_errors("refused"):
        return sandbox.normalize(sql)


def validate(q: QueryInputs, lim: sandbox.Limits) -> Any:
    """Validate without touching data; sandbox refusals become Veil errors."""
    with _as_veil_errors("refused", q):
        return sandbox.validate(q.sql, [q.table], q.policy, lim)


def run(q: QueryInputs, lim: sandbox.Limits, workers: sandbox.Workers) -> sandbox.QueryResult:
    """Validate and run in one of the node's sandbox worker processes, under ``lim``."""
    with _as_veil_errors("stopped", q):
        return workers.run(q.sql, [q.table], q.policy, lim)


def validate_dp(q: QueryInputs, lim: sandbox.Limits, spec: sandbox.DpSpec) -> sandbox.DpQuery:
    """The differentially private form of ``q``: refused unless every output is bounded."""
    with _as_veil_errors("refused", q):
        return sandbox.validate_dp(q.sql, q.table, q.policy, lim, spec)


def run_dp(q: QueryInputs, lim: sandbox.Limits, spec: sandbox.DpSpec,
           workers: sandbox.Workers) -> sandbox.DpExact:
    """The bounded exact aggregates of ``q`` in a worker (they never leave the node)."""
    with _as_veil_errors("stopped", q):
        return workers.run_dp(q.sql, q.table, q.policy, lim, spec)


def dp_result(dq: sandbox.DpQuery, exact: sandbox.DpExact, draws: Sequence[Sequence[int]],
              lim: sandbox.Limits) -> sandbox.QueryResult:
    """The released result: the exact aggregates plus their noise, post-processed, within
    the node's result size (refused before the log entry, so logged as refused)."""
    if len(draws) != len(exact.values) or any(
            len(d) != len(v) for d, v in zip(draws, exact.values)):
        raise InvalidInput("dp: the noise does not match the query's measurements")
    noisy = [[x + n for x, n in zip(v, d)] for v, d in zip(exact.values, draws)]
    with _as_veil_errors("stopped"):
        result = sandbox.dp_result(dq, noisy, exact.meters)
    if result.meters.bytes_out > lim.max_result_bytes:
        raise ResourceLimit(
            f"query stopped: the result is {result.meters.bytes_out:,} bytes, more than the "
            f"limit of {lim.max_result_bytes:,} bytes; declare fewer categories"
        )
    return result


def meters(result: sandbox.QueryResult) -> Meters:
    m = result.meters
    return Meters(runs=1, rows_scanned=m.rows_scanned, result_rows=m.result_rows,
                  cpu_ms=m.cpu_ms, bytes_out=m.bytes_out)

"""Query jobs at a node: from an approved job and a pinned dataset version to the sandbox.

The sandbox (``sandbox/``) knows nothing of jobs or configuration; this module builds
its inputs from them: the table as the job may see it (only the columns the job was
approved for, plus the subject key used to count group sizes), the node's analysis
policy, and its limits. The same construction serves submission (validate the SQL
before any approver sees it), the run, and the auditor's replay, which rebuilds the
exact inputs from the log entry.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil import sandbox
from veil.node import catalog
from veil.node.catalog import DatasetVersion
from veil.node.config import NodeConfig
from veil.node.errors import InvalidInput, PolicyDenied, ResourceLimit, VeilError
from veil.node.jobs import JobSpec, Meters, spec_from_canonical


@dataclass(frozen=True)
class QueryInputs:
    sql: str
    table: sandbox.Table
    policy: sandbox.Policy

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
    allowed = set(part.columns) | {ds.key_column}
    columns = tuple(
        sandbox.Column(c.name, c.type, c.level) for c in ds.columns if c.name in allowed
    )
    policy = config.policy
    return QueryInputs(
        sql=spec.params["sql"],
        table=sandbox.Table(ds.name, str(ds.snapshot_path(snapshots).resolve()), columns,
                            ds.key_column),
        policy=sandbox.Policy(
            min_group_size=policy.min_group_size,
            allow_min_max=policy.allow_min_max,
            masked_columns=policy.masked_columns_for(ds.name),
            denied_columns=policy.denied_columns_for(ds.name, [c.name for c in ds.columns]),
            denied_functions=frozenset(policy.deny_functions),
        ),
    )


def normalize(sql: str) -> str:
    """The sandbox's canonical SQL text, with its refusals as Veil errors (for job specs)."""
    try:
        return sandbox.normalize(sql)
    except sandbox.QueryRejected as exc:
        raise PolicyDenied(f"query refused: {exc}") from None
    except sandbox.QueryLimitExceeded as exc:
        raise ResourceLimit(f"query refused: {exc}") from None


def limits(config: NodeConfig) -> sandbox.Limits:
    lim = config.limits
    return sandbox.Limits(
        memory_limit_mb=lim.memory_limit_mb, threads=lim.threads, timeout_s=float(lim.timeout_s),
        max_result_rows=lim.max_result_rows, max_sql_bytes=lim.max_sql_bytes,
        max_result_bytes=lim.max_result_bytes,
    )


def validate(q: QueryInputs, lim: sandbox.Limits) -> Any:
    """Validate without touching data; sandbox refusals become Veil errors."""
    try:
        return sandbox.validate(q.sql, [q.table], q.policy, lim)
    except sandbox.QueryRejected as exc:
        raise PolicyDenied(f"query refused: {exc}") from None
    except sandbox.QueryLimitExceeded as exc:
        raise ResourceLimit(f"query refused: {exc}") from None


def run(q: QueryInputs, lim: sandbox.Limits) -> sandbox.QueryResult:
    validated = validate(q, lim)
    try:
        return sandbox.run(validated, lim)
    except sandbox.QueryRejected as exc:
        raise PolicyDenied(f"query refused: {exc}") from None
    except sandbox.QueryLimitExceeded as exc:
        raise ResourceLimit(f"query stopped: {exc}") from None
    except sandbox.SandboxError as exc:
        raise VeilError(f"query failed: {exc}") from None


def meters(result: sandbox.QueryResult) -> Meters:
    m = result.meters
    return Meters(runs=1, rows_scanned=m.rows_scanned, result_rows=m.result_rows,
                  cpu_ms=m.cpu_ms, bytes_out=m.bytes_out)


@dataclass(frozen=True)
class Replayed:
    index: int
    job: str
    logged: str
    replayed: str

    @property
    def ok(self) -> bool:
        return self.logged == self.replayed


def replay(node_dir: Path, start: int = 0) -> list[Replayed]:
    """Re-run every logged successful query call from ``start`` on, against the exact
    dataset version and policy it used; compare result digests."""
    from veil.node import state
    from veil.node.auditor import LocalLog, check_entry
    from veil.node.home import NodeHome

    home = NodeHome(node_dir)
    source = LocalLog(node_dir)
    conn = state.connect(home.state_path, readonly=True)
    lim = limits(home.config)
    out = []
    try:
        size = int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_entries").fetchone()[0])
        for index, data in source.entries(start, size):
            record = check_entry(index, data)
            if record.get("method") != "/veil.v1.QueryService/RunQuery" or record.get("status") != "OK":
                continue
            out.append(_replay_one(conn, home, index, record, lim))
    finally:
        conn.close()
    return out


def _replay_one(conn: sqlite3.Connection, home: Any, index: int, record: dict[str, Any],
                lim: sandbox.Limits) -> Replayed:
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
    q = QueryInputs(
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
        digest = run(q, lim).digest
    except VeilError as exc:
        digest = f"error: {exc}"
    return Replayed(index, job, record.get("result_sha256", ""), digest)



"""Jobs at a node: submission, approvals, revocation, and the grant every compute call needs.

The pure rules live in ``node.jobs`` (specs, signatures, policy, quotas, tariffs); this
module keeps them in the node's SQLite state and enforces them in one place:

- :meth:`Grants.admit` runs before any data is touched: the caller is the job's analyst,
  the analyst is not on the deny list, every required approval is present, the job has
  not expired or been revoked, the call is the job's kind, and quota remains.
- :meth:`Grants.charge` returns the effect that charges a call's meters *inside* the log
  entry's transaction. It re-checks revocation and quota there, so two concurrent runs
  can never together exceed a quota, and a job revoked mid-run releases nothing.

Every state change (submission, decision, revocation) commits with its log entry.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from veil.node import catalog
from veil.node.catalog import DatasetVersion
from veil.node.config import NodeConfig
from veil.node.errors import (
    AlreadyExists,
    ApprovalRequired,
    InvalidInput,
    NotFound,
    PolicyDenied,
    QuotaExhausted,
)
from veil.node.jobs import (
    Decision,
    Estimate,
    JobSpec,
    Meters,
    Quota,
    SignedJob,
    Status,
    approval_status,
    check_narrowing,
    check_not_expired,
    check_submission,
    decision_from_canonical,
    effective_quota,
    estimate,
    format_time,
    job_id,
    required_roles,
    verify_decision,
    verify_job,
)
from veil.node.federation import check_peer
from veil.node.log import Effect, Log, event
from veil.node.pki import APPROVER_ROLES, Identity

# Decisions are Ed25519-signed by the approver over this prefix and the canonical bytes.


@dataclass(frozen=True)
class JobView:
    """A job as this node holds it, with its status computed now."""

    id: str
    spec: JobSpec
    signed: SignedJob
    dataset: DatasetVersion
    required: frozenset[str]
    decisions: tuple[Decision, ...]
    status: Status
    quota: Quota
    used: Meters
    revoked: str | None
    submitted_at: str

    @property
    def state(self) -> str:
        if self.revoked:
            return "revoked"
        if datetime.now(UTC) >= self.spec.expires:
            return "expired"
        return self.status.state

    def estimate(self, config: NodeConfig) -> Estimate:
        part = self.spec.part(config.name)
        assert part is not None
        return estimate(
            self.spec, part, self.dataset.rows, self.dataset.levels(), config.tariff,
            min_group_size=config.policy.min_group_size, quota=self.quota, policy=config.policy,
        )


@dataclass(frozen=True)
class Grant:
    """One admitted call of a job: what the gate hands a compute handler.

    Only :meth:`Grants.admit` makes one, after every check; :meth:`Grants.charge` takes one
    back to charge the call's meters inside its log entry's transaction.
    """

    job: JobView

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def dataset(self) -> DatasetVersion:
        return self.job.dataset


class Grants:
    def __init__(
        self, conn: sqlite3.Connection, lock: threading.Lock, log: Log, config: NodeConfig,
        snapshots: Path,
    ) -> None:
        from veil.node.queries import normalize

        self.normalize_sql = normalize
        self.snapshots = snapshots
        self.conn = conn
        self.lock = lock
        self.log = log
        self.config = config

    # -- reading -------------------------------------------------------------

    def get(self, job: str, conn: sqlite3.Connection | None = None) -> JobView:
        c = conn or self.conn
        row = c.execute(
            "SELECT canonical, signature, dataset, dataset_sha256, required, revoked,"
            " submitted_at FROM jobs WHERE id = ?",
            (job,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no job {job!r} on node {self.config.name!r}")
        canonical, signature, ds_name, ds_sha, required_json, revoked, submitted = row
        signed = SignedJob(bytes(canonical), bytes(signature))
        from veil.node.jobs import spec_from_canonical

        spec = spec_from_canonical(signed.canonical)
        decisions = tuple(
            decision_from_canonical(bytes(r[0]))
            for r in c.execute(
                "SELECT canonical FROM decisions WHERE job_id = ? ORDER BY log_index", (job,)
            )
        )
        required = frozenset(json.loads(required_json))
        status = approval_status(required, decisions)
        quota = effective_quota(spec.quota, decisions, self.config.policy.max_quota)
        return JobView(
            job, spec, signed, catalog.version(c, ds_name, ds_sha), required, decisions,
            status, quota, self.used(job, c), revoked, submitted,
        )

    def used(self, job: str, conn: sqlite3.Connection | None = None) -> Meters:
        """What the job has consumed so far (a running total kept beside the usage rows)."""
        row = (conn or self.conn).execute(
            "SELECT meters_json FROM job_usage WHERE job_id = ?", (job,)
        ).fetchone()
        return Meters() if row is None else Meters.from_dict(json.loads(row[0]))

    def jobs(self, analyst: str | None = None) -> list[JobView]:
        with self.lock:
            ids = [
                r[0]
                for r in self.conn.execute(
                    "SELECT id FROM jobs WHERE (? IS NULL OR analyst = ?) ORDER BY submitted_at",
                    (analyst, analyst),
                )
            ]
            return [self.get(i) for i in ids]

    def view(self, job: str, caller: Identity) -> JobView:
        with self.lock:
            found = self.get(job)
        if caller.role == "analyst" and found.spec.analyst != caller.name:
            raise PolicyDenied(f"job {job} belongs to another analyst")
        return found

    # -- submission ------------------------------------------------------------

    def submit(self, signed: SignedJob, caller: Identity) -> tuple[JobView, bool]:
        """Verify, validate and store a job as pending; a replay returns the stored job."""
        spec = verify_job(signed, caller.signing_key, normalize_sql=self.normalize_sql)
        if spec.analyst != caller.name:
            raise PolicyDenied(
                f"the job names analyst {spec.analyst!r} but was submitted by {caller.name!r}"
            )
        ident = job_id(signed)
        with self.lock:
            try:
                return self.get(ident), False
            except NotFound:
                pass
            part = spec.part(self.config.name)
            if part is None:
                raise InvalidInput(
                    f"the job has no part for node {self.config.name!r} (it names "
                    f"{', '.join(p.name for p in spec.nodes)}); submit it only to those nodes"
                )
            dataset = catalog.current(self.conn, part.dataset)
        check_not_expired(spec)
        check_submission(spec, self.config.name, dataset.levels(), dataset.key_column,
                         self.config.policy)
        required = required_roles(spec, self.config.name, dataset.levels(), self.config.policy)
        from veil.node import kinds

        kinds.get(spec.kind).validate(spec, dataset, self.config, self.snapshots)
        if spec.dp is not None:
            from veil.node import dp

            with self.lock:
                dp.check_fundable(self.conn, spec, dataset.name, self.config.policy.dp)

        def store(tx: sqlite3.Connection, index: int) -> None:
            tx.execute(
                "INSERT INTO jobs(id, canonical, signature, analyst, kind, dataset,"
                " dataset_sha256, required, submitted_at, log_index)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ident, signed.canonical, signed.signature, spec.analyst, spec.kind,
                 dataset.name, dataset.sha256, json.dumps(sorted(required)),
                 format_time(datetime.now(UTC)), index),
            )

        try:
            self.log.append(
                event("job.submitted", job=ident, analyst=spec.analyst, kind=spec.kind,
                      dataset=dataset.ref, required=sorted(required)),
                effect=store,
            )
        except sqlite3.IntegrityError:  # a concurrent replay won the race
            pass
        with self.lock:
            return self.get(ident), True

    # -- decisions ---------------------------------------------------------------

    def decide(self, canonical: bytes, signature: bytes, caller: Identity) -> JobView:
        if caller.role not in APPROVER_ROLES:
            raise PolicyDenied(f"role {caller.role!r} cannot approve or reject jobs")
        decision = verify_decision(canonical, signature, caller.signing_key)
        if decision.approver != caller.name or decision.role != caller.role:
            raise PolicyDenied(
                f"the decision is by {decision.role} {decision.approver!r}, but was sent by "
                f"{caller.role} {caller.name!r}: approvers sign and send their own decisions"
            )
        if decision.node != self.config.name:
            raise InvalidInput(
                f"the decision is for node {decision.node!r}, this is {self.config.name!r}"
            )
        with self.lock:
            job = self.get(decision.job_id)
        if decision.role not in job.required:
            raise PolicyDenied(
                f"job {job.id} needs approval from {', '.join(sorted(job.required))}; "
                f"role {decision.role!r} is not among them"
            )
        if job.state in ("revoked", "expired"):
            raise ApprovalRequired(f"job {job.id} is {job.state}; it can no longer be decided")
        if decision.quota is not None:
            check_narrowing(job.spec.quota, decision.quota)

        def store(tx: sqlite3.Connection, index: int) -> None:
            prior = tx.execute(
                "SELECT canonical FROM decisions WHERE job_id = ? AND approver = ? AND role = ?",
                (job.id, decision.approver, decision.role),
            ).fetchone()
            if prior is not None:
                before = decision_from_canonical(bytes(prior[0]))
                raise AlreadyExists(
                    f"{decision.role} {decision.approver!r} already decided "
                    f"'{before.decision}' on job {job.id} at {format_time(before.time)}; "
                    "decisions are final"
                )
            tx.execute(
                "INSERT INTO decisions(job_id, approver, role, canonical, signature, log_index)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, decision.approver, decision.role, canonical, signature, index),
            )

        self.log.append(
            event("job." + ("approved" if decision.decision == "approve" else "rejected"),
                  job=job.id, approver=decision.approver, role=decision.role,
                  reason=decision.reason,
                  quota=decision.quota.to_dict() if decision.quota else None),
            effect=store,
        )
        with self.lock:
            return self.get(job.id)

    def revoke(self, job: str, reason: str, caller: Identity) -> JobView:
        """Stop a job at once: the operator revokes it, or a data subjects' representative
        withdraws the consent the subjects gave (two-sided authorization: either side that
        approved can take it back). Logged with who did it, in which role, and why."""
        if caller.role not in ("operator", "subject-representative"):
            raise PolicyDenied(f"only the node's operator may revoke a job, or the data "
                               f"subjects' representative withdraw consent, not a {caller.role!r}")
        if not reason.strip():
            raise InvalidInput("give a reason for stopping the job: the analyst reads it")
        with self.lock:
            view = self.get(job)  # NotFound names the node
        withdrawal = caller.role == "subject-representative"
        if withdrawal and "subject-representative" not in view.required:
            raise PolicyDenied(f"job {job} did not need the data subjects' consent at this node "
                               "(its policy asks only the operator); ask the operator to revoke it")
        what = "consent withdrawn" if withdrawal else "revoked"
        stamp = (f"{what} at {format_time(datetime.now(UTC))} by {caller.name} "
                 f"({caller.role}): {reason.strip()}")

        def store(tx: sqlite3.Connection, _index: int) -> None:
            tx.execute("UPDATE jobs SET revoked = ? WHERE id = ? AND revoked IS NULL", (stamp, job))

        self.log.append(event("job.withdrawn" if withdrawal else "job.revoked", job=job,
                              by=caller.name, role=caller.role, reason=reason.strip()),
                        effect=store)
        with self.lock:
            return self.get(job)

    # -- enforcement ---------------------------------------------------------------

    def admit(self, job: str, caller: Identity, kind: str | tuple[str, ...],
              peer: Callable[[JobSpec], str] | None = None) -> Grant:
        """Everything that must hold before a compute call touches data; one place.

        The caller is the job's analyst, or, for a method that serves peers (``peer`` names
        the node a job lets call it, e.g. its aggregator), exactly that node. Either way the
        job must be approved here, unexpired, unrevoked and within its quota.
        """
        if caller.role == "node" and peer is not None:
            with self.lock:
                found = self.get(job)
            check_peer(caller, peer(found.spec))
        elif caller.role != "analyst":
            raise PolicyDenied(f"only the job's analyst may run it, not a {caller.role!r}")
        else:
            with self.lock:
                found = self.get(job)
        try:
            _check_runnable(found, caller, kind)
            found.quota.check(found.used, Meters(runs=1))
        except (ApprovalRequired, QuotaExhausted) as exc:
            # a job spans nodes: say which node's approvals or quota stop it
            exc.args = (f"node {self.config.name!r}: {exc}",)
            raise
        return Grant(found)

    def charge(self, grant: Grant, caller: Identity, method: str, meters: Meters) -> Effect:
        """The effect that charges ``meters`` to the job, atomically with the log entry."""
        job = grant.id

        analyst = grant.spec.analyst  # also when the job's aggregator made the call for them

        def effect(tx: sqlite3.Connection, index: int) -> None:
            current = self.get(job, tx)
            _check_runnable(current, caller, current.spec.kind)
            current.quota.check(current.used, meters)
            # the statement line carries the entry's own time, so the two reconcile exactly
            (entry,) = tx.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
            tx.execute(
                "INSERT INTO usage(log_index, time, analyst, job_id, method, meters_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (index, json.loads(entry)["t"], analyst, job, method,
                 json.dumps(meters.to_dict(), sort_keys=True)),
            )
            tx.execute(
                "INSERT OR REPLACE INTO job_usage(job_id, meters_json) VALUES (?, ?)",
                (job, json.dumps((current.used + meters).to_dict(), sort_keys=True)),
            )

        return effect

    def statement(self, analyst: str, start: str | None, end: str | None) -> list[dict[str, Any]]:
        """Every charged call of ``analyst`` in [start, end), each citing its log index."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT log_index, time, job_id, method, meters_json FROM usage"
                " WHERE analyst = ? AND (? IS NULL OR time >= ?) AND (? IS NULL OR time < ?)"
                " ORDER BY log_index",
                (analyst, start, start, end, end),
            ).fetchall()
        tariff = self.config.tariff
        lines = []
        for index, t, job, method, meters_json in rows:
            meters = Meters.from_dict(json.loads(meters_json))
            lines.append({"log_index": index, "time": t, "job": job, "method": method,
                          "meters": meters, "amount": tariff.price(meters)})
        return lines


def statement_total(lines: list[dict[str, Any]]) -> Decimal:
    from veil.node.jobs import TOTAL_QUANTUM

    return sum((line["amount"] for line in lines), Decimal(0)).quantize(TOTAL_QUANTUM)


def _check_runnable(job: JobView, caller: Identity, kind: str | tuple[str, ...]) -> None:
    if caller.role == "analyst" and job.spec.analyst != caller.name:
        raise PolicyDenied(
            f"job {job.id} belongs to analyst {job.spec.analyst!r}; {caller.name!r} may not run it"
        )
    allowed = (kind,) if isinstance(kind, str) else kind
    if job.spec.kind not in allowed:
        raise InvalidInput(f"job {job.id} is a {job.spec.kind} job, not a {' or '.join(allowed)} job")
    if job.revoked:
        raise ApprovalRequired(f"job {job.id} was revoked at {job.revoked}")
    check_not_expired(job.spec)
    job.status.require_approved(job.id)

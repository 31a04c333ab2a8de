"""A node's job policy: who must approve, what is never allowed, what a job will cost.

Columns are classified ``public < internal < sensitive < core``. ``core`` columns never
take part in any job. Approval rules (``[[policy.approval]]`` in node.toml) add roles a
job's approval needs; the operator is always needed, and a rule with
``min_level = "sensitive"`` and roles ``operator`` + ``subject-representative`` gives
two-sided authorization for anything touching sensitive data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from fnmatch import fnmatchcase
from types import MappingProxyType

from veil.node.errors import ApprovalRequired, InvalidInput, PolicyDenied
from veil.node.jobs._approval import Decision, check_role
from veil.node.jobs._dp import DpPolicy, check_request
from veil.node.jobs._psi import PSI_KINDS
from veil.node.jobs._spec import KINDS, JobSpec, NodePart
from veil.node.jobs._tariff import METER_NAMES, QUOTA_METERS, TOTAL_QUANTUM, Quota, Tariff
from veil.sandbox import LEVELS  # the one list of levels, least to most protected
from veil.sandbox import MASK_KINDS

#: the role every job's approval needs at every node
OPERATOR = "operator"
#: mask kinds the sandbox applies to ``masked_columns``
MASKS: tuple[str, ...] = MASK_KINDS  # the sandbox applies the masks: one list, its own


def level_rank(level: str) -> int:
    try:
        return LEVELS.index(level)
    except ValueError:
        raise InvalidInput(
            f"unknown classification level {level!r} (levels: {', '.join(LEVELS)})"
        ) from None


@dataclass(frozen=True)
class ApprovalRule:
    """Jobs of one of ``kinds``, on a dataset matching one of ``datasets`` (globs), that
    touch a column at ``min_level`` or above need every role in ``roles``."""

    roles: frozenset[str]
    min_level: str = "public"
    kinds: frozenset[str] = frozenset(KINDS)
    datasets: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", frozenset(self.roles))
        object.__setattr__(self, "kinds", frozenset(self.kinds))
        if not self.roles:
            raise InvalidInput("approval rule: roles must name at least one role")
        for role in self.roles:
            check_role(role, "approval rule role")
        level_rank(self.min_level)
        for kind in self.kinds:
            if kind not in KINDS:
                raise InvalidInput(
                    f"approval rule: unknown kind {kind!r} (kinds: {', '.join(KINDS)})"
                )

    def matches(self, kind: str, dataset: str, level: str) -> bool:
        return (
            kind in self.kinds
            and any(fnmatchcase(dataset, pattern) for pattern in self.datasets)
            and level_rank(level) >= level_rank(self.min_level)
        )


@dataclass(frozen=True)
class NodePolicy:
    """The ``[policy]`` section of node.toml (validated with file positions by
    ``node.config``; these checks are the backstop for values built in code).

    ``deny_columns`` are ``dataset.column`` globs; ``masked_columns`` maps exact
    ``dataset.column`` names to a mask kind; ``max_quota`` caps every job's quota.
    """

    min_group_size: int = 10
    allow_min_max: bool = False
    deny_analysts: frozenset[str] = frozenset()
    deny_columns: tuple[str, ...] = ()
    deny_functions: frozenset[str] = frozenset()
    masked_columns: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    max_quota: Quota | None = None
    approval: tuple[ApprovalRule, ...] = ()
    allow_kinds: frozenset[str] = frozenset(KINDS)
    #: below it a PSI run at this node releases nothing (a tiny intersection singles people out)
    min_intersection_size: int = 10
    #: the peer's set must have at least this many keys (a tiny or crafted set tests membership)
    min_peer_set_size: int = 100
    #: differential privacy: which jobs need it, and each analyst's budget
    dp: DpPolicy = field(default_factory=DpPolicy)

    def __post_init__(self) -> None:
        for name in ("deny_analysts", "deny_functions", "allow_kinds"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        object.__setattr__(self, "deny_columns", tuple(self.deny_columns))
        object.__setattr__(self, "approval", tuple(self.approval))
        object.__setattr__(self, "masked_columns", MappingProxyType(dict(self.masked_columns)))
        if (
            isinstance(self.min_group_size, bool)
            or not isinstance(self.min_group_size, int)
            or self.min_group_size < 2
        ):
            raise InvalidInput(
                f"min_group_size: expected an integer of at least 2, got {self.min_group_size!r}"
            )
        for name in ("min_intersection_size", "min_peer_set_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name}: expected an integer of at least 1, got {value!r}")
        for mask in self.masked_columns.values():
            if mask not in MASKS:
                raise InvalidInput(f"mask: expected one of {', '.join(MASKS)}, got {mask!r}")
        for kind in self.allow_kinds:
            if kind not in KINDS:
                raise InvalidInput(
                    f"allow_kinds: unknown kind {kind!r} (kinds: {', '.join(KINDS)})"
                )

    def is_column_denied(self, dataset: str, column: str) -> str | None:
        """The ``deny_columns`` pattern that forbids ``dataset.column``, if any."""
        qualified = f"{dataset}.{column}"
        for pattern in self.deny_columns:
            if fnmatchcase(qualified, pattern):
                return pattern
        return None

    def denied_columns_for(self, dataset: str, columns: Iterable[str]) -> frozenset[str]:
        """Which of a dataset's columns the negative list forbids (for the sandbox)."""
        return frozenset(c for c in columns if self.is_column_denied(dataset, c) is not None)

    def masked_columns_for(self, dataset: str) -> dict[str, str]:
        """``{column: mask}`` for one dataset (for the sandbox)."""
        prefix = f"{dataset}."
        return {
            key[len(prefix) :]: mask
            for key, mask in self.masked_columns.items()
            if key.startswith(prefix)
        }


def check_analyst(analyst: str, policy: NodePolicy) -> None:
    """Refuse analysts on the node's negative list (every call, not just submission)."""
    if analyst in policy.deny_analysts:
        raise PolicyDenied(
            f"analyst {analyst!r} is on this node's negative list (policy.deny_analysts); "
            "contact the node operator"
        )


def _part(spec: JobSpec, node_name: str) -> NodePart:
    part = spec.part(node_name)
    if part is None:
        raise InvalidInput(
            f"the job has no part for node {node_name!r} (it names: "
            f"{', '.join(p.name for p in spec.nodes)}); submit it to the nodes it names"
        )
    return part


def _levels(part: NodePart, columns_levels: Mapping[str, str]) -> list[tuple[str, str]]:
    touched = []
    for column in part.columns:
        if column not in columns_levels:
            raise InvalidInput(
                f"unknown column {column!r} in dataset {part.dataset!r} "
                f"(columns: {', '.join(columns_levels)})"
            )
        level = columns_levels[column]
        level_rank(level)
        touched.append((column, level))
    return touched


def _max_level(levels: Iterable[str]) -> str:
    return max(levels, key=level_rank, default=LEVELS[0])


def required_roles(
    spec: JobSpec, node_name: str, columns_levels: Mapping[str, str], policy: NodePolicy
) -> frozenset[str]:
    """Roles whose approval this node needs: the operator, plus every matching rule's roles.

    A rule matches when the job's kind is among its kinds, this node's dataset matches
    one of its globs, and the most protected column this node's part touches is at the
    rule's ``min_level`` or above.
    """
    part = _part(spec, node_name)
    level = _max_level(level for _, level in _levels(part, columns_levels))
    roles = {OPERATOR}
    for rule in policy.approval:
        if rule.matches(spec.kind, part.dataset, level):
            roles |= rule.roles
    return frozenset(roles)


def check_submission(
    spec: JobSpec,
    node_name: str,
    dataset_columns: Mapping[str, str],
    key_column: str | None,
    policy: NodePolicy,
) -> NodePart:
    """Everything that refuses a job at submission, before any approver sees it.

    ``dataset_columns`` maps each column of this node's dataset to its level (in catalog
    order); ``key_column`` is the dataset's subject identifier, which may be matched on
    (psi, intersection_sum key) but never summed: a sum of identifiers over a small
    intersection gives them away. Returns this node's part of the job.
    """
    check_analyst(spec.analyst, policy)
    part = _part(spec, node_name)
    if spec.kind not in policy.allow_kinds:
        raise PolicyDenied(
            f"node {node_name!r} does not run {spec.kind} jobs (policy.allow_kinds: "
            f"{', '.join(k for k in KINDS if k in policy.allow_kinds) or 'none'})"
        )
    for column, level in _levels(part, dataset_columns):
        if level == "core":
            raise PolicyDenied(
                f"column '{part.dataset}.{column}' is classified core: no job may use it; "
                "remove it from the job"
            )
        pattern = policy.is_column_denied(part.dataset, column)
        if pattern is not None:
            raise PolicyDenied(
                f"column '{part.dataset}.{column}' is on this node's negative list "
                f"(policy.deny_columns: {pattern!r}); remove it from the job"
            )
    level = _max_level(level for _, level in _levels(part, dataset_columns))
    why = policy.dp.required(spec.kind, part.dataset, level)
    if why is not None and spec.dp is None:
        raise PolicyDenied(
            f"node {node_name!r} requires differential privacy for {why}: add a [dp] table to "
            "the job (epsilon or rho per run, max_rows_per_subject, bounds for every summed "
            "column, categories for every GROUP BY column)"
        )
    if spec.dp is not None:
        check_request(spec.dp, spec.kind, part.dataset, spec.analyst, policy.dp)
    summed: set[str] = set()  # the columns this node's part sums
    if spec.kind == "sum":
        summed = set(spec.params["columns"])
    elif spec.kind == "intersection_sum" and spec.params["values_node"] == part.name:
        summed = set(spec.params["values"])
    if key_column is not None and key_column in summed and key_column in part.columns:
        raise PolicyDenied(
            f"column '{part.dataset}.{key_column}' is the dataset's subject identifier and "
            f"cannot be summed: the sum over a small set gives identifiers away"
        )
    if policy.max_quota is not None:
        for meter in QUOTA_METERS:
            asked, cap = getattr(spec.quota, meter), getattr(policy.max_quota, meter)
            if asked is not None and cap is not None and asked > cap:
                raise PolicyDenied(
                    f"quota.{meter}: the job asks for {asked}, this node allows at most {cap} "
                    "(policy.max_quota); ask for less"
                )
    return part


# --------------------------------------------------------------------- status


@dataclass(frozen=True)
class Status:
    """Where a job stands at one node: pending, approved or rejected."""

    state: str
    present: frozenset[str]
    missing: frozenset[str]
    rejections: tuple[Decision, ...] = ()

    def require_approved(self, job: str) -> None:
        """Raise :class:`ApprovalRequired` unless approved, saying what is still needed."""
        if self.state == "rejected":
            who = "; ".join(f"{d.approver} ({d.role}): {d.reason}" for d in self.rejections)
            raise ApprovalRequired(f"job {job} was rejected by {who}")
        if self.state != "approved":
            raise ApprovalRequired(
                f"job {job} is pending approval: missing role(s) "
                f"{', '.join(sorted(self.missing))}"
                + (f" (approved so far: {', '.join(sorted(self.present))})" if self.present else "")
            )


def approval_status(required: frozenset[str], decisions: Sequence[Decision]) -> Status:
    """Rejected if any required role rejected (final); approved once every required role
    approved; otherwise pending. Decisions by roles that are not required do not count."""
    if not required:
        raise ValueError("approval_status needs at least one required role (the operator)")
    if len({d.job_id for d in decisions}) > 1:
        raise ValueError("approval_status got decisions for several jobs")
    rejections = tuple(d for d in decisions if d.decision == "reject" and d.role in required)
    present = frozenset(d.role for d in decisions if d.decision == "approve") & required
    missing = frozenset(required) - present
    if rejections:
        state = "rejected"
    elif missing:
        state = "pending"
    else:
        state = "approved"
    return Status(state, present, missing, rejections)


# ------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class Estimate:
    """The dry run approvers see before they decide."""

    kind: str
    node: str
    dataset: str
    columns: tuple[tuple[str, str], ...]  # (column, level)
    max_level: str
    runs: int
    rows_per_run: int
    rows_total: int
    reveals: str
    currency: str
    max_price: Decimal
    uncapped: tuple[str, ...]  # priced meters the quota does not cap
    # PSI kinds only: the node's minimums and the quota's items (None: uncapped)
    min_intersection_size: int | None = None
    min_peer_set_size: int | None = None
    items_cap: int | None = None

    def lines(self) -> list[str]:
        columns = ", ".join(f"{c} ({level})" for c, level in self.columns)
        # rounded up, so the statement total (rounded half up) can never exceed it
        shown = self.max_price.quantize(TOTAL_QUANTUM, rounding=ROUND_CEILING)
        price = f"at most {shown} {self.currency}"
        if self.uncapped:
            price += f" plus uncapped {', '.join(self.uncapped)}"
        capped = f" = {self.rows_total}"
        if self.rows_total < self.rows_per_run * self.runs:
            capped = f", at most {self.rows_total} (the quota's rows_scanned)"
        lines = [
            f"{self.kind} job on {self.node}: dataset {self.dataset}",
            f"columns: {columns} (highest level: {self.max_level})",
            f"rows scanned: {self.rows_per_run} per run × {self.runs} runs{capped}",
            f"reveals: {self.reveals}",
        ]
        if self.kind in PSI_KINDS:
            lines += [
                f"this node's set size: at most {self.rows_per_run} distinct keys (the dataset "
                "version's rows)",
                "the peer's set size: revealed at each run; refused below min_peer_set_size = "
                f"{self.min_peer_set_size}",
                "released only if the intersection has at least min_intersection_size = "
                f"{self.min_intersection_size} keys (at this node)",
            ]
        lines.append(f"price: {price}")
        if self.rows_per_run and self.rows_total < self.rows_per_run:
            lines.append(
                f"warning: the quota's rows_scanned ({self.rows_total}) is less than one run "
                f"scans ({self.rows_per_run}): every run would be refused; ask for at least "
                f"{self.rows_per_run} per run"
            )
        if self.kind in PSI_KINDS and self.items_cap is not None \
                and self.items_cap < self.rows_per_run:
            lines.append(
                f"warning: the quota's items ({self.items_cap}) is less than one run needs "
                f"(this node's {self.rows_per_run} keys, plus the peer's): every run would be "
                f"refused; ask for at least {self.rows_per_run} plus the peer's set size per run"
            )
        return lines


def reveals(spec: JobSpec, *, min_group_size: int) -> str:
    """One sentence on what the output of a job discloses."""
    if spec.dp is not None:
        what = "COUNT, SUM and AVG" if spec.kind == "query" else "totals and row counts"
        return (f"{what} of every declared group, each with differentially private noise "
                "(none suppressed or withheld); what one subject can change is bounded by the "
                "budget each run spends")
    if spec.kind == "query":
        return f"aggregates over groups of ≥ {min_group_size} subjects; suppressed groups counted"
    if spec.kind == "sum":
        return ("per declared group: the total and row count over the nodes that contributed "
                "it, and how many nodes withheld it (never which); no node's own part")
    if spec.kind == "psi":
        if spec.params["output"] == "membership":
            return ("which of its own rows match, to each receiver (as a new local dataset); "
                    "the size of the intersection and both set sizes to the analyst")
        return ("the size of the intersection; each node's set size to the other node and the "
                "analyst")
    values = ", ".join(spec.params["values"])
    return (f"the size of the intersection and the totals of {values} over it, to the analyst "
            "only (encrypted under the analyst's key); both set sizes")


def estimate(
    spec: JobSpec,
    part: NodePart,
    rows: int,
    columns_levels: Mapping[str, str],
    tariff: Tariff,
    *,
    min_group_size: int = 10,
    quota: Quota | None = None,
    policy: NodePolicy | None = None,
) -> Estimate:
    """What the job would touch, reveal and cost at this node if it used its full quota.

    ``rows`` is the dataset version's row count; ``quota`` defaults to the job's request
    (pass the effective quota to include approvals and the node's cap). The maximum price
    covers the capped meters; priced meters without a cap are listed in ``uncapped``.
    """
    quota = spec.quota if quota is None else quota
    if policy is not None:
        min_group_size = policy.min_group_size
    psi = spec.kind in PSI_KINDS
    mins = NodePolicy() if policy is None else policy
    if quota.runs is None:
        raise ValueError("estimate needs a quota that caps runs (a job's quota always does)")
    touched = _levels(part, columns_levels)
    rows_total = rows * quota.runs
    if quota.rows_scanned is not None:
        rows_total = min(rows_total, quota.rows_scanned)
    max_price = Decimal(0)
    uncapped = []
    for meter in METER_NAMES:
        unit = tariff.unit_price(meter)
        cap = getattr(quota, meter) if meter in QUOTA_METERS else None
        if cap is not None:
            max_price += unit * cap
        elif unit:
            uncapped.append(meter)
    return Estimate(
        kind=spec.kind,
        node=part.name,
        dataset=part.dataset,
        columns=tuple(touched),
        max_level=_max_level(level for _, level in touched),
        runs=quota.runs,
        rows_per_run=rows,
        rows_total=rows_total,
        reveals=reveals(spec, min_group_size=min_group_size),
        currency=tariff.currency,
        max_price=max_price,
        uncapped=tuple(uncapped),
        min_intersection_size=mins.min_intersection_size if psi else None,
        min_peer_set_size=mins.min_peer_set_size if psi else None,
        items_cap=quota.items if psi else None,
    )

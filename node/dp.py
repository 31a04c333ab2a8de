"""Differential privacy at a node: budgets in its state, noisy releases, the dry run's errors.

The job language (``veil.node.jobs._dp``) says what a job spends and what a node allows; the
sandbox (``veil.sandbox``) computes exact aggregates with every subject's contribution
bounded; OpenDP (``veil.protocols.dp``) calibrates and draws the noise. This module joins them
at one node:

- :func:`plan` splits a run's spend over the measurements a query makes (a count, a sum per
  column) and calibrates each one's noise to its sensitivity; by basic composition (ε) or
  additivity (ρ) the run as a whole costs no more than the job states.
- :func:`check` refuses a run, before any data is read, when the analyst's budget on the
  dataset has less left than the run costs; :func:`charge` is the effect that spends it
  *inside* the release's log entry transaction, re-checking there, so two concurrent runs
  racing for the last of a budget can never both be released: the log's single writer
  serializes the transactions and the second one finds too little left and is logged as
  refused, uncharged, releasing nothing. The period a release is charged to is the one holding
  its log entry's time: a run that starts before a renewal and is released after it spends
  from the new period, exactly once.
- The noise drawn for a release is kept in the node's state (``dp_noise``), never in the log
  and never sent, so that ``veil audit replay`` recomputes the exact aggregates from the
  pinned snapshot, adds the same draws and reproduces the released digest. OpenDP's samplers
  draw from the operating system and cannot be seeded (by design: a seed is one more secret
  that breaks privacy when it leaks), so the draws themselves are what the node keeps; they
  are as sensitive as the data (exact = released - noise) and stay with it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from veil import sandbox
from veil.node.errors import BUDGET_EXHAUSTED, BudgetExhausted, InvalidInput, VeilError
from veil.node.jobs import BudgetRule, DpPolicy, DpRequest, JobSpec, parse_time
from veil.node.jobs._dp import check_request, text
from veil.node.log import Effect
from veil.protocols import dp as mech


# --------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Standing:
    """An analyst's budget on one dataset in the current period."""

    analyst: str
    dataset: str
    rule: BudgetRule
    period_start: str
    period_end: str | None
    spent: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.rule.total - self.spent)

    @property
    def unit(self) -> str:
        return "ε" if self.rule.measure == "epsilon" else "ρ"

    def to_dict(self) -> dict[str, str]:
        """The fields of a ``DpBudget`` message."""
        return {"dataset": self.dataset, "measure": self.rule.measure,
                "total": text(self.rule.total), "spent": text(self.spent),
                "remaining": text(self.remaining), "period_start": self.period_start,
                "period_end": self.period_end or "", "max_per_run": text(self.rule.max_per_run)}


def _spent(conn: sqlite3.Connection, holder: str, dataset: str, measure: str,
           period_start: str) -> Decimal:
    row = conn.execute(
        "SELECT spent FROM dp_spent WHERE analyst = ? AND dataset = ? AND measure = ?"
        " AND period_start = ?", (holder, dataset, measure, period_start)).fetchone()
    return Decimal(row[0]) if row else Decimal(0)


def standing(conn: sqlite3.Connection, rule: BudgetRule, analyst: str, dataset: str,
             now: datetime | None = None) -> Standing:
    """``analyst``'s budget on ``dataset`` at ``now``: their own, or the rule's shared one."""
    start, end = rule.period(now or datetime.now(UTC))
    return Standing(analyst, dataset, rule, start, end,
                    _spent(conn, rule.holder(analyst), dataset, rule.measure, start))


def standings(conn: sqlite3.Connection, policy: DpPolicy, analyst: str,
              datasets: Sequence[str]) -> list[Standing]:
    """The analyst's budget on each of ``datasets`` that has one, now (a derived dataset
    spends from its source's, which is listed instead)."""
    from veil.node import catalog

    out = []
    for name in datasets:
        if catalog.privacy_unit(conn, name) != name:
            continue
        rule = policy.budget_for(name, analyst)
        if rule is not None:
            out.append(standing(conn, rule, analyst, name))
    return out


def _refusal(s: Standing, cost: Decimal) -> BudgetExhausted:
    until = f" until {s.period_end}, when it renews" if s.period_end else " (it never renews)"
    whose = (f"the budget analyst {s.analyst!r} shares with {', '.join(s.rule.analysts)}"
             if s.rule.shared else f"analyst {s.analyst!r}")
    return BudgetExhausted(
        f"{BUDGET_EXHAUSTED}: {whose} has {s.unit} = "
        f"{text(s.remaining)} left of {text(s.rule.total)} on dataset {s.dataset!r}{until}; "
        f"one run of this job spends {text(cost)}"
    )


def check(conn: sqlite3.Connection, rule: BudgetRule, analyst: str, dataset: str,
          cost: Decimal) -> Standing:
    """Refuse before any data is read when less than ``cost`` is left; return the standing."""
    s = standing(conn, rule, analyst, dataset)
    if s.spent + cost > rule.total:
        raise _refusal(s, cost)
    return s


def charge(rule: BudgetRule, analyst: str, dataset: str, cost: Decimal, noise: bytes,
           on_charged: Any = None) -> Effect:
    """The effect that spends ``cost`` and keeps the release's noise, in its log entry's
    transaction; it re-checks the remainder there and refuses (uncharged) when too little is
    left. ``on_charged(standing)`` is told what remains, to put in the answer."""

    def effect(tx: sqlite3.Connection, index: int) -> None:
        (entry,) = tx.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
        moment = parse_time(json.loads(entry)["t"], "log entry time")
        s = standing(tx, rule, analyst, dataset, moment)
        if s.spent + cost > rule.total:
            raise _refusal(s, cost)
        spent = text(s.spent + cost)
        tx.execute(
            "INSERT INTO dp_spent(analyst, dataset, measure, period_start, spent)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (analyst, dataset, measure, period_start)"
            " DO UPDATE SET spent = excluded.spent",
            (rule.holder(analyst), dataset, rule.measure, s.period_start, spent))
        tx.execute(
            "INSERT INTO dp_releases(log_index, analyst, dataset, measure, period_start, spent)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (index, analyst, dataset, rule.measure, s.period_start, text(cost)))
        tx.execute("INSERT INTO dp_noise(log_index, noise) VALUES (?, ?)", (index, noise))
        if on_charged is not None:
            on_charged(Standing(analyst, dataset, rule, s.period_start, s.period_end,
                                s.spent + cost))

    return effect


def releases(conn: sqlite3.Connection, analyst: str) -> dict[int, dict[str, str]]:
    """Each charged release of ``analyst``: log index → dataset, measure, spent."""
    rows = conn.execute("SELECT log_index, dataset, measure, period_start, spent FROM "
                        "dp_releases WHERE analyst = ?", (analyst,)).fetchall()
    return {int(i): {"dataset": d, "measure": m, "period_start": p, "spent": s}
            for i, d, m, p, s in rows}


# --------------------------------------------------------------------------- noise


def budget_rule(spec: JobSpec, dataset: str, policy: DpPolicy) -> tuple[BudgetRule, Decimal]:
    """The budget a DP job spends at this node, under the node's policy *now* (it may have
    changed since submission), and what one run costs from it."""
    assert spec.dp is not None
    rule = check_request(spec.dp, spec.kind, dataset, spec.analyst, policy)
    return rule, rule.cost(spec.dp)


@dataclass(frozen=True)
class Funded:
    """A DP run admitted at a node: the budget rule it spends from, what one run costs,
    and the dataset whose budget pays (the privacy unit: see ``catalog.privacy_unit``)."""

    rule: BudgetRule
    cost: Decimal
    unit: str

    def charge(self, analyst: str, noise: bytes, on_charged: Any = None) -> Effect:
        return charge(self.rule, analyst, self.unit, self.cost, noise, on_charged)


def admit(ctx: Any, spec: JobSpec, dataset: str) -> Funded:
    """Before any data is read: the node's policy *now* funds this run of ``spec`` on
    ``dataset``, and the analyst's budget has enough left; otherwise the precise refusal."""
    from veil.node import catalog

    rule, cost = budget_rule(spec, dataset, ctx.home.config.policy.dp)
    with ctx.lock:
        unit = catalog.privacy_unit(ctx.conn, dataset)
        check(ctx.conn, rule, spec.analyst, unit, cost)
    return Funded(rule, cost, unit)


def check_fundable(conn: sqlite3.Connection, spec: JobSpec, dataset: str,
                   policy: DpPolicy) -> None:
    """At submission: refuse a DP job whose budget can never pay for one run (it has less left
    than a run spends and never renews). A budget that renews may pay later: the dry run says
    how many runs it covers now."""
    from veil.node import catalog

    rule, cost = budget_rule(spec, dataset, policy)
    if rule.renew_s is None:
        check(conn, rule, spec.analyst, catalog.privacy_unit(conn, dataset), cost)


def sandbox_spec(request: DpRequest) -> sandbox.DpSpec:
    return sandbox.DpSpec(
        max_rows_per_subject=request.max_rows_per_subject,
        bounds=dict(request.bounds),
        categories=dict(request.categories),
        scale=request.scale,
    )


def calibration(request: DpRequest) -> tuple[str, Decimal]:
    """The measure the job's noise is calibrated in and the loss of one run in it."""
    if request.stated == "epsilon":
        return "epsilon", request.per_run
    return "rho", request.rho


def plan(request: DpRequest, sensitivities: Sequence[int], nodes: int = 1) -> list[mech.Noise]:
    """One calibrated noise per measurement: the run's loss split equally over them.

    For a total over ``nodes`` contributors each node adds the returned noise: a share of
    the Gaussian (``protocols.dp.shared``), or under pure ε the full Laplace noise."""
    if not sensitivities:
        raise InvalidInput("dp: the query makes no measurement to release")
    measure, total = calibration(request)
    share = mech.split(total, len(sensitivities))
    return [_noise(measure, share, s, nodes) for s in sensitivities]


@functools.lru_cache(maxsize=1024)
def _noise(measure: str, share: Decimal, sensitivity: int, nodes: int) -> mech.Noise:
    """One calibration (a search against OpenDP's privacy map), once per job and measurement:
    a function of its arguments only."""
    if measure == "rho":
        return mech.shared(measure, share, sensitivity, nodes)
    return mech.calibrate(measure, share, sensitivity)


def pack_noise(draws: Sequence[Sequence[int]]) -> bytes:
    return zlib.compress(json.dumps([list(d) for d in draws], separators=(",", ":")).encode())


def unpack_noise(blob: bytes) -> list[list[int]]:
    data = json.loads(zlib.decompress(blob))
    if not isinstance(data, list) or not all(
            isinstance(d, list) and all(isinstance(x, int) for x in d) for d in data):
        raise InvalidInput("dp_noise: not a list of integer lists")
    return data


def noise_of(conn: sqlite3.Connection, index: int) -> list[list[int]]:
    row = conn.execute("SELECT noise FROM dp_noise WHERE log_index = ?", (index,)).fetchone()
    if row is None:
        raise InvalidInput(f"entry {index}: its noise is not in the node's state")
    return unpack_noise(bytes(row[0]))


def label(m: Any) -> str:
    """How a measurement reads in results and dry runs: ``COUNT(*)``, ``SUM(amount)``."""
    return f"{m.kind.upper()}({m.column or '*'})"


def unit(m: Any, scale: int) -> Decimal:
    """One fixed-point unit of a measurement in the column's own units."""
    return Decimal(1).scaleb(-scale) if m.kind == "sum" else Decimal(1)


def estimate_lines(request: DpRequest, rule: BudgetRule, left: Standing | None,
                   measurements: Sequence[Any], nodes: int = 1) -> list[str]:
    """The dry run's differential-privacy lines: what a run spends, what remains, and the
    error each measurement will carry (95% of draws are within ±the figure shown; for a
    total over ``nodes``, the error of this node's share and of the total)."""
    cost = rule.cost(request)
    unit_name = "ε" if rule.measure == "epsilon" else "ρ"
    lines = [f"differential privacy: each run spends {request.spend_text()} at this node",
             f"budget: {rule.describe()}"]
    if left is not None:
        runs = int(left.remaining // cost) if cost else 0
        until = f" until {left.period_end}" if left.period_end else ""
        lines.append(f"budget left for {left.analyst} on {left.dataset}: {unit_name} = "
                     f"{text(left.remaining)}{until} ({runs} run{'s' if runs != 1 else ''} "
                     f"of {text(cost)})")
    noises = plan(request, [m.sensitivity for m in measurements], nodes)
    errors = []
    for m, n in zip(measurements, noises):
        u = unit(m, request.scale)
        if nodes == 1:
            errors.append(f"{label(m)} ±{_fmt(Decimal(repr(n.accuracy(0.05))) * u)} "
                          f"({n.mechanism}, scale {_fmt(Decimal(repr(n.scale)) * u)})")
        else:  # the total carries the nodes' independent draws: its std is √nodes times one
            total_std = Decimal(repr(n.std() * nodes ** 0.5)) * u
            errors.append(f"{label(m)} of the total: std {_fmt(total_std)} ({n.mechanism}, "
                          f"this node's share scale {_fmt(Decimal(repr(n.scale)) * u)})")
    lines.append("expected error per run (95%): " + "; ".join(errors)
                 + ("; an AVG is its SUM over its COUNT" if any(
                     m.kind == "sum" for m in measurements) else ""))
    lines.append(f"rows per subject counted: at most {request.max_rows_per_subject}; summed "
                 "values clamped to the declared bounds; groups: the declared categories only")
    return lines


def _fmt(d: Decimal) -> str:
    if abs(d) >= 100:
        return f"{d:,.0f}"
    return f"{d:.3g}"


def _columns_of(dq: Any, m: int) -> list[str]:
    """The output columns made from measurement ``m``."""
    return [o.name for o in dq.outputs if o.kind != "key" and m in o.refs]


def log_details(rule: BudgetRule, cost: Decimal, dq: Any,
                noises: Sequence[mech.Noise]) -> dict[str, Any]:
    """What the log keeps of a release: the budget spent and how each measurement was
    noised (mechanism, scale, share), never the noise itself. Its size is bounded by the
    query's select list, not by the job (whose declared categories may run to thousands:
    the job is in the node's state, by the id the entry names)."""
    return {
        "budget": {"measure": rule.measure, "spent": text(cost)},
        "releases": [{"measurement": label(m), **n.to_dict()}
                     for m, n in zip(dq.measurements, noises)],
    }


def describe_release(response: Any, dq: Any, noises: Sequence[mech.Noise], scale: int) -> None:
    """Fill a result's ``dp`` list: per measurement, the mechanism, scale, loss and error."""
    for i, (m, n) in enumerate(zip(dq.measurements, noises)):
        u = float(unit(m, scale))
        response.dp.add(measurement=label(m), columns=_columns_of(dq, i),
                        mechanism=n.mechanism, measure=n.measure, spent=text(n.spend),
                        scale=n.scale * u, std=n.std() * u, ci95=n.accuracy(0.05) * u)


def dry_run(ctx: Any, spec: JobSpec, dataset: str, measurements: Sequence[Any],
            nodes: int = 1) -> list[str]:
    """:func:`estimate_lines` for a job at the node of ``ctx``, with the analyst's budget now;
    a job the node's policy no longer funds says so instead."""
    assert spec.dp is not None
    try:
        rule, _cost = budget_rule(spec, dataset, ctx.home.config.policy.dp)
    except VeilError as exc:
        return [f"differential privacy: {exc}"]
    from veil.node import catalog

    with ctx.lock:
        left = standing(ctx.conn, rule, spec.analyst, catalog.privacy_unit(ctx.conn, dataset))
    return estimate_lines(spec.dp, rule, left, measurements, nodes)


def sum_noise_lines(spec: JobSpec) -> list[str]:
    """What the noise of a sum job's totals is, as the analyst reads it: computed from the
    signed job alone, exactly as every node sizes its share (with the sandbox's
    sensitivities, and the plan's split)."""
    from veil.node.jobs import sum_params

    assert spec.dp is not None
    p, request, n = sum_params(spec.params), spec.dp, len(spec.nodes)
    bounded = sandbox_spec(request)
    measured = [(f"SUM({c})", sandbox.measurement_sensitivity(bounded, "sum", c),
                 Decimal(1).scaleb(-p.scale)) for c in p.columns]
    measured.append(("COUNT(*)", sandbox.measurement_sensitivity(bounded, "count", None),
                     Decimal(1)))
    noises = plan(request, [s for _, s, _ in measured], n)
    lines = []
    for (what, _, u), noise in zip(measured, noises):
        share = "a share of" if noise.measure == "rho" and n > 1 else "the full"
        total_std = noise.std() * (n ** 0.5) * float(u)
        lines.append(f"{what}: {noise.mechanism} noise, each node adds {share} it; std of a "
                     f"total {_fmt(Decimal(repr(total_std)))}, spent "
                     f"{'ε' if noise.measure == 'epsilon' else 'ρ'} = {text(noise.spend)} at "
                     "each node")
    return lines

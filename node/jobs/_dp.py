"""Differential privacy in the job language: what a job spends, and what a node allows.

A job asks for differential privacy with a ``[dp]`` table; every approval binds it, since it
is part of the signed spec::

    [dp]
    epsilon = 0.5                  # spent at each node per run: pure ε-DP (discrete Laplace)
    # rho = 0.125                  # ... or ρ-zCDP (discrete Gaussian)
    # epsilon = 1.0, delta = 1e-6  # ... or (ε, δ)-DP, run as the largest ρ-zCDP that implies it
    max_rows_per_subject = 1       # rows of one subject that count (more are left out)
    scale = 0                      # decimal digits kept of summed values
    bounds = { amount = [0, 20000] }                    # every summed column, clamped per row
    categories = { region = ["north", "south", "east"] }  # every GROUP BY column, declared

The node's side is ``[policy.dp]`` in node.toml (:class:`DpPolicy`): which jobs must use
differential privacy (by dataset, or by the level of the columns they touch), and each
analyst's budget per dataset, with an optional renewal period and a cap per run::

    [policy.dp]
    require_datasets = ["customers"]   # every query and sum job on these (globs)
    require_min_level = "sensitive"    # every query and sum job touching such a column
    require_kinds = ["query"]          # optional: the kinds required to (default query, sum)

    [[policy.dp.budget]]
    datasets = ["customers"]           # globs; the first matching rule applies
    analysts = ["*"]                   # globs; each analyst has a budget of their own
    epsilon = "3"                      # or rho = "1", or epsilon + delta (kept as ρ)
    max_per_run = "1"                  # in the budget's measure
    renew = "30d"                      # d, h, m or s; periods start at multiples of it since
                                       # 1970-01-01T00:00:00Z; omit for a budget that never renews
    shared = false                     # true: one budget for all matching analysts together

What a budget means. A budget in ε (pure DP) is spent by basic composition: the ε of every
release adds up, and a sequence of releases whose ε sum to at most the budget is ε-DP for each
subject of the dataset. A budget in ρ (zCDP) adds the ρ of every release; a pure ε-DP release
is also (ε²/2)-zCDP (Bun & Steinke 2016, Prop. 1.4), so a ρ budget can be spent by jobs of
either measure, and a total ρ implies (ρ + 2·sqrt(ρ·ln(1/δ)), δ)-DP for every δ > 0. A pure
ε budget cannot be spent by a Gaussian (ρ) release, which is not ε-DP for any ε. The budget is
per dataset *name*: a new version of a dataset describes the same people, so it does not
reset what was spent on them.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from veil.node.errors import InvalidInput, PolicyDenied

#: the kinds that can run under differential privacy (a policy's requirement applies to these)
DP_KINDS = ("query", "sum")
#: the largest privacy loss one job may state per run, in any measure: beyond it "privacy" is
#: a word only, and a typo (epsilon = 50) must not pass
MAX_SPEND = Decimal(10)
MAX_PLACES = 12  # decimal places of a stated ε, δ or ρ
MAX_ROWS_PER_SUBJECT = 1000
MAX_BOUND_UNITS = 10**15  # |bound| · 10^scale: keeps 64-bit totals exact
MAX_SCALE = 12
MAX_CATEGORIES = 10_000  # per GROUP BY column
MAX_CATEGORY_CHARS = 200
_RENEW = re.compile(r"([1-9][0-9]{0,5})([dhms])")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DP_KEYS = ("epsilon", "delta", "rho", "max_rows_per_subject", "scale", "bounds", "categories")


def decimal(value: object, where: str, *, places: int = MAX_PLACES) -> Decimal:
    """A finite decimal from TOML (integer, float or string) or canonical JSON (string).

    A TOML float is read through its shortest repr (``0.1`` is exactly ``Decimal("0.1")``),
    so budgets add up exactly.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    try:
        d = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise InvalidInput(f"{where}: expected a number, got {value!r}") from None
    if not d.is_finite():
        raise InvalidInput(f"{where}: expected a finite number, got {value!r}")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise InvalidInput(f"{where}: at most {places} decimal places, got {value!r}")
    return d.normalize() if d != 0 else Decimal(0)


def text(d: Decimal) -> str:
    """The canonical text of a decimal: no exponent, no trailing zeros (``"0.5"``, ``"3"``)."""
    s = format(d.normalize(), "f")
    return s if "." not in s else s.rstrip("0").rstrip(".")


def _positive(value: object, where: str, cap: Decimal = MAX_SPEND) -> Decimal:
    d = decimal(value, where)
    if d <= 0:
        raise InvalidInput(f"{where}: must be more than 0, got {value!r}")
    if d > cap:
        raise InvalidInput(f"{where}: at most {cap} (a larger loss protects nobody), got {value!r}")
    return d


def _delta(value: object, where: str) -> Decimal:
    d = decimal(value, where, places=30)
    if not 0 < d < Decimal("1e-3"):
        raise InvalidInput(f"{where}: expected 0 < delta < 0.001 (a delta near 1/rows lets a "
                           f"release name someone), got {value!r}")
    return d


# ------------------------------------------------------------------------ the job's side


@dataclass(frozen=True)
class DpRequest:
    """A job's ``[dp]`` table, typed. ``measure`` is how the job's noise is calibrated:
    ``"epsilon"`` (pure, Laplace) or ``"rho"`` (zCDP, Gaussian; also for ε with δ)."""

    per_run: Decimal  # in the stated measure: ε, or ρ, or ε at ``delta``
    stated: str  # "epsilon" | "rho" | "epsilon-delta": what the analyst wrote
    delta: Decimal | None
    max_rows_per_subject: int
    scale: int
    bounds: Mapping[str, tuple[Decimal, Decimal]] = field(
        default_factory=lambda: MappingProxyType({}))
    categories: Mapping[str, tuple[str | int, ...]] = field(
        default_factory=lambda: MappingProxyType({}))

    @property
    def measure(self) -> str:
        return "epsilon" if self.stated == "epsilon" else "rho"

    @property
    def rho(self) -> Decimal:
        """The per-run loss in ρ-zCDP (for a Gaussian release, or charging a ρ budget)."""
        if self.stated == "rho":
            return self.per_run
        if self.stated == "epsilon":
            return self.per_run * self.per_run / 2  # ε-DP ⇒ (ε²/2)-zCDP
        assert self.delta is not None
        return _rho_for(self.per_run, self.delta)

    def spend_text(self) -> str:
        """What one run spends at each node, as an approver reads it."""
        if self.stated == "epsilon":
            return f"ε = {text(self.per_run)} (pure ε-DP, discrete Laplace noise)"
        if self.stated == "rho":
            return f"ρ = {text(self.per_run)} (zCDP, discrete Gaussian noise)"
        assert self.delta is not None
        return (f"ε = {text(self.per_run)} at δ = {text(self.delta)} (run as ρ = "
                f"{text(self.rho)} zCDP, discrete Gaussian noise)")

    def to_obj(self) -> dict[str, Any]:
        """The canonical JSON form (decimals as strings: canonical JSON has no floats)."""
        obj: dict[str, Any] = {
            "max_rows_per_subject": self.max_rows_per_subject,
            "scale": self.scale,
            "bounds": {c: [text(lo), text(hi)] for c, (lo, hi) in sorted(self.bounds.items())},
            "categories": {c: list(v) for c, v in sorted(self.categories.items())},
        }
        if self.stated == "rho":
            obj["rho"] = text(self.per_run)
        else:
            obj["epsilon"] = text(self.per_run)
        if self.delta is not None:
            obj["delta"] = text(self.delta)
        return obj


@functools.lru_cache(maxsize=64)
def _rho_for(epsilon: Decimal, delta: Decimal) -> Decimal:
    """OpenDP's (ε, δ) → ρ search takes about a quarter of a second: once per pair."""
    from veil.protocols import dp

    return dp.rho_for(epsilon, delta)


def parse_request(table: object, where: str = "dp") -> DpRequest:
    """A job's ``[dp]`` table (from TOML or canonical JSON) into a :class:`DpRequest`."""
    if not isinstance(table, Mapping):
        raise InvalidInput(f"{where}: expected a [dp] table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(_DP_KEYS))
    if unknown:
        raise InvalidInput(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(_DP_KEYS)})")
    has_eps, has_rho = "epsilon" in table, "rho" in table
    if has_eps == has_rho:
        raise InvalidInput(
            f"{where}: state what one run spends at each node: epsilon = 0.5 (pure DP), "
            "rho = 0.125 (zCDP), or epsilon with delta" + ("; not both" if has_eps else "")
        )
    delta = _delta(table["delta"], f"{where}.delta") if "delta" in table else None
    if has_rho and delta is not None:
        raise InvalidInput(f"{where}.delta: goes with epsilon, not rho (ρ-zCDP needs no δ)")
    if has_rho:
        per_run, stated = _positive(table["rho"], f"{where}.rho"), "rho"
    else:
        per_run = _positive(table["epsilon"], f"{where}.epsilon")
        stated = "epsilon" if delta is None else "epsilon-delta"
    k = table.get("max_rows_per_subject")
    if k is None:
        raise InvalidInput(
            f"{where}.max_rows_per_subject: required: how many rows of one subject may count "
            "(1 for a table with one row per customer); it bounds what one person can change"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_ROWS_PER_SUBJECT:
        raise InvalidInput(f"{where}.max_rows_per_subject: expected an integer from 1 to "
                           f"{MAX_ROWS_PER_SUBJECT}, got {k!r}")
    scale = table.get("scale", 0)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
        raise InvalidInput(f"{where}.scale: expected an integer from 0 to {MAX_SCALE}, "
                           f"got {scale!r}")
    return DpRequest(
        per_run=per_run, stated=stated, delta=delta, max_rows_per_subject=k, scale=scale,
        bounds=MappingProxyType(_bounds(table.get("bounds", {}), scale, f"{where}.bounds")),
        categories=MappingProxyType(_categories(table.get("categories", {}),
                                                f"{where}.categories")),
    )


def _bounds(table: object, scale: int, where: str) -> dict[str, tuple[Decimal, Decimal]]:
    from veil.node.jobs._spec import check_identifier

    if not isinstance(table, Mapping):
        raise InvalidInput(f"{where}: expected a table like {{ amount = [0, 20000] }}")
    out = {}
    for column, pair in table.items():
        check_identifier(column, where)
        at = f"{where}.{column}"
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise InvalidInput(f"{at}: expected [lower, upper], got {pair!r}")
        lo = decimal(pair[0], f"{at} lower bound", places=scale)
        hi = decimal(pair[1], f"{at} upper bound", places=scale)
        if lo > hi:
            raise InvalidInput(f"{at}: the lower bound {text(lo)} is above the upper bound "
                               f"{text(hi)}; write [lower, upper]")
        if max(abs(lo), abs(hi)) * 10**scale > MAX_BOUND_UNITS:
            raise InvalidInput(f"{at}: |bound| × 10^scale must be at most {MAX_BOUND_UNITS:.0e} "
                               "(totals are exact 64-bit integers); use a smaller scale or bound")
        out[column] = (lo, hi)
    return out


def _categories(table: object, where: str) -> dict[str, tuple[str | int, ...]]:
    from veil.node.jobs._spec import check_identifier, check_text

    if not isinstance(table, Mapping):
        raise InvalidInput(f"{where}: expected a table like {{ region = [\"north\", \"south\"] }}")
    out: dict[str, tuple[str | int, ...]] = {}
    for column, values in table.items():
        check_identifier(column, where)
        at = f"{where}.{column}"
        if not isinstance(values, list | tuple) or not 1 <= len(values) <= MAX_CATEGORIES:
            raise InvalidInput(f"{at}: expected a list of 1 to {MAX_CATEGORIES} values")
        strings = all(isinstance(v, str) for v in values)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        if not (strings or ints):
            raise InvalidInput(f"{at}: expected all strings or all integers")
        for v in values:
            if isinstance(v, str):
                check_text(v, at, max_len=MAX_CATEGORY_CHARS, allow_empty=True)
            elif abs(v) >= 2**63:
                raise InvalidInput(f"{at}: {v} does not fit a 64-bit integer")
        if len(set(values)) != len(values):
            raise InvalidInput(f"{at}: a category is listed twice")
        out[column] = tuple(values)
    return out


# ------------------------------------------------------------------------ the node's side


@dataclass(frozen=True)
class BudgetRule:
    """Each analyst matching ``analysts`` has ``total`` to spend on each dataset matching
    ``datasets``, per ``renew_s`` seconds (None: once), at most ``max_per_run`` per run."""

    measure: str  # "epsilon" | "rho"
    total: Decimal
    max_per_run: Decimal
    renew_s: int | None = None
    datasets: tuple[str, ...] = ("*",)
    analysts: tuple[str, ...] = ("*",)
    #: when the total was stated as (ε, δ): for display
    approx: tuple[Decimal, Decimal] | None = None
    #: one budget for all matching analysts together (analysts who may pool their results)
    shared: bool = False

    def __post_init__(self) -> None:
        if self.measure not in ("epsilon", "rho"):
            raise InvalidInput(f"budget: measure must be epsilon or rho, got {self.measure!r}")
        if not 0 < self.max_per_run <= self.total:
            raise InvalidInput(f"budget: max_per_run must be more than 0 and at most the total "
                               f"{text(self.total)}, got {text(self.max_per_run)}")

    def matches(self, dataset: str, analyst: str) -> bool:
        return (any(fnmatchcase(dataset, p) for p in self.datasets)
                and any(fnmatchcase(analyst, p) for p in self.analysts))

    def holder(self, analyst: str) -> str:
        """Whose budget ``analyst`` spends: their own, or the rule's shared one."""
        return f"shared:{','.join(self.analysts)}" if self.shared else analyst

    def period(self, moment: datetime) -> tuple[str, str | None]:
        """The budget period holding ``moment``: its start and end (RFC 3339; end None for
        a budget that never renews, whose one period starts at the epoch)."""
        from veil.node.jobs._spec import format_time

        if self.renew_s is None:
            return "1970-01-01T00:00:00Z", None
        start = math.floor(moment.timestamp()) // self.renew_s * self.renew_s
        return (format_time(datetime.fromtimestamp(start, moment.tzinfo)),
                format_time(datetime.fromtimestamp(start + self.renew_s, moment.tzinfo)))

    def cost(self, request: DpRequest) -> Decimal:
        """What one run of ``request`` spends from this budget, in its measure."""
        if self.measure == "epsilon":
            if request.stated != "epsilon":
                raise InvalidInput(
                    "dp: this node's budget is in pure ε-DP, which a Gaussian (ρ or ε with δ) "
                    "release never satisfies; state epsilon alone"
                )
            return request.per_run
        return request.rho

    def describe(self) -> str:
        unit = "ε" if self.measure == "epsilon" else "ρ"
        s = f"{unit} = {text(self.total)}"
        if self.approx is not None:
            s += f" (from ε = {text(self.approx[0])} at δ = {text(self.approx[1])})"
        s += f", at most {text(self.max_per_run)} per run, "
        s += "never renewed" if self.renew_s is None else f"renewed every {_period_text(self.renew_s)}"
        if self.shared:
            s += f"; one budget shared by the analysts {', '.join(self.analysts)}"
        return s


def _period_text(seconds: int) -> str:
    for unit, size in _UNIT_S.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError(seconds)


def parse_renew(value: object, where: str) -> int:
    """``"30d"``, ``"12h"``, ``"15m"`` or ``"10s"`` in seconds."""
    m = _RENEW.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidInput(f"{where}: expected a period like \"30d\", \"12h\", \"15m\" or "
                           f"\"10s\", got {value!r}")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class DpPolicy:
    """``[policy.dp]``: which jobs must be differentially private, and the budgets."""

    require_datasets: tuple[str, ...] = ()
    require_min_level: str | None = None
    budgets: tuple[BudgetRule, ...] = ()
    #: the kinds the requirement applies to (of those that can run under DP)
    require_kinds: tuple[str, ...] = DP_KINDS

    def __post_init__(self) -> None:
        for kind in self.require_kinds:
            if kind not in DP_KINDS:
                raise InvalidInput(f"policy.dp.require_kinds: {kind!r} cannot run under "
                                   f"differential privacy (kinds that can: {', '.join(DP_KINDS)})")

    def required(self, kind: str, dataset: str, max_level: str) -> str | None:
        """Why a job of ``kind`` on ``dataset``, touching columns up to ``max_level``, must use
        differential privacy here (None: it need not)."""
        from veil.node.jobs._policy import level_rank

        if kind not in self.require_kinds:
            return None
        for pattern in self.require_datasets:
            if fnmatchcase(dataset, pattern):
                return f"every {kind} job on dataset {dataset!r} (policy.dp.require_datasets)"
        if self.require_min_level is not None and \
                level_rank(max_level) >= level_rank(self.require_min_level):
            return (f"every {kind} job touching a {self.require_min_level} column or above "
                    "(policy.dp.require_min_level)")
        return None

    def budget_for(self, dataset: str, analyst: str) -> BudgetRule | None:
        return next((b for b in self.budgets if b.matches(dataset, analyst)), None)


def check_request(request: DpRequest, kind: str, dataset: str, analyst: str,
                  policy: DpPolicy) -> BudgetRule:
    """Refuse at submission a DP job this node could never run; return the budget it spends."""
    if kind not in DP_KINDS:
        raise InvalidInput(f"dp: {kind} jobs cannot run under differential privacy here "
                           f"(kinds that can: {', '.join(DP_KINDS)}); remove [dp]")
    rule = policy.budget_for(dataset, analyst)
    if rule is None:
        raise PolicyDenied(
            f"dp: this node sets no differential-privacy budget for analyst {analyst!r} on "
            f"dataset {dataset!r} (policy.dp.budget); ask the node's operator for one"
        )
    cost = rule.cost(request)
    if cost > rule.max_per_run:
        raise PolicyDenied(
            f"dp: one run would spend {text(cost)} ({'ε' if rule.measure == 'epsilon' else 'ρ'})"
            f", more than this node allows per run ({text(rule.max_per_run)}); ask for less"
        )
    return rule


def used_columns(request: DpRequest) -> Sequence[str]:
    return (*request.bounds, *request.categories)

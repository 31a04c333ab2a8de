"""Meters, quotas and tariffs: exact integers for units, exact decimals for money.

Every unit a call consumes is counted in a :class:`Meters` value (non-negative ints).
A :class:`Quota` caps the three meters an analyst asks for and approvers grant (runs,
rows scanned, items). A :class:`Tariff` turns meters into money with
:class:`decimal.Decimal` prices: amounts are exact products and sums; the only rounding
is the statement total, quantized to 0.01 with ROUND_HALF_UP (:meth:`Tariff.total`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Any

from veil.node.errors import InvalidInput, QuotaExhausted

#: every meter Veil counts, in statement order
METER_NAMES: tuple[str, ...] = (
    "runs",
    "rows_scanned",
    "result_rows",
    "items",
    "ciphertexts",
    "cpu_ms",
    "bytes_out",
)
#: the meters a quota caps (the others are only counted and priced)
QUOTA_METERS: tuple[str, ...] = ("runs", "rows_scanned", "items")

#: statement totals are rounded to this (cents, fen); line amounts stay exact
TOTAL_QUANTUM = Decimal("0.01")

_CURRENCY = re.compile(r"[A-Z]{3}")


def _is_count(value: object) -> bool:
    # bool is an int subclass; True is not a count
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Meters:
    """Units consumed by one call or summed over many; every field a non-negative int."""

    runs: int = 0
    rows_scanned: int = 0
    result_rows: int = 0
    items: int = 0
    ciphertexts: int = 0
    cpu_ms: int = 0
    bytes_out: int = 0

    def __post_init__(self) -> None:
        for name in METER_NAMES:
            value = getattr(self, name)
            if not _is_count(value):
                raise InvalidInput(f"meter {name}: expected a non-negative integer, got {value!r}")

    def __add__(self, other: Meters) -> Meters:
        if not isinstance(other, Meters):
            return NotImplemented
        return Meters(**{n: getattr(self, n) + getattr(other, n) for n in METER_NAMES})

    def to_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in METER_NAMES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Meters:
        """Strict inverse of :meth:`to_dict`; missing meters are 0, unknown ones an error."""
        unknown = sorted(set(data) - set(METER_NAMES))
        if unknown:
            raise InvalidInput(f"unknown meter {unknown[0]!r} (meters: {', '.join(METER_NAMES)})")
        return cls(**dict(data))


@dataclass(frozen=True)
class Quota:
    """Caps on runs, rows scanned and items; ``None`` means no cap on that meter.

    A job's requested quota always has ``runs >= 1`` (checked when the job is parsed);
    a node's ``max_quota`` and an approval's narrowing may leave any meter uncapped.
    Combining quotas is an elementwise minimum where ``None`` is +infinity.
    """

    runs: int | None = None
    rows_scanned: int | None = None
    items: int | None = None

    def __post_init__(self) -> None:
        for name in QUOTA_METERS:
            value = getattr(self, name)
            if value is not None and not _is_count(value):
                raise InvalidInput(
                    f"quota.{name}: expected a non-negative integer or no cap, got {value!r}"
                )

    def remaining(self, used: Meters) -> Quota:
        """What is left after ``used``; uncapped meters stay uncapped, never below 0."""
        return Quota(
            **{
                n: None if getattr(self, n) is None else max(getattr(self, n) - getattr(used, n), 0)
                for n in QUOTA_METERS
            }
        )

    def check(self, used: Meters, request: Meters) -> None:
        """Raise :class:`QuotaExhausted` unless ``used + request`` fits every cap.

        Using up a quota exactly is allowed; one unit more is not.
        """
        for name in QUOTA_METERS:
            limit = getattr(self, name)
            if limit is None:
                continue
            left = max(limit - getattr(used, name), 0)
            asked = getattr(request, name)
            if asked > left:
                raise QuotaExhausted(name, asked, left)

    def min(self, other: Quota | None) -> Quota:
        """Elementwise minimum, ``None`` being no cap (so it never widens)."""
        if other is None:
            return self
        merged: dict[str, int | None] = {}
        for name in QUOTA_METERS:
            a, b = getattr(self, name), getattr(other, name)
            merged[name] = b if a is None else a if b is None else min(a, b)
        return Quota(**merged)

    def to_dict(self) -> dict[str, int | None]:
        return {n: getattr(self, n) for n in QUOTA_METERS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quota:
        """Strict inverse of :meth:`to_dict`: exactly the three quota meters, ints or null."""
        if not isinstance(data, Mapping) or set(data) != set(QUOTA_METERS):
            found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise InvalidInput(
                f"quota: expected exactly the keys {', '.join(QUOTA_METERS)}, got {found}"
            )
        return cls(**dict(data))


@dataclass(frozen=True)
class StatementLine:
    """One meter on a usage statement: quantity × unit price = amount (exact)."""

    meter: str
    quantity: int
    unit_price: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Tariff:
    """Prices per unit of each meter, in one currency; unlisted meters are free.

    ``prices`` values must be finite, non-negative :class:`Decimal` values (never
    floats: a binary float cannot hold most decimal prices exactly).
    """

    currency: str = "CNY"
    prices: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not _CURRENCY.fullmatch(self.currency):
            raise InvalidInput(
                f"tariff currency: expected a 3-letter ISO 4217 code like 'CNY', "
                f"got {self.currency!r}"
            )
        for meter, price in self.prices.items():
            if meter not in METER_NAMES:
                raise InvalidInput(
                    f"tariff price for unknown meter {meter!r} (meters: {', '.join(METER_NAMES)})"
                )
            if not isinstance(price, Decimal) or not price.is_finite() or price < 0:
                raise InvalidInput(
                    f"tariff price for {meter}: expected a finite non-negative Decimal, "
                    f"got {price!r}"
                )
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def unit_price(self, meter: str) -> Decimal:
        if meter not in METER_NAMES:
            raise InvalidInput(f"unknown meter {meter!r} (meters: {', '.join(METER_NAMES)})")
        return self.prices.get(meter, Decimal(0))

    def statement_lines(self, meters: Meters) -> tuple[StatementLine, ...]:
        """One exact line per meter with a non-zero quantity, in :data:`METER_NAMES` order."""
        lines = []
        for name in METER_NAMES:
            quantity = getattr(meters, name)
            if quantity:
                unit = self.unit_price(name)
                lines.append(StatementLine(name, quantity, unit, unit * quantity))
        return tuple(lines)

    def price(self, meters: Meters) -> Decimal:
        """The exact (unrounded) price of ``meters``: no float anywhere, no rounding."""
        return sum((line.amount for line in self.statement_lines(meters)), Decimal(0))

    def total(self, meters: Meters) -> Decimal:
        """The statement total: :meth:`price` quantized to 0.01, ROUND_HALF_UP.

        Rounding happens once, here, so a statement's total never drifts from the sum of
        its exact lines by more than half a cent.
        """
        return self.price(meters).quantize(TOTAL_QUANTUM, rounding=ROUND_HALF_UP)

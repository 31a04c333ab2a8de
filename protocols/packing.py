"""Fixed-point slots packed into Paillier plaintexts, with headroom for a sum over the job.

A :class:`Packing` is computed from what a job declares — the value bounds ``[lower,
upper]``, the decimal precision (``digits`` fractional digits, scale 10^digits) and the
number of addends (the nodes whose vectors are summed) — and from the plaintext size of the
analyst's key. Every party computes the same spec from the same job.

Encoding (offset, so negatives need no sign bit and no modular wrap-around):

    u = value · 10^digits               an integer: exact, or the value is refused (or
                                        rounded half-even with ``rounding="half_even"``)
    s = u - lower · 10^digits           in [0, span], span = (upper - lower) · 10^digits
    plaintext = Σ_i s_i · 2^(i·slot_bits)   slot i of a plaintext at bit offset i·slot_bits

Headroom: ``slot_bits = bit_length(addends · span)``, so the sum of ``addends`` slots, each at
most ``span``, fits its slot and never carries into the next: that is ceil(log2(addends)) bits
of headroom on top of the bits of ``span`` (at most one bit more from rounding the product).
``slots`` slots fit in ``plaintext_bits = n.bit_length() - 1`` bits, so a packed plaintext and
any sum of ``addends`` of them stay below n and are never reduced mod n (masks added mod n
that cancel in the total, as in a secure sum, leave the total exact).

Decoding the sum of A vectors: total_i = (S_i + A_i · lower · 10^digits) / 10^digits, where
A_i is the number of vectors that contributed slot i. A node that withholds a slot packs
``None`` there (raw 0, no offset) and the caller passes per-slot contributor counts to
:meth:`Packing.unpack`. Decoding is exact (``Fraction``, ``Decimal`` from its digits, or the
scaled ``int``); a slot larger than A_i contributions can produce, or bits above the last
slot, mean the plaintexts are not a sum of at most A packings under this spec (an overflow
or masks that did not cancel) and raise ``PackingError`` rather than return a wrong total.

Inputs: Python ints, ``Fraction``, ``Decimal``, decimal strings, floats (taken at their
shortest repr, so ``0.1`` is exactly 1/10) and numpy arrays of integers or floats. NaN,
infinities, bools, and values outside the bounds or precision are refused before anything is
packed, by ``SlotOutOfBounds`` naming the slot index and the bound (never echoing the value).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal, SupportsIndex, cast

from phe.paillier import PaillierPublicKey

from veil.protocols.errors import PackingError, SlotOutOfBounds

__all__ = ["MAX_ADDENDS", "MAX_DIGITS", "Packing", "Rounding", "Value"]

MAX_ADDENDS = 1 << 20
"""Most vectors one spec can sum (a job naming more nodes is refused, not silently wrapped)."""
MAX_DIGITS = 30
"""Most fractional decimal digits a spec may declare."""
MAX_BOUND_DIGITS = 60
"""Most significant decimal digits of a declared bound."""
MAX_TEXT = 100
"""Most characters of a decimal string, and most significant digits of a ``Decimal``, read:
a value like ``Decimal("1E999999999")`` is judged from its exponent, never expanded."""

Value = int | Fraction | Decimal | float | str | None
Rounding = Literal["exact", "half_even"]


def _parse_decimal(value: Decimal | str) -> Decimal | str:
    """Parse without expanding: bounded text and digits, finite. Returns the Decimal, or a
    reason ("expected ...") why the value is not acceptable."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"expected a decimal number of at most {MAX_TEXT} characters"
    try:
        d = Decimal(value)
    except InvalidOperation:
        return "expected a decimal number"
    if not d.is_finite():
        return "expected a finite number, got NaN or infinity"
    if len(d.as_tuple().digits) > MAX_TEXT:
        return f"expected at most {MAX_TEXT} significant digits"
    return d


def _fraction(value: object, what: str, digits: int = MAX_DIGITS) -> Fraction:
    """An exact Fraction for a bound; floats at their shortest repr."""
    if isinstance(value, bool):
        raise PackingError(f"{what} must be a number, got bool")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PackingError(f"{what} must be finite, got {value!r}")
        return Fraction(Decimal(repr(value)))
    if isinstance(value, Decimal | str):
        d = _parse_decimal(value)
        if isinstance(d, str):
            raise PackingError(f"{what}: {d}")
        if d.is_zero():
            return Fraction(0)
        if d.adjusted() >= MAX_BOUND_DIGITS:
            raise PackingError(f"{what} has more than {MAX_BOUND_DIGITS} digits")
        if d.adjusted() < -(digits + 1):
            raise PackingError(
                f"{what} has more than {digits} fractional digits, the declared precision")
        return Fraction(d)
    try:
        return Fraction(operator.index(cast(SupportsIndex, value)))
    except TypeError:
        raise PackingError(f"{what} must be a number, got {type(value).__name__}") from None


def _show(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else str(Decimal(x.numerator) / x.denominator)


@dataclass(frozen=True)
class Packing:
    """How a job's values are packed; build with :meth:`create` or :meth:`for_key`.

    Declared: ``lower``, ``upper`` (exact, at ``digits`` precision), ``digits``, ``addends``,
    ``plaintext_bits``. Derived: ``scale`` = 10^digits, ``span`` (scaled upper - lower),
    ``slot_bits`` and ``slots`` (values per plaintext).
    """

    lower: Fraction
    upper: Fraction
    digits: int
    addends: int
    plaintext_bits: int
    scale: int = field(init=False)
    lower_scaled: int = field(init=False)
    span: int = field(init=False)
    slot_bits: int = field(init=False)
    slots: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("digits", "addends", "plaintext_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise PackingError(f"{name} must be an integer, got {type(v).__name__}")
        if not 0 <= self.digits <= MAX_DIGITS:
            raise PackingError(f"digits must be in [0, {MAX_DIGITS}], got {self.digits}")
        if not 1 <= self.addends <= MAX_ADDENDS:
            raise PackingError(f"addends must be in [1, {MAX_ADDENDS}], got {self.addends}")
        if self.plaintext_bits < 1:
            raise PackingError(f"plaintext_bits must be positive, got {self.plaintext_bits}")
        if not isinstance(self.lower, Fraction) or not isinstance(self.upper, Fraction):
            raise PackingError("lower and upper must be Fractions (use Packing.create)")
        scale = 10 ** self.digits
        for name, bound in (("lower", self.lower), ("upper", self.upper)):
            if (bound * scale).denominator != 1:
                raise PackingError(
                    f"{name} bound {_show(bound)} has more than {self.digits} fractional "
                    "digits, the declared precision")
            if len(str(abs(bound.numerator))) > MAX_BOUND_DIGITS:
                raise PackingError(
                    f"{name} bound has more than {MAX_BOUND_DIGITS} digits")
        if self.lower > self.upper:
            raise PackingError(
                f"lower bound {_show(self.lower)} is above upper bound {_show(self.upper)}")
        lower_scaled = int(self.lower * scale)
        span = int(self.upper * scale) - lower_scaled
        slot_bits = max(1, (self.addends * span).bit_length())
        slots = self.plaintext_bits // slot_bits
        if slots < 1:
            raise PackingError(
                f"one slot needs {slot_bits} bits for {self.addends} addends in "
                f"[{_show(self.lower)}, {_show(self.upper)}] at {self.digits} digits, but a "
                f"plaintext holds {self.plaintext_bits}: narrow the bounds or the precision")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "lower_scaled", lower_scaled)
        object.__setattr__(self, "span", span)
        object.__setattr__(self, "slot_bits", slot_bits)
        object.__setattr__(self, "slots", slots)

    # -- construction

    @classmethod
    def create(cls, *, lower: Value, upper: Value, digits: int = 0, addends: int,
               plaintext_bits: int) -> Packing:
        """A spec from bounds given as ints, decimal strings, Decimals, Fractions or floats."""
        if lower is None or upper is None:
            raise PackingError("lower and upper bounds are required")
        places = digits if isinstance(digits, int) and 0 <= digits <= MAX_DIGITS else MAX_DIGITS
        return cls(_fraction(lower, "lower bound", places),
                   _fraction(upper, "upper bound", places), digits, addends, plaintext_bits)

    @classmethod
    def for_key(cls, public_key: PaillierPublicKey, *, lower: Value, upper: Value,
                digits: int = 0, addends: int) -> Packing:
        """A spec whose plaintexts (and their sums) fit below the key's modulus n."""
        if not isinstance(public_key, PaillierPublicKey):
            raise PackingError(
                f"expected a phe.paillier.PaillierPublicKey, got {type(public_key).__name__}")
        return cls.create(lower=lower, upper=upper, digits=digits, addends=addends,
                          plaintext_bits=int(public_key.n).bit_length() - 1)

    def plaintexts_for(self, count: int) -> int:
        """How many plaintexts ``count`` values pack into."""
        return -(-count // self.slots)

    # -- packing

    def _scaled(self, slot: int, value: object, rounding: Rounding) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise SlotOutOfBounds(slot, "expected a number, got bool")
        if isinstance(value, int):
            exact = Fraction(value * self.scale)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise SlotOutOfBounds(slot, "expected a finite number, got NaN or infinity")
            exact = Fraction(Decimal(repr(value))) * self.scale
        elif isinstance(value, Fraction):
            exact = value * self.scale
        elif isinstance(value, Decimal | str):
            exact = self._decimal_scaled(slot, value, rounding)
        else:
            try:
                exact = Fraction(operator.index(cast(SupportsIndex, value)) * self.scale)
            except TypeError:
                raise SlotOutOfBounds(
                    slot, f"expected a number, got {type(value).__name__}") from None
        if exact.denominator != 1:
            if rounding == "exact":
                raise SlotOutOfBounds(
                    slot, f"has more than {self.digits} fractional digits, the declared "
                    "precision (round it, or pack with rounding='half_even')")
            scaled = round(exact)  # Fraction rounds half to even
        else:
            scaled = exact.numerator
        offset = scaled - self.lower_scaled
        if offset < 0:
            raise SlotOutOfBounds(slot, f"below the lower bound {_show(self.lower)}")
        if offset > self.span:
            raise SlotOutOfBounds(slot, f"above the upper bound {_show(self.upper)}")
        return offset

    def _decimal_scaled(self, slot: int, value: Decimal | str, rounding: Rounding) -> Fraction:
        """value · scale, judged from the exponent first so that no huge number is built."""
        d = _parse_decimal(value)
        if isinstance(d, str):
            raise SlotOutOfBounds(slot, d)
        if d.is_zero():
            return Fraction(0)
        if d.adjusted() >= MAX_BOUND_DIGITS:  # |d| >= 10^60 > |any bound|
            raise SlotOutOfBounds(slot, f"below the lower bound {_show(self.lower)}"
                                  if d < 0 else f"above the upper bound {_show(self.upper)}")
        if d.adjusted() < -(self.digits + 1):  # |d · scale| < 0.1: rounds to 0
            if rounding == "exact":
                raise SlotOutOfBounds(
                    slot, f"has more than {self.digits} fractional digits, the declared "
                    "precision (round it, or pack with rounding='half_even')")
            return Fraction(0)
        return Fraction(d) * self.scale

    def _values(self, values: object) -> list[object]:
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a dependency
            np = None  # type: ignore[assignment]
        if np is not None and isinstance(values, np.ndarray):
            if values.ndim != 1:
                raise PackingError(f"expected a 1-D array of values, got {values.ndim}-D")
            if values.dtype.kind == "b":
                raise PackingError("expected numbers, got a boolean array")
            if values.dtype.kind not in "iufO":
                raise PackingError(f"expected an integer or float array, got {values.dtype}")
            return cast(list[object], values.tolist())
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise PackingError(f"expected a sequence of values, got {type(values).__name__}")
        out: list[object] = []
        for v in values:
            item = getattr(v, "item", None)  # numpy scalars: exact Python int or float
            out.append(item() if callable(item) and not isinstance(v, Decimal | Fraction) else v)
        return out

    def encode(self, values: Iterable[Value] | object, *,
               rounding: Rounding = "exact") -> list[int | None]:
        """The slot contents (value - lower, scaled; ``None`` for a withheld slot), checked."""
        if rounding not in ("exact", "half_even"):
            raise PackingError(f"rounding must be 'exact' or 'half_even', got {rounding!r}")
        return [self._scaled(i, v, rounding) for i, v in enumerate(self._values(values))]

    def pack(self, values: Iterable[Value] | object, *,
             rounding: Rounding = "exact") -> list[int]:
        """Pack values into ``plaintexts_for(len(values))`` plaintexts, slot 0 lowest.

        Every value is checked before anything is returned, so a bad value never leaves a
        partial vector to encrypt.
        """
        slots = self.encode(values, rounding=rounding)
        out: list[int] = []
        bits = self.slot_bits
        for start in range(0, len(slots), self.slots):
            acc = 0
            for s in reversed(slots[start:start + self.slots]):
                acc = (acc << bits) | (s or 0)
            out.append(acc)
        return out

    # -- unpacking

    def _addends(self, addends: int | Sequence[int] | None, count: int) -> list[int]:
        if addends is None:
            return [self.addends] * count
        if isinstance(addends, int) and not isinstance(addends, bool):
            per = [addends] * count
        else:
            per = list(cast(Sequence[int], addends))
            if len(per) != count:
                raise PackingError(
                    f"expected one addend count per value ({count}), got {len(per)}")
        for i, a in enumerate(per):
            if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= self.addends:
                raise PackingError(
                    f"addend count for slot {i} must be an integer in [0, {self.addends}] "
                    f"(the spec's addends), got {a!r}")
        return per

    def unpack_scaled(self, plaintexts: Sequence[int], count: int,
                      addends: int | Sequence[int] | None = None) -> list[int]:
        """The totals times 10^digits, exact ints. ``addends``: how many vectors were summed
        (default the spec's), or per slot how many contributed it (withheld ones excluded)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PackingError(f"count must be a non-negative integer, got {count!r}")
        expected = self.plaintexts_for(count)
        if len(plaintexts) != expected:
            raise PackingError(
                f"{count} values pack into {expected} plaintexts, got {len(plaintexts)}")
        per = self._addends(addends, count)
        bits, mask = self.slot_bits, (1 << self.slot_bits) - 1
        out: list[int] = []
        for j, p in enumerate(plaintexts):
            if isinstance(p, bool):
                raise PackingError(f"plaintext {j} must be an integer, got bool")
            try:
                value = operator.index(cast(SupportsIndex, p))
            except TypeError:
                raise PackingError(
                    f"plaintext {j} must be an integer, got {type(p).__name__}") from None
            used = min(self.slots, count - j * self.slots)
            if value < 0 or value.bit_length() > used * bits:
                raise PackingError(
                    f"plaintext {j} has bits above its {used} slots of {bits} bits: it is not "
                    f"a sum of at most {self.addends} packings under this spec")
            for k in range(used):
                i = j * self.slots + k
                raw = value & mask
                value >>= bits
                if raw > per[i] * self.span:
                    raise PackingError(
                        f"slot {i} holds more than {per[i]} values in "
                        f"[{_show(self.lower)}, {_show(self.upper)}] can sum to: the sum "
                        "overflowed or its masks did not cancel")
                out.append(raw + per[i] * self.lower_scaled)
        return out

    def unpack(self, plaintexts: Sequence[int], count: int,
               addends: int | Sequence[int] | None = None) -> list[Fraction]:
        """The totals as exact Fractions (see :meth:`unpack_scaled` for ``addends``)."""
        return [Fraction(t, self.scale)
                for t in self.unpack_scaled(plaintexts, count, addends)]

    def unpack_decimal(self, plaintexts: Sequence[int], count: int,
                       addends: int | Sequence[int] | None = None) -> list[Decimal]:
        """The totals as exact Decimals with ``digits`` fractional digits."""
        return [Decimal(f"{t}E-{self.digits}")
                for t in self.unpack_scaled(plaintexts, count, addends)]

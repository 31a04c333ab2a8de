"""Fixed-point packing (protocols/packing.py): exact sums over the job's addends, refusals.

Sums here are of the packed integers themselves (what a Paillier sum decrypts to);
tests/test_paillier.py runs the same through encryption.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier as phe

from veil.protocols.errors import PackingError, ProtocolInputError, SlotOutOfBounds
from veil.protocols.packing import MAX_ADDENDS, Packing

BITS = 2047  # plaintext bits of a 2048-bit key


def summed(spec: Packing, vectors: list[list[object]]) -> list[int]:
    packed = [spec.pack(v) for v in vectors]
    return [sum(col) for col in zip(*packed, strict=True)]


# --------------------------------------------------------------------------- the spec


def test_slot_bits_hold_the_sum_of_all_addends_at_the_bounds() -> None:
    spec = Packing.create(lower=-100, upper=100, addends=5, plaintext_bits=BITS)
    assert spec.span == 200
    assert spec.slot_bits == (5 * 200).bit_length() == 10
    assert spec.slots == BITS // 10
    # headroom is ceil(log2(addends)) over the span's own bits (here 8 + 3 >= 10)
    assert spec.slot_bits <= spec.span.bit_length() + (5 - 1).bit_length()


def test_for_key_uses_one_bit_less_than_the_modulus() -> None:
    n = (2**1023 + 1155) * (2**1024 + 643)  # only the size matters here
    spec = Packing.for_key(phe.PaillierPublicKey(n), lower=0, upper=1, addends=1)
    assert spec.plaintext_bits == n.bit_length() - 1
    assert (1 << (spec.slots * spec.slot_bits)) <= n


def test_bounds_too_wide_for_the_key_are_refused_at_spec_time() -> None:
    with pytest.raises(PackingError, match="one slot needs 198 bits .* plaintext holds 197"):
        Packing.create(lower=0, upper=10**59, addends=3, plaintext_bits=197)
    assert Packing.create(lower=0, upper=10**59, addends=3, plaintext_bits=198).slots == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"lower": 1, "upper": 0}, "lower bound 1 is above upper bound 0"),
    ({"lower": "0.001", "upper": 1, "digits": 2}, "more than 2 fractional digits"),
    ({"lower": 0, "upper": 1, "addends": 0}, "addends must be in"),
    ({"lower": 0, "upper": 1, "addends": MAX_ADDENDS + 1}, "addends must be in"),
    ({"lower": 0, "upper": 1, "digits": 31}, r"digits must be in \[0, 30\]"),
    ({"lower": 0, "upper": 1, "digits": -1}, "digits must be in"),
    ({"lower": float("nan"), "upper": 1}, "must be finite"),
    ({"lower": "x", "upper": 1}, "lower bound: expected a decimal number"),
    ({"lower": "NaN", "upper": 1}, "lower bound: expected a finite number"),
    ({"lower": 0, "upper": "9" * 101}, "upper bound: expected a decimal number of at most 100"),
    ({"lower": None, "upper": 1}, "bounds are required"),
    ({"lower": 0, "upper": True}, "got bool"),
    ({"lower": 0, "upper": 10**70}, "more than 60 digits"),
])
def test_bad_spec_is_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"addends": 2, "plaintext_bits": BITS, **kwargs}
    with pytest.raises(PackingError, match=message):
        Packing.create(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- exact values


def test_negatives_zeros_and_bounds_sum_exactly() -> None:
    spec = Packing.create(lower=-1000, upper=1000, addends=3, plaintext_bits=BITS)
    vectors: list[list[object]] = [[-1000, 0, 1000, -1, 7], [-1000, 0, 1000, 1, -7],
                                   [-1000, 0, 1000, 0, 0]]
    assert spec.unpack(summed(spec, vectors), 5) == [-3000, 0, 3000, 0, 0]


def test_decimals_are_exact_within_the_declared_precision() -> None:
    spec = Packing.create(lower="-10.5", upper="10.5", digits=2, addends=3,
                          plaintext_bits=BITS)
    # 0.1 + 0.2 is 0.30000000000000004 in floats; here each value is read at its shortest repr
    totals = spec.unpack_decimal(summed(spec, [[0.1, "-10.5"], [0.2, Decimal("-10.50")],
                                               [Fraction(1, 4), -10.5]]), 2)
    assert totals == [Decimal("0.55"), Decimal("-31.5")]
    assert str(totals[0]) == "0.55"
    assert spec.unpack(summed(spec, [[0.1], [0.2], [0]]), 1) == [Fraction(3, 10)]


def test_large_integers_from_int64_arrays_are_exact() -> None:
    lo, hi = -(2**63), 2**63 - 1
    spec = Packing.create(lower=lo, upper=hi, addends=8, plaintext_bits=BITS)
    a = np.array([lo, hi, 0, -1, 2**62 + 12345], dtype=np.int64)
    totals = spec.unpack_scaled(summed(spec, [a] * 8), len(a))  # type: ignore[list-item]
    assert totals == [8 * int(x) for x in a.tolist()]


def test_float64_arrays_and_numpy_scalars_are_read_at_their_shortest_repr() -> None:
    spec = Packing.create(lower=-5, upper=5, digits=3, addends=2, plaintext_bits=BITS)
    arr = np.array([0.001, -4.999, 1.5, 0.0])
    assert spec.unpack(summed(spec, [arr, [np.float64(0.001), np.int64(-5), 1, 0]]),  # type: ignore[list-item]
                       4) == [Fraction(2, 1000), Fraction(-9999, 1000), Fraction(5, 2), 0]


def test_rounding_half_even_is_explicit() -> None:
    spec = Packing.create(lower=-1, upper=1, digits=1, addends=1, plaintext_bits=BITS)
    with pytest.raises(SlotOutOfBounds, match="slot 1: has more than 1 fractional digits"):
        spec.pack([0.5, 0.25])
    assert spec.unpack(spec.pack([0.25, 0.35, -0.25], rounding="half_even"), 3) == [
        Fraction(2, 10), Fraction(4, 10), Fraction(-2, 10)]


def test_withheld_slots_decode_with_per_slot_contributor_counts() -> None:
    spec = Packing.create(lower=10, upper=20, addends=3, plaintext_bits=BITS)
    vectors: list[list[object]] = [[10, 20, 15], [None, 20, 15], [None, None, 15]]
    assert spec.unpack(summed(spec, vectors), 3, [1, 2, 3]) == [10, 40, 45]


def test_values_spanning_several_plaintexts_unpack_in_order() -> None:
    spec = Packing.create(lower=0, upper=2**40, addends=2, plaintext_bits=BITS)
    values: list[object] = list(range(0, spec.slots * 3 + 5))
    packed = spec.pack(values)
    assert len(packed) == spec.plaintexts_for(len(values)) == 4
    assert spec.unpack_scaled(summed(spec, [values, values]), len(values)) == [
        2 * v for v in range(len(values))]  # type: ignore[operator]


@st.composite
def job(draw: st.DrawFn) -> tuple[Packing, list[list[object]]]:
    digits = draw(st.integers(0, 6))
    scale = 10**digits
    lo = draw(st.integers(-(10**15), 10**15))
    hi = lo + draw(st.integers(0, 10**15))
    addends = draw(st.integers(1, 8))
    spec = Packing.create(lower=Fraction(lo, scale), upper=Fraction(hi, scale), digits=digits,
                          addends=addends, plaintext_bits=draw(st.sampled_from([127, 511, 2047])))
    count = draw(st.integers(1, min(3 * spec.slots, 80)))
    edge = st.sampled_from([lo, hi, max(lo, min(hi, 0))])
    scaled = st.one_of(edge, st.integers(lo, hi))
    vectors = [[Fraction(v, scale) for v in draw(st.lists(scaled, min_size=count,
                                                          max_size=count))]
               for _ in range(addends)]
    return spec, vectors  # type: ignore[return-value]


@settings(max_examples=100, deadline=None)
@given(job())
def test_property_unpack_of_the_sum_is_the_sum(case: tuple[Packing, list[list[object]]]) -> None:
    spec, vectors = case
    total = summed(spec, vectors)
    assert all(0 <= p < 2**spec.plaintext_bits for p in total)
    expected = [sum(col, Fraction(0)) for col in zip(*vectors, strict=True)]
    assert spec.unpack(total, len(vectors[0]), len(vectors)) == expected


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("values, message", [
    ([0, 101], "slot 1: above the upper bound 100"),
    ([0, 0, -100.01], r"slot 2: below the lower bound -100"),
    ([float("nan")], "slot 0: expected a finite number"),
    ([float("inf")], "slot 0: expected a finite number"),
    ([Decimal("sNaN")], "slot 0: expected a finite number"),
    ([1, True], "slot 1: expected a number, got bool"),
    ([1, 2, "abc"], "slot 2: expected a decimal number"),
    ([b"1"], "slot 0: expected a number, got bytes"),
    ([0.001], "slot 0: has more than 2 fractional digits"),
])
def test_out_of_bound_values_are_refused_before_packing(values: list[object],
                                                         message: str) -> None:
    spec = Packing.create(lower=-100, upper=100, digits=2, addends=2, plaintext_bits=BITS)
    with pytest.raises(SlotOutOfBounds, match=message) as info:
        spec.pack(values)
    assert info.value.slot == int(message.split(":")[0].split()[1])


def test_refusal_never_echoes_the_value() -> None:
    spec = Packing.create(lower=0, upper=100, addends=1, plaintext_bits=BITS)
    with pytest.raises(SlotOutOfBounds) as info:
        spec.pack([31337421])
    assert "31337421" not in str(info.value)


@pytest.mark.parametrize("values, message", [
    (np.zeros((2, 2)), "1-D array"),
    (np.array([True]), "boolean array"),
    (np.array(["1"]), "integer or float array"),
    ("123", "sequence of values, got str"),
    (5, "sequence of values, got int"),
])
def test_bad_containers_are_refused(values: object, message: str) -> None:
    spec = Packing.create(lower=0, upper=9, addends=1, plaintext_bits=BITS)
    with pytest.raises(PackingError, match=message):
        spec.pack(values)


def test_more_addends_than_declared_overflow_is_detected_not_returned() -> None:
    spec = Packing.create(lower=0, upper=7, addends=2, plaintext_bits=BITS)
    assert spec.slot_bits == 4
    three = summed(spec, [[7, 7], [7, 7], [7, 7]])  # 21 > 15 carries into slot 1
    with pytest.raises(PackingError, match="slot 0 holds more than 2 values|bits above"):
        spec.unpack(three, 2)
    with pytest.raises(PackingError, match=r"addend count for slot 0 must be .* \[0, 2\]"):
        spec.unpack(summed(spec, [[1, 1]]), 2, 3)


def test_unpack_refuses_plaintexts_that_are_not_such_a_sum() -> None:
    spec = Packing.create(lower=-5, upper=5, addends=2, plaintext_bits=BITS)
    good = summed(spec, [[1, 2, 3], [4, 5, -5]])
    assert spec.unpack(good, 3) == [5, 7, -2]
    with pytest.raises(PackingError, match="bits above its 3 slots"):
        spec.unpack([good[0] | (1 << (3 * spec.slot_bits))], 3)
    with pytest.raises(PackingError, match="slot 1 holds more than 1 values"):
        spec.unpack(good, 3, [2, 1, 2])
    with pytest.raises(PackingError, match="3 values pack into 1 plaintexts, got 2"):
        spec.unpack(good + good, 3)
    with pytest.raises(PackingError, match="one addend count per value"):
        spec.unpack(good, 3, [2, 2])
    with pytest.raises(PackingError, match="plaintext 0 must be an integer, got float"):
        spec.unpack([1.0], 1)  # type: ignore[list-item]
    with pytest.raises(PackingError, match="bits above"):
        spec.unpack([-1], 1)


def test_every_packing_refusal_is_a_value_error() -> None:
    assert issubclass(SlotOutOfBounds, PackingError)
    assert issubclass(PackingError, ProtocolInputError)
    assert issubclass(PackingError, ValueError)


@pytest.mark.parametrize("value, message", [
    (Decimal("1E999999999"), "slot 0: above the upper bound 100"),
    ("-1e999999999", "slot 0: below the lower bound -100"),
    (Decimal("1E-999999999"), "slot 0: has more than 2 fractional digits"),
    ("1" * 10_000, "slot 0: expected a decimal number of at most 100 characters"),
])
def test_pack_with_huge_decimal_exponent_or_length_is_refused_without_expanding_it(
        value: object, message: str) -> None:
    spec = Packing.create(lower=-100, upper=100, digits=2, addends=2, plaintext_bits=BITS)
    with pytest.raises(SlotOutOfBounds, match=message):
        spec.pack([value])
    assert spec.unpack(spec.pack([Decimal("1E-999999999")], rounding="half_even"), 1, 1) == [0]


@pytest.mark.parametrize("bound, message", [
    (Decimal("1E999999999"), "more than 60 digits"),
    ("1e-999999999", "more than 2 fractional digits"),
])
def test_spec_with_huge_decimal_bound_is_refused_without_expanding_it(
        bound: object, message: str) -> None:
    with pytest.raises(PackingError, match=message):
        Packing.create(lower=-1, upper=bound, digits=2, addends=2,  # type: ignore[arg-type]
                       plaintext_bits=BITS)

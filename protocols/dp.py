"""Differentially private noise over OpenDP's exact integer samplers, and its accounting.

Veil computes an aggregate exactly (a count, or a sum in fixed-point integer units) and adds
noise before anything leaves the node. Two mechanisms, both over the integers:

- ``"laplace"`` (measure ``"epsilon"``): the discrete Laplace, P(x) ∝ exp(-|x|/scale), one
  independent draw per value. A release of values whose L1 distance between neighbouring
  datasets is at most ``sensitivity`` satisfies pure ε-DP with ε = sensitivity/scale: for every
  set S of outputs, P[M(D) ∈ S] <= e^ε · P[M(D') ∈ S].
- ``"gaussian"`` (measure ``"rho"``): the discrete Gaussian, P(x) ∝ exp(-x²/(2·scale²))
  (Canonne, Kamath & Steinke 2020). A release with L2 sensitivity Δ satisfies ρ-zCDP with
  ρ = Δ²/(2·scale²): the Rényi divergence of every order α > 1 between the outputs on
  neighbouring datasets is at most α·ρ.

In both cases the privacy loss is whatever OpenDP's privacy map of the measurement says at
``sensitivity`` (:func:`calibrate` searches against that map, not only a closed form).

Neighbouring relation: two datasets are neighbours when one is the other with one subject
added or removed. This module cannot see subjects: the caller bounds each subject's
contribution (clamping, at most k rows per subject) and passes the resulting bound on how far
the exact aggregates can move as ``sensitivity``, in the same integer units as the values.
What a release reveals about one subject is then exactly the guarantee above, and nothing
else: the noise is drawn independently of the data, and everything computed from the noisy
values alone (rounding, clamping, the refusal of a saturated value) is post-processing.

Why integers: Mironov (2012, "On significance of the least significant bits for differential
privacy") showed that floating-point Laplace noise leaks the exact value through the pattern
of representable doubles around it. An integer plus an integer drawn by an exact sampler has
no such low-order structure, and OpenDP's samplers are exact (no floating point in the draw).

Why no seeding: OpenDP draws from the operating system's CSPRNG and cannot be seeded. A seed
would be a secret from which the noise, and so the exact aggregate, could be recovered; the
node instead keeps each run's draws (:func:`draw`) in its own state for replay, where they are
protected like the data itself.

Composition: ε adds up over releases (basic composition), ρ adds up over releases (zCDP
composition), so a budget is spent by subtraction and :func:`split` shares it out. A budget
stated as (ε, δ) is turned into ρ once with :func:`rho_for`: all Gaussian releases add up in
ρ, and the total implies (ε, δ)-DP by the conversion of CKS20 that OpenDP implements. A
pure ε release may be charged to a ρ budget as ε²/2 (ε-DP implies (ε²/2)-zCDP, Bun & Steinke
2016), never the other way round.

Distributed noise (a federated sum under secure aggregation): see :func:`shared`.

Budgets are exact ``decimal.Decimal`` values; noise scales are floats, as OpenDP takes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import opendp.prelude as dp
from opendp.accuracy import (discrete_gaussian_scale_to_accuracy,
                             discrete_laplacian_scale_to_accuracy)

from veil.protocols.errors import ProtocolInputError

__all__ = ["MEASURES", "MECHANISM", "DpError", "Noise", "calibrate", "draw", "epsilon_at",
           "release", "rho_for", "shared", "split"]

dp.enable_features("contrib")  # OpenDP gates its measurements behind this process-wide flag

#: pure ε-DP (discrete Laplace) | ρ-zCDP (discrete Gaussian)
MEASURES = ("epsilon", "rho")
MECHANISM = {"epsilon": "laplace", "rho": "gaussian"}

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
#: the largest noise scale accepted: a draw stays below 2^62 with probability 1 - e^-64
MAX_SCALE = 2.0**56
#: budgets and shares are kept to this many decimal places
PLACES = 12
#: the largest budget (ε or ρ) accepted: far past any meaningful guarantee, and within the
#: range where OpenDP's zCDP to (ε, δ) conversion stays finite (it overflows near ρ = 1e5)
MAX_BUDGET = Decimal(1000)
#: a shared scale is accepted when the theorem's ρ, times 1 + this, is still within the spend
#: (it covers the relative rounding error of the few float operations of _sum_rho)
SUM_MARGIN = 1e-9

_VECTOR = dp.vector_domain(dp.atom_domain(T="i64"))


class DpError(ProtocolInputError):
    """A differential privacy parameter or input that cannot be used: an unknown measure, a
    budget that is not a Decimal in (0, 1000], a δ outside [1e-300, 1), a sensitivity below 1,
    a scale the noise would not fit in 64-bit integers, a value or a noisy value outside
    64-bit integers, a malformed noise record."""


@dataclass(frozen=True)
class Noise:
    """One calibrated noise distribution: what the node draws from, and what it charges.

    ``mechanism`` is "laplace" or "gaussian" (both discrete, over the integers) and goes with
    ``measure`` "epsilon" or "rho" (:data:`MECHANISM`); ``scale`` is OpenDP's scale parameter
    and ``sensitivity`` the L1 (Laplace) or L2 (Gaussian) sensitivity, both in the integer
    units of the values. ``spend`` is the privacy loss charged for one release at this scale:
    what was asked of :func:`calibrate` (or :func:`shared`), which OpenDP's privacy map (or,
    for shared noise, the theorem on sums of discrete Gaussians) at ``sensitivity`` does not
    exceed. Every field is checked on construction, so a record read back by
    :meth:`from_dict` is as valid as one made by :func:`calibrate`.
    """

    mechanism: str
    measure: str
    scale: float
    sensitivity: int
    spend: Decimal

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise DpError(f"measure must be one of {', '.join(MEASURES)}, got {self.measure!r}")
        if self.mechanism != MECHANISM[self.measure]:
            raise DpError(f"measure {self.measure!r} goes with mechanism "
                          f"{MECHANISM[self.measure]!r}, got {self.mechanism!r}")
        if (not isinstance(self.scale, float) or not math.isfinite(self.scale)
                or not 0 < self.scale <= MAX_SCALE):
            raise DpError(f"scale must be a float in (0, {MAX_SCALE:g}], got {self.scale!r}")
        _check_sensitivity(self.sensitivity)
        _check_positive("spend", self.spend)

    def std(self) -> float:
        """The standard deviation of one draw.

        Discrete Laplace, with q = e^(-1/scale): var = 2q/(1-q)², exactly.
        Discrete Gaussian: the variance is the sum of k²·p(k) over the exact pmf when the
        scale is below 4; above, it is scale², which by Poisson summation differs from the
        variance by a relative 8π²·scale²·e^(-2π²·scale²) < 1e-130 (below a float's ulp).
        """
        s = self.scale
        if self.mechanism == "laplace":
            q = math.exp(-1 / s)
            return math.sqrt(2 * q) / -math.expm1(-1 / s)
        if s >= 4:
            return s
        ks = range(1, int(40 * s) + 2)
        weights = [math.exp(-k * k / (2 * s * s)) for k in ks]
        return math.sqrt(2 * sum(k * k * w for k, w in zip(ks, weights))
                         / (1 + 2 * sum(weights)))

    def accuracy(self, alpha: float = 0.05) -> float:
        """A bound a with P(|noise| <= a) >= 1 - alpha for one draw, from OpenDP's
        scale-to-accuracy conversion for the discrete mechanism (which is conservative:
        P(|noise| > a) <= alpha)."""
        if not isinstance(alpha, float) or not 0 < alpha < 1:
            raise DpError(f"alpha must be a float in (0, 1), got {alpha!r}")
        convert = (discrete_laplacian_scale_to_accuracy if self.mechanism == "laplace"
                   else discrete_gaussian_scale_to_accuracy)
        return float(convert(self.scale, alpha))

    def to_dict(self) -> dict[str, str]:
        """Strings for logs and results; :meth:`from_dict` reads them back exactly."""
        return {"mechanism": self.mechanism, "measure": self.measure, "scale": repr(self.scale),
                "sensitivity": str(self.sensitivity), "spend": str(self.spend)}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> Noise:
        try:
            mechanism, measure = d["mechanism"], d["measure"]
            scale, sensitivity = float(d["scale"]), int(d["sensitivity"])
            spend = Decimal(d["spend"])
        except KeyError as missing:
            raise DpError(f"noise record lacks {missing}: expected mechanism, measure, "
                          "scale, sensitivity and spend") from None
        except (ValueError, ArithmeticError, TypeError):
            raise DpError("noise record has a scale, sensitivity or spend that does not "
                          "parse as a number") from None
        return cls(mechanism, measure, scale, sensitivity, spend)


def calibrate(measure: str, spend: Decimal, sensitivity: int) -> Noise:
    """The smallest scale whose release costs at most ``spend`` by OpenDP's own privacy map.

    From the closed form (Δ/ε for Laplace, Δ/sqrt(2ρ) for Gaussian) the scale steps up one
    float at a time until ``measurement.map(sensitivity) <= spend`` holds exactly (the map's
    float compared as a Decimal, never ``spend`` rounded to a float), then down while it still
    holds: the result is the smallest float scale OpenDP accepts for the spend.
    """
    if measure not in MEASURES:
        raise DpError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    _check_positive("spend", spend)
    _check_sensitivity(sensitivity)
    s = (sensitivity / float(spend) if measure == "epsilon"
         else sensitivity / math.sqrt(2 * float(spend)))
    if not math.isfinite(s) or not 0 < s <= MAX_SCALE:
        raise DpError(f"a spend of {spend} at sensitivity {sensitivity} needs a noise scale "
                      f"of about {s:.3g}, outside (0, {MAX_SCALE:g}]): the noise would not "
                      "fit 64-bit integers; spend more or use coarser fixed-point units")

    def fits(scale: float) -> bool:
        return Decimal(_map(_measurement(measure, scale), sensitivity)) <= spend

    s = _smallest(fits, s)
    return Noise(MECHANISM[measure], measure, s, sensitivity, spend)


def release(noise: Noise, values: Sequence[int]) -> list[int]:
    """``values`` plus one independent draw per value at ``noise.scale``, by one call of
    OpenDP's vector measurement. Every value must be a 64-bit integer; a noisy value that
    reached a 64-bit limit (OpenDP saturates) is refused: whether one did is a function of the
    noisy output alone, so the refusal reveals nothing beyond the release's guarantee."""
    for i, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool):
            raise DpError(f"value at slot {i} must be an int, got {type(v).__name__}")
        if not I64_MIN <= v <= I64_MAX:
            raise DpError(f"value at slot {i} is outside 64-bit integers "
                          f"({v.bit_length()} bits): use coarser fixed-point units")
    if not values:
        return []
    noisy: list[int] = _measurement(noise.measure, noise.scale)(list(values))
    if any(v in (I64_MIN, I64_MAX) for v in noisy):
        raise DpError("a noisy value reached the 64-bit limit: use coarser fixed-point units")
    return noisy


def draw(noise: Noise, count: int) -> list[int]:
    """``count`` noise draws alone (a release of zeros): what the node stores for replay."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise DpError(f"count must be an int >= 0, got {count!r}")
    return release(noise, [0] * count)


def split(total: Decimal, parts: int) -> Decimal:
    """An equal share of ``total`` over ``parts`` releases, rounded down to 12 decimal places,
    so that ``parts * share <= total`` exactly: by basic composition for ε and additivity for
    ρ, ``parts`` releases at ``share`` each cost at most ``total``."""
    _check_positive("total", total)
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise DpError(f"parts must be an int >= 1, got {parts!r}")
    units = math.floor(Fraction(total) * 10**PLACES / parts)
    if units == 0:
        raise DpError(f"a total of {total} over {parts} parts is below 1e-{PLACES} each: "
                      "spend more or make fewer releases")
    return Decimal(f"{units}e-{PLACES}")


def rho_for(epsilon: Decimal, delta: Decimal) -> Decimal:
    """The largest ρ, rounded down to 12 places, such that ρ-zCDP implies (ε, δ)-DP by the
    conversion OpenDP implements (``make_zCDP_to_approxDP``: Canonne, Kamath & Steinke 2020,
    tighter than the closed form ε = ρ + 2·sqrt(ρ·ln(1/δ)) of Bun & Steinke 2016).

    A binary search over multiples of 1e-12 against :func:`_epsilon_over`, which never
    understates OpenDP's ε; the conversion's ε grows with ρ.
    """
    _check_positive("epsilon", epsilon)
    _check_delta(delta)

    def admits(units: int) -> bool:
        return Decimal(_epsilon_over(Decimal(f"{units}e-{PLACES}"), delta)) <= epsilon

    if not admits(1):
        raise DpError(f"(ε={epsilon}, δ={delta}) admits no ρ of at least 1e-{PLACES}: "
                      "spend more ε or δ")
    low, high = 1, 2
    while admits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if admits(mid) else (low, mid)
    return Decimal(f"{low}e-{PLACES}")


def epsilon_at(rho: Decimal, delta: Decimal) -> float:
    """The ε such that ρ-zCDP implies (ε, δ)-DP, by OpenDP's conversion; for display."""
    if _check_positive("rho", rho) < Decimal(f"1e-{PLACES}"):
        raise DpError(f"rho must be at least 1e-{PLACES} (budgets are kept to {PLACES} "
                      f"places), got {rho}")
    _check_delta(delta)
    return _epsilon_over(rho, delta)


def shared(measure: str, spend: Decimal, sensitivity: int, nodes: int) -> Noise:
    """Noise for one share of a total over ``nodes`` contributors (a federated sum): each node
    adds one draw of the returned Noise to its part, so that the total carries the sum of
    ``nodes`` draws and its release costs at most ``spend`` (in ρ).

    The sum of n discrete Gaussians of scale σ is not a discrete Gaussian. Kairouz, Liu &
    Steinke 2021 ("The Distributed Discrete Gaussian Mechanism for Federated Learning with
    Secure Aggregation", ICML, arXiv:2102.06387) bound how far it is from one. For one
    coordinate shifted by an integer Δ, with l = |Δ|/(sqrt(n)·σ) and
    τ = 10·Σ_{k=1}^{n-1} e^(-2π²σ²k/(k+1)), Theorem 1 (for σ >= 1/2) gives ρ-zCDP with
    ρ = ε²/2, ε = min(sqrt(l² + τ/2), l + τ); Proposition 14, as the authors' accounting code
    (google-research/federated, distributed_dp/accounting_utils.py) evaluates it, bounds the
    Rényi divergence of order α by min(α·l²/2 + τ, α·(l + τ)²/2), hence ρ = min(l²/2 + τ,
    (l + τ)²/2). The two agree but in the first term (τ against τ/4); this module takes the
    larger, so the bound stands on either statement (it costs noise only when σ is near 1/2;
    the second term is the smaller one whenever sqrt(n)·σ > 1).

    A release of several values has independent noise per coordinate, so the divergences add
    up over the coordinates that move, and one that does not move adds nothing. With integer
    moves Δ_j whose squares sum to at most Δ² (the L2 sensitivity), at most Δ² coordinates
    move and the |Δ_j| sum to at most Δ², so the release is ρ-zCDP with
    ρ = Δ²/2 · (1/(nσ²) + min(2τ, 2τ/(sqrt(n)·σ) + τ²)),
    whatever the number of values (for Δ = 1, the one-coordinate bound above). The scale
    returned is the smallest float σ >= 1/2 at which this ρ, with a margin of 1e-9 for
    rounding, is at most ``spend``.

    Whom this protects against: someone who sees the total and no share of the noise (the
    analyst under secure aggregation). A node knows its own draws; if t nodes pool theirs
    with the analyst, the total keeps only the bound with n - t in place of n. ``std`` and ``accuracy``
    of the result describe one node's draw; the total's standard deviation is sqrt(n) times
    it. With one node this is :func:`calibrate`.

    For "epsilon" there is no such result: the sum of discrete Laplace draws is not a
    discrete Laplace, and a pure ε guarantee for the total needs every node to add the full
    noise (:func:`calibrate` at each node).
    """
    if measure == "epsilon":
        raise DpError("pure ε noise cannot be shared: the sum of discrete Laplace draws is "
                      "not a discrete Laplace, so every node must add the full noise; use "
                      "calibrate() at every node, or the measure 'rho'")
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise DpError(f"nodes must be an int >= 1, got {nodes!r}")
    single = calibrate(measure, spend, sensitivity)  # checks measure, spend and sensitivity
    if nodes == 1:
        return single

    def fits(scale: float) -> bool:  # the theorem holds for σ >= 1/2 only
        return scale >= 0.5 and Decimal(_sum_rho(scale, sensitivity, nodes)
                                        * (1 + SUM_MARGIN)) <= spend

    low = max(0.5, single.scale / math.sqrt(nodes))
    if fits(low):
        return Noise("gaussian", "rho", _smallest(fits, low), sensitivity, spend)
    high = low * 2
    while not fits(high):  # τ falls with σ faster than exponentially: a few doublings
        low, high = high, high * 2
    while math.nextafter(low, math.inf) < high:
        mid = (low + high) / 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    if high > MAX_SCALE:
        raise DpError(f"a shared spend of {spend} over {nodes} nodes needs a noise scale "
                      f"above {MAX_SCALE:g}: spend more or use coarser fixed-point units")
    return Noise("gaussian", "rho", high, sensitivity, spend)


def _sum_rho(sigma: float, sensitivity: int, nodes: int) -> float:
    """The ρ of a release whose noise is the sum of ``nodes`` discrete Gaussians of scale
    ``sigma``, at L2 sensitivity ``sensitivity`` (see :func:`shared`)."""
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, nodes))
    root = math.sqrt(nodes) * sigma
    return sensitivity**2 / 2 * (1 / root**2 + min(2 * tau, 2 * tau / root + tau**2))


def _smallest(fits: Callable[[float], bool], scale: float) -> float:
    """The smallest float at or near ``scale`` (within a thousand floats) for which ``fits``
    holds, ``fits`` being monotone (true from some scale upwards)."""
    for _ in range(1000):
        if fits(scale):
            break
        scale = math.nextafter(scale, math.inf)
    else:
        raise RuntimeError(f"no scale near {scale!r} fits: the privacy map and its closed "
                           "form disagree")
    while fits(smaller := math.nextafter(scale, 0.0)):
        scale = smaller
    return scale


def _measurement(measure: str, scale: float) -> dp.Measurement:
    if measure == "epsilon":
        return dp.m.make_laplace(_VECTOR, dp.l1_distance(T="i64"), scale)
    return dp.m.make_gaussian(_VECTOR, dp.l2_distance(T="i64"), scale)


def _map(measurement: dp.Measurement, d_in: float) -> Any:
    """OpenDP's privacy map (untyped in OpenDP's stubs): a float, or a privacy profile."""
    return measurement.map(d_in)  # type: ignore[no-untyped-call]


def _epsilon_over(rho: Decimal, delta: Decimal) -> float:
    """OpenDP's ε for (ρ-zCDP, δ), never below the exact value for these Decimals: it is
    computed for a ρ at least ``rho`` (a Gaussian of scale 1 at a distance whose map is at
    least ``rho``) and a δ at most ``delta``."""
    distance = math.sqrt(2 * float(rho))
    gauss = dp.m.make_gaussian(dp.atom_domain(T="f64", nan=False),
                               dp.absolute_distance(T="f64"), 1.0)
    while Decimal(_map(gauss, distance)) < rho:
        distance = math.nextafter(distance, math.inf)
    d = float(delta)
    if Decimal(d) > delta:
        d = math.nextafter(d, 0.0)
    return float(_map(dp.c.make_zCDP_to_approxDP(gauss), distance).epsilon(d))


def _check_positive(name: str, value: object) -> Decimal:
    if not isinstance(value, Decimal):
        raise DpError(f"{name} must be a decimal.Decimal (e.g. Decimal('0.5')), "
                      f"got {type(value).__name__}")
    if not value.is_finite() or value <= 0:
        raise DpError(f"{name} must be a finite Decimal > 0, got {value}")
    if value > MAX_BUDGET:
        raise DpError(f"{name} must be at most {MAX_BUDGET}, got {value}: no privacy is left "
                      "to account for beyond that")
    return value


def _check_delta(delta: object) -> None:
    if not Decimal("1e-300") <= _check_positive("delta", delta) < 1:
        raise DpError(f"delta must be in [1e-300, 1), got {delta}")


def _check_sensitivity(sensitivity: object) -> None:
    if not isinstance(sensitivity, int) or isinstance(sensitivity, bool):
        raise DpError(f"sensitivity must be an int (in the integer units of the values), "
                      f"got {type(sensitivity).__name__}")
    if not 1 <= sensitivity <= I64_MAX:
        raise DpError(f"sensitivity must be an int in [1, 2^63), got {sensitivity}: "
                      "bound each subject's contribution and pass that bound")

"""DP noise (protocols.dp): scales are the smallest OpenDP's own privacy maps admit, draws have
the variance, tails and shape the theory gives, budgets split and convert exactly, and shared
noise for a federated sum keeps the theorem's ρ within the spend.

OpenDP's samplers draw from the operating system's CSPRNG and cannot be seeded, so the
statistical tests use fresh draws every run and bounds wide enough that a correct sampler fails
one with probability below 1e-9: every statistical check is a z-test at |z| <= 7 (two-sided
normal tail 2.6e-12; this file makes fewer than 100 such checks, so below 3e-10 in all), on
sample sizes where the statistic (a mean of 20,000 or more independent draws, or the log of a
count of 500 or more) is close to normal.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import opendp.prelude as opendp
import pytest

from veil.protocols import dp
from veil.protocols.errors import ProtocolInputError

Z = 7.0
VECTOR = opendp.vector_domain(opendp.atom_domain(T="i64"))


def measurement(measure: str, scale: float) -> opendp.Measurement:
    """OpenDP's measurement for the measure, built here independently of the module."""
    if measure == "epsilon":
        return opendp.m.make_laplace(VECTOR, opendp.l1_distance(T="i64"), scale)
    return opendp.m.make_gaussian(VECTOR, opendp.l2_distance(T="i64"), scale)


def pmf(mechanism: str, scale: float) -> dict[int, float]:
    """The exact pmf, normalised over |k| <= 60·scale + 60 (the rest is below 1e-26)."""
    bound = int(60 * scale) + 60
    weights = {k: math.exp(-abs(k) / scale) if mechanism == "laplace"
               else math.exp(-k * k / (2 * scale * scale)) for k in range(-bound, bound + 1)}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def moments(p: dict[int, float]) -> tuple[float, float]:
    return sum(k**2 * v for k, v in p.items()), sum(k**4 * v for k, v in p.items())


def assert_mean_square(draws: list[int], var: float, fourth: float) -> None:
    """The mean of x² (x has mean 0) is within Z standard errors of the variance."""
    n = len(draws)
    got = sum(x * x for x in draws) / n
    assert abs(got - var) <= Z * math.sqrt((fourth - var**2) / n), (got, var)
    assert abs(sum(draws) / n) <= Z * math.sqrt(var / n)


# -- calibrate -------------------------------------------------------------------------------

CASES = [(1, "0.1"), (1, "1"), (3, "0.5"), (7, "0.37"), (1000, "0.001"), (1, "0.000001"),
         (2**20, "3")]


@pytest.mark.parametrize("measure", dp.MEASURES)
@pytest.mark.parametrize(("sensitivity", "spend"), CASES)
def test_calibrate_gives_the_smallest_scale_whose_opendp_map_is_within_the_spend(
        measure: str, sensitivity: int, spend: str) -> None:
    noise = dp.calibrate(measure, Decimal(spend), sensitivity)
    assert (noise.mechanism, noise.measure, noise.sensitivity, noise.spend) == (
        dp.MECHANISM[measure], measure, sensitivity, Decimal(spend))
    assert Decimal(measurement(measure, noise.scale).map(sensitivity)) <= Decimal(spend)
    smaller = math.nextafter(noise.scale, 0.0)
    assert Decimal(measurement(measure, smaller).map(sensitivity)) > Decimal(spend)
    closed = (sensitivity / float(spend) if measure == "epsilon"
              else sensitivity / math.sqrt(2 * float(spend)))
    assert noise.scale == pytest.approx(closed, rel=1e-12)


@pytest.mark.parametrize(("args", "match"), [
    (("delta", Decimal("1"), 1), "measure must be one of epsilon, rho, got 'delta'"),
    (("epsilon", Decimal("0"), 1), "spend must be a finite Decimal > 0, got 0"),
    (("rho", Decimal("-1"), 1), "spend must be a finite Decimal > 0, got -1"),
    (("rho", Decimal("NaN"), 1), "spend must be a finite Decimal > 0"),
    (("epsilon", Decimal("Infinity"), 1), "spend must be a finite Decimal > 0"),
    (("epsilon", 0.5, 1), r"spend must be a decimal.Decimal \(e.g. Decimal\('0.5'\)\), got float"),
    (("epsilon", Decimal("1"), 0), r"sensitivity must be an int in \[1, 2\^63\), got 0"),
    (("rho", Decimal("1"), -3), r"sensitivity must be an int in \[1, 2\^63\), got -3"),
    (("epsilon", Decimal("1"), 2**63), r"sensitivity must be an int in \[1, 2\^63\)"),
    (("rho", Decimal("1"), 1.5), "sensitivity must be an int .* got float"),
    (("rho", Decimal("1"), True), "sensitivity must be an int .* got bool"),
    (("epsilon", Decimal("1e-30"), 1), "would not fit 64-bit integers"),
    (("rho", Decimal("1000.1"), 1), "spend must be at most 1000, got 1000.1"),
])
def test_calibrate_refuses_bad_input_naming_the_problem(args: tuple[object, ...],
                                                        match: str) -> None:
    with pytest.raises(dp.DpError, match=match):
        dp.calibrate(*args)  # type: ignore[arg-type]
    assert issubclass(dp.DpError, ProtocolInputError)


def test_noise_records_round_trip_exactly_and_bad_records_are_refused() -> None:
    for noise in (dp.calibrate("rho", Decimal("0.37"), 7),
                  dp.calibrate("epsilon", Decimal("0.000001"), 3)):
        record = noise.to_dict()
        assert all(isinstance(v, str) for v in record.values())
        assert record["scale"] == repr(noise.scale)
        assert dp.Noise.from_dict(record) == noise
    good = dp.calibrate("epsilon", Decimal("1"), 1).to_dict()
    with pytest.raises(dp.DpError, match="noise record lacks 'spend'"):
        dp.Noise.from_dict({k: v for k, v in good.items() if k != "spend"})
    with pytest.raises(dp.DpError, match="does not parse as a number"):
        dp.Noise.from_dict(good | {"sensitivity": "one"})
    with pytest.raises(dp.DpError, match="measure 'epsilon' goes with mechanism 'laplace'"):
        dp.Noise.from_dict(good | {"mechanism": "gaussian"})
    with pytest.raises(dp.DpError, match="scale must be a float in"):
        dp.Noise.from_dict(good | {"scale": "nan"})
    with pytest.raises(dp.DpError, match="alpha must be a float in"):
        dp.Noise.from_dict(good).accuracy(1.0)


# -- the draws, statistically ------------------------------------------------------------------

N = 100_000


@pytest.fixture(scope="module", params=dp.MEASURES)
def sample(request: pytest.FixtureRequest) -> tuple[dp.Noise, list[int]]:
    noise = dp.calibrate(request.param, Decimal("1" if request.param == "epsilon" else "0.5"), 3)
    assert noise.scale == 3.0
    return noise, dp.draw(noise, N)


def test_std_is_the_exact_standard_deviation_of_the_pmf() -> None:
    for scale in (0.3, 1.0, 3.0, 10.0, 1e6):
        for measure, mechanism in dp.MECHANISM.items():
            var, _ = moments(pmf(mechanism, scale)) if scale < 1e3 else (0.0, 0.0)
            noise = dp.Noise(mechanism, measure, scale, 1, Decimal(1))
            if scale < 1e3:
                assert noise.std() ** 2 == pytest.approx(var, rel=1e-9)
            elif mechanism == "laplace":  # var = 2q/(1-q)² ~ 2·scale² - 1/6 for large scales
                assert noise.std() ** 2 == pytest.approx(2 * scale**2 - 1 / 6, rel=1e-12)
            else:
                assert noise.std() == scale
    assert dp.Noise("laplace", "epsilon", 3.0, 1, Decimal(1)).std() ** 2 == pytest.approx(
        2 * math.exp(-1 / 3) / (1 - math.exp(-1 / 3)) ** 2, rel=1e-14)


def test_the_draws_have_the_variance_of_the_theory(sample: tuple[dp.Noise, list[int]]) -> None:
    noise, draws = sample
    var, fourth = moments(pmf(noise.mechanism, noise.scale))
    assert noise.std() ** 2 == pytest.approx(var, rel=1e-9)
    assert_mean_square(draws, var, fourth)


@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_accuracy_covers_at_least_1_minus_alpha_of_the_draws(
        sample: tuple[dp.Noise, list[int]], alpha: float) -> None:
    noise, draws = sample
    bound = noise.accuracy(alpha)
    p = sum(v for k, v in pmf(noise.mechanism, noise.scale).items() if abs(k) <= bound)
    assert 1 - alpha <= p < 1 - alpha / 10  # the bound holds and is not vacuous
    got = sum(abs(x) <= bound for x in draws) / len(draws)
    assert abs(got - p) <= Z * math.sqrt(p * (1 - p) / len(draws)), (got, p)


def test_the_pmf_falls_off_as_the_mechanism_says(sample: tuple[dp.Noise, list[int]]) -> None:
    """log(n_k / n_{k+1}) for n_k = #{|x| = k}: 1/scale for the discrete Laplace (the ratio
    p(k)/p(k+1) = e^(1/scale)), (2k+1)/(2·scale²) for the discrete Gaussian, less log 2 at
    k = 0 (two values, ±1, have |x| = 1). The standard error of the log ratio of two counts
    of a multinomial is sqrt(1/n_k + 1/n_{k+1})."""
    noise, draws = sample
    counts: dict[int, int] = {}
    for x in draws:
        counts[abs(x)] = counts.get(abs(x), 0) + 1
    s = noise.scale
    checked = 0
    for k in range(0, 100):
        if counts.get(k + 1, 0) < 500:
            break
        want = 1 / s if noise.mechanism == "laplace" else (2 * k + 1) / (2 * s * s)
        want -= math.log(2) if k == 0 else 0
        got = math.log(counts[k] / counts[k + 1])
        assert abs(got - want) <= Z * math.sqrt(1 / counts[k] + 1 / counts[k + 1]), (k, got)
        checked += 1
    assert checked >= 7


# -- release and draw --------------------------------------------------------------------------

@pytest.mark.parametrize("measure", dp.MEASURES)
def test_release_adds_independent_zero_mean_noise_of_the_calibrated_size(measure: str) -> None:
    noise = dp.calibrate(measure, Decimal("0.5"), 4)
    values = [10**15 + 7 * i for i in range(20_000)]
    out = dp.release(noise, values)
    assert len(out) == len(values) and all(type(v) is int for v in out)
    diffs = [o - v for o, v in zip(out, values)]
    assert sum(d != 0 for d in diffs) > len(diffs) // 2
    assert_mean_square(diffs, *moments(pmf(noise.mechanism, noise.scale)))


def test_release_refuses_values_outside_64_bit_integers_and_saturated_results() -> None:
    noise = dp.calibrate("epsilon", Decimal("1"), 3)
    for bad, match in [([2**63], "value at slot 0 is outside 64-bit integers"),
                       ([0, -(2**63) - 1], "value at slot 1 is outside 64-bit integers"),
                       ([1, 1.5], "value at slot 1 must be an int, got float"),
                       ([True], "value at slot 0 must be an int, got bool")]:
        with pytest.raises(dp.DpError, match=match):
            dp.release(noise, bad)  # type: ignore[arg-type]
    # at the limits, a draw past it happens with probability 0.58 per value: among 50, all
    # but certainly (1 - 0.42^50 > 1 - 1e-18)
    for limit in (2**63 - 1, -(2**63)):
        with pytest.raises(dp.DpError, match="reached the 64-bit limit"):
            dp.release(noise, [limit] * 50)
    assert dp.release(noise, []) == [] and dp.draw(noise, 0) == []
    assert len(dp.draw(noise, 5)) == 5
    with pytest.raises(dp.DpError, match="count must be an int >= 0, got -1"):
        dp.draw(noise, -1)


# -- split -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("total", "parts"), [
    ("1", 3), ("0.5", 7), ("2", 2), ("999.999999999999999999999999999987", 11), ("1e-12", 1),
    ("0.000000000013", 13), ("0.3", 1000000)])
def test_split_shares_round_down_to_12_places_and_never_overspend(total: str,
                                                                  parts: int) -> None:
    share = dp.split(Decimal(total), parts)
    assert isinstance(share, Decimal) and share > 0
    assert share.as_tuple().exponent == -12
    exact = Fraction(Decimal(total))  # exact arithmetic: Decimal's context would round
    assert parts * Fraction(share) <= exact < parts * (Fraction(share) + Fraction(1, 10**12))


@pytest.mark.parametrize(("args", "match"), [
    ((Decimal("1"), 0), "parts must be an int >= 1, got 0"),
    ((Decimal("1"), 2.0), "parts must be an int >= 1, got 2.0"),
    ((Decimal("0"), 3), "total must be a finite Decimal > 0"),
    ((1.0, 3), "total must be a decimal.Decimal"),
    ((Decimal("1e-13"), 1), "below 1e-12 each"),
    ((Decimal("1e9"), 2), "total must be at most 1000"),
])
def test_split_refuses_bad_input(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(dp.DpError, match=match):
        dp.split(*args)  # type: ignore[arg-type]


# -- (ε, δ) and ρ ------------------------------------------------------------------------------

def cks20_log_delta(rho: float, eps: float) -> float:
    """log δ of ρ-zCDP at ε by Canonne, Kamath & Steinke 2020 (Corollary 13), written here from
    the paper: δ = inf_{α>1} exp((α-1)(αρ-ε)) / (α-1) · (1-1/α)^α, minimised over a fine
    log-spaced grid of α - 1 (so never below the infimum)."""
    best = math.inf
    for i in range(40_001):
        a = 1 + math.exp(math.log(1e-5) + i * math.log(1e9) / 40_000)
        best = min(best, (a - 1) * (a * rho - eps) + a * math.log1p(-1 / a) - math.log(a - 1))
    return best


@pytest.mark.parametrize(("epsilon", "delta"), [("1", "1e-6"), ("0.5", "1e-9"), ("3", "1e-5")])
def test_rho_for_is_the_largest_rho_on_the_12_place_grid_and_tighter_than_the_closed_form(
        epsilon: str, delta: str) -> None:
    eps, dlt = Decimal(epsilon), Decimal(delta)
    rho = dp.rho_for(eps, dlt)
    assert rho.as_tuple().exponent == -12
    assert Decimal(dp.epsilon_at(rho, dlt)) <= eps
    assert Decimal(dp.epsilon_at(rho + Decimal("1e-12"), dlt)) > eps
    log = math.log(1 / float(dlt))
    closed = (math.sqrt(log + float(eps)) - math.sqrt(log)) ** 2  # ε = ρ + 2·sqrt(ρ·ln(1/δ))
    assert closed < float(rho) < 1.5 * closed
    assert dp.epsilon_at(rho, dlt) < float(rho) + 2 * math.sqrt(float(rho) * log)
    # OpenDP's conversion is CKS20's: at the ε it gives, the paper's δ is the δ asked
    at = dp.epsilon_at(rho, dlt)
    assert math.exp(cks20_log_delta(float(rho), at)) == pytest.approx(float(dlt), rel=1e-4)


def test_rho_for_and_epsilon_at_are_monotone() -> None:
    d = Decimal("1e-6")
    assert dp.rho_for(Decimal("0.5"), d) < dp.rho_for(Decimal("1"), d)
    assert dp.rho_for(Decimal("1"), Decimal("1e-9")) < dp.rho_for(Decimal("1"), d)
    rhos = [Decimal(r) for r in ("0.001", "0.01", "0.1", "1", "10")]
    eps = [dp.epsilon_at(r, d) for r in rhos]
    assert eps == sorted(eps) and len(set(eps)) == len(eps)
    assert dp.epsilon_at(Decimal("0.1"), Decimal("1e-9")) > dp.epsilon_at(Decimal("0.1"), d)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: dp.rho_for(Decimal("1"), Decimal("0")), "delta must be a finite Decimal > 0"),
    (lambda: dp.rho_for(Decimal("1"), Decimal("1")), r"delta must be in \[1e-300, 1\), got 1"),
    (lambda: dp.rho_for(Decimal("1"), Decimal("1e-301")), r"delta must be in \[1e-300, 1\)"),
    (lambda: dp.rho_for(Decimal("1001"), Decimal("1e-6")), "epsilon must be at most 1000"),
    (lambda: dp.rho_for(Decimal("1"), 1e-6), "delta must be a decimal.Decimal"),
    (lambda: dp.rho_for(Decimal("0"), Decimal("1e-6")), "epsilon must be a finite Decimal > 0"),
    (lambda: dp.rho_for(Decimal("1e-12"), Decimal("1e-10")), "admits no ρ of at least 1e-12"),
    (lambda: dp.epsilon_at(Decimal("-1"), Decimal("1e-6")), "rho must be a finite Decimal > 0"),
    (lambda: dp.epsilon_at(Decimal("1e-13"), Decimal("1e-6")), "rho must be at least 1e-12"),
])
def test_rho_for_and_epsilon_at_refuse_bad_input(call: object, match: str) -> None:
    with pytest.raises(dp.DpError, match=match):
        call()  # type: ignore[operator]


# -- shared noise for federated sums -----------------------------------------------------------

def kls21_rho(sigma: float, sensitivity: int, nodes: int) -> tuple[float, float, float]:
    """ρ for the sum of n discrete Gaussians of scale σ, written here from Kairouz, Liu &
    Steinke 2021 with l = Δ/(sqrt(n)σ), τ = 10 Σ_{k=1}^{n-1} exp(-2π²σ²k/(k+1)):
    (Theorem 1 for one coordinate moved by Δ: ε²/2 with ε = min(sqrt(l² + τ/2), l + τ);
    Proposition 14 for one coordinate: min(l²/2 + τ, (l + τ)²/2);
    the bound over any number of coordinates whose integer moves have squared norm <= Δ²:
    Proposition 14 summed over at most Δ² moved coordinates)."""
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, nodes))
    d, n = sensitivity, nodes
    l = d / (math.sqrt(n) * sigma)  # noqa: E741
    theorem = min(math.sqrt(l**2 + tau / 2), l + tau) ** 2 / 2
    proposition = min(l**2 / 2 + tau, (l + tau) ** 2 / 2)
    many = d**2 / 2 * (1 / (n * sigma**2) + min(2 * tau, 2 * tau / (math.sqrt(n) * sigma)
                                                 + tau**2))
    return theorem, proposition, many


def test_shared_noise_with_one_node_is_calibrate_and_refuses_pure_epsilon() -> None:
    for spend, sensitivity in (("0.5", 3), ("0.01", 1), ("7", 100)):
        assert dp.shared("rho", Decimal(spend), sensitivity, 1) == dp.calibrate(
            "rho", Decimal(spend), sensitivity)
    with pytest.raises(dp.DpError, match="every node must add the full noise"):
        dp.shared("epsilon", Decimal("1"), 1, 3)
    for nodes in (0, -1, 1.5, True):
        with pytest.raises(dp.DpError, match="nodes must be an int >= 1"):
            dp.shared("rho", Decimal("1"), 1, nodes)  # type: ignore[arg-type]
    with pytest.raises(dp.DpError, match="spend must be a finite Decimal > 0"):
        dp.shared("rho", Decimal("0"), 1, 3)


@pytest.mark.parametrize(("spend", "sensitivity", "nodes"), [
    ("0.5", 1, 5), ("0.5", 3, 5), ("0.01", 2, 10), ("0.5", 1, 100), ("10", 1, 2),
    ("1", 5, 3)])
def test_shared_scale_is_the_smallest_whose_theorem_rho_is_within_the_spend(
        spend: str, sensitivity: int, nodes: int) -> None:
    noise = dp.shared("rho", Decimal(spend), sensitivity, nodes)
    assert (noise.mechanism, noise.measure, noise.sensitivity, noise.spend) == (
        "gaussian", "rho", sensitivity, Decimal(spend))
    theorem, proposition, many = kls21_rho(noise.scale, sensitivity, nodes)
    assert max(theorem, proposition) <= many * (1 + 1e-12) and many <= float(spend)
    assert noise.scale >= 0.5  # the theorem needs σ >= 1/2
    # never less noise in the total than one central draw would need
    assert math.sqrt(nodes) * noise.scale >= dp.calibrate(
        "rho", Decimal(spend), sensitivity).scale * (1 - 1e-12)
    if noise.scale > 0.5:
        assert kls21_rho(noise.scale * (1 - 1e-8), sensitivity, nodes)[2] > float(spend)


def test_the_sum_of_five_shared_draws_has_the_variance_of_one_central_draw() -> None:
    nodes, sums = 5, 12_000
    central = dp.calibrate("rho", Decimal("0.5"), 3)
    noise = dp.shared("rho", Decimal("0.5"), 3, nodes)
    assert nodes * noise.std() ** 2 == pytest.approx(central.std() ** 2, rel=1e-5)
    draws = dp.draw(noise, nodes * sums)
    totals = [sum(draws[i:i + nodes]) for i in range(0, len(draws), nodes)]
    # the total is within 1e-6 of a Gaussian of variance σ²: fourth moment 3σ⁴
    var = nodes * noise.std() ** 2
    assert_mean_square(totals, var, 3 * var**2)

"""The eps search of `make experiments` (experiments/run.py): the 90% comparison depends on it
landing on the target, so its interpolation and bracketing are checked here on known laws."""

import math

import pytest

from experiments.run import GUESS_SLOPE, next_eps


def law(eps: float, c: float = 0.05, a: float = 0.7) -> float:
    """Total pruning with 1 - pruning = c * eps^-a (the shape the real runs roughly have)."""
    return 1 - c * eps ** -a


def test_exact_on_a_power_law():
    pts = [(0.1, law(0.1), "a"), (0.3, law(0.3), "b")]
    eps = next_eps(pts, 0.9)
    assert law(eps) == pytest.approx(0.9, abs=1e-9)


def test_one_point_steps_with_the_guess_slope():
    eps = next_eps([(0.1, 0.7, "a")], 0.9)
    assert math.log(0.1 / 0.3) / GUESS_SLOPE == pytest.approx(math.log(eps / 0.1))
    assert eps > 0.1  # more pruning needs a larger eps


def test_uses_the_two_points_nearest_the_target():
    far = (0.01, 0.2, "far")  # would bend the line if it were used
    pts = [far, (0.2, law(0.2), "a"), (0.6, law(0.6), "b")]
    assert law(next_eps(pts, 0.9)) == pytest.approx(0.9, abs=1e-9)


def test_stays_inside_the_bracket():
    # the two nearest points are nearly flat, so their secant lands far beyond 0.42, which
    # already prunes more than the target: the bracket [0.40, 0.42] is bisected instead
    pts = [(0.30, 0.897, "a"), (0.40, 0.898, "b"), (0.42, 0.95, "c")]
    assert next_eps(pts, 0.9) == pytest.approx(math.sqrt(0.40 * 0.42))
    # a secant with the wrong sign (pruning fell as eps grew) falls back to the bisection
    pts = [(0.3, 0.88, "a"), (0.4, 0.87, "b"), (0.8, 0.95, "c")]
    eps = next_eps(pts, 0.9)
    assert 0.4 < eps < 0.8

"""Iterative magnitude pruning (HPTD): the rising schedule, the counts and the mask step."""

from __future__ import annotations

import numpy as np
import pytest

from nettrim_cli.methods.lc.schedule import (
    MagnitudeSchedule,
    Ramp,
    final_counts,
    progress,
    prune_step,
)


def test_cubic_ramp_is_zhu_and_gupta_and_ends_at_one():
    assert progress(0, 4) == 0.0
    assert progress(1, 4) == pytest.approx(1 - 0.75 ** 3)
    assert progress(4, 4) == 1.0
    assert progress(2, 4, Ramp.LINEAR) == 0.5
    steps = np.diff([progress(t, 10) for t in range(11)])
    assert np.all(steps > 0) and np.all(np.diff(steps) < 0)  # rising, ever more slowly


def test_round_counts_follow_the_cubic_ramp_in_kept_weights():
    table = MagnitudeSchedule(rounds=3).counts([1000, 50], [100, 50])
    # pruned after round t: round((1 - (1 - t/3)^3) * 900) = 633.3 -> 633, 866.7 -> 867, 900
    assert table == [[367, 50], [133, 50], [100, 50]]


def test_linear_rounds_prune_equal_steps():
    assert MagnitudeSchedule(4, "linear").counts([100], [20]) == [[80], [60], [40], [20]]


@pytest.mark.parametrize("ramp", list(Ramp))
def test_round_counts_never_rise_and_end_on_the_final_counts(ramp):
    start, final = [784 * 300, 300 * 100, 1000], [11760, 3000, 999]
    table = np.array(MagnitudeSchedule(7, ramp).counts(start, final))
    assert np.all(np.diff(np.vstack([start, table]), axis=0) <= 0)
    assert table[-1].tolist() == final


def test_final_counts_from_a_sparsity_or_matched_counts():
    assert final_counts([100, 30, 5], sparsity=0.9) == [10, 3, 0]
    assert final_counts([5], sparsity=0.5) == [3]  # 2.5 rounds up
    assert final_counts([100, 30], counts=[7, 30]) == [7, 30]
    with pytest.raises(ValueError):
        final_counts([100, 30], counts=[7, 31])
    with pytest.raises(ValueError):
        final_counts([100], sparsity=0.9, counts=[10])


def test_prune_step_keeps_the_largest_survivors_exactly():
    w = np.array([[0.5, -3.0, 0.2], [2.0, -0.1, 1.0]])
    mask = prune_step(w, np.ones_like(w, dtype=bool), 3)
    assert np.array_equal(mask, [[False, True, False], [True, False, True]])


def test_rounds_keep_exact_counts_and_zeros_stay_zero():
    """A simulated prune-and-retrain: retraining moves every weight, including (as a faulty
    loop might) the pruned ones; the mask step must not bring any of them back."""
    rng = np.random.default_rng(0)
    shapes = [(30, 20), (4, 3, 3, 3), (10,)]
    weights = [rng.normal(size=s) for s in shapes]
    masks = [np.ones(s, dtype=bool) for s in shapes]
    sizes = [int(np.prod(s)) for s in shapes]
    final = final_counts(sizes, sparsity=0.95)
    for row in MagnitudeSchedule(rounds=5).counts(sizes, final):
        new = [prune_step(w * m, m, keep) for w, m, keep in zip(weights, masks, row, strict=True)]
        for before, after, keep in zip(masks, new, row, strict=True):
            assert int(after.sum()) == keep
            assert not np.any(after & ~before)  # zeros stay zero
        masks = new
        weights = [(w + 0.3 * rng.normal(size=w.shape)) * m + 100.0 * ~m
                   for w, m in zip(weights, masks, strict=True)]
    assert [int(m.sum()) for m in masks] == final


def test_prune_step_refuses_to_keep_more_than_survive():
    with pytest.raises(ValueError):
        prune_step(np.ones(4), np.array([True, False, True, False]), 3)
    with pytest.raises(ValueError):
        prune_step(np.ones(4), np.ones(5, dtype=bool), 2)

"""Net-Trim steered by a target sparsity (`nettrim prune --sparsity S`).

The program of each unit is the paper's (eqs. 3-7, 11-14, steered by the relative eps): what
changes is who picks eps. ``prune_to_sparsity`` finds the eps (eps_r of every layer in parallel
mode, eps_1 with the inflation rate gamma kept in cascade mode) whose prune removes a fraction S
of all the pruned units' weights, within ``tol``; one Net-Trim run per trial.

The search. The fraction kept, 1 - p, falls with eps like a power law over the range that
matters (the experiments' networks gave d log(1 - p) / d log eps between -0.6 and -0.7), so
the trials are placed by the secant on (log eps, log(1 - p)) (``next_epsilon``): until the
target is bracketed through the trials nearest to it, then through the bracket's ends (a
safeguarded regula falsi with the Illinois weighting). eps stays in (0, 1): at eps_r = 1 the
all-zero layer is feasible.
The pruned fraction can jump with eps (a layer's answer moving to a sparser support): once the
bracket is narrower than ``STEP_RTOL`` the search stops and keeps the nearest trial.

Every trial runs with its own work folder (``trial-K`` inside the run's), kept until the whole
prune is written: an interrupted search continues with ``--resume``, the finished trials read
back from their records, and it picks the same eps as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from nettrim_cli.methods.base import MethodResult

SLOPE_GUESS = -0.65  # d log(1 - p) / d log eps before two trials are known (see above)
EPS_MIN, EPS_MAX = 1e-6, 0.999
TOLERANCE = 0.005  # half a point of pruning, the figure
# a bracket whose ends are closer than this (relative) has closed on a step of the curve: the
# small ResNet's cascade prune jumps from 17.7% to 23.3% between eps 0.2173 and 0.2174, where
# the search spent 5 more trials bisecting the step. (At 1% a small MLP's allocation search
# stopped between eps 0.7562 (58.40%) and 0.763 (60.50%) for a target of 60%; 0.7601 gives
# 60.29%.)
STEP_RTOL = 0.002
ALL_PRUNED = 1.0 - 1e-9  # a trial that pruned every weight (eps at or over the zero weights')


@dataclass
class Trial:
    """One Net-Trim run of the search: its eps, the fraction of weights it pruned and the
    network's output discrepancy on the calibration set (the report's)."""

    epsilon: float
    pruned: float
    seconds: float
    discrepancy: float | None = None

    def record(self) -> dict:
        return dataclasses.asdict(self)


def pruned_fraction(result: MethodResult) -> float:
    """Fraction of zeros over every weight of the pruned units (biases aside)."""
    total = sum(o.W.size for o in result.layers)
    kept = sum(int((o.W != 0).sum()) for o in result.layers)
    return 1.0 - kept / total if total else 0.0


def _log_kept(t: Trial) -> float:
    return math.log(max(1.0 - t.pruned, 1e-9))


def _below_secant(below: list[Trial], a: Trial, goal: float, width: float) -> float:
    """The bracket fraction (in log eps, from ``a``) where the secant through the two largest
    eps below the target meets it, within [0.15, 0.85], or 0.5. For a bracket whose upper end
    pruned every weight: log(1 - p) has no finite value there, and the secant through it
    crept up from ``a`` 15% a trial (CNN-60K at 0.95: 12 trials from eps 0.05 to 0.554
    against one at 0.999)."""
    frac = 0.5
    pts = sorted(below, key=lambda t: t.epsilon)[-2:]
    if len(pts) == 2 and pts[1].epsilon > pts[0].epsilon:
        slope = ((_log_kept(pts[1]) - _log_kept(pts[0]))
                 / (math.log(pts[1].epsilon) - math.log(pts[0].epsilon)))
        if slope < 0:
            frac = (goal - _log_kept(a)) / slope / width
    return min(max(frac, 0.15), 0.85)


def next_epsilon(trials: list[Trial], target: float) -> float:
    """The eps of the next trial (see the module docstring).

    Bracketed (a trial below the target and one above): the secant through the bracket's
    ends (Illinois-weighted), kept within its middle 70% so that the bracket shrinks by at
    least 15% a trial; through the two largest eps below when the upper end pruned every
    weight.
    Not yet bracketed: the secant through the two trials nearest the target, or the slope
    guess with one trial, at most a factor 20 away from the nearest trial.
    """
    goal = math.log(max(1.0 - target, 1e-9))
    below = [t for t in trials if t.pruned < target]  # eps too small
    above = [t for t in trials if t.pruned > target]  # eps too large
    if below and above:
        a = max(below, key=lambda t: t.epsilon)
        b = min(above, key=lambda t: t.epsilon)
        la, lb = math.log(a.epsilon), math.log(b.epsilon)
        if b.pruned >= ALL_PRUNED:
            return math.exp(la + _below_secant(below, a, goal, lb - la) * (lb - la))
        ya, yb = _log_kept(a) - goal, _log_kept(b) - goal  # > 0 and < 0
        # Illinois: when the last trials all landed on one side, the other end (kept that
        # long) counts half as much per extra trial, so the bracket closes from both sides.
        # Plain regula falsi kept CNN-60K's end at eps 0.798 (99.998% pruned) for 8 trials
        # and crept up from below 15% of the bracket a trial: 12 trials ended at 93.0%
        # for a target of 95%.
        side = [t.pruned < target for t in trials]
        n = next((k for k, s in enumerate(reversed(side)) if s != side[-1]), len(side))
        if n >= 2:
            if side[-1]:
                yb *= 0.5 ** (n - 1)
            else:
                ya *= 0.5 ** (n - 1)
        frac = ya / (ya - yb)
        return math.exp(la + min(max(frac, 0.15), 0.85) * (lb - la))
    # not bracketed: step on from the frontier (the largest eps still below the target, or
    # the smallest still above it)
    a = max(below, key=lambda t: t.epsilon) if below else min(above, key=lambda t: t.epsilon)
    slope = SLOPE_GUESS
    near = sorted(trials, key=lambda t: abs(t.pruned - target))[:2]
    if len(near) == 2:
        dx = math.log(near[1].epsilon) - math.log(near[0].epsilon)
        dy = _log_kept(near[1]) - _log_kept(near[0])
        if dx != 0 and dy / dx < 0:
            slope = dy / dx
    step = min(max(abs((goal - _log_kept(a)) / slope), math.log(1.5)), math.log(20))
    eps = a.epsilon * math.exp(step if below else -step)
    return min(max(eps, EPS_MIN), EPS_MAX)


def _closed(trials: list[Trial], target: float) -> bool:
    """True when the largest eps below the target and the smallest above it are within
    ``STEP_RTOL`` of each other."""
    below = [t.epsilon for t in trials if t.pruned < target]
    above = [t.epsilon for t in trials if t.pruned > target]
    return bool(below and above) and min(above) <= max(below) * (1.0 + STEP_RTOL)


@dataclass
class Search:
    """The search's answer: the kept trial (the accepted one, or the nearest), its prune, and
    every trial in the order run."""

    result: MethodResult
    chosen: Trial
    trials: list[Trial]


def bracketed(trials: list[Trial], target: float) -> bool:
    """True when one trial pruned at most ``target`` and one at least."""
    return (any(t.pruned <= target for t in trials)
            and any(t.pruned >= target for t in trials))


def prune_to_sparsity(run: Callable[[int, float], MethodResult], start: float, target: float,
                      tol: float = TOLERANCE, max_trials: int = 12,
                      on_trial: Callable[[Trial, int], None] | None = None,
                      bracket: bool = False) -> Search:
    """Find the eps whose Net-Trim prune removes ``target`` of the weights within ``tol``.

    Args:
        run: ``run(k, eps)`` prunes with eps (trial k, counted from 0) and returns the result.
        start: the first trial's eps.
        target: the fraction of all pruned units' weights to remove, in (0, 1).
        tol: accept a trial with |pruned - target| <= tol.
        max_trials: stop after this many trials and keep the nearest one.
        on_trial: called after each trial with the trial and its index.
        bracket: stop only once the trials also bracket the target (the allocation's
            curves must reach it): a trial within ``tol`` with every trial on its side is
            followed by one aimed ``tol`` past the target.
    Returns:
        the accepted (or nearest) trial, its result and every trial, in the order run.
    """
    trials: list[Trial] = []
    best: tuple[MethodResult, Trial] | None = None
    eps = min(max(start, EPS_MIN), EPS_MAX)
    for k in range(max_trials):
        t0 = time.perf_counter()
        result = run(k, eps)
        trial = Trial(epsilon=eps, pruned=pruned_fraction(result),
                      seconds=time.perf_counter() - t0,
                      discrepancy=(getattr(result, "network", None) or {}).get("discrepancy"))
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial, k)
        if best is None or abs(trial.pruned - target) < abs(best[1].pruned - target):
            best = (result, trial)
        goal = target
        if abs(trial.pruned - target) <= tol:
            if not bracket or bracketed(trials, target):
                break
            goal = min(max(target + (tol if trial.pruned < target else -tol), 0.0), ALL_PRUNED)
        nxt = next_epsilon(trials, goal)
        if _closed(trials, target) or any(abs(nxt - t.epsilon) <= 1e-9 * t.epsilon
                                           for t in trials):
            break  # the bracket has closed on a step in the curve: no eps gets closer
        eps = nxt
    assert best is not None
    return Search(result=best[0], chosen=best[1], trials=trials)

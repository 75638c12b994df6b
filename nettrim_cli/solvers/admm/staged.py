"""The fast path of the default solver on a large layer: short ADMM stages on an inflated
radius, each followed by the exact support refit (``refit.py``).

The l1 answer of program (4) shrinks its kept weights: refitted on the same support (the
weights with those zeros that minimise the eq. 3 misfit) its misfit is far below eps (on the
784 -> 500 layer of the bench MLP, 0.6 eps for every radius tried). So the l1 program is
solved for a *larger* radius k eps, whose support is sparser, and the refit brings that
support back onto eps: the answer is the refitted weights, feasible for eq. 3 at eps when
measured on every sample, and sparser than the l1 answer at eps (the relaxed lasso).

Stage by stage: ``stage_iters`` ADMM iterations at the radius k eps (warm started from the
previous stage; on a layer with many samples ADMM sees a fixed random subset of them, ``rows``,
with eps scaled to their share of ||Y||), then the refit on every sample; k is then moved by
the ratio of the refit's misfit to eps (aiming at ``aim`` eps; bisected once a feasible and an
infeasible radius bracket it), and the sparsest feasible refit is kept. ADMM need not
converge: the support of a few dozen iterations refits as well as that of a converged run (at 100
iterations on that layer, 77.4% zeros refitting to 0.64 eps, where the converged l1 answer
at eps has 76.3% zeros after 420 iterations). When no stage gives a feasible refit, the
caller continues with plain ADMM at eps (``layer.solve_layer``'s stages).

After the stages each column is taken from the stage that suits it (``_mix_columns``): the
refit is column by column, so the layer's misfit^2 is the sum of its columns', and the fewest
weights whose sum meets eps is a small choice per column. ADMM stopped early thins its support
from stage to stage whatever the radius, so often only the first stage met eps on its own.

The radius stays below the misfit of the zero weights (with the best bias): at or above it the
l1 program's answer is all zeros, and ADMM warm started from a collapsed stage does not grow
its weights back within a stage (found on LeNet300 at eps 0.7: stages at 3 eps and 2.6 eps
left 22 and 0 weights, and the layer kept its first, far too dense, stage). When the zero
weights themselves meet eps they are the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nettrim_cli.solvers.admm.layer import _Answer, _LayerSolve
from nettrim_cli.solvers.admm.refit import GramSource, Targets, refit_support
from nettrim_cli.solvers.admm.refit import misfit as column_misfit
from nettrim_cli.solvers.admm.repair import _l1
from nettrim_cli.solvers.admm.settings import ADMMSettings, ADMMSolution
from nettrim_cli.solvers.base import Progress, SolverSettings, no_progress


@dataclass
class StageSettings:
    """The staged fast path.

    inflation: the first stage's radius as a multiple of eps (the refit/l1 misfit ratio of
        0.6 measured on the bench layers puts the answer near 1.6).
    stage_iters: ADMM iterations per stage.
    stages: at most this many stages.
    extra_stages: up to this many more when no stage and no column mix meets eps yet (the
        fallback after them, ADMM at eps on all rows and the repair, costs more): on the bench
        MLP's 501 -> 200 layer in cascade mode at 20,000 samples four stages missed eps by
        33, 12, 5 and 1% and the fallback took 13 s of the layer's 23 s; a fifth stage met it
        (the prune 49.7 s -> 39.0 s, 66.37% -> 67.64% pruned, 88.52% -> 88.58% test accuracy).
    aim: the refit's misfit the next radius aims at, as a fraction of eps (a margin for the
        support changing with the radius).
    settle: stop once a feasible refit was found, the next radius would move by less than this
        fraction and the support's size moved by less than it since the previous stage (0.05:
        on the bench MLP at 20,000 samples the 501 -> 200 layer stops after 3 stages instead
        of 4 in parallel mode, 72.68% of the weights pruned either way and test accuracy
        87.62% against 87.63%; 0.04 before. Measured and not kept: a secant step on the
        radius from the last two stages' misfits, 0.4 points sparser but a fourth stage on
        the 785 -> 500 layer, 25% slower; a first radius of 1.3 eps (0.2 points less sparse),
        8 (N + 1) ADMM rows (a fourth stage there) and 40 iterations a stage (0.4 points
        less sparse), none of them faster on 784-500-200-10).
    refit_rounds: Newton rounds of each stage's refit (each costs a Gram matrix per column;
        one round already gives most of the drop, and a feasible one-round refit is feasible
        after more rounds).
    final_rounds: more Newton rounds on the answer chosen (a lower misfit, the same zeros).
        Off: on the bench MLP at 20,000 samples (Intel Xeon, 2 cores) one round took the
        parallel prune from 31.6 s to 37.1 s for the same weights kept and 87.62% test
        accuracy against 87.63% (cascade: 88.57% against 88.52%, 66.15% pruned against
        66.37%); earlier (AMD) one round gave 0.942 eps and 88.01%, two 0.937 eps and 88.02%.
    gram_dtype: dtype of the refit's Gram matrices (float32 on large layers).
    cap: the largest radius as a fraction of the zero weights' misfit.
    tighten_below, tighten_rounds: an answer whose misfit is under ``tighten_below`` eps drops
        its least weights (|w| times its input's norm) and is refitted, the count bisected
        over ``tighten_rounds`` refits (``_tighten``).
    rows_per_input, min_rows: the stages' ADMM runs on a random subset of
        max(min_rows, rows_per_input x (N + 1)) samples when the layer has more (``rows``);
        every refit, the column mix and the eps check use all of them.
    doubt: when the last stage missed eps and the answer chosen (an earlier stage's, or a
        column mix) holds more than this many times the weights of the stages' sparsest refit,
        ADMM at eps also runs (the fallback's stages) and the feasible answer with fewer
        weights is kept (``_second_opinion``). (In 26 of the 188 staged layers of issue 16's
        experiment reports the stages ended so, mostly a first short stage that met eps with
        1.3-4.7 x the weights of the later ones; on the bench MLP's cascade 500 -> 200 layer,
        whose fifth stage met eps, a test without the miss condition cost 13 s of 48 s and
        kept the stages' answer.) On NN3-60K after the
        default fine-tune, its 1000 -> 300 layer in cascade: a first short stage met eps with
        142,224 weights, the next three missed it with 34,388-46,243, and the column mix kept
        48,039 where ADMM at eps, repaired, keeps about 27,000 at a slightly larger eps; the
        allocation's search stalled on that step (88.1% against 90.8% pruned). 0 turns it off.
    probe_min, probe_every, probe_miss: the first stage's refit on one in ``probe_every``
        columns first, on layers of ``probe_min`` live columns or more; the stage stops
        there when that estimate misses eps by more than ``probe_miss`` (``_first_refit``).
    """

    inflation: float = 1.5
    stage_iters: int = 50
    stages: int = 4
    extra_stages: int = 2
    aim: float = 0.97
    settle: float = 0.05
    doubt: float = 1.25
    gram_dtype: str = "float32"
    refit_rounds: int = 1
    final_rounds: int = 0
    cap: float = 0.97
    tighten_below: float = 0.9
    tighten_rounds: int = 6
    rows_per_input: int = 10
    min_rows: int = 4000
    probe_min: int = 100
    probe_every: int = 3
    probe_miss: float = 1.1


def rows(shape: tuple[int, int], stage: StageSettings) -> np.ndarray | None:
    """The samples the stages' ADMM runs on (sorted; a fixed seed, so a run repeats), or None
    for all of them. ADMM only chooses the support here (Theorem 3: an s-sparse column is fixed
    by O(s log N) samples); the refits meet eps on every sample. On the 784 -> 500 layer of the
    bench MLP at 20,000 samples, ADMM on 7,850 rows gave 118,302 weights at 0.965 eps in 53 s
    against 116,166 at 0.98 eps in 93 s on all; on its 500 -> 200 layer, 5,010 rows gave
    20,516 weights in 10 s against 21,022 in 21 s."""
    P, Na = shape
    keep = max(int(stage.min_rows), int(stage.rows_per_input) * Na)
    if P <= keep:
        return None
    return np.sort(np.random.default_rng(0).choice(P, keep, replace=False))


def _nonzeros(Wa: np.ndarray, n_in: int) -> int:
    return int(np.count_nonzero(Wa[:, :n_in]))


def _refit(run: _LayerSolve, stage: StageSettings, WT: np.ndarray, rounds: int,
           cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The live columns' weights ``WT`` (W^T, bias last) refitted on their support over every
    sample: (the layer's weights, thresholded, and each live column's squared misfit, measured
    on every sample for the weights returned: the columns the zero threshold changed are
    measured again). ``cols``: only these live columns (positions in ``run.idx``) are
    refitted; the others keep ``WT``'s weights and an infinite misfit."""
    dt = np.dtype(stage.gram_dtype)
    if run.gram_source is None or run.gram_source.dtype != dt:  # the Gram matrices' copy of X
        run.gram_source = GramSource(run.program.Xa.astype(dt, copy=False))
    if run.targets is None:  # the refits' targets and floors, once per layer
        run.targets = Targets(run.Yl, run.Vl, run.actl)
    if cols is None:
        sel, Yl, Vl, actl, tg = np.arange(WT.shape[1]), run.Yl, run.Vl, run.actl, run.targets
    else:  # (the refit makes these columns' targets itself)
        sel, Yl, Vl, actl, tg = cols, run.Yl[:, cols], run.Vl[:, cols], run.actl[:, cols], None
    WF, fs = refit_support(run.program.Xa, Yl, Vl, actl, WT[:, sel], run.program.bias,
                           rounds=rounds, gram_dtype=dt, source=run.gram_source, targets=tg)
    if cols is None:
        W = run.assemble(WF)
    else:  # the other columns keep WT's weights
        Wall = WT.copy()
        Wall[:, sel] = WF
        W = run.assemble(Wall)
    n_in, rows = run.n_in, run.idx[sel]
    cut = np.flatnonzero(np.any((WF[:n_in] != 0) & (W[rows, :n_in].T == 0), axis=0))
    if cut.size:
        Z = run.program.Xa @ W[rows[cut]].T
        fs[cut] = column_misfit(Z, Yl[:, cut], Vl[:, cut], actl[:, cut])
    f = np.full(WT.shape[1], np.inf)
    f[sel] = fs
    return W, f


def _first_refit(run: _LayerSolve, stage: StageSettings, WT: np.ndarray, rest2: float
                 ) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """The first stage's refit, which mostly only moves the radius (its radius is a guess:
    on the bench MLP's 785 -> 500 layer it missed eps by 19%, and 27 of the 500 columns of the
    answer came from it): on a layer of at least ``stage.probe_min`` live columns one in
    ``stage.probe_every`` is refitted first; when their misfit, scaled to the layer, misses
    eps by more than ``stage.probe_miss`` the stage stops there (the others keep an infinite
    misfit, out of the column mix), else the other columns are refitted too (then the same
    as one refit of all). Returns (weights, f per column, misfit, estimated)."""
    L = WT.shape[1]
    if L < stage.probe_min:
        W, f = _refit(run, stage, WT, stage.refit_rounds)
        return W, f, float(np.sqrt(f.sum() + rest2)), False
    probe = np.arange(0, L, stage.probe_every)
    W, f = _refit(run, stage, WT, stage.refit_rounds, cols=probe)
    est = float(np.sqrt(f[probe].sum() * L / probe.size + rest2))
    if est > stage.probe_miss * run.eps:
        return W, f, est, True
    others = np.setdiff1d(np.arange(L), probe)
    W2, f2 = _refit(run, stage, WT, stage.refit_rounds, cols=others)
    W[run.idx[others]] = W2[run.idx[others]]
    f[others] = f2[others]
    return W, f, float(np.sqrt(f.sum() + rest2)), False


def _meets(run: _LayerSolve, misfit: float) -> bool:
    """A misfit (the refits' per-column values summed, measured on every sample) within eps,
    with a margin for their rounding against the direct product ``run.ok`` takes."""
    return misfit <= run.eps_ok * (1.0 - 1e-9)


def _zero_weights(run: _LayerSolve) -> tuple[np.ndarray, np.ndarray]:
    """The live columns' W^T with every weight zero and the bias (if any) at its best value,
    and each column's squared misfit there: the l1 program's answer at any radius above
    that misfit."""
    na, n_live = run.program.Xa.shape[1], len(run.idx)
    WT = np.zeros((na, n_live))
    if run.program.bias:
        WT[-1] = best_bias(run.Yl, run.Vl, run.actl)
    return WT, column_misfit(np.broadcast_to(WT[-1], run.Yl.shape), run.Yl, run.Vl, run.actl)


def best_bias(Y: np.ndarray, V: np.ndarray, act: np.ndarray, rounds: int = 100) -> np.ndarray:
    """Per column the b minimising f(b) = sum over the active samples of (b - y)^2 plus over
    the others of (b - v)_+^2, by Newton's method on f' (convex, piecewise linear and
    increasing): from the right of its zero every step lands at or right of it, and the set
    of samples with b over the bound only shrinks, so the steps end after finitely many. All
    columns at once; a column with f' = 0 on a whole interval keeps its left end's value."""
    T = np.where(act, Y, V)
    b = np.max(T, axis=0) if T.size else np.zeros(Y.shape[1])
    for _ in range(rounds):
        R = act | (b[None, :] > V)
        n = np.count_nonzero(R, axis=0)
        nxt = np.where(n > 0, np.where(R, T, 0.0).sum(axis=0) / np.maximum(n, 1), b)
        if np.array_equal(nxt, b) or np.all(nxt >= b - 1e-12 * (1.0 + np.abs(b))):
            return np.minimum(nxt, b)
        b = nxt
    return b


def run_stages(run: _LayerSolve, stage: StageSettings, progress: Progress) -> None:
    """The stages on a started ``run`` (``run.start``); offers the sparsest feasible refit
    (fewest nonzeros, then the lowest misfit) to ``run`` and records every stage in its
    history."""
    solver, program = run.solver, run.program
    base = solver.radius
    live = run.idx
    rest = np.setdiff1d(np.arange(len(run.Wa)), live)
    rest2 = program.constraint_value(run.Wa[rest], columns=rest) ** 2 if rest.size else 0.0
    WZ, f0 = _zero_weights(run)
    if np.sqrt(f0.sum() + rest2) <= run.eps_ok:
        Wz = run.assemble(WZ)
        run.history.append({"stage": "zero weights", "misfit": float(np.sqrt(f0.sum()
                                                                          + rest2)) / run.eps})
        run.offer(_Answer(Wz, False, _l1(Wz, run.n_in), "refit"))
        return
    kmax = stage.cap * float(np.sqrt(f0.sum())) / run.eps
    infl = min(float(stage.inflation), kmax)
    best: tuple[int, float, np.ndarray] | None = None  # (nonzeros, misfit, weights)
    seen: list[tuple[np.ndarray, np.ndarray]] = []  # every stage's (refitted weights, f)
    lo, hi = 0.0, float("inf")  # the largest feasible and the smallest infeasible radius
    prev_nnz: int | None = None
    for k in range(stage.stages + stage.extra_stages):
        if k >= stage.stages and (best is not None or _mix_budget(run, seen, rest2) >= 0):
            break  # the extra stages only for a layer that would otherwise fall back
        # the progress total: the stages, and the extra stages once they run
        total = (stage.stages + (stage.extra_stages if k >= stage.stages else 0)) \
            * stage.stage_iters
        t0 = time.perf_counter()
        solver.radius = base * infl
        solver.run(stage.stage_iters, *run.tol,
                   lambda _w, i, _n, d=k * stage.stage_iters, t=total: progress(
                       "admm stages", d + i, t))
        WT, _ = solver.result()
        Wadmm = run.assemble(WT)
        t1 = time.perf_counter()
        if k == 0:
            Wr, f, misfit, estimated = _first_refit(run, stage, Wadmm[live].T, rest2)
        else:
            Wr, f = _refit(run, stage, Wadmm[live].T, stage.refit_rounds)
            misfit, estimated = float(np.sqrt(f.sum() + rest2)), False
        feasible = not estimated and _meets(run, misfit)
        nnz = _nonzeros(Wr, run.n_in)
        seen.append((Wr, f))
        run.history.append({"stage": "admm+refit", "k": k + 1, "radius": infl,
                            "iterations": solver.iterations, "nonzeros": nnz,
                            "refit_misfit": misfit / run.eps, "feasible": feasible,
                            "estimated": estimated,
                            "admm_seconds": round(t1 - t0, 3),
                            "refit_seconds": round(time.perf_counter() - t1, 3)})
        if feasible and (best is None or (nnz, misfit) < best[:2]):
            best = (nnz, misfit, Wr)
        if feasible:
            lo = max(lo, infl)
        else:
            hi = min(hi, infl)
        nxt = infl * float(np.clip(stage.aim * run.eps / max(misfit, 1e-300), 0.5, 2.0))
        nxt = min(nxt, kmax)
        if not lo < nxt < hi:  # the radii tried bracket the answer: bisect (geometrically)
            nxt = float(np.sqrt(lo * hi)) if lo > 0 and np.isfinite(hi) else nxt
        # settled: a feasible refit, a radius that stays, and a support that has stopped
        # thinning (ADMM stopped early: its support still moves over the first stages)
        still = prev_nnz is not None and abs(nnz - prev_nnz) <= stage.settle * prev_nnz
        if best is not None and abs(nxt / infl - 1.0) < stage.settle and still:
            break
        prev_nnz = nnz
        infl = nxt
    solver.radius = base
    best = _tighten(run, stage, _mix_columns(run, seen, rest2, best), rest2)
    if best is not None:
        Wa, certified, l1 = _final(run, stage, best, rest2)
        if run.ok(Wa):  # measured directly, once per layer
            run.offer(_Answer(Wa, certified, l1, "refit"))
        else:
            run.history.append({"stage": "check", "why": "the refit missed eps measured"})


def _mix_budget(run: _LayerSolve, seen: list[tuple[np.ndarray, np.ndarray]],
                rest2: float) -> float:
    """eps^2 (less the other columns' misfit) minus the least misfit^2 any choice of one stage
    per column has: negative when no column mix can meet eps."""
    if not seen:
        return -1.0
    least = np.stack([f for _, f in seen]).min(axis=0).sum()
    return float(run.eps_ok ** 2 * (1.0 - 1e-6) - rest2 - least)


def _mix_columns(run: _LayerSolve, seen: list[tuple[np.ndarray, np.ndarray]], rest2: float,
                 best: tuple[int, float, np.ndarray] | None
                 ) -> tuple[int, float, np.ndarray] | None:
    """Each column from the stage that suits it: the refit is column by column, so any choice
    of one stage per column has misfit^2 = the sum of the chosen columns' f (plus the other
    columns'). The Lagrangian choice (per column the least nonzeros + mu f) with the smallest
    mu whose sum meets eps; kept when it meets eps measured and has fewer weights than the best
    single stage. (On NN2-10K's 300 x 300 layer the first, short stage met eps with 48,922
    weights and every later one missed it by 8-21% with 3,762-6,919: the layer kept 54% of its
    weights at eps 0.4817 and 8% at 0.4953.)"""
    if len(seen) < 2:
        return best
    live, n_in = run.idx, run.n_in
    nnz = np.stack([np.count_nonzero(W[live, :n_in], axis=1) for W, _ in seen]).astype(float)
    F = np.stack([f for _, f in seen])
    budget = run.eps_ok ** 2 * (1.0 - 1e-6) - rest2
    cols = np.arange(F.shape[1])
    if F.min(axis=0).sum() > budget:  # no column mix meets eps (``_mix_budget`` < 0)
        return best

    def pick(mu: float) -> np.ndarray:
        return np.argmin(nnz + mu * F, axis=0)

    # (a probed first stage has an infinite misfit on its unrefitted columns: never picked)
    scale = max(float(nnz.mean()), 1.0) / max(float(F[np.isfinite(F)].mean()), 1e-300)
    lo, hi = -30.0, 30.0  # log of mu / scale: hi meets the budget, lo need not
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if F[pick(scale * np.exp(mid)), cols].sum() <= budget:
            hi = mid
        else:
            lo = mid
    choice = pick(scale * np.exp(hi))
    W = seen[0][0].copy()
    for k in range(len(seen)):
        W[live[choice == k]] = seen[k][0][live[choice == k]]
    total = int(nnz[choice, cols].sum())
    misfit = float(np.sqrt(F[choice, cols].sum() + rest2))
    feasible = _meets(run, misfit)
    run.history.append({"stage": "column mix", "nonzeros": total, "feasible": feasible,
                        "columns_per_stage": np.bincount(choice, minlength=len(seen)).tolist()})
    if feasible and (best is None or total < best[0]):
        return total, misfit, W
    return best


def _tighten(run: _LayerSolve, stage: StageSettings,
             best: tuple[int, float, np.ndarray] | None, rest2: float
             ) -> tuple[int, float, np.ndarray] | None:
    """An answer far under eps loses its least weights (|w| times the norm of its input over
    the samples), refitted on what is left; the fraction dropped is bisected so that the
    refit still meets eps. Near the zero weights' misfit r0 the stages' ADMM, stopped after a
    few dozen iterations, gives the same support at every eps from about 0.65 r0 to r0
    (CNN-60K's cascade prune: 91.4% pruned at eps 0.554 and at 0.798, every weight at 0.848;
    LeNet300's 784 -> 300 layer at 0.61 eps and 0.78 eps alike)."""
    if best is None or best[1] >= stage.tighten_below * run.eps:
        return best
    live, n_in, W = run.idx, run.n_in, best[2]
    score = np.abs(W[live, :n_in]) * np.linalg.norm(run.program.Xa[:, :n_in], axis=0)
    order = np.sort(score[score > 0])
    if order.size == 0:  # no weight left to drop
        return best
    lo, hi = 0.0, 1.0  # fractions of the kept weights dropped: lo meets eps, hi need not
    for _ in range(stage.tighten_rounds):
        mid = 0.5 * (lo + hi)
        cut = order[min(int(mid * order.size), order.size - 1)]
        WT = np.where(score > cut, W[live, :n_in], 0.0)
        WT = np.hstack([WT, W[live, n_in:]]).T
        Wr, f = _refit(run, stage, WT, stage.refit_rounds)
        nnz, misfit = _nonzeros(Wr, n_in), float(np.sqrt(f.sum() + rest2))
        if _meets(run, misfit) and nnz < best[0]:
            lo, best = mid, (nnz, misfit, Wr)
        else:
            hi = mid
    run.history.append({"stage": "tighten", "dropped": lo, "nonzeros": best[0],
                        "misfit": best[1] / run.eps})
    return best


def _final(run: _LayerSolve, stage: StageSettings, best: tuple[int, float, np.ndarray],
           rest2: float) -> tuple[np.ndarray, bool, float]:
    """The chosen refit after ``stage.final_rounds`` more Newton rounds (kept only when it
    still meets eps with no more weights), as (weights, certified, l1) for an ``_Answer``."""
    Wa = best[2]
    if stage.final_rounds > 0:
        t0 = time.perf_counter()
        # from the thresholded weights: the stage's refit below the zero threshold stays zero
        Wr, f = _refit(run, stage, Wa[run.idx].T, stage.final_rounds)
        kept = _meets(run, float(np.sqrt(f.sum() + rest2))) and _nonzeros(Wr, run.n_in) <= best[0]
        Wa = Wr if kept else Wa
        run.history.append({"stage": "final refit", "rounds": stage.final_rounds,
                            "kept": kept, "seconds": round(time.perf_counter() - t0, 3)})
    return Wa, False, _l1(Wa, run.n_in)


def solve_staged(program, settings: SolverSettings, progress: Progress = no_progress,
                 admm_settings: ADMMSettings | None = None,
                 stage: StageSettings | None = None) -> ADMMSolution:
    """The staged fast path for a relu or no-activation layer with an eps (see the module
    docstring); ADMM in float32 on the CPU. Falls back to ``solve_layer``'s own stages
    (ADMM at eps to its residual stop, the repair) when no stage's refit meets eps."""
    t0 = time.perf_counter()
    opts = admm_settings or ADMMSettings(polish=False)
    stage = stage or StageSettings()
    run = _LayerSolve(program, settings, opts, progress)
    if run.live:
        staged = run.eps is not None and run.eps > 0
        sub = rows(program.Xa.shape, stage) if staged else None
        run.start("cpu", "float32", sub)
        if staged:
            run_stages(run, stage, progress)
        staged_best = run.best
        why = "no stage's refit met eps" if staged_best is None else _doubtful(run, stage)
        if why:
            run.history.append({"stage": "fallback", "why": why})
            if sub is not None:  # ADMM at eps on every sample, from the original weights
                run.start("cpu", "float32")
            run.best = None
            run.attempt(0, last=True)
            if staged_best is not None:
                _second_opinion(run, staged_best)
        run.choose()
    return run.solution(t0)


def _weights(run: _LayerSolve, answer: _Answer) -> int:
    return int(np.count_nonzero(answer.Wa[run.idx, : run.n_in]))


def _doubtful(run: _LayerSolve, stage: StageSettings) -> str | None:
    """Why the stages' answer deserves ADMM at eps beside it (``StageSettings.doubt``), or
    None."""
    stages = [h for h in run.history if h.get("stage") == "admm+refit"]
    if stage.doubt <= 0 or not stages or stages[-1]["feasible"] or run.best is None:
        return None
    kept, least = _weights(run, run.best), min(h["nonzeros"] for h in stages)
    if kept <= stage.doubt * least:
        return None
    return (f"the stages ended on a miss and their answer holds {kept} weights, more than "
            f"{stage.doubt:g} x their sparsest refit's {least}")


def _second_opinion(run: _LayerSolve, staged: _Answer) -> None:
    """Of the stages' answer and the fallback's (when it found a feasible one), the one with
    fewer weights (the stages' on a tie); both meet eps."""
    admm = run.best
    keep_admm = admm is not None and _weights(run, admm) < _weights(run, staged)
    run.history.append({"stage": "second opinion", "stages": _weights(run, staged),
                        "admm": None if admm is None else _weights(run, admm),
                        "kept": "admm" if keep_admm else "stages"})
    if not keep_admm:
        run.best = staged

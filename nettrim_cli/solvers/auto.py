"""The default layer solver (``--solver auto``): program (4)/(6) -- or eq. 11 at a fixed
lambda -- for the whole layer, chosen by the layer's size.

- A small layer (P * (N + 1) * M at most ``SMALL`` and at most ``SMALL_SAMPLES`` samples): the
  whole-layer ADMM in float64 with its active-set polish, which certifies the KKT conditions
  of (4) -- the answer the OSQP column reference (``--solver osqp``, eq. 14 with a lambda
  search) reaches, at a fraction of the time.
- A large layer at a fixed lambda (``--lambda``, eq. 11: no eps for a refit to aim at):
  float32 ADMM to a tight tolerance, then the polish column by column
  (``lambda_layer_settings``).
- A large layer: the staged fast path (``solvers/admm/staged.py``): short float32 ADMM stages
  (one factorisation of the (N+1) x (N+1) Gram matrix per layer) on the l1 program at an
  inflated radius k eps, each followed by the exact support refit over all samples
  (``solvers/admm/refit.py``: the weights with ADMM's zeros that minimise the eq. 3 misfit);
  k follows the refit's misfit, and the sparsest refit that meets eps when measured (each
  column taken from the stage that suits it) is the answer. It is not (4)'s l1 optimum --
  the relaxed lasso: fewer weights than the optimum at the same eps and a lower discrepancy
  (tests/test_auto_solver.py) -- and its columns are
  ``solved_inaccurate`` (no certificate). When no stage meets eps, ADMM goes on at eps to its
  residual stop (``large_layer_settings``) and the older repair follows.

When neither meets a layer's eps the layer is mixed with its original weights (``MIXED``, a
warning line) or, when even those miss eps, reported ``epsilon_not_reached``: never silently.

Subsampling the rows (Theorem 3: an s-sparse column is fixed by O(s log N) samples): the
stages' ADMM runs on max(4,000, 10 (N + 1)) random samples when the layer has more, and only
chooses the support there; the refits, the column mix and the eps check use every sample
(``staged.rows``). On the bench MLP at 20,000 samples (784 -> 500: 7,850 rows) the support
kept 118,302 weights against 116,166 with ADMM on all rows, in about half the time. (ADMM on
4,000 rows with the refit on them too missed eps on all samples by 70%: the refit must see
every sample.)
"""

from __future__ import annotations

from nettrim_cli.execution.threads import fixed_threads, layer_threads
from nettrim_cli.program import LayerProgram
from nettrim_cli.solvers.admm import ADMMSettings, ADMMSolution, solve_layer
from nettrim_cli.solvers.admm.staged import solve_staged
from nettrim_cli.solvers.base import Capabilities, Progress, SolverSettings, no_progress

# P * (N + 1) * M at or below this: one thread (more only add overhead, and on a busy machine
# their spinning costs far more than the arithmetic: the 200 x 200 demo layer ran 40 ms an
# ADMM iteration with the default threads on 2 contended cores)
ONE_THREAD = 5.0e7
# P * (N + 1) * M at or below this: the certified float64 path. Its polish took 98 s on the
# 200 x 200 demo layer with 200 samples (8e6) where the fast path took 4 s, so only the
# smallest layers take it (a 16 -> 12 layer with 48 samples is 1e4)
SMALL = 2.0e6
# ... and at most this many samples: a 3x3 conv with 9 inputs and 8 channels on its 20,000
# sampled patches is under SMALL, but float64 ADMM ran there into its 10,000-iteration cap
# (165 s, load ~6 on 2 cores) before its polish
SMALL_SAMPLES = 2000


def large_layer_settings() -> ADMMSettings:
    """ADMM for a large layer: float32-friendly tolerances (relative 1e-3, OSQP's default),
    no polish (each round costs seconds there and rarely certifies), stopped on its residuals
    (the fast preset's rule). The support-driven stop with a growing rho (``support_stop=1``,
    ``rho_growth=1.2``) was measured and is off: on the 784-500-200-10 bench MLP with 2,000
    samples (parallel, eps 0.05) it made the prune 1.39x slower than the fast preset at the
    same sparsity and accuracy, its first layer's settled support missing eps after the refit
    and ADMM continuing from there (with it on, a settled answer the refit cannot bring
    onto eps goes back to ADMM until its residual stop before any mix with the original
    weights). A check with at most 0.2% of the weights flipping counts as a settled support
    (on the 784 -> 500 bench layer 80-800 of the 392,000 weights flipped every 5 iterations
    long after the density had settled: float32 flicker at the threshold)."""
    return ADMMSettings(eps_abs=1e-6, eps_rel=1e-3, max_iter=2000, polish=False, retry=True,
                        support_stop=0.0, rho_growth=1.0, min_iter=100, stable_checks=6,
                        support_tol=2e-3, adapt_every=25)


def lambda_layer_settings() -> ADMMSettings:
    """A large layer at a fixed lambda (eq. 11; no eps for the staged path's refits to aim at):
    float32 ADMM to relative residuals 2e-5, then the active-set polish for about twice ADMM's
    time. The columns are independent at a fixed lambda, so each column is the better (in
    eq. 14's objective) of the polish's best and ADMM's answer with its bias lowered onto the
    inactive inequalities (``layer._LayerSolve.shift_bias``), and the polish certifies
    column by column. On the 785 x 500 bench layer (lambda 0.2, 2,000 samples) float32 ADMM
    alone took 25 s to 2e-5 and came within 2.4e-4 of OSQP's objective on 11 sampled columns
    (1e-4: 14 s, within 5.5e-3; 1e-3: 5 s, 3.3e-2); float64 to 1e-5 took 48 s."""
    return ADMMSettings(eps_abs=1e-7, eps_rel=2e-5, max_iter=5000, polish=True, retry=False,
                        stable_checks=6, support_tol=2e-3, polish_time_factor=2.0)


def small_layer_settings() -> ADMMSettings:
    """ADMM for a small layer: the solver's defaults (tight tolerances, polish, retry)."""
    return ADMMSettings()


def _size(program: LayerProgram) -> int:
    """P * (N + 1) * M: what SMALL and ONE_THREAD are measured against."""
    return program.n_samples * (program.n_in + 1) * program.n_out


class AutoSolver:
    """The default solver behind the solver protocol (see the module docstring)."""

    name = "auto"
    capabilities = Capabilities(journal=False, devices=("cpu",), granularity="layer")

    def __init__(self, small: float = SMALL) -> None:
        self.small = small

    def plan(self, program: LayerProgram) -> tuple[str, str, ADMMSettings]:
        """(path, torch dtype, ADMM settings) for ``program``: the certified path for a
        small layer, the fast one for a large layer (the lambda path at a fixed lambda). A
        preset's ``[admm]`` section is for ``--solver admm`` and is not read here."""
        size = _size(program)
        if size <= self.small and program.n_samples <= SMALL_SAMPLES:
            return "certified", "float64", small_layer_settings()
        if program.lam is not None:
            return "lambda", "float32", lambda_layer_settings()
        return "fast", "float32", large_layer_settings()

    @staticmethod
    def threads(program: LayerProgram, settings: SolverSettings) -> int:
        """Torch/BLAS threads for ``program``'s solve: one up to ONE_THREAD, else the run's."""
        return 1 if _size(program) <= ONE_THREAD else layer_threads(settings)

    def solve(self, program: LayerProgram, settings: SolverSettings,
              progress: Progress = no_progress, journal=None) -> ADMMSolution:  # noqa: ARG002
        path, dtype, opts = self.plan(program)
        with fixed_threads(self.threads(program, settings)):
            if opts.polish:
                sol = solve_layer(program, settings, progress, device="cpu", dtype=dtype,
                                  admm_settings=opts)
            else:
                sol = solve_staged(program, settings, progress, admm_settings=opts)
        sol.history.insert(0, {"stage": "auto", "path": path, "dtype": dtype})
        return sol

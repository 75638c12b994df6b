"""Settings, result record and column statuses of the whole-layer ADMM solver."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nettrim_cli.solvers.base import LayerSolution


class ADMMStatus(StrEnum):
    """A live column's status in the solution record; the values are the strings the report
    prints (and tests compare with)."""

    SOLVED = "solved"  # the KKT conditions of (4) hold, certified by the polish
    INACCURATE = "solved_inaccurate"  # feasible (in C_eps of eq. 3) but not certified
    MIXED = "mixed_with_original"  # mixed with the original weights until eps holds
    GROWN = "grown_support"  # ADMM's support grown (admm/grow.py) until a refit meets eps
    NOT_REACHED = "epsilon_not_reached"  # not even the original weights meet eps
    DEAD = "dead_neuron"  # a neuron that never fires, settled before ADMM


SOLVED = ADMMStatus.SOLVED
INACCURATE = ADMMStatus.INACCURATE
MIXED = ADMMStatus.MIXED
GROWN = ADMMStatus.GROWN
NOT_REACHED = ADMMStatus.NOT_REACHED
DEAD = ADMMStatus.DEAD


@dataclass
class ADMMSettings:
    """Settings of the whole-layer ADMM.

    rho: initial penalty (None: ||l1 weights|| / ||warm start||, in scaled units).
    ratio: weight r of the weight block against the sample block; the factorised matrix is
        A^T A + r I with A the equilibrated X_a. Fixed during a run. A smaller r than 1 lets
        the sample block (the constraint) drive the iterates: with configs/fast.toml on the
        NN2-10K layers of ``make bench``, r = 0.3 stopped after 630 iterations (300 -> 300)
        and 605 (784 -> 300) where r = 1 needed 1060 on the first and r = 0.03 760 and 830
        (the ratio table in benchmarks/results.md).
    alpha: over-relaxation in (0, 2).
    eps_abs, eps_rel: stopping tolerances on the primal and dual residuals (scaled units).
    stable_checks, support_tol: ADMM also waits until the support has settled for this many
        checks: at most ``support_tol`` of the weights (0 on a small layer) changing between
        two checks (float32 iterates flicker on coordinates at the threshold).
    adaptive_rho: rebalance rho every ``adapt_every`` iterations when the normalised residuals
        are more than ``adapt_tol`` apart.
    polish: solve the KKT system of (4) on ADMM's support and bound set (active-set rounds).
    polish_blas_threads: BLAS threads during the polish (None: leave as is).
    retry: when the polish cannot certify the answer, resume ADMM once (in float64) with
        tolerances divided by ``retry_factor`` and polish again.
    """

    rho: float | None = None
    ratio: float = 0.3
    alpha: float = 1.6
    max_iter: int = 10000
    eps_abs: float = 1e-8
    eps_rel: float = 1e-7
    stable_checks: int = 10
    support_tol: float = 1e-4
    check_every: int = 5
    adaptive_rho: bool = True
    adapt_every: int = 25
    adapt_tol: float = 5.0
    polish: bool = True
    polish_rounds: int = 50
    # the polish stops starting new rounds after max(polish_min_seconds, polish_time_factor
    # * ADMM's seconds): on large layers a round costs seconds and may never certify
    polish_time_factor: float = 1.0
    polish_min_seconds: float = 5.0
    polish_blas_threads: int | None = 1
    retry: bool = True
    retry_factor: float = 100.0
    # The support-driven stop (ALPS-style, Meng et al. 2024): from iteration ``min_iter`` on,
    # rho grows by ``rho_growth`` every ``adapt_every`` iterations (instead of residual
    # balancing), and ADMM stops as soon as the support has settled (``stable_checks``) with
    # the primal residual within ``support_stop`` times its tolerance; the support refit then
    # pulls the answer onto eps. 0 / 1.0: off (stop on the residuals only).
    support_stop: float = 0.0
    rho_growth: float = 1.0
    min_iter: int = 50


@dataclass
class ADMMSolution(LayerSolution):
    """LayerSolution of the ADMM solver; ``summary()`` names it ``admm``."""

    admm_converged: bool = False
    polish_converged: bool = False

    def summary(self) -> dict:
        return {**self.common_summary("admm"), "polish_rounds": self.passes,
                "admm_converged": self.admm_converged,
                "polish_converged": self.polish_converged, "history": self.history}

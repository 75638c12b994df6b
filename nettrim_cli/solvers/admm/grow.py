"""The last resorts of the whole-layer ADMM solver (``layer._LayerSolve``), when no sparse
answer it found meets eps, not even after the repair's refits: ADMM's support grown until
its refit meets eps (where the misfit falls fastest, else by the original weights), and
failing that ADMM's answer mixed with the (feasible) original weights."""

from __future__ import annotations

import time

import numpy as np

from nettrim_cli.solvers.admm.refit import grow_by_gradient
from nettrim_cli.solvers.admm.repair import _bisect, _growth_order, _support_refit, _threshold
from nettrim_cli.solvers.admm.settings import GROWN, MIXED, ADMMStatus


class _Growth:
    """Mixed into ``layer._LayerSolve`` (its arrays, ``ok``, ``assemble``, ``history``,
    ``failed``, ``live`` and the ADMM run ``solver``)."""

    def grow_support(self) -> ADMMStatus | None:
        """Before mixing with the original weights (which keeps every weight): ADMM's support
        grown where the misfit falls fastest (``refit.grow_by_gradient``), else by the original
        weights (``grow_original``). None when neither meets eps short of every weight."""
        if self.target is None:  # a fixed lambda: no misfit goal to grow towards
            return self.grow_original()
        tg = time.perf_counter()
        rest = np.setdiff1d(np.arange(len(self.Wa)), self.idx)
        goal = self.target ** 2 - self.program.constraint_value(self.Wa[rest], columns=rest) ** 2
        grown = grow_by_gradient(self.Xa, self.Yl, self.Vl, self.actl, self.solver.result()[0],
                                 self.program.bias, self.n_in, goal,
                                 lambda W: self.ok(self.assemble(W)),
                                 source=self.gram_source, targets=self.targets)
        self.history.append({"stage": "grow support", "method": "gradient",
                             "added": None if grown is None else grown[1],
                             "ok": grown is not None,
                             "seconds": round(time.perf_counter() - tg, 4)})
        if grown is None:
            return self.grow_original()
        return self.grown(self.assemble(grown[0]), "where the misfit fell fastest")

    def grow_original(self, steps: int = 7) -> ADMMStatus | None:
        """ADMM's support grown by the original weights of largest |w| ||x_j||
        (``_growth_order``), bisecting
        ``steps`` times on the number added for the smallest growth that meets eps (every
        original weight, the original layer, does). A grown support takes the original
        weights on it, else their refit there (``_support_refit``; it holds only the inactive
        samples a fit pushes over their bound, so it can miss where the original weights on
        the support do not). None when no growth short of every weight meets eps."""
        tg = time.perf_counter()
        WT = self.solver.result()[0]
        W0T = np.ascontiguousarray(self.Wa0[self.idx].T)  # (flat indices: row-major)
        order = _growth_order(self.Xa, WT, W0T, self.n_in)
        n_admm = int(np.count_nonzero(WT[: self.n_in]))
        lo, hi = n_admm, len(order)  # ADMM's support missed eps; every weight meets it
        best = None
        for _ in range(steps):
            if hi - lo <= 1:
                break
            k = (lo + hi) // 2
            start = np.zeros(W0T.shape)
            start.reshape(-1)[order[:k]] = W0T.reshape(-1)[order[:k]]  # weight rows first
            start[self.n_in:] = W0T[self.n_in:]  # the bias row stays free
            W = self.assemble(start)  # the original weights there, then their refit
            if not self.ok(W):
                W = self.assemble(_support_refit(self.Xa, self.Yl, self.Vl, self.actl, start,
                                                 self.program.bias, None, 10, 2))
            if self.ok(W):
                hi, best = k, W
            else:
                lo = k
        self.history.append({"stage": "grow support", "method": "original weights",
                             "added": None if best is None else hi - n_admm,
                             "ok": best is not None,
                             "seconds": round(time.perf_counter() - tg, 4)})
        return None if best is None else self.grown(best, "by original weights")

    def grown(self, W: np.ndarray, how: str) -> ADMMStatus:
        self.Wa = W
        self.history.append({"stage": "chosen", "source": GROWN})
        for m in self.live:
            self.failed.append({"column": m, "status": GROWN,
                                "action": f"ADMM's support grown {how} until its refit met "
                                          "eps"})
        return GROWN

    def mix_with_original(self) -> ADMMStatus:
        """The last resort: pull ADMM's answer towards the (feasible) original weights."""
        Wadmm = self.assemble(self.solver.result()[0])
        Wa0, n_in, thr = self.Wa0, self.n_in, self.thr
        s, Wa = _bisect(lambda s: _threshold(s * Wadmm + (1 - s) * Wa0, n_in, thr), self.ok,
                        0.0, 1.0)
        if Wa is None:  # thresholding the original weights already breaks eps
            s, Wa = 0.0, Wa0.copy()
        self.Wa = Wa
        self.history.append({"stage": "chosen", "source": MIXED, "admm_weight": s})
        for m in self.live:
            self.failed.append({"column": m, "status": MIXED,
                                "action": f"mixed with the original weights ({s:.3g} ADMM)"})
        return MIXED


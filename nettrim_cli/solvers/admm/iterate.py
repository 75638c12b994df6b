"""ADMM in graph form for program (4)/(6) (or eq. 11 at a fixed lambda), all columns at once.

The columns of X_a are equilibrated (A = X_a E, unit-norm columns) and the data scaled by
one scalar s (unit rms of Y on Omega); the variable is x = E^{-1} W^T / s and z = A x
(= Z / s). Each iteration

    x_half = soft-threshold(x - u_x, e / (rho r))  (the l1 term; bias untouched)
    z_half = Pi_C(z - u_z)                         (ball on the active part, clamp on the rest)
    (x, z) = projection onto {z = A x} of the over-relaxed half step plus the duals
             (weighted by r on x: A^T A + r I is factorised once per layer, by Cholesky,
             and its inverse applied as one matmul for all columns)
    u     += (over-relaxed half step) - (x, z)

rho is adapted by residual balancing. In graph form it only rescales the thresholds and the
scaled duals, so the factorisation (which depends on the block weight r only) is kept. ADMM
stops on primal and dual residuals plus a support that has stopped changing.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from nettrim_cli.solvers.admm.settings import ADMMSettings
from nettrim_cli.solvers.base import Progress, no_progress


class _ADMM:
    """Graph-form ADMM for the live columns of a layer; ``run`` can be called again to resume."""

    def __init__(self, Xa: np.ndarray, Y: np.ndarray, V: np.ndarray, act: np.ndarray,
                 W0T: np.ndarray, l1mask: np.ndarray, eps: float | None, lam: float | None,
                 opts: ADMMSettings, device: str, dtype: str) -> None:
        self.opts = opts
        self.dev = torch.device(device)
        self.dt = getattr(torch, dtype)
        L = Y.shape[1]
        cn = np.linalg.norm(Xa, axis=0)
        cn[cn == 0] = 1.0
        self.e = 1.0 / cn
        n_act = int(act.sum())
        s = float(np.linalg.norm(Y[act]) / np.sqrt(n_act)) if n_act else 0.0
        if not np.isfinite(s) or s <= 0:
            top = float(np.max(np.abs(Y))) if Y.size else 0.0
            s = top if top > 0 else 1.0
        self.s = s
        self.A = self._t(Xa * self.e[None, :])
        self.Y, self.V = self._t(Y / s), self._t(V / s)
        self.act = torch.as_tensor(act, device=self.dev)
        self.actf = self.act.to(self.dt)
        self.Vm = torch.where(self.act, torch.inf, self.V)
        # |W_jm| = s e_j |x_jm|; a 1-D mask weighs every column alike (program (4)), a 2-D
        # (N + bias, L) one weighs each entry (the reweighted l1 of Candes et al. 2008)
        l1mask = np.asarray(l1mask, dtype=np.float64)
        self.wl1 = self._t((l1mask * self.e)[:, None] if l1mask.ndim == 1
                           else l1mask * self.e[:, None])
        self.radius = None if eps is None else eps / s
        self.lam = None if lam is None else lam * s  # eq. 11 divided by s, in scaled units
        self.r = float(opts.ratio)
        self.Kinv = self._factor()
        self.factorizations = 1
        self.x = self._t(W0T / (self.e[:, None] * s))
        self.z = self.A @ self.x
        self.ux = torch.zeros_like(self.x)
        self.uz = torch.zeros_like(self.z)
        self.xh = self.x
        self.c = self.z.clone()
        wnorm = float(torch.linalg.norm(self.wl1)) * (np.sqrt(L) if l1mask.ndim == 1 else 1.0)
        xnorm = float(torch.linalg.norm(self.x))
        if opts.rho:
            self.rho = float(opts.rho)
        else:
            self.rho = wnorm / xnorm if xnorm > 0 and wnorm > 0 else 1.0
        self.iterations = 0
        self.rho_updates = 0
        self.trace: list[dict] = []
        self.seconds = 0.0
        self.n_dim = float(np.sqrt(self.r * self.x.numel() + self.z.numel()))

    def _factor(self) -> torch.Tensor:
        """(A^T A + r I)^{-1}: one Cholesky per layer, in float64 whatever the iteration dtype
        (cond <= 1 + ||A||^2 / r after the equilibration; a small r makes it large), its
        inverse then turning every x-update into one matmul."""
        A64 = self.A.to(torch.float64)
        K = A64.T @ A64
        K.diagonal().add_(self.r)
        return torch.cholesky_inverse(torch.linalg.cholesky(K)).to(self.dt)

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=self.dt, device=self.dev)

    def _prox_f(self, c: torch.Tensor, rho: float, out: torch.Tensor,
                diff: torch.Tensor) -> torch.Tensor:
        """Pi_C(c) for C of eq. 3 (or the prox of the lambda misfit of eq. 11) into ``out``:
        min(c, V) on the inactive entries, c - k (c - Y) on the active ones, k from the ball
        (or from lambda and rho). ``diff`` is scratch space of c's shape."""
        torch.sub(c, self.Y, out=diff).mul_(self.actf)
        torch.minimum(c, self.Vm, out=out)  # Vm = +inf on the active entries
        if self.radius is not None:
            nrm = float(torch.linalg.vector_norm(diff))
            k = 0.0 if nrm <= self.radius else 1.0 - self.radius / nrm
        else:
            k = 2.0 * self.lam / (rho + 2.0 * self.lam)
        if k:
            out.sub_(diff, alpha=k)
        return out

    def run(self, max_iter: int, eps_abs: float, eps_rel: float,
            progress: Progress = no_progress) -> bool:
        """Up to ``max_iter`` more iterations; True when the stopping rule was met.

        The sample-space arrays (P x L, the bulk of the memory traffic) live in preallocated
        buffers that are swapped rather than reallocated, and the over-relaxed step and the
        dual update share one buffer (t = z_r + u_z, then u_z = t - z)."""
        t0 = time.perf_counter()
        o = self.opts
        # tolerances a float32 (or lower) run can reach; the polish works in float64 anyway
        fin = torch.finfo(self.dt).eps
        eps_abs, eps_rel = max(eps_abs, 10.0 * fin), max(eps_rel, 100.0 * fin)
        A, r, alpha = self.A, self.r, float(o.alpha)
        x, z, ux, uz = self.x, self.z, self.ux, self.uz
        rho = self.rho
        xh, c = self.xh, self.c
        zh, diff = torch.empty_like(z), torch.empty_like(z)
        t, zn = torch.empty_like(z), torch.empty_like(z)
        stable = 0
        prev_supp = None
        converged = False
        rp = rd = ep = ed = float("nan")
        k = 0
        for k in range(1, int(max_iter) + 1):
            # the half step: soft-threshold (the l1 objective of (4)), projection onto C
            cx = x - ux
            xh = torch.sign(cx) * torch.clamp(cx.abs() - self.wl1 / (rho * r), min=0.0)
            torch.sub(z, uz, out=c)
            self._prox_f(c, rho, zh, diff)
            xr = torch.add(x, xh - x, alpha=alpha) if alpha != 1.0 else xh
            # t = z_r + u_z with z_r = alpha zh + (1 - alpha) z
            torch.add(uz, z, alpha=1.0 - alpha, out=t).add_(zh, alpha=alpha)
            # the projection onto {z = A x}: x = (A^T A + r I)^{-1} (r (x_r + u_x) + A^T t)
            xn = self.Kinv @ torch.addmm(xr + ux, A.T, t, beta=r)
            torch.matmul(A, xn, out=zn)
            ux = ux + xr - xn
            t.sub_(zn)  # the new u_z
            check = k % o.check_every == 0 or k == max_iter
            if check:
                rp, rd, ep, ed = self._residuals((xh, zh), (xn, zn), (x, z), (ux, t), rho,
                                                 eps_abs, eps_rel, diff)
                supp = xh != 0
                flips = (int(torch.count_nonzero(supp ^ prev_supp)) if prev_supp is not None
                         else supp.numel())
                stable = stable + 1 if flips <= o.support_tol * supp.numel() else 0
                prev_supp = supp
            x = xn
            z, zn = zn, z
            uz, t = t, uz
            if not check:
                continue
            it = self.iterations + k
            # converged: small residuals and a settled support (or much smaller residuals, for
            # a support that flickers on a degenerate coordinate)
            if rp <= ep and rd <= ed and (stable >= o.stable_checks
                                          or (rp <= 1e-2 * ep and rd <= 1e-2 * ed)):
                converged = True
                break
            late = o.support_stop > 0 and it >= o.min_iter
            if late and stable >= o.stable_checks and rp <= o.support_stop * ep:
                converged = True  # the support has settled: the refit does the rest
                break
            if late and o.rho_growth > 1.0 and it % o.adapt_every == 0:
                ux, rho = self._grow(rho, ux, uz)
            elif o.adaptive_rho and it % o.adapt_every == 0 and rd > 0 and rp > 0:
                ux, rho = self._rebalance((rp / ep) / (rd / ed), rho, ux, uz)
            if it % (o.check_every * 100) == 0:
                self.trace.append({"iter": it, "r_prim": rp, "r_dual": rd, "rho": rho})
            progress("admm iterations", k, int(max_iter))
        self.iterations += k
        self.trace.append({"iter": self.iterations, "r_prim": rp, "r_dual": rd, "eps_prim": ep,
                           "eps_dual": ed, "rho": rho})
        self.x, self.z, self.ux, self.uz, self.rho = x, z, ux, uz, rho
        self.xh, self.c = xh, c
        self.seconds += time.perf_counter() - t0
        return converged

    def _gnorm(self, x: torch.Tensor, z: torch.Tensor) -> float:
        """The graph-form norm of a pair, sqrt(r ||x||^2 + ||z||^2)."""
        return float(torch.sqrt(self.r * torch.sum(x ** 2) + torch.sum(z ** 2)))

    def _residuals(self, half: tuple, new: tuple, old: tuple, duals: tuple, rho: float,
                   eps_abs: float, eps_rel: float, diff: torch.Tensor) -> tuple:
        """(r_prim, r_dual, eps_prim, eps_dual) of one check: the primal residual is the half
        step's distance from the projection, the dual one rho times the projection's move;
        their tolerances are absolute plus relative to the iterates and the scaled duals.
        Each pair is (x, z); ``diff`` is scratch space of z's shape."""
        (xh, zh), (xn, zn), (x, z), (ux, uz) = half, new, old, duals
        rp = self._gnorm(xh - xn, torch.sub(zh, zn, out=diff))
        rd = rho * self._gnorm(xn - x, torch.sub(zn, z, out=diff))
        big = max(self._gnorm(xh, zh), self._gnorm(xn, zn))
        dual = rho * self._gnorm(ux, uz)
        ep = eps_abs * self.n_dim + eps_rel * big
        ed = eps_abs * self.n_dim + eps_rel * dual
        return rp, rd, ep, ed

    def _rebalance(self, ratio: float, rho: float, ux: torch.Tensor,
                   uz: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Residual balancing: when the normalised primal and dual residuals are more than
        ``adapt_tol`` apart (``ratio`` = primal / dual), scale rho by sqrt(ratio) (within
        [0.05, 20]) and the scaled duals by the inverse. Returns (u_x, rho); u_z is scaled in
        place."""
        o = self.opts
        if not (ratio > o.adapt_tol or ratio < 1.0 / o.adapt_tol):
            return ux, rho
        new = rho * float(np.clip(np.sqrt(ratio), 0.05, 20.0))
        ux = ux * (rho / new)
        uz.mul_(rho / new)
        self.rho_updates += 1
        return ux, new

    def _grow(self, rho: float, ux: torch.Tensor,
              uz: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The rho schedule of the support-driven stop: rho times ``rho_growth``, the scaled
        duals divided by it (the unscaled multipliers are unchanged). Returns (u_x, rho)."""
        g = float(self.opts.rho_growth)
        uz.div_(g)
        self.rho_updates += 1
        return ux / g, rho * g

    def promote(self) -> bool:
        """Continue in float64 (a float32 run stalls at its rounding floor); False if already."""
        if self.dt == torch.float64:
            return False
        self.dt = torch.float64
        for name in ("A", "Y", "V", "actf", "Vm", "wl1", "x", "z", "ux", "uz", "xh", "c"):
            setattr(self, name, getattr(self, name).to(torch.float64))
        self.Kinv = self._factor()
        self.factorizations += 1
        return True

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(W^T of the live columns from the soft-threshold step -- exactly sparse --, the
        inactive entries clamped at their bound in the last iteration)."""
        WT = (self.xh * self._t(self.e[:, None] * self.s)).cpu().numpy().astype(np.float64)
        clamp = (~self.act) & (self.c > self.V)  # the prox's input above the bound
        return WT, clamp.cpu().numpy()

"""Net-Trim (``--method netrim``): the convex layer program of each unit (eqs. 3-7, 11-14),
in parallel (Algorithm 1) or cascade (Algorithm 2) mode, solved by a registered solver."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict

from nettrim_cli import __version__
from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.dump import DumpReader
from nettrim_cli.errors import BadInput, NettrimError
from nettrim_cli.methods.base import MethodResult, ResumableMethod, RunHooks
from nettrim_cli.methods.netrim.bounds import network_figures
from nettrim_cli.methods.netrim.schedule import check_settings, run_in_order
from nettrim_cli.methods.netrim.settings import (
    ALLOCATIONS,
    CASCADE,
    DISCREPANCY,
    PARALLEL,
    PruneSettings,
)
from nettrim_cli.solvers import make_solver
from nettrim_cli.solvers.base import LayerSolver, Progress, no_progress
from nettrim_cli.solvers.sharpen import sharpened
from nettrim_cli.workdir import WorkDir, default_workdir

__all__ = ["CASCADE", "PARALLEL", "NetTrim", "PruneSettings", "prune"]

CURVE_TOLERANCE = 0.02  # the allocation's curves: a uniform search stopped within 2 points


def prune(ckpt: Checkpoint, dump: DumpReader, settings: PruneSettings, solver: LayerSolver,
          on_layer=None, progress: Progress = no_progress,
          workdir: WorkDir | None = None) -> MethodResult:
    """Run parallel (Algorithm 1) or cascade (Algorithm 2) Net-Trim over the prunable units.

    Args:
        ckpt: the loaded checkpoint; its traced layers must match the dump's.
        dump: the validated activation dump (original inputs and pre-activations).
        settings: mode, epsilon / gamma / lambda and solver settings.
        solver: the layer solver (``nettrim_cli.solvers.make_solver``).
        on_layer: called as on_layer(index, count, name) before each unit (parallel mode
            with ``executor = "ray"``: as each unit finishes, index counting the finished
            ones, since the units are solved at the same time).
        progress: the solver's per-column progress callback.
        workdir: where finished units (and, for solvers whose capabilities say journal,
            columns) are recorded durably; units recorded there are taken from it (resume).
    Returns:
        the pruned weights per unit, per-unit results and network-level figures.
    """
    check_settings(settings)
    solver = sharpened(solver, settings.refit, settings.reweight)
    if settings.mode == PARALLEL and settings.solver.executor == "ray":
        from nettrim_cli.methods.netrim.on_ray import run_on_ray

        layers = run_on_ray(ckpt, dump, settings, solver, on_layer, workdir)
    else:
        layers = run_in_order(ckpt, dump, settings, solver, on_layer, progress, workdir)
    result = MethodResult(method="netrim", mode=settings.mode, settings={}, layers=layers,
                          network={})
    result.network = network_figures(ckpt, ckpt.layers, dump.inputs(), result.weights, layers,
                                     settings)
    return result


class NetTrim(ResumableMethod):
    """Net-Trim behind the method interface: settings from a preset and flags, a solver from
    the registry, and the work folder that makes an interrupted run resumable."""

    name = "netrim"
    kept = "finished layers and columns"
    options = ("--config", "--mode", "--epsilon", "--gamma", "--lambda", "--scope", "--solver",
               "--device", "--dtype", "--workers", "--workdir", "--resume", "--strict",
               "--executor", "--address", "--osqp-algebra", "--sparsity", "--patches",
               "--allocation", "--refit", "--reweight")
    hint = ("--match is for the baselines (--method magnitude, wanda or sparsegpt); Net-Trim "
            "is steered by --epsilon, --lambda or --sparsity")

    def __init__(self, config_path: str | None = None, mode=None, epsilon=None, gamma=None,
                 lam=None, scope=None, solver=None, device: str = "cpu",
                 dtype: str = "float64", workers=None, workdir=None, resume: bool = False,
                 strict: bool = False, executor=None, address=None, osqp_algebra=None,
                 sparsity: float | None = None, patches=None, allocation=None,
                 refit=None, reweight=None) -> None:
        if sparsity is not None:
            if not 0.0 < sparsity < 1.0:
                raise BadInput(f"--sparsity must be in (0, 1), got {sparsity}")
            if epsilon is not None or lam is not None:
                raise BadInput("--sparsity picks eps itself: give it without --epsilon and "
                               "--lambda")
        if allocation is not None:
            if allocation not in ALLOCATIONS:
                raise BadInput(f"--allocation {allocation}: Net-Trim spreads --sparsity by "
                               f"{' or '.join(ALLOCATIONS)} (per-layer and joint are for lc and "
                               "magnitude-iterative)")
            if sparsity is None:
                raise BadInput("--allocation is for --sparsity (how the pruning is spread over "
                               "the layers)")
        self.sparsity = sparsity
        self.flags = {"allocation": allocation, "mode": mode, "epsilon": epsilon,
                      "gamma": gamma, "lambda": lam,
                      "scope": scope, "solver": solver, "workers": workers,
                      "executor": executor, "address": address, "osqp_algebra": osqp_algebra,
                      "patches": patches, "refit": refit, "reweight": reweight}
        from nettrim_cli.config import resolve_preset

        # a preset name is recorded (report inputs, output checks) as the file it names
        self.config_path = resolve_preset(config_path) if config_path else None
        self.device, self.dtype = device, dtype
        self.workdir_path, self.resume, self.strict = workdir, resume, strict
        self.work: WorkDir | None = None

    def load(self) -> None:
        from nettrim_cli.config import build_settings, load_config

        config = load_config(self.config_path)
        self.settings, self.solver_name = build_settings(config, self.flags,
                                                         source=self.config_path or "flags")
        if self.sparsity is not None and self.settings.lam is not None:
            raise BadInput("--sparsity picks eps itself, but the preset sets lambda; use a "
                           "preset without lambda", self.config_path)
        self.solver = self._solver()

    def _solver(self) -> LayerSolver:
        if self.solver_name == "admm":
            import torch

            if self.device == "cuda" and not torch.cuda.is_available():
                raise BadInput("--device cuda: no CUDA device is available to torch here; use "
                               "--device cpu")
            return make_solver("admm", device=self.device, dtype=self.dtype)
        if self.device != "cpu":
            raise BadInput(f"--device {self.device}: only --solver admm runs on a GPU")
        return make_solver(self.solver_name)

    def input_files(self) -> dict[str, str]:
        return {"config": self.config_path} if self.config_path else {}

    def start(self, ckpt: Checkpoint, acts_sha: str, output: str) -> None:
        """Open the work folder. Its manifest holds everything that changes the result, so
        that a resume with other inputs or settings is refused; worker counts and executors
        do not change results and may differ."""
        path = self.workdir_path or default_workdir(output)
        if path is None:
            if self.resume:
                raise BadInput("--resume needs --workdir when the output is stdout")
            return
        recorded = dataclasses.asdict(self.settings)
        for key in ("workers", "executor", "address"):
            recorded.get("solver", {}).pop(key, None)
        manifest = {"model_sha256": ckpt.sha256, "acts_sha256": acts_sha, "settings": recorded,
                    "solver": self.solver_name, "device": self.device, "dtype": self.dtype,
                    "sparsity": self.sparsity, "nettrim": __version__}
        self.work = WorkDir(path, manifest, self.resume)
        if self.resume:
            layers, cols = self.work.recorded()
            self.note(f"resuming from {path}: {layers} layer(s) finished, {cols} column(s) of "
                      "the next one recorded")

    def run(self, ckpt: Checkpoint, dump: DumpReader, hooks: RunHooks) -> MethodResult:
        if self.sparsity is None:
            result = prune(ckpt, dump, self.settings, self.solver, hooks.on_layer,
                           hooks.on_columns or no_progress, workdir=self.work)
            search = None
        else:
            result, search = self._search(ckpt, dump, hooks)
        for o in result.layers:
            o.record = {**o.record, "epsilon": o.epsilon, "lambda": o.solution.lam,
                        "constraint": o.solution.constraint}
        s = self.settings
        result.settings = {
            "mode": s.mode, "epsilon": s.epsilon,
            "gamma": s.gamma if s.mode == CASCADE else None, "lambda": s.lam,
            "solver": self.solver_name, "zero_threshold": s.solver.zero_threshold,
            "patches": s.patches, "patch_seed": s.seed, "refit": s.refit,
            "reweight": s.reweight,
            "osqp": asdict(s.solver.osqp), "search": asdict(s.solver.search)}
        if search is not None:
            result.settings["sparsity_search"] = search
        return result

    def _search(self, ckpt: Checkpoint, dump: DumpReader, hooks: RunHooks
                ) -> tuple[MethodResult, dict]:
        """Net-Trim at the eps whose prune removes --sparsity of the weights (target.py), one
        eps for every layer or per-layer eps from the allocation (allocation.py)."""
        from nettrim_cli.methods.netrim.target import TOLERANCE, prune_to_sparsity

        if self.settings.allocation == DISCREPANCY:
            return self._allocated(ckpt, dump, hooks)
        start = self.settings.epsilon if self.settings.epsilon is not None else 0.05
        search = prune_to_sparsity(self._trial(ckpt, dump, hooks, "trial"), start,
                                   self.sparsity, on_trial=self._shown(hooks, "sparsity search"))
        chosen, trials = search.chosen, search.trials
        self.settings.epsilon = chosen.epsilon
        if abs(chosen.pruned - self.sparsity) > TOLERANCE:
            self.note(f"--sparsity {self.sparsity}: the nearest of {len(trials)} trials pruned "
                      f"{100 * chosen.pruned:.2f}% (eps {chosen.epsilon:.4g}); kept that one")
        return search.result, {"target": self.sparsity, "tolerance": TOLERANCE,
                               "allocation": self.settings.allocation,
                               "epsilon": chosen.epsilon,
                               "trials": [t.record() for t in trials]}

    def _allocated(self, ckpt: Checkpoint, dump: DumpReader, hooks: RunHooks
                   ) -> tuple[MethodResult, dict]:
        """--allocation discrepancy (allocation.py): per-layer curves from parallel trials of
        the uniform search (stopped within CURVE_TOLERANCE once they bracket the target, so
        that the curves reach it), per-layer eps from them, then the
        search of their common scale (in the run's own mode)."""
        from nettrim_cli.methods.netrim.allocation import OutputGap, allocate, points_record
        from nettrim_cli.methods.netrim.target import TOLERANCE, bracketed, prune_to_sparsity

        gap = OutputGap(ckpt, dump.inputs())
        names = [info.name for info in ckpt.prunable]
        curves: list[list] = [[] for _ in names]
        curve_run = self._trial(ckpt, dump, hooks, "curve", mode=PARALLEL)

        def curve_trial(k: int, eps: float) -> MethodResult:
            result = curve_run(k, eps)
            for c, p in zip(curves, gap.points(result, eps), strict=True):
                c.append(p)
            return result

        start = self.settings.epsilon if self.settings.epsilon is not None else 0.05
        uniform = prune_to_sparsity(curve_trial, start, self.sparsity, tol=CURVE_TOLERANCE,
                                    on_trial=self._shown(hooks, "allocation curves (parallel)"),
                                    bracket=True)
        if not bracketed(uniform.trials, self.sparsity):
            self.note(f"--allocation discrepancy: the curve trials pruned "
                      f"{100 * min(t.pruned for t in uniform.trials):.2f}-"
                      f"{100 * max(t.pruned for t in uniform.trials):.2f}%, not reaching "
                      f"{100 * self.sparsity:.2f}%: every layer gets the curves' nearest end, "
                      "one eps for all")
        total = sum(o.W.size for o in uniform.result.layers)
        eps = allocate(curves, round((1.0 - self.sparsity) * total))
        top = max(eps)
        self._step(hooks, "allocation: eps per layer " + ", ".join(
            f"{n} {e:.4g}" for n, e in zip(names, eps, strict=True)))
        u = uniform.chosen
        ratios = [e / top for e in eps]
        alloc_run = self._trial(ckpt, dump, hooks, "alloc", ratios)
        if self.settings.mode == PARALLEL:  # a unit's prune depends on its own eps alone
            def alloc_run(k: int, e: float, _run=alloc_run) -> MethodResult:
                if all(abs(e * r - u.epsilon) <= 1e-9 * u.epsilon for r in ratios):
                    return uniform.result  # every unit at the curve trial's eps: its prune
                return _run(k, e)
        search = prune_to_sparsity(alloc_run, top, self.sparsity,
                                   on_trial=self._shown(hooks, "allocation search"))
        result, chosen = search.result, search.chosen
        if (self.settings.mode == PARALLEL and abs(u.pruned - self.sparsity) <= TOLERANCE
                and u.discrepancy < chosen.discrepancy):
            self.note(f"--allocation discrepancy: the uniform eps {u.epsilon:.4g} gave a lower "
                      f"output discrepancy ({u.discrepancy:.4g} < {chosen.discrepancy:.4g}) at "
                      "the target; kept the uniform prune")
            result, chosen = uniform.result, u
            self.settings.epsilons = None
        else:
            self.settings.epsilons = tuple(chosen.epsilon * e / top for e in eps)
            self._floored(result, chosen.epsilon, eps, top)
        self.settings.epsilon = chosen.epsilon
        if abs(chosen.pruned - self.sparsity) > TOLERANCE:
            self.note(f"--sparsity {self.sparsity}: the nearest allocation trial pruned "
                      f"{100 * chosen.pruned:.2f}%; kept that one")
        return result, {
            "target": self.sparsity, "tolerance": TOLERANCE, "allocation": DISCREPANCY,
            "epsilon": chosen.epsilon,
            "epsilons": (None if self.settings.epsilons is None
                         else dict(zip(names, self.settings.epsilons, strict=True))),
            "discrepancy": chosen.discrepancy,
            "uniform": {"epsilon": u.epsilon, "pruned": u.pruned,
                        "discrepancy": u.discrepancy, "mode": PARALLEL},
            "curve_trials": [t.record() for t in uniform.trials],
            "curves": points_record(curves, names),
            "trials": [t.record() for t in search.trials]}

    def _floored(self, result: MethodResult, scale: float, eps: list[float], top: float) -> None:
        """Cascade: say which later layers took eq. 7's eps over their allocated one."""
        if self.settings.mode != CASCADE:
            return
        over = [o.info.name for o, e in zip(result.layers[1:], eps[1:], strict=True)
                if o.epsilon > scale * e / top * o.y_norm * (1 + 1e-9)]
        if over:
            self.note(f"--allocation discrepancy, cascade: layer(s) {', '.join(over)} took "
                      "eq. 7's eps (the original weights' misfit on the pruned input x gamma), "
                      "larger than their allocated one")

    def _trial(self, ckpt: Checkpoint, dump: DumpReader, hooks: RunHooks, tag: str,
               ratios: list[float] | None = None, mode: str | None = None):
        """``run(k, eps)`` for a search: Net-Trim at eps (per layer eps * ratio with
        ``ratios``), in ``mode`` (default: the run's), in work folder ``TAG-KK``."""
        def run(k: int, eps: float) -> MethodResult:
            settings = dataclasses.replace(
                self.settings, epsilon=eps, mode=mode or self.settings.mode,
                epsilons=None if ratios is None else tuple(eps * r for r in ratios))
            return prune(ckpt, dump, settings, self.solver, hooks.on_layer,
                         hooks.on_columns or no_progress,
                         workdir=self._trial_work(k, eps, tag, settings.epsilons))
        return run

    def _shown(self, hooks: RunHooks, what: str):
        def on_trial(t, k: int) -> None:
            disc = "" if t.discrepancy is None else \
                f", output discrepancy {t.discrepancy:.4g}"
            self._step(hooks, f"{what}, trial {k + 1}: eps {t.epsilon:.4g} pruned "
                              f"{100 * t.pruned:.2f}% (target {100 * self.sparsity:.2f}%){disc} "
                              f"in {t.seconds:.1f} s")
        return on_trial

    @staticmethod
    def _step(hooks: RunHooks, line: str) -> None:
        if hooks.on_step is not None:
            hooks.on_step(line)

    def _trial_work(self, k: int, eps: float, tag: str = "trial",
                    epsilons: tuple[float, ...] | None = None) -> WorkDir | None:
        """Trial k's own work folder inside the run's, so that a resumed search replays it."""
        if self.work is None:
            return None
        path = self.work.path / f"{tag}-{k:02d}"
        manifest = {**self.work.manifest, "trial": k, "epsilon": eps}
        if epsilons is not None:
            manifest["epsilons"] = list(epsilons)
        return WorkDir(str(path), manifest, resume=path.exists())

    def check(self, result: MethodResult) -> None:
        failed = result.failed
        if failed and self.strict:
            if self.work is not None:
                self.work.remove()  # the prune is complete: nothing is left to resume
            for name, f in failed[:20]:
                self.note(f"layer {name} column {f['column']}: {f['status']}")
            raise NettrimError(f"{len(failed)} column(s) not solved; --strict: nothing written")

    def warnings(self, result: MethodResult) -> list[str]:
        from nettrim_cli.solvers.admm import GROWN, INACCURATE, MIXED

        failed = result.failed
        mixed = sum(1 for _, f in failed if f["status"] == MIXED)
        grown = sorted({name for name, f in failed if f["status"] == GROWN})
        # one line per layer whose eps does not hold when measured
        lines = [f"layer {o.info.name}: eps not met: constraint {o.solution.constraint:.4g} > "
                 f"eps {o.epsilon:.4g} (the pruned weights are the solver's best answer)"
                 for o in result.layers if o.solution is not None and o.epsilon is not None
                 and not o.solution.eps_reached]
        # a fixed lambda: columns the polish could not certify are ADMM's answer to its
        # tolerance (solvers/auto.py: lambda_layer_settings), one line per layer
        for o in result.layers:
            if o.solution is None or o.epsilon is not None:
                continue
            n = sum(1 for st in o.solution.status if st == INACCURATE)
            if n:
                lines.append(f"layer {o.info.name}: {n} of {len(o.solution.status)} columns at "
                             "the fixed lambda not certified optimal (ADMM's answer to its "
                             "tolerance, or the polish's best)")
        n_grown = sum(1 for _, f in failed if f["status"] == GROWN)
        if grown:
            hows = {"fastest" in f["action"] for _, f in failed if f["status"] == GROWN}
            how = " or ".join(h for h, on in (("where the misfit fell fastest", True in hows),
                                              ("by the original weights of largest |w| ||x||",
                                               False in hows)) if on)
            lines.append(f"layer(s) {', '.join(grown)}: no sparse answer of the solver met eps; "
                         f"its support was grown {how} until its refit met it (sparser than "
                         "mixing with the original weights, not the program's l1 answer)")
        if len(failed) > mixed + n_grown:
            lines.append(f"{len(failed) - mixed - n_grown} column(s) kept their original weights "
                         "(see failed_columns in the report)")
        if mixed:
            lines.append(f"{mixed} column(s) were mixed with their original weights to meet "
                         "eps, so their pruned weights are small but not zero (see "
                         "failed_columns in the report)")
        return lines

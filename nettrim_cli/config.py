"""Presets (TOML files, see configs/) merged with command-line flags, and validated.

Unknown keys and wrong types are errors that name the key. Flags given on the command line
override the file.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from nettrim_cli.errors import BadInput
from nettrim_cli.methods.netrim.settings import (
    ALLOCATIONS,
    CASCADE,
    DISCREPANCY,
    PARALLEL,
    PruneSettings,
)
from nettrim_cli.solvers.admm import ADMMSettings
from nettrim_cli.solvers.base import OSQPSettings, SearchSettings, SolverSettings

TOP_KEYS: dict[str, tuple[type, ...]] = {
    "mode": (str,),
    "epsilon": (float, int),
    "gamma": (float, int),
    "lambda": (float, int),
    "solver": (str,),
    "zero_threshold": (float, int),
    "workers": (int,),
    "executor": (str,),
    "address": (str,),
    "memory_budget_mb": (float, int),
    "patches": (int,),
    "patch_seed": (int,),
    "allocation": (str,),
    "refit": (bool,),
    "reweight": (int,),
}
SECTIONS = {"osqp": OSQPSettings, "search": SearchSettings, "admm": ADMMSettings}
SOLVERS = ("auto", "osqp", "admm")
# options only the OSQP column solver reads: given without --solver, they choose it
OSQP_FLAGS = ("scope", "osqp_algebra")


def _typecheck(key: str, value: Any, types: tuple[type, ...], path: str) -> None:
    if isinstance(value, bool) and bool not in types:
        raise BadInput(f"config key {key!r} must be {types[0].__name__}, got a boolean", path)
    if not isinstance(value, types):
        raise BadInput(f"config key {key!r} must be {types[0].__name__}, got "
                       f"{type(value).__name__} {value!r}", path)


PRESETS = Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    return sorted(f.stem for f in PRESETS.glob("*.toml"))


def resolve_preset(path: str) -> str:
    """``path`` itself, or the shipped preset file when it is a bare preset name (``fast``)
    and no such file exists here."""
    if not Path(path).exists() and PRESETS.joinpath(f"{path}.toml").is_file():
        return str(PRESETS / f"{path}.toml")
    return path


def load_config(path: str | None) -> dict[str, Any]:
    """Read and validate a TOML preset; returns a nested dict (empty without a path). A bare
    name that is not a file (``fast``, ``cascade``, ...) is one of the presets shipped in the
    package (nettrim_cli/presets/, also reachable as configs/ in a checkout)."""
    if path is None:
        return {}
    p = Path(resolve_preset(path))
    if not p.exists():
        raise BadInput(f"no such config file (presets: {', '.join(preset_names())})", path)
    if p.is_dir():
        raise BadInput("is a directory, not a config file", path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read config ({e})", path) from e
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"invalid TOML ({e})", path) from e
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise BadInput(f"config key {key!r} must be a table", path)
            known = {f.name: f.type for f in fields(SECTIONS[key])}
            for sub, v in value.items():
                if sub not in known:
                    raise BadInput(f"unknown config key '{key}.{sub}' (known: "
                                   f"{', '.join(sorted(known))})", path)
                default = getattr(SECTIONS[key](), sub)
                types = ((float, int) if default is None or isinstance(default, float)
                         else (type(default),))
                _typecheck(f"{key}.{sub}", v, types, path)
        elif key in TOP_KEYS:
            _typecheck(key, value, TOP_KEYS[key], path)
        else:
            raise BadInput(f"unknown config key {key!r} (known: "
                           f"{', '.join(sorted([*TOP_KEYS, *SECTIONS]))})", path)
    return data


EXECUTORS = ("local", "ray")
ALGEBRAS = ("builtin", "cuda")
# HOST:PORT, ray://HOST:PORT (Ray Client) or "auto" (the cluster started on this machine)
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5})$")


def _executor_settings(solver: SolverSettings, merged: dict[str, Any], flags: dict[str, Any],
                       source: str) -> None:
    """executor / address / osqp.algebra: validated, and checked to be usable here (the Ray
    package, the osqp CUDA algebra), so that a missing extra is a usage error (exit 2)."""

    def origin(key: str, flag: str) -> str:
        return flag if flags.get(key) is not None else source

    executor = merged.get("executor", "local")
    if executor not in EXECUTORS:
        raise BadInput(f"executor must be 'local' or 'ray', got {executor!r}",
                       origin("executor", "--executor"))
    address = merged.get("address")
    if address is not None:
        if executor != "ray":
            if flags.get("address") is not None:
                raise BadInput("--address needs --executor ray", "--address")
            address = None  # a preset's address is for its ray executor only
        elif not _ADDRESS.match(address):
            raise BadInput(f"address must be HOST:PORT, ray://HOST:PORT or 'auto', got "
                           f"{address!r}", origin("address", "--address"))
    if executor == "ray":
        from nettrim_cli.solvers.ray_exec import import_ray

        import_ray()
    solver.executor, solver.address = executor, address
    if flags.get("osqp_algebra") is not None:
        solver.osqp.algebra = flags["osqp_algebra"]
    algebra = solver.osqp.algebra
    where = origin("osqp_algebra", "--osqp-algebra")
    if algebra not in ALGEBRAS:
        raise BadInput(f"osqp.algebra must be 'builtin' or 'cuda', got {algebra!r}", where)
    if algebra != "builtin":
        import osqp

        if not osqp.algebra_available(algebra):
            raise BadInput("the osqp CUDA algebra is not installed (pip install 'osqp[cu12]'; "
                           "it needs CUDA 12 and an NVIDIA GPU); use --osqp-algebra builtin",
                           where)


def _check_sections(osqp: OSQPSettings, search: SearchSettings, admm: ADMMSettings | None,
                    source: str) -> None:
    """The [osqp], [search] and [admm] values a solver can run with (BadInput naming the
    key otherwise)."""
    checks = [
        (search.scope in ("layer", "column"), "search.scope must be 'layer' or 'column'"),
        (0 < search.rtol < 1, "search.rtol must be in (0, 1)"),
        (search.max_evals >= 1, "search.max_evals must be >= 1"),
        (0 <= osqp.eps_abs < math.inf and 0 <= osqp.eps_rel < math.inf,
         "osqp tolerances must be finite and >= 0"),
        (osqp.max_iter >= 1, "osqp.max_iter must be >= 1"),
        (1 <= osqp.retry_factor <= 1e6, "osqp.retry_factor must be in [1, 1e6]"),
        # OSQP counts iterations in a 32-bit integer, and a retry runs max_iter * retry_factor
        (osqp.max_iter * min(max(osqp.retry_factor, 1), 1e6) < 2**31,
         "osqp.max_iter * osqp.retry_factor must be below 2^31 (OSQP's iteration limit)"),
        (osqp.formulation in ("split", "epigraph"),
         "osqp.formulation must be 'split' (eq. 14) or 'epigraph'"),
        (osqp.screen_init >= 1, "osqp.screen_init must be >= 1"),
        (admm is None or admm.max_iter >= 1, "admm.max_iter must be >= 1"),
        (admm is None or (admm.eps_abs >= 0 and admm.eps_rel >= 0),
         "admm tolerances must be >= 0"),
        (admm is None or 0 < admm.alpha < 2, "admm.alpha must be in (0, 2)"),
        (admm is None or (admm.rho is None or admm.rho > 0), "admm.rho must be > 0"),
        (admm is None or admm.ratio > 0, "admm.ratio must be > 0"),
        (admm is None or (admm.check_every >= 1 and admm.adapt_every >= 1
                          and admm.polish_rounds >= 1 and admm.retry_factor > 0),
         "admm.check_every, adapt_every, polish_rounds must be >= 1 and retry_factor > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise BadInput(msg, source)


def _sharpen_options(merged: dict[str, Any], mode: str, lam, origin) -> tuple[bool, int]:
    """(refit, reweight rounds) from the merged settings, validated; ``origin(key)`` names
    where a bad value came from. The refit is on by default in parallel mode only: in cascade
    mode eq. 7 sets each later layer's eps from the misfit its input carries, and a refit that
    all but removes that misfit leaves the next layers nothing to prune (the demo: layer 0's
    misfit 0.852 -> 0.016, the 200 x 200 layer's eps 6.83 -> 0.0115 and 0% of it pruned)."""
    refit = bool(merged.get("refit", mode == PARALLEL))
    rounds = int(merged.get("reweight", 0))
    if rounds < 0:
        raise BadInput(f"reweight must be >= 0 (0: off), got {rounds}", origin("reweight"))
    if rounds and lam is not None:
        raise BadInput("reweight re-solves program (4) at the layer's eps: it needs an "
                       "epsilon, not a lambda", origin("reweight"))
    return refit, rounds


def build_settings(config: dict[str, Any], flags: dict[str, Any],
                   source: str = "config") -> tuple[PruneSettings, str]:
    """Merge a validated config with flags (flags win when not None) into PruneSettings.

    Returns the settings and the solver name.
    """
    merged = {k: v for k, v in config.items() if k not in SECTIONS}
    merged.update({k: v for k, v in flags.items() if v is not None})
    osqp = OSQPSettings(**config.get("osqp", {}))
    search = SearchSettings(**config.get("search", {}))
    admm = ADMMSettings(**config["admm"]) if "admm" in config else None
    if flags.get("scope") is not None:
        search.scope = flags["scope"]
    mode = merged.get("mode", CASCADE)
    if mode not in (PARALLEL, CASCADE):
        raise BadInput(f"mode must be 'parallel' or 'cascade', got {mode!r}", source)
    lam = merged.get("lambda")
    eps = merged.get("epsilon")
    if flags.get("lambda") is not None:
        eps = None  # an explicit --lambda replaces the preset's epsilon
    elif flags.get("epsilon") is not None:
        lam = None
    if lam is None and eps is None:
        eps = 0.05
    if lam is not None and eps is not None:
        raise BadInput("give either epsilon or lambda, not both", source)
    gamma = float(merged.get("gamma", 1.1))

    def origin(key: str) -> str:  # name the flag when the bad value came from one
        return f"--{key}" if flags.get(key) is not None else source

    for ok, key, msg in (
        (eps is None or (math.isfinite(eps) and eps >= 0), "epsilon", "epsilon must be >= 0"),
        (lam is None or (math.isfinite(lam) and lam > 0), "lambda", "lambda must be > 0"),
        (math.isfinite(gamma) and gamma >= 1.0, "gamma",
         "gamma (inflation rate, eq. 7) must be >= 1"),
    ):
        if not ok:
            raise BadInput(msg, origin(key))
    _check_sections(osqp, search, admm, source)
    zt = float(merged.get("zero_threshold", 1e-6))
    if not (0 <= zt < 1):
        raise BadInput("zero_threshold must be in [0, 1)", source)
    workers = int(merged.get("workers", 0))
    if workers < 0:
        raise BadInput("workers must be >= 0 (0: all cores)", source)
    budget = float(merged.get("memory_budget_mb", 2048.0))
    if not (math.isfinite(budget) and budget >= 0):
        raise BadInput("memory_budget_mb must be >= 0", source)
    patches = merged.get("patches")
    if patches is not None and patches < 1:
        raise BadInput(f"patches must be >= 1, got {patches}", origin("patches"))
    allocation = merged.get("allocation", DISCREPANCY)
    if allocation not in ALLOCATIONS:
        raise BadInput(f"allocation must be {' or '.join(map(repr, ALLOCATIONS))}, got "
                       f"{allocation!r}", origin("allocation"))
    refit, rounds = _sharpen_options(merged, mode, lam, origin)
    solver = merged.get("solver")
    if solver is None:
        solver = "osqp" if any(flags.get(k) is not None for k in OSQP_FLAGS) else "auto"
    if solver not in SOLVERS:
        raise BadInput(f"unknown solver {solver!r} (available: {', '.join(SOLVERS)})", source)
    settings = PruneSettings(
        mode=mode, epsilon=None if eps is None else float(eps), gamma=gamma,
        lam=None if lam is None else float(lam),
        solver=SolverSettings(osqp=osqp, search=search, zero_threshold=zt, workers=workers,
                              memory_budget_mb=budget, admm=admm),
        patches=patches, seed=int(merged.get("patch_seed", 0)), allocation=allocation,
        refit=refit, reweight=rounds)
    _executor_settings(settings.solver, merged, flags, source)
    return settings, solver

"""Algorithm 1 on a Ray cluster: the units are independent in parallel mode, so every unit
not recorded in the work folder is solved at the same time, one Ray task per unit."""

from __future__ import annotations

import numpy as np

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.dump import DumpReader
from nettrim_cli.errors import BadInput
from nettrim_cli.graph import LayerInfo
from nettrim_cli.methods.base import LayerResult, original_weights
from nettrim_cli.methods.netrim.schedule import recorded, solved, unit_programs
from nettrim_cli.methods.netrim.settings import PruneSettings
from nettrim_cli.methods.netrim.unit import rows_used
from nettrim_cli.solvers.base import LayerSolver


def run_on_ray(ckpt: Checkpoint, dump: DumpReader, settings: PruneSettings,
               solver: LayerSolver, on_layer=None, workdir=None) -> list[LayerResult]:
    """Algorithm 1 with every layer not recorded in the work folder solved at the same time on
    a Ray cluster (nettrim_cli/solvers/ray_layers.py); on_layer is called as layers finish,
    in the order they finish. Returns the outcomes in network order."""
    from nettrim_cli.execution.ray_layers import RayLayers

    prunable = ckpt.prunable
    n = len(prunable)
    done: dict[int, LayerResult] = {}
    todo: dict[int, tuple[LayerInfo, np.ndarray, np.ndarray | None]] = {}
    for i, info in enumerate(prunable):
        W0, b0 = original_weights(ckpt, info)
        record = workdir.load_layer(i) if workdir is not None else None
        if record is None:
            todo[i] = (info, W0, b0)
            continue
        if on_layer is not None:
            on_layer(len(done), n, info.name)
        done[i] = recorded(info, record, W0, b0)
    if todo:
        grouped = [info.name for info, _, _ in todo.values() if info.groups > 1]
        if grouped:
            raise BadInput(f"grouped conv layers ({', '.join(grouped)}) are not solved on Ray "
                           "yet; use --executor local")
        shapes = {i: (rows_used(info, dump.n_samples, settings.patches), info.in_features,
                      info.out_features) for i, (info, _, _) in todo.items()}
        units = {}
        with RayLayers(solver, settings.solver, shapes) as pool:
            for i in pool.order:
                info, W0, b0 = todo[i]
                units[i] = unit_programs(ckpt, dump, None, settings, i, info, W0, b0)
                pool.submit(i, units[i].parts[0][1])
            for i, sol, seconds in pool.results():
                info, W0, b0 = todo[i]
                if on_layer is not None:
                    on_layer(len(done), n, info.name)
                done[i] = solved(i, info, units.pop(i), sol, W0, b0, seconds, workdir)
                pool.release(i)
    return [done[i] for i in range(n)]

"""Algorithm 1 on a Ray cluster: the units are independent in parallel mode, so every unit
not recorded in the work folder is solved at the same time, one Ray task per unit."""

from __future__ import annotations

import numpy as np

from nettrim_cli.checkpoint import Checkpoint
from nettrim_cli.dump import DumpReader
from nettrim_cli.graph import LayerInfo
from nettrim_cli.methods.base import LayerResult, original_weights
from nettrim_cli.methods.netrim.schedule import layer_program, recorded, solved
from nettrim_cli.methods.netrim.settings import PruneSettings
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
        shapes = {i: (dump.n_samples, info.in_features, info.out_features)
                  for i, (info, _, _) in todo.items()}
        figures: dict[int, tuple[float | None, float]] = {}
        with RayLayers(solver, settings.solver, shapes) as pool:
            for i in pool.order:
                info, W0, b0 = todo[i]
                program, eps, y_norm = layer_program(dump, None, settings, i, info, W0, b0)
                figures[i] = (eps, y_norm)
                pool.submit(i, program)  # the driver keeps only the object reference
                del program
            for i, sol, seconds in pool.results():
                info, W0, b0 = todo[i]
                if on_layer is not None:
                    on_layer(len(done), n, info.name)
                done[i] = solved(i, info, pool.program(i), sol, W0, b0, *figures[i], seconds,
                                 workdir)
                pool.release(i)
    return [done[i] for i in range(n)]

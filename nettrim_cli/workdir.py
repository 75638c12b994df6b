"""The work folder of `nettrim prune --workdir`: durable records of finished layers and columns,
so that an interrupted prune (crash, kill -9, Ctrl-C) continues with `--resume` and writes the
same checkpoint, bit for bit, as an uninterrupted run.

Layout of DIR:
  manifest.json          what the run was: input hashes and every setting that changes results
  layer-003.npz          a finished layer: its weights and the solver's record (JSON text)
  layer-003.cols/c00042.npz
                         one column of the layer in progress: every lambda evaluation it went
                         through (stage, lambda, constraint value, status, ...) and its solver
                         state after the last one (last solution and working set)

Every file is written to a temporary name, fsynced and renamed, so a record either exists whole
or not at all. Nothing here is unpickled: arrays are read with ``allow_pickle=False`` and the
rest is JSON, so a planted work folder cannot run code.

Column records are replayed: on resume the layer's lambda search runs again from its start, and
every evaluation a column has a record of is answered from the record instead of being solved;
the first evaluation without a record is solved from the saved state, exactly as the
uninterrupted run would have solved it. This is exact only where a column's OSQP problem is
rebuilt from (last solution, working set) for every evaluation, which is what happens on the
large layers that do not fit ``memory_budget_mb``; layers small enough to keep their problems
in memory are restarted from their beginning instead (they are the quick ones).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from nettrim_cli.atomic import atomic_path
from nettrim_cli.errors import BadInput

FORMAT = "nettrim-workdir"
VERSION = 1
MANIFEST = "manifest.json"


def default_workdir(output: str) -> str | None:
    """``OUT.nettrim-work`` beside the output; none when the output is stdout."""
    if output == "-":
        return None
    p = Path(output)
    return str(p.parent / f"{p.name}.nettrim-work")


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise BadInput(f"damaged work-folder record ({e}); remove the folder to start over",
                       str(path)) from e


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _diff(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first key where two manifests differ, as 'key: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _diff(old.get(k), new.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    if old != new:
        return f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"
    return None


class WorkDir:
    """The records of one prune run. ``resume`` must be True to use existing records."""

    def __init__(self, path: str, manifest: dict, resume: bool) -> None:
        self.path = Path(path)
        self.manifest = _json_safe({"format": FORMAT, "version": VERSION, **manifest})
        mpath = self.path / MANIFEST
        if self.path.exists() and not self.path.is_dir():
            raise BadInput("--workdir exists and is not a folder", str(self.path))
        if mpath.exists():
            try:
                old = json.loads(mpath.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadInput(f"unreadable work-folder manifest ({e})", str(mpath)) from e
            if not resume:
                raise BadInput("the work folder holds an unfinished earlier run; add --resume "
                               "to continue it, or remove the folder to start over",
                               str(self.path))
            d = _diff(old, self.manifest)
            if d:
                raise BadInput(f"cannot resume: the earlier run differs ({d}); use the same "
                               "inputs and settings, or remove the folder to start over",
                               str(self.path))
        else:
            if self.path.is_dir() and any(self.path.iterdir()):
                raise BadInput("--workdir is not empty and is not a nettrim work folder",
                               str(self.path))
            if resume:
                raise BadInput("--resume: no earlier run is recorded here", str(self.path))
            if not self.path.parent.is_dir():
                raise BadInput("the work folder's parent directory does not exist",
                               str(self.path))
            # made whole or not at all: a folder with its manifest, renamed into place (a run
            # killed here leaves no folder, or a temporary one that nothing reads)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
            _write(tmp / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())
            os.replace(tmp, self.path)

    def recorded(self) -> tuple[int, int]:
        """How many finished layers and column records the folder holds."""
        return (len(list(self.path.glob("layer-*.npz"))),
                len(list(self.path.glob("layer-*.cols/c*.npz"))))

    # -- layers ---------------------------------------------------------------------------

    def _layer_file(self, i: int) -> Path:
        return self.path / f"layer-{i:03d}.npz"

    def save_layer(self, i: int, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.save_record(self._layer_file(i).stem, arrays, meta)
        shutil.rmtree(self._cols_dir(i), ignore_errors=True)

    def load_layer(self, i: int) -> tuple[dict[str, np.ndarray], dict] | None:
        return self.load_record(self._layer_file(i).stem)

    # -- any record (a training-based method's state after a step) ------------------------

    def save_record(self, stem: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Durably write ``STEM.npz``: the arrays and ``meta`` (JSON text), whole or not at
        all (an earlier record of that name is replaced only once this one is complete)."""
        arrays = {k: v for k, v in arrays.items() if v is not None}
        arrays["meta"] = np.array(json.dumps(_json_safe(meta)))
        _write(self.path / f"{stem}.npz", _npz_bytes(arrays))

    def load_record(self, stem: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """The arrays and metadata of ``STEM.npz``, or None when there is no such record."""
        f = self.path / f"{stem}.npz"
        if not f.exists():
            return None
        arrays = _read_npz(f)
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except (KeyError, json.JSONDecodeError) as e:
            raise BadInput("damaged work-folder record (no metadata); remove the folder to "
                           "start over", str(f)) from e
        return arrays, meta

    # -- columns --------------------------------------------------------------------------

    def _cols_dir(self, i: int) -> Path:
        return self.path / f"layer-{i:03d}.cols"

    def journal(self, i: int) -> ColumnJournal:
        return ColumnJournal(self._cols_dir(i))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclasses.dataclass
class Entry:
    stage: str
    lam: float
    err: float
    zero: bool
    status: str
    iterations: int
    seconds: float
    retried: bool
    wa: np.ndarray | None = None  # kept for the final (polish / fixed-lambda) stages


class ColumnJournal:
    """Per-column records of one layer's OSQP evaluations (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.logs: dict[int, list[Entry]] = {}
        self.states: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}

    def load(self) -> None:
        """Read every column's record (none when the layer has not started)."""
        if not self.path.is_dir():
            return
        for f in sorted(self.path.glob("c*.npz")):
            z = _read_npz(f)
            try:
                m = int(z["column"])
                n = len(z["stages"])
                entries = []
                for k in range(n):
                    stage = str(z["stages"][k])
                    entries.append(Entry(
                        stage=stage, lam=float(z["lams"][k]), err=float(z["errs"][k]),
                        zero=bool(z["zeros"][k]), status=str(z["statuses"][k]),
                        iterations=int(z["iterations"][k]), seconds=float(z["seconds"][k]),
                        retried=bool(z["retried"][k]), wa=z.get(f"wa_{stage}")))
                last = z["last"] if bool(z["has_last"]) else None
                working = z["working"] if bool(z["has_working"]) else None
            except (KeyError, ValueError, IndexError) as e:
                raise BadInput(f"damaged work-folder record ({e}); remove the folder to start "
                               "over", str(f)) from e
            self.logs[m] = entries
            self.states[m] = (last, working)

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.logs.clear()
        self.states.clear()

    def lookup(self, stage: str, m: int, lam: float) -> Entry | None:
        for e in self.logs.get(m, ()):
            if e.stage == stage:
                if e.lam != lam:
                    raise BadInput(f"column {m}: the recorded evaluation {stage} used lambda "
                                   f"{e.lam!r}, the replay asks for {lam!r}; remove the folder "
                                   "to start over", str(self.path))
                return e
        return None

    def record(self, stage: str, m: int, lam: float, outcome, final: bool) -> None:
        """Durably add one evaluation of column ``m`` and its solver state after it."""
        e = Entry(stage=stage, lam=float(lam), err=float(outcome.err), zero=bool(outcome.zero),
                  status=str(outcome.status), iterations=int(outcome.iterations),
                  seconds=float(outcome.seconds), retried=bool(outcome.retried),
                  wa=np.asarray(outcome.wa, dtype=np.float64) if final else None)
        log = self.logs.setdefault(m, [])
        log.append(e)
        last, working = outcome.state if outcome.state is not None else (None, None)
        self.states[m] = (last, working)
        arrays = {
            "column": np.array(m),
            "stages": np.array([x.stage for x in log]),
            "lams": np.array([x.lam for x in log]),
            "errs": np.array([x.err for x in log]),
            "zeros": np.array([x.zero for x in log]),
            "statuses": np.array([x.status for x in log]),
            "iterations": np.array([x.iterations for x in log]),
            "seconds": np.array([x.seconds for x in log]),
            "retried": np.array([x.retried for x in log]),
            "has_last": np.array(last is not None),
            "last": np.zeros(0) if last is None else np.asarray(last),
            "has_working": np.array(working is not None),
            "working": np.zeros(0, dtype=np.int64) if working is None else np.asarray(working),
        }
        for x in log:
            if x.wa is not None:
                arrays[f"wa_{x.stage}"] = x.wa
        self.path.mkdir(exist_ok=True)
        _write(self.path / f"c{m:05d}.npz", _npz_bytes(arrays))


def solution_meta(sol) -> dict:
    """A LayerSolution (or subclass) as JSON-able fields, without its weights."""
    fields = {f.name: getattr(sol, f.name) for f in dataclasses.fields(sol) if f.name != "Wa"}
    return {"class": type(sol).__name__, "fields": _json_safe(fields)}


def solution_from_meta(meta: dict, Wa: np.ndarray):
    from nettrim_cli.solvers.admm import ADMMSolution
    from nettrim_cli.solvers.base import LayerSolution

    classes = {"LayerSolution": LayerSolution, "ADMMSolution": ADMMSolution}
    cls = classes.get(meta.get("class"))
    if cls is None:
        raise BadInput(f"unknown solution class {meta.get('class')!r} in the work folder")
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(Wa=Wa, **{k: v for k, v in meta["fields"].items() if k in known})
    except (TypeError, AttributeError) as e:
        raise BadInput(f"damaged work-folder record (solution fields: {e})") from e

"""Atomic output files: write to a temporary file in the same directory, fsync, rename.

A reader never sees a half-written output, and an interrupted run leaves no partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nettrim_cli.errors import BadInput


def check_output_path(path: str | os.PathLike, force: bool, inputs: tuple = ()) -> None:
    """Refuse to overwrite an existing file without ``force`` or to overwrite an input."""
    if str(path) == "-":
        return
    p = Path(path)
    for other in inputs:
        if other and str(other) != "-" and Path(other).exists() and p.exists():
            if p.resolve() == Path(other).resolve():
                raise BadInput("output would overwrite an input file", str(path))
    if p.exists() and not force:
        raise BadInput("output exists; pass --force to overwrite it", str(path))
    if p.exists() and p.is_dir():
        raise BadInput("output is a directory", str(path))
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput("output directory does not exist", str(path))


def _final_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the existing file's, else 0o666 less
    the umask (mkstemp makes its files 0o600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success fsync it and rename over ``path``."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _final_mode(p))
        os.replace(tmp, p)
        with contextlib.suppress(OSError):
            dfd = os.open(p.parent or ".", os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, or to stdout when ``path`` is ``-``."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

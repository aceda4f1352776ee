"""Atomic writes: a reader (or a resumed run after kill -9) sees the old file or folder or the
whole new one, never a torn one. Every file or folder the engine leaves behind goes through here.

    atomic_write_text(run_dir / "summary.json", json.dumps(obj))
    atomic_write(path, lambda tmp: torch.save(pool, tmp))        # any writer that takes a path
    with atomic_dir(out_dir) as tmp: save_pretrained(tmp)        # a whole folder, swapped in at the end

The temporary sits next to the target (same filesystem, so `os.replace` is atomic) and is named
after the writing process, so two processes never share one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def _tmp_path(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """Call `write(tmp)` and rename `tmp` over `path`; with `fsync`, the bytes reach the disk first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path, "tmp")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), fsync=fsync)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, *, private: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on a clean exit it replaces `out_dir` (an existing one is
    moved aside first and removed after), on an error it is removed. `private=False` gives the
    folder's files the usual umask-based modes (temp helpers may have made them 0600)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _tmp_path(out_dir, "tmp"), _tmp_path(out_dir, "old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    try:
        yield tmp
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            for p in [tmp, *tmp.rglob("*")]:
                p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
        if out_dir.exists():
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

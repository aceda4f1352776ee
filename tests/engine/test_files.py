"""Atomic writes (engine/files.py): a reader sees the old file or folder or the whole new one."""

import os

import pytest

from engine.files import atomic_dir, atomic_write, atomic_write_text


def test_a_folder_is_replaced_whole_and_an_error_leaves_the_old_one(tmp_path):
    out = tmp_path / "seed"
    (out / "data").mkdir(parents=True)
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
        assert sorted(p.name for p in out.iterdir()) == ["data", "old.txt"]  # untouched until the end
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed"]  # no temporaries left
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())

    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed"]


def test_a_file_is_replaced_whole(tmp_path):
    path = tmp_path / "a" / "summary.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two", fsync=True)
    assert path.read_text() == "two"
    with pytest.raises(ValueError):
        atomic_write(path, lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(ValueError("boom"))))
    assert path.read_text() == "two" and sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

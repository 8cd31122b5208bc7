"""One atomic-write helper serves every file sparselab writes: a failing writer leaves the old file and no
temporary file behind."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import sparselab as sl
from sparselab.atomic import atomic_write, orphans


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("old"))

    def broken(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and orphans(target) == []
    assert atomic_write(target, lambda tmp: Path(tmp).write_text("new"), fsync=True) == target
    assert target.read_text() == "new"


@pytest.mark.parametrize("writer", ["history", "record", "checkpoint"])
def test_every_writer_goes_through_the_helper(tmp_path, monkeypatch, writer):
    import sparselab.atomic as atomic

    calls = []
    real = atomic.atomic_write

    def spy(path, write, fsync=False):
        calls.append(Path(path).name)
        return real(path, write, fsync)

    monkeypatch.setattr(atomic, "atomic_write", spy)
    for module in ("sparselab.history", "sparselab.training.checkpoint"):
        monkeypatch.setattr(f"{module}.atomic_write", spy)
    if writer == "history":
        h = sl.History()
        h.log_metric("acc", 0.5, step=1, epoch=0)
        h.save(tmp_path / "h.jsonl.gz")
        assert sl.History.load(tmp_path / "h.jsonl.gz") == h
    elif writer == "record":
        from sparselab.experiments.p3b import _write_record

        _write_record(tmp_path / "r.csv", pd.DataFrame({"a": [1]}))
        assert pd.read_csv(tmp_path / "r.csv").a.tolist() == [1]
    else:
        from sparselab.training.checkpoint import atomic_save, load_checkpoint

        atomic_save({"x": 1}, tmp_path / "c.pt")
        assert load_checkpoint(tmp_path / "c.pt")["x"] == 1
    assert calls and calls[0] in {"h.jsonl.gz", "r.csv", "c.pt"}


def test_a_written_file_gets_the_mode_a_plain_write_gives_it(tmp_path):
    """Not the owner-only 0600 of the temporary file: the umask's mode for a new file, the old mode for a
    replaced one."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        plain = tmp_path / "plain.csv"
        plain.write_text("x")
        target = atomic_write(tmp_path / "table.csv", lambda tmp: Path(tmp).write_text("a,b\n"))
        assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
        os.chmod(target, 0o640)
        atomic_write(target, lambda tmp: Path(tmp).write_text("a,b\n1,2\n"))
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(mask)

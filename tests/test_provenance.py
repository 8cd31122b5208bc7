"""Result records name the code that ran each row; continuing a record with other code warns, and the README's
report says which code recorded each committed table."""
from __future__ import annotations

import shutil
import subprocess
import warnings

import pandas as pd
import pytest

from sparselab.experiments import art, p3b, provenance
from sparselab.experiments.p3b import p3b_preset
from sparselab.experiments.provenance import CODE_COLUMN, code_version, other_versions, row_versions, versions_note
from sparselab.experiments.report import results_markdown


@pytest.fixture
def version(monkeypatch):
    """code_version() pinned to a name, so that another can be simulated."""
    def pin(name: str) -> None:
        monkeypatch.setattr(provenance, "code_version", lambda: name)
        monkeypatch.setattr(p3b, "code_version", lambda: name)
        monkeypatch.setattr(art, "code_version", lambda: name)
    return pin


@pytest.mark.skipif(shutil.which("git") is None or not (provenance.ROOT / ".git").exists(),
                    reason="a git checkout")
def test_the_version_of_a_checkout_is_its_commit():
    head = subprocess.run(["git", "-C", str(provenance.ROOT), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert code_version().split("+")[0] == head
    assert code_version() in (head, head + "+modified")


def test_outside_a_checkout_the_version_is_the_packages(monkeypatch, tmp_path):
    from sparselab import __version__

    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # no .git there
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == f"sparselab {__version__}"
    finally:
        provenance.code_version.cache_clear()


def test_versions_of_a_table():
    assert row_versions(pd.DataFrame()) == {}
    assert versions_note(pd.DataFrame({"acc": [0.9, 0.8]})) == "code version not recorded"
    mixed = pd.DataFrame({CODE_COLUMN: ["a", "a", None, "b"]})
    assert row_versions(mixed) == {"a": 2, "not recorded": 1, "b": 1}
    note = versions_note(mixed)
    assert note.startswith("rows of 3 code versions: a (2 rows), not recorded (1 rows), b (1 rows)")
    assert other_versions(mixed, current="a") == {"not recorded": 1, "b": 1}
    assert versions_note(pd.DataFrame({CODE_COLUMN: ["a"]})) == "recorded by code a"


def test_recorded_rows_name_their_code_and_other_code_warns(tmp_path, version):
    preset = p3b_preset("tiny", pretrained=False, recipe=None, seeds=(0,))
    path = tmp_path / "p3b.csv"
    version("aaaaaaaaaaaa")
    table, _ = p3b.compare(preset, methods=["uniform"], prune_ratios=[0.5], include_dense=False, record=path,
                           progress=False)
    assert list(pd.read_csv(path)[CODE_COLUMN]) == ["aaaaaaaaaaaa"] == list(table[CODE_COLUMN])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same code continues its own record quietly
        p3b.compare(preset, methods=["uniform"], prune_ratios=[0.5], include_dense=False, record=path,
                    progress=False)
    version("bbbbbbbbbbbb")
    with pytest.warns(RuntimeWarning, match=r"other code than this \(bbbbbbbbbbbb\): aaaaaaaaaaaa \(1 rows\)"):
        p3b.compare(preset, methods=["uniform"], prune_ratios=[0.5], include_dense=False, record=path,
                    progress=False)


def test_recorded_art_rows_name_their_code(tmp_path, version):
    preset = art.art_preset("tiny", seeds=(0,), methods=("oneshot",), sparsities=(0.9,))
    path = tmp_path / "art.csv"
    version("cccccccccccc")
    table, _ = art.compare(preset, record=path, progress=False)
    on_disk = pd.read_csv(path)
    assert set(on_disk.method) == {"dense", "oneshot"}
    assert set(on_disk[CODE_COLUMN]) == {"cccccccccccc"} == set(table[CODE_COLUMN])


def test_the_report_names_the_code_of_each_table():
    rows = pd.DataFrame({"method": ["p3b", "p3b", "uniform", "uniform"], "prune_ratio": 0.5, "seed": [0, 1] * 2,
                         "acc": [0.9, 0.91, 0.88, 0.89], CODE_COLUMN: ["abc", "abc", "abc", "def"]})
    text = results_markdown(lambda name: rows if name == "p3b_cpu-full" else pd.DataFrame(), figures="figs")
    assert "rows of 2 code versions: abc (3 rows), def (1 rows)" in text


def test_a_record_without_its_settings_file_still_warns_of_other_code(tmp_path, version):
    preset = p3b_preset("tiny", pretrained=False, recipe=None, seeds=(0,))
    path = tmp_path / "p3b.csv"
    pd.DataFrame({"preset": ["tiny"], "method": ["uniform"], "prune_ratio": [0.5], "seed": [0], "acc": [0.5],
                  CODE_COLUMN: ["aaaaaaaaaaaa"]}).to_csv(path, index=False)
    version("bbbbbbbbbbbb")
    with pytest.warns(RuntimeWarning, match=r"other code than this \(bbbbbbbbbbbb\): aaaaaaaaaaaa \(1 rows\)"):
        table = p3b._read_record(path, preset)
    assert len(table) == 1

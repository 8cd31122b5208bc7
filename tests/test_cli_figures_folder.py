"""`sparselab figures` into a folder that already holds figures: the folder shows one History, never two."""
import json
from pathlib import Path

import pytest

import sparselab as sl
from sparselab import cli
from sparselab.cli import FIGURE_MANIFEST, main


@pytest.fixture
def drawing(monkeypatch, tmp_path):
    """`figures` with the drawing replaced: each History path draws the figures named in `shows`."""
    shows: dict[str, list[str]] = {}
    monkeypatch.setattr(sl.History, "load", classmethod(lambda cls, path: str(path)))
    monkeypatch.setattr(cli, "history_figures", lambda history, run=None: {n: None for n in shows[Path(history).name]})

    def fake_export(figures, out, formats=("png",)):
        paths = [Path(out) / f"{name}.{fmt}" for name in figures for fmt in formats]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"drawn for {path.stem}")
        return paths

    monkeypatch.setattr(sl.plots, "export_figures", fake_export)
    return shows


def test_a_second_history_replaces_the_first_ones_figures(drawing, tmp_path, capsys):
    drawing.update({"art.jsonl.gz": ["gradient_profile", "exchange"], "p3b.jsonl.gz": ["keep_ratios"]})
    out = tmp_path / "figs"
    assert main(["figures", str(tmp_path / "art.jsonl.gz"), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["figures", str(tmp_path / "p3b.jsonl.gz"), "--out", str(out), "--format", "png", "svg"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [FIGURE_MANIFEST, "keep_ratios.png", "keep_ratios.svg",
                                                     "notes.txt"]
    manifest = json.loads((out / FIGURE_MANIFEST).read_text())
    assert manifest["history"] == str((tmp_path / "p3b.jsonl.gz").resolve())
    assert manifest["files"] == ["keep_ratios.png", "keep_ratios.svg"]
    assert "removed" in capsys.readouterr().out


def test_figures_it_did_not_write_are_kept_and_named(drawing, tmp_path, capsys):
    drawing["p3b.jsonl.gz"] = ["keep_ratios"]
    out = tmp_path / "figs"
    out.mkdir()
    (out / "exchange.png").write_text("someone else's")
    assert main(["figures", str(tmp_path / "p3b.jsonl.gz"), "--out", str(out)]) == 0
    assert (out / "exchange.png").read_text() == "someone else's"
    assert "exchange.png" in capsys.readouterr().err


def test_a_manifest_removes_only_figures_inside_its_folder(drawing, tmp_path):
    drawing["p3b.jsonl.gz"] = ["keep_ratios"]
    out = tmp_path / "figs"
    out.mkdir()
    outside = tmp_path / "precious.png"
    outside.write_text("keep me")
    (out / "notes.txt").write_text("mine")
    (out / FIGURE_MANIFEST).write_text(json.dumps({"files": [str(outside), "../precious.png", "notes.txt"]}))
    assert main(["figures", str(tmp_path / "p3b.jsonl.gz"), "--out", str(out)]) == 0
    assert outside.read_text() == "keep me" and (out / "notes.txt").read_text() == "mine"


def test_an_unreadable_manifest_removes_nothing(drawing, tmp_path):
    drawing["p3b.jsonl.gz"] = ["keep_ratios"]
    out = tmp_path / "figs"
    out.mkdir()
    (out / "exchange.png").write_text("kept")
    (out / FIGURE_MANIFEST).write_text("{not json")
    assert main(["figures", str(tmp_path / "p3b.jsonl.gz"), "--out", str(out)]) == 0
    assert (out / "exchange.png").is_file()
    assert json.loads((out / FIGURE_MANIFEST).read_text())["files"] == ["keep_ratios.png"]

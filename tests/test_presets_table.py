"""The table of record: paper presets equal the reference recipes row by row, docs/presets.md is generated from
the code, and the CLI prints both the table and a dry run."""
from __future__ import annotations

from pathlib import Path

import pytest

from sparselab import cli
from sparselab.experiments import recipes
from sparselab.experiments.art import art_preset
from sparselab.experiments.p3b import p3b_preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", recipes.paper_presets())
def test_every_paper_preset_equals_the_reference_except_where_documented(name):
    rows = recipes.recipe_rows(name)
    assert len(rows) >= 25
    for row in rows:
        if row.reference is None:
            assert row.note, f"{name}: {row.parameter} has no reference value and no note saying why"
        elif row.differs:
            assert row.value != row.reference and row.note, f"{name}: {row.parameter} is marked as differing"
        else:
            assert row.value == row.reference, f"{name}: {row.parameter} = {row.value!r}, reference {row.reference!r}"


def test_a_changed_preset_shows_up_as_a_difference():
    changed = p3b_preset("paper-deit-s-ifood").replace(fit={**p3b_preset("paper-deit-s-ifood").fit,
                                                            "accumulate_steps": 1})
    rows = {r.parameter: r for r in recipes.recipe_rows(changed)}
    assert rows["effective batch"].value == 256 and not rows["effective batch"].matches
    art = art_preset("paper-vgg19-cifar10").replace(data_options={"pad": 2, "augment": "crop_flip"})
    rows = {r.parameter: r for r in recipes.recipe_rows(art)}
    assert not rows["random crop padding"].matches and not rows["training images"].matches


@pytest.mark.parametrize("name", ["paper-deit-s-ifood", "paper-vgg19-cifar10"])
def test_an_image_size_left_to_the_dataset_is_said_so(name):
    preset = recipes.find_preset(name).replace(image_size=None)
    row = next(r for r in recipes.recipe_rows(preset) if r.parameter == "image size")
    assert row.value == "the dataset's own" and not row.matches  # not a bare dash read as "not set"
    assert "| image size | the dataset's own |" in recipes.render_table(preset)


def test_docs_presets_md_is_the_generated_table():
    committed = (ROOT / "docs" / "presets.md").read_text()
    assert committed == recipes.render_markdown() + "\n", "regenerate: sparselab presets markdown --out docs/presets.md"


def test_presets_cli_show_list_and_errors(capsys):
    assert cli.main(["presets", "show", "paper-vgg19-tinyimagenet"]) == 0
    out = capsys.readouterr().out
    assert "| image size | 64 | 64 |" in out and "| random crop padding | 4 | 4 |" in out
    assert cli.main(["presets", "list"]) == 0
    assert "paper-deit-t-inat19-ft50" in capsys.readouterr().out
    assert cli.main(["presets", "show", "paper-deit-s-ifod"]) == 2
    assert "Did you mean 'paper-deit-s-ifood'" in capsys.readouterr().err


def test_dry_run_prints_the_recipe_in_optimizer_steps_and_trains_nothing(capsys, tmp_path):
    out_dir = tmp_path / "run"
    assert cli.main(["p3b", "--preset", "tiny", "--dry-run", "--out", str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "optimizer steps per epoch         4" in text
    assert "finalize at                       epoch 3 = step 12" in text
    assert not out_dir.exists()
    # a paper preset whose data is not on this machine still prints its recipe
    assert cli.main(["art", "--preset", "paper-resnet32-cifar100", "--dry-run", "--out", str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "effective batch" in text and "step counts need the data" in text and "fp32" in text
    assert not out_dir.exists()

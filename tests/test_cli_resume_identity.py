"""--resume compares the settings no checkpoint holds; the default source recipe named or left out is the same run."""
from __future__ import annotations

import json

import pytest

import sparselab.models as models
from sparselab.cli import main

TRAIN = ["train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "8", "--pretrained",
         "fashion_mnist", "--resume"]


class PastTheCheck(Exception):
    """Raised where the run would build its model: the resume check let it through."""


def _run_folder(tmp_path, identity: dict):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps(identity))
    (out / "history.jsonl.gz").write_bytes(b"")
    return out


@pytest.fixture
def stop_at_model(monkeypatch):
    def create(*_, **__):
        raise PastTheCheck
    monkeypatch.setattr(models, "create", create)


@pytest.mark.parametrize("recorded, flags", [({}, ["--recipe", "default"]), ({"recipe": "default"}, []),
                                             ({"recipe": "default"}, ["--recipe", "default"]), ({}, [])])
def test_resume_with_the_default_recipe_named_or_not_is_the_same_run(tmp_path, stop_at_model, recorded, flags):
    out = _run_folder(tmp_path, {"command": "train", "pretrained": "fashion_mnist", **recorded})
    with pytest.raises(PastTheCheck):
        main([*TRAIN, *flags, "--out", str(out)])


def test_resume_with_another_recipe_than_the_default_is_still_refused(tmp_path, stop_at_model, capsys):
    out = _run_folder(tmp_path, {"command": "train", "pretrained": "fashion_mnist"})
    assert main([*TRAIN, "--recipe", "quick", "--out", str(out)]) == 2
    assert "other settings (recipe: None there, 'quick' now)" in capsys.readouterr().err
    out = _run_folder(tmp_path / "b", {"command": "train", "pretrained": "fashion_mnist", "recipe": "default"})
    assert main([*TRAIN, "--recipe", "quick", "--out", str(out)]) == 2

"""Run commands: --overwrite keeps the earlier run until the new run's inputs have loaded, and p3b takes a
checkpoint path or no pretraining for a preset whose source model has a pretraining recipe."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

import sparselab.experiments as experiments
import sparselab.models as models
from sparselab.cli import main

EARLIER = {"result.json": "{}", "summary.json": "{}", "history.jsonl.gz": "earlier"}


def _earlier_run(tmp_path, command: str):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "last.pt").write_bytes(b"earlier")
    for name, text in EARLIER.items():
        (out / name).write_text(text)
    (out / "run.json").write_text(json.dumps({"command": command, "pretrained": None}))
    return out


def _left_as_it_was(out) -> bool:
    return (all((out / name).read_text() == text for name, text in EARLIER.items())
            and (out / "checkpoint" / "last.pt").read_bytes() == b"earlier")


@pytest.mark.parametrize("flags", [["--data", "no_such_data"], ["--data", "digits", "--limit", "3"],
                                   ["--data", "digits", "--pretrained", "fashion_mnist", "--recipe", "quick"]])
def test_train_overwrite_with_inputs_that_do_not_load_keeps_the_earlier_run(tmp_path, flags, capsys):
    out = _earlier_run(tmp_path, "train")
    assert main(["train", "--model", "lenet_300_100", "--epochs", "1", *flags, "--overwrite", "--out", str(out)]) == 2
    assert "sparselab: error:" in capsys.readouterr().err
    assert _left_as_it_was(out)


@pytest.mark.parametrize("command, flags", [("p3b", ["--limit", "3"]), ("p3b", ["--data-root", "/no/such/root"]),
                                            ("art", ["--data-root", "/no/such/root"])])
def test_p3b_and_art_overwrite_with_data_that_does_not_load_keeps_the_earlier_run(tmp_path, command, flags,
                                                                                  capsys):
    out = _earlier_run(tmp_path, command)
    assert main([command, "--preset", "tiny", *flags, "--overwrite", "--out", str(out)]) == 2
    assert "sparselab: error:" in capsys.readouterr().err
    assert _left_as_it_was(out)


class PastTheModel(Exception):
    """Raised once the run has built its source model."""


@pytest.mark.parametrize("pretrained", ["checkpoint", "none"])
def test_p3b_builds_a_preset_model_from_a_checkpoint_or_none_despite_the_presets_recipe(tmp_path, monkeypatch,
                                                                                         pretrained):
    weights = tmp_path / "nano.pth"
    torch.save(models.create("vit_nano_patch4_28", num_classes=10, in_chans=1).state_dict(), weights)
    built = []

    def run_p3b(preset, method, prune_ratio, seed, data=None, **_):
        data = data if data is not None else experiments.load_data(preset)
        built.append(experiments.source_model(preset, data, seed=seed))
        raise PastTheModel

    monkeypatch.setattr(experiments, "run_p3b", run_p3b)
    value = str(weights) if pretrained == "checkpoint" else "none"
    with pytest.raises(PastTheModel):
        main(["p3b", "--preset", "tiny", "--pretrained", value, "--out", str(tmp_path / "out")])
    if pretrained == "checkpoint":
        source = torch.load(weights)
        assert torch.equal(built[0].blocks[0].attn.qkv.weight, source["blocks.0.attn.qkv.weight"])


def test_a_write_of_the_summary_that_fails_half_way_leaves_the_earlier_one(tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "8", "--limit", "100",
            "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    before = (out / "summary.json").read_text()
    write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        if "summary.json" in self.name:
            write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        main([*argv, "--resume"])
    assert (out / "summary.json").read_text() == before


@pytest.mark.parametrize("weights", ["corrupt", "another model"])
def test_p3b_overwrite_with_starting_weights_that_do_not_load_keeps_the_earlier_run(tmp_path, monkeypatch, weights,
                                                                                    capsys):
    path = tmp_path / "source.pth"
    if weights == "corrupt":
        path.write_bytes(b"not a torch file")
    else:
        torch.save(models.create("lenet_300_100", num_classes=10).state_dict(), path)

    def run_p3b(*_, **__):
        raise AssertionError("the run must not start")

    monkeypatch.setattr(experiments, "run_p3b", run_p3b)
    out = _earlier_run(tmp_path, "p3b")
    assert main(["p3b", "--preset", "tiny", "--pretrained", str(path), "--overwrite", "--out", str(out)]) == 2
    assert "checkpoint" in capsys.readouterr().err  # was: the earlier run deleted, then the model failed to load
    assert _left_as_it_was(out)

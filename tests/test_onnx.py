"""ONNX export of compact models: ONNX Runtime computes what PyTorch computes, for any batch size, and the
command line exports a saved compact model."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import nano_vit

import sparselab as sl
from sparselab.cli import main
from sparselab.errors import ConfigError
from sparselab.structure import ViTStructure
from sparselab.structure.compact import export_onnx, save_compact
from sparselab.structure.compact.onnx import onnx_session

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _compact():
    model = nano_vit(0).eval()
    s = ViTStructure(model)
    masks = s.full_masks()
    gen = torch.Generator().manual_seed(1)
    for i in range(s.depth):
        for g, m in masks[i].items():
            masks[i][g] = torch.rand(m.numel(), generator=gen) < 0.6
    masks[3]["mlp_out"] = torch.zeros_like(masks[3]["mlp_out"])  # a branch that became a constant
    return model, masks, sl.structure.compact_vit(model, masks, pad_to=8).eval()


@pytest.mark.parametrize("inplace_min_bytes", [None, 4097])
def test_onnx_runtime_computes_what_pytorch_computes_for_every_batch_size(tmp_path, monkeypatch, inplace_min_bytes):
    if inplace_min_bytes is not None:  # CompactMlp's in-place GELU in reach: the export must not guard the batch
        monkeypatch.setattr("sparselab.structure.compact.modules.INPLACE_MIN_BYTES", inplace_min_bytes)
    _, _, small = _compact()
    report = export_onnx(small, tmp_path / "small.onnx")
    assert report["max_abs_diff"] <= 1e-4 and report["input_shape"] == [1, 28, 28]
    session = onnx_session(tmp_path / "small.onnx")
    for batch in (1, 3, 9):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        torch.testing.assert_close(got, small(x).detach(), rtol=1e-4, atol=1e-4)
    assert small.training is False


def test_the_command_line_exports_a_saved_compact_model(tmp_path, capsys):
    model, masks, small = _compact()
    save_compact(small, sl.structure.compact_spec(model, masks, pad_to=8), tmp_path / "run" / "compact")
    assert main(["export", "onnx", str(tmp_path / "run")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"].endswith("compact/model.onnx") and report["max_abs_diff"] <= 1e-4
    assert main(["export", "onnx", str(tmp_path)]) == 2  # no compact model there
    assert "no compact model" in capsys.readouterr().err


def test_a_mismatch_leaves_no_file(tmp_path, monkeypatch):
    _, _, small = _compact()
    monkeypatch.setattr("sparselab.structure.compact.onnx.TOLERANCE", -1.0)
    with pytest.raises(ConfigError, match="differ from PyTorch"):
        export_onnx(small, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_large_outputs_are_held_to_the_tolerance_relative_to_their_scale(tmp_path):
    """float32 rounds relative to magnitude: logits in the tens of thousands differ by more than 1e-4 between two
    correct runtimes, and the export must not be refused for that, while the check stays as strict for them."""
    _, _, small = _compact()
    with torch.no_grad():
        small.head.weight.mul_(1e5)
        small.head.bias.mul_(1e5)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    scale = float(small(x).abs().max())
    assert scale > 1e3
    report = export_onnx(small, tmp_path / "large.onnx")
    assert report["max_abs_diff"] <= 1e-4 * scale
    session = onnx_session(tmp_path / "large.onnx")
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    torch.testing.assert_close(got, small(x).detach(), rtol=1e-4, atol=1e-4 * scale)

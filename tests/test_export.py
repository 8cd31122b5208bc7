"""Every figure function's output can be written as PNG and SVG (kaleido with Debian's Chromium)."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import sparselab as sl

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="installed by scripts/setup_env.sh")]


@pytest.fixture(scope="module")
def figures():
    torch.manual_seed(0)
    vit_data = sl.data.load("digits", image_size=28, limit=256)
    vit = sl.models.create("vit_nano_patch4_28", num_classes=10)
    pruner = sl.P3B(vit, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3), patch_probe="linear")
    crit = sl.probes.BlockCriteria(vit)
    p3b = sl.fit(vit, vit_data, epochs=3, batch_size=64, max_steps_per_epoch=3, pruner=pruner, callbacks=[crit],
                 progress=False)
    data = sl.data.load("digits", image_size=8)
    lenet = sl.models.create("lenet_300_100", image_size=8)
    art = sl.ART(lenet, 0.9, warmup_epochs=1, lam_init=1e-3, eta=1.6, max_art_epochs=3, profile_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        art_history = sl.fit(lenet, data, epochs=art.max_epochs, pruner=art, batch_size=64, progress=False)
    return {
        "block_benefit": sl.plot_block_benefit(p3b),
        "block_benefit_profile": sl.plot_block_benefit(p3b, view="profile"),
        "keep_ratios": sl.plot_keep_ratios(p3b),
        "reactivations": sl.plot_reactivations(p3b),
        "block_criteria": sl.plots.plot_block_criteria(p3b, metrics=["benefit_cls", "crit_abs_w"]),
        "block_scores": sl.plots.plot_block_scores({"w": {"blocks.0.attn": 1.0, "blocks.0.mlp": 2.0}}),
        "gradient_profile": sl.plot_gradient_profile(art_history),
        "exchange": sl.plot_exchange(art_history),
        "layer_keep_ratios": sl.plot_layer_keep_ratios(lenet, sparsity=0.9),
        "weight_patterns": sl.plot_weight_patterns(lenet, sparsity=0.9),
    }


def test_every_figure_exports_to_png_and_svg(figures, tmp_path):
    paths = sl.plots.export_figures(figures, tmp_path, formats=("png", "svg"))
    assert len(paths) == 2 * len(figures)
    for path in paths:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path.name
        else:
            assert b"<svg" in data[:500], path.name


def test_bad_format_is_a_clear_error(tmp_path):
    with pytest.raises(sl.ConfigError, match="formats"):
        sl.plots.export_figures({}, tmp_path, formats=("gif",))

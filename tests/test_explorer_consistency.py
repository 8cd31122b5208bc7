"""The explorers' readouts and figures match what they evaluate: a sparse checkpoint's own zeros count as pruned,
weights that are not finite are refused up front, and a latency left unmeasured is not shown as a number."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.patterns import input_pixel_map, layer_keep_ratios
from sparselab.widgets import BudgetExplorer, SparsityExplorer


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8)


@pytest.fixture(scope="module")
def lenet_and_sparse_checkpoint():
    torch.manual_seed(0)
    model = sl.models.create("lenet_300_100", image_size=8)
    sparse = {k: v.clone() for k, v in model.state_dict().items()}
    for name, m in sl.structure.magnitude_masks(model, 0.9).items():
        sparse[name] *= m  # a checkpoint pruned to 90 % (as ART / HyperSparse save it): its pruned weights are 0
    return model, sparse


def test_sparse_checkpoint_readouts_count_its_own_zeros(digits, lenet_and_sparse_checkpoint):
    model, sparse = lenet_and_sparse_checkpoint
    explorer = SparsityExplorer(model, digits, checkpoints={"sparse 90%": sparse}, max_eval=50)
    explorer.method.value = "sparse 90%"
    for s in (0.0, 0.5):
        explorer.slider.value = s
        shown = explorer.model  # the weights the accuracy was measured with
        truth = layer_keep_ratios(shown)  # their nonzero pattern
        assert explorer.achieved_sparsity == pytest.approx(0.9, abs=1e-4)
        assert list(explorer.bars.data[0].customdata) == truth.kept.tolist()
        assert list(explorer.bars.data[0].y) == pytest.approx(truth.keep_ratio.tolist())
        assert f"{int(truth.kept.sum())} of 50200 weights kept" in explorer.info.value
        assert "achieved sparsity 0.9000" in explorer.info.value
        assert f"magnitude pruning removes {s:.4f}" in explorer.info.value
        np.testing.assert_allclose(np.array(explorer.heatmap.data[0].z),
                                   input_pixel_map(shown, image_shape=(1, 8, 8), fraction=True).numpy())
        for name, m in explorer.masks.items():
            assert torch.equal(m, dict(shown.named_parameters())[name].detach() != 0), name
    explorer.slider.value = 0.95  # past the checkpoint's own sparsity the slider decides again
    assert explorer.achieved_sparsity == pytest.approx(0.95, abs=1e-4)
    assert "zero in these weights already" not in explorer.info.value
    explorer.method.value = "global magnitude"  # the dense model has no zeros of its own
    explorer.slider.value = 0.5
    assert explorer.achieved_sparsity == pytest.approx(0.5, abs=1e-4)
    assert "already" not in explorer.info.value


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_sparsity_explorer_refuses_weights_that_are_not_finite(digits, lenet_and_sparse_checkpoint, value):
    model, sparse = lenet_and_sparse_checkpoint
    bad = {k: v.clone() for k, v in sparse.items()}
    bad["fc1.weight"][0, 0] = value  # inf would be evaluated to NaN logits and an accuracy shown as measured
    with pytest.raises(ConfigError, match=r"checkpoint 'diverged' holds NaN or inf in fc1\.weight"):
        SparsityExplorer(model, digits, checkpoints={"good": sparse, "diverged": bad}, max_eval=20)
    broken = sl.models.create("lenet_300_100", image_size=8)
    broken.load_state_dict(bad)
    with pytest.raises(ConfigError, match=r"the model holds NaN or inf in fc1\.weight"):
        SparsityExplorer(broken, digits, max_eval=20)


def test_budget_explorer_without_latency_does_not_show_nan_ms():
    h = History()
    h.log_blocks("keep_goal", {f"blocks.{i}.{k}": 0.5 for i in range(4) for k in ("attn", "mlp")}, step=1, epoch=0)
    torch.manual_seed(0)
    explorer = BudgetExplorer(h, sl.models.create("vit_nano_patch4_28", num_classes=10), measure_latency=False)
    assert math.isnan(explorer.latency)
    assert "nan" not in explorer.info.value
    assert "latency not measured" in explorer.info.value

"""Weight-pattern numbers, their figures and attributions agree with answers known from hand-set masks and
weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.attribution import attribute
from sparselab.errors import ConfigError
from sparselab.patterns import kept_masks, vit_pattern_summary
from sparselab.plots import plot_weight_patterns


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return sl.models.create("vit_nano_patch4_28", num_classes=10)


def full_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.ones_like(v) for k, v in kept_masks(model, sparsity=0.0).items()}


def test_head_spread_counts_all_weights_of_a_head(vit):
    masks = full_masks(vit)
    d = vit.blocks[0].attn.head_dim
    for i in range(len(vit.blocks)):
        masks[f"blocks.{i}.attn.qkv.weight"][:d] = False  # the q rows of head 0
    # head 0 keeps its k and v rows and its proj columns: 3 of the 4 equal-sized parts, the other heads all
    assert vit_pattern_summary(vit, masks)["head_spread"] == pytest.approx(0.25)


def test_head_spread_of_a_head_without_proj_columns(vit):
    masks = full_masks(vit)
    d, dim = vit.blocks[0].attn.head_dim, vit.embed_dim
    for i in range(len(vit.blocks)):
        masks[f"blocks.{i}.attn.proj.weight"][:, d:2 * d] = False  # head 1's proj columns
    # proj columns are a quarter of a head's weights (d·D against 3·d·D q/k/v rows)
    expected = d * dim / (3 * d * dim + d * dim)
    assert vit_pattern_summary(vit, masks)["head_spread"] == pytest.approx(expected)


def test_mlp_colour_scale_of_the_vit_figure_starts_at_zero(vit):
    masks = full_masks(vit)
    for i in range(len(vit.blocks)):
        masks[f"blocks.{i}.mlp.fc1.weight"][:, : vit.embed_dim // 2] = False  # every neuron keeps 3/4 of its weights
    fig = plot_weight_patterns(vit, masks)
    z = np.asarray(fig.data[4].z, dtype=float)
    assert np.nanmin(z) == pytest.approx(0.75)
    axis = fig.layout.coloraxis2
    # plotly only honours cmin when cmax is set too; otherwise the darkest colour would mean 0.75, not 0
    assert axis.cmin == 0 and axis.cmax == pytest.approx(np.nanmax(z))


def test_attributions_of_a_double_precision_model_read_float_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()
    x = torch.randn(4, 2, 3, 3)
    target = torch.tensor([2, 0, 1, 1])
    maps = attribute(model, x, target, method="integrated_gradients", n_steps=8)
    w = model[1].weight.detach().view(3, 2, 3, 3)
    torch.testing.assert_close(maps, (x.double() * w[target]).abs().sum(1), rtol=1e-6, atol=1e-8)
    saliency = sl.attribution.compare_attributions(model, model, x, method="saliency")
    assert torch.equal(saliency.target, model(x.double()).argmax(1))


def test_boolean_targets_are_refused_not_read_as_classes_0_and_1():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="one integer class per image"):
        attribute(model, torch.randn(2, 1, 2, 2), torch.tensor([True, False]), method="saliency")

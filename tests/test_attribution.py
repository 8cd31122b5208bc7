from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.attribution import attribute, compare_attributions, map_similarity
from sparselab.errors import UnknownNameError


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_saliency_of_a_linear_model_is_its_weight_row():
    model = linear_model()
    x = torch.randn(5, 2, 4, 4)
    target = torch.tensor([0, 1, 2, 0, 1])
    maps = attribute(model, x, target, method="saliency")
    w = model[1].weight.detach().view(3, 2, 4, 4).abs().sum(1)
    torch.testing.assert_close(maps, w[target])


def test_integrated_gradients_of_a_linear_model_is_input_times_weight():
    model = linear_model()
    x = torch.randn(3, 2, 4, 4)
    target = torch.tensor([2, 0, 1])
    maps = attribute(model, x, target, method="integrated_gradients", n_steps=8)
    w = model[1].weight.detach().view(3, 2, 4, 4)
    torch.testing.assert_close(maps, (x * w[target]).abs().sum(1), rtol=1e-4, atol=1e-5)


def test_comparison_scores_identical_models_one_and_a_pruned_model_less():
    torch.manual_seed(0)
    dense = sl.models.create("lenet_300_100", image_size=8)
    x = sl.data.load("digits", image_size=8).test.images[:6]
    same = compare_attributions(dense, dense, x, method="saliency")
    assert torch.allclose(same.similarity, torch.ones(6))
    pruned = sl.models.create("lenet_300_100", image_size=8)
    pruned.load_state_dict(dense.state_dict())
    sl.structure.apply_masks(pruned, sl.structure.magnitude_masks(pruned, 0.5))
    result = compare_attributions(dense, pruned, x, method="integrated_gradients", n_steps=8)
    assert result.dense.shape == result.pruned.shape == (6, 8, 8)
    assert 0 < result.mean_similarity < 1
    assert torch.equal(result.target, dense(x).argmax(1))


def test_similarity_is_scale_invariant_and_bad_method_is_an_error():
    a = torch.rand(2, 5, 5)
    torch.testing.assert_close(map_similarity(a, 3 * a), torch.ones(2))
    with pytest.raises(UnknownNameError, match="attribution method"):
        attribute(linear_model(), torch.randn(1, 2, 4, 4), method="gradcam")


def test_comparison_figure_shows_image_and_both_maps():
    torch.manual_seed(0)
    dense = sl.models.create("lenet_300_100", image_size=8)
    x = sl.data.load("digits", image_size=8).test.images[:3]
    result = compare_attributions(dense, dense, x, method="saliency")
    fig = sl.plots.plot_attribution_comparison(result, x)
    assert len(fig.data) == 9
    assert fig.data[1].z.tolist() == result.dense[0].numpy().tolist()
    assert "similarity 1.00" in fig.layout.annotations[0].text


def test_an_all_zero_map_has_no_similarity_rather_than_zero():
    from sparselab.attribution import AttributionComparison, map_similarity
    from sparselab.plots import plot_attribution_comparison

    dense = torch.rand(3, 4, 4) + 0.1
    pruned = torch.zeros(3, 4, 4)  # an emptied layer: the output no longer depends on the image
    sim = map_similarity(dense, pruned)
    assert torch.isnan(sim).all()
    result = AttributionComparison(dense, pruned, torch.tensor([0, 1, 2]), sim, "saliency")
    assert math.isnan(result.mean_similarity)
    fig = plot_attribution_comparison(result, torch.rand(3, 1, 4, 4))
    assert "no similarity" in fig.layout.title.text and "nan" not in fig.layout.title.text

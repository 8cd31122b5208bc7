from __future__ import annotations

import torch

import sparselab as sl
from sparselab.patterns import layer_keep_ratios
from sparselab.plots import plot_layer_keep_ratios
from sparselab.widgets import SparsityExplorer


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 2))


def test_compared_tables_keep_a_layer_one_of_them_lacks_in_module_order():
    net = _mlp()
    full = layer_keep_ratios(net, sparsity=0.5)
    dense_first = full.iloc[1:]  # a method that leaves the first layer out of its table
    fig = plot_layer_keep_ratios(compare={"skip first": dense_first, "global": full})
    assert list(fig.layout.xaxis.categoryarray) == ["0", "2", "4"]
    assert list(fig.data[0].x) == ["0", "2", "4"]
    assert fig.data[0].y[0] is None
    assert list(fig.data[1].y) == full["keep_ratio"].tolist()


def test_log_keep_ratios_name_a_layer_pruned_to_zero():
    net = _mlp()
    masks = {name: torch.full_like(p, name != "2.weight", dtype=torch.bool)
             for name, p in net.named_parameters() if name.endswith("weight")}
    fig = plot_layer_keep_ratios(net, masks=masks, log=True)
    assert list(fig.data[0].y) == [1.0, 0.0, 1.0] and fig.layout.yaxis.type == "log"
    assert "not drawn on the log axis: 2" in fig.layout.title.text
    linear = plot_layer_keep_ratios(net, masks=masks)
    assert "not drawn" not in linear.layout.title.text
    both = plot_layer_keep_ratios(compare={"a": layer_keep_ratios(net, masks), "b": layer_keep_ratios(net)},
                                  log=True)
    assert "1 keep ratio(s) of 0" in both.layout.title.text and "2 (a)" in both.layout.title.text


def test_sparsity_explorer_heatmap_title_says_when_there_is_no_map():
    data = sl.data.load("digits", image_size=28, limit=60)
    torch.manual_seed(0)
    explorer = SparsityExplorer(sl.models.create("vit_nano_patch4_28", num_classes=10), data, max_eval=20)
    explorer.slider.value = 0.9
    assert len(explorer.heatmap.data[0].z) == 0
    assert "3×3 kernel position" not in explorer.heatmap.layout.title.text
    assert "no map" in explorer.heatmap.layout.title.text

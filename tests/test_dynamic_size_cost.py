"""Models that take other image sizes: their structure, their cost at a given image size, and the keep-ratio
figure of blocks outside ``blocks.{layer}.{attn|mlp}``."""
import pytest
import timm
import torch
from conftest import counted_macs
from timm.models.vision_transformer import VisionTransformer

from sparselab.cost import compact_stats
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.plots.p3b import plot_keep_ratios
from sparselab.structure.vit import ViTStructure


def _no_grid(**kw) -> VisionTransformer:
    """A tiny ViT built with img_size=None: its patch embedding has no grid of its own."""
    return VisionTransformer(img_size=None, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                             num_classes=10, pos_embed="none", no_embed_class=True, **kw).eval()


def _dynamic(**kw) -> VisionTransformer:
    return timm.create_model("vit_nano_patch4_28", num_classes=10, dynamic_img_size=True, **kw).eval()


# ------------------------------------------------------------------------------------------------ structure
def test_structure_of_a_model_without_grid():
    model = _no_grid(dynamic_img_size=True)
    s = ViTStructure(model)
    assert s.grid_size is None
    assert [b.name for b in s.blocks] == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert s.total_params() == sum(p.numel() for p in model.parameters())
    tokens = torch.randn(2, 1 + 12, 32)
    assert s.patch_tokens(tokens, grid=(3, 4)).shape == (2, 32, 3, 4)
    with pytest.raises(ConfigError, match=r"grid=\(h, w\)"):
        s.patch_tokens(tokens)


def test_structure_keeps_the_created_grid():
    s = ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10))
    assert s.grid_size == (7, 7)


# ------------------------------------------------------------------------------------------------ cost
@pytest.mark.parametrize("size", [(28, 28), (32, 16), (12, 40)])
def test_dynamic_model_counted_at_the_given_size(size):
    model = _dynamic()
    stats = compact_stats(model, image_size=size)
    assert stats["flops"] == counted_macs(model, (1, *size))
    assert stats["tokens"] == size[0] // 4 * size[1] // 4 + 1


def test_dynamic_model_defaults_to_the_created_size():
    model = _dynamic()
    assert compact_stats(model) == compact_stats(model, image_size=28)
    assert compact_stats(model)["flops"] == counted_macs(model, (1, 28, 28))
    assert compact_stats(model, image_size=32)["flops"] == counted_macs(model, (1, 32, 32))


def test_padded_model_counts_the_padded_patches():
    model = _dynamic(dynamic_img_pad=True)
    stats = compact_stats(model, image_size=(30, 17))
    assert stats["tokens"] == 8 * 5 + 1
    assert stats["flops"] == counted_macs(model, (1, 30, 17))


def test_model_without_grid_needs_an_image_size():
    model = _no_grid()
    assert compact_stats(model, image_size=20)["flops"] == counted_macs(model, (3, 20, 20))
    with pytest.raises(ConfigError, match=r"img_size=None.*pass image_size"):
        compact_stats(model)


@pytest.mark.parametrize("model, size, message", [
    (lambda: timm.create_model("vit_nano_patch4_28", num_classes=10), 32,
     r"only images of 28x28.*got image_size 32x32"),
    (_dynamic, (30, 16), r"multiples of its patch size 4x4.*got image_size 30x16"),
    (_dynamic, (0, 16), r"positive int.*got \(0, 16\)"),
    (_dynamic, True, r"positive int.*got True"),
    (_dynamic, (16, 16, 16), r"\(height, width\) pair"),
    (_dynamic, "32", r"got '32'"),
    (_no_grid, 3, r"smaller than one 4x4 patch"),
])
def test_sizes_the_model_cannot_take_are_refused(model, size, message):
    with pytest.raises(ConfigError, match=message):
        compact_stats(model(), image_size=size)


def test_fixed_model_at_its_own_size():
    model = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
    assert compact_stats(model, image_size=(28, 28)) == compact_stats(model)


# ------------------------------------------------------------------------------------------------ figure
def _history(names):
    h = History()
    for step, k in [(10, 0.9), (20, 0.5)]:
        h.log_blocks("keep_applied", {n: k for n in names}, step=step, epoch=0)
        h.log_blocks("keep_goal", {n: 0.4 for n in names}, step=step, epoch=0)
    return h


def _bar_blocks(fig):
    return sorted(text.split("<br>")[0] for t in fig.data if t.type == "bar" for text in t.customdata)


def _line_blocks(fig):
    return sorted(t.hovertemplate.split("<br>")[0] for t in fig.data if t.type == "scatter" and t.mode == "lines")


def test_keep_ratio_panels_show_the_same_blocks():
    names = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "head", "encoder.layer.0.attn"]
    fig = plot_keep_ratios(_history(names))
    assert _line_blocks(fig) == _bar_blocks(fig) == sorted(names)
    other = next(t for t in fig.data if t.type == "bar" and t.name.startswith("other"))
    assert list(other.x) == [3, 4] and list(other.y) == [0.5, 0.5]
    axis = fig.layout.xaxis2
    assert list(axis.ticktext) == ["1", "2", "encoder.layer.0.attn", "head"]
    assert list(axis.tickvals) == [1, 2, 3, 4]
    goal = next(t for t in fig.data if t.name == "goal κ")
    assert len(goal.x) == len(names)


def test_keep_ratio_panels_with_only_other_blocks():
    fig = plot_keep_ratios(_history(["head", "neck"]))
    assert _bar_blocks(fig) == _line_blocks(fig) == ["head", "neck"]
    assert fig.layout.xaxis2.title.text == "other blocks"


def test_keep_ratio_axis_of_named_blocks_is_unchanged():
    fig = plot_keep_ratios(_history(["blocks.0.attn", "blocks.0.mlp"]))
    assert fig.layout.xaxis2.tickmode == "linear" and tuple(fig.layout.xaxis2.range) == (0.4, 1.6)


def test_patch_tokens_of_a_model_without_an_image_size_need_the_grid():
    """A patch embedding built with img_size=None keeps strict_img_size but checks no size: the model takes any
    image, so its patch grid is not known from the model and patch_tokens asks for it instead of failing inside."""
    model = VisionTransformer(img_size=None, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1,
                              num_heads=2, no_embed_class=True, pos_embed="none")
    s = ViTStructure(model)
    assert not s.fixed_grid
    tokens = torch.randn(2, 1 + 12, 16)
    with pytest.raises(ConfigError, match="grid"):
        s.patch_tokens(tokens)
    assert tuple(s.patch_tokens(tokens, grid=(3, 4)).shape) == (2, 16, 3, 4)

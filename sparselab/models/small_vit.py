"""Small Vision Transformers for 28-32 px inputs, registered with timm (so ``timm.create_model`` knows them).

They are ordinary ``timm.models.vision_transformer.VisionTransformer`` instances (class token, LayerNorm,
MLP ratio 4), so everything that works on timm ViTs works on them.

| name | embed | depth | heads | patch | tokens | params (10 classes, 1 channel) |
|---|---|---|---|---|---|---|
| vit_nano_patch4_28 | 64 | 4 | 4 | 4 | 49+1 | 0.21 M |
| vit_micro_patch4_28 | 96 | 6 | 3 | 4 | 49+1 | 0.68 M |
| vit_mini_patch7_28 | 128 | 6 | 4 | 7 | 16+1 | 1.2 M |
| vit_micro_patch4_32 | 96 | 6 | 3 | 4 | 64+1 | 0.68 M |

Example:
    >>> import timm, sparselab
    >>> m = timm.create_model("vit_nano_patch4_28", num_classes=10)
    >>> m.patch_embed.grid_size
    (7, 7)
"""
from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer


def _cfg(size: int, chans: int) -> dict:
    mean = (0.5,) * chans
    return dict(url="", num_classes=10, input_size=(chans, size, size), mean=mean, std=mean, crop_pct=1.0,
                interpolation="bilinear", first_conv="patch_embed.proj", classifier="head", license="mit")


default_cfgs = generate_default_cfgs({
    "vit_nano_patch4_28": _cfg(28, 1),
    "vit_micro_patch4_28": _cfg(28, 1),
    "vit_mini_patch7_28": _cfg(28, 1),
    "vit_micro_patch4_32": _cfg(32, 3),
})

SMALL_VITS = {
    "vit_nano_patch4_28": dict(img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=4, in_chans=1),
    "vit_micro_patch4_28": dict(img_size=28, patch_size=4, embed_dim=96, depth=6, num_heads=3, in_chans=1),
    "vit_mini_patch7_28": dict(img_size=28, patch_size=7, embed_dim=128, depth=6, num_heads=4, in_chans=1),
    "vit_micro_patch4_32": dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3, in_chans=3),
}


def _create(name: str, pretrained: bool, **kwargs) -> VisionTransformer:
    args = dict(SMALL_VITS[name], num_classes=10)
    args.update(kwargs)
    return _create_vision_transformer(name, pretrained=pretrained, **args)


@register_model
def vit_nano_patch4_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT d64 L4 h4, patch 4 on 28x28 (0.21 M parameters)."""
    return _create("vit_nano_patch4_28", pretrained, **kwargs)


@register_model
def vit_micro_patch4_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT d96 L6 h3, patch 4 on 28x28 (0.68 M parameters; a 7x7 token grid for the P3B patch probes)."""
    return _create("vit_micro_patch4_28", pretrained, **kwargs)


@register_model
def vit_mini_patch7_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT d128 L6 h4, patch 7 on 28x28 (1.2 M parameters; 4x4 token grid, ~2.5x cheaper than patch 4)."""
    return _create("vit_mini_patch7_28", pretrained, **kwargs)


@register_model
def vit_micro_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT d96 L6 h3, patch 4 on 32x32 RGB (CIFAR-sized inputs)."""
    return _create("vit_micro_patch4_32", pretrained, **kwargs)

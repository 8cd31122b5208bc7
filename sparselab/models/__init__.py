"""Models by name: timm ViT/DeiT models, sparselab's small ViTs, and the HyperSparse paper's CNNs.

Example:
    >>> import sparselab as sl
    >>> m = sl.models.create("resnet20", num_classes=10, in_chans=1)
    >>> sum(p.numel() for p in m.parameters())
    272186
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import CheckpointError, ConfigError, unknown_name
from . import small_vit
from .checkpoints import load_into, read_state_dict
from .cifar import CifarResNet, CifarVGG, LeNet300100, cifar_resnet

_OWN: dict[str, Callable[..., nn.Module]] = {
    "resnet20": partial(cifar_resnet, 20),
    "resnet32": partial(cifar_resnet, 32),
    "resnet56": partial(cifar_resnet, 56),
    "resnet32_wide": partial(cifar_resnet, 32, widths=(32, 64, 128)),
    "vgg19_bn": lambda num_classes=10, in_chans=3, width=1.0, **_: CifarVGG(num_classes, in_chans, width),
    "lenet_300_100": lambda num_classes=10, in_chans=1, image_size=28, **_: LeNet300100(num_classes, in_chans,
                                                                                        image_size),
}
SOURCE_DATASETS = ("fashion_mnist",)


def available(include_timm: bool = False) -> list[str]:
    """sparselab's own model names (and with ``include_timm`` every timm ViT/DeiT name)."""
    names = sorted(_OWN) + sorted(small_vit.SMALL_VITS)
    if include_timm:
        import timm

        names += [n for n in timm.list_models(["vit_*", "deit*"]) if n not in names]
    return names


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def create(name: str, num_classes: int = 10, in_chans: int | None = None, pretrained: bool | str = False,
           **kwargs: Any) -> nn.Module:
    """Build a model by name.

    Args:
        name: one of :func:`available`, or any timm model name (e.g. ``"deit_small_patch16_224"``).
        num_classes: classifier outputs.
        in_chans: input channels (default: the model's own default).
        pretrained: ``False``; ``True`` for timm's hub weights (needs the network); a path to a local
            ``.safetensors``/``.pth`` checkpoint; or ``"fashion_mnist"`` for a small ViT pretrained by sparselab
            on Fashion-MNIST (trained once, reproducibly, and cached under ``data/``). A classifier head of another
            class count is replaced by a fresh one.
        **kwargs: passed to the constructor (e.g. ``drop_path_rate`` for timm, ``width`` for ``vgg19_bn``,
            ``image_size`` for ``lenet_300_100``); ``recipe`` picks the source-pretraining recipe.

    Example:
        >>> import sparselab as sl
        >>> sl.models.create("vit_nano_patch4_28", num_classes=5).head.out_features
        5
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    recipe = kwargs.pop("recipe", None)
    if isinstance(pretrained, str) and pretrained in SOURCE_DATASETS:
        from .pretrained import source_pretrained

        return source_pretrained(name, pretrained, num_classes=num_classes, in_chans=in_chans, recipe=recipe,
                                 **kwargs)
    path = None
    if isinstance(pretrained, (str, Path)):
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise CheckpointError(f"pretrained={str(pretrained)!r} is neither a checkpoint file nor one of "
                                  f"{SOURCE_DATASETS}")
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if name in _OWN:
        if pretrained is True:
            raise ConfigError(f"{name} has no hub weights; pass a checkpoint path or pretrained=False")
        model = _OWN[name](num_classes=num_classes, **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            raise unknown_name("model", name, available() + _timm_names(), listed=available(),
                               extra="or any timm model name (list them: sparselab models --all)")
        try:
            model = timm.create_model(name, pretrained=pretrained is True, num_classes=num_classes, **kwargs)
        except (OSError, RuntimeError) as exc:
            if pretrained is True:
                raise CheckpointError(
                    f"could not fetch timm hub weights for {name!r} ({type(exc).__name__}: {exc}). "
                    "Without network access pass pretrained=<path to a local checkpoint>.") from None
            raise
    if path is not None:
        state = read_state_dict(path)
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        if isinstance(model, VisionTransformer):
            state = checkpoint_filter_fn(state, model)
        load_into(model, state, source=f"checkpoint {path}")
    return model


def num_classes_of(model: nn.Module) -> int | None:
    """The model's class count (timm's ``num_classes`` or the last Linear layer's outputs)."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


__all__ = ["create", "available", "num_classes_of", "CifarResNet", "CifarVGG", "LeNet300100", "read_state_dict",
           "load_into"]

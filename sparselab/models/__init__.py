"""Models by name: timm ViT/DeiT models, sparselab's small ViTs, and the HyperSparse paper's CNNs.

Example:
    >>> import sparselab as sl
    >>> m = sl.models.create("resnet20", num_classes=10, in_chans=1)
    >>> sum(p.numel() for p in m.parameters())
    272186
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
from functools import partial
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import CheckpointError, ConfigError, UnknownNameError
from . import small_vit
from .checkpoints import load_into, read_state_dict
from .cifar import CifarResNet, CifarVGG, LeNet300100, cifar_resnet, positive_int

_OWN: dict[str, Callable[..., nn.Module]] = {
    "resnet20": partial(cifar_resnet, 20),
    "resnet32": partial(cifar_resnet, 32),
    "resnet56": partial(cifar_resnet, 56),
    "resnet32_wide": partial(cifar_resnet, 32, widths=(32, 64, 128)),
    "vgg19_bn": lambda num_classes=10, in_chans=3, width=1.0: CifarVGG(num_classes, in_chans, width),
    "lenet_300_100": lambda num_classes=10, in_chans=1, image_size=28: LeNet300100(num_classes, in_chans, image_size),
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


def _unknown_model(name: str) -> UnknownNameError:
    """The unknown-model error with suggestions: the names that start with (or contain) ``name``
    (``lenet`` -> ``lenet_300_100``), else close spellings; sparselab's own names before timm's."""
    own = available()
    everything = own + _timm_names()
    key = name.lower()
    close = []
    if len(key) >= 3:
        close = ([c for c in own if c.startswith(key)] or [c for c in own if key in c]
                 or [c for c in everything if c.startswith(key)])
    if not close:
        close = difflib.get_close_matches(name, own, n=3, cutoff=0.6)
        close += difflib.get_close_matches(name, everything, n=3, cutoff=0.6)
    close = list(dict.fromkeys(close))[:3]
    hint = (" Did you mean " + " or ".join(repr(c) for c in close) + "?") if close else ""
    return UnknownNameError(f"unknown model {name!r}.{hint} Available: {', '.join(own)}, or any timm model name "
                            f"(list them: sparselab models --all)")


def check_name(name: str) -> str:
    """Return ``name`` if it names a model (sparselab's or timm's), else raise :class:`UnknownNameError` with
    suggestions. Cheap: nothing is built.

    Example:
        >>> check_name("lenet")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sparselab.errors.UnknownNameError: unknown model 'lenet'. Did you mean 'lenet_300_100'? Available: ...
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a model name must be a non-empty string, got {name!r}")
    if name in _OWN or name in small_vit.SMALL_VITS:
        return name
    import timm

    if timm.is_model(name):
        return name
    raise _unknown_model(name)


def input_size(name: str) -> int | None:
    """The image side length a model is built for, where it is fixed by its name (sparselab's small ViTs);
    None otherwise.

    Example:
        >>> input_size("vit_micro_patch4_32"), input_size("resnet20")
        (32, None)
    """
    spec = small_vit.SMALL_VITS.get(name)
    return spec["img_size"] if spec else None


def check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    """Refuse, before training, data whose image size a ViT with a fixed input size cannot take."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None or getattr(model, "dynamic_img_size", False) or not getattr(embed, "strict_img_size", True):
        return
    if tuple(size) != (image_size, image_size):
        raise ConfigError(f"{name} takes {size[0]}x{size[1]} images, but the data is {image_size} px; load it with "
                          f"image_size={size[0]} (command line: --image-size {size[0]})")


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
            class count is replaced by a fresh one; a ViT checkpoint for another image or patch size has its
            position and patch embeddings resampled, with a warning. Weights that do not fit otherwise, or hold NaN
            or infinite values, raise :class:`CheckpointError`.
        **kwargs: passed to the constructor (e.g. ``drop_path_rate`` for timm, ``width`` for ``vgg19_bn``,
            ``image_size`` for ``lenet_300_100``); ``recipe`` picks the source-pretraining recipe (refused with
            ``pretrained=True`` or a path; unused with ``pretrained=False``).

    Example:
        >>> import sparselab as sl
        >>> sl.models.create("vit_nano_patch4_28", num_classes=5).head.out_features
        5
    """
    check_name(name)  # a typo is an unknown model, not a pretrained-weights problem
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if in_chans is not None:
        in_chans = positive_int("in_chans", in_chans)
    if pretrained is None:
        pretrained = False
    if not isinstance(pretrained, (bool, str, os.PathLike)) or (isinstance(pretrained, str) and not pretrained):
        raise ConfigError(f"pretrained must be False, True (timm hub weights), a checkpoint path or one of "
                          f"{SOURCE_DATASETS}, got {pretrained!r}")
    recipe = kwargs.pop("recipe", None)  # used by pretrained=<source dataset> only
    if isinstance(pretrained, str) and pretrained in SOURCE_DATASETS:
        from .pretrained import source_pretrained

        return source_pretrained(name, pretrained, num_classes=num_classes, in_chans=in_chans, recipe=recipe,
                                 **kwargs)
    if recipe is not None:
        from .pretrained import check_recipe

        check_recipe(recipe)
        if pretrained is not False:  # a preset's recipe may stay set when its source pretraining is switched off
            raise ConfigError(f"recipe={recipe!r} picks how a source model is pretrained; it applies with "
                              f"pretrained= one of {SOURCE_DATASETS}, not pretrained={str(pretrained)!r}")
    path = None
    if isinstance(pretrained, (str, Path, os.PathLike)):
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise CheckpointError(f"pretrained={str(pretrained)!r} is neither a checkpoint file nor one of "
                                  f"{SOURCE_DATASETS}")
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if pretrained is True and (name in _OWN or name in small_vit.SMALL_VITS):
        other = f"pretrained={SOURCE_DATASETS[0]!r}, " if name in small_vit.SMALL_VITS else ""
        raise ConfigError(f"{name} has no hub weights; pass {other}a checkpoint path or pretrained=False")
    if name in _OWN:
        allowed = [p.name for p in inspect.signature(_OWN[name]).parameters.values()
                   if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "num_classes"]
        for key in kwargs:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                raise ConfigError(f"unknown option {key!r} for model {name!r}."
                                  + (f" Did you mean {close[0]!r}?" if close else "")
                                  + f" Allowed: {', '.join(allowed)}")
        model = _OWN[name](num_classes=num_classes, **kwargs)
    else:
        import timm

        try:
            model = timm.create_model(name, pretrained=pretrained is True, num_classes=num_classes, **kwargs)
        except (OSError, RuntimeError) as exc:
            if pretrained is True:
                raise CheckpointError(
                    f"could not fetch timm hub weights for {name!r} ({type(exc).__name__}: {exc}). "
                    "Without network access pass pretrained=<path to a local checkpoint>.") from None
            raise
        except TypeError as exc:  # an option the model's constructor does not take
            if not kwargs:
                raise
            found = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            what = f"unknown option {found.group(1)!r}" if found else f"options it cannot take ({exc})"
            raise ConfigError(f"{what} for model {name!r} (given: {', '.join(sorted(kwargs))}); see the "
                              f"constructor of {name} in timm for its options") from None
    if path is not None:
        state = read_state_dict(path)
        from timm.models.vision_transformer import VisionTransformer

        resampled = []
        if isinstance(model, VisionTransformer):
            state, resampled = _vit_checkpoint(state, model, path)
        load_into(model, state, source=f"checkpoint {path}")
        if resampled:
            import warnings

            grid = "x".join(map(str, model.patch_embed.grid_size))
            warnings.warn(f"checkpoint {path} was trained for another image or patch size; its weights were "
                          f"resampled to the model's {grid} patch grid: {'; '.join(resampled)}", stacklevel=2)
    return model


def _vit_checkpoint(state: dict[str, Any], model: nn.Module, path: Path) -> tuple[dict[str, Any], list[str]]:
    """``state`` converted by timm for ``model`` (other checkpoint layouts; the position and patch embeddings
    resampled to the model's grid and patch), and what was resampled."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    own = model.state_dict()
    if "blocks.0.norm1.weight" in state and "pos_embed" in state:  # timm's own layout: its tokens can be read off
        theirs, ours = _prefix_tokens(state), _prefix_tokens(own)
        if theirs != ours:
            def say(t: dict[str, int]) -> str:
                return ", ".join(f"{n} {k}" for k, n in t.items() if n) or "none"
            hint = (f"; create the model with class_token={bool(theirs['class token'])}, "
                    f"reg_tokens={theirs['register tokens']} to load it"
                    if theirs["distillation token"] == ours["distillation token"] else
                    "; a distillation token belongs to the *_distilled models")
            raise CheckpointError(f"checkpoint {path} has other tokens before the patch tokens than "
                                  f"{type(model).__name__}: {say(theirs)} in the checkpoint, {say(ours)} in the "
                                  f"model{hint}")
    resampled = [f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}"
                 for k in ("pos_embed", "patch_embed.proj.weight") if k in state and k in own
                 and state[k].dim() == own[k].dim() and state[k].shape != own[k].shape
                 and (k == "pos_embed" or state[k].shape[:2] == own[k].shape[:2])]
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as exc:  # timm's conversion assumes a well-formed ViT checkpoint
        raise CheckpointError(f"checkpoint {path} does not match {type(model).__name__}: its ViT weights could "
                              f"not be converted ({type(exc).__name__}: {exc})") from None
    return state, resampled


def _prefix_tokens(state: dict[str, Any]) -> dict[str, int]:
    """The tokens a ViT state dict puts before the patch tokens: class, register and distillation tokens."""
    def count(key: str) -> int:
        t = state.get(key)
        return int(t.shape[1]) if t is not None and t.dim() == 3 else 0
    return {"class token": count("cls_token"), "register tokens": count("reg_token"),
            "distillation token": count("dist_token")}


def num_classes_of(model: nn.Module) -> int | None:
    """The model's class count (timm's ``num_classes`` or the last Linear layer's outputs)."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


__all__ = ["create", "available", "check_name", "input_size", "check_input_size", "num_classes_of", "CifarResNet",
           "CifarVGG", "LeNet300100", "read_state_dict", "load_into"]

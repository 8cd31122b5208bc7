"""What a model costs to run: :func:`compact_stats` counts the parameters and multiply-accumulates of one forward
pass of a (compact or dense) timm ViT, and :func:`latency_ms` measures CPU/GPU inference latency the same way
everywhere (:mod:`sparselab.latency` re-exports it).

Example:
    >>> import torch
    >>> ms = latency_ms(torch.nn.Linear(8, 8), (8,), batch_size=4, repeats=5)
    >>> ms > 0
    True
"""
from __future__ import annotations

import itertools
import numbers
import operator
import statistics
import time
from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError, check_positive_int
from .runtime import evaluating


@torch.inference_mode()
def latency_ms(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 20,
               warmup: int = 3, device: str | torch.device | None = None) -> float:
    """Median wall time in milliseconds of one forward pass on a random batch (model in eval mode, the batch in the
    floating-point type of its parameters), on ``device`` (default: where the model's parameters or buffers are;
    the CPU for a model without either).

    Raises:
        ConfigError: counts that are not positive integers, an ``input_shape`` that is not a sequence of positive
            integers, a ``device`` that names no device or not the one the model's parameters are on (the model is
            not moved), or a model that cannot take such a batch (the message quotes the model's own error).
    """
    _check_model(model, "latency_ms")
    check_positive_int("repeats", repeats)
    check_positive_int("batch_size", batch_size)
    check_positive_int("warmup", warmup, allow_zero=True)
    device = _device(model) if device is None else _check_device(model, _as_device(device))
    with evaluating(model):
        x = random_batch(model, input_shape, batch_size, device)
        times = []
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x) if i else checked_call(model, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _check_model(model: object, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} times a torch nn.Module, got {type(model).__name__}")


def _as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device must name a torch device such as 'cpu' or 'cuda:0' (or be None: where the "
                          f"model is), got {device!r}") from None


def _check_device(model: nn.Module, device: torch.device) -> torch.device:
    """``device`` when the model's parameters (or buffers) are there: the model is timed where it is, not moved."""
    own = next(itertools.chain(model.parameters(), model.buffers()), None)
    if own is not None and (own.device.type != device.type
                            or None not in (own.device.index, device.index) and own.device.index != device.index):
        raise ConfigError(f"latency_ms was asked to time on device {str(device)!r}, but the model's parameters are "
                          f"on {str(own.device)!r}; move the model there (model.to(device)) or leave device out")
    return device


def random_batch(model: nn.Module, input_shape: Sequence[int], batch_size: int, device: torch.device | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A standard-normal batch of ``batch_size`` inputs of ``input_shape`` in the floating-point type of ``model``'s
    parameters (the default type for a model without floating-point parameters or buffers)."""
    try:
        items = [] if isinstance(input_shape, (str, bytes)) else list(input_shape)
        shape = tuple(operator.index(n) for n in items)
    except TypeError:
        items, shape = [], ()
    if not shape or any(isinstance(n, bool) for n in items) or min(shape) < 1:
        raise ConfigError(f"input_shape must be a sequence of positive integers (one input without the batch "
                          f"dimension, e.g. (3, 224, 224)), got {input_shape!r}")
    return torch.randn(batch_size, *shape, device=device, dtype=_float_dtype(model), generator=generator)


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    """The type of ``model``'s first floating-point parameter or buffer (None: it has none)."""
    return next((t.dtype for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()),
                None)


def checked_call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, where a model that cannot take ``x`` (wrong input shape, device or type) raises
    :class:`ConfigError` saying so."""
    try:
        return model(x)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"{type(model).__name__} cannot take a random batch of shape {tuple(x.shape)} "
                          f"({x.dtype}, on {x.device}): {type(e).__name__}: {e}") from e


def latency_against(model: nn.Module, reference: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                    repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """``model`` timed against ``reference`` round by round on the same batch (on the models' device), the order
    alternating, so that a busy spell of the machine slows both alike: the median milliseconds of each, and the
    median of the per-round ratios ``reference / model`` (the speed-up) with its interquartile range (a wide one
    says the timing was disturbed).

    Example:
        >>> m = torch.nn.Linear(8, 8)
        >>> r = latency_against(m, m, (8,), batch_size=4, repeats=5)
        >>> sorted(r), 0.2 < r["speedup"] < 5
        (['model_ms', 'reference_ms', 'speedup', 'speedup_q1', 'speedup_q3'], True)
    """
    _check_model(model, "latency_against")
    _check_model(reference, "latency_against")
    check_positive_int("repeats", repeats)
    check_positive_int("batch_size", batch_size)
    check_positive_int("warmup", warmup, allow_zero=True)
    models = (reference, model)
    device = _device(model)
    if _device(reference) != device:
        raise ConfigError(f"latency_against times both models on one batch, but the model is on {device} and the "
                          f"reference on {_device(reference)}; move them to one device")
    with evaluating(reference, model):
        if _float_dtype(model) != _float_dtype(reference):
            raise ConfigError(f"latency_against times both models on one batch, but the model computes in "
                              f"{_float_dtype(model)} and the reference in {_float_dtype(reference)}; convert them "
                              f"to one type")
        x = random_batch(model, input_shape, batch_size, device)
        times: tuple[list[float], list[float]] = ([], [])
        with torch.inference_mode():
            for i in range(warmup + repeats):
                for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                    if device.type == "cuda":  # kernels run asynchronously: time them, not their launch
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    models[j](x) if i else checked_call(models[j], x)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if i >= warmup:
                        times[j].append((time.perf_counter() - t0) * 1000)
    ratios = sorted(a / b for a, b in zip(*times))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"model_ms": statistics.median(times[1]), "reference_ms": statistics.median(times[0]),
            "speedup": statistics.median(ratios), "speedup_q1": q[0], "speedup_q3": q[2]}


def _device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) lives; the CPU for a model with neither."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def compact_stats(model: nn.Module, image_size: int | Sequence[int] | None = None) -> dict[str, int]:
    """Parameters and multiply-accumulates (MACs) of one forward pass on one image of a (compact or dense) ViT.

    Counted: the patch-embedding convolution (once per output position), every ``nn.Linear`` inside
    ``model.blocks`` once per token, the two attention matmuls of every timm ``Attention`` inside the blocks
    (q·k and attn·v: ``tokens^2 x heads x head_dim x 2``), a timm ``AttentionPoolLatent`` (``global_pool="map"``:
    its ``kv`` once per pooled token, its other Linear layers once per latent query, its two matmuls ``latent x
    pooled tokens x dim x 2``) and every other ``nn.Linear`` (the heads) once, or once per token for a model that
    pools nothing (``global_pool=""``: its head classifies every token).
    Not counted: norms, activations, softmax, additions, LayerScale, channel select/scatter and constant
    branches. ``tokens`` is the number of patches plus the prefix tokens.

    ``image_size`` (an int for a square image, or ``(height, width)``) is the image the pass is counted at; None:
    the size the model was created for. A model created with timm's ``dynamic_img_size=True`` takes other sizes:
    multiples of the patch size, or any size with ``dynamic_img_pad=True`` (the image is padded up to whole
    patches, which are counted).

    Raises:
        ConfigError: a model that is not a timm ViT; an ``image_size`` that is not a positive int or (height,
            width) pair, or one the model cannot take (another size for a model of fixed image size, a size not
            divisible by the patch size without ``dynamic_img_pad``, or smaller than one patch); no
            ``image_size`` for a model created without one (``img_size=None``).

    Example:
        >>> import timm
        >>> s = compact_stats(timm.create_model("vit_nano_patch4_28", num_classes=10))
        >>> s["params"], s["tokens"], s["flops"] > 0
        (205066, 50, True)
        >>> m = timm.create_model("vit_nano_patch4_28", num_classes=10, dynamic_img_size=True)
        >>> compact_stats(m, image_size=(32, 16))["tokens"]  # an 8x4 patch grid and the class token
        33
    """
    from timm.layers import Attention, AttentionPoolLatent

    if not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
        raise ConfigError(f"{type(model).__name__} is not a timm VisionTransformer (no .patch_embed/.blocks)")
    pe = model.patch_embed
    grid = _patch_grid(model, image_size)
    patches = int(grid[0] * grid[1])
    tokens = patches + int(getattr(model, "num_prefix_tokens", 1))
    macs = 0
    conv = getattr(pe, "proj", None)
    if isinstance(conv, nn.Conv2d):
        k = conv.kernel_size[0] * conv.kernel_size[1]
        macs += conv.out_channels * (conv.in_channels // conv.groups) * k * patches
    block_modules = set()
    for m in model.blocks.modules():
        block_modules.add(id(m))
        if isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features * tokens
        elif isinstance(m, Attention):
            macs += 2 * tokens * tokens * m.num_heads * m.head_dim
    # attention pooling (global_pool="map"): latent queries over the patch tokens (and the prefix tokens with
    # pool_include_prefix)
    pooled = tokens if getattr(model, "pool_include_prefix", False) else patches
    for pool in model.modules():
        if isinstance(pool, AttentionPoolLatent) and id(pool) not in block_modules:
            latent = int(pool.latent_len)
            macs += pool.kv.in_features * pool.kv.out_features * pooled
            macs += 2 * latent * pooled * pool.num_heads * pool.head_dim
            block_modules.add(id(pool.kv))
            for m in pool.modules():
                if isinstance(m, nn.Linear) and id(m) not in block_modules:
                    macs += m.in_features * m.out_features * latent
                block_modules.add(id(m))
    # the head reads one pooled vector per image, or every token of a model that pools nothing (global_pool="")
    head_rows = tokens if _pools_nothing(model) else 1
    for m in model.modules():
        if id(m) not in block_modules and isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features * head_rows
    return {"params": sum(p.numel() for p in model.parameters()), "flops": int(macs), "tokens": tokens}


def _patch_grid(model: nn.Module, image_size: int | Sequence[int] | None) -> tuple[int, int]:
    """The (rows, columns) patch grid ``model`` cuts an image of ``image_size`` into (None: the size it was
    created for), following timm's ``PatchEmbed``: a fixed size unless ``strict_img_size`` is off, then multiples
    of the patch size, or any size padded up to whole patches with ``dynamic_img_pad``."""
    pe = model.patch_embed
    name = type(model).__name__
    created = getattr(pe, "img_size", None)
    if image_size is None:
        grid = getattr(pe, "grid_size", None)
        if grid is None:
            raise ConfigError(f"{name} was created without an image size (img_size=None), so it has no patch grid "
                              f"to count at: pass image_size=(height, width), or an int for a square image")
        return int(grid[0]), int(grid[1])
    size = _image_size(image_size)
    patch = getattr(pe, "patch_size", None)
    if patch is None:
        raise ConfigError(f"{name}.patch_embed ({type(pe).__name__}) has no patch_size, so the patch grid of "
                          f"another image size is not known; leave image_size out to count at the created size")
    patch = (int(patch), int(patch)) if isinstance(patch, numbers.Integral) else (int(patch[0]), int(patch[1]))
    pad = bool(getattr(pe, "dynamic_img_pad", False))
    if created is not None:
        created = (int(created[0]), int(created[1]))
        if getattr(pe, "strict_img_size", True):
            if size != created:
                raise ConfigError(f"{name} takes only images of {created[0]}x{created[1]}, the size it was created "
                                  f"for (create it with dynamic_img_size=True to take others), got image_size "
                                  f"{size[0]}x{size[1]}")
            return int(pe.grid_size[0]), int(pe.grid_size[1])
        if not pad and (size[0] % patch[0] or size[1] % patch[1]):
            raise ConfigError(f"{name} takes images whose height and width are multiples of its patch size "
                              f"{patch[0]}x{patch[1]} (or any size with dynamic_img_pad=True), got image_size "
                              f"{size[0]}x{size[1]}")
    if pad:
        return -(-size[0] // patch[0]), -(-size[1] // patch[1])
    grid = size[0] // patch[0], size[1] // patch[1]
    if min(grid) < 1:
        raise ConfigError(f"image_size {size[0]}x{size[1]} is smaller than one {patch[0]}x{patch[1]} patch of "
                          f"{name}")
    return grid


def _image_size(image_size: object) -> tuple[int, int]:
    """``image_size`` (an int, or a (height, width) pair of ints) as (height, width)."""
    items = [image_size] * 2 if isinstance(image_size, numbers.Integral) else image_size
    try:
        h, w = items
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in (h, w)):
            raise TypeError
    except (TypeError, ValueError):
        raise ConfigError(f"image_size must be a positive int (a square image) or a (height, width) pair of "
                          f"positive ints, got {image_size!r}") from None
    return int(h), int(w)


def _pools_nothing(model: nn.Module) -> bool:
    """Whether ``model`` is a timm VisionTransformer whose head reads every token: no attention pooling and an
    empty ``global_pool`` (a distilled model reads its two prefix tokens whatever ``global_pool`` says)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    return (isinstance(model, VisionTransformer) and not isinstance(model, VisionTransformerDistilled)
            and getattr(model, "attn_pool", None) is None and not getattr(model, "global_pool", "token"))


__all__ = ["compact_stats", "latency_ms"]

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
import statistics
import time
from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError, check_positive_int


@torch.inference_mode()
def latency_ms(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 20,
               warmup: int = 3, device: str | torch.device | None = None) -> float:
    """Median wall time in milliseconds of one forward pass on a random batch (model in eval mode), on ``device``
    (default: where the model's parameters or buffers are; the CPU for a model without either)."""
    check_positive_int("repeats", repeats)
    check_positive_int("batch_size", batch_size)
    check_positive_int("warmup", warmup, allow_zero=True)
    device = torch.device(device) if device is not None else _device(model)
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return statistics.median(times)


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
    check_positive_int("repeats", repeats)
    check_positive_int("batch_size", batch_size)
    check_positive_int("warmup", warmup, allow_zero=True)
    models = (reference, model)
    device = _device(model)
    if _device(reference) != device:
        raise ConfigError(f"latency_against times both models on one batch, but the model is on {device} and the "
                          f"reference on {_device(reference)}; move them to one device")
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                if device.type == "cuda":  # kernels run asynchronously: time them, not their launch
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                models[j](x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times[j].append((time.perf_counter() - t0) * 1000)
    for m, mode in zip(models, modes):
        m.train(mode)
    ratios = sorted(a / b for a, b in zip(*times))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"model_ms": statistics.median(times[1]), "reference_ms": statistics.median(times[0]),
            "speedup": statistics.median(ratios), "speedup_q1": q[0], "speedup_q3": q[2]}


def _device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) lives; the CPU for a model with neither."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def compact_stats(model: nn.Module) -> dict[str, int]:
    """Parameters and multiply-accumulates (MACs) of one forward pass on one image of a (compact or dense) ViT.

    Counted: the patch-embedding convolution (once per output position), every ``nn.Linear`` inside
    ``model.blocks`` once per token, the two attention matmuls of every timm ``Attention`` inside the blocks
    (q·k and attn·v: ``tokens^2 x heads x head_dim x 2``) and every other ``nn.Linear`` (the heads) once.
    Not counted: norms, activations, softmax, additions, LayerScale, channel select/scatter and constant
    branches. ``tokens`` is the number of patches at the configured image size plus the prefix tokens.

    Example:
        >>> import timm
        >>> s = compact_stats(timm.create_model("vit_nano_patch4_28", num_classes=10))
        >>> s["params"], s["tokens"], s["flops"] > 0
        (205066, 50, True)
    """
    from timm.layers import Attention

    if not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
        raise ConfigError(f"{type(model).__name__} is not a timm VisionTransformer (no .patch_embed/.blocks)")
    pe = model.patch_embed
    grid = tuple(pe.grid_size)
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
    for m in model.modules():
        if id(m) not in block_modules and isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features
    return {"params": sum(p.numel() for p in model.parameters()), "flops": int(macs), "tokens": tokens}


__all__ = ["compact_stats", "latency_ms"]

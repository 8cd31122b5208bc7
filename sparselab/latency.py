"""CPU/GPU inference latency of a model, measured the same way everywhere.

Example:
    >>> import torch
    >>> ms = latency_ms(torch.nn.Linear(8, 8), (8,), batch_size=4, repeats=5)
    >>> ms > 0
    True
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from torch import nn


@torch.inference_mode()
def latency_ms(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 20,
               warmup: int = 3, device: str | torch.device | None = None) -> float:
    """Median wall time in milliseconds of one forward pass on a random batch (model in eval mode)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
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

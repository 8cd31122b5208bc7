"""CPU/GPU inference latency of a model, measured the same way everywhere.

The implementation lives in :mod:`sparselab.cost`, next to parameter and multiply-accumulate counting
(:func:`~sparselab.cost.compact_stats`); this module re-exports :func:`latency_ms`.

Example:
    >>> import torch
    >>> ms = latency_ms(torch.nn.Linear(8, 8), (8,), batch_size=4, repeats=5)
    >>> ms > 0
    True
"""
from __future__ import annotations

from .cost import latency_ms

__all__ = ["latency_ms"]

"""Batch iteration that is identical under any number of processes.

Every process draws the same permutation of the training split for an epoch (seeded by ``seed`` and the epoch)
and cuts it into the same global batches; process ``r`` of ``w`` then takes chunk ``r`` of each global batch.
In-memory datasets are indexed directly and augmented for the whole global batch before the chunk is taken, so
``w`` processes see exactly what one process with the same global batches would see.

Example:
    >>> import torch
    >>> from sparselab.data import TensorImages
    >>> ds = TensorImages(torch.zeros(10, 1, 4, 4), torch.arange(10))
    >>> order = epoch_order(len(ds), seed=0, epoch=0)
    >>> [len(b) for b in global_batches(order, 4, drop_last=True)]
    [4, 4]
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import TensorImages


def to_model_input(x: torch.Tensor, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """Move a batch to ``device`` in the model's floating dtype (so float64 models work too)."""
    dtype = next(model.parameters()).dtype
    return x.to(device, dtype=dtype if x.is_floating_point() and dtype.is_floating_point else None,
                non_blocking=True)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batches(order: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
    batches = list(order.split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def local_chunk(batch: torch.Tensor, rank: int, world_size: int) -> slice:
    """The slice of a global batch that belongs to ``rank`` (contiguous, sizes differ by at most one)."""
    n = len(batch)
    start = (n * rank) // world_size
    stop = (n * (rank + 1)) // world_size
    return slice(start, stop)


def train_batches(dataset: Dataset, batches: list[torch.Tensor], start: int, generator: torch.Generator, rank: int,
                  world_size: int, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this process's part of global batches ``batches[start:]``."""
    if isinstance(dataset, TensorImages):
        for idx in batches[start:]:
            x, y = dataset.get_batch(idx, generator, train=True)
            part = local_chunk(idx, rank, world_size)
            yield x[part], y[part]
        return
    local = [idx[local_chunk(idx, rank, world_size)].tolist() for idx in batches[start:]]
    yield from DataLoader(dataset, batch_sampler=local, num_workers=num_workers)


def eval_batches(dataset: Dataset, batch_size: int, rank: int, world_size: int,
                 num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this process's share (every ``world_size``-th item) of an evaluation split."""
    idx = torch.arange(rank, len(dataset), world_size)
    if isinstance(dataset, TensorImages):
        for part in idx.split(batch_size):
            yield dataset.get_batch(part)
        return
    yield from DataLoader(torch.utils.data.Subset(dataset, idx.tolist()), batch_size=batch_size,
                          num_workers=num_workers)

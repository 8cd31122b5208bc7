"""Batch iteration that is identical under any number of processes.

Every process draws the same permutation of the training split for an epoch (seeded by ``seed`` and the epoch)
and cuts it into the same global batches; process ``r`` of ``w`` then takes chunk ``r`` of each global batch.
In-memory datasets are indexed directly and augmented for the whole global batch before the chunk is taken, so
``w`` processes see exactly what one process with the same global batches would see.

Datasets read through a DataLoader (image files, transforms applied per item) draw each item's random
augmentation from the item's own seed, a function of the run's seed, the epoch and the item's place in the
epoch's batches (:class:`SeededItems`): what an item looks like does not depend on the process or loader worker
that reads it, nor on where a resumed run picks the epoch up, and the training loop's own random state is left
untouched.

With gradient accumulation the permutation is cut into effective batches (``batch_size * accumulate_steps``)
first and each of those into ``accumulate_steps`` micro-batches, so that accumulating 2 x 32 visits exactly the
images of one batch of 64. With repeated augmentation the order comes from timm's ``RepeatAugSampler``: process
``r`` takes what the sampler gives replica ``r`` of ``w`` (as under timm's own distributed training), and global
batch ``b`` is the concatenation of every process's ``b``-th local batch.

Example:
    >>> import torch
    >>> from sparselab.data import TensorImages
    >>> ds = TensorImages(torch.zeros(10, 1, 4, 4), torch.arange(10))
    >>> order = epoch_order(len(ds), seed=0, epoch=0)
    >>> [len(b) for b in global_batches(order, 4, drop_last=True)]
    [4, 4]
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .datasets import TensorImages


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


def epoch_groups(n: int, batch_size: int, accumulate_steps: int, drop_last: bool, seed: int, epoch: int,
                 repeated_aug: int = 1, world_size: int = 1) -> list[list[torch.Tensor]]:
    """The epoch's optimizer steps: each a list of ``accumulate_steps`` global micro-batches of dataset indices.

    Example:
        >>> groups = epoch_groups(10, batch_size=2, accumulate_steps=2, drop_last=True, seed=0, epoch=0)
        >>> len(groups), [len(b) for b in groups[0]]
        (2, [2, 2])
    """
    effective = batch_size * accumulate_steps
    if repeated_aug == 1:
        steps = global_batches(epoch_order(n, seed, epoch), effective, drop_last)
        return [list(step.split(batch_size)) for step in steps]
    if batch_size % world_size:
        raise ConfigError(f"repeated augmentation needs a batch_size divisible by the {world_size} processes, "
                          f"got {batch_size}")
    from timm.data.distributed_sampler import RepeatAugSampler

    streams = []
    for rank in range(world_size):
        sampler = RepeatAugSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                   num_repeats=repeated_aug)
        sampler.set_epoch(seed * 100_003 + epoch)  # timm seeds its shuffle with the epoch alone
        streams.append(torch.tensor(list(sampler), dtype=torch.long))
    local = batch_size // world_size
    per_rank = [list(s.split(local)) for s in streams]
    micro = [torch.cat([chunks[i] for chunks in per_rank]) for i in range(len(per_rank[0]))]
    if drop_last and micro and len(micro[-1]) < batch_size:
        micro.pop()
    groups = [micro[i:i + accumulate_steps] for i in range(0, len(micro), accumulate_steps)]
    if drop_last and groups and len(groups[-1]) < accumulate_steps:
        groups.pop()
    return groups


def local_chunk(batch: torch.Tensor, rank: int, world_size: int) -> slice:
    """The slice of a global batch that belongs to ``rank`` (contiguous, sizes differ by at most one)."""
    n = len(batch)
    start = (n * rank) // world_size
    stop = (n * (rank + 1)) // world_size
    return slice(start, stop)


def item_seed(epoch_seed: int, batch: int, position: int) -> int:
    """The seed of the item at ``position`` of global micro-batch ``batch`` of the epoch seeded ``epoch_seed``.

    Example:
        >>> item_seed(7, 0, 1) != item_seed(7, 1, 0)
        True
    """
    return ((epoch_seed * 1_000_003 + batch) * 100_019 + position) % (2 ** 63)


class SeededItems(Dataset):
    """``dataset`` read by ``(seed, index)`` pairs: item ``index`` is loaded with torch's, Python's and numpy's
    global generators seeded by ``seed`` (where transforms such as timm's RandAugment draw), and the generators'
    states are restored afterwards, so the caller's random state stays as it was.

    Example:
        >>> class Noisy(Dataset):
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return torch.rand(()).item(), i
        >>> items = SeededItems(Noisy())
        >>> items[(5, 0)] == items[(5, 3)][:1] + (0,), items[(5, 0)] != items[(6, 0)]
        (True, True)
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2 ** 32)
                return self.dataset[index]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def train_batches(dataset: Dataset, batches: list[torch.Tensor], generator: torch.Generator, rank: int,
                  world_size: int, num_workers: int = 0, epoch_seed: int = 0,
                  first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this process's part of each global batch in ``batches``.

    In-memory datasets draw their augmentation from ``generator``. Others are read through a DataLoader, each item
    under :func:`item_seed` of ``epoch_seed``, its batch's place in the epoch (``batches`` start at the epoch's
    micro-batch ``first``) and its place in the global batch.
    """
    if isinstance(dataset, TensorImages):
        for idx in batches:
            x, y = dataset.get_batch(idx, generator, train=True)
            part = local_chunk(idx, rank, world_size)
            yield x[part], y[part]
        return
    local = []
    for b, idx in enumerate(batches, start=first):
        keyed = [(item_seed(epoch_seed, b, j), int(i)) for j, i in enumerate(idx.tolist())]
        part = local_chunk(idx, rank, world_size)
        local.append(keyed[part])
    # a generator of its own: a DataLoader draws its workers' base seed from torch's global one otherwise, which a
    # resume mid-epoch would draw again (every later dropout draw shifted); the items are seeded by SeededItems
    yield from DataLoader(SeededItems(dataset), batch_sampler=local, num_workers=num_workers,
                          generator=torch.Generator())


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

"""What every layer needs at run time, below the data, models and the training loop: the process-group helpers
(unchanged in a single process and under ``torchrun``), mixed-precision autocast, and the task loss that the model,
the probes and ART's checks share.

Example:
    >>> world()
    (0, 1)
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import ConfigError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_if_launched(device: torch.device) -> bool:
    """Initialise the default process group when started by torchrun; returns True if distributed.

    On CUDA the group gets NCCL for GPU tensors and Gloo for CPU tensors: the training loop and the evaluation
    all-reduce their metric sums and flags on the CPU, which NCCL alone cannot do.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched_by_torchrun():
        return False
    dist.init_process_group(backend=process_group_backend(device))
    return True


def process_group_backend(device: torch.device) -> str:
    """The ``init_process_group`` backend for training on ``device``.

    Example:
        >>> process_group_backend(torch.device("cuda", 0)), process_group_backend(torch.device("cpu"))
        ('cpu:gloo,cuda:nccl', 'gloo')
    """
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def world() -> tuple[int, int]:
    """(rank, world_size) of this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def local_device(device: str | torch.device | None) -> torch.device:
    """The device to train on: the given one, else this process's GPU when CUDA exists, else the CPU."""
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device {device!r} is not a device torch knows ({e})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}, but CUDA is not available here (torch.cuda.is_available() is "
                              f"False): use device='cpu' or None")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@contextlib.contextmanager
def evaluating(*models: torch.nn.Module):
    """Run the block with ``models`` in eval mode, then give each module and submodule its own mode back (a frozen
    part may be in eval mode while the model trains).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> _ = net[1].eval()
        >>> with evaluating(net):
        ...     net.training
        False
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def amp_dtype(name: str | None) -> torch.dtype:
    """The autocast dtype for ``TrainConfig.amp_dtype`` (None: bfloat16 where the GPU supports it)."""
    if name is None:
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if name in ("bfloat16", "bf16") else torch.float16


def amp_enabled(device: torch.device, amp: bool | None) -> bool:
    """Whether to autocast on ``device``: ``amp`` as given, None: on for CUDA (evaluation's default).

    Example:
        >>> amp_enabled(torch.device("cpu"), None), amp_enabled(torch.device("cpu"), True)
        (False, True)
    """
    return device.type == "cuda" if amp is None else bool(amp)


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """Mixed precision on ``device`` in ``dtype`` (None: :func:`amp_dtype`'s default) when ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype or amp_dtype(None))


def task_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
              reduction: str = "mean") -> torch.Tensor:
    """The training loss: soft-target cross-entropy for (mixed, smoothed) target distributions ``(B, C)``,
    cross-entropy with ``label_smoothing`` for class indices ``(B,)``.

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 4)
        >>> hard, soft = task_loss(logits, torch.tensor([0, 1])), task_loss(logits, torch.full((2, 4), .25))
        >>> round(hard.item(), 4), round(soft.item(), 4)
        (1.3863, 1.3863)
    """
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast outputs; float64 stays float64
        logits = logits.float()
    if targets.ndim == 2:
        loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1)
        return loss.mean() if reduction == "mean" else loss
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)

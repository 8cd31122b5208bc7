"""Evaluation of a model on a dataset: mean loss and accuracy, shared by the training loop and by pruners that
measure a model while training runs (ART's pruned copy). Under torchrun every process evaluates a share and the
results are summed across processes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import runtime as dist_utils
from .data.batches import eval_batches, to_model_input
from .data.datasets import DataBundle
from .errors import ConfigError, check_bool, check_positive_int
from .runtime import amp_enabled, autocast

#: the precisions :func:`evaluate` can autocast to
AMP_DTYPES = (torch.bfloat16, torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 512, device: str | torch.device | None = None,
             amp: bool | None = None, num_workers: int = 0, *,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and accuracy ``acc`` of ``model`` on a dataset (or a bundle's test split).

    ``amp`` (None: on for CUDA) runs the model under autocast in ``amp_dtype`` (``torch.bfloat16`` or
    ``torch.float16``; None: bfloat16 where the GPU supports it), the precision a run trained in.
    Under torchrun every process evaluates a share and the results are summed across processes.

    Example:
        >>> import sparselab as sl
        >>> data = sl.data.load("digits", image_size=8)
        >>> m = sl.models.create("lenet_300_100", image_size=8)
        >>> sorted(sl.evaluate(m, data.test))
        ['acc', 'loss']
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"evaluate needs a torch nn.Module, got {type(model).__name__}")
    if isinstance(dataset, DataBundle):
        dataset = dataset.split("test")
    if dataset is None or (hasattr(dataset, "__len__") and len(dataset) == 0):
        raise ConfigError("evaluate needs a dataset with at least one image, got "
                          + ("None (the bundle has no such split)" if dataset is None else "an empty one"))
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")) or isinstance(dataset, (str, bytes)):
        raise ConfigError(f"evaluate needs a dataset of (image, label) pairs (a split of a DataBundle, a "
                          f"TensorImages or a torch Dataset with a length), got {type(dataset).__name__}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_workers", num_workers, allow_zero=True)
    check_bool("amp", amp, optional=True)
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype must be one of torch.bfloat16, torch.float16 or None, got {amp_dtype!r}")
    first = next(model.parameters(), None)
    if first is None:
        raise ConfigError(f"evaluate needs a model with parameters; {type(model).__name__} has none")
    device = dist_utils.local_device(device) if device is not None else first.device
    amp = amp_enabled(device, amp)
    rank, world = dist_utils.world()
    totals = torch.zeros(3, dtype=torch.float64)
    with dist_utils.evaluating(model):
        for x, y in eval_batches(dataset, batch_size, rank, world, num_workers):
            x, y = to_model_input(x, model, device), y.to(device, non_blocking=True)
            with autocast(device, amp, amp_dtype):
                out = model(x)
            totals[0] += F.cross_entropy(out.float(), y, reduction="sum").item()
            totals[1] += (out.argmax(1) == y).sum().item()
            totals[2] += len(y)
    dist_utils.all_reduce_sum(totals)
    n = totals[2].item()
    return {"loss": totals[0].item() / n, "acc": totals[1].item() / n}

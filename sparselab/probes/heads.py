"""Probe heads that read a ViT's residual stream: a class-token linear probe and a patch probe on the token grid.

Example:
    >>> import torch
    >>> head = PatchProbe(dim=16, num_classes=3, kind="conv2")
    >>> head(torch.randn(4, 16, 7, 7)).shape
    torch.Size([4, 3])
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..configs import PATCH_PROBES  # noqa: F401  (re-exported)
from ..errors import unknown_name


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch across processes (gloo or NCCL), so probes
    trained by N processes equal those trained by one process on the same global batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n_local = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), n_local])
        stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class PatchProbe(nn.Module):
    """Patch tokens on their grid ``(B, D, h, w)`` → logits.

    ``conv2`` (the reference): two [3x3 conv D→D (no bias) → BN → ReLU], global average pooling, Linear(D, C).
    ``conv1``: one such conv layer. ``linear``: global average pooling then Linear(D, C).
    """

    def __init__(self, dim: int, num_classes: int, kind: str = "conv2"):
        super().__init__()
        if kind not in PATCH_PROBES:
            raise unknown_name("patch probe", kind, PATCH_PROBES)
        layers: list[nn.Module] = []
        for _ in range({"conv2": 2, "conv1": 1, "linear": 0}[kind]):
            layers += [nn.Conv2d(dim, dim, 3, padding=1, bias=False), GlobalBatchNorm2d(dim), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(grid).mean(dim=(2, 3)))


class ProbePair(nn.Module):
    """The probes of one block: a class-token Linear(D, C) and a :class:`PatchProbe`."""

    def __init__(self, dim: int, num_classes: int, patch_kind: str | None = "conv2"):
        super().__init__()
        self.cls = nn.Linear(dim, num_classes)
        self.patch = PatchProbe(dim, num_classes, patch_kind) if patch_kind else None

"""Unstructured sparsity bookkeeping: which weights are prunable, magnitude masks at an exact sparsity.

Prunable weights are the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear`` (first and last layer included; no
biases, no norms). Masks are ``dict[str, BoolTensor]`` keyed by parameter name, True = kept.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
    >>> masks = magnitude_masks(net, 0.9)
    >>> sum(int(m.sum()) for m in masks.values()), sparsity(masks)
    (12, 0.9)
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from ..errors import ConfigError, DivergedError, check_ratio

Masks = Mapping[str, torch.Tensor]
_EXACT_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.uint8, torch.int8, torch.int16)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name → weight of every Conv2d and Linear layer, in module order. A weight that several layers share (tied
    weights) is one tensor: it appears once, under the name ``model.named_parameters()`` gives it, so that it is
    ranked, masked and regularized once.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        >>> net[1].weight = net[0].weight
        >>> list(prunable_weights(net))
        ['0.weight']
    """
    canonical = {id(p): name for name, p in model.named_parameters()}
    out, seen = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            if id(w) in seen:
                continue
            seen.add(id(w))
            out[canonical.get(id(w), f"{name}.weight" if name else "weight")] = w
    if not out:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear weights to prune")
    return out


def check_masks(model: nn.Module, masks: Masks, owner: str, complete: bool = False) -> dict[str, torch.Tensor]:
    """``masks`` as boolean tensors (True = kept) on the CPU, checked against ``model``: each names a parameter of
    its shape and holds booleans or 0/1; with ``complete``, the masks cover exactly the prunable weights (a missing
    layer would be left dense, a masked bias or norm weight pruned). ``owner`` names the masks in errors.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> check_masks(lin, {"weight": torch.tensor([[1, 0], [1, 1]])}, "mine")["weight"].tolist()
        [[True, False], [True, True]]
        >>> check_masks(lin, {"weight": torch.ones(3)}, "mine")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sparselab.errors.ConfigError: mine do not fit the model: shape of weight (3,) vs (2, 2)
    """
    if not isinstance(masks, Mapping):
        raise ConfigError(f"{owner} must be a dict of weight name -> boolean tensor, got {type(masks).__name__}")
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    prunable = set(prunable_weights(model))
    missing = sorted(prunable - set(masks)) if complete else []
    # a complete set covers the prunable weights only: a mask on a bias or norm would prune it and count it
    extra = sorted(set(masks) - prunable - set(unknown)) if complete else []
    wrong = [f"shape of {k} {tuple(torch.as_tensor(masks[k]).shape)} vs {tuple(params[k].shape)}"
             for k in masks if k in params and torch.as_tensor(masks[k]).shape != params[k].shape]
    problems = ([f"missing {missing[:5]}"] if missing else []) + ([f"unknown {unknown[:5]}"] if unknown else [])
    problems += ([f"not prunable weights {extra[:5]}"] if extra else []) + wrong
    if problems:
        what = "the prunable weights" if complete else "the model"
        raise ConfigError(f"{owner} do not {'match' if complete else 'fit'} {what}: {'; '.join(problems[:5])}")
    out = {}
    for name, m in masks.items():
        m = torch.as_tensor(m).cpu()
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise ConfigError(f"{owner}: the mask of {name} must be boolean (True = kept) or 0/1")
            m = m.bool()
        out[name] = m
    return out


def num_pruned(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a sparsity removes: ⌊sparsity·n⌋ (the kept count is n minus that)."""
    return int(math.floor(sparsity * n + 1e-9))


@torch.no_grad()
def masks_from_scores(scores: Masks, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights (True = kept): ``global`` ranks every score together, ``layer`` removes the
    same share of each tensor, ``row`` the same share of each output row (dimension 0; Wanda's comparison group).
    Exactly ⌊sparsity·n⌋ entries are removed per group; ties are broken by position, so the count is exact.

    Raises:
        ConfigError: ``scores`` is not a non-empty dict of weight name -> score tensor, ``sparsity`` is not in
            [0, 1], or ``scope`` is not one of the three.
        DivergedError: a score is NaN.

    Example:
        >>> m = masks_from_scores({"a": torch.tensor([[3., 1.], [2., 4.]])}, 0.5, scope="row")
        >>> m["a"].tolist()
        [[True, False], [False, True]]
    """
    if not isinstance(scores, Mapping) or not scores:
        got = "an empty dict" if isinstance(scores, Mapping) else type(scores).__name__
        raise ConfigError(f"scores must be a non-empty dict of weight name -> score tensor (one score per weight, "
                          f"higher = kept; e.g. |w| of each prunable weight), got {got}: there is nothing to rank")
    check_ratio("sparsity", sparsity)
    nan = [name for name, v in scores.items() if bool(torch.isnan(v).any())]
    if nan:  # topk ranks NaN above every number: the mask would keep whatever turned NaN
        raise DivergedError(f"the scores of {', '.join(nan[:3])} hold NaN: no mask can be ranked from them (scores "
                            f"must be numbers; ±inf ranks last or first)")
    if scope == "layer":
        return {name: _top_mask(v.flatten(), v.numel() - num_pruned(v.numel(), sparsity)).view_as(v)
                for name, v in scores.items()}
    if scope == "row":
        out = {}
        for name, v in scores.items():
            rows = v.reshape(v.shape[0], -1)
            k = rows.shape[1] - num_pruned(rows.shape[1], sparsity)
            keep = torch.zeros_like(rows, dtype=torch.bool)
            if k > 0:
                keep.scatter_(1, torch.topk(rows, k, dim=1, sorted=False).indices, True)
            out[name] = keep.view_as(v)
        return out
    if scope != "global":
        raise ConfigError(f"scope must be 'global', 'layer' or 'row', got {scope!r}")
    # scores float32 cannot hold exactly (float64, int32, int64) are ranked as float64: float32 would tie (and then
    # rank by position) scores it cannot tell apart
    dtype = torch.float32 if all(v.dtype in _EXACT_IN_FLOAT32 for v in scores.values()) else torch.float64
    flat = torch.cat([v.flatten().to(dtype).cpu() for v in scores.values()])
    keep = _top_mask(flat, flat.numel() - num_pruned(flat.numel(), sparsity))
    masks, offset = {}, 0
    for name, v in scores.items():
        masks[name] = keep[offset:offset + v.numel()].view(v.shape).to(v.device)
        offset += v.numel()
    return masks


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep the largest-magnitude weights (:func:`masks_from_scores` of |w|): ``global`` ranks all prunable weights
    together, ``layer`` prunes every layer to the same sparsity. Exactly ⌊sparsity·n⌋ weights are removed (per
    layer for ``layer``); ties are broken by position, so the count is exact."""
    check_ratio("sparsity", sparsity)
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
    return masks_from_scores({n: w.detach().abs() for n, w in prunable_weights(model).items()}, sparsity, scope)


def _top_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        mask[torch.topk(values, k, sorted=False).indices] = True
    return mask


def sparsity(masks: Masks) -> float:
    """Fraction of masked-out weights (0 when the masks cover no weights: nothing is pruned)."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the masked-out weights in place (a mask on another device than its weight is moved there).

    Raises:
        ConfigError: a mask that names no parameter of ``model``, has another shape than its parameter (it would be
            broadcast over it) or holds values other than 0 and 1 (it would scale the weights); nothing is changed.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> apply_masks(lin, {"weight": torch.tensor([[True, False], [False, True]])})
        >>> int((lin.weight == 0).sum())
        2
    """
    if not isinstance(masks, Mapping):
        raise ConfigError(f"masks must be a dict of weight name -> boolean tensor, got {type(masks).__name__}")
    params = dict(model.named_parameters())
    checked = []
    for name, m in masks.items():
        if name not in params:
            raise ConfigError(f"masks name {name!r}, which is not a parameter of {type(model).__name__}")
        m, p = torch.as_tensor(m), params[name]
        if m.shape != p.shape:
            raise ConfigError(f"the mask of {name} has shape {tuple(m.shape)}; the parameter has {tuple(p.shape)}")
        if m.dtype != torch.bool and (m.is_complex() or not bool(((m == 0) | (m == 1)).all())):
            raise ConfigError(f"the mask of {name} must be boolean (True = kept) or 0/1 values")
        checked.append((p, m))
    for p, m in checked:
        p.mul_(m.to(device=p.device, dtype=p.dtype))

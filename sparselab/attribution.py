"""Attributions with captum: where a dense and a pruned model look on the same images, and how much they agree.

Example:
    >>> import torch
    >>> from torch import nn
    >>> dense = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> pruned = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> _ = pruned.load_state_dict(dense.state_dict())
    >>> result = compare_attributions(dense, pruned, torch.randn(4, 1, 4, 4), method="saliency")
    >>> [round(s, 3) for s in result.similarity.tolist()]
    [1.0, 1.0, 1.0, 1.0]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError, check_positive_int, unknown_name
from .runtime import evaluating

METHODS = ("integrated_gradients", "saliency", "input_x_gradient")


def _check_images(images: torch.Tensor, who: str) -> torch.Tensor:
    """``images`` as a float batch ``(N, C, H, W)``; anything else is a :class:`ConfigError` (the maps sum over
    dimension 1, so a flat or unbatched input would give maps of the wrong axes)."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ConfigError(f"{who} needs a batch of images (N, C, H, W) with N >= 1, got {shape}; add the batch "
                          f"dimension with images.unsqueeze(0) or reshape flat images to (N, C, H, W)")
    return images.float() if not images.is_floating_point() else images


def _on_model(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` on the device and in the floating dtype of the model's weights, so that the forward pass and the
    integrated-gradients baseline (built like ``images``) match the model."""
    weight = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    return images if weight is None else images.to(device=weight.device, dtype=weight.dtype)


def _targets(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, who: str) -> torch.Tensor:
    """The classes to attribute: ``target`` checked against the model's outputs, or the model's predictions.
    The model must be in eval mode already."""
    try:
        with torch.no_grad():
            out = model(images)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"{who}: the model cannot read images of shape {tuple(images.shape)} "
                          f"({type(exc).__name__}: {exc})") from None
    if out.dim() != 2:
        raise ConfigError(f"{who} needs a classifier with outputs (N, classes), got outputs of shape "
                          f"{tuple(out.shape)}")
    if target is None:
        return out.argmax(1)
    target = torch.as_tensor(target, device=out.device)
    if target.dim() == 0:
        target = target.expand(len(images))
    if (target.shape != (len(images),) or target.is_floating_point() or target.is_complex()
            or target.dtype == torch.bool):
        raise ConfigError(f"target must hold one integer class per image ({len(images)}), got shape "
                          f"{tuple(target.shape)} of {target.dtype}")
    if len(target) and (int(target.min()) < 0 or int(target.max()) >= out.shape[1]):
        raise ConfigError(f"target classes must lie in 0..{out.shape[1] - 1} (the model's outputs), got "
                          f"{sorted(set(target.tolist()))}")
    return target.long()


def attribute(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None,
              method: str = "integrated_gradients", n_steps: int = 32) -> torch.Tensor:
    """Per-pixel attribution maps ``(N, H, W)`` (absolute values summed over channels) for ``target`` classes
    (default: the model's own predictions), with captum's ``IntegratedGradients`` (zero baseline), ``Saliency`` or
    ``InputXGradient``. The images are moved to the device and floating dtype of the model's weights first.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).double()
        >>> attribute(net, torch.rand(3, 1, 2, 2), method="saliency").shape
        torch.Size([3, 2, 2])
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    if method not in METHODS:
        raise unknown_name("attribution method", method, METHODS)
    n_steps = check_positive_int("n_steps", n_steps)
    images = _on_model(model, _check_images(images, "attribute"))
    with evaluating(model):
        target = _targets(model, images, target, "attribute")
        images = images.detach().clone().requires_grad_(True)
        if method == "integrated_gradients":
            attr = IntegratedGradients(model).attribute(images, target=target, n_steps=n_steps,
                                                        baselines=torch.zeros_like(images))
        elif method == "saliency":
            attr = Saliency(model).attribute(images, target=target, abs=True)
        else:
            attr = InputXGradient(model).attribute(images, target=target)
    return attr.detach().abs().sum(dim=1)


@dataclass
class AttributionComparison:
    """Attribution maps of two models on the same images, and their per-image similarity."""

    dense: torch.Tensor
    pruned: torch.Tensor
    target: torch.Tensor
    similarity: torch.Tensor
    method: str

    @property
    def mean_similarity(self) -> float:
        """The mean over the images that have a similarity (NaN when none has: every map was all zero)."""
        defined = self.similarity[~torch.isnan(self.similarity)]
        return float(defined.mean()) if len(defined) else math.nan


def map_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two stacks of maps ``(N, H, W)``, per image (1 = the same map up to scale); NaN for an
    image where either map is zero everywhere (a model whose output no longer depends on the input), where a
    cosine is undefined.

    Example:
        >>> map_similarity(torch.ones(2, 2, 2), torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])).tolist()
        [1.0, nan]
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    sim = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
    empty = (a.abs().amax(1) == 0) | (b.abs().amax(1) == 0)
    return torch.where(empty, torch.full_like(sim, math.nan), sim).float()


def compare_attributions(dense: nn.Module, pruned: nn.Module, images: torch.Tensor,
                         target: torch.Tensor | None = None, method: str = "integrated_gradients",
                         n_steps: int = 32) -> AttributionComparison:
    """Attribute both models for the same targets (default: the dense model's predictions) and score how alike
    their maps are."""
    images = _check_images(images, "compare_attributions")
    if target is None:
        with evaluating(dense):
            target = _targets(dense, _on_model(dense, images), None, "compare_attributions")
    a = attribute(dense, images, target, method, n_steps)
    b = attribute(pruned, images, target, method, n_steps)
    return AttributionComparison(a, b, target, map_similarity(a, b), method)


def block_attributions(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None,
                       n_steps: int = 8) -> dict[str, float]:
    """captum layer conductance of every attention / MLP branch of a timm ViT: the mean over images of the summed
    |conductance| of the branch output — how much of the prediction flows through each block.

    Example:
        >>> import sparselab as sl
        >>> m = sl.models.create("vit_nano_patch4_28", num_classes=10)
        >>> scores = block_attributions(m, torch.randn(2, 1, 28, 28), n_steps=2)
        >>> list(scores)[:2]
        ['blocks.0.attn', 'blocks.0.mlp']
    """
    from captum.attr import LayerConductance

    from .structure.vit import ViTStructure

    structure = ViTStructure(model)
    n_steps = check_positive_int("n_steps", n_steps)
    images = _on_model(model, _check_images(images, "block_attributions"))
    with evaluating(model):
        target = _targets(model, images, target, "block_attributions")
        out = {}
        for b in structure.blocks:
            layer = structure.layers[b.layer]
            module = layer.attn if b.kind == "attn" else layer.mlp
            attr = LayerConductance(model, module).attribute(images, target=target, n_steps=n_steps)
            out[b.name] = float(attr.detach().abs().flatten(1).sum(1).mean())
    return out

"""Attribution maps of a dense and a pruned model side by side.

Example:
    >>> import torch
    >>> from sparselab.attribution import AttributionComparison
    >>> r = AttributionComparison(torch.rand(2, 4, 4), torch.rand(2, 4, 4), torch.tensor([1, 3]),
    ...                           torch.tensor([0.9, 0.5]), "saliency")
    >>> len(plot_attribution_comparison(r, torch.rand(2, 1, 4, 4)).data)
    6
"""
from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..attribution import AttributionComparison
from ..errors import ConfigError


def plot_attribution_comparison(result: AttributionComparison, images: torch.Tensor,
                                labels: tuple[str, str] = ("dense", "pruned")) -> go.Figure:
    """One column per image: the image, the dense model's map and the pruned model's map (rows), titled with the
    target class and the maps' cosine similarity. ``images`` are those the maps were computed on, ``(N, C, H, W)``
    (or ``(N, H, W)``); the image row shows their mean over channels."""
    if (isinstance(labels, (str, bytes)) or not isinstance(labels, (tuple, list)) or len(labels) != 2
            or not all(isinstance(label, str) for label in labels)):
        raise ConfigError(f"labels must name the two models, e.g. ('dense', 'pruned'), got {labels!r}")
    n = len(result.target)
    maps = tuple(result.dense.shape)
    if n == 0 or len(maps) != 3 or tuple(result.pruned.shape) != maps or maps[0] != n:
        raise ConfigError(f"the comparison holds no maps to plot or maps of different shapes (dense {maps}, pruned "
                          f"{tuple(result.pruned.shape)}, {n} targets); pass the result of compare_attributions")
    if not torch.is_tensor(images) or images.dim() not in (3, 4) or images.shape[0] != n \
            or tuple(images.shape[-2:]) != maps[1:]:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ConfigError(f"images must be the {n} images the maps were computed on, (N, C, H, W) = ({n}, C, "
                          f"{maps[1]}, {maps[2]}), got {shape}")
    images = images.detach().float().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    mean = result.mean_similarity
    summary = f"mean similarity {mean:.2f}" if mean == mean else "no similarity (the maps of one model are all zero)"
    titles = [f"class {int(t)} · " + (f"similarity {float(s):.2f}" if s == s else "a map is all zero: no similarity")
              for t, s in zip(result.target, result.similarity)]
    fig = make_subplots(rows=3, cols=n, subplot_titles=titles + [""] * (2 * n), vertical_spacing=0.04,
                        horizontal_spacing=0.01, row_titles=["image", labels[0], labels[1]])
    for i in range(n):
        img = images[i].float().mean(0)
        for row, z, scale in ((1, img, "Greys"), (2, result.dense[i], "Hot"), (3, result.pruned[i], "Hot")):
            fig.add_trace(go.Heatmap(z=z.detach().float().cpu().numpy(), colorscale=scale, showscale=False,
                                     reversescale=row == 1), row=row, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(template="plotly_white", height=560,
                      title=f"Where the models look ({result.method.replace('_', ' ')}): " + summary)
    return fig

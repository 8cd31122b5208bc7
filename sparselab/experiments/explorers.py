"""What the interactive explorers (notebook 05) need: a dense model, an ART/HyperSparse checkpoint and a P3B run.

Example:
    >>> inputs = prepare("tiny", progress=False)          # doctest: +SKIP
    >>> sorted(inputs.checkpoints)                       # doctest: +SKIP
    ['ART / HyperSparse 90%']
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError, check_bool, unknown_name
from ..history import History
from . import art as art_exp
from . import p3b as p3b_exp

SCALES = {"tiny": ("tiny", "tiny", 0.9), "cpu": ("cpu", "cpu", 0.98)}


@dataclass
class ExplorerInputs:
    """A dense model with its data and ART checkpoints (sparsity explorer), and a P3B History with the ViT it ran
    on (budget explorer, trace scrubber)."""

    model: nn.Module
    data: object
    checkpoints: dict
    p3b_history: History
    p3b_model: nn.Module


def prepare(scale: str = "cpu", progress: bool = True) -> ExplorerInputs:
    """Train what the explorers show: ``tiny`` takes seconds, ``cpu`` about two minutes on 2 cores."""
    if not isinstance(scale, str):
        raise ConfigError(f"scale must be one of {', '.join(map(repr, SCALES))}, got {scale!r}")
    if scale not in SCALES:
        raise unknown_name("scale", scale, SCALES)
    check_bool("progress", progress)  # before any data is loaded or trained
    art_name, p3b_name, sparsity = SCALES[scale]
    preset = art_exp.art_preset(art_name)
    data = art_exp.load_data(preset)
    warm = art_exp.warm_start(preset, 0, data, progress=progress)
    # the warm start as ART's comparison hands it on: its optimizer state continues into the sparsification
    hs = art_exp.run_art(preset, "hypersparse", sparsity, 0, data=data, warm=warm, progress=progress)
    run = p3b_exp.run_p3b(p3b_exp.p3b_preset(p3b_name), "p3b", 0.5, 0, progress=progress, measure_latency=False)
    return ExplorerInputs(model=warm.model, data=data,
                          checkpoints={f"ART / HyperSparse {sparsity:.0%}": hs.model.state_dict()},
                          p3b_history=run.history, p3b_model=run.pruner.structure.model)

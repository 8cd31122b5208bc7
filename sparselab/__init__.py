"""sparselab: pruning research toolkit (P3B block-benefit pruning, ART/HyperSparse) with introspection plots.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=16)
    >>> model = sl.models.create("lenet_300_100", num_classes=10, in_chans=1, image_size=16)
    >>> history = sl.fit(model, data, epochs=1, progress=False)   # doctest: +SKIP
"""
from . import data, models, patterns, plots, probes, structure
from .errors import CheckpointError, ConfigError, DataNotFoundError, SparselabError, UnknownNameError
from .history import History
from .plots import (plot_block_benefit, plot_exchange, plot_gradient_profile, plot_keep_ratios,
                    plot_layer_keep_ratios, plot_reactivations, plot_weight_patterns)
from .pruners import ART, P3B, FixedMask, GradualMagnitude, HyperSparse, P3BSchedule
from .training import Pruner, TrainConfig, TrainState, evaluate, fit

__version__ = "0.1.0"
__all__ = [
    "data", "models", "patterns", "plots", "probes", "structure",
    "fit", "evaluate", "TrainConfig", "Pruner", "TrainState", "History",
    "P3B", "P3BSchedule", "ART", "HyperSparse", "FixedMask", "GradualMagnitude",
    "plot_block_benefit", "plot_keep_ratios", "plot_reactivations", "plot_gradient_profile", "plot_exchange",
    "plot_layer_keep_ratios", "plot_weight_patterns",
    "SparselabError", "ConfigError", "CheckpointError", "DataNotFoundError", "UnknownNameError",
]

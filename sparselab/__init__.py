"""sparselab: pruning research toolkit (P3B block-benefit pruning, ART/HyperSparse) with introspection plots.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=16)
    >>> model = sl.models.create("lenet_300_100", num_classes=10, in_chans=1, image_size=16)
    >>> history = sl.fit(model, data, epochs=1, progress=False)   # doctest: +SKIP
"""
from . import data, models, probes, structure
from .plots import plot_block_benefit, plot_keep_ratios, plot_reactivations
from .pruners import ART, P3B, FixedMask, GradualMagnitude, HyperSparse, P3BSchedule
from .errors import CheckpointError, ConfigError, DataNotFoundError, SparselabError, UnknownNameError
from .history import History
from .training import Pruner, TrainConfig, TrainState, evaluate, fit

__version__ = "0.1.0"
__all__ = ["data", "models", "probes", "structure", "P3B", "P3BSchedule", "ART", "HyperSparse", "FixedMask", "GradualMagnitude", "plot_block_benefit", "plot_keep_ratios", "plot_reactivations", "fit", "evaluate", "History", "Pruner", "TrainConfig", "TrainState", "SparselabError", "ConfigError",
           "CheckpointError", "DataNotFoundError", "UnknownNameError"]

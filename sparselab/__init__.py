"""sparselab: pruning research toolkit (P3B block-benefit pruning, ART/HyperSparse) with introspection plots.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=16)
    >>> model = sl.models.create("lenet_300_100", num_classes=10, in_chans=1, image_size=16)
    >>> history = sl.fit(model, data, epochs=1, progress=False)   # doctest: +SKIP

The package imports its parts on first use (``sl.fit``, ``sl.data``, ``sl.P3B`` ...), so ``import sparselab`` and
the command line's ``--help`` do not load torch. Importing torch's ``timm`` still knows sparselab's small ViTs.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from .errors import CheckpointError, ConfigError, DataNotFoundError, SparselabError, UnknownNameError

__version__ = "0.1.0"

_SUBMODULES = ("data", "models", "patterns", "plots", "probes", "structure", "training", "pruners", "experiments",
               "history", "attribution", "widgets", "latency", "cost", "paths", "cli", "errors", "stats", "callbacks",
               "runtime", "evaluation", "atomic")
_ATTRIBUTES = {
    "History": "history",
    "plot_block_benefit": "plots", "plot_exchange": "plots", "plot_gradient_profile": "plots",
    "plot_keep_ratios": "plots", "plot_layer_keep_ratios": "plots", "plot_reactivations": "plots",
    "plot_weight_patterns": "plots",
    "ART": "pruners", "P3B": "pruners", "FixedMask": "pruners", "GradualMagnitude": "pruners",
    "HyperSparse": "pruners", "P3BSchedule": "pruners",
    "Pruner": "training", "TrainConfig": "training", "TrainState": "training", "evaluate": "training",
    "fit": "training",
}

__all__ = [
    "data", "models", "patterns", "plots", "probes", "structure",
    "fit", "evaluate", "TrainConfig", "Pruner", "TrainState", "History",
    "P3B", "P3BSchedule", "ART", "HyperSparse", "FixedMask", "GradualMagnitude",
    "plot_block_benefit", "plot_keep_ratios", "plot_reactivations", "plot_gradient_profile", "plot_exchange",
    "plot_layer_keep_ratios", "plot_weight_patterns",
    "SparselabError", "ConfigError", "CheckpointError", "DataNotFoundError", "UnknownNameError",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES) | set(_ATTRIBUTES))


class _RegisterSmallViTs(importlib.abc.MetaPathFinder):
    """Register sparselab's small ViTs with timm as soon as timm is imported (``import sparselab`` used to do it
    eagerly, and ``timm.create_model("vit_nano_patch4_28")`` after ``import sparselab`` keeps working)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            importlib.import_module(".models.small_vit", __name__)

        spec.loader.exec_module = exec_and_register
        return spec


if "timm" in sys.modules:
    importlib.import_module(".models.small_vit", __name__)
elif not any(isinstance(f, _RegisterSmallViTs) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterSmallViTs())

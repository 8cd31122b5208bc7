"""Training: :func:`fit`, its configuration, and the hook interface pruners implement."""
from .config import TrainConfig
from .loop import evaluate, fit
from .pruner import Pruner, TrainState

__all__ = ["fit", "evaluate", "TrainConfig", "Pruner", "TrainState"]

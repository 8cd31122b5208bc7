"""Training: :func:`fit`, its configuration, and the hook interface pruners implement."""
from ..callbacks import Callback, Pruner, TrainState
from .config import TrainConfig
from .handoff import OptimizerHandoff
from .loop import evaluate, fit, task_loss

__all__ = ["fit", "evaluate", "task_loss", "TrainConfig", "Callback", "Pruner", "TrainState", "OptimizerHandoff"]

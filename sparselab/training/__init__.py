"""Training: :func:`fit`, its configuration, and the hook interface pruners implement."""
from .config import TrainConfig
from .handoff import OptimizerHandoff
from .loop import evaluate, fit, task_loss
from .pruner import Pruner, TrainState

__all__ = ["fit", "evaluate", "task_loss", "TrainConfig", "Pruner", "TrainState", "OptimizerHandoff"]

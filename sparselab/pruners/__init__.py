"""Pruners: P3B and its structured baselines (ViTs); ART with HyperSparse/L1/L2 and the unstructured baselines."""
from . import wanda  # noqa: F401  (registers the "wanda" criterion)
from .art import ART
from .masking import FixedMask, GradualMagnitude
from .p3b import P3B, implied_prune_ratio
from .regularizers import L1, L2, HyperSparse, Regularizer, make_regularizer
from .schedules import P3BSchedule, P3BSteps

__all__ = ["P3B", "P3BSchedule", "P3BSteps", "implied_prune_ratio", "ART", "HyperSparse", "L1", "L2", "Regularizer",
           "make_regularizer", "FixedMask", "GradualMagnitude"]

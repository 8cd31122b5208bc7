"""Pruners: P3B and its baselines (structured, ViTs); ART/HyperSparse (unstructured) builds on the same hooks."""
from .p3b import P3B, implied_prune_ratio
from .schedules import P3BSchedule, P3BSteps

__all__ = ["P3B", "P3BSchedule", "P3BSteps", "implied_prune_ratio"]

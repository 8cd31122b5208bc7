"""Measurements of what each block contributes: block-benefit probes."""
from .block_benefit import BlockBenefit
from .heads import PatchProbe, ProbePair

__all__ = ["BlockBenefit", "PatchProbe", "ProbePair"]

"""Measurements of what each block contributes: block-benefit probes and classical criteria."""
from .block_benefit import BlockBenefit
from .criteria import BlockCriteria
from .heads import PatchProbe, ProbePair

__all__ = ["BlockBenefit", "BlockCriteria", "PatchProbe", "ProbePair"]

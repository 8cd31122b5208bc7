"""Measurements of what each block contributes: block-benefit probes and classical criteria."""
from .block_benefit import FAST_PROBES, BlockBenefit
from .convergence import half_benefit_moments, late_convergence, normalised_profiles
from .criteria import BlockCriteria, last_block_values
from .flips import flip_counts, mask_flips
from .heads import PatchProbe, ProbePair

__all__ = ["FAST_PROBES", "BlockBenefit", "BlockCriteria", "PatchProbe", "ProbePair", "half_benefit_moments",
           "flip_counts", "last_block_values", "late_convergence", "mask_flips", "normalised_profiles"]

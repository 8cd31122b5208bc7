"""Unstructured masks: integer scores ranked exactly, masks of non-prunable parameters refused where the masks must
match the prunable weights, and the sparsity of no weights at all."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.pruners.masking import FixedMask
from sparselab.structure.unstructured import check_masks, magnitude_masks, masks_from_scores, num_pruned, sparsity


def test_large_integer_scores_keep_the_larger_one():
    # 2**24 + 1 is no float32: ranked as float32 the two would tie and the first one would be kept
    masks = masks_from_scores({"a": torch.tensor([2**24]), "b": torch.tensor([2**24 + 1])}, 0.5)
    assert masks["a"].tolist() == [False] and masks["b"].tolist() == [True]


@settings(max_examples=40, deadline=None)
@given(base=st.integers(2**24, 2**40), offsets=st.lists(st.integers(0, 1000), min_size=2, max_size=30),
       split=st.integers(1, 29), sparsity_=st.floats(0.0, 1.0), dtype=st.sampled_from([torch.int64, torch.float64]))
def test_global_masks_of_wide_scores_keep_the_highest(base, offsets, split, sparsity_, dtype):
    values = [base + o for o in offsets]  # close together: float32 cannot tell most of them apart
    split = min(split, len(values) - 1)
    flat = torch.tensor(values, dtype=dtype)
    scores = {"a": flat[:split], "b": flat[split:].to(torch.int64 if dtype == torch.float64 else torch.float32)}
    masks = masks_from_scores(scores, sparsity_)
    keep = torch.cat([masks["a"], masks["b"]])
    exact = torch.cat([scores["a"].double(), scores["b"].double()])
    assert int((~keep).sum()) == num_pruned(len(values), sparsity_)
    if keep.any() and (~keep).any():
        assert exact[keep].min() >= exact[~keep].max()


def test_complete_masks_refuse_a_mask_on_a_bias():
    model = sl.models.create("lenet_300_100", image_size=8)
    masks = magnitude_masks(model, 0.9)
    masks["fc1.bias"] = torch.zeros(300, dtype=torch.bool)  # would prune a bias and count it in the sparsity
    with pytest.raises(ConfigError, match="fc1.bias"):
        check_masks(model, masks, "the masks", complete=True)
    check_masks(model, masks, "the masks")  # a mask that need not be complete may cover any parameter


def test_complete_masks_of_the_prunable_weights_pass():
    model = sl.models.create("lenet_300_100", image_size=8)
    masks = magnitude_masks(model, 0.9)
    assert set(check_masks(model, masks, "the masks", complete=True)) == set(masks)


def test_no_masks_prune_nothing():
    assert sparsity({}) == 0.0
    assert FixedMask({}).sparsity() == 0.0
    assert FixedMask({}).config()["sparsity"] == 0.0

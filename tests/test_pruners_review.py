"""Pruners on inputs they must refuse or handle: shared and tied weights, partial qk-norm, NaN scores, masks that
are not masks, schedules that cannot finish, and options that would be ignored."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

import sparselab as sl
from sparselab.errors import ConfigError, DivergedError
from sparselab.pruners.masking import FixedMask, GradualMagnitude, MovementPruning
from sparselab.structure.gates import Gates
from sparselab.structure.unstructured import magnitude_masks, masks_from_scores, prunable_weights
from sparselab.structure.vit import ViTStructure


def _vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    options = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=10, in_chans=1)
    options.update(kw)
    return timm.create_model("vit_tiny_patch16_224", **options)


class _Tied(nn.Module):
    """An MLP whose second and third layers share one weight."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.h = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 10)
        self.c.weight = self.b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x.flatten(1)))
        return self.h(torch.relu(self.c(torch.relu(self.b(x)))))


@pytest.fixture(scope="module")
def digits8():
    return sl.data.load("digits", image_size=8, limit=128)


# ---------------------------------------------------------------------------------------------- ViT structure
@pytest.mark.parametrize("tie", ["block", "linear", "weight"])
def test_blocks_that_share_parameters_are_refused(tie):
    model = _vit()
    if tie == "block":
        model.blocks = nn.Sequential(model.blocks[0], model.blocks[0])
    elif tie == "linear":
        model.blocks[1].mlp.fc1 = model.blocks[0].mlp.fc1
    else:
        model.blocks[1].mlp.fc1.weight = model.blocks[0].mlp.fc1.weight
    with pytest.raises(ConfigError, match=r"is the same parameter as blocks\.0\..*own its parameters"):
        sl.P3B(model, 0.5)


def test_a_vit_without_blocks_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"no transformer blocks \(depth 0\)"):
        ViTStructure(_vit(depth=0))


def test_qk_norm_in_a_later_layer_only_is_gated_there_and_compacts_exactly():
    model = _vit()
    model.blocks[1] = _vit(qk_norm=True).blocks[1]
    pruner = sl.P3B(model, 0.5, allocation="uniform")
    masks = pruner.structure.full_masks()
    masks[1]["attn_qkv"][::3] = False
    pruner.gates.set_hard(masks)
    model.eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruner.compact().eval()(x), model(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------- P3B options
@pytest.mark.parametrize("allocation", ["benefit", "uniform", "global"])
def test_keep_ratios_with_another_allocation_are_refused(allocation):
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    with pytest.raises(ConfigError, match=r"keep_ratios set the profile of allocation='fixed'"):
        sl.P3B(model, 0.5, allocation=allocation, keep_ratios=[1.0] * 2 * len(model.blocks))


# ---------------------------------------------------------------------------------------------- unstructured
def test_a_tied_weight_is_one_prunable_weight_ranked_once():
    net = _Tied()
    assert list(prunable_weights(net)) == ["a.weight", "b.weight", "h.weight"]
    masks = magnitude_masks(net, 0.5)
    n = sum(p.numel() for p in prunable_weights(net).values())
    assert sum(int((~m).sum()) for m in masks.values()) == n // 2


@pytest.mark.parametrize("method", ["art", "gmp", "movement"])
def test_tied_weights_prune_to_the_target(method, digits8):
    net = _Tied()
    if method == "art":
        pruner = sl.ART(net, 0.5, warmup_epochs=0, max_art_epochs=1, lam_init=1e-4, eta=2.0)
    else:
        cls = GradualMagnitude if method == "gmp" else MovementPruning
        pruner = cls(net, 0.5, start_epoch=0, end_epoch=1, every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sl.fit(net, digits8, epochs=1, batch_size=32, pruner=pruner, progress=False)
    weights = prunable_weights(net)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == sum(w.numel() for w in weights.values()) // 2
    assert net.c.weight is net.b.weight


def test_nan_scores_are_refused_instead_of_kept():
    scores = {"a": torch.tensor([float("nan"), 1.0, 2.0, 3.0])}
    for scope in ("global", "layer", "row"):
        with pytest.raises(DivergedError, match=r"scores of a hold NaN"):
            masks_from_scores(scores, 0.5, scope)
    inf = masks_from_scores({"a": torch.tensor([float("inf"), 1.0, -float("inf"), 3.0])}, 0.5)
    assert inf["a"].tolist() == [True, False, False, True]


def test_a_fixed_mask_of_values_other_than_0_and_1_is_refused():
    net = nn.Linear(8, 4)
    with pytest.raises(ConfigError, match=r"mask of weight must be boolean \(True = kept\) or 0/1"):
        FixedMask({"weight": torch.rand(4, 8)})
    with pytest.raises(ConfigError, match=r"dict of weight name"):
        FixedMask([torch.ones(4, 8)])
    boolean = magnitude_masks(net, 0.5)
    as_float = FixedMask({k: v.float() for k, v in boolean.items()})
    assert as_float.config() == FixedMask(boolean).config()


@pytest.mark.parametrize("options, message", [
    (dict(every=0), r"every must be an integer >= 1, got 0"),
    (dict(every=2.9), r"every must be an integer >= 1, got 2.9"),
    (dict(start_epoch="0"), r"start_epoch must be an integer >= 0, got '0'"),
    (dict(end_epoch=0), r"end_epoch must be an integer >= 1, got 0"),
    (dict(initial_sparsity=0.95), r"initial_sparsity 0.95 exceeds the final sparsity 0.9"),
])
def test_scheduled_mask_options_are_checked(options, message):
    net = sl.models.create("lenet_300_100", in_chans=1, image_size=8)
    with pytest.raises(ConfigError, match=message):
        GradualMagnitude(net, 0.9, **options)


def test_scheduled_masks_take_numpy_integers():
    net = sl.models.create("lenet_300_100", in_chans=1, image_size=8)
    pruner = GradualMagnitude(net, 0.9, start_epoch=np.int64(0), end_epoch=np.int64(2), every=np.int64(3))
    assert pruner.config()["every"] == 3 and type(pruner.end_epoch) is int


def test_gradual_magnitude_warns_when_training_ends_before_the_target(digits8):
    net = sl.models.create("lenet_300_100", in_chans=1, image_size=8)
    pruner = GradualMagnitude(net, 0.9, start_epoch=0, end_epoch=5, every=2)
    with pytest.warns(UserWarning, match=r"ends before GradualMagnitude reaches its sparsity 0.9"):
        sl.fit(net, digits8, epochs=1, batch_size=32, pruner=pruner, progress=False)
    assert pruner.sparsity() < 0.9


def test_art_warns_when_training_ends_inside_the_warmup(digits8):
    net = sl.models.create("lenet_300_100", in_chans=1, image_size=8)
    art = sl.ART(net, 0.9, warmup_epochs=1, max_art_epochs=2)
    with pytest.warns(UserWarning, match=r"ends within ART's dense warm-up"):
        sl.fit(net, digits8, epochs=1, batch_size=32, pruner=art, progress=False)
    assert art.candidate is None


def test_art_warns_when_best_mean_ends_without_a_full_window(digits8):
    net = sl.models.create("lenet_300_100", in_chans=1, image_size=8)
    art = sl.ART(net, 0.9, warmup_epochs=0, max_art_epochs=5, candidate_rule="best_mean", lam_init=1e-6)
    with pytest.warns(UserWarning, match=r"fewer than a full window \(3\).*the model stays dense"):
        sl.fit(net, digits8, epochs=1, batch_size=32, pruner=art, progress=False)
    assert art.candidate is None


def test_gates_of_a_uniform_qk_norm_model_hook_every_layer():
    structure = ViTStructure(_vit(qk_norm=True))
    gates = Gates(structure)
    assert len(gates._handles) == 2 * structure.depth


def test_block_benefit_options_beside_an_allocation_without_probes_are_refused():
    """allocation='uniform' (or 'global', 'fixed') runs no probes: a probe cadence or a benefit scale given beside
    it would be ignored without a word."""
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    with pytest.raises(ConfigError, match=r"probe_every=16, probe_fraction=0.25 set the block-benefit allocation, "
                                          r"but allocation is 'uniform'"):
        sl.P3B(model, 0.5, allocation="uniform", probe_every=16, probe_fraction=0.25)
    with pytest.raises(ConfigError, match=r"benefit_scale=5.0 .* allocation is 'global'"):
        sl.P3B(model, 0.5, allocation="global", benefit_scale=5.0)
    for options in ({}, {"patch_probe": None}, {"patch_probe": "conv2", "momentum": 0.2},  # defaults, no probes
                    sl.probes.FAST_PROBES):
        sl.P3B(model, 0.5, allocation="uniform", **options).remove()

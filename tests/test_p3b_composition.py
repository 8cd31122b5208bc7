"""P3B as a composition: the within-block criterion and the between-block allocation are registered objects; a new
one plugs in by name or as an instance, and the structure's gate_reduce is the one place that knows which weights a
gate element switches off."""
from __future__ import annotations

import pytest
import torch
from conftest import nano_vit as nano

import sparselab as sl
from sparselab.errors import ConfigError, UnknownNameError
from sparselab.pruners.allocators import ALLOCATIONS, Allocation, BenefitAllocation, register_allocation
from sparselab.pruners.criteria import CRITERIA, GateCriterion, register_criterion, weight_scores
from sparselab.structure.gates import Gates


def test_gate_reduce_matches_an_independent_restatement_of_what_each_gate_removes():
    model = nano()
    s = sl.structure.ViTStructure(model)
    blk, h, hd = model.blocks[1], s.num_heads[1], s.head_dim[1]
    qkv, proj = blk.attn.qkv.weight.abs(), blk.attn.proj.weight.abs()
    fc1, fc2 = blk.mlp.fc1.weight.abs(), blk.mlp.fc2.weight.abs()
    got = s.gate_reduce(1, lambda name, w: w.abs())
    per_dim = torch.zeros(hd)
    for d in range(hd):  # dimension d of every head: rows d, hd+d, ... of q, k and v, and columns of proj
        rows = [part * h * hd + head * hd + d for part in range(3) for head in range(h)]
        cols = [head * hd + d for head in range(h)]
        per_dim[d] = qkv[rows].sum() + proj[:, cols].sum()
    torch.testing.assert_close(got["attn_qkv"], per_dim)
    torch.testing.assert_close(got["attn_in"], qkv.sum(0))
    torch.testing.assert_close(got["attn_out"], proj.sum(1))
    torch.testing.assert_close(got["mlp_in"], fc1.sum(0))
    torch.testing.assert_close(got["mlp_hid"], fc1.sum(1) + fc2.sum(0))
    torch.testing.assert_close(got["mlp_out"], fc2.sum(1))


def test_strings_and_instances_build_the_same_pruner():
    by_name = sl.P3B(nano(), 0.5, allocation="uniform", criterion="l1")
    by_object = sl.P3B(nano(), 0.5, allocation=ALLOCATIONS["uniform"](), criterion=CRITERIA["l1"]())
    assert by_name.config() == by_object.config()
    assert by_name.config()["allocation"] == "uniform" and by_name.config()["criterion"] == "l1"
    benefit = sl.P3B(nano(), 0.5, patch_probe="linear", momentum=0.5)
    assert isinstance(benefit.allocation, BenefitAllocation) and benefit.allocation.momentum == 0.5
    assert benefit.probes is benefit.allocation.probes is not None
    assert sl.P3B(nano(), 0.5, allocation="uniform").probes is None
    with pytest.raises(UnknownNameError, match="criterion"):
        sl.P3B(nano(), 0.5, criterion="no-such")
    with pytest.raises(ConfigError, match="momentum"):  # benefit options are checked whichever allocation runs
        sl.P3B(nano(), 0.5, allocation="uniform", momentum=2.0)


def test_a_registered_criterion_and_allocation_plug_in_by_name(tmp_path):
    calls = {"collect": 0, "scores": 0}

    @register_criterion("test_magnitude_sq")
    class SquaredMagnitude(GateCriterion):
        def collect(self, state):
            calls["collect"] += 1
            return True

        def scores(self, final):
            calls["scores"] += 1
            return weight_scores(self.structure, lambda name, w: w.detach().double().pow(2).cpu())

    @register_allocation("test_attention_first")
    class AttentionFirst(Allocation):
        def importance(self, ctx):
            return torch.tensor([2.0 if b.kind == "attn" else 1.0 for b in ctx.structure.blocks],
                                dtype=torch.float64), {}

    try:
        data = sl.data.load("digits", image_size=28, limit=128)
        model = nano()
        pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3),
                        criterion="test_magnitude_sq", allocation="test_attention_first")
        assert not any(p.requires_grad for p in pruner.gates.parameters())  # no gate gradients needed
        sl.fit(model, data, epochs=3, batch_size=64, pruner=pruner, progress=False)
        assert calls["collect"] > 0 and calls["scores"] == pruner.updates >= 2
        assert abs(pruner.achieved_prune_ratio() - 0.5) < 0.01
        keep = pruner.hard_masks()
        attn = sum(int(keep[i]["attn_qkv"].sum()) for i in keep)
        mlp = sum(int(keep[i]["mlp_hid"].sum()) for i in keep)
        assert attn / sum(len(keep[i]["attn_qkv"]) for i in keep) > mlp / sum(len(keep[i]["mlp_hid"]) for i in keep)
        assert pruner.config()["criterion"] == "test_magnitude_sq"
    finally:
        CRITERIA.pop("test_magnitude_sq", None)
        ALLOCATIONS.pop("test_attention_first", None)


def test_the_l1_criterion_scores_each_gate_by_the_weights_it_removes():
    model = nano()
    pruner = sl.P3B(model, 0.5, allocation="uniform", criterion="l1")
    scores = pruner.criterion.scores(final=False)
    s = pruner.structure
    for i in range(s.depth):
        for gate, v in s.gate_reduce(i, lambda name, w: w.abs().double()).items():
            torch.testing.assert_close(scores[Gates.key(i, gate)], v)

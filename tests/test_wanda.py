"""The Wanda-style criterion: |W|·‖X‖ over what each gate element switches off, with input norms accumulated over
the window by a reusable collector (training passes only, fp16-skipped steps dropped, summed over processes)."""
from __future__ import annotations

import pytest
import torch
from conftest import nano_vit as nano

import sparselab as sl
from sparselab import runtime
from sparselab.probes.activations import ActivationNorms
from sparselab.structure.gates import Gates


def test_the_collector_counts_committed_training_passes_only():
    lin = torch.nn.Linear(4, 2)
    norms = ActivationNorms({"lin": lin})
    x = torch.arange(8.0).view(2, 4)
    lin(x)
    norms.commit()
    lin.eval()
    lin(x * 100)  # evaluation: not counted
    lin.train()
    with torch.no_grad():
        lin(x * 100)  # calibration without gradients: not counted
    lin(x * 100)
    norms.discard()  # an overflowed step
    torch.testing.assert_close(norms.norms()["lin"], x.pow(2).sum(0).double().sqrt())
    norms.next_window()
    lin(2 * x)
    norms.commit()
    merged = (x.pow(2).sum(0) + (2 * x).pow(2).sum(0)).double() / 2
    torch.testing.assert_close(norms.norms(merge_previous=True)["lin"], merged.sqrt())
    again = ActivationNorms({"lin": torch.nn.Linear(4, 2)})
    again.load_state_dict(norms.state_dict())
    torch.testing.assert_close(again.norms(merge_previous=True)["lin"], merged.sqrt())
    norms.remove()
    lin(x)
    assert norms.pending["lin"].abs().sum() == 0  # hooks detached


def test_the_collector_sums_over_processes(monkeypatch):
    lin = torch.nn.Linear(3, 1)
    norms = ActivationNorms({"lin": lin})
    lin(torch.ones(2, 3))
    norms.commit()
    single = norms.norms()["lin"].clone()
    monkeypatch.setattr(runtime, "world", lambda: (0, 2))
    monkeypatch.setattr(runtime, "all_reduce_sum", lambda t: t.mul_(2))  # two processes that saw the same data
    torch.testing.assert_close(norms.norms()["lin"], single)


def test_wanda_scores_are_weight_times_input_norm_over_what_each_gate_removes():
    model = nano()
    pruner = sl.P3B(model, 0.5, criterion="wanda", allocation="uniform")
    crit = pruner.criterion
    g = torch.Generator().manual_seed(1)
    for name in crit.norms.sums:
        crit.norms.sums[name] = torch.rand(crit.norms.sums[name].shape, generator=g, dtype=torch.float64)
    crit.norms.steps = 4
    scores = crit.scores(final=False)
    blk, norms = model.blocks[2], {k: (v / 4).sqrt() for k, v in crit.norms.sums.items()}
    fc1, fc2 = blk.mlp.fc1.weight.detach().abs().double(), blk.mlp.fc2.weight.detach().abs().double()
    hidden = torch.stack([(fc1[j] * norms["2.fc1"]).sum() + (fc2[:, j] * norms["2.fc2"][j]).sum()
                          for j in range(fc1.shape[0])])
    torch.testing.assert_close(scores[Gates.key(2, "mlp_hid")], hidden)
    inputs = torch.stack([(fc1[:, i] * norms["2.fc1"][i]).sum() for i in range(fc1.shape[1])])
    torch.testing.assert_close(scores[Gates.key(2, "mlp_in")], inputs)


@pytest.mark.parametrize("allocation", ["benefit", "uniform", "global", "fixed"])
def test_wanda_prunes_with_every_allocation_and_resumes(allocation):
    data = sl.data.load("digits", image_size=28, limit=128)
    model = nano()
    options = {"keep_ratios": [1.0, 0.5] * 4} if allocation == "fixed" else {}
    if allocation == "benefit":  # the only allocation that runs probes
        options["patch_probe"] = "linear"
    pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3), criterion="wanda",
                    allocation=allocation, **options)
    sl.fit(model, data, epochs=3, batch_size=64, pruner=pruner, progress=False)
    assert abs(pruner.achieved_prune_ratio() - 0.5) < 0.01
    assert pruner.criterion.norms.steps_prev > 0 and not pruner.criterion.norms._handles  # detached at the end
    fresh = sl.P3B(nano(), 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3), criterion="wanda",
                   allocation=allocation, **options)
    fresh.load_state_dict(pruner.state_dict())
    assert fresh.criterion.norms.steps_prev == pruner.criterion.norms.steps_prev
    assert fresh.config()["criterion"] == "wanda"


def test_wanda_is_a_method_of_the_comparison():
    from sparselab.experiments import p3b

    assert p3b.METHODS["p3b_wanda"] == {"allocation": "benefit", "criterion": "wanda"}
    for scale in ("tiny", "cpu", "cpu-full"):
        assert "p3b_wanda" in p3b.p3b_preset(scale).methods


def test_the_norms_are_those_of_the_gated_inputs_wherever_the_gates_act():
    from sparselab.pruners.wanda import WandaCriterion
    from sparselab.structure import ViTStructure

    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    scores = {}
    for on in ("activations", "weights"):
        model = nano().train()
        s = ViTStructure(model)
        gates = Gates(s, on=on)
        gen = torch.Generator().manual_seed(5)
        gates.set_values({i: {g: torch.rand(n, generator=gen) for g, n in s.gate_sizes(i).items()}
                          for i in range(s.depth)})
        crit = WandaCriterion()
        crit.attach(s, gates)
        model(x).sum().backward()
        crit.norms.commit()
        scores[on] = crit.scores(final=False)
        crit.remove()
        gates.remove()
    for key, ref in scores["activations"].items():
        torch.testing.assert_close(scores["weights"][key], ref, rtol=1e-5, atol=1e-9)

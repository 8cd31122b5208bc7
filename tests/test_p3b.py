from __future__ import annotations

import math

import pytest
import torch
from conftest import nano_vit as nano
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab.callbacks import TrainState
from sparselab.errors import ConfigError, UnknownNameError
from sparselab.pruners.allocation import benefit_scores, ramp_keep, soft_clip, water_fill
from sparselab.pruners.p3b import implied_prune_ratio
from sparselab.pruners.selection import (
    GATE_FACTORS,
    find_threshold,
    masks_for_threshold,
    order_block_elements,
    rank_normalise,
    soft_masks,
)
from sparselab.structure import GATES, ViTStructure


# ---------------------------------------------------------------- allocation (§1.4)
def test_soft_clip_matches_the_specified_values():
    g = soft_clip(torch.tensor([-5.0, 0.0, 10.0]))
    assert g[0] == pytest.approx(0.001, abs=5e-4)
    assert g[1] == pytest.approx(math.log(2) - math.log1p(math.exp(-10)), abs=1e-9)  # ~0.69
    assert g[2] == pytest.approx(9.98, abs=0.01)


def test_benefit_scores_hand_computed():
    # z = 10 * [1, 2] / 2 = [5, 10]; g = soft_clip(z); u = g / params; u / mean(u)
    u = benefit_scores(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
    g = soft_clip(torch.tensor([5.0, 10.0]))
    raw = g / torch.tensor([1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(u, raw / raw.mean())
    assert u.mean().item() == pytest.approx(1.0)
    # all-negative benefits are scaled by the largest magnitude instead of flipping sign
    assert (benefit_scores(torch.tensor([-1.0, -2.0]), torch.ones(2)) > 0).all()


def test_water_fill_hand_computed():
    kappa = water_fill(torch.tensor([1.0, 1.0, 4.0]), torch.tensor([100.0, 100.0, 100.0]), budget=150.0)
    assert kappa.tolist() == [0.25, 0.25, 1.0]  # 4s >= 1 pins block 3; the rest share 50 equally
    zero = water_fill(torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), budget=5.0)
    assert zero.tolist() == [0.0, 0.5]
    with pytest.raises(ConfigError, match="budget"):
        water_fill(torch.ones(2), torch.ones(2), budget=3.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 10.0), st.integers(1, 10_000)), min_size=1, max_size=12),
       st.floats(0.0, 1.0))
@example([(5e-324, 1)], 0.5)  # a subnormal importance once overflowed the scale factor
@example([(0.0, 1), (1.0, 1)], 1.0)
@example([(5e-324, 1), (5e-324, 1)], 0.5)  # two subnormal importances: kappa / importance overflows to inf
def test_water_fill_meets_the_budget_within_bounds(blocks, fraction):
    imp = torch.tensor([b[0] for b in blocks], dtype=torch.float64)
    w = torch.tensor([b[1] for b in blocks], dtype=torch.float64)
    budget = fraction * float(w.sum())
    kappa = water_fill(imp, w, budget)
    assert ((kappa >= 0) & (kappa <= 1)).all()
    assert float((kappa * w).sum()) == pytest.approx(budget, rel=1e-6, abs=1e-6)
    free = (kappa > 1e-9) & (kappa < 1 - 1e-9) & (imp > 0)
    if free.sum() >= 2:  # unpinned blocks keep ratios proportional to their importance
        # importances scaled to a largest of 1 first: kappa over a subnormal importance would overflow
        ratio = kappa[free] / (imp[free] / imp[free].max())
        assert float(ratio.max() - ratio.min()) < 1e-6 * float(ratio.max())


def test_ramp_and_schedule():
    assert ramp_keep(torch.tensor([0.2]), 0.5).item() == pytest.approx(0.6)
    steps = sl.P3BSchedule(warmup=1, sparsify=3, finalize=5, updates_per_epoch=2).steps(10)
    assert (steps.start, steps.sparse, steps.final, steps.interval) == (10, 30, 50, 5)
    assert steps.ramp(9) == 0 and steps.ramp(10) == pytest.approx(1 / 20) and steps.ramp(29) == 1
    assert steps.tau(29) == 0.1 and steps.tau(40) == pytest.approx(0.05) and steps.tau(50) == 0
    assert [t for t in range(60) if steps.is_update(t)] == [15, 20, 25, 30, 35, 40, 45]
    with pytest.raises(ConfigError, match="warmup"):
        sl.P3BSchedule(warmup=5, sparsify=5, finalize=6)


# ---------------------------------------------------------------- selection (§1.5)
def test_rank_normalisation_and_gate_factors_order_a_block():
    assert rank_normalise(torch.tensor([5.0, 1.0, 3.0, 2.0])).tolist() == [1.0, 0.25, 0.75, 0.5]
    scores = {"mlp_in": torch.tensor([0.0, 1.0]), "mlp_hid": torch.tensor([9.0, 5.0, 7.0, 8.0]),
              "mlp_out": torch.tensor([1.0, 2.0])}
    gates, order = order_block_elements(scores, GATE_FACTORS)
    # q: mlp_in [0.5, 1.0]; mlp_hid 0.75*[1, .25, .5, .75]; mlp_out 1.5*[0.5, 1.0]
    q = {("mlp_in", 0): 0.5, ("mlp_in", 1): 1.0, ("mlp_hid", 0): 0.75, ("mlp_hid", 1): 0.1875,
         ("mlp_hid", 2): 0.375, ("mlp_hid", 3): 0.5625, ("mlp_out", 0): 0.75, ("mlp_out", 1): 1.5}
    got = [(gates[g], e) for g, e in order.tolist()]
    assert got == sorted(q, key=lambda k: (q[k], list(q).index(k)))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4), seed=st.integers(0, 2**16),
       levels=st.integers(1, 6), tau=st.sampled_from([0.0, 0.05, 0.3]), t_share=st.floats(0, 1),
       with_dead=st.booleans())
def test_soft_masks_equal_writing_each_gate_separately(sizes, seed, levels, tau, t_share, with_dead):
    """One scatter into all gates' values gives what selecting each gate's sorted positions and writing them
    gives (ties included: few score levels)."""
    gen = torch.Generator().manual_seed(seed)
    names = ["attn_out", "mlp_hid", "mlp_in", "other"][:len(sizes)]
    scores = {g: torch.randint(0, levels, (n,), generator=gen).float() for g, n in zip(names, sizes)}
    dead = {g: torch.rand(n, generator=gen) < 0.3 for g, n in zip(names, sizes)} if with_dead else None
    gates, order = order_block_elements(scores, GATE_FACTORS, dead)
    n = len(order)
    t = round(t_share * n)
    values = soft_masks(gates, dict(zip(names, sizes)), order, t, tau)
    j = torch.arange(1, n + 1, dtype=torch.float64)
    m = (torch.sigmoid(math.log(9) * (j - t - 0.5) / (tau * n)) if tau > 0 else (j > t).double()).float()
    for k, g in enumerate(gates):
        mine = order[:, 0] == k
        expected = torch.ones(scores[g].numel())
        expected[order[mine, 1]] = m[mine]
        assert torch.equal(values[g], expected)


def _mlp_kept(kept):  # an MLP block with D=6, hidden=8: fc1 hid*(in) + hid, fc2 out*hid + out
    return kept["mlp_hid"] * kept["mlp_in"] + kept["mlp_hid"] + kept["mlp_out"] * kept["mlp_hid"] + kept["mlp_out"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=20, max_size=20), st.floats(0.0, 1.0))
def test_threshold_search_equals_brute_force(raw, keep):
    sizes = {"mlp_in": 6, "mlp_hid": 8, "mlp_out": 6}
    t_scores = torch.tensor(raw)
    scores = {"mlp_in": t_scores[:6], "mlp_hid": t_scores[6:14], "mlp_out": t_scores[14:]}
    gates, order = order_block_elements(scores, GATE_FACTORS)
    dense = _mlp_kept(sizes)
    target = keep * dense

    def count(t):
        m = masks_for_threshold(gates, sizes, order, t)
        return _mlp_kept({g: int(m[g].sum()) for g in gates})

    t = find_threshold(gates, sizes, order, _mlp_kept, target)
    best = min(abs(count(c) - target) for c in range(len(order) + 1))
    assert abs(count(t) - target) == best


def test_soft_masks_put_the_threshold_at_one_half():
    sizes = {"a": 10, "b": 10}
    gates, order = order_block_elements({"a": torch.arange(10.0), "b": torch.arange(10.0) + 0.5}, {})
    values = soft_masks(gates, sizes, order, t=6, tau=0.1)
    flat = torch.cat([values["a"], values["b"]])
    sorted_vals = flat[torch.tensor([g * 10 + e for g, e in order.tolist()])]
    assert (sorted_vals[:6] < 0.5).all() and (sorted_vals[6:] > 0.5).all()
    assert torch.all(sorted_vals[1:] >= sorted_vals[:-1])
    # m = 0.9 at tau*n positions above the threshold (n = 20, tau = 0.1: two positions above t + 1/2)
    j = torch.arange(1, 21, dtype=torch.float64)
    expected = torch.sigmoid(math.log(9) * (j - 6.5) / 2.0).float()
    torch.testing.assert_close(sorted_vals, expected)
    hard = soft_masks(gates, sizes, order, t=6, tau=0.0)
    assert sorted(torch.cat([hard["a"], hard["b"]]).tolist()) == [0.0] * 6 + [1.0] * 14


# ---------------------------------------------------------------- the pruner on a tiny ViT
@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=320)


SCHED = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2)
FIT = dict(epochs=3, batch_size=64, lr=1e-3, progress=False, max_steps_per_epoch=4)


@pytest.mark.parametrize("prune_ratio", [0.5, 0.75])
@pytest.mark.parametrize("method", [dict(allocation="benefit"), dict(allocation="uniform"),
                                    dict(allocation="global"), dict(allocation="uniform", criterion="l1"),
                                    dict(allocation="fixed", keep_ratios=[1, 0.5] * 4)])
def test_every_method_meets_the_global_prune_ratio(digits, method, prune_ratio):
    model = nano()
    probes = {"patch_probe": "linear"} if method["allocation"] == "benefit" else {}  # only benefit runs probes
    pruner = sl.P3B(model, prune_ratio, schedule=SCHED, **probes, **method)
    h = sl.fit(model, digits, pruner=pruner, **FIT)
    assert pruner.finalized
    assert abs(pruner.achieved_prune_ratio() - prune_ratio) < 0.005
    gates = torch.cat([p.detach() for p in pruner.gates.parameters()])
    assert set(gates.unique().tolist()) <= {0.0, 1.0}  # hard after finalisation
    assert h.metrics.query("name == 'prune_ratio'").value.iloc[-1] == pytest.approx(pruner.achieved_prune_ratio())


def test_history_records_every_update_and_events_replay_to_the_final_masks(digits):
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=SCHED, patch_probe="conv1")
    h = sl.fit(model, digits, pruner=pruner, **FIT)
    b = h.blocks
    steps = sorted(b.step.unique())
    assert len(steps) == pruner.updates == 4  # steps 6 and 8 in the window (interval 2, final 12), then final
    for metric in ("benefit_cls", "benefit_patch", "score_cls", "score_patch", "importance", "keep_goal",
                   "keep_applied", "kept_params", "dense_params"):
        assert b[b.metric == metric].groupby("step").size().tolist() == [8] * len(steps), metric
    # replay the events from all-kept: the final hard masks come out
    masks = ViTStructure(model).full_masks()
    for row in h.events.sort_values("step", kind="stable").itertuples():
        layer = int(row.block.split(".")[1])
        assert bool(masks[layer][row.gate][row.element]) == bool(row.old)
        masks[layer][row.gate][row.element] = bool(row.new)
    final = pruner.hard_masks()
    for i in masks:
        for g in GATES:
            assert torch.equal(masks[i][g], final[i][g])
    kept = b[(b.metric == "kept_params") & (b.step == steps[-1])].set_index("block").value
    assert kept.to_dict() == {blk.name: pruner.structure.block_params(blk, final) for blk in pruner.structure.blocks}


def test_windows_without_patch_probes_leave_the_patch_score_out(digits):
    # probe_every=4 with this schedule: the updates at steps 6, 8, 10 and 12 (final); the window of the update at
    # step 8 holds no patch batch. That is no measurement (not a benefit of 0, which would pull every block's patch
    # score toward the mean): the update mixes in no patch score, and the patch score's momentum continues from
    # the last measured one
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=SCHED, patch_probe="linear", probe_every=4)
    b = sl.fit(model, digits, pruner=pruner, **FIT).blocks
    steps = sorted(b.step.unique())
    assert len(steps) == 4

    def at(metric: str, step: int) -> torch.Tensor:
        rows = b[(b.metric == metric) & (b.step == step)].sort_values("block")
        return torch.tensor(rows.value.to_numpy(), dtype=torch.float64)

    unmeasured = steps[1]
    assert sorted(b[b.metric == "benefit_patch"].step.unique()) == [s for s in steps if s != unmeasured]
    assert sorted(b[b.metric == "benefit_cls"].step.unique()) == steps
    assert len(at("score_patch", unmeasured)) == 0
    torch.testing.assert_close(at("importance", unmeasured), at("score_cls", unmeasured))
    for step in steps:
        if step != unmeasured:
            torch.testing.assert_close(at("importance", step),
                                       0.5 * at("score_cls", step) + 0.5 * at("score_patch", step))
    # the next measured update: momentum 0.2 over the score of the update before the unmeasured one; the benefit
    # is per remaining parameter, i.e. per block parameters kept after the previous update
    u = benefit_scores(at("benefit_patch", steps[2]), at("kept_params", unmeasured))
    torch.testing.assert_close(at("score_patch", steps[2]), 0.2 * u + 0.8 * at("score_patch", steps[0]))
    assert abs(pruner.achieved_prune_ratio() - 0.5) < 0.005


def test_the_first_update_without_a_patch_batch_uses_the_class_token_score(digits):
    # probe_every=7 with this schedule: the first update's window holds no patch batch
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=SCHED, patch_probe="linear", probe_every=7)
    b = sl.fit(model, digits, pruner=pruner, **FIT).blocks
    first = min(b.step)
    first_rows = b[b.step == first]
    assert "score_patch" not in set(first_rows.metric) and "benefit_patch" not in set(first_rows.metric)
    cls = first_rows[first_rows.metric == "score_cls"].sort_values("block").value.to_numpy()
    importance = first_rows[first_rows.metric == "importance"].sort_values("block").value.to_numpy()
    assert (cls == importance).all()


def test_an_update_without_any_benefit_measurement_fails_clearly():
    from sparselab.pruners.allocators import AllocationContext

    pruner = sl.P3B(nano(), 0.5, patch_probe="linear")
    ctx = AllocationContext(pruner.structure, pruner.hard_masks, pruner.dense_linear, pruner.dense_block, False)
    with pytest.raises(RuntimeError, match="no probe saw a batch"):
        pruner.allocation.importance(ctx)  # nothing was measured since the probes were built


def test_window_mean_leaves_out_a_probe_that_saw_no_batch():
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    model(torch.randn(4, 1, 28, 28))
    probes.probe_loss(torch.arange(4), patch=False)
    assert set(probes.window_mean()) == {"cls"}
    probes.reset()
    model(torch.randn(4, 1, 28, 28))
    probes.probe_loss(torch.arange(4))
    assert set(probes.window_mean()) == {"cls", "patch"}
    assert set(probes.window_mean(merge_previous=True)) == {"cls", "patch"}


class GateGrads(sl.Pruner):
    def __init__(self, gates):
        self.gates, self.grads = gates, []

    def after_backward(self, state):
        self.grads.append({k: None if p.grad is None else (p.detach() * p.grad).pow(2).double().clone()
                           for k, p in self.gates.values.items()})


def test_taylor_scores_are_the_window_mean_of_squared_gate_gradients(digits):
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=3, finalize=4, updates_per_epoch=1),
                    patch_probe=None)
    rec = GateGrads(pruner.gates)
    with pytest.warns(UserWarning, match="before P3B finalizes"):
        sl.fit(model, digits, pruner=pruner, callbacks=[rec], epochs=2, batch_size=64, progress=False,
               max_steps_per_epoch=4)
    # window: steps 5..8 (update at step 8 would be the next epoch's first: interval 4, start 4 -> update at 8)
    assert pruner.updates == 1
    # before the window (warm-up, steps 1..4) every gate is 1 and its gradient unread: the gates are switched off
    assert all(v is None for g in rec.grads[:4] for v in g.values())
    assert all(v is not None for g in rec.grads[4:] for v in g.values())
    expected = {k: sum(g[k] for g in rec.grads[4:8]) / 4 for k in rec.grads[0]}
    window = pruner.criterion.sums_prev
    for k in expected:
        torch.testing.assert_close(window[k] / pruner.criterion.count_prev, expected[k])


class GatesOn(sl.Pruner):
    def __init__(self, gates):
        self.gates, self.enabled = gates, []

    def after_backward(self, state):
        self.enabled.append(self.gates.enabled)


@pytest.mark.parametrize("criterion", ["taylor", "wanda"])
def test_gates_switched_off_before_the_window_change_nothing(digits, criterion, monkeypatch):
    """Switching the gates off while they are all 1 and their gradients go unread is exact: the run equals one
    with the gates always on, weights, masks and history alike."""
    def run():
        model = nano()
        pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=1),
                        patch_probe=None, criterion=criterion)
        spy = GatesOn(pruner.gates)
        history = sl.fit(model, digits, pruner=pruner, callbacks=[spy], epochs=3, batch_size=64, progress=False,
                         max_steps_per_epoch=3, seed=0)
        return model, pruner, spy.enabled, history

    model, pruner, enabled, history = run()
    with monkeypatch.context() as m:
        m.setattr(sl.P3B, "_gate_next_step", lambda self, step: setattr(self.gates, "enabled", True))
        always, always_pruner, always_enabled, always_history = run()
    # warm-up (steps 1-3): off; then on — Taylor reads gradients from step 4, Wanda needs gates once they are not 1
    assert enabled[:3] == [False] * 3 and enabled[-3:] == [True] * 3 and all(always_enabled)
    for (name, a), b in zip(model.state_dict().items(), always.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(pruner.gates.parameters(), always_pruner.gates.parameters()):
        assert torch.equal(a, b)
    assert history.blocks.equals(always_history.blocks)


def _state(model, pruner, step, history):
    st = TrainState(model=model, optimizer=None, history=history, device=torch.device("cpu"), epochs=10,
                    steps_per_epoch=10, step=step, epoch=step // 10)
    return st


def test_a_block_whose_benefit_rises_after_pruning_gets_its_elements_back():
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=0, sparsify=1, finalize=10), patch_probe=None,
                    momentum=1.0)
    history = sl.History()
    st = _state(model, pruner, 0, history)
    pruner.on_fit_start(st)
    late = 7  # blocks.3.mlp: a deep block
    k = len(pruner.structure.blocks)
    fixed_scores = {key: torch.rand(v.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
                    for key, v in pruner.criterion.sums.items()}  # the same ranking at every update
    for step, late_benefit in ((5, 0.01), (10, 0.02), (15, 5.0), (20, 5.0)):
        pruner.probes.sums = torch.zeros(2, k, dtype=torch.float64)
        pruner.probes.sums[0] = 1.0
        pruner.probes.sums[0, late] = late_benefit
        pruner.probes.counts = torch.ones(2, dtype=torch.float64)
        pruner.criterion.sums = {key: v.clone() for key, v in fixed_scores.items()}
        pruner.criterion.count = 1
        st.step = step
        pruner.update(st)
    b = history.blocks
    kept = b[(b.block == "blocks.3.mlp") & (b.metric == "kept_params")].value.tolist()
    assert kept[1] < 0.5 * kept[-1]  # pruned hard while useless, then given budget back
    ev = history.events
    back = ev[(ev.block == "blocks.3.mlp") & (ev.old == 0) & (ev.new == 1)]
    assert len(back) > 0 and back.step.min() >= 15
    pruned_before = set(ev[(ev.block == "blocks.3.mlp") & (ev.new == 0) & (ev.step <= 10)].element)
    assert set(back.element) & pruned_before  # the same elements come back
    goal = b[(b.block == "blocks.3.mlp") & (b.metric == "keep_goal")].value.tolist()
    assert goal[-1] > goal[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_p3b_resumes_exactly(digits, tmp_path, dtype):
    """In float64 too: the probe heads are made in float32 and must take the model's dtype before a resume loads
    their weights and optimizer state (was: float32 state for float64 probes, a failed step)."""
    ref_model = nano().to(dtype)
    ref_pruner = sl.P3B(ref_model, 0.5, schedule=SCHED, patch_probe="conv1")
    ref = sl.fit(ref_model, digits, pruner=ref_pruner, seed=1, **FIT)

    class Crash(sl.Pruner):
        def after_step(self, state):
            if state.step == 7:
                raise RuntimeError("boom")

    model = nano().to(dtype)
    with pytest.raises(RuntimeError, match="boom"):
        sl.fit(model, digits, pruner=sl.P3B(model, 0.5, schedule=SCHED, patch_probe="conv1"), callbacks=[Crash()],
               checkpoint_dir=tmp_path, checkpoint_every=3, seed=1, **FIT)

    class NoCrash(sl.Pruner):
        pass

    NoCrash.__name__ = "Crash"  # same callback list as the interrupted run
    model2 = nano(seed=5).to(dtype)
    pruner2 = sl.P3B(model2, 0.5, schedule=SCHED, patch_probe="conv1")
    resumed = sl.fit(model2, digits, pruner=pruner2, callbacks=[NoCrash()], checkpoint_dir=tmp_path, resume=True,
                     seed=1, **FIT)
    for a, b in zip(ref_model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for key in ref_pruner.gates.values:
        assert torch.equal(ref_pruner.gates.values[key], pruner2.gates.values[key])
    assert resumed.to_pandas()["blocks"].equals(ref.to_pandas()["blocks"])
    assert resumed.to_pandas()["events"].equals(ref.to_pandas()["events"])


def test_bad_input_is_a_clear_error():
    model = nano()
    with pytest.raises(ConfigError, match="qkv_unit must be one of dim, head"):
        sl.P3B(model, 0.5, qkv_unit="heads")
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        sl.P3B(model, 1.0)
    with pytest.raises(UnknownNameError, match="allocation"):
        sl.P3B(model, 0.5, allocation="benfit")
    with pytest.raises(ConfigError, match="keep_ratios"):
        sl.P3B(model, 0.5, allocation="fixed")
    with pytest.raises(ConfigError, match="at most"):
        sl.P3B(model, 0.999)
    with pytest.raises(ConfigError, match="VisionTransformer"):
        sl.P3B(sl.models.create("resnet20"), 0.5)
    with pytest.raises(UnknownNameError, match="patch probe"):
        sl.P3B(model, 0.5, patch_probe="conv3")


def test_implied_prune_ratio_of_fixed_ratios():
    s = ViTStructure(nano())
    assert implied_prune_ratio(s, [1.0] * 8) == 0
    r = implied_prune_ratio(s, [0.5] * 8, blocks_only=True)
    lin = sum(s.linear_params(b) for b in s.blocks)
    assert r == pytest.approx(0.5 * lin / sum(s.block_params(b) for b in s.blocks))


@pytest.mark.slow
def test_two_process_p3b_masks_are_identical_and_equal_one_process(tmp_path):
    from test_training import run_two_processes, single_process

    r0, r1 = run_two_processes("p3b", tmp_path)
    single = single_process("p3b")
    for layer in r0["masks"]:
        for gate in GATES:
            assert torch.equal(r0["masks"][layer][gate], r1["masks"][layer][gate]), (layer, gate)
            assert torch.equal(r0["masks"][layer][gate], single["masks"][layer][gate]), (layer, gate)
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    events = [sl.History.from_state_dict(r["history"]).events for r in (r0, r1, single)]
    assert events[0].equals(events[1]) and events[0].equals(events[2])  # every reactivation, too


def test_compact_model_of_a_pruned_run_equals_the_hard_masked_model(digits, tmp_path):
    model = nano()
    pruner = sl.P3B(model, 0.75, schedule=SCHED, patch_probe=None, allocation="uniform")
    sl.fit(model, digits, pruner=pruner, **FIT)
    compact = _compact_equals_masked_and_round_trips(model, pruner, digits, tmp_path)
    stats = sl.structure.compact_stats(compact)
    dense_stats = sl.structure.compact_stats(nano())
    assert stats["params"] == pruner.structure.total_params(pruner.hard_masks()) < 0.3 * dense_stats["params"]
    assert stats["flops"] < 0.4 * dense_stats["flops"]


def _compact_equals_masked_and_round_trips(model, pruner, digits, tmp_path):
    """``pruner.compact()`` after a finished run: its outputs equal the hard-masked model's, and it comes back
    unchanged from ``save_compact``/``load_compact``. Returns it."""
    model.eval()
    x = digits.test.images[:16]
    with torch.no_grad():
        masked = model(x)
        compact = pruner.compact().eval()
        torch.testing.assert_close(compact(x), masked, rtol=1e-5, atol=1e-5)
    pruner.save_compact(tmp_path / "c", model=compact)
    with torch.no_grad():
        assert torch.equal(sl.structure.load_compact(tmp_path / "c")(x), compact(x))
    return compact


def test_head_pruning_removes_whole_heads_and_compacts_to_fewer_heads(digits, tmp_path):
    model = nano()
    pruner = sl.P3B(model, 0.75, schedule=SCHED, patch_probe="linear", qkv_unit="head")
    sl.fit(model, digits, pruner=pruner, **FIT)
    assert abs(pruner.achieved_prune_ratio() - 0.75) < 0.01  # whole heads are coarse: a looser budget fit
    masks = pruner.hard_masks()
    heads = model.blocks[0].attn.num_heads
    assert all(masks[i]["attn_qkv"].numel() == heads for i in masks)
    assert pruner.config()["qkv_unit"] == "head" and "qkv_unit" not in sl.P3B(nano(), 0.5).config()
    compact = _compact_equals_masked_and_round_trips(model, pruner, digits, tmp_path)
    kept_heads = [int(masks[i]["attn_qkv"].sum()) for i in range(len(masks))]
    assert [getattr(b.attn, "num_heads", 0) for b in compact.blocks] == kept_heads
    assert min(kept_heads) < heads  # some head went
    assert sl.structure.compact_stats(compact)["params"] == pruner.structure.total_params(masks)


def test_a_resume_with_another_qkv_unit_is_refused(digits, tmp_path):
    model = nano()
    sl.fit(model, digits, pruner=sl.P3B(model, 0.5, schedule=SCHED, patch_probe=None), checkpoint_dir=tmp_path,
           checkpoint_every=3, **FIT)
    model = nano()
    with pytest.raises(sl.errors.CheckpointError, match="qkv_unit"):
        sl.fit(model, digits, pruner=sl.P3B(model, 0.5, schedule=SCHED, patch_probe=None, qkv_unit="head"),
               checkpoint_dir=tmp_path, resume=True, **FIT)


def test_experiment_summary_and_saved_results(tmp_path):
    import pandas as pd

    from sparselab.experiments import summarize

    table = pd.DataFrame({"method": ["dense", "p3b", "p3b"], "prune_ratio": [0.0, 0.5, 0.5], "seed": [0, 0, 1],
                          "acc": [0.9, 0.8, 0.7], "acc_pruned": [0.9, 0.6, 0.5], "achieved_ratio": [0, 0.5, 0.5],
                          "params": [2e6, 1e6, 1e6], "flops": [4e6, 2e6, 2e6], "latency_ms": [2.0, 1.0, 3.0]})
    s = summarize(table)
    row = s.loc[(0.5, "p3b")]
    assert row["acc %"] == pytest.approx(75.0) and row["± (std)"] == pytest.approx(7.071, abs=1e-3)
    assert row["params (M)"] == 1.0 and row["seeds"] == 2 and row["latency (ms)"] == 2.0
    assert math.isnan(s.loc[(0.0, "dense")]["± (std)"])  # one seed has no spread to show, not a spread of 0
    with pytest.raises(ConfigError):
        summarize(table.iloc[0:0])


def test_gate_factors_override_only_the_gates_they_name():
    from sparselab.pruners.selection import GATE_FACTORS, merged_gate_factors

    assert merged_gate_factors({"mlp_hid": 1.0}) == {**GATE_FACTORS, "mlp_hid": 1.0}
    assert merged_gate_factors(None) == GATE_FACTORS
    pruner = sl.P3B(sl.models.create("vit_nano_patch4_28", num_classes=10), 0.5, gate_factors={"attn_in": 2.0})
    assert pruner.gate_factors["attn_in"] == 2.0 and pruner.gate_factors["attn_out"] == GATE_FACTORS["attn_out"]
    assert pruner.config()["gate_factors"] == pruner.gate_factors  # the record is what the run uses


def test_latency_against_times_both_models_in_the_same_rounds():
    from torch import nn

    from sparselab.cost import latency_against

    small, large = nn.Linear(64, 64), nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)])
    small.train()
    r = latency_against(small, large, (64,), batch_size=256, repeats=9)
    assert r["speedup_q1"] <= r["speedup"] <= r["speedup_q3"]
    assert r["speedup"] > 1  # eight layers against one, timed in the same rounds
    assert small.training  # the training flag is given back
    with pytest.raises(ConfigError, match="repeats"):
        latency_against(small, large, (64,), repeats=0)


def test_a_benefit_trace_of_a_model_made_for_its_seed_is_that_seeds_trace():
    """Notebook 02 makes the source model itself (to take captum's conductance before and after) and hands it to
    benefit_trace with its criteria: the History must be the one late_convergence_by_seed records for seed 0."""
    from sparselab.experiments.p3b import benefit_trace, load_data, p3b_preset, source_model

    preset = p3b_preset("tiny", pretrained=False)  # random source weights: no pretraining in a test
    data = load_data(preset)
    plain = benefit_trace(preset, seed=0, data=data)
    model = source_model(preset, data, seed=0)
    criteria = sl.probes.BlockCriteria(model)
    own = benefit_trace(preset, seed=0, data=data, model=model, callbacks=[criteria])
    benefit = own.blocks[own.blocks.metric.str.startswith("benefit_")].reset_index(drop=True)
    assert benefit.equals(plain.blocks.reset_index(drop=True))
    assert {"crit_abs_w", "crit_taylor"} <= set(own.blocks.metric)  # the callbacks ran
    assert own.last("acc", "test") == plain.last("acc", "test")
    assert preset.calibration_steps == 10 and p3b_preset("cpu").calibration_steps == 60
    with pytest.raises(ConfigError, match="calibration_steps"):
        preset.replace(calibration_steps=0)

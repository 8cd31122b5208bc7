"""The training pieces the paper recipes need: gradient accumulation, repeated augmentation, the probes' own
targets and optimizer, loss scaling of the gates, merged final windows, τ_min, cosine floor, weight decay on all
parameters and one optimizer across fits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import infinite_gradient, nano_vit

import sparselab as sl
from sparselab.data.batches import epoch_groups, local_chunk
from sparselab.errors import ConfigError

# several runs stop before the schedule finalizes on purpose (scores and optimizer groups are read mid-run)
pytestmark = pytest.mark.filterwarnings("ignore:training for .* ends before P3B finalizes")


@pytest.fixture(scope="module")
def digits8():
    return sl.data.load("digits", image_size=8)  # no augmentation: two runs see identical images


@pytest.fixture(scope="module")
def digits28():
    return sl.data.load("digits", image_size=28, limit=320)


def lenet(seed=0):
    torch.manual_seed(seed)
    return sl.models.create("lenet_300_100", num_classes=10, image_size=8)


def nano(seed=0):
    return nano_vit(seed, drop_path_rate=0.0)


SCHED = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2)


# ------------------------------------------------------------------------------------------ accumulation
@pytest.mark.parametrize("make", ["lenet", "vit"])
def test_accumulating_two_batches_of_32_equals_one_batch_of_64(make, digits8, digits28):
    data = digits8 if make == "lenet" else digits28
    # float64 for the ViT: Adam divides near-zero bias gradients by their own size, which turns float32 summation
    # order into visible differences
    build = lenet if make == "lenet" else (lambda: nano().double())
    # a warm-up and a cosine schedule in steps: counting micro-steps would give other learning rates
    opts = dict(epochs=2, lr=2e-3, lr_schedule="cosine", warmup_steps=3, min_lr=1e-4, max_steps_per_epoch=4,
                progress=False, seed=5)
    one, two = build(), build()
    h1 = sl.fit(one, data, batch_size=64, **opts)
    h2 = sl.fit(two, data, batch_size=32, accumulate_steps=2, **opts)
    for (k, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6, msg=k)
    lr1 = h1.metrics.query("name == 'lr'").value.to_numpy()
    lr2 = h2.metrics.query("name == 'lr'").value.to_numpy()
    assert len(lr1) == len(lr2) and torch.allclose(torch.tensor(lr1), torch.tensor(lr2))
    assert h1.metrics.step.max() == h2.metrics.step.max() == 8


def test_accumulation_hooks_run_per_micro_batch_and_per_step(digits8):
    calls = []

    class Count(sl.Pruner):
        def extra_loss(self, state):
            calls.append(("extra", state.step, len(state.targets)))

        def after_backward(self, state):
            calls.append(("backward", state.step, state.accumulate_steps))

    sl.fit(lenet(), digits8, epochs=1, batch_size=16, accumulate_steps=3, max_steps_per_epoch=2, progress=False,
           callbacks=[Count()])
    assert calls == [("extra", 0, 16)] * 3 + [("backward", 0, 3)] + [("extra", 1, 16)] * 3 + [("backward", 1, 3)]


def test_effective_batch_larger_than_the_data_is_a_clear_error(digits8):
    with pytest.raises(ConfigError, match="effective batch"):
        sl.fit(lenet(), digits8, epochs=1, batch_size=512, accumulate_steps=4, progress=False)
    with pytest.raises(ConfigError, match="accumulate_steps"):
        sl.TrainConfig(accumulate_steps=0)


# ------------------------------------------------------------------------------------ repeated augmentation
@pytest.mark.parametrize("world", [1, 2])
def test_repeated_augmentation_follows_timm_sampler_per_process(world):
    from timm.data.distributed_sampler import RepeatAugSampler

    n, batch = 300, 8
    groups = epoch_groups(n, batch, 2, True, seed=4, epoch=1, repeated_aug=3, world_size=world)
    micro = [b for g in groups for b in g]
    assert all(len(g) == 2 for g in groups) and all(len(b) == batch for b in micro)
    for rank in range(world):
        sampler = RepeatAugSampler(range(n), num_replicas=world, rank=rank, num_repeats=3)
        sampler.set_epoch(4 * 100_003 + 1)
        expected = list(sampler)
        mine = torch.cat([b[local_chunk(b, rank, world)] for b in micro]).tolist()
        assert mine == expected[:len(mine)] and len(expected) - len(mine) < batch * 2
    # an epoch keeps about the dataset's length, made of a third as many distinct images, each seen three times
    counts = torch.bincount(torch.cat(micro), minlength=n)
    seen = counts[counts > 0]
    assert counts.max() == 3 and (seen == 3).sum() >= len(seen) - 2
    assert abs(int(counts.sum()) - 3 * len(seen)) <= 4
    other = epoch_groups(n, batch, 2, True, seed=5, epoch=1, repeated_aug=3, world_size=world)
    assert not torch.equal(other[0][0], groups[0][0])  # the seed changes the order


def test_repeated_augmentation_trains_and_keeps_the_epoch_length(digits8):
    h = sl.fit(lenet(), digits8, epochs=1, batch_size=64, repeated_aug=3, progress=False)
    n = len(digits8.train)
    assert h.metrics.step.max() == (n // 256 * 256) // 64  # timm's sampler rounds the epoch to 256 images


# ------------------------------------------------------------------------------------ the probes' targets
def test_under_mixup_the_probes_train_on_the_mixed_smoothed_targets(digits28):
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    seen = []
    original = probes.extra_loss

    def spy(state):
        value = original(state)
        soft = state.soft_targets
        s = probes.structure
        expected = torch.zeros(())
        deltas = []
        with torch.no_grad():
            for k, pair in enumerate(probes.probes):
                x_in, x_out = probes.taps.stream[k], probes.taps.stream[k + 1]
                ce = [torch.sum(-soft * F.log_softmax(pair.cls(s.pooled(x)), -1), -1).mean() for x in (x_in, x_out)]
                pe = [torch.sum(-soft * F.log_softmax(pair.patch(s.patch_tokens(x)), -1), -1).mean()
                      for x in (x_in, x_out)]
                expected += sum(ce) + sum(pe)
                deltas.append((ce[0] - ce[1]).item())
        seen.append((value.detach(), expected, soft.clone(), torch.tensor(deltas, dtype=torch.float64)))
        return value

    probes.extra_loss = spy
    sl.fit(model, digits28, epochs=1, batch_size=32, max_steps_per_epoch=3, mixup=0.8, cutmix=1.0,
           label_smoothing=0.1, callbacks=[probes], progress=False, log_every=100)
    assert len(seen) == 3
    for value, expected, soft, _ in seen:
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(soft.sum(1), torch.ones(len(soft)))
        assert soft.max() < 1.0  # mixed and smoothed, never a one-hot label
    # the class-probe ΔΨ summed over the window is the sum of the soft-target deltas (to float32 rounding of
    # losses near 2.3, one ulp = 2.4e-7: the probes run as one batched product, the check one Linear per block)
    torch.testing.assert_close(probes.prev_sums[0], sum(d for *_, d in seen), rtol=1e-5, atol=1e-6)


def test_probe_benefit_uses_label_smoothing_without_mixup(digits28):
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe=None)
    got = []
    original = probes.probe_loss

    def spy(targets, patch=True, patch_samples=None, label_smoothing=0.0, backward=None):
        got.append((targets.ndim, label_smoothing))
        return original(targets, patch, patch_samples, label_smoothing, backward)

    probes.probe_loss = spy
    sl.fit(model, digits28, epochs=1, batch_size=32, max_steps_per_epoch=2, label_smoothing=0.1,
           callbacks=[probes], progress=False)
    assert got == [(1, 0.1), (1, 0.1)]


def test_probe_optimizer_has_its_own_lr_and_weight_decay(digits28):
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=SCHED, patch_probe="conv1", probe_lr=5e-4, probe_weight_decay=0.05)
    seen = {}

    class Look(sl.Pruner):
        def on_fit_start(self, state):
            probe_params = {id(p) for p in pruner.probes.probes.parameters()}
            for g in state.optimizer.param_groups:
                ids = {id(p) for p in g["params"]}
                if ids & probe_params:
                    assert ids <= probe_params
                    kinds = {p.ndim > 1 for p in g["params"]}
                    seen[kinds.pop()] = (g["lr"], g["weight_decay"])

    sl.fit(model, digits28, epochs=1, batch_size=32, lr=1e-3, max_steps_per_epoch=1, pruner=pruner,
           callbacks=[Look()], progress=False)
    assert seen == {True: (5e-4, 0.05), False: (5e-4, 0.0)}
    with pytest.raises(ConfigError, match="lr"):
        sl.P3B(nano(), 0.5, probe_lr=float("nan"))


# ------------------------------------------------------------------------------------ loss scaling
def _p3b_run(data, scaler=None, callbacks=(), counts=None):  # 2 of the schedule's 3 epochs: masks stay soft
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=SCHED, patch_probe=None)
    if counts is not None:
        original = pruner.update

        def update(state, final=False):
            counts.append(pruner.criterion.count)
            return original(state, final)

        pruner.update = update
    sl.fit(model, data, epochs=2, batch_size=32, max_steps_per_epoch=4, lr=1e-3, pruner=pruner, progress=False,
           grad_scaler=scaler, callbacks=list(callbacks))
    return model, pruner


def test_gate_scores_under_loss_scaling_equal_the_unscaled_run(digits28):
    _, plain = _p3b_run(digits28)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 14, growth_interval=10_000)
    _, scaled = _p3b_run(digits28, scaler)
    assert plain.criterion.count_prev > 0 or plain.criterion.count > 0
    for key in plain.criterion.sums:
        torch.testing.assert_close(scaled.criterion.sums[key], plain.criterion.sums[key], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(scaled.criterion.sums_prev[key], plain.criterion.sums_prev[key], rtol=1e-5,
                                   atol=1e-12)
    assert scaled.skipped_steps == 0


def test_a_step_the_scaler_skips_adds_nothing_to_the_scores(digits28):
    class Overflow(sl.Pruner):  # one step whose gradients overflow
        def __init__(self):
            self.skipped = []

        def extra_loss(self, state):
            if state.step == 5:
                return infinite_gradient(state.outputs)

        def after_step(self, state):
            self.skipped.append(state.step_skipped)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=10_000)
    overflow, counts = Overflow(), []
    with pytest.warns(UserWarning, match="before P3B finalizes"):
        model, pruner = _p3b_run(digits28, scaler, [overflow], counts)
    assert overflow.skipped == [s == 6 for s in range(1, 9)]
    assert pruner.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in pruner.criterion.sums.values())
    assert all(torch.isfinite(v).all() for v in pruner.criterion.sums_prev.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the window opens after step 4 (one warm-up epoch of 4 steps), updates come every 2 steps: the update after
    # step 6 has counted step 5 only (step 6 was skipped), the one after step 8 steps 7 and 8
    assert counts == [1, 2]


# ------------------------------------------------------------------------------------ finalisation, τ_min
def test_finalisation_merges_the_last_two_benefit_windows(digits28):
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=SCHED, patch_probe="linear")
    calls = []
    original = pruner.probes.window_mean

    def spy(reduce=True, merge_previous=False):
        p = pruner.probes
        calls.append((merge_previous, p.sums.clone(), p.counts.clone(), p.prev_sums.clone(), p.prev_counts.clone()))
        return original(reduce, merge_previous)

    pruner.probes.window_mean = spy
    h = sl.fit(model, digits28, epochs=3, batch_size=32, max_steps_per_epoch=4, lr=1e-3, pruner=pruner,
               progress=False)
    assert [c[0] for c in calls] == [False] * (len(calls) - 1) + [True]
    _, sums, counts, prev_sums, prev_counts = calls[-1]
    assert counts[0] > 0 and prev_counts[0] > 0
    merged = (sums[0] + prev_sums[0]) / (counts[0] + prev_counts[0])
    last_step = h.blocks.step.max()  # noqa: F841 (read by the query below)
    logged = h.blocks.query("metric == 'benefit_cls' and step == @last_step").value.to_numpy()
    torch.testing.assert_close(torch.tensor(logged, dtype=torch.float64), merged)


def test_tau_falls_to_tau_min():
    steps = sl.P3BSchedule(warmup=1, sparsify=2, finalize=4, tau=0.1, tau_min=0.02).steps(10)
    assert steps.tau(19) == 0.1 and steps.tau(40) == 0.02
    assert math.isclose(steps.tau(30), 0.06)
    with pytest.raises(ConfigError, match="tau_min"):
        sl.P3BSchedule(tau=0.1, tau_min=0.2)
    with pytest.raises(ConfigError, match="tau must be a finite number"):
        sl.P3BSchedule(tau=float("nan"))


# ------------------------------------------------------------------------------------ optimizer options
def test_cosine_ends_at_min_lr_and_weight_decay_on_all_parameters(digits8):
    h = sl.fit(lenet(), digits8, epochs=1, batch_size=64, lr=0.1, lr_schedule="cosine", min_lr=1e-3,
               max_steps_per_epoch=10, log_every=1, progress=False, optimizer="sgd")
    lrs = h.metrics.query("name == 'lr'").value.to_numpy()
    from sparselab.training.optim import lr_factor, param_groups

    cfg = sl.TrainConfig(epochs=1, lr=0.1, lr_schedule="cosine", min_lr=1e-3)
    # each step logs the rate it trained with; the schedule reaches min_lr once the last step is done
    assert lrs.tolist() == pytest.approx([0.1 * lr_factor(s, cfg, 10) for s in range(10)], rel=1e-12)
    assert (np.diff(lrs) < 0).all() and lrs.min() > 1e-3
    assert math.isclose(0.1 * lr_factor(10, cfg, 10), 1e-3, rel_tol=1e-9)

    model = lenet()
    weights_only = param_groups(model, sl.TrainConfig(weight_decay=1e-4))
    everything = param_groups(model, sl.TrainConfig(weight_decay=1e-4, weight_decay_on="all"))
    assert [len(g["params"]) for g in weights_only] == [3, 3]
    assert [len(g["params"]) for g in everything] == [6, 0] and everything[0]["weight_decay"] == 1e-4
    with pytest.raises(ConfigError, match="min_lr"):
        sl.TrainConfig(lr=1e-3, min_lr=1e-2)


def test_one_optimizer_continues_across_fits(digits8):
    opts = dict(batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, max_steps_per_epoch=3, progress=False,
                seed=1)
    handoff = sl.training.OptimizerHandoff()
    first = lenet()
    sl.fit(first, digits8, epochs=1, callbacks=[handoff], **opts)
    momentum = {k: v["momentum_buffer"].clone() for k, v in handoff.saved["state"].items()}
    assert momentum and all(v.abs().sum() > 0 for v in momentum.values())
    seen = {}

    class Look(sl.Pruner):
        def on_fit_start(self, state):
            seen.update({i: s["momentum_buffer"].clone() for i, s in enumerate(state.optimizer.state.values())})

    sl.fit(first, digits8, epochs=1, callbacks=[handoff.resume(), Look()], **opts)
    assert len(seen) == len(momentum)
    for a, b in zip(seen.values(), momentum.values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="captured nothing"):
        sl.training.OptimizerHandoff().resume()

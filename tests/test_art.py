from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparselab as sl
from sparselab.errors import ConfigError, UnknownNameError
from sparselab.pruners.regularizers import INFLECTION, L1, L2, HyperSparse, banded_threshold, magnitude_threshold
from sparselab.structure import magnitude_masks, prunable_weights, sparsity


def sort_based_hypersparse_grad(weights, rate):
    """The reference formulation: a full sort for the threshold, then the closed-form gradient."""
    a = torch.cat([w.detach().abs().flatten() for w in weights])
    tau = torch.sort(a).values[int(math.floor(rate * a.numel() + 1e-9))]
    s = INFLECTION / tau
    l1 = a.sum()
    total = torch.tanh(s * a).sum()
    return [torch.sign(w) * s / torch.cosh(s * w.abs()) ** 2 * l1 / total for w in weights]


def tiny_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(),
                         nn.Linear(6, 3)).to(dtype)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
def test_hypersparse_autograd_gradient_equals_the_formula(rate):
    net = tiny_net(dtype=torch.float64)
    reg = HyperSparse(rate)
    reg(net).backward()
    weights = list(prunable_weights(net).values())
    for w, want in zip(weights, sort_based_hypersparse_grad(weights, rate)):
        torch.testing.assert_close(w.grad, want)
    # no gradient reaches biases: only Conv2d/Linear weights are regularised
    assert all(m.bias.grad is None for m in net if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_hypersparse_gradient_matches_finite_differences():
    net = tiny_net(dtype=torch.float64)
    reg = HyperSparse(0.8)
    reg(net).backward()
    weights = list(prunable_weights(net).values())
    s = INFLECTION / reg.threshold
    c = sum(float(w.detach().abs().sum()) for w in weights) / sum(float(torch.tanh(s * w.detach().abs()).sum())
                                                                    for w in weights)

    def phi(ws):  # the potential whose gradient HyperSparse is, with s and the normaliser frozen
        return c * sum(torch.tanh(s * w.abs()).sum() for w in ws)

    h = 1e-6
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = int(torch.randint(len(weights), (1,), generator=gen))
        i = int(torch.randint(weights[t].numel(), (1,), generator=gen))
        plus = [w.detach().clone() for w in weights]
        minus = [w.detach().clone() for w in weights]
        plus[t].view(-1)[i] += h
        minus[t].view(-1)[i] -= h
        numeric = (phi(plus) - phi(minus)) / (2 * h)
        assert weights[t].grad.view(-1)[i].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


def test_hypersparse_value_and_stats_mean_something():
    net = tiny_net()
    reg = HyperSparse(0.9)
    loss = reg(net)
    l1 = sum(float(w.detach().abs().sum()) for w in prunable_weights(net).values())
    assert loss.item() == pytest.approx(l1, rel=1e-5)  # never the constant 0 of the reference
    stats = reg.stats(net)
    assert stats["threshold"] == reg.threshold
    assert stats["grad_pruned"] > stats["grad_kept"] and stats["grad_ratio"] > 1
    assert 0 < stats["l1_below_share"] < 1


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4), rate=st.floats(0.0, 0.999))
def test_threshold_is_the_order_statistic(sizes, rate):
    gen = torch.Generator().manual_seed(sum(sizes))
    weights = [torch.randn(n, generator=gen) for n in sizes]
    a = torch.cat([w.abs() for w in weights])
    k = min(int(math.floor(rate * a.numel() + 1e-9)), a.numel() - 1)
    assert magnitude_threshold(weights, rate) == torch.sort(a).values[k].item()


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4), rate=st.floats(0.0, 0.999),
       guess_factor=st.floats(0.0, 3.0), width=st.floats(0.001, 0.5))
def test_banded_threshold_is_the_same_order_statistic(sizes, rate, guess_factor, width):
    gen = torch.Generator().manual_seed(sum(sizes))
    weights = [torch.randn(n, generator=gen).abs() for n in sizes]
    exact = magnitude_threshold(weights, rate)
    # a guess near the answer takes the band path, a far one falls back; both must give the exact value
    assert banded_threshold(weights, rate, exact * guess_factor, width) == exact
    assert banded_threshold(weights, rate, exact * (1 + width / 2), width) == exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [HyperSparse, L1, L2])
def test_add_gradient_equals_backpropagating_the_penalty(cls, dtype):
    scale = 3e-3
    via_loss, direct = tiny_net(dtype=dtype), tiny_net(dtype=dtype)
    for net in (via_loss, direct):  # both start from the same data gradient, with a few weights exactly 0
        with torch.no_grad():
            net[2].weight[:, :5] = 0
        net(torch.ones(1, 2, 6, 6, dtype=dtype)).sum().backward()
    ref, reg = cls(0.9), cls(0.9)
    value_loss = ref(via_loss)
    (scale * value_loss).backward()
    value = reg.add_gradient(direct, scale=scale)
    assert value == pytest.approx(value_loss.detach().item(), rel=1e-5)
    assert reg.threshold == ref.threshold or cls is not HyperSparse
    tol = {"rtol": 1e-4, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-14}
    for a, b in zip(via_loss.parameters(), direct.parameters()):
        torch.testing.assert_close(b.grad, a.grad, **tol)
    if cls is HyperSparse:  # the closed form used for statistics and profiles agrees too
        fresh = tiny_net(dtype=dtype)
        with torch.no_grad():
            fresh[2].weight[:, :5] = 0
        weights = list(prunable_weights(fresh).values())
        ref.threshold = magnitude_threshold(weights, 0.9)
        leaves = [w.detach().clone().requires_grad_(True) for w in weights]
        want = torch.autograd.grad(ref.penalty(leaves), leaves)
        for got, w in zip(ref.gradient(weights), want):
            torch.testing.assert_close(got, w, **tol)


def test_add_gradient_tracks_the_threshold_across_steps():
    net, reg = tiny_net(), HyperSparse(0.8)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        want = magnitude_threshold(list(prunable_weights(net).values()), 0.8)
        reg.add_gradient(net, scale=1.0)
        opt.step()
        assert reg.threshold == want
    assert reg._calls == 5


def test_l1_and_l2_gradients():
    net = tiny_net()
    L1(0.9)(net).backward()
    w = net[2].weight
    torch.testing.assert_close(w.grad, torch.sign(w.detach()))
    net.zero_grad()
    L2(0.9)(net).backward()
    torch.testing.assert_close(w.grad, 2 * w.detach())


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.0, 0.999), scope=st.sampled_from(["global", "layer"]), seed=st.integers(0, 100))
def test_magnitude_masks_hit_the_sparsity_exactly(rate, scope, seed):
    net = tiny_net(seed)
    with torch.no_grad():  # ties: many equal magnitudes must not break the count
        net[2].weight[:, :10] = 0.5
    masks = magnitude_masks(net, rate, scope=scope)
    weights = prunable_weights(net)
    if scope == "global":
        n = sum(w.numel() for w in weights.values())
        assert sum(int(m.sum()) for m in masks.values()) == n - math.floor(rate * n + 1e-9)
    else:
        for name, w in weights.items():
            assert int(masks[name].sum()) == w.numel() - math.floor(rate * w.numel() + 1e-9)
    kept = torch.cat([w.detach().abs().flatten()[masks[k].flatten()] for k, w in weights.items()])
    dropped = torch.cat([w.detach().abs().flatten()[~masks[k].flatten()] for k, w in weights.items()])
    if scope == "global" and len(kept) and len(dropped):
        assert kept.min() >= dropped.max()


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8)


def lenet(seed=0):
    torch.manual_seed(seed)
    return sl.models.create("lenet_300_100", image_size=8)


ART_OPTS = dict(lr=2e-3, batch_size=64, progress=False)


def test_art_terminates_traces_and_fine_tunes_with_a_fixed_mask(digits):
    model = lenet()
    art = sl.ART(model, 0.9, warmup_epochs=1, lam_init=1e-3, eta=1.6, max_art_epochs=12, profile_every=2)
    h = sl.fit(model, digits, epochs=art.max_epochs, pruner=art, **ART_OPTS)
    info = h.meta["art"]
    m = h.metrics.pivot_table(index="epoch", columns="name", values="value")
    art_rows = m.dropna(subset=["acc_pruned"])
    assert info["terminated"] and "exceeds the dense" in info["stop_reason"]
    assert info["candidate_rule"] == "reference" and info["train_eval_augment"]
    last = art_rows.iloc[-1]
    # the stop criterion held (that it held first, and which copies were candidates: tests/test_art_candidate.py)
    assert info["candidate_window_mean"] > last.acc_dense
    assert info["best_window_mean"] >= info["candidate_window_mean"]
    lam = art_rows["lambda"].to_numpy()
    assert lam[0] == pytest.approx(1e-3) and all(abs(b / a - 1.6) < 1e-9 for a, b in zip(lam, lam[1:]))
    assert {"threshold", "kept_entered", "kept_left", "overlap_final", "grad_ratio"} <= set(m.columns)
    cand = info["candidate_art_epoch"]
    assert m.set_index("art_epoch").loc[cand, "overlap_final"] == pytest.approx(1.0)
    keep = h.blocks[h.blocks.metric == "keep_ratio"]
    assert set(keep.block) == set(prunable_weights(model))
    assert h.meta["profiles"] and h.meta["profiles"][0]["relative_index"][0] == pytest.approx(0.65, abs=0.01)
    # the model now holds the candidate: exactly 90 % zeros in the prunable weights
    nonzero = {k: w != 0 for k, w in prunable_weights(model).items()}
    assert sparsity(nonzero) == pytest.approx(0.9, abs=1e-3)
    ft = art.finetune_pruner()
    n = sum(w.numel() for w in prunable_weights(model).values())
    assert ft.sparsity() == math.floor(0.9 * n) / n
    masks = {k: v.clone() for k, v in ft.masks.items()}
    sl.fit(model, digits, epochs=2, pruner=ft, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4,
           progress=False)
    for name, w in prunable_weights(model).items():
        assert (w[~masks[name]] == 0).all()  # masked weights stay exactly zero
        assert (w[masks[name]] != 0).any()


def test_art_stops_with_a_message_at_max_epochs(digits):
    model = lenet()
    art = sl.ART(model, 0.99, warmup_epochs=0, lam_init=1e-9, eta=1.0, max_art_epochs=2)
    with pytest.warns(UserWarning, match="max_art_epochs=2"):
        h = sl.fit(model, digits, epochs=10, pruner=art, **ART_OPTS)
    assert h.meta["art"]["terminated"] and h.metrics.epoch.max() == 1
    assert art.achieved_sparsity() == pytest.approx(0.99, abs=1e-4)


@pytest.mark.parametrize("augment", ["none", "flip"])
def test_art_resumes_exactly(digits, tmp_path, augment):
    # with augmentation the pruned copies are measured on augmented batches, drawn afresh after the resume
    data = digits if augment == "none" else sl.data.load("digits", image_size=8, augment=augment)
    opts = dict(epochs=6, **ART_OPTS)
    ref_model = lenet()
    ref_art = sl.ART(ref_model, 0.9, warmup_epochs=1, lam_init=1e-3, eta=1.6, max_art_epochs=5)
    with pytest.warns(UserWarning, match="max_art_epochs"):
        ref = sl.fit(ref_model, data, pruner=ref_art, **opts)

    class Crash(sl.Pruner):
        def after_step(self, state):
            if state.step == 70:
                raise RuntimeError("boom")

    model = lenet()
    with pytest.raises(RuntimeError):
        sl.fit(model, data, pruner=sl.ART(model, 0.9, warmup_epochs=1, lam_init=1e-3, eta=1.6, max_art_epochs=5),
               callbacks=[Crash()], checkpoint_dir=tmp_path, **opts)

    class NoCrash(sl.Pruner):
        pass

    NoCrash.__name__ = "Crash"
    model2 = lenet(seed=4)
    art2 = sl.ART(model2, 0.9, warmup_epochs=1, lam_init=1e-3, eta=1.6, max_art_epochs=5)
    with pytest.warns(UserWarning, match="max_art_epochs"):
        resumed = sl.fit(model2, data, pruner=art2, callbacks=[NoCrash()], checkpoint_dir=tmp_path, resume=True,
                         **opts)
    for a, b in zip(ref_model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.to_pandas()["metrics"].equals(ref.to_pandas()["metrics"])
    assert art2.candidate_epoch == ref_art.candidate_epoch
    assert (art2.candidate_acc, art2.candidate_mean) == (ref_art.candidate_acc, ref_art.candidate_mean)


def test_gradual_magnitude_pruning_follows_the_cubic_schedule(digits):
    model = lenet()
    gmp = sl.GradualMagnitude(model, 0.95, start_epoch=1, end_epoch=3, every=5)
    assert gmp.target_at(0, 20) == 0 and gmp.target_at(60, 20) == pytest.approx(0.95)
    assert gmp.target_at(40, 20) == pytest.approx(0.95 * (1 - 0.5 ** 3))
    h = sl.fit(model, digits, epochs=4, pruner=gmp, **ART_OPTS)
    nonzero = {k: w != 0 for k, w in prunable_weights(model).items()}
    n = sum(m.numel() for m in nonzero.values())
    assert sum(int(m.sum()) for m in nonzero.values()) == n - math.floor(0.95 * n)
    s = h.series("sparsity", "train")
    assert s.is_monotonic_increasing and s.iloc[-1] == pytest.approx(0.95, abs=1e-6)


def test_presets_by_name_with_changes_and_clear_errors():
    from sparselab.experiments import art as art_exp
    from sparselab.experiments import p3b_preset

    assert art_exp.art_preset("tiny", seeds=(5,)).seeds == (5,)
    assert art_exp.art_preset("tiny") is art_exp.ART_PRESETS["tiny"]
    assert p3b_preset("tiny", seeds=(5,)).seeds == (5,)
    with pytest.raises(UnknownNameError, match="ART preset.*tiny"):
        art_exp.art_preset("tiny2")
    with pytest.raises(UnknownNameError, match="P3B preset.*cpu"):
        p3b_preset("gpu")
    with pytest.raises(UnknownNameError, match="preset field"):
        p3b_preset("tiny", seed=1)


def test_bad_input():
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        sl.ART(lenet(), 1.0)
    with pytest.raises(UnknownNameError, match="regularizer"):
        sl.ART(lenet(), 0.9, regularizer="l3")
    with pytest.raises(ConfigError, match="odd"):
        sl.ART(lenet(), 0.9, window=2)
    with pytest.raises(UnknownNameError, match="candidate_rule.*best_mean, reference"):
        sl.ART(lenet(), 0.9, candidate_rule="mean")
    with pytest.raises(ConfigError, match="train_eval_limit"):
        sl.ART(lenet(), 0.9, train_eval_limit=0)
    with pytest.raises(ConfigError, match="no Conv2d or Linear"):
        sl.ART(nn.Sequential(nn.ReLU()), 0.9)
    with pytest.raises(ConfigError, match="masks do not fit the model: shape of fc1.weight"):
        sl.fit(lenet(), sl.data.load("digits", image_size=8), epochs=1, progress=False,
               pruner=sl.FixedMask({"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}))


def test_profile_positions_stay_inside_models_beyond_float32_precision():
    from sparselab.pruners.art import profile_indices

    for n in (10, 1000, 2**24 + 3, 20_024_000):
        idx = profile_indices(n)
        assert int(idx.max()) == n - 1 and int(idx.min()) >= int(0.65 * n) - 1
        assert bool((idx[1:] >= idx[:-1]).all())


def test_fused_hypersparse_gradient_equals_the_eager_passes(monkeypatch):
    from sparselab.pruners import regularizers

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 16))  # above FUSE_MIN_WEIGHTS
    assert sum(w.numel() for w in prunable_weights(net).values()) >= regularizers.FUSE_MIN_WEIGHTS
    fused, eager = HyperSparse(0.98), HyperSparse(0.98)
    eager.fuse = False
    results = []
    for reg in (fused, eager):
        net.zero_grad(set_to_none=True)
        l1 = reg.add_gradient(net, scale=1e-3)
        results.append((l1, [w.grad.clone() for w in prunable_weights(net).values()], reg.threshold))
    (l1_f, g_f, tau_f), (l1_e, g_e, tau_e) = results
    assert tau_f == tau_e and l1_f == pytest.approx(l1_e, rel=1e-6)
    for a, b in zip(g_f, g_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    assert fused.fuse  # the fused kernels ran

    # without a compiler the eager passes take over, with one warning
    def broken(name):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(regularizers, "_compiled", broken)
    fallback = HyperSparse(0.98)
    net.zero_grad(set_to_none=True)
    with pytest.warns(RuntimeWarning, match="fused kernels unavailable"):
        fallback.add_gradient(net, scale=1e-3)
    assert not fallback.fuse
    for a, b in zip([w.grad for w in prunable_weights(net).values()], g_e):
        torch.testing.assert_close(a, b)


def test_fused_hypersparse_keeps_the_exact_threshold_on_every_step(monkeypatch):
    """After the first step the fused path finds the threshold from its one-pass band count: it must still be the
    exact order statistic, and the gradient that of the eager passes, as the weights move (and when they jump out
    of the band, where it falls back to the full selection)."""
    from sparselab.pruners import regularizers

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 16))
    fused, eager = HyperSparse(0.98), HyperSparse(0.98)
    eager.fuse = False
    full_selections = []
    full = regularizers.magnitude_threshold
    monkeypatch.setattr(regularizers, "magnitude_threshold", lambda *a: full_selections.append(1) or full(*a))
    gen = torch.Generator().manual_seed(1)
    for step, jitter in enumerate((0.0, 0.003, 0.003, 0.2)):  # the last one leaves the 2 % band
        with torch.no_grad():
            for w in prunable_weights(net).values():
                w.mul_(1 + jitter * torch.randn(w.shape, generator=gen))
        grads = []
        for reg in (fused, eager):
            net.zero_grad(set_to_none=True)
            reg.add_gradient(net, scale=1e-3)
            grads.append([w.grad.clone() for w in prunable_weights(net).values()])
        exact = magnitude_threshold(list(prunable_weights(net).values()), 0.98)
        assert fused.threshold == eager.threshold == exact, step
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    assert len(full_selections) == 2 * 2  # each path: the first step and the jump; the band served the others
    assert fused.fuse and hasattr(fused, "_band") and not hasattr(fused, "_scratch")  # no eager buffers
    assert regularizers.FUSE_MIN_WEIGHTS <= sum(w.numel() for w in prunable_weights(net).values())


def test_summary_counts_runs_no_better_than_the_majority_class():
    import pandas as pd

    from sparselab.experiments.art import summarize

    t = pd.DataFrame({"method": ["dense", "hypersparse", "hypersparse", "oneshot", "oneshot"],
                      "sparsity": [0.0, 0.98, 0.98, 0.98, 0.98], "seed": [0, 0, 1, 0, 1],
                      "acc": [0.9, 0.85, 0.10, 0.10, 0.101], "acc_pruned": [0.9, 0.5, 0.1, 0.1, 0.1],
                      "nonzero_sparsity": [0.0] + [0.98] * 4,
                      "chance_acc": [float("nan"), 0.1003, 0.1003, 0.1003, 0.1003]})
    runs_at_chance = summarize(t)["runs at chance"]
    assert runs_at_chance[(0.98, "hypersparse")] == 1 and runs_at_chance[(0.98, "oneshot")] == 2
    assert runs_at_chance[(0.0, "dense")] == 0
    assert "runs at chance" not in summarize(t.drop(columns="chance_acc"))

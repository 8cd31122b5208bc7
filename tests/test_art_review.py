"""HyperSparse, L1 and L2 in corner cases (all-zero, frozen, float16/bfloat16/float64 weights, ties at the
threshold, one weight), and the ART experiments' checks of their inputs before any work starts."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparselab.errors import ConfigError, UnknownNameError
from sparselab.experiments import art as art_exp
from sparselab.history import History
from sparselab.pruners import ART
from sparselab.pruners.regularizers import (
    INFLECTION,
    L1,
    L2,
    HyperSparse,
    banded_threshold,
    magnitude_threshold,
    make_regularizer,
)
from sparselab.structure import prunable_weights
from sparselab.structure.unstructured import masks_from_scores


def two_layers(n_in=8, n_hidden=8, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.Linear(n_hidden, 3)).to(dtype)


def formula_gradient(weights, tau):
    """METHODS §2.2's gradient in float64: sign(w)·s·sech²(s|w|)·‖w‖₁ / Σ tanh(s|w|)."""
    ws = [w.detach().double() for w in weights]
    s = INFLECTION / tau
    l1 = sum(w.abs().sum() for w in ws)
    total = sum(torch.tanh(s * w.abs()).sum() for w in ws)
    return [torch.sign(w) * s / torch.cosh(s * w.abs()) ** 2 * l1 / total for w in ws]


# ---------------------------------------------------------------- the regularizers' gradients
def test_all_zero_weights_give_a_zero_hypersparse_loss_and_gradient():
    net = two_layers()
    with torch.no_grad():
        for m in net:
            m.weight.zero_()
    loss = HyperSparse(0.5)(net)
    loss.backward()
    assert loss.item() == 0.0
    for m in net:  # sign(0) = 0: no push, and above all no NaN
        assert torch.equal(m.weight.grad, torch.zeros_like(m.weight))


@pytest.mark.parametrize("cls", [HyperSparse, L1, L2])
def test_frozen_weights_get_no_regularizer_gradient(cls):
    via_loss, direct = two_layers(), two_layers()
    for net in (via_loss, direct):
        net[0].weight.requires_grad_(False)
    cls(0.5)(via_loss).backward()
    cls(0.5).add_gradient(direct, scale=1.0)
    # a frozen weight's gradient would still count in gradient clipping
    assert via_loss[0].weight.grad is None and direct[0].weight.grad is None
    torch.testing.assert_close(direct[1].weight.grad, via_loss[1].weight.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_get_the_hypersparse_gradient(dtype):
    # 160 000 weights: their float16 sums overflow; bfloat16 sums and tanh = 2σ − 1 lose the small values
    net = two_layers(400, 400, dtype=dtype)
    weights = list(prunable_weights(net).values())
    reg = HyperSparse(0.9)
    value = reg.add_gradient(net, scale=1.0)
    assert reg.threshold == magnitude_threshold(weights, 0.9)
    l1 = sum(float(w.detach().double().abs().sum()) for w in weights)
    assert value == pytest.approx(l1, rel=1e-6)
    unit = torch.finfo(dtype).eps / 2  # one rounding of the result to the model's dtype
    for w, want in zip(weights, formula_gradient(weights, reg.threshold)):
        assert w.grad.dtype == dtype
        torch.testing.assert_close(w.grad.double(), want, rtol=unit * 1.01, atol=1e-30)
    # the loss path agrees with the in-place one
    ref = HyperSparse(0.9)
    assert ref(net).item() == pytest.approx(l1, rel=unit)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 200), min_size=1, max_size=3), rate=st.floats(0.0, 0.999),
       seed=st.integers(0, 1000))
def test_float64_threshold_is_the_exact_order_statistic(sizes, rate, seed):
    gen = torch.Generator().manual_seed(seed)
    # magnitudes closer together than float32 can tell apart
    weights = [1 + torch.rand(n, generator=gen, dtype=torch.float64) * 1e-9 for n in sizes]
    a = torch.cat(weights)
    want = torch.sort(a).values[min(int(math.floor(rate * a.numel() + 1e-9)), a.numel() - 1)].item()
    assert magnitude_threshold(weights, rate) == want
    assert banded_threshold(weights, rate, want) == want


def test_float64_scores_are_ranked_as_float64():
    scores = {"a": torch.tensor([1 + 3e-12, 1 + 2e-12], dtype=torch.float64),
              "b": torch.tensor([1.0, 1 + 1e-12], dtype=torch.float64)}
    masks = masks_from_scores(scores, 0.5)
    assert masks["a"].all() and not masks["b"].any()


# ---------------------------------------------------------------- the statistics beside the gradient
def test_stats_count_the_pruned_weights_at_the_target_with_ties():
    net = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, -0.5, 0.5, 0.5]]))
    stats = HyperSparse(0.5).stats(net)  # two of the four tied weights are pruned
    assert stats["l1_below_share"] == pytest.approx(0.5)
    assert stats["grad_ratio"] == pytest.approx(1.0)


def test_stats_keep_the_weight_at_the_threshold():
    net = nn.Sequential(nn.Linear(10, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(1.0, 11.0).view(1, 10))
    reg = HyperSparse(0.3)
    stats = reg.stats(net)
    assert stats["threshold"] == 4.0  # the 0-based 3rd smallest: the smallest kept weight
    assert stats["l1_below_share"] == pytest.approx((1 + 2 + 3) / 55)
    w = net[0].weight.detach().flatten().double()
    g = formula_gradient([w], 4.0)[0].abs()
    assert stats["grad_pruned"] == pytest.approx(float(g[:3].mean()), rel=1e-5)
    assert stats["grad_kept"] == pytest.approx(float(g[3:].mean()), rel=1e-5)


def test_a_single_weight_gives_finite_stats_and_profile():
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 1, bias=False))
    art = ART(model, 0.5)
    art.regularizer.add_gradient(model, scale=1.0)
    stats = art.regularizer.stats(model)  # ⌊0.5·1⌋ = 0 weights are pruned: the one weight is kept
    assert stats["l1_below_share"] == 0.0 and stats["grad_ratio"] == 0.0
    history = History()
    art._snapshot(SimpleNamespace(model=model, history=history, step=0), 0)
    assert all(math.isfinite(x) for x in history.meta["profiles"][0]["relative_index"])


# ---------------------------------------------------------------- inputs refused before any work
@pytest.mark.parametrize("regularizer, message", [(HyperSparse, "class HyperSparse"), (None, "NoneType"),
                                                  (3, "int")])
def test_a_regularizer_of_the_wrong_type_is_a_clear_error(regularizer, message):
    with pytest.raises(ConfigError, match=f"regularizer must be.*{message}"):
        ART(two_layers(), 0.5, regularizer=regularizer)
    with pytest.raises(ConfigError, match="regularizer must be"):
        make_regularizer(regularizer, 0.5)


@pytest.mark.parametrize("changes, error, message", [
    ({"candidate_rule": "mean"}, UnknownNameError, "candidate_rule 'mean'.*best_mean, reference"),
    ({"train_eval_limit": 0}, ConfigError, "train_eval_limit must be an integer >= 1"),
    ({"train_eval_limit": 2.5}, ConfigError, "train_eval_limit must be an integer >= 1"),
])
def test_an_art_preset_checks_the_art_options_when_made(changes, error, message):
    with pytest.raises(error, match=message):
        art_exp.art_preset("tiny", **changes)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test as soon as a run would load data or train."""
    def started(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")
    for name in ("load_data", "warm_start", "fit"):
        monkeypatch.setattr(art_exp, name, started)


@pytest.mark.parametrize("changes, message", [
    ({"seeds": 0}, "seeds.*must be a tuple"), ({"seeds": []}, "seeds.*empty"),
    ({"sparsities": 0.9}, "sparsities.*must be a tuple"), ({"methods": "hypersparse"}, "methods.*must be a tuple"),
    ({"sparsities": [0.9, 1.5]}, r"sparsities must lie in \[0, 1\), got 1.5"),
])
def test_compare_refuses_run_lists_it_would_replace_or_misread(no_work, changes, message):
    with pytest.raises(ConfigError, match=message):
        art_exp.compare(art_exp.art_preset("tiny"), progress=False, **changes)


@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\)"), ({"seed": "0"}, "seed must be an integer"),
    ({"warm": (nn.Linear(2, 2), None)}, "warm must be a WarmStart.*got tuple"),
])
def test_run_art_checks_seed_and_warm_start_before_any_work(no_work, changes, message):
    with pytest.raises(ConfigError, match=message):
        art_exp.run_art(art_exp.art_preset("tiny"), progress=False, **changes)

"""P3B's selection and allocation at their edges: ranks of scores float32 cannot tell apart, soft masks and gate
values that round onto 0.5, options that a global selection would ignore, scheduled masks on the weights' device,
and properties of the water-filling and the threshold search on a real ViT structure."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import nano_vit as nano
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab.callbacks import TrainState
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.pruners.allocation import water_fill
from sparselab.pruners.masking import MovementPruning
from sparselab.pruners.selection import (
    GATE_FACTORS,
    find_threshold,
    masks_for_threshold,
    order_block_elements,
    soft_masks,
)
from sparselab.structure import Gates, ViTStructure


# ---------------------------------------------------------------- ranks (§1.5.2)
@pytest.mark.parametrize("scores", [[1e-50, 3e-50, 2e-50], [1 + 1e-12, 1.0, 1 + 2e-12]])
def test_ranks_follow_float64_scores_that_float32_cannot_tell_apart(scores):
    """Taylor, L1 and Wanda scores are float64: tiny squared gradients (below float32's range) or close values must
    be ranked by their value, not tied and then ranked by position."""
    gates, order = order_block_elements({"mlp_hid": torch.tensor(scores, dtype=torch.float64)}, GATE_FACTORS)
    expected = sorted(range(3), key=lambda i: scores[i])
    assert order[:, 1].tolist() == expected


# ---------------------------------------------------------------- soft masks and hard state at 0.5 (§1.2, §1.5.6)
@pytest.mark.parametrize("tau", [0.1, 1e6, 1e9])
def test_soft_masks_keep_exactly_the_elements_above_the_threshold_for_any_tau(tau):
    """For a large τ·n the sigmoid lies within float32 rounding of 0.5: a removed element must not round onto 0.5
    (kept) and miss the parameter budget."""
    gates, order = order_block_elements({"a": torch.arange(12.0), "b": torch.arange(8.0)}, {})
    sizes = {"a": 12, "b": 8}
    for t in (0, 5, 13, 20):
        soft = soft_masks(gates, sizes, order, t, tau)
        hard = masks_for_threshold(gates, sizes, order, t)
        for g in gates:
            assert torch.equal(soft[g] >= 0.5, hard[g]), (t, g)


def test_gate_values_rounded_to_a_narrow_dtype_keep_their_side_of_one_half():
    """A bfloat16 model's gates: a soft value just below 0.5 rounds to 0.5 in bfloat16 and would count as kept."""
    model = timm.create_model("vit_nano_patch4_28", num_classes=10).to(torch.bfloat16)
    gates = Gates(ViTStructure(model))
    values = torch.tensor([0.4999, 0.5, 0.5001, 0.2, 0.9] + [1.0] * 251)
    gates.set_values({0: {"mlp_hid": values}})
    kept = gates.hard_masks()[0]["mlp_hid"]
    assert torch.equal(kept, values >= 0.5)
    stored = gates.gate(0, "mlp_hid").detach().float()
    assert stored[3] == pytest.approx(0.2, abs=1e-3) and stored[4] == pytest.approx(0.9, abs=1e-2)  # others as cast


# ---------------------------------------------------------------- options
def test_gate_factors_with_a_global_selection_are_refused():
    with pytest.raises(ConfigError, match="gate_factors"):
        sl.P3B(nano(), 0.5, allocation="global", gate_factors={"mlp_hid": 0.5})
    # the method's factors (as a recorded config carries them) are accepted
    pruner = sl.P3B(nano(), 0.5, allocation="global", gate_factors=dict(GATE_FACTORS))
    assert sl.P3B.from_config(nano(), 0.5, pruner.options).options.allocation == "global"


# ---------------------------------------------------------------- threshold search on a real structure (§1.5.3-5)
def _kept_by_masks(s: ViTStructure, block, gates, sizes, order, t) -> int:
    masks = masks_for_threshold(gates, sizes, order, t)
    return s.linear_params(block, {block.layer: masks})


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), keep=st.floats(0.05, 1.0), block=st.integers(0, 3),
       unit=st.sampled_from(["dim", "head"]))
def test_selected_kept_parameters_are_within_one_element_of_the_target(seed, keep, block, unit):
    """The threshold found by the vectorised count gives, counted from the hard masks, the kept Linear parameters
    closest to κ̃·W: no neighbouring threshold is closer, so the miss is at most one element's cost (qkv elements
    cost 3·heads rows and heads columns, or a whole head)."""
    s = _structure(unit)
    b = s.blocks[block]
    gen = torch.Generator().manual_seed(seed)
    sizes = {g: s.gate_sizes(b.layer)[g] for g in b.gates}
    scores = {g: torch.rand(n, generator=gen, dtype=torch.float64) for g, n in sizes.items()}
    gates, order = order_block_elements(scores, GATE_FACTORS)
    target = keep * s.linear_params(b)
    t = find_threshold(gates, sizes, order, lambda kept: s.kept_linear_params(b, kept), target)
    miss = abs(_kept_by_masks(s, b, gates, sizes, order, t) - target)
    for other in (t - 1, t + 1):
        if 0 <= other <= len(order):
            assert miss <= abs(_kept_by_masks(s, b, gates, sizes, order, other) - target)


_STRUCTURES: dict[str, ViTStructure] = {}


def _structure(unit: str) -> ViTStructure:
    if unit not in _STRUCTURES:
        _STRUCTURES[unit] = ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10), unit)
    return _STRUCTURES[unit]


def test_a_tie_between_two_thresholds_goes_to_the_one_within_the_target():
    gates, order = order_block_elements({"a": torch.tensor([3.0, 1.0, 2.0])}, {})
    # kept: 30, 20, 10, 0 for t = 0..3; 15 lies halfway between t = 1 and t = 2
    assert find_threshold(gates, {"a": 3}, order, lambda kept: 10 * kept["a"], target=15) == 2


# ---------------------------------------------------------------- water-filling (§1.4.5)
@pytest.mark.parametrize("upper", [None, [0.0, 1.0]])
def test_water_filling_meets_the_budget_when_the_last_free_block_has_a_subnormal_importance(upper):
    """With the other block pinned, s = rest / (I·W) overflowed to inf for a subnormal I and the block was pinned at
    1: the blocks kept twice the budget."""
    caps = None if upper is None else torch.tensor(upper, dtype=torch.float64)
    budget = 1.5 if upper is None else 0.5
    kappa = water_fill(torch.tensor([1.0, 1e-311], dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                       budget, upper=caps)
    assert float(kappa.sum()) == pytest.approx(budget)
    assert kappa[1] == pytest.approx(0.5)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.just(0.0), st.floats(1e-6, 10.0)), st.integers(1, 5000),
                          st.floats(0.0, 1.0)), min_size=1, max_size=10), st.floats(0.0, 1.0))
def test_water_filling_with_caps_meets_the_budget_and_pins_only_at_a_bound(blocks, fraction):
    imp = torch.tensor([b[0] for b in blocks], dtype=torch.float64)
    w = torch.tensor([b[1] for b in blocks], dtype=torch.float64)
    cap = torch.tensor([b[2] for b in blocks], dtype=torch.float64)
    budget = fraction * float((w * cap).sum())
    kappa = water_fill(imp, w, budget, upper=cap)
    assert ((kappa >= 0) & (kappa <= cap)).all()
    assert float((kappa * w).sum()) == pytest.approx(budget, rel=1e-6, abs=1e-6)
    free = (kappa > 1e-12) & (kappa < cap - 1e-12) & (imp > 0)
    if free.any():  # a block between its bounds has κ = s·I; a block pinned at its cap would exceed it
        s = float((kappa[free] / imp[free]).max())
        assert torch.allclose(kappa[free], s * imp[free], rtol=1e-6)
        pinned = (kappa >= cap - 1e-12) & (cap > 1e-9)
        assert (s * imp[pinned] >= cap[pinned] * (1 - 1e-6)).all()


# ---------------------------------------------------------------- scheduled unstructured masks
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_movement_masks_follow_the_weights_onto_their_device():
    """Movement scores live on the CPU; the masks made from them must be on the weights' device, or masking the
    weights and gradients fails after the first update."""
    device = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)).to(device)
    pruner = MovementPruning(model, 0.5, start_epoch=0, end_epoch=1, every=1)
    state = TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), history=History(),
                       device=device, epochs=1, steps_per_epoch=2)
    pruner.on_fit_start(state)
    model(torch.randn(4, 8, device=device)).sum().backward()
    pruner.after_backward(state)
    state.step = 1
    pruner.after_step(state)
    params = dict(model.named_parameters())
    assert all(m.device == params[k].device for k, m in pruner.masks.items())
    pruner.after_backward(state)  # masks the gradients with the new masks

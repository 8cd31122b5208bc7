"""Gates on the Linear weights compute what gates on the activations (the reference hooks) compute: the same
outputs and the same gate gradients, for any soft gate values, with and without qk-norm."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparselab.errors import ConfigError
from sparselab.structure import ViTStructure
from sparselab.structure.gates import GATE_SITES, Gates


def _model(qk_norm: bool, seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_nano_patch4_28", num_classes=10, qk_norm=qk_norm)


def _run(model, on: str, values, x, y, qkv_unit="dim"):
    gates = Gates(ViTStructure(model, qkv_unit), on=on)
    gates.set_values(values)
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = {k: p.grad.clone() for k, p in gates.values.items()}
    model.zero_grad()
    gates.remove()
    return out.detach(), grads


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), qk_norm=st.booleans(), hard=st.booleans(),
       qkv_unit=st.sampled_from(["dim", "head"]))
def test_weight_gates_equal_activation_gates(seed, qk_norm, hard, qkv_unit):
    model = _model(qk_norm)
    s = ViTStructure(model, qkv_unit)
    gen = torch.Generator().manual_seed(seed)
    values = {i: {g: torch.rand(n, generator=gen) for g, n in s.gate_sizes(i).items()} for i in range(s.depth)}
    if hard:
        values = {i: {g: (v > 0.5).float() for g, v in per.items()} for i, per in values.items()}
    x, y = torch.randn(3, 1, 28, 28, generator=gen), torch.randint(0, 10, (3,), generator=gen)
    ref_out, ref_grads = _run(model, "activations", values, x, y, qkv_unit)
    out, grads = _run(model, "weights", values, x, y, qkv_unit)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for key, g in ref_grads.items():
        torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()) + 1e-9)


def test_remove_restores_the_model_and_a_copy_keeps_its_own_weights():
    model = _model(False).eval()
    x = torch.randn(2, 1, 28, 28)
    dense = model(x)
    gates = Gates(ViTStructure(model))
    gates.set_hard({0: {"mlp_hid": torch.arange(256) < 100}, 1: {"attn_qkv": torch.arange(16) < 4}})
    gated = model(x)
    assert not torch.allclose(gated, dense)
    twin = copy.deepcopy(model)  # computes gated, with the copy's weights
    with torch.no_grad():
        twin.head.weight.mul_(2.0)
    assert torch.allclose(twin(x), model(x)) is False
    with torch.no_grad():
        twin.head.weight.div_(2.0)
    torch.testing.assert_close(twin(x), gated)
    with pytest.raises(ConfigError, match="attached twice"):
        Gates(ViTStructure(model))
    gates.remove()
    assert not gates.attached
    torch.testing.assert_close(model(x), dense)
    assert not any("forward" in vars(m) for m in model.modules())


def test_an_unknown_site_is_refused():
    with pytest.raises(ConfigError, match="weights, activations"):
        Gates(ViTStructure(_model(False)), on="inputs")
    assert GATE_SITES == ("weights", "activations")


@settings(max_examples=20, deadline=None)
@given(heads=st.integers(1, 4), head_dim=st.integers(1, 5), qkv_unit=st.sampled_from(["dim", "head"]),
       seed=st.integers(0, 2**16))
def test_reduce_gates_sums_what_weight_index_names(heads, head_dim, qkv_unit, seed):
    from sparselab.structure.vit import reduce_gates, weight_index

    gen = torch.Generator().manual_seed(seed)
    d, width = 5, heads * head_dim
    w = {"qkv": torch.randn(3 * width, d, generator=gen), "proj": torch.randn(d, width, generator=gen),
         "fc1": torch.randn(7, d, generator=gen), "fc2": torch.randn(d, 7, generator=gen)}
    per = reduce_gates(w, head_dim, qkv_unit)["attn_qkv"]
    assert per.numel() == (head_dim if qkv_unit == "dim" else heads)
    for e in range(per.numel()):
        el = torch.tensor([e])
        rows = weight_index("attn_qkv", "qkv", el, heads, head_dim, qkv_unit)
        cols = weight_index("attn_qkv", "proj", el, heads, head_dim, qkv_unit)
        assert rows.numel() == 3 * (heads if qkv_unit == "dim" else head_dim)
        torch.testing.assert_close(per[e], w["qkv"][rows].sum() + w["proj"][:, cols].sum())


def test_switched_off_gates_compute_the_ungated_model_and_get_no_gradients():
    model = _model(False)
    twin = copy.deepcopy(model)
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3])
    gates = Gates(ViTStructure(model))
    assert gates.enabled and gates.all_one()
    gates.enabled = False
    torch.nn.functional.cross_entropy(model(x), y).backward()
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    assert all(p.grad is None for p in gates.parameters())
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad), name
    gates.set_values({0: {"mlp_hid": torch.ones(256)}})  # still all 1: stays off
    assert not gates.enabled
    gates.set_values({1: {"attn_qkv": torch.full((16,), 0.5)}})  # off would now compute the wrong model
    assert gates.enabled and not gates.all_one()
    assert not torch.allclose(model(x), twin(x))

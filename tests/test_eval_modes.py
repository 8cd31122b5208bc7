"""Evaluation inside a training model gives every submodule its own mode back, and ART's sparsification History
ends with the test row of the model fine-tuning starts from."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.attribution import attribute, block_attributions, compare_attributions
from sparselab.callbacks import TrainState
from sparselab.experiments import art as art_exp
from sparselab.history import History


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def frozen_bn_net() -> nn.Sequential:
    """A training model whose batch norm is frozen (eval mode), as when fine-tuning with fixed statistics."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3)).train()
    net[1].eval()
    return net


def frozen_vit() -> nn.Module:
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=10).train()
    model.blocks[0].eval()
    return model


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_attribute_gives_a_frozen_submodule_its_eval_mode_back(method):
    net = frozen_bn_net()
    before = modes(net)
    attribute(net, torch.randn(2, 1, 8, 8), method=method, n_steps=2)
    assert modes(net) == before


def test_compare_attributions_gives_both_models_their_submodule_modes_back():
    dense, pruned = frozen_bn_net(), frozen_bn_net()
    before = modes(dense), modes(pruned)
    compare_attributions(dense, pruned, torch.randn(2, 1, 8, 8), method="saliency")
    assert (modes(dense), modes(pruned)) == before


def test_block_attributions_gives_a_frozen_block_its_eval_mode_back():
    model = frozen_vit()
    before = modes(model)
    block_attributions(model, torch.randn(1, 1, 28, 28), n_steps=2)
    assert modes(model) == before
    assert not model.blocks[0].training and model.blocks[1].training


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnxruntime") is None,
                    reason="needs the deploy extra (onnx, onnxscript, onnxruntime)")
def test_export_onnx_gives_a_frozen_submodule_its_eval_mode_back(tmp_path):
    net = frozen_bn_net()
    before = modes(net)
    sl.structure.export_onnx(net, tmp_path / "net.onnx", input_shape=(1, 8, 8))
    assert modes(net) == before


def test_art_pruned_copy_accuracy_gives_a_frozen_submodule_its_eval_mode_back():
    data = sl.data.load("digits", image_size=8)
    model = sl.models.create("lenet_300_100", image_size=8).train()
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    first.eval()
    before = modes(model)
    art = sl.ART(model, sparsity=0.9, warmup_epochs=0, train_eval_limit=64)
    state = TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), history=History(),
                       device=torch.device("cpu"), epochs=1, steps_per_epoch=1, data=data)
    counts = art._train_counts(model, state)
    assert counts[1].item() == 64
    assert modes(model) == before


def test_art_sparsification_history_ends_with_the_test_row_of_the_returned_candidate():
    preset = art_exp.art_preset("tiny")
    data = art_exp.load_data(preset)
    run = art_exp.run_art(preset, "hypersparse", 0.9, 0, data=data, progress=False)
    h = run.history
    assert h.meta["art"]["candidate_art_epoch"] is not None
    # the last test row is the pruned candidate's (the result table's acc_pruned), at the History's last step, not
    # the dense model ART's last epoch trained
    tests = h.metrics.query("split == 'test' and name == 'acc'")
    assert tests.value.iloc[-1] == h.last("acc", "test") == run.result["acc_pruned"]
    assert tests.step.iloc[-1] == h.metrics.step.max()
    assert "acc_pruned" in h.meta["final_test"]


def test_fit_with_art_ends_with_the_test_row_of_the_model_it_returns():
    """fit's final test runs before the plug-ins' on_fit_end; ART hands its candidate back at the end of the epoch
    that ends training, so the final row measures the (sparse) model fit returns, not the dense last one."""
    data = sl.data.load("digits", image_size=8, val_fraction=0.2)
    torch.manual_seed(0)
    model = sl.models.create("lenet_300_100", image_size=8)
    art = sl.ART(model, sparsity=0.9, warmup_epochs=1, max_art_epochs=2, window=1, train_eval_limit=64)
    h = sl.fit(model, data, epochs=art.max_epochs, pruner=art, batch_size=64, lr=0.05, progress=False, seed=0)
    assert art.candidate is not None
    weights = [w for name, w in model.named_parameters() if name.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.89  # the returned model is the pruned candidate
    final = sl.evaluate(model, data.test)
    tests = h.metrics.query("split == 'test' and name == 'acc'")
    assert len(tests) == 1 and tests.value.iloc[-1] == pytest.approx(final["acc"], abs=0)


def _autocast_recorder(model: nn.Module) -> list:
    seen: list = []
    model.register_forward_pre_hook(lambda m, a: seen.append(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    return seen


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("amp, dtype", [(True, torch.float16), (True, torch.bfloat16), (False, torch.float16)])
def test_art_pruned_copy_accuracy_runs_in_the_runs_precision(augment, amp, dtype):
    """ART's own accuracy of the pruned copy (which picks its candidate and ends ART) autocasts as the run does."""
    data = sl.data.load("digits", image_size=8)
    model = sl.models.create("lenet_300_100", image_size=8)
    seen = _autocast_recorder(model)
    art = sl.ART(model, sparsity=0.9, warmup_epochs=0, train_eval_limit=64, train_eval_augment=augment)
    state = TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), history=History(),
                       device=torch.device("cpu"), epochs=1, steps_per_epoch=1, data=data, amp=amp, amp_dtype=dtype)
    art._train_accuracy(model, state)
    assert seen and set(seen) == {dtype if amp else None}


def test_fit_hands_its_autocast_settings_to_the_plug_ins():
    data = sl.data.load("digits", image_size=8)
    model = sl.models.create("lenet_300_100", image_size=8)

    class Record(sl.callbacks.Callback):
        def on_fit_start(self, state):
            self.amp, self.dtype = state.amp, state.amp_dtype

    rec = Record()
    sl.fit(model, data, epochs=1, max_steps_per_epoch=1, callbacks=[rec], progress=False, amp_dtype="float16",
           final_test=False)
    assert rec.amp is False and rec.dtype == torch.float16  # amp is off on the CPU; the dtype is the run's

"""Pieces a researcher plugs in (allocations, criteria, regularizers, comparison methods, datasets, callbacks):
their mistakes are refused by name instead of turning into a silently wrong run."""
from __future__ import annotations

import warnings

import pytest
import torch

import sparselab as sl
from sparselab.callbacks import Callback
from sparselab.errors import ConfigError, DivergedError
from sparselab.pruners.allocators import Allocation
from sparselab.pruners.criteria import GateCriterion, L1Criterion
from sparselab.registry import Registry

SCHEDULE = dict(warmup=0, sparsify=1, finalize=2, updates_per_epoch=2)


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=96)


def _run(digits, **pruner_options):
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(**SCHEDULE), **pruner_options)
    return sl.fit(model, digits, epochs=2, batch_size=32, pruner=pruner, progress=False), pruner


class NaNAllocation(Allocation):
    def importance(self, ctx):
        values = torch.ones(len(ctx.structure.blocks), dtype=torch.float64)
        values[1] = float("nan")
        return values, {}


class OnePerGate(GateCriterion):
    def scores(self, final):
        return {k: torch.ones(1) for k in self.gates.values.keys()}


class NaNScores(L1Criterion):
    def scores(self, final):
        out = super().scores(final)
        key = next(iter(out))
        out[key] = out[key].clone()
        out[key][0] = float("nan")
        return out


def test_a_non_finite_importance_stops_the_run_instead_of_pruning_everything(digits):
    with pytest.raises(DivergedError, match=r"allocation 'NaNAllocation' gave a non-finite importance for "
                                            r"blocks.0.mlp"):
        _run(digits, allocation=NaNAllocation(), patch_probe=None)


@pytest.mark.parametrize("criterion,error,pattern", [
    (OnePerGate, ConfigError, r"criterion 'OnePerGate' gave scores of shape \(1,\) for gate L0_attn_in; it has 64 "
                              r"elements"),
    (NaNScores, DivergedError, r"criterion 'l1' gave non-finite scores for gate L0_attn_in"),
])
def test_scores_that_cannot_rank_every_element_are_refused(digits, criterion, error, pattern):
    with pytest.raises(error, match=pattern):
        _run(digits, allocation="uniform", criterion=criterion())


class CountingAllocation(Allocation):
    """Keeps a state key named like the criterion's own ('count')."""

    def __init__(self):
        self.count = 0

    def importance(self, ctx):
        self.count += 7
        return torch.ones(len(ctx.structure.blocks), dtype=torch.float64), {}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_allocation_and_criterion_states_do_not_overwrite_each_other(digits):
    _, pruner = _run(digits, allocation=CountingAllocation(), criterion="l1")
    state = pruner.state_dict()
    assert state["allocation_state"] == {"count": 7 * pruner.updates}
    assert "count" in state["criterion_state"]
    fresh = sl.P3B(sl.models.create("vit_nano_patch4_28", num_classes=10), 0.5, allocation=CountingAllocation(),
                   criterion="l1")
    fresh.load_state_dict(state)
    assert fresh.allocation.count == 7 * pruner.updates
    legacy = {k: v for k, v in state.items() if k not in ("allocation_state", "criterion_state")}
    legacy.update(state["criterion_state"])  # a checkpoint from before: the parts' states merged into one dict
    fresh.criterion.count = -1
    fresh.load_state_dict({**legacy, "count": state["criterion_state"]["count"]})
    assert fresh.criterion.count == state["criterion_state"]["count"]


def test_an_art_method_whose_masks_miss_a_layer_is_refused_and_rows_keep_their_target():
    from sparselab.experiments.art import METHOD_REGISTRY, art_preset, compare, register_method
    from sparselab.structure.unstructured import prunable_weights

    def random_masks(job):
        g = torch.Generator().manual_seed(job.seed)
        return {n: torch.rand(w.shape, generator=g) >= job.sparsity for n, w in prunable_weights(job.model).items()}, {}

    def first_layer_only(job):
        name, w = next(iter(prunable_weights(job.model).items()))
        return {name: torch.ones_like(w, dtype=torch.bool)}, {}

    preset = art_preset("tiny", data_options={"limit": 96}, warmup_epochs=1, finetune_epochs=1)
    try:
        register_method("test_random")(random_masks)
        register_method("test_partial")(first_layer_only)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table, runs = compare(preset, methods=["test_random"], sparsities=[0.9], progress=False)
        row = table[table.method == "test_random"].iloc[0]
        assert row.sparsity == 0.9 and row.mask_sparsity != 0.9 and abs(row.mask_sparsity - 0.9) < 0.01
        with pytest.raises(ConfigError, match=r"the masks method 'test_partial' returned do not match the prunable "
                                              r"weights: missing"):
            compare(preset, methods=["test_partial"], sparsities=[0.9], progress=False)
    finally:
        METHOD_REGISTRY.pop("test_random", None)
        METHOD_REGISTRY.pop("test_partial", None)


def test_registering_over_a_name_warns_and_a_loader_without_a_docstring_registers():
    registry = Registry("shape")

    class Square:
        pass

    class Circle:
        pass

    registry.register("square")(Square)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.register("square")(Square)  # the same definition again (a notebook cell run twice): no news
    with pytest.warns(UserWarning, match=r"shape 'square' was registered before .*Circle replaces it"):
        registry.register("square")(Circle)
    with pytest.raises(ConfigError, match="non-empty string name"):
        registry.register(None)
    from sparselab.data import registry as data_registry

    try:
        sl.data.register("test_lambda")(lambda image_size=None: sl.data.load("digits", image_size=8, limit=32))
        assert sl.data.available()["test_lambda"] == "test_lambda"
    finally:
        data_registry._REGISTRY.pop("test_lambda", None)


class Silent(Callback):
    """A callback whose settings change between runs while config() says nothing at first."""

    def __init__(self, config):
        self._config = config

    def config(self):
        return self._config


class Stop(Callback):
    def after_step(self, state):
        if state.step == 2:
            raise RuntimeError("stop")


def test_a_callback_config_of_none_is_still_compared_on_resume(tmp_path):
    data = sl.data.load("digits", image_size=8, limit=96)
    model = sl.models.create("lenet_300_100", image_size=8)
    with pytest.raises(RuntimeError, match="stop"):
        sl.fit(model, data, epochs=1, batch_size=32, progress=False, checkpoint_dir=tmp_path, checkpoint_every=1,
               callbacks=[Silent(None), Stop()])
    with pytest.raises(sl.errors.CheckpointError, match="Silent settings differ"):
        sl.fit(sl.models.create("lenet_300_100", image_size=8), data, epochs=1, batch_size=32, progress=False,
               checkpoint_dir=tmp_path, resume=True, callbacks=[Silent({"threshold": 3}), Stop()])


def test_an_art_regularizer_of_the_users_class_is_recorded_by_its_class():
    class Quartic(sl.pruners.regularizers.L2):
        pass

    model = sl.models.create("lenet_300_100", image_size=8)
    assert sl.ART(model, 0.9, regularizer="l2").config()["regularizer"] == "l2"
    recorded = sl.ART(model, 0.9, regularizer=Quartic(0.9)).config()["regularizer"]
    assert recorded.endswith("Quartic")


def test_the_history_records_what_the_pruner_and_callbacks_were_configured_with(digits):
    history, pruner = _run(digits, allocation="uniform", criterion="l1")
    plugins = history.meta["plugins"]
    assert plugins[0]["name"] == "P3B" and plugins[0]["config"]["criterion"] == "l1"
    assert plugins[0]["config"]["allocation"] == "uniform"


def test_a_callback_config_without_a_json_form_is_refused_before_training():
    data = sl.data.load("digits", image_size=8, limit=64)
    with pytest.raises(ConfigError, match=r"Silent.config\(\) must return JSON values"):
        sl.fit(sl.models.create("lenet_300_100", image_size=8), data, epochs=1, batch_size=32, progress=False,
               callbacks=[Silent({"opt": object()})])

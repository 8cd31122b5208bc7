"""Options handed to P3B by run_p3b and by hand reach the run, or are refused with a message that says why."""
import pytest

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.experiments import p3b as experiments
from sparselab.pruners.allocators import BenefitAllocation


@pytest.fixture
def tiny(monkeypatch):
    """The tiny preset with a fresh source model (no pretraining: these tests stop before training)."""
    preset = experiments.p3b_preset("tiny")
    data = experiments.load_data(preset)
    monkeypatch.setattr(experiments, "source_model", lambda preset, data, seed=None: sl.models.create(
        preset.model, num_classes=data.num_classes, in_chans=data.in_chans))
    return preset, data


def test_a_patch_probe_in_pruner_options_is_the_one_the_run_uses(tiny, monkeypatch):
    """It used to collide with the preset's patch probe inside run_p3b (a TypeError before any training)."""
    preset, data = tiny
    built = {}

    class Built(Exception):
        pass

    def capture(model, ratio, **kwargs):
        built.update(kwargs)
        raise Built

    monkeypatch.setattr(experiments, "P3B", capture)
    with pytest.raises(Built):
        experiments.run_p3b(preset, "p3b", 0.5, seed=0, data=data, progress=False,
                            pruner_options={"patch_probe": "linear"})
    assert built["patch_probe"] == "linear" and preset.patch_probe != "linear"


@pytest.mark.parametrize("key", ["schedule", "num_classes"])
def test_pruner_options_may_not_set_what_the_run_sets(tiny, key):
    preset, data = tiny
    with pytest.raises(ConfigError, match=f"pruner_options may not set {key}"):
        experiments.run_p3b(preset, "p3b", 0.5, seed=0, data=data, progress=False,
                            pruner_options={key: preset.schedule if key == "schedule" else 3})


def test_benefit_keywords_beside_an_allocation_object_name_the_object():
    """The message used to say the BenefitAllocation object 'runs no probes'."""
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    with pytest.raises(ConfigError, match=r"a BenefitAllocation object, which carries its own settings") as err:
        sl.P3B(model, 0.5, num_classes=10, allocation=BenefitAllocation(), probe_every=4)
    assert "runs no probes" not in str(err.value)
    with pytest.raises(ConfigError, match="allocation is 'uniform', which runs no probes"):
        sl.P3B(model, 0.5, num_classes=10, allocation="uniform", probe_every=4)

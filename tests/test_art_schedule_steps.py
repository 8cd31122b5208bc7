"""The GMP / movement baselines of the ART comparison update their masks four times per epoch of the optimizer steps
that fit takes, so that max_steps_per_epoch and accumulate_steps change how often they prune, not only how long."""
from types import SimpleNamespace

import pytest
import torch

from sparselab.experiments.art import METHOD_REGISTRY, art_preset
from sparselab.experiments.recipes import steps_per_epoch


def _every(method: str, fit_options: dict, train_images: int) -> int:
    """The update interval the method's pruner is built with for a training split of ``train_images``."""
    preset = art_preset("tiny").replace(fit={**art_preset("tiny").fit, **fit_options})
    seen = {}
    job = SimpleNamespace(preset=preset, model=torch.nn.Sequential(torch.nn.Linear(8, 4)), sparsity=0.5,
                          data=SimpleNamespace(train=range(train_images)),
                          fit=lambda pruner, epochs: seen.setdefault("pruner", pruner))
    METHOD_REGISTRY.get(method)(job)
    return seen["pruner"].every


@pytest.mark.parametrize("method", ["gmp", "movement"])
@pytest.mark.parametrize("fit_options,expected", [
    ({"batch_size": 64}, 5),                                   # 1295 images: 21 steps, an update every 5
    ({"batch_size": 64, "accumulate_steps": 4}, 1),            # 6 optimizer steps per epoch
    ({"batch_size": 64, "max_steps_per_epoch": 12}, 3),        # 12 steps per epoch
    ({"batch_size": 64, "max_steps_per_epoch": 2}, 1),         # fewer steps than updates: every step
])
def test_scheduled_baselines_update_four_times_per_epoch_of_optimizer_steps(method, fit_options, expected):
    every = _every(method, fit_options, 1295)
    assert every == expected == max(1, steps_per_epoch(1295, {**art_preset("tiny").fit, **fit_options}) // 4)

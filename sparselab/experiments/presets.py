"""What the P3B and ART experiment presets share: picking one by name and loading its dataset.

Example:
    >>> from sparselab.experiments.p3b import PRESETS
    >>> named_preset("P3B preset", PRESETS, "tiny", seeds=(3,)).seeds
    (3,)
"""
from __future__ import annotations

from typing import Any, Mapping

from .. import data as sl_data
from ..errors import ConfigError, check_ratio, check_seed, unknown_name


def named_preset(kind: str, presets: Mapping[str, Any], name: str, **changes: Any) -> Any:
    """``presets[name]`` with ``changes`` applied through its ``replace``; a clear error names the known ones."""
    if name not in presets:
        raise unknown_name(kind, name, presets)
    return presets[name].replace(**changes) if changes else presets[name]


def load_data(preset: Any, **options: Any):
    """The preset's dataset (its ``data``, ``image_size`` and ``data_options``, overridden by ``options``, which
    may name ``image_size`` too).

    Raises:
        ConfigError: ``image_size`` among the preset's ``data_options`` (the preset's own ``image_size`` field says
            it), or ``split`` among the options (a preset's runs need every split).
    """
    if "image_size" in preset.data_options:
        raise ConfigError(f"preset {preset.name!r} gives image_size in data_options; set the preset's image_size "
                          f"field instead (preset.replace(image_size=...))")
    merged = {"image_size": preset.image_size, **preset.data_options, **options}
    if "split" in merged:
        raise ConfigError(f"load_data loads every split a preset's runs need; got split={merged['split']!r}")
    return sl_data.load(preset.data, **merged)


def require_test_split(data) -> None:
    """Refuse, before any training, a dataset whose results would have no test accuracy (NaN in the table)."""
    if data.test is None:
        raise ConfigError(f"dataset {data.name!r} has no test split, so the run could report no test accuracy; "
                          f"give it a test set (an ImageFolder tree's val/ folder serves as one)")


#: arguments of ``models.create`` that a preset's runs set themselves: a ``model_options`` key among them would
#: collide with them when the model is built
MODEL_ARGUMENTS = ("num_classes", "in_chans", "pretrained", "recipe")


def check_preset_lists(preset: Any, **lists: Any) -> None:
    """Refuse, where a preset is made, run lists (``seeds``, ``methods``, ``prune_ratios``, ``sparsities``) that are
    not a non-empty tuple or list without repeats (a repeat would make the same run twice), seeds that are not
    integers from 0, and ``model_options`` that set what the runs set themselves.

    Example:
        >>> from types import SimpleNamespace
        >>> check_preset_lists(SimpleNamespace(name="p", model_options={}), seeds=(0, 0))
        Traceback (most recent call last):
        ...
        sparselab.errors.ConfigError: seeds of preset 'p' repeat 0: each such run would be made twice
    """
    for field, values in lists.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
            raise ConfigError(f"{field} of preset {preset.name!r} must be a tuple, e.g. {field}=({values!r},), "
                              f"got {values!r}")
        if not values:
            raise ConfigError(f"{field} of preset {preset.name!r} is empty: it would make no runs")
        repeated = list(dict.fromkeys(v for v in values if list(values).count(v) > 1))
        if repeated:
            raise ConfigError(f"{field} of preset {preset.name!r} repeat {', '.join(map(str, repeated))}: each such "
                              f"run would be made twice")
    for seed in lists.get("seeds", ()):
        check_seed(f"each seed of preset {preset.name!r}", seed)
    clash = [k for k in getattr(preset, "model_options", {}) if k in MODEL_ARGUMENTS]
    if clash:
        raise ConfigError(f"model_options of preset {preset.name!r} set {', '.join(clash)}, which the runs set from "
                          f"the data and the preset's own fields; leave them out")


def run_lists(preset: Any, **given: Any) -> dict[str, list]:
    """The run lists a comparison makes (``seeds``, ``methods``, ``prune_ratios``, ``sparsities``): each one given,
    or the preset's own where it is None (only None: ``0`` or ``[]`` is no list of runs), checked with
    :func:`check_preset_lists` and, for ratios, to lie in [0, 1).

    Example:
        >>> from types import SimpleNamespace
        >>> run_lists(SimpleNamespace(name="p", seeds=(0, 1)), seeds=None, sparsities=(0.9,))
        {'seeds': [0, 1], 'sparsities': [0.9]}
    """
    lists = {field: getattr(preset, field) if values is None else values for field, values in given.items()}
    check_preset_lists(preset, **lists)
    for field in ("prune_ratios", "sparsities"):
        for ratio in lists.get(field, ()):
            check_ratio(f"each of {field}", ratio)
    return {field: list(values) for field, values in lists.items()}


def preset_settings(preset: Any) -> dict[str, Any]:
    """A preset as strict JSON (tuples as lists, non-finite numbers as text): what ``result.json`` records and
    what a comparison record's settings file holds.

    Example:
        >>> from sparselab.experiments.p3b import p3b_preset
        >>> preset_settings(p3b_preset("tiny"))["seeds"]
        [0]
    """
    import dataclasses

    from ..history import json_form

    return json_form(dataclasses.asdict(preset), nonfinite_as_text=True)

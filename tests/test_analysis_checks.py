"""Analyses and figures that must not give a wrong result without an error: late convergence from rows logged out
of step order or ending in NaN, flips of a merged History, log axes of the ART gradient profile."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.plots.art import plot_gradient_profile
from sparselab.probes import flip_counts, half_benefit_moments, mask_flips, normalised_profiles

BLOCKS = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn"]


def _benefit(h: History, values, step: int, epoch: int) -> None:
    h.log_blocks("benefit_cls", dict(zip(BLOCKS, values)), step=step, epoch=epoch)


def test_epoch_profile_takes_the_latest_step_whatever_the_logging_order():
    h = History()
    _benefit(h, [1.0, 0.9, 0.8], step=20, epoch=0)  # the end of epoch 0, logged first
    _benefit(h, [1.0, 0.1, 0.0], step=10, epoch=0)  # mid-epoch, logged after it
    _benefit(h, [1.0, 1.0, 1.0], step=30, epoch=1)
    assert normalised_profiles(h, by="epoch").loc[0].tolist() == [1.0, 0.9, 0.8]
    # by step 20 every block had reached half of its final benefit
    assert half_benefit_moments(h, by="epoch").moment.tolist() == [0, 0, 0]


def test_a_nan_at_the_last_moment_gives_no_final_benefit_and_no_moment():
    h = History()
    _benefit(h, [1.0, 0.1, 0.1], step=1, epoch=0)
    _benefit(h, [1.0, 0.2, 0.2], step=2, epoch=0)
    _benefit(h, [1.0, math.nan, 1.0], step=3, epoch=0)
    table = half_benefit_moments(h).set_index("block")
    assert math.isnan(table.at["blocks.0.mlp", "final"])
    assert pd.isna(table.at["blocks.0.mlp", "moment"])
    assert table.at["blocks.1.attn", "moment"] == 3 and table.at["blocks.0.attn", "moment"] == 1


def test_a_nan_within_an_epoch_is_not_replaced_by_an_earlier_step():
    h = History()
    _benefit(h, [1.0, 0.5, 0.5], step=10, epoch=0)
    _benefit(h, [1.0, math.nan, 0.5], step=20, epoch=0)
    assert math.isnan(normalised_profiles(h, by="epoch").at[0, "blocks.0.mlp"])


def _flips(run: str, n_pruned: int) -> History:
    h = History(meta={"run": run})
    h.log_events(step=10, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=range(n_pruned), old=1, new=0)
    return h


def test_flip_counts_refuses_events_of_several_runs():
    merged = History.concat([_flips("a", 3), _flips("b", 5)])
    with pytest.raises(ConfigError, match="2 runs"):
        flip_counts(merged.events)
    assert mask_flips(merged, run="b").pruned.tolist() == [5]
    assert flip_counts(History.concat([_flips("a", 3)]).events).pruned.tolist() == [3]


def test_flip_counts_names_a_table_without_the_event_columns():
    with pytest.raises(ConfigError, match="events table"):
        flip_counts(pd.DataFrame({"block": ["blocks.0.mlp"]}))


def _profile_history(abs_w, grad) -> History:
    return History(meta={"profiles": [{"art_epoch": 2, "relative_index": [0.7, 0.8, 0.9], "abs_w": abs_w,
                                       "grad": grad, "sparsity": 0.9, "regularizer": "hypersparse"}]})


def test_gradient_profile_names_values_a_log_axis_cannot_draw():
    title = plot_gradient_profile(_profile_history([0.0, 0.1, 0.2], [1.0, 0.5, 0.0])).layout.title.text
    assert "not drawn on the log axes" in title
    assert "|w| at ART epoch 2: 1" in title and "gradient at ART epoch 2: 1" in title
    nan = plot_gradient_profile(_profile_history([0.1, 0.2, 0.3], [1.0, math.nan, 0.5])).layout.title.text
    assert "gradient at ART epoch 2: 1" in nan
    clean = plot_gradient_profile(_profile_history([0.1, 0.2, 0.3], [1.0, 0.5, 0.1])).layout.title.text
    assert "not drawn" not in clean

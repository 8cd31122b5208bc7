"""Per-block introspection tables the notebooks show: mask flips, last recorded values, ViT weight patterns."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.patterns import kept_masks, vit_pattern_summary, vit_pattern_table
from sparselab.probes import last_block_values, mask_flips


def _flips() -> History:
    h = History()
    h.log_events(step=3, epoch=0, block="blocks.10.mlp", gate="mlp_hid", elements=[1, 2, 3, 4], old=1, new=0)
    h.log_events(step=3, epoch=0, block="blocks.2.attn", gate="attn_qkv", elements=[0, 5], old=1, new=0)
    h.log_events(step=6, epoch=1, block="blocks.10.mlp", gate="mlp_hid", elements=[2, 3], old=0, new=1)
    h.log_events(step=6, epoch=1, block="blocks.10.mlp", gate="mlp_out", elements=[7], old=0, new=1)
    return h


def test_mask_flips_count_each_direction_per_block_in_depth_order(tmp_path):
    table = mask_flips(_flips())
    assert table.index.tolist() == ["blocks.2.attn", "blocks.10.mlp"]  # depth, not string order
    assert table.to_dict("index") == {"blocks.2.attn": {"pruned": 2, "reactivated": 0},
                                      "blocks.10.mlp": {"pruned": 4, "reactivated": 3}}
    path = _flips().save(tmp_path / "h.jsonl.gz")
    assert mask_flips(path).equals(table)  # a saved History by its path
    empty = mask_flips(History())
    assert empty.empty and list(empty.columns) == ["pruned", "reactivated"]


def test_the_reactivation_figure_draws_the_flip_counts():
    fig = sl.plot_reactivations(_flips())
    table = mask_flips(_flips())
    react, pruned = fig.data[1], fig.data[2]
    assert list(react.y) == table.reactivated.tolist() and list(pruned.y) == table.pruned.tolist()


def test_last_block_values_take_the_latest_step_even_when_logged_out_of_order():
    h = History()
    h.log_blocks("benefit_cls", {"blocks.0.attn": 0.3, "blocks.0.mlp": 0.4}, step=9, epoch=1)
    h.log_blocks("benefit_cls", {"blocks.0.attn": 0.1, "blocks.0.mlp": 0.2}, step=2, epoch=0)
    h.log_blocks("crit_abs_w", {"blocks.0.attn": 1.0}, step=2, epoch=0)
    values = last_block_values(h, {"benefit_cls": "ΔΨ", "crit_abs_w": "|w|"})
    assert values == {"ΔΨ": {"blocks.0.attn": 0.3, "blocks.0.mlp": 0.4}, "|w|": {"blocks.0.attn": 1.0}}
    with pytest.raises(ConfigError, match="no 'crit_taylor' rows; it recorded benefit_cls, crit_abs_w"):
        last_block_values(h, {"crit_taylor": "Taylor"})


def test_the_vit_pattern_table_holds_each_runs_summary():
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28")
    runs = [SimpleNamespace(method=m, sparsity=s, model=model, masks=kept_masks(model, sparsity=s))
            for m, s in (("magnitude", 0.5), ("magnitude", 0.9))]
    table = vit_pattern_table(runs)
    for run in runs:
        expected = {k: v for k, v in vit_pattern_summary(run.model, run.masks).items() if k != "per_block"}
        assert table.loc[(run.method, run.sparsity)].to_dict() == pytest.approx(expected, nan_ok=True)
    assert table.loc[("magnitude", 0.9), "mlp_kept"] < table.loc[("magnitude", 0.5), "mlp_kept"]
    with pytest.raises(ConfigError, match="two runs of 'magnitude' at sparsity 0.5"):
        vit_pattern_table([runs[0], runs[0]])
    with pytest.raises(ConfigError, match="at least one run"):
        vit_pattern_table([])

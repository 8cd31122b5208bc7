"""P3B figures: block benefit heatmap/profile, keep ratios and reactivations, built from synthetic Histories."""
from __future__ import annotations

import json
import random

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.plots import plot_block_benefit, plot_keep_ratios, plot_reactivations
from sparselab.plots.p3b import block_label, select_run, sort_block_names

DEPTH = 4
STEPS = [100, 200, 300, 400, 500, 600]
BLOCKS = [f"blocks.{layer}.{kind}" for layer in range(DEPTH) for kind in ("attn", "mlp")]
LABELS = [block_label(b) for b in BLOCKS]
DEEP = "blocks.3.mlp"


def benefit(block: str, variant: str, i: int, scale: float = 1.0) -> float:
    """A plausible ΔΨ: early blocks matter from the start, the deepest MLP only late; one block is harmful."""
    k = BLOCKS.index(block)
    if block == DEEP:
        value = 0.01 + 0.12 * max(0, i - 2) ** 2
    elif block == "blocks.2.attn":
        value = -0.05 - 0.01 * i
    else:
        value = (0.3 - 0.03 * k) * (1 + 0.1 * i) * (1.5 if variant == "patch" else 1.0)
    return scale * value


def keep(block: str, i: int, goal: bool = False) -> float:
    k = BLOCKS.index(block)
    target = 1.0 if block == DEEP else 0.9 - 0.08 * k
    if goal:
        return target
    return 1.0 - (1.0 - target) * (i + 1) / len(STEPS)


# block -> list of (step, gate, n_reactivated, n_pruned)
EVENTS = {
    "blocks.1.mlp": [(200, "mlp_hid", 0, 12), (400, "mlp_hid", 3, 2), (600, "mlp_hid", 1, 0)],
    "blocks.0.attn": [(100, "attn_qkv", 0, 6), (300, "attn_qkv", 2, 1), (300, "attn_out", 1, 0)],
    DEEP: [(500, "mlp_hid", 4, 0)],
    "blocks.2.attn": [(200, "attn_in", 0, 5)],
}


def p3b_history(run: str = "p3b", scale: float = 1.0, seed: int = 0, events: bool = True) -> History:
    """A History like a P3B run of a depth-4 ViT with 6 mask updates (blocks logged in shuffled order)."""
    rng = random.Random(seed)
    h = History(meta={"run": run})
    for i, step in enumerate(STEPS):
        order = BLOCKS[:]
        rng.shuffle(order)
        epoch = i // 2
        for variant in ("cls", "patch"):
            h.log_blocks(f"benefit_{variant}", {b: benefit(b, variant, i, scale) for b in order}, step=step,
                         epoch=epoch)
            h.log_blocks(f"score_{variant}", {b: 10 * benefit(b, variant, i, scale) for b in order}, step=step,
                         epoch=epoch)
        h.log_blocks("keep_goal", {b: keep(b, i, goal=True) for b in order}, step=step, epoch=epoch)
        h.log_blocks("keep_applied", {b: keep(b, i) for b in order}, step=step, epoch=epoch)
        h.log_blocks("kept_params", {b: 1000 * keep(b, i) for b in order}, step=step, epoch=epoch)
        h.log_blocks("dense_params", {b: 1000.0 for b in order}, step=step, epoch=epoch)
        if events:
            for block, rows in EVENTS.items():
                for s, gate, n_react, n_pruned in rows:
                    if s == step:
                        h.log_events(step=step, epoch=epoch, block=block, gate=gate, elements=range(n_react),
                                     old=0, new=1)
                        h.log_events(step=step, epoch=epoch, block=block, gate=gate,
                                     elements=range(100, 100 + n_pruned), old=1, new=0)
        h.log_metric("loss", 1.0 / (i + 1), step=step, epoch=epoch)
    return h


@pytest.fixture(scope="module")
def hist() -> History:
    return p3b_history()


def assert_serialisable(fig: go.Figure) -> None:
    assert isinstance(fig, go.Figure)
    assert fig.layout.template == pio.templates["plotly_white"]
    assert json.loads(fig.to_json())["data"] is not None


def subplot_of(trace) -> tuple[str, str]:
    return trace.xaxis or "x", trace.yaxis or "y"


# ------------------------------------------------------------------------------------------------ helpers
def test_block_order_is_numeric_and_interleaved():
    names = ["blocks.10.mlp", "blocks.9.attn", "blocks.10.attn", "blocks.2.mlp", "head", "blocks.2.attn",
             "blocks.9.mlp", "blocks.2.attn"]
    assert sort_block_names(names) == ["blocks.2.attn", "blocks.2.mlp", "blocks.9.attn", "blocks.9.mlp",
                                  "blocks.10.attn", "blocks.10.mlp", "head"]
    assert block_label("blocks.10.mlp") == "mlp 10"


# ------------------------------------------------------------------------------------------------ heatmap
def test_heatmap_rows_in_depth_order_with_logged_values(hist):
    fig = plot_block_benefit(hist)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert {subplot_of(t)[0] for t in fig.data} == {"x", "x2"}
    for variant, trace in zip(("cls", "patch"), fig.data):
        z = np.asarray(trace.z, dtype=float)
        assert z.shape == (len(BLOCKS), len(STEPS))
        assert list(trace.y) == LABELS
        assert list(trace.x) == STEPS
        expected = [[benefit(b, variant, i) for i in range(len(STEPS))] for b in BLOCKS]
        np.testing.assert_allclose(z, expected)
    # diverging scale centred at 0 for each panel, since a negative benefit is meaningful
    assert (np.asarray(fig.data[0].z) < 0).any()
    for axis in ("coloraxis", "coloraxis2"):
        assert fig.layout[axis].cmid == 0
        assert fig.layout[axis].colorscale[0][1] != fig.layout[axis].colorscale[-1][1]
    titles = [a.text for a in fig.layout.annotations]
    assert "Block benefit ΔΨ (class-token probe)" in titles and "Block benefit ΔΨ (patch probe)" in titles
    assert fig.layout.xaxis.title.text == "step"
    assert fig.layout.yaxis.autorange == "reversed"  # first block at the top
    assert_serialisable(fig)


def test_heatmap_single_variant_score_and_normalised(hist):
    fig = plot_block_benefit(hist, variant="patch", metric="score")
    assert len(fig.data) == 1
    np.testing.assert_allclose(np.asarray(fig.data[0].z)[BLOCKS.index(DEEP)],
                               [10 * benefit(DEEP, "patch", i) for i in range(len(STEPS))])
    assert "Block score (patch probe)" in [a.text for a in fig.layout.annotations]

    z = np.asarray(plot_block_benefit(hist, variant="cls", normalize=True).data[0].z, dtype=float)
    np.testing.assert_allclose(np.abs(z).max(axis=0), 1.0)
    assert_serialisable(fig)


# ------------------------------------------------------------------------------------------------ profile
def test_profile_layout_moments_and_normalisation(hist):
    fig = plot_block_benefit(hist, view="profile")
    # default: 5 moments out of 6 steps, including the first and the last
    names = [t.name for t in fig.data[:5]]
    assert names[0] == "step 100 (epoch 0)" and names[-1] == "step 600 (epoch 2)"
    assert len(set(names)) == 5
    # 2×2 grid, one trace per moment in each subplot
    assert len(fig.data) == 4 * 5
    panels: dict[tuple[str, str], list] = {}
    for t in fig.data:
        panels.setdefault(subplot_of(t), []).append(t)
    assert len(panels) == 4 and all(len(ts) == 5 for ts in panels.values())
    assert [t.name for t in fig.data[5:10]] == names  # same moments in every panel
    assert sum(bool(t.showlegend) for t in fig.data) == 5
    for t in fig.data:
        assert list(t.x) == list(range(1, DEPTH + 1))
        assert np.max(np.abs(np.asarray(t.y, dtype=float))) == pytest.approx(1.0)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["class-token probe, attention blocks", "class-token probe, MLP blocks",
                      "patch probe, attention blocks", "patch probe, MLP blocks"]
    assert "normalised" in fig.layout.yaxis.title.text
    assert fig.layout.xaxis3.title.text == "layer depth (1..L)"
    # the deep MLP block only becomes the most beneficial late in training
    mlp_cls = fig.data[5:10]
    assert np.asarray(mlp_cls[-1].y)[-1] == pytest.approx(1.0)
    assert np.asarray(mlp_cls[0].y)[-1] < 0.2
    assert_serialisable(fig)


def test_profile_moments_matched_to_nearest_step_and_raw_values(hist):
    fig = plot_block_benefit(hist, view="profile", variant="cls", moments=[0, 240, 250, 10_000], normalize=False)
    assert len(fig.data) == 2 * 3  # one row (class-token probe), moments 100, 200 (twice requested), 600
    assert [t.name for t in fig.data[:3]] == ["step 100 (epoch 0)", "step 200 (epoch 0)", "step 600 (epoch 2)"]
    i = STEPS.index(200)
    attn_200 = fig.data[1]
    np.testing.assert_allclose(attn_200.y, [benefit(f"blocks.{layer}.attn", "cls", i) for layer in range(DEPTH)])
    mlp_600 = fig.data[5]
    np.testing.assert_allclose(mlp_600.y, [benefit(f"blocks.{layer}.mlp", "cls", 5) for layer in range(DEPTH)])
    assert fig.layout.yaxis.title.text == "ΔΨ"
    assert_serialisable(fig)


def test_profile_of_finetuning_probes_with_step_zero():
    """BlockBenefit probes during plain fine-tuning: only benefit rows, several per epoch, the first at step 0."""
    h = History(meta={"run": "ft"})
    for step in range(0, 90, 10):
        h.log_blocks("benefit_cls", {b: benefit(b, "cls", step // 10) for b in BLOCKS}, step=step, epoch=step // 30)
        h.log_blocks("benefit_patch", {b: benefit(b, "patch", step // 10) for b in BLOCKS}, step=step,
                     epoch=step // 30)
    fig = plot_block_benefit(h, view="profile")
    assert [t.name for t in fig.data[:5]] == ["step 0 (epoch 0)", "step 20 (epoch 0)", "step 40 (epoch 1)",
                                              "step 60 (epoch 2)", "step 80 (epoch 2)"]
    assert_serialisable(plot_block_benefit(h))
    with pytest.raises(ConfigError, match="keep_applied") as err:
        plot_keep_ratios(h)
    assert "benefit_cls" in str(err.value) and "P3B" in str(err.value)


# ------------------------------------------------------------------------------------------------ keep ratios
def test_keep_ratios_lines_and_final_bars(hist):
    fig = plot_keep_ratios(hist)
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines"]
    bars = [t for t in fig.data if t.type == "bar"]
    goals = [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert [t.name for t in lines] == LABELS
    assert all(subplot_of(t) == ("x", "y") for t in lines)
    assert [t.line.dash for t in lines] == ["solid", "dash"] * DEPTH
    assert len({t.line.color for t in lines}) == len(BLOCKS)  # coloured by depth
    for block, t in zip(BLOCKS, lines):
        assert list(t.x) == STEPS
        np.testing.assert_allclose(t.y, [keep(block, i) for i in range(len(STEPS))])
    assert [t.name for t in bars] == ["attn (final κ̃)", "mlp (final κ̃)"]
    for kind, t in zip(("attn", "mlp"), bars):
        assert subplot_of(t) == ("x2", "y2")
        np.testing.assert_allclose(t.y, [keep(f"blocks.{layer}.{kind}", len(STEPS) - 1) for layer in range(DEPTH)])
    # attn and mlp side by side per layer
    np.testing.assert_allclose(np.asarray(bars[1].x) - np.asarray(bars[0].x), 0.4)
    np.testing.assert_allclose(np.round(np.asarray(bars[0].x)), range(1, DEPTH + 1))
    assert "kept 1,000 params of 1,000" in bars[1].customdata[-1]  # deepest MLP keeps everything
    assert len(goals) == 1
    np.testing.assert_allclose(sorted(goals[0].y), sorted(keep(b, 0, goal=True) for b in BLOCKS))
    assert fig.layout.xaxis.title.text == "mask update step"
    assert fig.layout.yaxis.title.text == "keep ratio κ̃"
    assert_serialisable(fig)


def test_keep_goal_metric_has_no_goal_markers(hist):
    fig = plot_keep_ratios(hist, metric="keep_goal")
    assert not [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert fig.layout.yaxis.title.text == "goal keep ratio κ"


# ------------------------------------------------------------------------------------------------ reactivations
def test_reactivation_heatmap_and_totals(hist):
    fig = plot_reactivations(hist)
    heat, react, pruned = fig.data
    assert (heat.type, react.type, pruned.type) == ("heatmap", "bar", "bar")
    assert list(heat.y) == LABELS and list(heat.x) == STEPS
    expected = np.zeros((len(BLOCKS), len(STEPS)))
    totals = {b: [0, 0] for b in BLOCKS}
    for block, rows in EVENTS.items():
        for step, _, n_react, n_pruned in rows:
            expected[BLOCKS.index(block), STEPS.index(step)] += n_react
            totals[block][0] += n_react
            totals[block][1] += n_pruned
    np.testing.assert_array_equal(np.asarray(heat.z), expected)
    assert list(react.x) == LABELS and list(pruned.x) == LABELS
    assert list(react.y) == [totals[b][0] for b in BLOCKS]
    assert list(pruned.y) == [totals[b][1] for b in BLOCKS]
    assert fig.layout.barmode == "group"
    assert heat.customdata[BLOCKS.index("blocks.0.attn")][STEPS.index(300)] == "attn_out: 1, attn_qkv: 2"
    assert fig.layout.xaxis.title.text == "mask update step"
    assert_serialisable(fig)


def test_no_events_gives_annotated_figure():
    fig = plot_reactivations(p3b_history(events=False))
    assert len(fig.data) == 0
    assert "no mask changes" in fig.layout.annotations[0].text.lower()
    assert_serialisable(fig)
    assert "no mask changes" in plot_reactivations(History()).layout.annotations[0].text.lower()


# ------------------------------------------------------------------------------------------------ runs, errors
def test_run_selection_on_concatenated_history():
    merged = History.concat([p3b_history("a"), p3b_history("b", scale=2.0, seed=1, events=False)])
    z_a = np.asarray(plot_block_benefit(merged, variant="cls", run="a").data[0].z)
    z_b = np.asarray(plot_block_benefit(merged, variant="cls", run="b").data[0].z)
    assert z_b.shape == (len(BLOCKS), len(STEPS))
    np.testing.assert_allclose(z_b, 2 * z_a)
    assert len(plot_reactivations(merged, run="a").data) == 3
    assert len(plot_reactivations(merged, run="b").data) == 0
    assert len(plot_keep_ratios(merged, run="b").data) == len(BLOCKS) + 3
    assert "run" not in select_run(merged, "a")["events"].columns
    with pytest.raises(ConfigError, match="run=") as err:
        plot_block_benefit(merged)
    assert "'a'" in str(err.value) and "'b'" in str(err.value)
    with pytest.raises(ConfigError, match="unknown run 'c'.*'a', 'b'"):
        plot_keep_ratios(merged, run="c")
    with pytest.raises(ConfigError, match="unknown run"):
        plot_reactivations(merged, run="c")
    # a merged History of one run needs no run=
    assert len(plot_keep_ratios(History.concat([p3b_history("solo")])).data) == len(BLOCKS) + 3


def test_run_on_single_history(hist):
    assert len(plot_block_benefit(hist, run="p3b").data) == 2
    with pytest.raises(ConfigError, match="History.concat"):
        plot_block_benefit(hist, run="other")


def test_missing_metric_errors_say_what_is_present_and_needed():
    h = History()
    h.log_blocks("sparsity", {"layer1": 0.5}, step=1, epoch=0)
    with pytest.raises(ConfigError) as err:
        plot_block_benefit(h)
    msg = str(err.value)
    assert "benefit_cls" in msg and "benefit_patch" in msg and "present: sparsity" in msg
    assert "P3B" in msg and "BlockBenefit" in msg
    with pytest.raises(ConfigError, match="present: none"):
        plot_block_benefit(History(), variant="cls", metric="score")
    with pytest.raises(ConfigError, match="keep_applied"):
        plot_keep_ratios(History())


def test_invalid_arguments(hist):
    with pytest.raises(ConfigError, match="view"):
        plot_block_benefit(hist, view="bars")
    with pytest.raises(ConfigError, match="variant"):
        plot_block_benefit(hist, variant="token")
    with pytest.raises(ConfigError, match="moments"):
        plot_block_benefit(hist, view="profile", moments=[])


def test_block_benefit_of_a_class_token_only_run_and_from_a_path(tmp_path):
    h = History()
    h.log_blocks("benefit_cls", {"blocks.0.attn": 0.2, "blocks.0.mlp": 0.3}, step=0, epoch=0)
    fig = plot_block_benefit(h)  # the default variant plots what the run logged
    assert len(fig.data) == 1 and fig.data[0].z.shape == (2, 1)
    assert len(plot_block_benefit(h.save(tmp_path / "h.jsonl.gz")).data) == 1
    with pytest.raises(ConfigError, match="takes a sparselab History .*got int"):
        plot_block_benefit(3)
    with pytest.raises(ConfigError, match="benefit_patch"):
        plot_block_benefit(h, variant="patch")

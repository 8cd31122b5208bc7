from __future__ import annotations

import numpy as np
import pytest
import torch

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.patterns import layer_keep_ratios
from sparselab.plots.p3b import sort_block_names
from sparselab.structure.compact import compact_stats
from sparselab.widgets import BudgetExplorer, SparsityExplorer, TraceScrubber


# ---------------------------------------------------------------- SparsityExplorer on LeNet-300-100
@pytest.fixture(scope="module")
def lenet():
    data = sl.data.load("digits", image_size=8)
    torch.manual_seed(0)
    model = sl.models.create("lenet_300_100", image_size=8)
    sl.fit(model, data, epochs=1, batch_size=64, lr=1e-3, progress=False)
    return model, data


def test_sparsity_slider_updates_bars_heatmap_and_accuracy(lenet):
    model, data = lenet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explorer = SparsityExplorer(model, data, max_eval=300)
    assert explorer.widget is not None
    explorer.slider.value = 0.5
    kept_50 = list(explorer.bars.data[0].customdata)
    z_50 = np.array(explorer.heatmap.data[0].z)
    text_50 = explorer.info.value
    assert kept_50 == layer_keep_ratios(model, sparsity=0.5).kept.tolist()

    explorer.slider.value = 0.99
    kept_99 = list(explorer.bars.data[0].customdata)
    expected = layer_keep_ratios(model, sparsity=0.99)
    assert kept_99 == expected.kept.tolist()
    assert list(explorer.bars.data[0].y) == pytest.approx(expected.keep_ratio.tolist())
    assert all(a < b for a, b in zip(kept_99, kept_50))
    assert explorer.achieved_sparsity == pytest.approx(0.99, abs=1e-4)
    z_99 = np.array(explorer.heatmap.data[0].z)
    assert z_99.shape == (8, 8) and not np.allclose(z_50, z_99)
    assert explorer.info.value != text_50
    assert explorer.accuracy < 0.9  # a 99 % sparse network has lost accuracy

    explorer.method.value = "layer-wise magnitude"
    ratios = np.array(explorer.bars.data[0].y)
    assert np.allclose(ratios, ratios[0], atol=0.01)
    assert list(explorer.bars.data[0].customdata) == layer_keep_ratios(
        model, sl.structure.magnitude_masks(model, 0.99, scope="layer")).kept.tolist()

    for k, v in model.state_dict().items():  # the user's model is never touched
        assert torch.equal(v, before[k]), k


def test_checkpoint_entry_uses_the_checkpoint_weights(lenet):
    model, data = lenet
    zeroed = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(iter(sl.structure.prunable_weights(model)))
    zeroed[first].zero_()
    zeroed[first.replace("weight", "bias")].zero_()
    explorer = SparsityExplorer(model, data, checkpoints={"zeroed": zeroed}, max_eval=300)
    explorer.slider.value = 0.2
    dense_acc = explorer.accuracy
    assert dense_acc > 0.5
    explorer.method.value = "zeroed"
    assert explorer.accuracy < 0.25  # the network sees no input: one class for every image (chance level)
    explorer.slider.value = 0.5  # above the zeroed layer's share (38 %): every zero weight is pruned first
    assert explorer.bars.data[0].customdata[0] == 0
    assert explorer.accuracy < 0.25
    assert "zeroed" in explorer.info.value
    explorer.slider.value = 0.2
    explorer.method.value = "global magnitude"
    assert explorer.accuracy == dense_acc
    with pytest.raises(ConfigError, match="missing"):
        SparsityExplorer(model, data, checkpoints={"bad": {}})


def test_conv_model_shows_kernel_positions():
    data = sl.data.load("digits", image_size=8)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    explorer = SparsityExplorer(net, data, max_eval=50)
    explorer.slider.value = 0.8
    z = np.array(explorer.heatmap.data[0].z)
    assert z.shape == (2, 9)
    assert list(explorer.heatmap.data[0].y) == ["0.weight", "2.weight"]
    # the first layer on top, as plot_weight_patterns draws it (was: at the bottom)
    assert explorer.heatmap.layout.yaxis.autorange == "reversed"
    assert sl.plot_weight_patterns(net).layout.yaxis.autorange == "reversed"


# ---------------------------------------------------------------- P3B run on a tiny ViT
@pytest.fixture(scope="module")
def p3b_run():
    digits = sl.data.load("digits", image_size=28, limit=320)
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    dense = sl.models.create("vit_nano_patch4_28", num_classes=10)
    dense.load_state_dict(model.state_dict())
    pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2),
                    patch_probe="linear")
    h = sl.fit(model, digits, pruner=pruner, epochs=3, batch_size=64, lr=1e-3, progress=False,
               max_steps_per_epoch=4)
    return h, dense


def test_budget_explorer_follows_the_ratio(p3b_run):
    h, model = p3b_run
    explorer = BudgetExplorer(h, model)
    imp = h.blocks.query("metric == 'importance'")
    assert explorer.importance_step == imp.step.max()
    explorer.slider.value = 0.5
    bars_50 = [list(t.y) for t in explorer.bars.data]
    params_50 = explorer.params
    assert abs(explorer.achieved_ratio - 0.5) < 0.01
    assert params_50 == compact_stats(explorer.compact)["params"]
    assert explorer.latency > 0 and "ms" in explorer.info.value

    explorer.slider.value = 0.75
    bars_75 = [list(t.y) for t in explorer.bars.data]
    assert bars_75 != bars_50
    assert explorer.params < params_50
    assert explorer.params == compact_stats(explorer.compact)["params"]
    assert abs(explorer.achieved_ratio - 0.75) < 0.01
    dense = sum(p.numel() for p in model.parameters())
    assert abs(1 - explorer.params / dense - 0.75) < 0.01
    # the compact model computes the masked model's function at the right size
    assert explorer.params == explorer.structure.total_params(explorer.masks)


def test_budget_explorer_uniform_without_importance(p3b_run):
    _, model = p3b_run
    h = History()
    h.log_blocks("keep_goal", {f"blocks.{i}.{k}": 0.5 for i in range(4) for k in ("attn", "mlp")}, step=1, epoch=0)
    explorer = BudgetExplorer(h, model, measure_latency=False)
    assert explorer.importance_step is None
    explorer.slider.value = 0.6
    assert abs(explorer.achieved_ratio - 0.6) < 0.01
    with pytest.raises(ConfigError, match="keep_goal"):
        BudgetExplorer(History(), model)


def test_trace_scrubber_shows_each_update(p3b_run):
    h, _ = p3b_run
    b, ev = h.blocks, h.events
    steps = sorted(b.query("metric == 'keep_applied'").step.unique().tolist())
    scrubber = TraceScrubber(h)
    assert scrubber.steps == steps
    assert (scrubber.slider.min, scrubber.slider.max) == (steps[0], steps[-1])
    names = sort_block_names(b.block)
    for step in steps:
        scrubber.slider.value = step
        assert scrubber.step == step
        for fig, traces in ((scrubber.benefit, ("benefit_cls", "benefit_patch")), (scrubber.keep, ("keep_applied",))):
            for trace, metric in zip(fig.data, traces):
                expected = b[(b.step == step) & (b.metric == metric)].set_index("block").value.loc[names].tolist()
                assert list(trace.y) == pytest.approx(expected)
        table = scrubber.events_table
        here = ev[ev.step == step]
        assert int(table.reactivated.sum()) == int(((here.old == 0) & (here.new == 1)).sum())
        assert int(table.pruned.sum()) == int(((here.old == 1) & (here.new == 0)).sum())
        for row in table.itertuples():
            sel = here[(here.block == row.block) & (here.gate == row.gate)]
            assert row.reactivated == int((sel.new == 1).sum()) and row.pruned == int((sel.new == 0).sum())
        assert len(table) == len(here.groupby(["block", "gate"]))
        if len(table):
            assert "<table" in scrubber.table.value
    # values between recorded steps snap to the nearest update
    if len(steps) > 1 and steps[1] - steps[0] > 1:
        scrubber.slider.value = steps[0] + 1
        assert scrubber.slider.value in steps


def test_trace_scrubber_marks_updates_without_a_patch_probe_measurement():
    import math

    digits = sl.data.load("digits", image_size=28, limit=320)
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2),
                    patch_probe="linear", probe_every=7)  # patch batches on steps 0 and 7 only: one window of four
    h = sl.fit(model, digits, pruner=pruner, epochs=3, batch_size=64, lr=1e-3, progress=False, max_steps_per_epoch=4)
    scrubber = TraceScrubber(h)
    measured = set(h.blocks[h.blocks.metric == "benefit_patch"].step)
    assert 0 < len(measured) < len(scrubber.steps)
    for step in scrubber.steps:
        scrubber.slider.value = step
        assert ("no patch-probe batch" in scrubber.info.value) == (step not in measured)
        assert all(math.isnan(v) for v in scrubber.benefit.data[1].y) == (step not in measured)


def test_trace_scrubber_needs_p3b_metrics():
    h = History()
    h.log_metrics({"loss": 1.0}, step=1, epoch=0)
    with pytest.raises(ConfigError, match="keep_applied"):
        TraceScrubber(h)


def test_live_figure_draws_by_setting_its_output_state_never_by_capturing(monkeypatch, capsys):
    """A redraw replaces the Output's ``outputs`` (one state message from the kernel). It must not capture
    ``display()`` into the area (``msg_id`` set): headless clients such as nbclient answer a capture by echoing
    every output back to the kernel on the shell channel mid-cell, and papermill runs stalled on that. A redraw
    also publishes nothing itself: re-activating plotly's ``notebook`` renderer would embed plotly.js again."""
    import IPython
    import plotly.io as pio

    from sparselab.widgets import LiveFigure

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as inside a kernel
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype+notebook")
    fig = LiveFigure()
    fig.add_bar(x=["a", "b"], y=[1, 2])
    captures = []
    fig._output.observe(lambda change: captures.append(change.new), names="msg_id")

    def drawn_y():
        (output,) = fig._output.outputs
        assert output["output_type"] == "display_data" and "text/html" in output["data"]
        return output["data"]["application/vnd.plotly.v1+json"]["data"][0]["y"]

    assert fig._output.outputs == ()  # nothing is drawn before the widget is asked for
    area = fig.widget
    assert area is fig._output and drawn_y() == [1, 2]
    with fig.batch_update():
        fig.data[0].y = [3, 4]
    assert drawn_y() == [3, 4]  # replaced, not appended
    assert captures == []
    assert "plotly.js" not in capsys.readouterr().out  # outside a kernel, a display() would print here


def test_sparsity_explorer_refuses_a_checkpoint_or_data_of_another_shape_up_front():
    data = sl.data.load("digits", image_size=28, limit=64)
    nano = sl.models.create("vit_nano_patch4_28", num_classes=10)
    micro = sl.models.create("vit_micro_patch4_28", num_classes=10)
    with pytest.raises(ConfigError, match=r"checkpoint 'other' does not fit the model: unexpected keys: .*shape"):
        SparsityExplorer(nano, data, checkpoints={"other": micro.state_dict()}, max_eval=16)
    with pytest.raises(ConfigError, match="takes 28x28 images but 'digits' is loaded at 8x8"):
        SparsityExplorer(nano, sl.data.load("digits", image_size=8), max_eval=16)

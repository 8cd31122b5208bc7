"""Model loading, the registry, atomic writes and the block probes: wrong numbers and deep crashes they must not
give."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab.atomic import atomic_write
from sparselab.errors import CheckpointError, ConfigError
from sparselab.history import History
from sparselab.probes import half_benefit_moments, late_convergence
from sparselab.probes.criteria import agreement
from sparselab.registry import Registry

BLOCKS = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=128)


# ---------------------------------------------------------------- block-benefit probes
def test_calibrate_and_measure_refuse_data_of_another_class_count(digits):
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    probes = sl.probes.BlockBenefit(model, num_classes=5, patch_probe="linear")
    with pytest.raises(ConfigError, match="num_classes=5.*10 classes"):
        probes.calibrate(digits, steps=1)
    with pytest.raises(ConfigError, match="num_classes=5.*10 classes"):
        probes.measure(digits, batches=1)


def test_measure_refuses_labels_past_the_probes_on_a_bare_split(digits):
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    probes = sl.probes.BlockBenefit(model, num_classes=5, patch_probe="linear")
    with pytest.raises(ConfigError, match="class label [5-9].*labels 0..4"):
        probes.measure(digits.test, batches=1)  # a dataset without num_classes: its labels are checked


def test_a_failed_measure_or_calibrate_leaves_the_window_and_the_modes_as_they_were(digits):
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    model.train()
    model(torch.randn(4, 1, 28, 28))
    probes.probe_loss(torch.tensor([0, 1, 2, 3]))  # one batch in the current window
    sums, counts = probes.sums.clone(), probes.counts.clone()
    wrong_size = sl.data.load("digits", image_size=32, limit=64)
    with pytest.raises(Exception):
        probes.measure(wrong_size, batches=1)
    assert torch.equal(probes.sums, sums) and torch.equal(probes.counts, counts)
    assert model.training and probes.accumulate
    with pytest.raises(Exception):
        probes.calibrate(wrong_size, steps=1)
    assert model.training and probes.accumulate


# ---------------------------------------------------------------- late convergence
def _history(rows) -> History:
    h = History()
    for step, values in enumerate(rows, start=1):
        h.log_blocks("benefit_cls", dict(zip(BLOCKS, values)), step=step, epoch=0)
    return h


traces = st.lists(st.lists(st.floats(-2, 2, allow_nan=False), min_size=4, max_size=4), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(traces, st.lists(st.floats(-2, 0, allow_nan=False), min_size=4, max_size=4))
def test_a_final_moment_without_positive_benefit_gives_no_half_benefit_moment(rows, last):
    """Where no block has a positive benefit at the last moment, every final value is not positive: no block has a
    half-benefit moment, whatever came before (an earlier moment is not the final one)."""
    table = half_benefit_moments(_history([*rows, last]))
    assert table.moment.isna().all()
    assert not (table.final > 0).any()
    assert math.isnan(late_convergence(_history([*rows, last]))["rho"])


@settings(max_examples=40, deadline=None)
@given(traces)
def test_half_benefit_moments_read_the_last_moment(rows):
    """The final value is the normalised value at the last moment, and the moment is the first one reaching half
    of it (computed here from the raw numbers)."""
    table = half_benefit_moments(_history(rows)).set_index("block")
    top = max(rows[-1])
    for k, block in enumerate(BLOCKS):
        final = rows[-1][k] / top if top > 0 else math.nan
        if not final > 0:
            assert table.at[block, "moment"] is None or math.isnan(table.at[block, "moment"])
            continue
        assert table.at[block, "final"] == pytest.approx(final)
        first = next(i for i, r in enumerate(rows, start=1) if max(r) > 0 and r[k] / max(r) >= 0.5 * final)
        assert table.at[block, "moment"] == first


def test_moments_by_something_else_than_step_or_epoch_are_refused():
    with pytest.raises(ConfigError, match="by must be one of step, epoch.*'epochs'"):
        half_benefit_moments(_history([[1.0, 0.5, 0.2, 0.1]]), by="epochs")


# ---------------------------------------------------------------- criteria
def test_agreement_reads_one_run_of_a_merged_history():
    a, b = History(meta={"run": "a"}), History(meta={"run": "b"})
    for h, order in ((a, [1.0, 2.0, 3.0, 4.0]), (b, [4.0, 3.0, 2.0, 1.0])):
        h.log_blocks("benefit_cls", dict(zip(BLOCKS, [1.0, 2.0, 3.0, 4.0])), step=5, epoch=0)
        h.log_blocks("crit_abs_w", dict(zip(BLOCKS, order)), step=5, epoch=0)
    merged = History.concat([a, b])
    with pytest.raises(ConfigError, match="pass run="):
        agreement(merged, metrics=["crit_abs_w"])
    assert float(agreement(merged, metrics=["crit_abs_w"], run="a").loc[5, "crit_abs_w"]) == pytest.approx(1.0)
    assert float(agreement(merged, metrics=["crit_abs_w"], run="b").loc[5, "crit_abs_w"]) == pytest.approx(-1.0)


def test_block_criteria_leave_out_a_step_the_grad_scaler_skipped(digits):
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    crit = sl.probes.BlockCriteria(model, log_every=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=1000)  # the first steps overflow
    h = sl.fit(model, digits, epochs=1, batch_size=64, callbacks=[crit], progress=False, grad_scaler=scaler,
               max_steps_per_epoch=2)
    rows = h.blocks[h.blocks.metric.isin(["crit_abs_grad", "crit_taylor"])]
    assert len(rows) and rows.value.map(math.isfinite).all()
    # the overflowed step adds nothing: its window holds no gradient measurement at all
    first = rows[rows.step == rows.step.min()]
    assert (first.value == 0).all()


# ---------------------------------------------------------------- registry
def test_registry_lookup_of_a_non_string_is_a_config_error():
    shapes = Registry("shape")
    shapes.register("square")(type("Square", (), {}))
    for bad in (None, 3, ["square"]):
        with pytest.raises(ConfigError, match="a shape is named by a string.*square"):
            shapes.lookup(bad)


def test_a_class_registered_under_an_alias_keeps_its_first_name():
    shapes = Registry("shape")

    @shapes.register("square")
    class Square:
        pass

    shapes.register("box")(Square)
    assert shapes.lookup("square").name == "square" and shapes.lookup("box") is Square
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Other = shapes.register("square")(type("Other", (), {}))  # "square" now names another class
    shapes.register("cube")(Square)
    assert Other.name == "square" and Square.name == "cube"


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_refuses_a_folder_or_a_path_under_a_file_before_writing(tmp_path):
    called = []
    (tmp_path / "runs").mkdir()
    (tmp_path / "afile").write_text("x")
    under_a_file = tmp_path / "afile" / "sub" / "h.json"
    for target, what in ((tmp_path / "runs", "is a folder"), (under_a_file, "afile is a file")):
        with pytest.raises(ConfigError, match=what):
            atomic_write(target, called.append)
    assert called == [] and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "runs"]
    assert list((tmp_path / "runs").iterdir()) == []


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("source, target, named", [
    (dict(reg_tokens=2), dict(), "1 class token, 2 register tokens in the checkpoint, 1 class token in the model"),
    (dict(class_token=False, global_pool="avg"), dict(global_pool="avg", fc_norm=True), "class_token=False"),
])
def test_a_checkpoint_with_other_prefix_tokens_is_refused_naming_them(tmp_path, source, target, named):
    from safetensors.torch import save_file

    src = sl.models.create("vit_nano_patch4_28", num_classes=10, **source)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(")):
        sl.models.create("vit_nano_patch4_28", num_classes=10, pretrained=str(path), **target)
    sl.models.create("vit_nano_patch4_28", num_classes=10, pretrained=str(path), **source)  # its own layout loads


def test_source_head_of_a_class_split_recipe_is_kept_or_reset_by_its_own_class_count(fmnist_files, monkeypatch):
    """A recipe trained on a class subset has a head of that many classes: reset_head=False keeps it when the
    class counts agree, and another count gets a seeded fresh head (not the unseeded one a mismatch left)."""
    from safetensors.torch import load_file

    import sparselab.models.pretrained as pre

    monkeypatch.setitem(pre.RECIPES, "quicksplit", pre.SourceRecipe(epochs=1, limit=512, warmup_steps=2,
                                                                     classes=(0, 1, 2)))
    kept = pre.source_pretrained("vit_nano_patch4_28", "fashion_mnist", num_classes=3, recipe="quicksplit",
                                 reset_head=False, progress=False)
    saved = load_file(str(pre.checkpoint_path("vit_nano_patch4_28", recipe="quicksplit")))
    assert torch.equal(kept.head.weight, saved["head.weight"]) and torch.equal(kept.head.bias, saved["head.bias"])
    first, again = (pre.source_pretrained("vit_nano_patch4_28", "fashion_mnist", num_classes=10, recipe="quicksplit",
                                          reset_head=False, progress=False) for _ in range(2))
    assert first.head.out_features == 10 and torch.equal(first.head.weight, again.head.weight)


def test_a_distilled_deit_class_probe_reads_what_its_heads_pool():
    """A distilled DeiT feeds its class token to ``head`` and its distillation token to ``head_dist`` and averages
    them: the class probe reads the pooled features the model's ``pre_logits`` gives, both tokens, not token 0."""
    from timm.models.deit import VisionTransformerDistilled

    from sparselab.structure import ViTStructure

    torch.manual_seed(0)
    model = VisionTransformerDistilled(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=16, depth=2,
                                       num_heads=2, mlp_ratio=2.0).eval()
    tokens = torch.randn(3, model.num_prefix_tokens + 16, 16)
    pooled = ViTStructure(model).pooled(tokens)
    torch.testing.assert_close(pooled, model.forward_head(tokens, pre_logits=True))
    assert not torch.allclose(pooled, tokens[:, 0])

"""Model creation and weight files: options that must not be ignored, checkpoints that must not load, cached and
compact weights that must match what describes them."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import sparselab as sl
from sparselab.errors import CheckpointError, ConfigError, UnknownNameError
from sparselab.models import pretrained as pre
from sparselab.structure.compact import compact_spec, compact_vit, load_compact, save_compact


def save_state(model: torch.nn.Module, path) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))


# ====================================================================== create(): options
def test_a_recipe_without_source_pretraining_is_refused(tmp_path):
    path = tmp_path / "r20.safetensors"
    save_state(sl.models.create("resnet20"), path)
    with pytest.raises(ConfigError, match="recipe='quick'.*pretrained= one of"):
        sl.models.create("resnet20", pretrained=path, recipe="quick")
    with pytest.raises(ConfigError, match="recipe='quick'"):
        sl.models.create("deit_tiny_patch16_224", pretrained=True, recipe="quick")  # refused before any download
    with pytest.raises(UnknownNameError, match="recipe 'fast'"):
        sl.models.create("resnet20", recipe="fast")
    with pytest.raises(ConfigError, match="recipe is given by name"):
        sl.models.create("resnet20", recipe=3)
    with pytest.raises(ConfigError, match="recipe is given by name"):
        sl.models.create("vit_nano_patch4_28", pretrained="fashion_mnist", recipe=123)
    # with pretrained=False there is nothing a recipe could change: a preset's recipe may stay set
    assert sl.models.create("resnet20", recipe="quick").fc.out_features == 10


@pytest.mark.parametrize("value", [1, 0, 0.5, "", [True]])
def test_pretrained_of_another_type_is_refused(value):
    with pytest.raises(ConfigError, match="pretrained must be False, True"):
        sl.models.create("resnet20", pretrained=value)


def test_pretrained_none_means_no_weights():
    assert sl.models.create("lenet_300_100", pretrained=None).fc3.out_features == 10


def test_small_vits_have_no_hub_weights():
    with pytest.raises(ConfigError, match="no hub weights; pass pretrained='fashion_mnist'"):
        sl.models.create("vit_nano_patch4_28", pretrained=True)


def test_an_unknown_option_of_a_timm_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown option 'foo' for model 'vit_nano_patch4_28'"):
        sl.models.create("vit_nano_patch4_28", foo=1)
    assert sl.models.create("vit_nano_patch4_28", drop_path_rate=0.1).num_classes == 10


@pytest.mark.parametrize("name", ["vit_nano_patch4_28", "resnet20", "vgg19_bn", "lenet_300_100"])
@pytest.mark.parametrize("in_chans", [0, -1, "3", True, 1.5])
def test_bad_in_chans(name, in_chans):
    with pytest.raises(ConfigError, match="in_chans must be an integer >= 1"):
        sl.models.create(name, in_chans=in_chans)


@pytest.mark.parametrize("name, options, match", [
    ("lenet_300_100", {"image_size": "28"}, "image_size must be an integer"),
    ("lenet_300_100", {"image_size": 0}, "image_size must be an integer"),
    ("vgg19_bn", {"width": -1}, "width must be > 0"),
    ("vgg19_bn", {"width": "a"}, "width must be a number"),
    ("vgg19_bn", {"width": float("nan")}, "width must be a finite number"),
    ("resnet20", {"widths": (16, 0, 64)}, "each of widths must be an integer"),
    ("resnet20", {"widths": "wide"}, "widths must be a sequence"),
])
def test_bad_sizes_of_sparselab_models(name, options, match):
    with pytest.raises(ConfigError, match=match):
        sl.models.create(name, **options)


def test_numpy_integers_are_sizes_too():
    model = sl.models.create("lenet_300_100", in_chans=np.int64(1), image_size=np.int64(8))
    assert model.fc1.in_features == 64


# ====================================================================== create(): checkpoint files
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, value):
    state = {k: v.clone() for k, v in sl.models.create("lenet_300_100").state_dict().items()}
    state["fc2.weight"][3, 4] = value
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in fc2\.weight"):
        sl.models.create("lenet_300_100", pretrained=tmp_path / "bad.pth")
    # a non-finite head that is replaced anyway (another class count) does not matter
    del state["fc2.weight"]
    state["fc2.weight"] = torch.zeros(100, 300)
    state["fc3.weight"] = torch.full((7, 100), value)
    state["fc3.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "head.pth")
    assert sl.models.create("lenet_300_100", pretrained=tmp_path / "head.pth").fc3.weight.isfinite().all()


def test_a_checkpoint_of_integer_tensors_is_refused(tmp_path):
    src = sl.models.create("vit_nano_patch4_28")
    torch.save({k: v.to(torch.int64) for k, v in src.state_dict().items()}, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="not floating point: .*int64"):
        sl.models.create("vit_nano_patch4_28", pretrained=tmp_path / "int.pth")


def test_a_vit_checkpoint_for_another_image_or_patch_size_is_resampled_with_a_warning(tmp_path):
    path = tmp_path / "nano.safetensors"
    save_state(sl.models.create("vit_nano_patch4_28"), path)
    with pytest.warns(UserWarning, match=r"another image or patch size.*8x8 patch grid: pos_embed \(1, 50, 64\) -> "
                                         r"\(1, 65, 64\)"):
        model = sl.models.create("vit_nano_patch4_28", img_size=32, pretrained=path)
    assert model.pos_embed.shape == (1, 65, 64)
    with pytest.warns(UserWarning, match=r"patch_embed\.proj\.weight \(64, 1, 4, 4\) -> \(64, 1, 7, 7\)"):
        sl.models.create("vit_nano_patch4_28", patch_size=7, pretrained=path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.models.create("vit_nano_patch4_28", pretrained=path)  # the same size: no warning


def test_a_malformed_vit_checkpoint_is_a_checkpoint_error(tmp_path):
    state = {k: v.clone() for k, v in sl.models.create("vit_nano_patch4_28").state_dict().items()}
    state["pos_embed"] = state["pos_embed"][0]  # (50, 64) instead of (1, 50, 64)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="could not be converted"):
        sl.models.create("vit_nano_patch4_28", pretrained=tmp_path / "bad.pth")


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        sl.models.create("resnet20", pretrained=tmp_path)


# ====================================================================== cached source models
@pytest.fixture
def cached_source(isolated_data_dir, monkeypatch):
    """Cached quick-recipe weights of vit_nano_patch4_28 with their record, written by hand; training is refused."""

    def no_training(*args, **kwargs):
        raise AssertionError("the cached source model was trained again")

    monkeypatch.setitem(pre.SOURCE_TRAINERS, "fashion_mnist", no_training)
    path = pre.checkpoint_path("vit_nano_patch4_28", recipe="quick")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    save_state(sl.models.create("vit_nano_patch4_28", in_chans=1), path)
    record = {"model": "vit_nano_patch4_28", "recipe": "quick", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(record))
    return path


def test_a_cached_source_model_is_checked_against_its_record(cached_source):
    model = sl.models.create("vit_nano_patch4_28", pretrained="fashion_mnist", recipe="quick", progress=False)
    assert torch.equal(model.pos_embed, load_file(str(cached_source))["pos_embed"])
    assert pre.source_record("vit_nano_patch4_28", recipe="quick")["recipe"] == "quick"
    data = bytearray(cached_source.read_bytes())
    data[-7] ^= 0x10  # one bit of one weight
    cached_source.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checksum.*sparselab pretrain --model vit_nano_patch4_28 --force "
                                              r"--recipe quick"):
        sl.models.create("vit_nano_patch4_28", pretrained="fashion_mnist", recipe="quick")


def test_a_cached_source_model_without_a_readable_record_is_refused(cached_source):
    record = cached_source.with_suffix(".json")
    record.write_text("{not json")
    with pytest.raises(CheckpointError, match="could not be read.*--force --recipe quick"):
        sl.models.create("vit_nano_patch4_28", pretrained="fashion_mnist", recipe="quick")
    record.unlink()
    with pytest.raises(CheckpointError, match="has no record"):
        pre.source_record("vit_nano_patch4_28", recipe="quick")


def test_the_rebuild_hint_names_the_recipe_of_the_cache(cached_source):
    save_state(sl.models.create("vit_micro_patch4_28", in_chans=1), cached_source)  # another model's weights
    record = {"sha256": hashlib.sha256(cached_source.read_bytes()).hexdigest()}
    cached_source.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*Rebuild it: sparselab pretrain --model "
                                              r"vit_nano_patch4_28 --force --recipe quick"):
        sl.models.create("vit_nano_patch4_28", pretrained="fashion_mnist", recipe="quick")


# ====================================================================== compact models
@pytest.fixture
def compact(tmp_path):
    """A compact vit_nano_patch4_28 saved to ``tmp_path / "good"``: (model, spec, folder)."""
    torch.manual_seed(0)
    base = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
    masks = {0: {"mlp_hid": torch.arange(256) < 64}, 1: {"attn_out": torch.arange(64) % 2 == 0}}
    small, spec = compact_vit(base, masks), compact_spec(base, masks)
    return small, spec, save_compact(small, spec, tmp_path / "good")


def edited(folder, name, spec_edit=None, state_edit=None):
    """A copy of a saved compact model with its spec and/or weights edited."""
    out = folder.parent / name
    shutil.copytree(folder, out)
    if spec_edit is not None:
        spec = json.loads((out / "spec.json").read_text())
        spec_edit(spec)
        (out / "spec.json").write_text(json.dumps(spec))
    if state_edit is not None:
        state = load_file(str(out / "model.safetensors"))
        save_file(state_edit(state) or state, str(out / "model.safetensors"))
    return out


def set_kwarg(key, value):
    return lambda spec: spec["kwargs"].__setitem__(key, value)


def set_gate(layer, part, value):
    return lambda spec: spec["layers"][layer][part].__setitem__("mlp_hid", value)


@pytest.mark.parametrize("edit, match", [
    (set_kwarg("embed_dim", 0), "cannot build the model"),
    (set_kwarg("num_heads", 0), "cannot build the model"),
    (set_kwarg("patch_size", [0, 0]), "cannot build the model"),
    (set_kwarg("img_size", [28]), "cannot build the model"),
    (set_kwarg("mlp_ratio", -1), "cannot build the model"),
    (set_kwarg("act_layer", "bogus"), "cannot build the model"),
    (lambda spec: spec.__setitem__("dtype", "int64"), "dtype 'int64' is not a floating-point"),
    (lambda spec: [set_gate(2, "sizes", -3)(spec), set_gate(2, "indices", [])(spec), set_gate(2, "kept", 0)(spec)],
     "has size -3"),
], ids=["embed_dim", "num_heads", "patch_size", "img_size", "mlp_ratio", "act_layer", "dtype", "size"])
def test_a_compact_spec_the_constructor_cannot_build_is_a_checkpoint_error(compact, edit, match):
    folder = edited(compact[2], "edited", spec_edit=edit)
    with pytest.raises(CheckpointError, match=f"compact spec: .*{match}"):
        load_compact(folder)


@pytest.mark.parametrize("edit, match", [
    (lambda spec: spec["norm"].__setitem__("type", "batch"), "norm type 'batch' is not one of timm, torch"),
    (lambda spec: spec["norm"].__setitem__("eps", float("nan")), "norm eps must be a finite number >= 0"),
    (lambda spec: spec["norm"].__setitem__("eps", -1e-6), "norm eps must be a finite number >= 0"),
    (lambda spec: spec.__setitem__("version", True), "version True is not supported"),
    (set_gate(0, "indices", [i + 0.5 for i in range(64)]), "indices must be a list of integers"),
    (set_gate(0, "kept", 64.5), "kept width must be an integer"),
    (set_gate(0, "sizes", "256"), "size must be an integer"),
], ids=["norm_type", "norm_eps_nan", "norm_eps_negative", "version", "indices", "kept", "sizes"])
def test_a_compact_spec_with_values_that_would_be_misread_is_refused(compact, edit, match):
    folder = edited(compact[2], "edited", spec_edit=edit)
    with pytest.raises(CheckpointError, match=match):
        load_compact(folder)


def test_a_compact_spec_of_another_dtype_than_its_weights_is_refused(compact):
    folder = edited(compact[2], "half_spec", spec_edit=lambda spec: spec.__setitem__("dtype", "float16"))
    with pytest.raises(CheckpointError, match="dtype mismatch: .* float32 vs float16"):
        load_compact(folder)
    folder = edited(compact[2], "half_weights", state_edit=lambda state: {k: v.half() for k, v in state.items()})
    with pytest.raises(CheckpointError, match="dtype mismatch: .* float16 vs float32"):
        load_compact(folder)


def test_compact_weights_changed_after_saving_are_refused(compact, tmp_path):
    small, spec, folder = compact
    assert json.loads((folder / "spec.json").read_text())["weights_sha256"] == \
        hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    flipped = edited(folder, "flipped")
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-9] ^= 0x04
    (flipped / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum recorded in"):
        load_compact(flipped)
    # the weights of another save with the same shapes
    other = save_compact(compact_vit_like(small, scale=2.0), spec, tmp_path / "other")
    swapped = edited(folder, "swapped")
    shutil.copy(other / "model.safetensors", swapped / "model.safetensors")
    with pytest.raises(CheckpointError, match="checksum"):
        load_compact(swapped)
    # a spec written without a checksum still loads
    older = edited(folder, "older", spec_edit=lambda s: s.pop("weights_sha256"))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(load_compact(older)(x), small.eval()(x))
    # saving a loaded model again with the spec read back from its folder replaces the checksum
    again = save_compact(load_compact(folder), json.loads((folder / "spec.json").read_text()), tmp_path / "again")
    assert torch.equal(load_compact(again)(x), small(x))


def compact_vit_like(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(scale)
    return out


def test_non_finite_compact_weights_are_refused(compact, tmp_path):
    small, spec, folder = compact
    broken = compact_vit_like(small, 1.0)
    with torch.no_grad():
        broken.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"cannot be saved: NaN or infinite values in blocks\.0\.attn\.qkv\.weight"):
        save_compact(broken, spec, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()

    def poison(state):
        state["blocks.1.mlp.fc2.bias"][0] = float("inf")

    older = edited(folder, "inf", spec_edit=lambda s: s.pop("weights_sha256"), state_edit=poison)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in blocks\.1\.mlp\.fc2\.bias"):
        load_compact(older)


def test_a_compact_model_of_another_dtype_than_its_spec_is_not_saved(compact, tmp_path):
    small, spec, _ = compact
    with pytest.raises(ConfigError, match="dtype mismatch"):
        save_compact(compact_vit_like(small, 1.0).half(), spec, tmp_path / "half")


def test_compact_folders_that_are_files(compact, tmp_path):
    small, spec, folder = compact
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        save_compact(small, spec, afile)
    with pytest.raises(ConfigError, match="cannot create the folder"):
        save_compact(small, spec, afile / "sub")
    with pytest.raises(CheckpointError, match="is a file; give the compact model directory"):
        load_compact(folder / "spec.json")


def test_a_pretrain_record_leaves_out_a_split_that_was_never_evaluated(isolated_data_dir, monkeypatch):
    """A source run without validation images used to write "val_acc": NaN, which is not JSON."""
    from sparselab.history import History
    from sparselab.models import pretrained as pre

    def trainer(model_name, dataset, recipe, ckpt_dir, progress=True, resume=False):
        history = History()
        history.log_metric("acc", 0.5, step=1, epoch=0, split="test")
        return sl.models.create(model_name, num_classes=10), history, 28

    monkeypatch.setitem(pre.SOURCE_TRAINERS, "fashion_mnist", trainer)
    path = pre.pretrain("vit_nano_patch4_28", recipe="quick", progress=False)
    text = path.with_suffix(".json").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the record"))
    assert record["test_acc"] == 0.5 and "val_acc" not in record

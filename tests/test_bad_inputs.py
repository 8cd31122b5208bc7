"""The catalogue of bad inputs: every one ends in ONE clear error that says what was wrong and what is allowed,
before any training step. Add the next surprise as a row of ``ROWS``.

A row is ``(id, action, expected, pattern)``:

- ``action`` is either ``cli(argv...)`` — run through ``sparselab.cli.main``; ``{tmp}`` in an argument is the
  test's temporary folder and ``setup(ctx)`` may prepare files first — or a callable ``fn(ctx)`` for the Python
  API (``ctx.tmp`` a temporary folder, ``ctx.monkeypatch`` pytest's monkeypatch);
- ``expected`` is the exit status for the CLI (2: bad input) or the exception type for the API;
- ``pattern`` is a regex the message must match (``re.search``).
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
from conftest import write_fashion_mnist, write_image_folder

import sparselab as sl
from sparselab.cli import main
from sparselab.errors import CheckpointError, ConfigError, DataNotFoundError, UnknownNameError
from sparselab.history import History


@dataclass
class cli:  # noqa: N801  (reads as a row's verb)
    """A command line for ``sparselab.cli.main``; ``setup(ctx)`` runs first."""

    argv: tuple[str, ...]
    setup: Callable[[Any], None] | None = None

    def __init__(self, *argv: str, setup: Callable[[Any], None] | None = None):
        self.argv, self.setup = argv, setup


# ------------------------------------------------------------------------------------------------ setups
def _old_run(marker: str = "summary.json"):
    def setup(ctx):
        out = ctx.tmp / "out"
        (out / "checkpoint").mkdir(parents=True) if marker == "checkpoint" else out.mkdir(parents=True)
        if marker != "checkpoint":
            (out / marker).write_text("{}")
    return setup


def _write(name: str, content: bytes | str):
    def setup(ctx):
        path = ctx.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _write_in(folder: str, name: str, content: str):
    def setup(ctx):
        (ctx.tmp / folder).mkdir(exist_ok=True)
        (ctx.tmp / folder / name).write_text(content)
    return setup


def _run_folder(identity: dict):
    """``out/`` holding a run with a checkpoint, made by the command and settings ``identity`` names."""
    def setup(ctx):
        (ctx.tmp / "out" / "checkpoint").mkdir(parents=True)
        (ctx.tmp / "out" / "run.json").write_text(json.dumps(identity))
        (ctx.tmp / "out" / "history.jsonl.gz").write_bytes(b"")
    return setup


def _history_file(ctx) -> Path:
    h = History(meta={"run": "x"})
    h.log_metric("acc", 0.5, step=1, epoch=0, split="val")
    for i in range(200):
        h.log_blocks("w", {f"layer{i}": float(i)}, step=i, epoch=0)
    return h.save(ctx.tmp / "h.jsonl.gz")


def _truncated_gzip(ctx):
    raw = _history_file(ctx).read_bytes()
    (ctx.tmp / "cut.jsonl.gz").write_bytes(raw[: len(raw) // 2])


def _row_missing_value(ctx):
    lines = [json.dumps({"schema": "sparselab.history/1", "meta": {}}),
             json.dumps({"table": "metrics", "step": 0, "epoch": 0, "split": "val", "name": "acc"})]
    (ctx.tmp / "row.jsonl").write_text("\n".join(lines) + "\n")


def _torch_checkpoint(ctx):
    torch.save({"model": torch.zeros(3)}, ctx.tmp / "last.pt")


def _no_figures_history(ctx):
    h = History(meta={"run": "plain"})
    h.log_metric("acc", 0.5, step=1, epoch=0, split="val")
    h.save(ctx.tmp / "plain.jsonl.gz")


def _data_is_a_file(ctx):
    f = ctx.tmp / "not-a-folder"
    f.write_text("x")
    ctx.monkeypatch.setenv("SPARSELAB_DATA", str(f))


def _fmnist_elsewhere(ctx):
    """Fashion-MNIST in data/ (and as the Debian package), but root= names an empty folder."""
    from sparselab.data import fashion_mnist
    from sparselab.paths import data_dir

    write_fashion_mnist(data_dir() / "fashion_mnist", n_train=60, n_test=20)
    ctx.monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", write_fashion_mnist(ctx.tmp / "debian", 60, 20))
    (ctx.tmp / "empty").mkdir()


def _tree(ctx):
    write_image_folder(ctx.tmp / "tree", per_class=2, size=8)


def _then(setup, fn):
    def call(ctx):
        setup(ctx)
        return fn(ctx)
    return call


def _load(name, **options):
    return lambda ctx: sl.data.load(name, **options)


# ------------------------------------------------------------------------------------------------ the table
OUT = ("--out", "{tmp}/out")
TRAIN = ("train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "8", *OUT)
P3B = ("p3b", "--preset", "tiny", "--no-latency", *OUT)
ART = ("art", "--preset", "tiny", *OUT)

class _PoisonLoss(sl.Pruner):
    """Makes the first step's loss non-finite."""

    def extra_loss(self, state):
        return state.outputs.sum() * float("nan")


def _nano():
    return sl.models.create("vit_nano_patch4_28", num_classes=10)


def _lenet():
    return sl.models.create("lenet_300_100", image_size=8)


def _digits8():
    return sl.data.load("digits", image_size=8)


def _vit(mlp: str = "mlp", attn: str = "attention"):
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    extra = {"mlp_layer": SwiGLUPacked, "mlp_ratio": 2} if mlp == "swiglu" else {}
    if attn == "diff":
        extra["attn_layer"] = "diff"
    return VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1, num_heads=2, **extra)


class _Stop(sl.Pruner):
    def after_step(self, state):
        if state.step == 2:  # after the checkpoint of step 1
            raise RuntimeError("stop after two steps")


def _checkpointed_lenet(ctx, data):
    ctx.monkeypatch.undo()  # a fault row: the run that leaves the checkpoint trains
    with pytest.raises(RuntimeError):
        sl.fit(sl.models.create("lenet_300_100", image_size=8), data, epochs=1, batch_size=32, progress=False,
               checkpoint_dir=ctx.tmp / "ck", checkpoint_every=1, callbacks=[_Stop()])


def _resume_other_data(ctx):
    _checkpointed_lenet(ctx, sl.data.load("digits", image_size=8, limit=320))
    sl.fit(sl.models.create("lenet_300_100", image_size=8), sl.data.load("digits", image_size=8, limit=160),
           epochs=1, batch_size=32, progress=False, checkpoint_dir=ctx.tmp / "ck", resume=True, callbacks=[_Stop()])


def _resume_other_architecture(ctx):
    """The same weights (keys and shapes) in a model with another activation: the state dict cannot tell."""
    ctx.monkeypatch.undo()  # a fault row: the run that leaves the checkpoint trains
    data = sl.data.load("digits", image_size=28, limit=64)
    with pytest.raises(RuntimeError):
        sl.fit(sl.models.create("vit_nano_patch4_28"), data, epochs=1, batch_size=32, progress=False,
               checkpoint_dir=ctx.tmp / "ck", checkpoint_every=1, callbacks=[_Stop()])
    sl.fit(sl.models.create("vit_nano_patch4_28", act_layer="relu"), data, epochs=1, batch_size=32, progress=False,
           checkpoint_dir=ctx.tmp / "ck", resume=True, callbacks=[_Stop()])


def _resume_other_pruner(ctx):
    ctx.monkeypatch.undo()  # a fault row: the run that leaves the checkpoint trains
    data = sl.data.load("digits", image_size=28, limit=128)
    sched = sl.P3BSchedule(warmup=0, sparsify=1, finalize=2)
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28")
    with pytest.raises(RuntimeError):
        sl.fit(model, data, epochs=2, batch_size=32, progress=False, pruner=sl.P3B(model, 0.5, schedule=sched,
               patch_probe=None), checkpoint_dir=ctx.tmp / "ck", checkpoint_every=1, callbacks=[_Stop()])
    model = sl.models.create("vit_nano_patch4_28")
    sl.fit(model, data, epochs=2, batch_size=32, progress=False, pruner=sl.P3B(model, 0.75, schedule=sched,
           patch_probe=None), checkpoint_dir=ctx.tmp / "ck", resume=True, callbacks=[_Stop()])


ROWS: list[tuple[str, Any, Any, str]] = [
    # 1. command-line values: 0 is not "unset", every number is checked, non-finite floats refused
    ("train-image-size-0", cli(*TRAIN, "--image-size", "0"), 2, r"--image-size: must be an integer >= 4, got '0'"),
    ("train-limit-0", cli(*TRAIN, "--limit", "0"), 2, r"limit must be a positive integer .*got 0"),
    ("train-epochs-0", cli(*TRAIN, "--epochs", "0"), 2, r"--epochs: must be an integer >= 1, got '0'"),
    ("train-lr-nan", cli(*TRAIN, "--lr", "nan"), 2, r"--lr: must be a finite number"),
    ("train-lr-inf", cli(*TRAIN, "--lr", "inf"), 2, r"--lr: must be a finite number"),
    ("train-lr-0", cli(*TRAIN, "--lr", "0"), 2, r"--lr: must be a finite number > 0"),
    ("train-weight-decay-negative", cli(*TRAIN, "--weight-decay", "-1"), 2, r"--weight-decay: .* >= 0"),
    ("train-batch-size-0", cli(*TRAIN, "--batch-size", "0"), 2, r"--batch-size: must be an integer >= 1"),
    ("train-seed-negative", cli(*TRAIN, "--seed", "-1"), 2, r"--seed: must be an integer >= 0"),
    ("train-epochs-not-a-number", cli(*TRAIN, "--epochs", "ten"), 2, r"--epochs: must be an integer >= 1, got 'ten'"),
    ("train-optimizer-typo", cli(*TRAIN, "--optimizer", "sgdd"), 2, r"unknown optimizer 'sgdd'.*'sgd'"),
    ("train-recipe-without-source", cli(*TRAIN, "--recipe", "quick"), 2,
     r"--recipe .*needs --pretrained fashion_mnist"),
    ("p3b-limit-0", cli(*P3B, "--limit", "0"), 2, r"limit must be a positive integer .*got 0"),
    ("p3b-image-size-0", cli(*P3B, "--image-size", "0"), 2, r"--image-size: must be an integer >= 4, got '0'"),
    ("art-image-size-3", cli(*ART, "--image-size", "3"), 2, r"--image-size: must be an integer >= 4, got '3'"),
    ("data-image-size-0", _load("digits", image_size=0), ConfigError, r"image_size must be an integer >= 4, got 0"),
    ("p3b-probe-every-0", cli(*P3B, "--probe-every", "0"), 2, r"--probe-every: must be an integer >= 1, got '0'"),
    ("p3b-probe-fraction-0", cli(*P3B, "--probe-fraction", "0"), 2, r"--probe-fraction: .*in \(0, 1\], got '0'"),
    ("p3b-probe-fraction-above-1", cli(*P3B, "--probe-fraction", "1.5"), 2, r"--probe-fraction: .*in \(0, 1\]"),
    ("p3b-prune-ratio-1", cli(*P3B, "--prune-ratio", "1"), 2, r"--prune-ratio: .*in \[0, 1\)"),
    ("p3b-prune-ratio-nan", cli(*P3B, "--prune-ratio", "nan"), 2, r"--prune-ratio: must be a finite number"),
    ("p3b-finetune-epochs-negative", cli(*P3B, "--finetune-epochs", "-1"), 2, r"--finetune-epochs: .*>= 0"),
    ("p3b-workers-negative", cli(*P3B, "--workers", "-1"), 2, r"--workers: must be an integer >= 0"),
    ("p3b-max-steps-0", cli(*P3B, "--max-steps-per-epoch", "0"), 2, r"--max-steps-per-epoch: .*>= 1"),
    ("p3b-schedule-two-numbers", cli(*P3B, "--schedule", "1,2"), 2,
     r"--schedule must be three integers warmup,sparsify,finalize .*got '1,2'"),
    ("p3b-schedule-not-numbers", cli(*P3B, "--schedule", "a,b,c"), 2, r"--schedule must be three integers"),
    ("p3b-schedule-out-of-order", cli(*P3B, "--schedule", "3,2,1"), 2, r"warmup < sparsify <= finalize"),
    ("p3b-method-typo", cli(*P3B, "--method", "p3bb"), 2, r"unknown method 'p3bb'. Did you mean 'p3b'"),
    ("p3b-probes-without-benefit", cli(*P3B, "--method", "uniform", "--probe-every", "4"), 2,
     r"--probe-every set the block-benefit probes, which --method uniform does not use \(only p3b"),
    ("p3b-probes-fixed-by-method", cli(*P3B, "--method", "p3b_fast_probes", "--probe-fraction", "0.5"), 2,
     r"--method p3b_fast_probes fixes its probes itself \(patch_probe\); leave out --probe-fraction"),
    ("p3b-fast-probes-beside-a-patch-probe", cli(*P3B, "--fast-probes", "--patch-probe", "linear"), 2,
     r"--fast-probes sets the probes \(sparselab.probes.FAST_PROBES: the class-token probes alone, no patch probe\); "
     r"leave out --patch-probe, or --fast-probes"),
    ("p3b-fast-probes-beside-a-cadence", cli(*P3B, "--fast-probes", "--probe-every", "4"), 2,
     r"--fast-probes sets the probes .*leave out --probe-every, or --fast-probes"),
    ("p3b-fast-probes-method-and-flag", cli(*P3B, "--method", "p3b_fast_probes", "--fast-probes"), 2,
     r"--method p3b_fast_probes fixes its probes itself \(patch_probe\); leave out --fast-probes"),
    ("p3b-patch-probe-typo", cli(*P3B, "--patch-probe", "conv3"), 2, r"--patch-probe: invalid choice: 'conv3'"),
    ("art-warmup-epochs-negative", cli(*ART, "--warmup-epochs", "-1"), 2, r"--warmup-epochs: .*integer >= 0"),
    ("art-finetune-epochs-0", cli(*ART, "--finetune-epochs", "0"), 2,
     r"--finetune-epochs: must be an integer >= 1 \(ART's result is the fine-tuned sparse model\)"),
    ("art-max-art-epochs-0", cli(*ART, "--max-art-epochs", "0"), 2, r"--max-art-epochs: .*>= 1"),
    ("art-lam-init-inf", cli(*ART, "--lam-init", "inf"), 2, r"--lam-init: must be a finite number"),
    ("art-eta-below-1", cli(*ART, "--eta", "0.5"), 2, r"--eta: must be a finite number >= 1"),
    ("art-sparsity-1", cli(*ART, "--sparsity", "1.0"), 2, r"--sparsity: .*in \[0, 1\)"),
    ("art-method-typo", cli(*ART, "--method", "l3"), 2, r"unknown method 'l3'"),
    ("figures-format-typo", cli("figures", "{tmp}/h.jsonl.gz", "--format", "jpg"), 2, r"--format: invalid choice"),
    ("no-command", cli(), 2, r"required: command"),
    # 2. everything checked before the first step
    ("train-vit-at-the-wrong-size", cli(*TRAIN, "--model", "vit_micro_patch4_32", "--image-size", "28"), 2,
     r"vit_micro_patch4_32 takes 32-px images, but --image-size is 28"),
    ("p3b-vit-at-the-wrong-size", cli(*P3B, "--image-size", "32"), 2,
     r"vit_nano_patch4_28 takes 28-px images, but the image size is 32"),
    ("data-option-typo", _load("digits", limt=100), ConfigError,
     r"unknown option 'limt' for dataset 'digits'. Did you mean 'limit'\? Allowed: .*limit"),
    ("imagefolder-option-typo", _then(_tree, lambda ctx: sl.data.load("imagefolder", root=ctx.tmp / "tree",
                                                                       augmnet="none")),
     ConfigError, r"unknown option 'augmnet' for dataset 'imagefolder'. Did you mean 'augment'"),
    ("imagefolder-path-option-typo", _then(_tree, lambda ctx: sl.data.load(str(ctx.tmp / "tree"), limt=2)),
     ConfigError, r"unknown option 'limt' for dataset .*tree'. Did you mean 'limit'"),
    ("imagefolder-path-and-root", _then(_tree, lambda ctx: sl.data.load(str(ctx.tmp / "tree"), root="x")),
     ConfigError, r"the dataset is the path .* already"),
    ("named-tree-option-typo", _load("inat19", val_fraktion=0.1), ConfigError,
     r"unknown option 'val_fraktion' for dataset 'inat19'. Did you mean 'val_fraction'"),
    ("torchvision-option-typo", _load("flowers102", limt=5), ConfigError,
     r"unknown option 'limt' for dataset 'flowers102'. Did you mean 'limit'"),
    ("torchvision-unused-option", _load("pets", val_fraction=0.2), ConfigError,
     r"unknown option 'val_fraction' for dataset 'pets'. .*Allowed: augment, download, limit, root, seed"),
    ("imagefolder-limit-0", _then(_tree, lambda ctx: sl.data.load("imagefolder", root=ctx.tmp / "tree", limit=0)),
     ConfigError, r"limit must be a positive integer"),
    ("imagefolder-augment-typo", _then(_tree, lambda ctx: sl.data.load("imagefolder", root=ctx.tmp / "tree",
                                                                        augment="non")),
     ConfigError, r"augment must be one of \('randaugment', 'crop_flip', 'none'\)"),
    ("cifar-limit-negative", _load("cifar10", limit=-1), ConfigError, r"limit must be a positive integer"),
    ("fashion-mnist-augment-typo", _load("fashion_mnist", augment="flipp"), ConfigError, r"augment must be one of"),
    ("data-dir-is-a-file", _then(_data_is_a_file, _load("fashion_mnist")), ConfigError,
     r"SPARSELAB_DATA=.*not-a-folder is a file, not a folder"),
    ("fashion-mnist-explicit-root", _then(_fmnist_elsewhere, lambda ctx: sl.data.load("fashion_mnist",
                                                                                       root=ctx.tmp / "empty")),
     DataNotFoundError, r"Fashion-MNIST not found under root=.*empty.*leave out root="),
    ("model-option-typo", lambda ctx: sl.models.create("vgg19_bn", widht=0.5), ConfigError,
     r"unknown option 'widht' for model 'vgg19_bn'. Did you mean 'width'"),
    ("train-pretrained-missing-file", cli(*TRAIN, "--pretrained", "no/such/file.pth"), 2,
     r"--pretrained 'no/such/file.pth' is neither a checkpoint file nor one of"),
    ("pretrain-not-a-small-vit", cli("pretrain", "--model", "resnet20"), 2,
     r"source pretraining exists for sparselab's small ViTs .*not 'resnet20'"),
    ("pretrain-source-dataset", cli("pretrain", "--model", "vit_nano_patch4_28", "--dataset", "cifar10"), 2,
     r"unknown source dataset 'cifar10'.*fashion_mnist"),
    ("pretrain-recipe-typo", cli("pretrain", "--model", "vit_nano_patch4_28", "--recipe", "quik"), 2,
     r"unknown pretraining recipe 'quik'. Did you mean 'quick'"),
    ("pretrain-preset-and-model", cli("pretrain", "--preset", "tiny", "--model", "vit_nano_patch4_28"), 2,
     r"--preset picks the model, source dataset and recipe"),
    # 3. an --out that holds a run is not silently mixed with a new one
    ("train-out-holds-a-run", cli(*TRAIN, setup=_old_run("summary.json")), 2,
     r"--out .*out already holds a run \(summary.json\): pass --resume to continue it, --overwrite to replace it"),
    ("train-out-holds-a-checkpoint", cli(*TRAIN, setup=_old_run("checkpoint")), 2,
     r"already holds a run \(checkpoint\)"),
    ("p3b-out-holds-a-run", cli(*P3B, setup=_old_run("result.json")), 2, r"already holds a run \(result.json\)"),
    ("art-out-holds-a-run", cli(*ART, setup=_old_run("history.jsonl.gz")), 2,
     r"already holds a run \(history.jsonl.gz\)"),
    ("train-resume-and-overwrite", cli(*TRAIN, "--resume", "--overwrite"), 2, r"pass only one"),
    ("train-out-is-a-file", cli(*TRAIN, setup=_write("out", "x")), 2, r"--out .*out is a file, not a folder"),
    # 4. figures read what sparselab writes, and nothing else
    ("figures-text-file", cli("figures", "{tmp}/notes.txt", setup=_write("notes.txt", "hello\n")), 2,
     r"notes.txt, line 1: not a sparselab History \(not JSON"),
    ("figures-csv", cli("figures", "{tmp}/t.csv", setup=_write("t.csv", "step,value\n1,2\n")), 2,
     r"t.csv, line 1: not a sparselab History"),
    ("figures-torch-checkpoint", cli("figures", "{tmp}/last.pt", setup=_torch_checkpoint), 2,
     r"last.pt.* (not a sparselab History|cannot be read as a sparselab History)"),
    ("figures-truncated-gzip", cli("figures", "{tmp}/cut.jsonl.gz", setup=_truncated_gzip), 2,
     r"cut.jsonl.gz, line \d+ cannot be read as a sparselab History: a truncated or damaged gzip file"),
    ("figures-row-missing-a-field", cli("figures", "{tmp}/row.jsonl", setup=_row_missing_value), 2,
     r"row.jsonl, line 2: a 'metrics' row lacks 'value'"),
    ("figures-missing-file", cli("figures", "{tmp}/nothing.jsonl.gz"), 2, r"nothing.jsonl.gz does not exist"),
    ("figures-folder", cli("figures", "{tmp}"), 2, r"is a folder"),
    ("figures-nothing-to-draw", cli("figures", "{tmp}/plain.jsonl.gz", setup=_no_figures_history), 2,
     r"no figure applies to this History"),
    ("history-load-other-schema", _then(_write("o.jsonl", '{"schema": "x/1"}\n'),
                                        lambda ctx: History.load(ctx.tmp / "o.jsonl")),
     CheckpointError, r"o.jsonl is not a sparselab History \(schema 'x/1'"),
    ("history-load-unknown-table", _then(_write("u.jsonl", '{"schema": "sparselab.history/1", "meta": {}}\n'
                                                          '{"table": "weights"}\n'),
                                         lambda ctx: History.load(ctx.tmp / "u.jsonl")),
     CheckpointError, r"u.jsonl, line 2: not a History row"),
    ("history-load-gzip-named-plain", _then(_write("z.jsonl", gzip.compress(b"not json\n")),
                                            lambda ctx: History.load(ctx.tmp / "z.jsonl")),
     CheckpointError, r"z.jsonl, line 1: not a sparselab History"),
    # 5. names: a typo is an unknown name with suggestions
    ("train-model-typo-with-source", cli(*TRAIN, "--model", "vit_mini_patch7_2", "--pretrained", "fashion_mnist"), 2,
     r"unknown model 'vit_mini_patch7_2'. Did you mean 'vit_mini_patch7_28'"),
    ("train-model-prefix", cli(*TRAIN, "--model", "lenet"), 2, r"unknown model 'lenet'. Did you mean 'lenet_300_100'"),
    ("p3b-model-typo", cli(*P3B, "--model", "vit_nano_patch4_2"), 2,
     r"unknown model 'vit_nano_patch4_2'. Did you mean 'vit_nano_patch4_28'"),
    ("create-model-typo-with-source", lambda ctx: sl.models.create("vit_mini_patch7_2", pretrained="fashion_mnist"),
     UnknownNameError, r"unknown model 'vit_mini_patch7_2'. Did you mean 'vit_mini_patch7_28'"),
    ("create-model-typo-with-checkpoint", lambda ctx: sl.models.create("resnt20", pretrained="no/such.pth"),
     UnknownNameError, r"unknown model 'resnt20'. Did you mean 'resnet20'"),
    # 6. non-finite values
    ("fit-nan-lr", lambda ctx: sl.TrainConfig(lr=float("nan")), ConfigError, r"lr must be a finite number"),
    ("fit-inf-weight-decay", lambda ctx: sl.TrainConfig(weight_decay=float("inf")), ConfigError,
     r"weight_decay must be a finite number"),
    ("art-nan-eta", lambda ctx: sl.ART(sl.models.create("lenet_300_100", image_size=8), 0.9, eta=float("nan")),
     ConfigError, r"eta must be a finite number"),
    ("art-cli-nan-eta", cli("art", "--preset", "tiny", "--eta", "nan", "--out", "{tmp}/out"), 2,
     r"--eta: must be a finite number"),
    ("p3b-nan-keep-ratio", lambda ctx: sl.P3B(sl.models.create("vit_nano_patch4_28"), 0.5, allocation="fixed",
                                              keep_ratios=[float("nan"), 1.0] * 4),
     ConfigError, r"keep_ratios must be finite"),
    ("p3b-nan-tau", lambda ctx: sl.P3BSchedule(tau=float("nan")), ConfigError, r"tau must be a finite number"),
    ("fit-diverges", lambda ctx: sl.fit(sl.models.create("lenet_300_100", image_size=8),
                                        sl.data.load("digits", image_size=8), epochs=1, lr=float("1e30"),
                                        optimizer="sgd", momentum=0.0, max_steps_per_epoch=1, progress=False,
                                        nonfinite="raise",
                                        callbacks=[_PoisonLoss()]),
     sl.errors.DivergedError, r"non-finite loss at step 1"),
    # 7. a resume into another run
    ("resume-other-data", _resume_other_data, CheckpointError, r"belongs to another run: its data differ .*sizes"),
    ("resume-other-architecture", _resume_other_architecture, CheckpointError,
     r"its model differs in what the weights do not show \(line \d+ of the module tree: .*GELU.* in the "
     r"checkpoint, .*ReLU\(\).* now\)"),
    ("resume-other-pruner", _resume_other_pruner, CheckpointError,
     r"its P3B settings differ \(prune_ratio: 0.5 in the checkpoint, 0.75 now"),
    # 8. models the method does not support, and sizes that do not fit
    ("p3b-swiglu-vit", lambda ctx: sl.P3B(_vit(mlp="swiglu"), 0.5), ConfigError, r"blocks.0.mlp is GluMlp"),
    ("p3b-diff-attention-vit", lambda ctx: sl.P3B(_vit(attn="diff"), 0.5), ConfigError,
     r"blocks.0.attn is DiffAttention"),
    ("fit-image-size-mismatch", lambda ctx: sl.fit(sl.models.create("vit_nano_patch4_28"),
                                                   sl.data.load("digits", image_size=8), epochs=1, progress=False),
     ConfigError, r"takes 28x28 images but 'digits' is loaded at 8x8"),
    # 9. values a run would otherwise misread or ignore
    ("p3b-flag-as-string", lambda ctx: sl.P3B(_nano(), 0.5, reactivation="False"), ConfigError,
     r"reactivation must be one of True, False, got 'False'"),
    ("p3b-blocks-only-as-string", lambda ctx: sl.P3B(_nano(), 0.5, blocks_only="no"), ConfigError,
     r"blocks_only must be one of True, False, got 'no'"),
    ("p3b-gate-factor-typo", lambda ctx: sl.P3B(_nano(), 0.5, gate_factors={"mlp_hidden": 0.1}), UnknownNameError,
     r"unknown gate in gate_factors 'mlp_hidden'. Did you mean 'mlp_hid'"),
    ("p3b-schedule-as-dict", lambda ctx: sl.P3B(_nano(), 0.5, schedule={"warmup": 1}), ConfigError,
     r"schedule must be a sl.P3BSchedule"),
    ("p3b-schedule-string-epochs", lambda ctx: sl.P3BSchedule("1", 2, 3), ConfigError,
     r"warmup must be an integer >= 0, got '1'"),
    ("p3b-infinite-tau", lambda ctx: sl.P3BSchedule(tau=float("inf")), ConfigError, r"tau must be a finite number"),
    ("p3b-num-classes-zero", lambda ctx: sl.P3B(_nano(), 0.5, num_classes=0), ConfigError,
     r"num_classes must be an integer >= 2, got 0"),
    ("p3b-num-classes-other-than-data", lambda ctx: sl.fit(
        (m := _nano()), sl.data.load("digits", image_size=28, limit=64), epochs=1, batch_size=32, progress=False,
        pruner=sl.P3B(m, 0.5, schedule=sl.P3BSchedule(0, 1, 1), num_classes=5, patch_probe=None)),
     ConfigError, r"probes were built for num_classes=5, but 'digits' has 10 classes"),
    ("art-regularizer-other-sparsity", lambda ctx: sl.ART(_lenet(), 0.9, regularizer=sl.HyperSparse(0.5)),
     ConfigError, r"built for sparsity 0.5, but it is used at sparsity 0.9"),
    ("art-regularizer-other-threshold-every",
     lambda ctx: sl.ART(_lenet(), 0.9, regularizer=sl.HyperSparse(0.9), threshold_every=7),
     ConfigError, r"recomputes its threshold every 1 steps, but threshold_every=7"),
    ("p3b-ratio-as-string", lambda ctx: sl.P3B(_nano(), "0.5", num_classes=10), ConfigError,
     r"prune_ratio must be a number in \[0, 1\), got '0.5'"),
    ("art-sparsity-as-flag", lambda ctx: sl.ART(_lenet(), True), ConfigError,
     r"sparsity must be a number in \[0, 1\), got True"),
    ("art-flag-as-string", lambda ctx: sl.ART(_lenet(), 0.9, train_eval_augment="False"), ConfigError,
     r"train_eval_augment must be one of True, False, got 'False'"),
    ("art-profile-every-zero", lambda ctx: sl.ART(_lenet(), 0.9, profile_every=0), ConfigError,
     r"profile_every must be an integer >= 1, got 0"),
    ("fit-flag-as-string", lambda ctx: sl.TrainConfig(final_test="False"), ConfigError,
     r"final_test must be True or False"),
    ("fit-lr-as-string", lambda ctx: sl.TrainConfig(lr="1e-3"), ConfigError, r"lr must be a number, got the string"),
    ("fit-negative-seed", lambda ctx: sl.TrainConfig(seed=-1), ConfigError,
     r"seed must be an integer in \[0, 2\*\*32\)"),
    ("fit-milestones-without-step", lambda ctx: sl.TrainConfig(lr_milestones=[1], lr_gamma=0.01), ConfigError,
     r"lr_milestones and lr_gamma apply to lr_schedule='step' only"),
    ("fit-min-lr-without-cosine", lambda ctx: sl.TrainConfig(min_lr=5e-4, lr=1e-3), ConfigError,
     r"min_lr applies to lr_schedule='cosine' only"),
    ("fit-fractional-milestone", lambda ctx: sl.TrainConfig(lr_schedule="step", lr_milestones=[0.5]), ConfigError,
     r"lr_milestones must be epochs \(integers >= 0\), got 0.5"),
    ("fit-step-without-milestones", lambda ctx: sl.TrainConfig(lr_schedule="step"), ConfigError,
     r"lr_schedule='step' needs lr_milestones"),
    ("fit-cuda-without-cuda", lambda ctx: sl.fit(_lenet(), _digits8(), epochs=1, device="cuda", progress=False),
     ConfigError, r"CUDA is not available here"),
    ("fit-pruner-as-string", lambda ctx: sl.fit(_lenet(), _digits8(), epochs=1, pruner="p3b", progress=False),
     ConfigError, r"pruner must be a pruner object"),
    ("fit-config-as-dict", lambda ctx: sl.fit(_lenet(), _digits8(), config={"epochs": 1}, progress=False),
     ConfigError, r"config must be a sl.TrainConfig"),
    ("data-no-training-images", lambda ctx: sl.data.load("digits", image_size=8, val_fraction=0.999), ConfigError,
     r"no training images are left"),
    ("data-classes-as-number", lambda ctx: sl.data.load("digits", image_size=8, classes=3), ConfigError,
     r"classes must be a list of labels"),
    ("data-negative-seed", lambda ctx: sl.data.load("digits", image_size=8, seed=-1), ConfigError,
     r"seed must be an integer in \[0, 2\*\*32\)"),
    # 10. command-line runs that would mix with another run or leave a misleading record
    ("train-resume-into-another-command", cli(*TRAIN, "--resume", setup=_run_folder({"command": "art"})), 2,
     r"--resume: the run in --out .* was made with other settings \(command: 'art' there, 'train' now"),
    ("train-resume-other-pretrained", cli(*TRAIN, "--resume", "--pretrained", "fashion_mnist",
                                          setup=_run_folder({"command": "train", "pretrained": None})), 2,
     r"other settings \(pretrained: None there, 'fashion_mnist' now\)"),
    ("train-resume-other-recipe", cli(*TRAIN, "--resume", "--pretrained", "fashion_mnist", "--recipe", "quick",
                                      setup=_run_folder({"command": "train", "pretrained": "fashion_mnist",
                                                         "recipe": "split04"})), 2,
     r"other settings \(recipe: 'split04' there, 'quick' now\)"),
    ("train-resume-without-checkpoint", cli(*TRAIN, "--resume", setup=_write_in("out", "summary.json", "{}")), 2,
     r"holds outputs but no checkpoint/ to continue from"),
    ("train-out-under-a-file", cli("train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "8",
                                   "--out", "{tmp}/afile/run", setup=_write("afile", "x")), 2,
     r"--out .*afile/run cannot be created: .*afile is a file"),
    ("p3b-dense-with-prune-ratio", cli(*P3B, "--method", "dense", "--prune-ratio", "0.9"), 2,
     r"--prune-ratio sets how much to prune; --method dense prunes nothing"),
    ("art-lam-init-without-art", cli(*ART, "--method", "gmp", "--lam-init", "0.5"), 2,
     r"--lam-init set ART's regularized sparsification, which --method gmp does not run"),
    ("p3b-dry-run-bad-limit", cli("p3b", "--preset", "tiny", "--dry-run", "--limit", "-3"), 2,
     r"limit must be a positive integer"),
    ("figures-out-is-a-file", cli("figures", "{tmp}/h.jsonl.gz", "--out", "{tmp}/afile", setup=_write("afile", "x")),
     2, r"--out .*afile is a file, not a folder"),
    ("export-out-is-a-folder", cli("export", "onnx", "{tmp}/run", "--out", "{tmp}",
                                   setup=_write_in("run", "spec.json", "{}")), 2, r"--out .* is a folder; give a file"),
    ("presets-markdown-out-is-a-folder", cli("presets", "markdown", "--out", "{tmp}"), 2, r"is a folder"),
    ("presets-list-with-a-name", cli("presets", "list", "extra"), 2, r"presets list takes no preset name"),
    ("presets-show-with-out", cli("presets", "show", "p3b/tiny", "--out", "{tmp}/x.md"), 2,
     r"--out is for presets markdown"),
    ("pretrain-preset-with-dataset", cli("pretrain", "--preset", "tiny", "--dataset", "digits"), 2,
     r"--preset picks the model, source dataset and recipe"),
    ("art-model-for-other-image-size", cli(*ART, "--model", "vit_nano_patch4_28", "--method", "oneshot"), 2,
     r"vit_nano_patch4_28 takes 28-px images, but the image size is 8; pass --image-size 28"),
    ("evaluate-empty-split", lambda ctx: sl.evaluate(_lenet(), sl.data.TensorImages(
        torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))), ConfigError,
     r"evaluate needs a dataset with at least one image"),
]


# faults that only a training step can show (a diverging loss, a checkpoint to resume): one step is allowed
FAULTS = {"fit-diverges", "resume-other-data", "resume-other-pruner", "resume-other-architecture"}


class _TrainedBeforeTheError(AssertionError):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """Fail a row that takes a training step: its error must come first."""
    from sparselab.training import loop

    steps = []

    def guard(*args, **kwargs):
        steps.append(1)
        if len(steps) > 1:  # none is expected; a row must not train for more than a step
            raise _TrainedBeforeTheError("a training step ran before the error")
        return real(*args, **kwargs)

    real = loop._train_step
    monkeypatch.setattr(loop, "_train_step", guard)
    return steps


@pytest.mark.parametrize("action,expected,pattern", [pytest.param(a, e, p, id=i) for i, a, e, p in ROWS])
def test_a_bad_input_is_one_clear_error_before_any_training(action, expected, pattern, tmp_path, monkeypatch,
                                                            capsys, no_training, request):
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    if isinstance(action, cli):
        if action.setup is not None:
            action.setup(ctx)
        argv = [a.replace("{tmp}", str(tmp_path)) for a in action.argv]
        rc = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == expected, err
        assert len(lines) == 1 and lines[0].startswith("sparselab: error: "), err
        assert re.search(pattern, lines[0]), lines[0]
    else:
        with pytest.raises(expected) as info:
            action(ctx)
        assert re.search(pattern, str(info.value)), str(info.value)
    if request.node.callspec.id not in FAULTS:
        assert not no_training, "a training step ran before the error"


def test_row_ids_are_unique():
    ids = [row[0] for row in ROWS]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------------------------ fixed behaviour
@pytest.mark.parametrize("limit", [10, 11, 59, 60, 61, 333, 1000])
def test_limit_gives_exactly_that_many_training_images(limit):
    """limit=N keeps exactly N training images (classes in proportion) when the split holds at least N; a limit
    below the 10 classes is refused (tests/test_data_limits.py)."""
    data = sl.data.load("digits", image_size=8, limit=limit)
    assert len(data.train) == limit
    counts = torch.bincount(data.train.labels, minlength=10).float()
    assert counts.max() - counts.min() <= max(1, limit // 100 + 1)


def test_limit_on_an_image_folder_keeps_every_class(tmp_path):
    """A limit on an ImageFolder tree keeps classes in proportion (it used to keep the first class only)."""
    root = write_image_folder(tmp_path / "tree", per_class=6, size=8)
    data = sl.data.load("imagefolder", root=root, image_size=8, limit=6, augment="none")
    labels = [data.train[i][1] for i in range(len(data.train))]
    assert len(labels) == 6 and sorted(set(labels)) == [0, 1, 2]


def test_micro_vit_at_32_px_has_a_fashion_mnist_source_model(fmnist_files):
    """vit_micro_patch4_32 is pretrained on Fashion-MNIST resized to 32 px (it used to fail 28 vs 32)."""
    from sparselab.models import pretrained as pre

    model = sl.models.create("vit_micro_patch4_32", num_classes=3, pretrained="fashion_mnist", recipe="quick",
                             progress=False)
    assert model.patch_embed.img_size == (32, 32) and model.patch_embed.proj.in_channels == 1
    record = json.loads(pre.checkpoint_path("vit_micro_patch4_32", recipe="quick").with_suffix(".json").read_text())
    assert record["image_size"] == 32
    data = sl.data.load("digits", image_size=32, limit=64)
    assert model(data.train.images[:2]).shape == (2, 3)


def test_data_load_records_its_options():
    data = sl.data.load("digits", image_size=8, limit=50, val_fraction=0.2, classes=None)
    assert data.options == {"limit": 50, "val_fraction": 0.2}


def test_sparselab_data_can_be_a_new_folder(tmp_path, monkeypatch):
    from sparselab.paths import data_dir

    monkeypatch.setenv("SPARSELAB_DATA", str(tmp_path / "new" / "data"))
    assert data_dir() == tmp_path / "new" / "data" and data_dir().is_dir()


def test_fashion_mnist_root_is_used_when_it_holds_the_files(tmp_path, isolated_data_dir):
    write_fashion_mnist(isolated_data_dir / "fashion_mnist", n_train=100, n_test=30)
    write_fashion_mnist(tmp_path / "mine" / "FashionMNIST" / "raw", n_train=200, n_test=40)
    assert len(sl.data.load("fashion_mnist", split="test", root=tmp_path / "mine")) == 40
    assert len(sl.data.load("fashion_mnist", split="test")) == 30

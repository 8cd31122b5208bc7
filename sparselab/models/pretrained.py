"""Source-pretrained small ViTs: trained by sparselab itself on Fashion-MNIST, reproducibly, and cached.

``sparselab.models.create("vit_mini_patch7_28", pretrained="fashion_mnist")`` trains the model on first use
(fixed seed, progress bar; the ``default`` recipe takes about 6 minutes on 2 CPU cores for
``vit_mini_patch7_28``) and caches the weights under ``data/checkpoints/`` as safetensors with a JSON
record of the recipe and the test accuracy. Rebuild with::

    sparselab pretrain --model vit_mini_patch7_28 --recipe default --force

Example:
    >>> from sparselab.models.pretrained import RECIPES
    >>> RECIPES["quick"].epochs
    2
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import CheckpointError, ConfigError, unknown_name
from ..paths import data_dir


@dataclass(frozen=True)
class SourceRecipe:
    """How a source model is pretrained (AdamW, linear warm-up then cosine, random flips)."""

    epochs: int = 4
    limit: int | None = None
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    seed: int = 0
    classes: tuple[int, ...] | None = None  # train on these source classes only (a class-split transfer)

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        if fields["classes"] is None:  # recipes without a class split keep the cache key they always had
            del fields["classes"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


RECIPES: dict[str, SourceRecipe] = {
    "default": SourceRecipe(),
    "quick": SourceRecipe(epochs=2, limit=4096, warmup_steps=8),  # seconds; for tests and the `tiny` scale
    # Fashion-MNIST classes 0-4 only (T-shirt, trouser, pullover, dress, coat): the source of the class-split transfer
    # to classes 5-9 (sandal, shirt, sneaker, bag, ankle boot)
    "split04": SourceRecipe(classes=(0, 1, 2, 3, 4)),
}


def check_recipe(recipe: str) -> str:
    """Return ``recipe`` if it names one of :data:`RECIPES`, else raise a clear error."""
    if not isinstance(recipe, str):
        raise ConfigError(f"a pretraining recipe is given by name ({', '.join(RECIPES)}), got {recipe!r}")
    if recipe not in RECIPES:
        raise unknown_name("pretraining recipe", recipe, RECIPES)
    return recipe


def checkpoint_path(model_name: str, dataset: str = "fashion_mnist", recipe: str = "default") -> Path:
    """Where the pretrained weights of ``model_name`` under ``recipe`` are cached."""
    check_recipe(recipe)
    return data_dir() / "checkpoints" / f"{model_name}-{dataset}-{recipe}-{RECIPES[recipe].key()}.safetensors"


def source_record(model_name: str, dataset: str = "fashion_mnist", recipe: str = "default") -> dict[str, Any]:
    """The JSON record (recipe, source test accuracy, checksum) of a cached source model, pretraining it if needed."""
    path = pretrain(model_name, dataset, recipe)
    return json.loads(path.with_suffix(".json").read_text())


def resume_dir(model_name: str, dataset: str = "fashion_mnist", recipe: str = "default") -> Path:
    """Where an unfinished pretraining keeps its checkpoint (next to the cached weights; removed once they exist)."""
    path = checkpoint_path(model_name, dataset, recipe)
    return path.with_name(path.stem + ".checkpoint")


def _check_source(model_name: str, dataset: str) -> None:
    from . import small_vit

    if model_name not in small_vit.SMALL_VITS:
        from . import check_name

        check_name(model_name)  # a typo gets the unknown-model error with suggestions
        raise ConfigError(f"source pretraining exists for sparselab's small ViTs ({', '.join(small_vit.SMALL_VITS)}), "
                          f"not {model_name!r}")
    from . import SOURCE_DATASETS

    if dataset not in SOURCE_DATASETS:
        raise unknown_name("source dataset", dataset, SOURCE_DATASETS)


#: source dataset → the trainer that pretrains a small ViT on it, as ``"module:function"`` (imported on first use,
#: so that ``models`` never imports the training loop) or a callable; :func:`register_source_trainer` adds more.
#: A trainer takes ``(model_name, dataset, recipe: SourceRecipe, checkpoint_dir, progress, resume)`` and returns
#: ``(model, history, image_size)``.
SOURCE_TRAINERS: dict[str, Any] = {"fashion_mnist": "sparselab.experiments.source:train_source_model"}


def register_source_trainer(dataset: str, trainer: Any) -> None:
    """Let ``pretrained=dataset`` (and :func:`pretrain`) train source models with ``trainer``."""
    SOURCE_TRAINERS[dataset] = trainer


def source_trainer(dataset: str):
    """The trainer registered for ``dataset`` (see :data:`SOURCE_TRAINERS`)."""
    import importlib

    if dataset not in SOURCE_TRAINERS:
        raise unknown_name("source dataset", dataset, SOURCE_TRAINERS)
    trainer = SOURCE_TRAINERS[dataset]
    if isinstance(trainer, str):
        module, _, name = trainer.partition(":")
        trainer = getattr(importlib.import_module(module), name)
    return trainer


def pretrain(model_name: str, dataset: str = "fashion_mnist", recipe: str = "default", force: bool = False,
             progress: bool = True, resume: bool = False) -> Path:
    """Train ``model_name`` on the source dataset with ``recipe`` and cache its weights; returns the path.

    Skips training when the cache exists (unless ``force``). Deterministic for a recipe on a given machine. The
    source images are resized to the model's input size (Fashion-MNIST's 28 px to 32 px for
    ``vit_micro_patch4_32``), in one channel. While it trains, a checkpoint is kept in :func:`resume_dir`:
    Ctrl-C stops at a step boundary, and ``resume=True`` continues from there to the same weights.
    """
    _check_source(model_name, dataset)
    path = checkpoint_path(model_name, dataset, recipe)
    if path.exists() and not force:
        _check_cached(path, model_name, recipe)
        return path
    rec = RECIPES[recipe]
    ckpt_dir = resume_dir(model_name, dataset, recipe)
    model, history, image_size = source_trainer(dataset)(model_name, dataset, rec, ckpt_dir, progress=progress,
                                                         resume=resume)
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    # a split that was never evaluated (no validation images) is left out, not written as NaN
    accuracies = {f"{split}_acc": history.last("acc", split=split) for split in ("test", "val")}
    record = {"model": model_name, "dataset": dataset, "recipe": recipe, **dataclasses.asdict(rec),
              "image_size": image_size, **{k: v for k, v in accuracies.items() if math.isfinite(v)},
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    text = json.dumps(record, indent=2, allow_nan=False)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return path


def rebuild_command(model_name: str, recipe: str = "default") -> str:
    """The command that pretrains ``model_name`` with ``recipe`` again, replacing its cached weights."""
    return f"sparselab pretrain --model {model_name} --force" + (f" --recipe {recipe}" if recipe != "default" else "")


def _check_cached(path: Path, model_name: str, recipe: str) -> None:
    """Refuse cached weights that lack their JSON record or differ from the checksum it holds."""
    record = path.with_suffix(".json")
    hint = f"rebuild it: {rebuild_command(model_name, recipe)}"
    try:
        expected = json.loads(record.read_text(encoding="utf-8")).get("sha256")
    except FileNotFoundError:
        raise CheckpointError(f"cached source model {path} has no record {record.name} (recipe, accuracy, "
                              f"checksum); {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"the record {record} of cached source model {path} could not be read "
                              f"({type(exc).__name__}: {exc}); {hint}") from None
    if expected != hashlib.sha256(path.read_bytes()).hexdigest():
        raise CheckpointError(f"cached source model {path} does not match the checksum in {record.name} (changed "
                              f"or damaged since it was trained); {hint}")


def source_pretrained(name: str, dataset: str, num_classes: int = 10, in_chans: int | None = None,
                      recipe: str | None = None, reset_head: bool = True, progress: bool = True,
                      **kwargs: Any) -> nn.Module:
    """A small ViT with source-pretrained weights (trained and cached on first use).

    The classifier head is freshly initialised (seeded) when ``reset_head`` or when ``num_classes`` differs from the
    source's class count (10, or the recipe's ``classes``); otherwise it is the source's trained head. A
    source pretraining that was interrupted continues from its checkpoint.
    """
    from . import create, small_vit

    if name not in small_vit.SMALL_VITS:
        raise ConfigError(f"pretrained={dataset!r} exists for sparselab's small ViTs "
                          f"({', '.join(small_vit.SMALL_VITS)}), not {name!r}")
    if in_chans not in (None, 1):
        raise ConfigError(f"the {dataset} source model takes 1-channel images, got in_chans={in_chans}")
    # an interrupted source pretraining continues from its own checkpoint (kept per model, dataset and recipe;
    # fit refuses one written with other settings), so that running the command again resumes it
    path = pretrain(name, dataset, recipe or "default", progress=progress, resume=True)
    rec = RECIPES[recipe or "default"]
    source_classes = 10 if rec.classes is None else len(rec.classes)  # the head the source model was trained with
    try:
        model = create(name, num_classes=source_classes, in_chans=1, pretrained=path, **kwargs)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. Rebuild it: {rebuild_command(name, recipe or 'default')}") from None
    if reset_head or num_classes != source_classes:
        with torch.random.fork_rng():
            torch.manual_seed(RECIPES[recipe or "default"].seed + 1)
            model.reset_classifier(num_classes)
    model.pretrained_source = {"dataset": dataset, "recipe": recipe or "default", "path": str(path)}
    return model

"""Source pretraining of sparselab's small ViTs on Fashion-MNIST: the trainer that
``sparselab.models.create(..., pretrained="fashion_mnist")`` and :func:`sparselab.models.pretrained.pretrain` find
through :data:`sparselab.models.pretrained.SOURCE_TRAINERS` (the models package never imports the training loop).

Example:
    >>> from sparselab.models.pretrained import source_trainer
    >>> source_trainer("fashion_mnist") is train_source_model
    True
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import data as sl_data
from .. import models
from ..history import History
from ..models import small_vit
from ..models.pretrained import SourceRecipe
from ..training import fit


def train_source_model(model_name: str, dataset: str, recipe: SourceRecipe, checkpoint_dir: str | Path,
                       progress: bool = True, resume: bool = False) -> tuple[nn.Module, History, int]:
    """Train ``model_name`` on ``dataset`` with ``recipe`` (seeded; deterministic on a given machine), keeping a
    checkpoint in ``checkpoint_dir`` (``resume=True`` continues from it). Returns the model, its History and the
    image size it was trained at."""
    bundle = sl_data.load(dataset, image_size=small_vit.SMALL_VITS[model_name]["img_size"], limit=recipe.limit,
                          seed=recipe.seed,
                          **({"classes": list(recipe.classes)} if recipe.classes is not None else {}))
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = models.create(model_name, num_classes=bundle.num_classes, in_chans=bundle.in_chans)
    history = fit(model, bundle, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                  weight_decay=recipe.weight_decay, warmup_steps=recipe.warmup_steps, lr_schedule="cosine",
                  seed=recipe.seed, progress=progress, device="cpu", checkpoint_dir=checkpoint_dir, resume=resume)
    return model, history, bundle.image_size

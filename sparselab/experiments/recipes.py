"""The table of record: every hyper-parameter of a preset beside the reference recipe's value and its source.

Each row reads the value from the preset object itself (or from the defaults of the class that runs it), so the
table shows what a run will do; ``reference`` is the value METHODS.md gives (§1.6a for P3B, §2.3a for ART).
Where a preset deliberately differs, the row says so and why (``differs``); ``tests/test_presets_table.py``
asserts that every other row of every ``paper-*`` preset equals its reference and that ``docs/presets.md`` is
exactly :func:`render_markdown`'s output, so code and documentation cannot drift apart.

Example:
    >>> rows = recipe_rows("paper-deit-s-ifood")
    >>> next(r for r in rows if r.parameter == "effective batch").value
    512
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

from ..configs import BenefitConfig
from ..data.transforms import PAPER_SCALE, RANDAUGMENT, RANDOM_ERASING
from ..errors import unknown_name
from ..pruners import ART, P3B
from ..training.config import TrainConfig
from .art import ART_PRESETS, ARTPreset
from .p3b import METHODS as P3B_METHODS
from .p3b import PRESETS as P3B_PRESETS
from .p3b import P3BPreset

P3B_SOURCE = "METHODS.md §1.6a"
ART_SOURCE = "METHODS.md §2.3a"


@dataclass(frozen=True)
class RecipeRow:
    """One hyper-parameter: the preset's value, the reference value (None: the reference states none), where the
    reference comes from, and, where the preset deliberately differs, why."""

    parameter: str
    value: Any
    reference: Any
    source: str
    note: str = ""
    differs: bool = False

    @property
    def matches(self) -> bool | None:
        return None if self.reference is None else self.value == self.reference


def _defaults(cls) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _train(options: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in options.items() if k in known})


# ------------------------------------------------------------------------------------------------ P3B
def _p3b_rows(p: P3BPreset) -> list[RecipeRow]:
    fit, ft = _train(p.fit), _train(p.finetune)
    pruner = {**_defaults(P3B), **p.probe_options}
    size = "s" if "deit_small" in p.model else "t"
    src = P3B_SOURCE
    rows = [
        RecipeRow("source model", p.model, f"deit_{'small' if size == 's' else 'tiny'}_patch16_224", "METHODS.md §1.7"),
        RecipeRow("ImageNet-pretrained (timm hub weights)", p.pretrained, True, "METHODS.md §1.7"),
        RecipeRow("image size", _image_size(p), 224, "METHODS.md §1.6"),
        RecipeRow("training images", *_p3b_splits(p)[0], src),
        RecipeRow("test set", *_p3b_splits(p)[1], src),
        RecipeRow("effective batch", fit.effective_batch_size, 512, src),
        RecipeRow("gradient accumulation steps", fit.accumulate_steps, 2, src,
                  "micro-batch 256 on one process (the reference: 64 per GPU on 4 GPUs)"),
        RecipeRow("schedules count", "optimizer steps", "micro-steps", src,
                  "phases are set in epochs, so only the mask-update spacing differs: every U optimizer steps "
                  "instead of every U micro-steps, about 3 updates per epoch either way", differs=True),
        RecipeRow("optimizer", fit.optimizer, "adamw", src),
        RecipeRow("learning rate", fit.lr, 5e-4, src, "5e-4 x effective batch / 512"),
        RecipeRow("weight decay", fit.weight_decay, 0.05, "METHODS.md §1.6"),
        RecipeRow("lr schedule while pruning", fit.lr_schedule, "constant", "METHODS.md §1.6"),
        RecipeRow("repeated augmentation (timm RepeatAugSampler)", fit.repeated_aug, 3, src),
        RecipeRow("RandAugment", RANDAUGMENT if _timm_pipeline(p) else "none", "rand-m9-mstd0.5-inc1", src),
        RecipeRow("random erasing (probability, mode)", RANDOM_ERASING if _timm_pipeline(p) else "none",
                  (0.25, "pixel"), src),
        RecipeRow("mixup alpha", fit.mixup, 0.8, src),
        RecipeRow("cutmix alpha", fit.cutmix, 1.0, src),
        RecipeRow("label smoothing", fit.label_smoothing, 0.1, src),
        RecipeRow("probes train on", "the model's mixed, smoothed targets", "the model's mixed, smoothed targets",
                  src),
        RecipeRow("drop-path while pruning", p.model_options.get("drop_path_rate", 0.0), 0.0, src),
        RecipeRow("model mode while pruning", "train (drop-path 0; probe BatchNorm on batch statistics)", "eval",
                  src, "the reference's eval mode freezes the probes' BatchNorm statistics at their "
                  "initialisation; METHODS.md asks for drop-path 0 at least, which train mode with drop_path_rate "
                  "0 gives", differs=True),
        RecipeRow("dense warm-up (epochs)", p.schedule.warmup, 10, "METHODS.md §1.6",
                  "the reference repository's README command; its code's default is 5"),
        RecipeRow("sparsify until (epoch)", p.schedule.sparsify, 25, "METHODS.md §1.6"),
        RecipeRow("finalize at (epoch)", p.schedule.finalize, 50, "METHODS.md §1.6"),
        RecipeRow("mask updates per epoch", p.schedule.updates_per_epoch, 3, "METHODS.md §1.6"),
        RecipeRow("τ (soft-mask temperature)", p.schedule.tau, 0.1, "METHODS.md §1.5"),
        RecipeRow("τ_min", p.schedule.tau_min, 0.0, src),
        RecipeRow("patch probe", p.patch_probe, "conv2", "METHODS.md §1.3"),
        RecipeRow("patch probes every k-th step", pruner["probe_every"], 1, "METHODS.md §1.3"),
        RecipeRow("patch probes' share of the batch", pruner["probe_fraction"], 1.0, "METHODS.md §1.3"),
        RecipeRow("probe learning rate", pruner["probe_lr"], 5e-4, src, "not scaled with the batch"),
        RecipeRow("probe weight decay (conv/linear weights)", pruner["probe_weight_decay"], 0.05, src),
        RecipeRow("benefit scale T", pruner["benefit_scale"], 10.0, "METHODS.md §1.4"),
        RecipeRow("benefit per parameter", pruner["per_parameter"], "remaining", "METHODS.md §1.4"),
        RecipeRow("importance momentum γ", pruner["momentum"], 0.2, "METHODS.md §1.4"),
        RecipeRow("class/patch mix α", pruner["class_weight"], 0.5, "METHODS.md §1.4"),
        RecipeRow("prune ratio refers to", "blocks only" if pruner["blocks_only"] else "the whole model",
                  "the whole model", "METHODS.md §1.4"),
        RecipeRow("gate factors", dict(pruner["gate_factors"] or _gate_factors()), _gate_factors(),
                  "METHODS.md §1.5"),
        RecipeRow("finalisation scores", "Taylor and benefit over the last two windows merged",
                  "Taylor and benefit over the last two windows merged", src),
        RecipeRow("fine-tune epochs", p.finetune_epochs, 300, src,
                  "a shorter variant, named as such" if p.finetune_epochs != 300 else "",
                  differs=p.finetune_epochs != 300),
        RecipeRow("fine-tune optimizer", ft.optimizer, "adamw", src),
        RecipeRow("fine-tune effective batch", ft.effective_batch_size, 512, src),
        RecipeRow("fine-tune learning rate", ft.lr, 5e-4, src),
        RecipeRow("fine-tune weight decay", ft.weight_decay, 0.05, src),
        RecipeRow("fine-tune lr schedule", ft.lr_schedule, "cosine", src),
        RecipeRow("fine-tune final learning rate", ft.min_lr, 1e-5, src),
        RecipeRow("fine-tune warm-up steps", ft.warmup_steps, 0, src),
        RecipeRow("fine-tune augmentation (RA, mixup, cutmix, smoothing)",
                  (ft.repeated_aug, ft.mixup, ft.cutmix, ft.label_smoothing), None, src,
                  "the DeiT recipe, as in the pruning run (METHODS.md names only 'the standard DeiT recipe')"),
    ]
    return rows


#: data sets that are ImageFolder trees with train/ and val/ folders (the reference's iFood, iNat19, TinyImageNet)
_TREE_DATA = ("ifood", "inat19", "tinyimagenet")


def _own_splits(p: P3BPreset | ARTPreset) -> tuple[str, str]:
    """How a data set without a reference split is split: its training images (after ``limit``) and test set."""
    limit = p.data_options.get("limit")
    train = f"{limit} {p.data} training images" if limit else f"the {p.data} training split"
    return train, f"the {p.data} test split"


def _p3b_splits(p: P3BPreset) -> tuple[tuple[str, str], tuple[str, str]]:
    """(preset's, reference's) training images and (preset's, reference's) test set of a P3B preset."""
    if p.data == "cifar100":
        train = "all 50 000" if p.data_options.get("val_fraction") == 0 else "50 000 minus a validation split"
        return (train, "all 50 000"), ("official test set", "official test set")
    if p.data in _TREE_DATA:
        return ("train/ folder", "train/ folder"), ("val/ folder", "val/ folder")
    train, test = _own_splits(p)
    return (train, "train/ folder"), (test, "val/ folder")


def _art_splits(p: ARTPreset) -> tuple[tuple[str, str], tuple[str, str]]:
    """(preset's, reference's) training images and (preset's, reference's) test set of an ART preset."""
    if p.data == "tinyimagenet":
        return ("train/ folder", "train/ folder"), ("val/ folder", "val/ folder")
    if p.data in ("cifar10", "cifar100"):
        train = "all 50 000" if p.data_options.get("val_fraction") == 0 else "50 000 minus a validation split"
        return (train, "all 50 000"), ("official test set", "official test set")
    train, test = _own_splits(p)
    return (train, "all 50 000"), (test, "official test set")


def _image_size(p: P3BPreset | ARTPreset) -> int | str:
    """The preset's image size as its table shows it: ``image_size=None`` loads the images at the size they have."""
    return p.image_size if p.image_size is not None else "the dataset's own"


def _timm_pipeline(p: P3BPreset) -> bool:
    """Whether the preset's training images get timm's DeiT augmentation (RandAugment, random erasing): at
    :data:`~sparselab.data.transforms.PAPER_SCALE` px and more, unless augmentation is off."""
    return p.data_options.get("augment") != "none" and (p.image_size is None or p.image_size >= PAPER_SCALE)


def _gate_factors() -> dict[str, float]:
    from ..pruners.selection import GATE_FACTORS

    return dict(GATE_FACTORS)


# ------------------------------------------------------------------------------------------------ ART
def _art_rows(p: ARTPreset) -> list[RecipeRow]:
    fit, ft = _train(p.fit), _train(p.finetune)
    art = _defaults(ART)
    tiny = p.data == "tinyimagenet"
    cifar = p.data in ("cifar10", "cifar100")
    src = ART_SOURCE
    reference_model = "resnet32_wide" if "resnet32" in p.name else "vgg19_bn"
    return [
        RecipeRow("model", p.model, reference_model, "METHODS.md §2.4",
                  "ResNet-32 at widths 32/64/128" if reference_model == "resnet32_wide" else
                  "VGG-19-BN: four max-pools, average pooling, conv bias, He-normal conv / N(0, 0.01) linear init"),
        RecipeRow("image size", _image_size(p), 64 if tiny else 32, src),
        RecipeRow("random crop padding", p.data_options.get("pad"), 4, src),
        RecipeRow("augmentation", p.data_options.get("augment"), "crop_flip", src),
        RecipeRow("training images", *_art_splits(p)[0], src),
        RecipeRow("test set", *_art_splits(p)[1], src),
        RecipeRow("normalisation", "the training split's mean/std" if not tiny else "TinyImageNet's own mean/std",
                  "fixed dataset mean/std" if not tiny else "TinyImageNet's own mean/std", src,
                  ("computed from all 50 000 training images, which fixed constants approximate" if cifar else
                   "computed from the training split") if not tiny else
                  "(0.4802, 0.4481, 0.3975) / (0.2302, 0.2265, 0.2262)", differs=not tiny),
        RecipeRow("batch size", fit.batch_size, 64, "METHODS.md §2.3"),
        RecipeRow("optimizer", fit.optimizer, "sgd", "METHODS.md §2.3"),
        RecipeRow("learning rate", fit.lr, 0.1, "METHODS.md §2.3"),
        RecipeRow("momentum", fit.momentum, 0.9, "METHODS.md §2.3"),
        RecipeRow("weight decay", fit.weight_decay, 1e-4, "METHODS.md §2.3"),
        RecipeRow("weight decay on", fit.weight_decay_on, "all", src),
        RecipeRow("lr schedule (warm-up and ART)", fit.lr_schedule, "constant", "METHODS.md §2.3"),
        RecipeRow("precision", "fp32" if fit.amp is False else "automatic", "fp32", src),
        RecipeRow("optimizer from warm-up through ART", "one (momentum handed on)", "one (momentum handed on)", src),
        RecipeRow("warm-up epochs", p.warmup_epochs, 60, "METHODS.md §2.3"),
        RecipeRow("λ_init", p.lam_init, 5e-6, "METHODS.md §2.3", "the reference code's value; its README says 5e-4"),
        RecipeRow("η (λ growth per ART epoch)", p.eta, 1.05, "METHODS.md §2.3"),
        RecipeRow("window length", art["window"], 3, "METHODS.md §2.3"),
        RecipeRow("candidate rule", p.candidate_rule, "reference", "METHODS.md §2.3",
                  "window mean above the candidate's own pruned accuracy; partial windows count"),
        RecipeRow("pruned copy's accuracy measured on", "augmented training batches"
                  if art["train_eval_augment"] else "un-augmented training images", "augmented training batches",
                  "METHODS.md §2.3"),
        RecipeRow("ART epoch limit", p.max_art_epochs, None, "METHODS.md §2.3",
                  "a safety limit with a warning; the reference stops only on its criterion"),
        RecipeRow("fine-tune epochs", p.finetune_epochs, 160, "METHODS.md §2.3"),
        RecipeRow("fine-tune lr drops (epochs, factor)", (ft.lr_milestones, ft.lr_gamma), ((80, 120), 0.1),
                  "METHODS.md §2.3"),
        RecipeRow("fine-tune optimizer", (ft.optimizer, ft.lr, ft.momentum, ft.weight_decay, ft.weight_decay_on),
                  ("sgd", 0.1, 0.9, 1e-4, "all"), src, "a fresh one"),
        RecipeRow("sparsities", p.sparsities, (0.9, 0.98, 0.995, 0.998), src),
        RecipeRow("reported accuracy", "last and best test accuracy of fine-tuning",
                  "last and best test accuracy of fine-tuning", src),
    ]


# ------------------------------------------------------------------------------------------------ lookup
def all_presets() -> dict[str, P3BPreset | ARTPreset]:
    """Every named preset, P3B (``sparselab p3b``) and ART (``sparselab art``), by name."""
    out: dict[str, Any] = {}
    for name, preset in P3B_PRESETS.items():
        out[f"p3b/{name}" if name in ART_PRESETS else name] = preset
    for name, preset in ART_PRESETS.items():
        out[f"art/{name}" if name in P3B_PRESETS else name] = preset
    return out


def find_preset(name: str) -> P3BPreset | ARTPreset:
    """A preset by name; names both commands use (``tiny``, ``cpu``) are ``p3b/NAME`` and ``art/NAME``."""
    presets = all_presets()
    if name not in presets:
        raise unknown_name("preset", name, presets)
    return presets[name]


def recipe_rows(preset: str | P3BPreset | ARTPreset) -> list[RecipeRow]:
    """The table of record for one preset (a name or a preset object)."""
    p = find_preset(preset) if isinstance(preset, str) else preset
    return _p3b_rows(p) if isinstance(p, P3BPreset) else _art_rows(p)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        if not v:
            return "none"
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _status(row: RecipeRow) -> str:
    if row.reference is None:
        return "not stated"
    return "same" if row.matches else "**differs**"


def render_table(preset: str | P3BPreset | ARTPreset) -> str:
    """The table of record as Markdown: parameter | preset | reference | source | status | note."""
    lines = ["| parameter | preset | reference | source | | note |", "|---|---|---|---|---|---|"]
    for r in recipe_rows(preset):
        lines.append(f"| {r.parameter} | {_fmt(r.value)} | {_fmt(r.reference)} | {r.source} | {_status(r)} | "
                     f"{r.note} |")
    return "\n".join(lines)


def render_markdown() -> str:
    """``docs/presets.md``: one table per reference recipe (the ``paper-*`` presets), generated from the code."""
    out = ["# Paper presets: every hyper-parameter beside the reference recipe", "",
           "Generated by `sparselab presets markdown` from `sparselab/experiments/recipes.py`; "
           "`tests/test_presets_table.py` fails when this file and the presets disagree. `sparselab presets show "
           "NAME` prints one table; `sparselab p3b --preset NAME --dry-run` (or `art`) prints the resolved recipe in "
           "optimizer steps. *differs* marks a deliberate difference, explained in the note.", ""]
    groups = {
        "P3B: `paper-deit-{s,t}-{cifar100,ifood,inat19}`": ["paper-deit-s-cifar100", "paper-deit-s-ifood"],
        "P3B, shorter compact fine-tuning: `...-ft50`": ["paper-deit-s-ifood-ft50"],
        "ART: `paper-{resnet32,vgg19}-{cifar10,cifar100}`": ["paper-vgg19-cifar100"],
        "ART: `paper-{resnet32,vgg19}-tinyimagenet`": ["paper-resnet32-tinyimagenet"],
    }
    for title, names in groups.items():
        for name in names:
            out += [f"## {title} — shown for `{name}`", "", render_table(name), ""]
    return "\n".join(out)


def paper_presets() -> list[str]:
    """Names of every preset that claims to reproduce a reference recipe."""
    return [n for n in all_presets() if n.startswith("paper-")]


# ------------------------------------------------------------------------------------------------ dry run
def steps_per_epoch(train_images: int, options: dict) -> int:
    """Optimizer steps per epoch that :func:`sparselab.fit` will take with these training options (one process)."""
    from ..data.batches import epoch_groups

    cfg = _train(options)
    n = len(epoch_groups(train_images, cfg.batch_size, cfg.accumulate_steps, cfg.drop_last, cfg.seed, 0,
                         cfg.repeated_aug, 1))
    return min(n, cfg.max_steps_per_epoch or n)


def resolved_recipe(preset: P3BPreset | ARTPreset, data=None) -> dict[str, Any]:
    """What a run of ``preset`` will do, with every schedule in optimizer steps (``sparselab ... --dry-run``).

    ``data`` is the loaded DataBundle; None: the step counts are left out (e.g. the dataset is not on this
    machine)."""
    fit = _train(preset.fit)
    out: dict[str, Any] = {
        "preset": preset.name, "model": preset.model, "data": preset.data, "image size": preset.image_size,
        "data options": dict(preset.data_options),
        "batch per forward pass": fit.batch_size, "accumulation steps": fit.accumulate_steps,
        "effective batch": fit.effective_batch_size, "optimizer": fit.optimizer, "lr": fit.lr,
        "weight decay": f"{fit.weight_decay} on {fit.weight_decay_on}", "repeated augmentation": fit.repeated_aug,
        "mixup / cutmix / label smoothing": (fit.mixup, fit.cutmix, fit.label_smoothing),
    }
    if data is not None:
        out["images (train / val / test)"] = tuple(len(d) if d is not None else 0
                                                   for d in (data.train, data.val, data.test))
        out["image size"] = data.image_size
    steps = steps_per_epoch(len(data.train), preset.fit) if data is not None else None
    ft = _train(preset.finetune)
    ft_steps = steps_per_epoch(len(data.train), preset.finetune) if data is not None else None

    def at(epochs: int, per_epoch: int | None = steps) -> str:
        return f"epoch {epochs}" + (f" = step {epochs * per_epoch}" if per_epoch is not None else "")

    if steps is not None:
        out["optimizer steps per epoch"] = steps
    if isinstance(preset, P3BPreset):
        sch = preset.schedule
        probes = _uses_probes(preset)
        out.update({
            "dense warm-up until": at(sch.warmup), "sparsify until": at(sch.sparsify),
            "finalize at": at(sch.finalize),
            "mask update every": (f"{max(1, steps // sch.updates_per_epoch)} optimizer steps" if steps is not None
                                  else f"1/{sch.updates_per_epoch} epoch"),
            "τ / τ_min": (sch.tau, sch.tau_min),
            "patch probe": (method_patch_probe(preset, preset.methods[0]) if len(preset.methods) == 1
                            else preset.patch_probe) or "none (class-token probes only)" if probes
                           else f"none ({_NO_PROBES})",
            "probe options": (method_probe_options(preset, preset.methods[0]) if len(preset.methods) == 1
                              else dict(preset.probe_options)) if probes else f"none ({_NO_PROBES})",
            "compact fine-tune": f"{preset.finetune_epochs} epochs"
                                 + (f" = {preset.finetune_epochs * ft_steps} steps" if ft_steps is not None else "")
                                 + f", {_lr_text(ft, ft_steps)}, effective batch {ft.effective_batch_size}",
        })
    else:
        regularized, scheduled = _art_kinds(preset)
        out["warm-up"] = at(preset.warmup_epochs)
        if regularized:
            out.update({
                "λ_init / η": (preset.lam_init, preset.eta), "candidate rule": preset.candidate_rule,
                "ART epochs at most": preset.max_art_epochs
                if steps is None else f"{preset.max_art_epochs} = {preset.max_art_epochs * steps} steps",
            })
        if scheduled:
            out["gradual pruning"] = f"{preset.gmp_epochs} epochs" + (
                f" = {preset.gmp_epochs * steps} steps" if steps is not None else "")
        out.update({
            "precision": "fp32" if fit.amp is False else "automatic (AMP on CUDA)",
            "fine-tune": f"{preset.finetune_epochs} epochs, {_lr_text(ft, ft_steps)}",
            "sparsities": preset.sparsities,
        })
    return out


_NO_PROBES = "no method of this run trains block-benefit probes"
#: ART-preset methods that sparsify without ART's λ schedule: over ``gmp_epochs``, or at once
_GRADUAL_METHODS, _ONE_SHOT_METHODS = ("gmp", "movement"), ("oneshot", "layerwise")


def method_probe_options(preset: P3BPreset, method: str) -> dict[str, Any]:
    """The probe options a run of ``method`` uses besides its patch probe (:func:`method_patch_probe`): the
    preset's, overridden by those the method fixes itself.

    Example:
        >>> method_probe_options(P3B_PRESETS["tiny"].replace(probe_options={"probe_lr": 1e-3}), "p3b_fast_probes")
        {'probe_lr': 0.001}
    """
    own = {f.name for f in fields(BenefitConfig)} - {"patch_probe"}
    return {**preset.probe_options, **{k: v for k, v in P3B_METHODS[method].items() if k in own}}


def method_patch_probe(preset: P3BPreset, method: str) -> str | None:
    """The patch probe a run of ``method`` trains: the preset's, unless the method fixes its own
    (``p3b_fast_probes``: none, the class-token probes alone).

    Example:
        >>> method_patch_probe(P3B_PRESETS["tiny"], "p3b"), method_patch_probe(P3B_PRESETS["tiny"], "p3b_fast_probes")
        ('conv2', None)
    """
    return P3B_METHODS[method].get("patch_probe", preset.patch_probe)


def _uses_probes(preset: P3BPreset) -> bool:
    """Whether any method of ``preset`` allocates by block benefit (only those run the probes)."""
    return any(P3B_METHODS.get(m, {}).get("allocation") == "benefit" for m in preset.methods)


def _art_kinds(preset: ARTPreset) -> tuple[bool, bool]:
    """Whether ``preset``'s methods include one that runs ART's λ schedule (any method not known to do without it
    counts) and one that prunes gradually over ``gmp_epochs``."""
    regularized = any(m not in (*_GRADUAL_METHODS, *_ONE_SHOT_METHODS) for m in preset.methods)
    return regularized, any(m in _GRADUAL_METHODS for m in preset.methods)


def _lr_text(cfg: TrainConfig, per_epoch: int | None) -> str:
    """A learning-rate schedule in words, as :class:`TrainConfig` applies it (``per_epoch``: steps per epoch)."""
    if cfg.lr_schedule == "cosine":
        return f"cosine lr {cfg.lr:g} → {cfg.min_lr:g}"
    if cfg.lr_schedule == "step":
        return (f"lr {cfg.lr:g} × {cfg.lr_gamma:g} at epochs {list(cfg.lr_milestones)}"
                + (f" = steps {[m * per_epoch for m in cfg.lr_milestones]}" if per_epoch is not None else ""))
    return f"{cfg.lr_schedule} lr {cfg.lr:g}"


def format_recipe(recipe: dict[str, Any]) -> str:
    """``resolved_recipe`` as aligned ``key: value`` lines."""
    width = max(len(k) for k in recipe)
    return "\n".join(f"{k:<{width}}  {_fmt(v) if not isinstance(v, str) else v}" for k, v in recipe.items())

"""ART / HyperSparse experiments: HyperSparse vs L1 vs L2 regularisation against magnitude-pruning baselines.

Every method starts from the same dense warm-up (per seed) and ends with the same fixed-mask fine-tuning:

- ``hypersparse``, ``l1``, ``l2``: ART with that regularizer until the pruned copy matches the dense model;
- ``gmp``: gradual magnitude pruning (Zhu & Gupta's cubic schedule) over ``gmp_epochs``;
- ``movement``: movement pruning (score −Σ w·∂L/∂w) on the same cubic schedule and epochs as ``gmp``;
- ``oneshot``: global magnitude pruning of the warm model at once;
- ``layerwise``: every layer pruned to the same sparsity by magnitude.

Scales: ``tiny`` (CI: LeNet-300-100 on 8-px digits; ``tiny-cnn``: a narrow VGG-19), ``cpu`` (LeNet-300-100 on
20 000 Fashion-MNIST images), ``cpu-cnn`` (VGG-19-BN at width 0.25 on 10 000 Fashion-MNIST images),
``paper-{resnet32,vgg19}-{cifar10,cifar100,tinyimagenet}`` (the reference recipe, METHODS.md §2.3a: all 50 000
CIFAR training images at 32 px, TinyImageNet at 64 px, random crop after 4 pixels of padding + flip, SGD lr 0.1,
momentum 0.9, weight decay 1e-4 on every parameter, batch 64, fp32, one optimizer from the 60 warm-up epochs
through ART, λ_init 5e-6, η 1.05, the reference candidate rule, 160 fine-tuning epochs with lr × 0.1 at 80 and
120; sparsities 90 / 98 / 99.5 / 99.8 %; the last and the best test accuracy of fine-tuning are both reported).
``sparselab presets show NAME`` lists every value beside the reference.

Every method continues the warm-up's optimizer (its momentum included) while it sparsifies; fine-tuning starts a
fresh one.

Example:
    >>> art_preset("tiny").sparsities
    (0.9, 0.98, 0.995)
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import models
from ..configs import ARTConfig
from ..errors import ConfigError, check_finite, check_positive_int, check_ratio, check_seed, unknown_name
from ..history import History
from ..pruners import ART, FixedMask, GradualMagnitude
from ..pruners.masking import MovementPruning
from ..registry import Registry
from ..stats import warn_unmeasured
from ..structure.unstructured import apply_masks, check_masks, magnitude_masks, prunable_weights, sparsity
from ..training import OptimizerHandoff, evaluate, fit
from ..training.config import TrainConfig, checked_replace
from .presets import check_preset_lists, load_data, named_preset, require_test_split, run_lists
from .provenance import CODE_COLUMN, code_version

ART_METHODS = ("hypersparse", "l1", "l2", "gmp", "movement", "oneshot", "layerwise")
#: Ablations of HyperSparse's schedule λ_e = λ_init · η^e: λ growing twice as fast (η²: twice the growth per epoch
#: on a log scale) and half as fast (√η). Accepted wherever a method name is; not in the paper presets.
ART_ABLATIONS = {"hypersparse_fast": 2.0, "hypersparse_slow": 0.5}


@dataclass
class Sparsify:
    """What a sparsification method gets: the preset, the model to sparsify (a copy of the warm model), the target
    sparsity, the data, the seed, its History, whether to show progress, the callbacks carried from the warm-up
    (its optimizer), and the checkpoint folder and resume flag of its phase."""

    preset: "ARTPreset"
    model: nn.Module
    sparsity: float
    data: Any
    seed: int
    history: History
    progress: bool
    carried: list
    checkpoint_dir: str | None
    resume: bool

    def fit(self, pruner, epochs: int) -> None:
        """Train with ``pruner`` for ``epochs``. No final test evaluation: the model fit ends with need not be the
        one the method hands on (ART loads its candidate at the end); :func:`run_art` tests that one."""
        options = {**self.preset.fit, "final_test": False}
        fit(self.model, self.data, epochs=epochs, pruner=pruner, seed=self.seed, history=self.history,
            progress=self.progress, callbacks=self.carried, checkpoint_dir=self.checkpoint_dir, resume=self.resume,
            **options)


#: method name → function(Sparsify) → (masks, extra result values): how each method reaches its mask. A new
#: method is one function and one :func:`register_method` line.
METHOD_REGISTRY: Registry = Registry("method")
#: Decorator: register a sparsification method for :func:`run_art` and :func:`compare` under a name.
register_method = METHOD_REGISTRY.register


def _regularized(regularizer: str, eta_power: float = 1.0):
    def sparsify(job: Sparsify) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        p = job.preset
        art = ART(job.model, job.sparsity, regularizer=regularizer, lam_init=p.lam_init, eta=p.eta ** eta_power,
                  warmup_epochs=0, max_art_epochs=p.max_art_epochs, train_eval_limit=p.train_eval_limit,
                  candidate_rule=p.candidate_rule)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # reaching max_art_epochs is recorded in the History
            job.fit(art, art.max_epochs)
        return art.masks(), {
            "art_epochs": float(job.history.metrics.query("name == 'art_epoch'").value.max() + 1),
            "art_converged": float("exceeds the dense" in art.stop_reason)}
    return sparsify


def _scheduled(cls):
    def sparsify(job: Sparsify) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        from .recipes import steps_per_epoch

        p = job.preset
        # four mask updates per epoch, counted in the optimizer steps fit takes (max_steps_per_epoch and
        # accumulate_steps included)
        pruner = cls(job.model, job.sparsity, start_epoch=0, end_epoch=p.gmp_epochs,
                     every=max(1, steps_per_epoch(len(job.data.train), p.fit) // 4))
        job.fit(pruner, p.gmp_epochs)
        return pruner.masks, {}
    return sparsify


def _one_shot(scope: str):
    def sparsify(job: Sparsify) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return magnitude_masks(job.model, job.sparsity, scope=scope), {}
    return sparsify


for _name in ("hypersparse", "l1", "l2"):
    register_method(_name)(_regularized(_name))
for _name, _power in ART_ABLATIONS.items():
    register_method(_name)(_regularized("hypersparse", _power))
register_method("gmp")(_scheduled(GradualMagnitude))
register_method("movement")(_scheduled(MovementPruning))  # same cubic schedule and epochs as gmp
register_method("oneshot")(_one_shot("global"))
register_method("layerwise")(_one_shot("layer"))


@dataclass(frozen=True)
class ARTPreset:
    """Everything one ART comparison needs; ``replace(**changes)`` makes variants."""

    name: str
    model: str
    data: str
    image_size: int | None = None
    model_options: dict = field(default_factory=dict)
    data_options: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    warmup_epochs: int = 60
    lam_init: float = 5e-6
    eta: float = 1.05
    max_art_epochs: int = 200
    candidate_rule: str = "reference"
    train_eval_limit: int | None = None
    gmp_epochs: int = 30
    finetune_epochs: int = 160
    finetune: dict = field(default_factory=dict)
    methods: tuple[str, ...] = ART_METHODS
    sparsities: tuple[float, ...] = (0.9, 0.98, 0.995)
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        check_positive_int("warmup_epochs", self.warmup_epochs, allow_zero=True)
        for name in ("max_art_epochs", "gmp_epochs", "finetune_epochs"):  # ART's result is the fine-tuned model
            check_positive_int(name, getattr(self, name))
        # a misspelt or out-of-range training option fails where the preset is made, as does an lr milestone past
        # the longest phase the options train
        longest = {"fit": max(self.warmup_epochs, self.max_art_epochs, self.gmp_epochs),
                   "finetune": self.finetune_epochs}
        for part, epochs in longest.items():
            checked_replace(TrainConfig(), f"{part} option of preset {self.name!r}",
                            **{"epochs": epochs, **getattr(self, part)}).check_schedule_length()
        check_finite("lam_init", self.lam_init, low=0, low_inclusive=False)
        check_finite("eta", self.eta, low=1)
        # ART's own options, checked here rather than when ART is built after the warm-up
        ARTConfig(candidate_rule=self.candidate_rule, train_eval_limit=self.train_eval_limit)
        check_preset_lists(self, seeds=self.seeds, methods=self.methods, sparsities=self.sparsities)
        for s in self.sparsities:
            check_ratio("sparsity", s)
        for m in self.methods:
            if m not in METHOD_REGISTRY:
                raise unknown_name("method", m, METHOD_REGISTRY)

    def replace(self, **changes: Any) -> "ARTPreset":
        return checked_replace(self, "preset field", **changes)

    def overview(self) -> pd.DataFrame:
        """The settings a reader needs first (model, data, warm-up, λ schedule, epoch limits, methods,
        sparsities, seeds), one row each in a ``setting`` column; the full recipe against the reference is
        :func:`sparselab.experiments.recipes.render_table`.

        Example:
            >>> art_preset("tiny").overview().loc["λ_init, η", "setting"]
            (0.001, 1.6)
        """
        return pd.Series({"model": self.model, "data": self.data, "warm-up epochs": self.warmup_epochs,
                          "λ_init, η": (self.lam_init, self.eta), "max ART epochs": self.max_art_epochs,
                          "fine-tuning epochs": self.finetune_epochs, "methods": self.methods,
                          "sparsities": self.sparsities, "seeds": self.seeds}, dtype=object).to_frame("setting")


def _paper(name: str, model: str, data: str) -> ARTPreset:
    sgd = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, weight_decay_on="all", batch_size=64,
               amp=False, num_workers=4)
    tiny_imagenet = data == "tinyimagenet"
    return ARTPreset(name=name, model=model, data=data, image_size=64 if tiny_imagenet else 32,
                     data_options={"pad": 4, "augment": "crop_flip",
                                   **({} if tiny_imagenet else {"val_fraction": 0.0})},
                     fit=sgd, warmup_epochs=60, lam_init=5e-6, eta=1.05, max_art_epochs=300, gmp_epochs=60,
                     candidate_rule="reference", finetune_epochs=160,
                     finetune={**sgd, "lr_schedule": "step", "lr_milestones": (80, 120)},
                     sparsities=(0.9, 0.98, 0.995, 0.998))


ART_PRESETS: dict[str, ARTPreset] = {
    "tiny": ARTPreset(
        name="tiny", model="lenet_300_100", data="digits", image_size=8,
        fit=dict(optimizer="adam", lr=2e-3, weight_decay=0.0, batch_size=64), warmup_epochs=1, lam_init=1e-3,
        eta=1.6, max_art_epochs=4, gmp_epochs=2, finetune_epochs=1,
        finetune=dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64)),
    "cpu": ARTPreset(
        name="cpu", model="lenet_300_100", data="fashion_mnist", image_size=28,
        data_options={"limit": 20_000, "augment": "none"},
        fit=dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128), warmup_epochs=4, lam_init=5e-5,
        eta=1.35, max_art_epochs=16, train_eval_limit=10_000, gmp_epochs=8, finetune_epochs=4,
        finetune=dict(optimizer="adam", lr=5e-4, weight_decay=0.0, batch_size=128, lr_schedule="cosine"),
        seeds=(0, 1)),
    "cpu-cnn": ARTPreset(
        name="cpu-cnn", model="vgg19_bn", data="fashion_mnist", image_size=28, model_options={"width": 0.25},
        data_options={"limit": 10_000, "augment": "none"},
        fit=dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128), warmup_epochs=3, lam_init=5e-5,
        eta=1.4, max_art_epochs=10, train_eval_limit=5_000, gmp_epochs=5, finetune_epochs=3,
        finetune=dict(optimizer="adam", lr=5e-4, weight_decay=0.0, batch_size=128, lr_schedule="cosine"),
        methods=("hypersparse", "l1", "l2"), sparsities=(0.98,)),
}
# the small ViT of the P3B notebooks, sparsified without structure (notebook 04's ViT weight patterns)
ART_PRESETS["cpu-vit"] = ARTPreset(
    name="cpu-vit", model="vit_nano_patch4_28", data="digits", image_size=28,
    fit=dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64), warmup_epochs=6, lam_init=5e-5, eta=1.4,
    max_art_epochs=10, gmp_epochs=6, finetune_epochs=3,
    finetune=dict(optimizer="adam", lr=5e-4, weight_decay=0.0, batch_size=64, lr_schedule="cosine"),
    methods=("hypersparse", "gmp"), sparsities=(0.9, 0.98))
ART_PRESETS["tiny-vit"] = ART_PRESETS["cpu-vit"].replace(
    name="tiny-vit", data_options={"limit": 320}, warmup_epochs=1, max_art_epochs=2, gmp_epochs=1, finetune_epochs=1,
    fit=dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64, max_steps_per_epoch=3),
    finetune=dict(optimizer="adam", lr=5e-4, weight_decay=0.0, batch_size=64, max_steps_per_epoch=3))
ART_PRESETS["tiny-cnn"] = ART_PRESETS["tiny"].replace(
    name="tiny-cnn", model="vgg19_bn", model_options={"width": 0.125}, methods=("hypersparse",), sparsities=(0.9,))
for _m, _tag in (("resnet32_wide", "resnet32"), ("vgg19_bn", "vgg19")):
    for _d in ("cifar10", "cifar100", "tinyimagenet"):
        ART_PRESETS[f"paper-{_tag}-{_d}"] = _paper(f"paper-{_tag}-{_d}", _m, _d)


# the statistics of the CPU comparison: 5 seeds, the λ-schedule ablations beside the six methods (minutes)
ART_PRESETS["cpu-full"] = ART_PRESETS["cpu"].replace(name="cpu-full", seeds=(0, 1, 2, 3, 4),
                                                    methods=(*ART_METHODS, *ART_ABLATIONS))


def art_preset(name: str = "cpu", **changes: Any) -> ARTPreset:
    """A named preset (``tiny``, ``cpu``, ``cpu-cnn``, ``paper-resnet32-cifar10``, ...), optionally changed."""
    return named_preset("ART preset", ART_PRESETS, name, **changes)


@dataclass
class ARTRun:
    """One method at one sparsity and seed: the sparsification History (ART/GMP), the fine-tuning History, the
    final model, its mask and its numbers."""

    method: str
    sparsity: float
    seed: int
    history: History
    finetune_history: History
    model: nn.Module
    masks: dict[str, torch.Tensor]
    result: dict[str, float]


@dataclass
class WarmStart:
    """The dense warm-up every method starts from: the model, its History and its optimizer (handed on)."""

    model: nn.Module
    history: History
    optimizer: OptimizerHandoff | None  # None: no warm-up ran, the methods start with a fresh optimizer

    def __iter__(self):  # ``model, history = warm_start(...)``
        return iter((self.model, self.history))


def warm_start(preset: ARTPreset, seed: int, data, progress: bool = True, checkpoint_dir: str | None = None,
               resume: bool = False) -> WarmStart:
    """The dense warm-up every method starts from (its optimizer continues into each method's sparsification).
    ``warmup_epochs=0`` starts from the freshly initialised model."""
    require_test_split(data)
    torch.manual_seed(seed)
    model = models.create(preset.model, num_classes=data.num_classes, in_chans=data.in_chans,
                          **({"image_size": data.image_size} if preset.model == "lenet_300_100" else {}),
                          **preset.model_options)
    history = History(meta={"run": f"warmup-s{seed}", "method": "dense", "seed": seed, "preset": preset.name})
    if preset.warmup_epochs == 0:
        history.log_metrics(evaluate(model, data.test), step=0, epoch=0, split="test")
        return WarmStart(model, history, None)
    handoff = OptimizerHandoff()
    fit(model, data, epochs=preset.warmup_epochs, seed=seed, history=history, progress=progress, final_test=True,
        callbacks=[handoff], checkpoint_dir=checkpoint_dir, resume=resume, **preset.fit)
    return WarmStart(model, history, handoff)


def run_art(preset: ARTPreset, method: str = "hypersparse", sparsity_: float = 0.9, seed: int = 0, data=None,
            warm: WarmStart | nn.Module | None = None, progress: bool = True, checkpoint_dir: str | None = None,
            resume: bool = False) -> ARTRun:
    """Sparsify a warm model with ``method`` to ``sparsity_`` and fine-tune it with the mask fixed.

    ``warm``: a :func:`warm_start` of the same seed (its optimizer continues, as in the reference) or a bare model
    (a fresh optimizer); None runs the warm-up first. ``checkpoint_dir``: each phase (``warmup/``, ``sparsify/``,
    ``finetune/``) checkpoints there every epoch, and ``resume=True`` continues an interrupted run exactly.

    Example:
        >>> preset = art_preset("tiny")
        >>> warm = warm_start(preset, 0, load_data(preset), progress=False)  # doctest: +SKIP
        >>> run_art(preset, "oneshot", 0.9, seed=0, warm=warm, progress=False).result["acc"]  # doctest: +SKIP
    """
    METHOD_REGISTRY.lookup(method)
    check_ratio("sparsity", sparsity_)
    check_seed("seed", seed)
    if warm is not None and not isinstance(warm, (WarmStart, nn.Module)):
        raise ConfigError(f"warm must be a WarmStart (from warm_start), a model (nn.Module) or None, got "
                          f"{type(warm).__name__}")
    warm_seed = warm.history.meta.get("seed") if isinstance(warm, WarmStart) else None
    if warm_seed is not None and warm_seed != seed:  # the run would be recorded as seed ``seed`` but start elsewhere
        raise ConfigError(f"warm is the warm-up of seed {warm_seed}, but this run is seed {seed}: pass "
                          f"warm_start(preset, {seed}, data) (or warm=None to run it), or seed={warm_seed}")
    data = data if data is not None else load_data(preset)
    require_test_split(data)
    phase = (lambda name: str(Path(checkpoint_dir) / name)) if checkpoint_dir is not None else (lambda name: None)
    if warm is None:
        warm = warm_start(preset, seed, data, progress, checkpoint_dir=phase("warmup"), resume=resume)
    carried = [warm.optimizer.resume()] if isinstance(warm, WarmStart) and warm.optimizer is not None else []
    model = copy.deepcopy(warm.model if isinstance(warm, WarmStart) else warm)
    name = f"{method}-{sparsity_:g}-s{seed}"
    history = History(meta={"run": name, "method": method, "sparsity": sparsity_, "seed": seed,
                            "preset": preset.name})
    job = Sparsify(preset, model, sparsity_, data, seed, history, progress, carried, phase("sparsify"), resume)
    masks, result = METHOD_REGISTRY[method](job)
    masks = check_masks(model, masks, f"the masks method {method!r} returned", complete=True)
    if abs(sparsity(masks) - sparsity_) > 0.05:  # e.g. True taken to mean "pruned": the run would still go on
        warnings.warn(f"method {method!r} returned masks that prune {sparsity(masks):.1%} of the weights where "
                      f"{sparsity_:.1%} was asked (a mask is True where a weight is kept)", stacklevel=2)
    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks)
    test = evaluate(pruned, data.test)
    result["acc_pruned"] = test["acc"]
    _log_final_test(history, test)
    ft_history = History(meta={"run": name + "-finetune"})
    fit(model, data, epochs=preset.finetune_epochs, pruner=FixedMask(masks), seed=seed, history=ft_history,
        progress=progress, checkpoint_dir=phase("finetune"), resume=resume, **preset.finetune)
    nonzero = {k: (w.detach() != 0).cpu() for k, w in prunable_weights(model).items()}
    chance = majority_share(data.test)
    if chance is not None:  # predicting the most frequent class: a pruned network that lost its input path
        result["chance_acc"] = chance
    # the best over fine-tuning exists only where fit evaluated the test split after every epoch (no validation
    # split); with one, the test split is evaluated once, at the end, and a "best" would just repeat acc
    best = float(ft_history.series("acc", "test").max()) if tests_every_epoch(data, preset.finetune) else math.nan
    result.update({"acc": ft_history.last("acc", "test"), "acc_best": best,
                   "mask_sparsity": sparsity(masks), "nonzero_sparsity": sparsity(nonzero)})
    return ARTRun(method, sparsity_, seed, history, ft_history, model, masks, result)


def _log_final_test(history: History, test: dict[str, float]) -> None:
    """Log the test metrics of the pruned model that fine-tuning starts from as the sparsification History's last
    test row, at its last step (the model a method's training ended with may differ: ART returns a candidate from
    earlier epochs)."""
    rows = history.metrics
    step, epoch = (int(rows.step.max()), int(rows.epoch.max())) if len(rows) else (0, 0)
    history.log_metrics(test, step=step, epoch=epoch, split="test")
    history.meta["final_test"] = "the pruned model fine-tuning starts from (acc_pruned)"


def compare(preset: ARTPreset, methods: Sequence[str] | None = None, sparsities: Sequence[float] | None = None,
            seeds: Sequence[int] | None = None, progress: bool = True, record: str | Path | None = None
            ) -> tuple[pd.DataFrame, list[ARTRun]]:
    """Every method × sparsity × seed from one dense warm-up per seed; one table row per run, plus the runs.

    ``record``: a CSV file each finished run's row is written to at once (atomically, as in
    :func:`sparselab.experiments.p3b.compare`); recorded runs of this preset are not run again, and a seed whose
    runs are all recorded needs no warm-up.

    Example:
        >>> table, runs = compare(art_preset("tiny"), methods=["hypersparse", "gmp"])  # doctest: +SKIP
    """
    from .p3b import _read_record, _write_record

    lists = run_lists(preset, seeds=seeds, methods=methods, sparsities=sparsities)
    methods, sparsities, seeds = lists["methods"], lists["sparsities"], lists["seeds"]
    for m in methods:
        METHOD_REGISTRY.lookup(m)
    recorded = (_read_record(record, preset, setting="sparsity") if record is not None else pd.DataFrame())
    done = {(row.method, float(row.sparsity), int(row.seed)): row._asdict() for row in recorded.itertuples()}
    wanted = {seed: [("dense", 0.0)] + [(m, s) for s in sparsities for m in methods] for seed in seeds}
    data = None
    runs: list[ARTRun] = []
    rows = []
    bar = tqdm(total=sum(map(len, wanted.values())), desc=f"ART {preset.name}", disable=not progress)

    def keep(row: dict) -> None:
        if record is not None:  # a row for a record: it names the code that ran it
            row = {**row, CODE_COLUMN: code_version()}
        rows.append(row)
        if record is not None:
            nonlocal recorded
            recorded = pd.concat([recorded, pd.DataFrame([{"preset": preset.name, **row}])], ignore_index=True)
            _write_record(record, recorded, preset)

    for seed, jobs in wanted.items():
        if all((m, float(s), seed) in done for m, s in jobs):
            rows += [{k: v for k, v in done[(m, float(s), seed)].items() if k not in ("Index", "preset")}
                     for m, s in jobs]
            bar.update(len(jobs))
            continue
        data = data if data is not None else load_data(preset)
        warm = warm_start(preset, seed, data, progress=False)
        _check_same_warm_up(done.get(("dense", 0.0, seed)), warm, seed)
        for m, s in jobs:
            if (m, float(s), seed) in done:
                rows.append({k: v for k, v in done[(m, float(s), seed)].items() if k not in ("Index", "preset")})
            elif m == "dense":
                acc = warm.history.last("acc", "test")
                # the best test accuracy over the warm-up's epochs, as acc_best is over a sparse run's fine-tune
                best = (float(warm.history.series("acc", "test").max()) if tests_every_epoch(data, preset.fit)
                        else math.nan)
                keep({"method": "dense", "sparsity": 0.0, "seed": seed, "acc": acc, "acc_best": best,
                      "acc_pruned": acc, "nonzero_sparsity": 0.0})
            else:
                run = run_art(preset, m, s, seed, data=data, warm=warm, progress=False)
                runs.append(run)
                # the target sparsity names the row (the mask's own is mask_sparsity): a method whose mask misses the
                # target by a little is still compared with the others at that target
                keep({**run.result, "method": m, "sparsity": s, "seed": seed})
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows), runs


def _check_same_warm_up(dense_row: dict | None, warm: WarmStart, seed: int) -> None:
    """Refuse to continue a seed whose recorded runs started from another warm-up than the one just run (other
    threads, library versions or code): each method of a seed is paired with the others as starting from the same
    dense model, which the recorded dense row's test accuracy stands for."""
    if dense_row is None:
        return
    recorded, now = float(dense_row["acc"]), float(warm.history.last("acc", "test"))
    if (math.isnan(recorded) and math.isnan(now)) or math.isclose(recorded, now, rel_tol=1e-12, abs_tol=1e-12):
        return
    raise ConfigError(f"the warm-up of seed {seed} reaches test accuracy {now:.6f}, but the record's dense row of "
                      f"that seed holds {recorded:.6f}: the runs recorded for seed {seed} started from another "
                      f"warm-up (other threads, library versions or code), and new runs would be paired with them as "
                      f"if from the same one; continue the record where it was made, or start it again")


def majority_share(dataset) -> float | None:
    """The accuracy of always predicting the most frequent class of ``dataset`` (None when its labels are not held
    in memory).

    Example:
        >>> from sparselab.data import TensorImages
        >>> majority_share(TensorImages(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 1])))
        0.75
    """
    labels = getattr(dataset, "labels", None)
    if not isinstance(labels, torch.Tensor) or not len(labels):
        return None
    return float(torch.bincount(labels).max()) / len(labels)


def _has_best(table: pd.DataFrame) -> bool:
    """Whether the table holds a best test accuracy over fine-tuning for some run (see :func:`tests_every_epoch`)."""
    return "acc_best" in table and bool(pd.to_numeric(table.acc_best, errors="coerce").notna().any())


def tests_every_epoch(data, fit_options: dict) -> bool:
    """Whether :func:`sparselab.fit` with ``fit_options`` evaluates the test split of ``data`` after every epoch
    (there is no validation split, or ``eval_split="test"``), so that a best test accuracy over the epochs exists.

    Example:
        >>> from types import SimpleNamespace
        >>> tests_every_epoch(SimpleNamespace(val=None), {}), tests_every_epoch(SimpleNamespace(val=[1]), {})
        (True, False)
    """
    return data.val is None or fit_options.get("eval_split", "val") == "test"


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (%) mean ± standard deviation over seeds per sparsity and method, as in the paper's table.
    ``runs at chance`` (where the table records each run's chance level) counts runs no better than always
    predicting the most frequent class: networks that lost their input path, whose accuracy says nothing about
    the method."""
    if table.empty:
        raise ConfigError("no runs to summarise")
    warn_unmeasured(table, "summarize")
    g = table.groupby(["sparsity", "method"], sort=False)
    out = pd.DataFrame({"acc %": g.acc.mean() * 100, "± (std)": g.acc.std(ddof=1) * 100,
                        **({"best acc %": g.acc_best.mean() * 100} if _has_best(table) else {}),
                        "acc before fine-tune %": g.acc_pruned.mean() * 100,
                        "achieved sparsity": g.nonzero_sparsity.mean(), "seeds": g.acc.count()})
    if "art_epochs" in table:
        out["ART epochs"] = g.art_epochs.mean()
    if "chance_acc" in table:
        out["runs at chance"] = at_chance(table).groupby([table.sparsity, table.method], sort=False).sum()
    return out.round(3)


#: a run counts as at chance when its accuracy exceeds its chance level by at most this (accuracy, half a point)
CHANCE_MARGIN = 0.005


def at_chance(table: pd.DataFrame) -> pd.Series:
    """Per run (row): whether its test accuracy is no better than always predicting the most frequent class
    (``chance_acc``, recorded by :func:`run_art`) plus :data:`CHANCE_MARGIN`: a network that lost its input path,
    whose accuracy says nothing about its method. False where the table records no chance level.

    Example:
        >>> t = pd.DataFrame({"acc": [0.1, 0.87, 0.5], "chance_acc": [0.1, 0.1, float("nan")]})
        >>> at_chance(t).tolist()
        [True, False, False]
    """
    if "chance_acc" not in table:
        return pd.Series(False, index=table.index)
    return (table.acc <= table.chance_acc + CHANCE_MARGIN) & table.chance_acc.notna()


def accuracy_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Methods × sparsities of mean test accuracy (%), the layout of the paper's result table."""
    return (table.groupby(["method", "sparsity"]).acc.mean().mul(100).unstack("sparsity").round(2))


def save_results(out_dir, table: pd.DataFrame, runs: Sequence[ARTRun]) -> dict[str, str]:
    """Write the results table (CSV) and every run's two Histories, sparsification and fine-tuning, merged into one
    (JSON Lines; :func:`~sparselab.experiments.outputs.save_run_files`) under ``out_dir``; returns the paths
    written. Runs are named ``{preset}/{run}`` and ``{preset}/{run}-finetune``, so that runs of several presets
    (the same method, sparsity and seed on two models) stay apart.

    Example:
        >>> table, runs = compare(art_preset("tiny"), seeds=[0])  # doctest: +SKIP
        >>> save_results("runs/art", table, runs)  # doctest: +SKIP
        {'table': 'runs/art/results.csv', 'histories': 'runs/art/histories.jsonl.gz'}
    """
    from .outputs import save_run_files

    histories, names = [], []
    for r in runs:
        name = f"{r.history.meta.get('preset', '')}/{r.history.meta.get('run', f'{r.method}-{r.sparsity:g}-s{r.seed}')}"
        histories += [r.history, r.finetune_history]
        names += [name, f"{name}-finetune"]
    return save_run_files(out_dir, table, histories, runs=names)

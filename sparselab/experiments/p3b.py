"""P3B transfer experiments: a source-pretrained ViT pruned while fine-tuned on a target domain, against baselines.

Scales (``p3b_preset(name)``):

- ``tiny`` — CI: ``vit_nano_patch4_28`` (quick Fashion-MNIST pretraining), 320 digits, 3 epochs; seconds per run.
- ``cpu`` — default for the notebook, the setting the selection rule chose (``sparselab.experiments.selection``):
  ``vit_mini_patch7_28`` pretrained on Fashion-MNIST classes 0-4 (``split04`` recipe), fine-tuned and pruned on
  1 000 images of classes 5-9 for 8 epochs, then the compact model fine-tuned 2 more; 90 % pruned, 3 seeds;
  minutes on 2 cores. ``cpu-full``: the same setting at 50 / 75 / 90 % with 5 seeds and the ablations (about an
  hour); ``cpu-split-1k`` is the candidate under its selection name.
- ``cpu-digits`` — the same model pretrained on all of Fashion-MNIST, fine-tuned on scikit-learn digits (a larger
  domain gap: clothes → handwritten digits); ``cpu-split`` — the class split with 2 500 target images.
- ``paper-deit-{s,t}-{cifar100,ifood,inat19}`` — the reference recipe (METHODS.md §1.6a) for GPUs:
  ImageNet-pretrained DeiT from timm's hub at 224 px, effective batch 512 (256 x 2 accumulation steps), AdamW lr
  5e-4, weight decay 0.05, constant lr, repeated augmentation x3, RandAugment, random erasing 0.25 (pixel), mixup
  0.8 / cutmix 1.0 / label smoothing 0.1, drop-path 0 during pruning, probes with their own lr 5e-4 and weight
  decay 0.05, schedule 10 / 25 / 50 epochs with 3 mask updates per epoch, then 300 epochs of compact fine-tuning
  (cosine to 1e-5, no warm-up); ``...-ft50`` presets fine-tune for 50 epochs instead. CIFAR-100 trains on all
  50 000 images; iFood and iNat19 test on their ``val/`` folder. ``sparselab presets show NAME`` lists every value
  beside the reference.

Example:
    >>> preset = p3b_preset("tiny")
    >>> preset.model, preset.schedule.finalize
    ('vit_nano_patch4_28', 3)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import models
from ..configs import BenefitConfig, from_options
from ..errors import ConfigError, check_positive_int, check_ratio, unknown_name
from ..history import History
from ..latency import latency_ms
from ..probes import FAST_PROBES
from ..pruners import P3B, P3BSchedule
from ..stats import warn_unmeasured
from ..training import fit
from ..training.config import TrainConfig, checked_replace
from .presets import check_preset_lists, load_data, named_preset, preset_settings, require_test_split, run_lists
from .provenance import CODE_COLUMN, code_version, warn_other_code

METHODS: dict[str, dict[str, Any]] = {
    "p3b": dict(allocation="benefit"),
    # ablations of P3B's claims: no reactivation of pruned elements, no late re-allocation, cheap probes
    "p3b_no_reactivation": dict(allocation="benefit", reactivation=False),
    "p3b_frozen_benefit": dict(allocation="benefit", freeze_allocation_after=1),
    "p3b_fast_probes": dict(allocation="benefit", **FAST_PROBES),
    # P3B's allocation with a Wanda-style selection inside blocks (|W|·‖X‖ instead of Taylor)
    "p3b_wanda": dict(allocation="benefit", criterion="wanda"),
    "uniform": dict(allocation="uniform"),
    "global_taylor": dict(allocation="global"),
    "l1": dict(allocation="uniform", criterion="l1"),
    "fixed": dict(allocation="fixed"),  # keep_ratios: attention blocks 1.0, MLP blocks 0.5, rescaled to the budget
    "dense": {},
}
for _name, _options in METHODS.items():  # a misspelt P3B argument fails here, not when the method first runs
    for _key in _options:
        if _key not in inspect.signature(P3B).parameters:
            raise unknown_name(f"P3B argument of method {_name!r}", _key, inspect.signature(P3B).parameters)


#: training options a preset's ``fit`` and ``finetune`` may not set: every run sets them itself
RUN_SET_OPTIONS = ("epochs", "seed")


@dataclass(frozen=True)
class P3BPreset:
    """Everything one P3B transfer experiment needs; ``replace(**changes)`` makes variants."""

    name: str
    model: str
    pretrained: bool | str
    data: str
    image_size: int | None = None
    recipe: str | None = None
    data_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    schedule: P3BSchedule = P3BSchedule()
    fit: dict = field(default_factory=dict)
    patch_probe: str | None = "conv2"
    probe_options: dict = field(default_factory=dict)  # P3B's probe arguments for p3b (probe_every, probe_lr, ...)
    finetune_epochs: int = 0
    finetune: dict = field(default_factory=dict)
    methods: tuple[str, ...] = ("p3b", "uniform", "global_taylor", "l1", "fixed", "p3b_wanda")
    prune_ratios: tuple[float, ...] = (0.5, 0.75)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: optimizer steps that fit the block-benefit probes on the frozen source model before a benefit trace
    #: (:func:`benefit_trace`), so that ΔΨ can be measured before fine-tuning
    calibration_steps: int = 60

    def __post_init__(self) -> None:
        check_positive_int("finetune_epochs", self.finetune_epochs, allow_zero=True)  # 0: no compact fine-tuning
        check_positive_int("calibration_steps", self.calibration_steps)
        # a misspelt or out-of-range training option fails where the preset is made, as does an lr milestone past
        # the run's epochs
        epochs = {"fit": self.schedule.finalize, "finetune": max(1, self.finetune_epochs)}
        for part in ("fit", "finetune"):
            checked_replace(TrainConfig(), f"{part} option of preset {self.name!r}",
                            **{**getattr(self, part), "epochs": epochs[part]}).check_schedule_length()
            # the runs set these themselves (epochs from the schedule or finetune_epochs, seed from each run)
            taken = [k for k in RUN_SET_OPTIONS if k in getattr(self, part)]
            if taken:
                raise ConfigError(f"{part} options of preset {self.name!r} set {', '.join(taken)}, which each run "
                                  f"sets itself (epochs: schedule.finalize for the pruning run, finetune_epochs for "
                                  f"the compact fine-tuning; seed: the preset's seeds); leave them out")
        # a misspelt or out-of-range probe option, too
        from_options(BenefitConfig, {**self.probe_options, "patch_probe": self.patch_probe},
                     f"probe option of preset {self.name!r}")
        check_preset_lists(self, seeds=self.seeds, methods=self.methods, prune_ratios=self.prune_ratios)
        for m in self.methods:
            if m not in METHODS:
                raise unknown_name("method", m, METHODS)
        if "dense" in self.methods:
            raise ConfigError(f"preset {self.name!r} lists 'dense' among its methods; dense fine-tuning is the "
                              f"reference every comparison runs once per seed (compare's include_dense), not a method "
                              f"of a prune ratio")
        for r in self.prune_ratios:
            check_ratio("prune_ratio", r)

    def replace(self, **changes: Any) -> "P3BPreset":
        return checked_replace(self, "preset field", **changes)

    def overview(self) -> pd.DataFrame:
        """The settings a reader needs first (model, source, target, schedule, methods, ratios, seeds), one row
        each in a ``setting`` column; the full recipe against the reference is
        :func:`sparselab.experiments.recipes.render_table`.

        Example:
            >>> p3b_preset("tiny").overview().loc["seeds", "setting"]
            (0,)
        """
        s = self.schedule
        return pd.Series({"model": self.model, "source": self.pretrained, "target": self.data,
                          "schedule (warm-up / sparsify / finalize epochs)": (s.warmup, s.sparsify, s.finalize),
                          "compact fine-tuning epochs": self.finetune_epochs, "patch probe": self.patch_probe,
                          "methods": self.methods, "prune ratios": self.prune_ratios, "seeds": self.seeds},
                         dtype=object).to_frame("setting")


#: The DeiT training recipe shared by the pruning run and the compact fine-tuning (METHODS.md §1.6a): micro-batch
#: 256 x 2 accumulation steps = 512 per optimizer step, lr 5e-4 x 512/512.
PAPER_BATCH, PAPER_ACCUMULATE = 256, 2
_DEIT_RECIPE = dict(optimizer="adamw", lr=5e-4 * PAPER_BATCH * PAPER_ACCUMULATE / 512, weight_decay=0.05,
                    batch_size=PAPER_BATCH, accumulate_steps=PAPER_ACCUMULATE, repeated_aug=3, mixup=0.8,
                    cutmix=1.0, label_smoothing=0.1, num_workers=8)


def _paper(name: str, model: str, data: str, finetune_epochs: int = 300) -> P3BPreset:
    return P3BPreset(
        name=name, model=model, pretrained=True, data=data, image_size=224,
        data_options={"val_fraction": 0.0} if data == "cifar100" else {},
        model_options={"drop_path_rate": 0.0},
        schedule=P3BSchedule(warmup=10, sparsify=25, finalize=50, updates_per_epoch=3, tau=0.1, tau_min=0.0),
        fit=dict(_DEIT_RECIPE, lr_schedule="constant"),
        patch_probe="conv2", probe_options={"probe_lr": 5e-4, "probe_weight_decay": 0.05},
        finetune_epochs=finetune_epochs,
        finetune=dict(_DEIT_RECIPE, lr_schedule="cosine", min_lr=1e-5, warmup_steps=0),
        seeds=(0,),
    )


PRESETS: dict[str, P3BPreset] = {
    "tiny": P3BPreset(
        name="tiny", model="vit_nano_patch4_28", pretrained="fashion_mnist", recipe="quick", data="digits",
        image_size=28, data_options={"limit": 320},
        schedule=P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2),
        fit=dict(lr=1e-3, batch_size=64, weight_decay=0.05, max_steps_per_epoch=4), patch_probe="conv2",
        finetune_epochs=1, finetune=dict(lr=5e-4, batch_size=64, max_steps_per_epoch=4), seeds=(0,),
        calibration_steps=10,
    ),
    "cpu-digits": P3BPreset(
        name="cpu-digits", model="vit_mini_patch7_28", pretrained="fashion_mnist", recipe="default", data="digits",
        image_size=28, schedule=P3BSchedule(warmup=2, sparsify=5, finalize=8, updates_per_epoch=3),
        fit=dict(lr=5e-4, batch_size=64, weight_decay=0.05), patch_probe="conv2",
        finetune_epochs=2, finetune=dict(lr=2e-4, batch_size=64, lr_schedule="cosine"), seeds=(0, 1),
    ),
}
# a class-split transfer with a larger test set (5 000 images): the source model saw Fashion-MNIST classes 0-4, the
# target is classes 5-9 (2 500 training images); a candidate of the setting-selection rule
PRESETS["cpu-split"] = PRESETS["cpu-digits"].replace(
    name="cpu-split", recipe="split04", data="fashion_mnist",
    data_options={"classes": [5, 6, 7, 8, 9], "limit": 2500, "augment": "flip"})
PRESETS["cpu-split-1k"] = PRESETS["cpu-split"].replace(  # the next candidate: less target data to recover with
    name="cpu-split-1k", data_options={"classes": [5, 6, 7, 8, 9], "limit": 1000, "augment": "flip"})
# cpu-split-1k is the first candidate that qualifies under the selection rule (docs/results/setting_selection.csv),
# so it is the CPU setting: `cpu` shows a subset in minutes, `cpu-full` runs the statistics (hours)
PRESETS["cpu"] = PRESETS["cpu-split-1k"].replace(name="cpu", prune_ratios=(0.9,), seeds=(0, 1, 2))
PRESETS["cpu-full"] = PRESETS["cpu-split-1k"].replace(
    name="cpu-full", prune_ratios=(0.5, 0.75, 0.9), seeds=(0, 1, 2, 3, 4),
    methods=("p3b", "uniform", "global_taylor", "l1", "fixed", "p3b_no_reactivation", "p3b_frozen_benefit",
             "p3b_fast_probes", "p3b_wanda"))
for _model, _tag in (("deit_small_patch16_224", "s"), ("deit_tiny_patch16_224", "t")):
    for _data in ("cifar100", "ifood", "inat19"):
        PRESETS[f"paper-deit-{_tag}-{_data}"] = _paper(f"paper-deit-{_tag}-{_data}", _model, _data)
        PRESETS[f"paper-deit-{_tag}-{_data}-ft50"] = _paper(f"paper-deit-{_tag}-{_data}-ft50", _model, _data, 50)


def p3b_preset(name: str = "cpu", **changes: Any) -> P3BPreset:
    """A named preset (``tiny``, ``cpu``, ``paper-deit-s-ifood``, ...), optionally with fields changed."""
    return named_preset("P3B preset", PRESETS, name, **changes)


@dataclass
class P3BRun:
    """One method at one prune ratio and seed: its History, the pruner, the compact model and its numbers."""

    method: str
    prune_ratio: float
    seed: int
    history: History
    finetune_history: History | None
    model: nn.Module
    pruner: P3B | None
    result: dict[str, float]


def source_model(preset: P3BPreset, data, seed: int | None = None) -> nn.Module:
    """The preset's source model (pretrained as the preset says) with a head for ``data``'s classes; with ``seed``,
    torch's generator is seeded first (the new head's initial weights then depend on the seed only)."""
    if seed is not None:
        torch.manual_seed(seed)
    return models.create(preset.model, num_classes=data.num_classes, in_chans=data.in_chans,
                         pretrained=preset.pretrained, **({"recipe": preset.recipe} if preset.recipe else {}),
                         **preset.model_options)


def benefit_trace(preset: P3BPreset, seed: int = 0, data=None, progress: bool = False,
                  calibration_steps: int | None = None, model: nn.Module | None = None,
                  callbacks: Sequence[Any] = ()) -> History:
    """Dense fine-tuning of the preset's source model with block-benefit probes attached (no pruning): ΔΨ before
    fine-tuning (probes fitted on the frozen model for ``calibration_steps``, default the preset's) and twice per
    epoch after — the data of the late-convergence analysis (:func:`sparselab.probes.late_convergence`) for one
    seed.

    ``model``: the source model to fine-tune, changed in place — pass ``source_model(preset, data, seed=seed)`` to
    look at it before and after the trace of that seed (left out, the same model is made here). ``callbacks`` join
    the fit beside the probes (e.g. :class:`sparselab.probes.BlockCriteria`).

    Example:
        >>> h = benefit_trace(p3b_preset("tiny"))  # doctest: +SKIP
        >>> sorted(h.blocks.metric.unique())  # doctest: +SKIP
        ['benefit_cls', 'benefit_patch']
    """
    from ..probes import BlockBenefit
    from .recipes import steps_per_epoch

    data = data if data is not None else load_data(preset)
    if model is None:
        model = source_model(preset, data, seed=seed)
    history = History(meta={"run": f"benefit-s{seed}", "seed": seed, "preset": preset.name})
    # the probes P3B would attach: the preset's probe cadence, learning rate and weight decay
    options = from_options(BenefitConfig, {**preset.probe_options, "patch_probe": preset.patch_probe},
                           f"probe option of preset {preset.name!r}")
    probes = BlockBenefit(model, num_classes=data.num_classes, patch_probe=preset.patch_probe,
                          log_every=max(1, steps_per_epoch(len(data.train), preset.fit) // 2),
                          probe_every=options.probe_every, probe_fraction=options.probe_fraction,
                          lr=options.probe_lr, weight_decay=options.probe_weight_decay)
    steps = preset.calibration_steps if calibration_steps is None else calibration_steps
    probes.calibrate(data, steps=steps, seed=seed)
    probes.record(history, probes.measure(data), step=0)
    fit(model, data, epochs=preset.schedule.finalize, callbacks=[probes, *callbacks], history=history, seed=seed,
        progress=progress, **preset.fit)
    return history


def late_convergence_by_seed(preset: P3BPreset, seeds: Sequence[int] | None = None, data=None,
                             traces: dict[int, History] | None = None, calibration_steps: int | None = None,
                             progress: bool = True) -> pd.DataFrame:
    """Spearman ρ of half-benefit moment vs depth (:func:`sparselab.probes.late_convergence`) per seed (rows)
    and probe (columns ``cls``, ``patch``), from a :func:`benefit_trace` per seed (``seeds`` default: the
    preset's); ``traces`` supplies Histories already recorded (seed → History) so that they are not run again.

    Example:
        >>> late_convergence_by_seed(p3b_preset("tiny"), [0, 1])  # doctest: +SKIP
    """
    from ..probes.convergence import late_convergence

    seeds = list(preset.seeds if seeds is None else seeds)
    traces = dict(traces or {})
    for seed, trace in traces.items():  # a trace of another seed or preset would stand in for this one's
        meta = getattr(trace, "meta", None) or {}
        if meta.get("seed", seed) != seed or meta.get("preset", preset.name) != preset.name:
            raise ConfigError(f"traces[{seed!r}] is the benefit trace of seed {meta.get('seed', seed)!r} of preset "
                              f"{meta.get('preset', preset.name)!r}, not of seed {seed!r} of preset "
                              f"{preset.name!r}: give each seed its own trace (benefit_trace(preset, seed))")
    todo = [s for s in seeds if s not in traces]
    data = data if data is not None or not todo else load_data(preset)
    for seed in tqdm(todo, desc=f"benefit traces {preset.name}", disable=not progress):
        traces[seed] = benefit_trace(preset, seed, data, calibration_steps=calibration_steps)
    variants = ["cls"] + (["patch"] if preset.patch_probe else [])
    table = pd.DataFrame({v: {s: late_convergence(traces[s], f"benefit_{v}")["rho"] for s in seeds}
                          for v in variants})
    table.index.name = "seed"
    return table


def fixed_profile(model: nn.Module) -> list[float]:
    """The hand-set keep-ratio profile of the ``fixed`` baseline: attention blocks 1.0, MLP blocks 0.5."""
    return [1.0, 0.5] * len(model.blocks)


def run_p3b(preset: P3BPreset, method: str = "p3b", prune_ratio: float = 0.5, seed: int = 0, data=None,
            progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False,
            latency_batch: int = 1, measure_latency: bool = True, callbacks: Sequence[Any] = (),
            pruner_options: dict[str, Any] | None = None) -> P3BRun:
    """Fine-tune the preset's source model on its target data while pruning with ``method``, compact it,
    fine-tune the compact model ``preset.finetune_epochs`` more, and measure it.

    ``method="dense"`` fine-tunes without pruning for the same number of epochs (the reference). ``callbacks``
    join the pruning fit (e.g. a step timer). ``pruner_options`` change the method's :class:`P3B` arguments (e.g.
    ``keep_ratios`` of another run for ``method="fixed"``, ``criterion="l1"``, ``patch_probe="linear"``); the
    schedule and the class count come from the preset and the data and are refused there.
    """
    if method not in METHODS:
        raise unknown_name("method", method, METHODS)
    if method != "dense":
        check_ratio("prune_ratio", prune_ratio)
    elif pruner_options:
        raise ConfigError("pruner_options need a pruning method, not dense fine-tuning")
    data = data if data is not None else load_data(preset)
    require_test_split(data)
    model = source_model(preset, data, seed=seed)
    name = f"{method}-{int(round(prune_ratio * 100))}-s{seed}" if method != "dense" else f"dense-s{seed}"
    history = History(meta={"run": name, "method": method, "prune_ratio": prune_ratio if method != "dense" else 0.0,
                            "seed": seed, "preset": preset.name})
    pruner = None
    if method != "dense":
        options = dict(METHODS[method])
        if method == "fixed":
            options["keep_ratios"] = fixed_profile(model)
        set_here = sorted(set(pruner_options or {}) & {"schedule", "num_classes"})
        if set_here:
            raise ConfigError(f"pruner_options may not set {', '.join(set_here)}: the run takes the schedule from "
                              f"the preset and the class count from the data; change the preset instead")
        options.update(pruner_options or {})
        benefit = options.get("allocation") == "benefit"
        patch_probe = options.pop("patch_probe", preset.patch_probe if benefit else None)
        pruner = P3B(model, prune_ratio, schedule=preset.schedule, num_classes=data.num_classes,
                     patch_probe=patch_probe, **{**(preset.probe_options if benefit else {}), **options})
    fit(model, data, epochs=preset.schedule.finalize, pruner=pruner, seed=seed, history=history,
        progress=progress, checkpoint_dir=checkpoint_dir, resume=resume, callbacks=list(callbacks), **preset.fit)
    result: dict[str, float] = {"acc_pruned": history.last("acc", "test")}
    if pruner is not None:
        result["achieved_ratio"] = pruner.achieved_prune_ratio()
        final = pruner.compact()
        pruner.remove()
    else:
        result["achieved_ratio"] = 0.0
        final = model
    ft_history = None
    if preset.finetune_epochs:
        ft_history = History(meta={"run": name + "-finetune"})
        fit(final, data, epochs=preset.finetune_epochs, seed=seed, history=ft_history, progress=progress,
            **preset.finetune)
    result["acc"] = ft_history.last("acc", "test") if ft_history is not None else result["acc_pruned"]
    result.update(_measure(final, data, latency_batch, measure_latency))
    return P3BRun(method, prune_ratio if method != "dense" else 0.0, seed, history, ft_history, final, pruner,
                  result)


def _measure(model: nn.Module, data, batch: int, with_latency: bool) -> dict[str, float]:
    from ..structure.compact import compact_stats

    stats = compact_stats(model)
    out = {"params": float(stats["params"]), "flops": float(stats["flops"])}
    if with_latency:
        out["latency_ms"] = latency_ms(model, (data.in_chans, data.image_size, data.image_size), batch_size=batch)
    return out


def run_row(run: P3BRun, preset: str | None = None) -> dict[str, Any]:
    """One results-table row for a run: its numbers and, for runs with a block-benefit History, what the findings
    need without the History — reactivations (0 → 1 events), the late-convergence ρ of each probe
    (:func:`sparselab.probes.late_convergence`) and the final applied keep ratio of every block (JSON)."""
    import json
    import math

    from ..probes.convergence import late_convergence

    row: dict[str, Any] = {"method": run.method, "prune_ratio": run.prune_ratio, "seed": run.seed, **run.result}
    if preset is not None:  # a row for a record: it names the code that ran it
        row = {"preset": preset, **row, CODE_COLUMN: code_version()}
    if run.pruner is None:
        return row
    h = run.history
    events = h.events
    row["reactivations"] = int(((events.old == 0) & (events.new == 1)).sum())
    metrics = set(h.blocks.metric)
    for variant in ("cls", "patch"):
        if f"benefit_{variant}" in metrics:
            rho = late_convergence(h, f"benefit_{variant}")["rho"]
            row[f"late_rho_{variant}"] = rho if math.isfinite(rho) else math.nan
    applied = h.blocks[h.blocks.metric == "keep_applied"]
    last = applied[applied.step == applied.step.max()]
    row["keep_ratios"] = json.dumps({b: round(float(v), 6) for b, v in zip(last.block, last.value)})
    return row


def compare(preset: P3BPreset, methods: Sequence[str] | None = None, prune_ratios: Sequence[float] | None = None,
            seeds: Sequence[int] | None = None, progress: bool = True, include_dense: bool = True,
            record: str | Path | None = None) -> tuple[pd.DataFrame, list[P3BRun]]:
    """Run every method × prune ratio × seed (plus dense fine-tuning per seed); returns one row per run
    (:func:`run_row`) and the runs themselves. Latency is left to :func:`latency_table`, which times compact and
    dense models back to back.

    ``record``: a CSV file that each finished run's row is written to at once (atomically). Runs already recorded
    there for this preset are not run again, so an interrupted comparison continues where it stopped; the table
    then holds the recorded rows too, while ``runs`` holds only the runs of this call. A file recorded for another
    preset, or for this preset with other settings (kept beside it, :func:`settings_path`), is refused.

    Example:
        >>> table, runs = compare(p3b_preset("tiny"), methods=["uniform"], record="runs/tiny.csv")  # doctest: +SKIP
    """
    lists = run_lists(preset, seeds=seeds, methods=methods, prune_ratios=prune_ratios)
    methods, ratios, seeds = lists["methods"], lists["prune_ratios"], lists["seeds"]
    for m in methods:
        if m not in METHODS:
            raise unknown_name("method", m, METHODS)
    if "dense" in methods:  # it would run once per prune ratio, each recorded at ratio 0
        raise ConfigError("compare runs dense fine-tuning once per seed itself (include_dense=True, at prune ratio "
                          "0); leave 'dense' out of methods")
    jobs = [("dense", 0.0, s) for s in seeds] if include_dense else []
    jobs += [(m, r, s) for r in ratios for m in methods for s in seeds]
    recorded = _read_record(record, preset) if record is not None else pd.DataFrame()
    done = {(row.method, float(row.prune_ratio), int(row.seed)) for row in recorded.itertuples()}
    todo = [j for j in jobs if (j[0], float(j[1]), j[2]) not in done]
    data = load_data(preset) if todo else None
    runs: list[P3BRun] = []
    rows = [row for row in recorded.to_dict("records")
            if (row["method"], float(row["prune_ratio"]), int(row["seed"])) in {(m, float(r), s) for m, r, s in jobs}]
    for method, ratio, seed in tqdm(todo, desc=f"P3B {preset.name}", disable=not progress):
        run = run_p3b(preset, method, ratio, seed, data=data, progress=False, measure_latency=False)
        runs.append(run)
        rows.append(run_row(run, preset.name if record is not None else None))
        if record is not None:
            _write_record(record, pd.concat([recorded, pd.DataFrame(rows[-1:])], ignore_index=True), preset)
            recorded = _read_record(record, preset)
    order = {j: i for i, j in enumerate((m, float(r), s) for m, r, s in jobs)}
    rows.sort(key=lambda row: order[(row["method"], float(row["prune_ratio"]), int(row["seed"]))])
    return pd.DataFrame(rows), runs


#: preset fields that only pick which runs a comparison makes (more seeds may join a record later)
ROW_FIELDS = ("seeds", "methods", "prune_ratios", "sparsities")


def record_settings(preset: Any) -> dict[str, Any]:
    """What every row of a comparison record depends on: the preset as JSON, without :data:`ROW_FIELDS`.

    Example:
        >>> settings = record_settings(p3b_preset("tiny"))
        >>> settings["model"], "seeds" in settings
        ('vit_nano_patch4_28', False)
    """
    import json

    form = preset_settings(preset)
    return json.loads(json.dumps({k: v for k, v in form.items() if k not in ROW_FIELDS}))


def settings_path(path: str | Path) -> Path:
    """The file beside a comparison record that holds the settings its rows were run with."""
    path = Path(path)
    return path.with_name(path.name + ".settings.json")


def _read_record(path: str | Path, preset: Any, setting: str = "prune_ratio") -> pd.DataFrame:
    """The rows recorded at ``path`` for ``preset`` (empty when there is no file yet). A record of another preset,
    or of the same preset with other settings (``settings_path``), is refused: its rows would be taken for runs
    they are not. A record without its settings file (written before such files existed) is taken for this
    preset's runs, with a warning."""
    import json
    import warnings

    path = Path(path)
    code_version()  # read now, before any run: the rows then name the code this process started with
    if not path.exists():
        return pd.DataFrame()
    table = pd.read_csv(path)
    missing = {"preset", "method", setting, "seed", "acc"} - set(table.columns)
    if missing:
        raise ConfigError(f"{path} is not a comparison record (no column {', '.join(sorted(missing))})")
    others = sorted(set(table.preset) - {preset.name})
    if others:
        raise ConfigError(f"{path} records the preset {', '.join(others)}, not {preset.name!r}: give another file")
    stored_path = settings_path(path)
    if not stored_path.exists():
        warnings.warn(f"{path} holds no record of the settings its rows were run with ({stored_path.name}); they "
                      f"are taken for runs of preset {preset.name!r} as it is now", stacklevel=3)
    else:
        try:
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{stored_path} cannot be read ({type(exc).__name__}: {exc}); restore it or give "
                              f"another record file") from None
        current = record_settings(preset)
        if stored != current:
            changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise ConfigError(f"{path} was recorded with other settings of preset {preset.name!r} (they differ in "
                              f"{', '.join(changed)}): its rows are not runs of this setting; give another file")
    # rows added now would be paired with those of other code
    warn_other_code(path, table, "rows added now are compared with them in paired differences, so run the record "
                                 "again whole (a new file) for results of one version", stacklevel=3)
    return table


def _write_record(path: str | Path, table: pd.DataFrame, preset: Any = None) -> None:
    """Write ``table`` to ``path`` atomically, and with ``preset`` the settings its rows were run with beside it."""
    import json

    from ..atomic import atomic_write

    if preset is not None:
        text = json.dumps(record_settings(preset), indent=1, sort_keys=True)
        atomic_write(settings_path(path), lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± standard deviation over seeds per method and prune ratio (accuracy in %, parameters in M,
    FLOPs in M multiply-accumulates, latency in ms)."""
    if table.empty:
        raise ConfigError("no runs to summarise")
    warn_unmeasured(table, "summarize")
    g = table.groupby(["prune_ratio", "method"], sort=False)
    out = pd.DataFrame({
        "acc %": g.acc.mean() * 100,
        "± (std)": g.acc.std(ddof=1) * 100,
        "acc before fine-tune %": g.acc_pruned.mean() * 100,
        "achieved ratio": g.achieved_ratio.mean(),
        "params (M)": g.params.mean() / 1e6,
        "MFLOPs": g.flops.mean() / 1e6,
        "seeds": g.acc.count(),  # the runs the accuracy mean is over
    })
    if "latency_ms" in table:
        out["latency (ms)"] = g.latency_ms.median()
    return out.round(3)



def latency_table(runs: Sequence[P3BRun], data, batch_sizes: Sequence[int] = (1, 32), repeats: int = 20
                  ) -> pd.DataFrame:
    """CPU latency of each method's compact model (first seed) against the dense model, beside the ideal speed-up
    that the FLOP ratio predicts. ``speedup / ideal`` near 1 means the parameter savings turn into time.

    Each model is timed round by round with the dense model (:func:`sparselab.cost.latency_against`, the order
    alternating), so a busy spell of the machine slows both alike; the speed-up is the median of the per-round
    ratios, with its interquartile range (``speed-up IQR``): a wide range says the timing was disturbed."""
    from ..cost import latency_against
    from ..structure.compact import compact_stats

    shape = (data.in_chans, data.image_size, data.image_size)
    dense = next((r for r in runs if r.method == "dense"), None)
    if dense is None:
        raise ConfigError("latency_table needs a dense run among the runs (compare(..., include_dense=True))")
    dense_flops = compact_stats(dense.model)["flops"]
    rows = []
    seen = set()
    for r in runs:
        key = (r.method, r.prune_ratio)
        if key in seen:
            continue
        seen.add(key)
        flops = compact_stats(r.model)["flops"]
        for b in batch_sizes:
            t = latency_against(r.model, dense.model, shape, batch_size=b, repeats=repeats)
            rows.append({"method": r.method, "prune_ratio": r.prune_ratio, "batch": b, "latency (ms)": t["model_ms"],
                         "dense (ms)": t["reference_ms"], "speed-up": t["speedup"],
                         "speed-up IQR": f"{t['speedup_q1']:.2f}-{t['speedup_q3']:.2f}",
                         "ideal (FLOPs)": dense_flops / flops})
    out = pd.DataFrame(rows)
    out["speed-up / ideal"] = out["speed-up"] / out["ideal (FLOPs)"]
    return out.round(3)


def save_results(out_dir, table: pd.DataFrame, runs: Sequence[P3BRun]) -> dict[str, str]:
    """Write the results table (CSV), all Histories merged (JSON Lines; :func:`~sparselab.experiments.outputs.
    save_run_files`; each run's pruning History as ``{run}``, its compact fine-tune as ``{run}-finetune``) and
    each pruned method's first compact model (JSON spec + safetensors) under ``out_dir``;
    returns the paths written. A compact model an earlier call left under ``out_dir/compact`` (a folder with a
    ``spec.json``) that these runs do not write is removed, so that every compact model there belongs to
    ``table``."""
    import shutil
    from pathlib import Path

    from .outputs import save_run_files

    out = Path(out_dir)
    histories, names = [], []
    for i, r in enumerate(runs):  # the compact model's fine-tune too: the table's acc is measured there
        name = str(r.history.meta.get("run", i))
        histories.append(r.history)
        names.append(name)
        if getattr(r, "finetune_history", None) is not None:
            histories.append(r.finetune_history)
            names.append(f"{name}-finetune")
    paths = save_run_files(out, table, histories, runs=names)
    written = set()
    for r in runs:
        if r.pruner is not None and r.seed == runs[0].seed:
            key = f"{r.method}-{int(round(r.prune_ratio * 100))}"
            if key not in paths:
                paths[key] = str(r.pruner.save_compact(out / "compact" / key, model=r.model))
                written.add(key)
    compact = out / "compact"
    if compact.is_dir():
        for folder in compact.iterdir():
            if folder.name not in written and folder.is_dir() and (folder / "spec.json").is_file():
                shutil.rmtree(folder)
    return paths

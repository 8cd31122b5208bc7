"""Command line: ``sparselab pretrain | train | p3b | art | presets | figures | export | datasets | models``.

Example:
    $ sparselab train --model vit_mini_patch7_28 --pretrained fashion_mnist --data digits --epochs 10 --out runs/demo

Every option is checked before any work starts; a bad one ends the command with one line
``sparselab: error: ...`` and exit status 2. Ctrl-C (or SIGTERM) stops a training command at a step boundary,
after a checkpoint, with exit status 130. torch and the training code are imported only inside the commands, so
``sparselab --help`` answers at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from .configs import QKV_UNITS, ARTConfig, BenefitConfig, flag_fields
from .errors import CheckpointError, ConfigError, DataNotFoundError, DivergedError, SparselabError, unknown_name

#: What marks a folder as holding a run (``--out`` refuses it without ``--resume`` or ``--overwrite``).
RUN_MARKERS = ("result.json", "summary.json", "history.jsonl.gz", "checkpoint")
#: What the run commands write into ``--out`` (``--overwrite`` deletes these, and nothing else).
#: the command and settings that made the run in a folder (what --resume must match besides the checkpoint)
RUN_IDENTITY = "run.json"
#: the source-pretraining recipe a run uses without --recipe (a run's identity names only other recipes)
DEFAULT_RECIPE = "default"
RUN_OUTPUTS = RUN_MARKERS + ("finetune_history.jsonl.gz", "compact", "model.safetensors", RUN_IDENTITY)
SOURCE_DATASETS = ("fashion_mnist",)  # sparselab.models.SOURCE_DATASETS, without importing torch
FIGURE_FORMATS = ("png", "svg", "pdf")
RESUME_AND_OVERWRITE = "--resume continues the run in --out and --overwrite replaces it: pass only one"


# ------------------------------------------------------------------------------------------------ option types
def _int_at_least(low: int, why: str = ""):
    """An argparse type: an integer >= ``low`` (``why`` says what the bound is for)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            reason = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}{reason}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _finite_float(text: str) -> float:
    """An argparse type: a finite number (``float`` alone accepts 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _number_in(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite number in the interval from ``low`` to ``high`` (open or closed ends)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    allowed = f"in {left}{low:g}, {high:g}{right}" if high is not None else f"{'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        value = _finite_float(text)
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number {allowed}, got {text!r}")
        return value

    parse.__name__ = f"number {allowed}"
    return parse


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)
RATIO = _number_in(0.0, 1.0, high_open=True)  # [0, 1): prune ratios, sparsities
LR = _number_in(0.0, low_open=True)
IMAGE_SIZE = _int_at_least(4)  # as sparselab.data.load checks


def _field_type(f):
    """The argparse type of a config field's flag, from the field's own rule (:mod:`sparselab.configs`)."""
    m = f.metadata
    if m["integer"]:
        return _int_at_least(int(m["low"]) + (1 if m["low_open"] else 0)) if m["low"] is not None else int
    if m["low"] is not None:
        return _number_in(m["low"], m["high"], low_open=m["low_open"], high_open=m["high_open"])
    return _finite_float


def _or_none(parse):
    """An argparse type that also takes ``none`` (the field's None, e.g. ``--probe-lr none``: the model's)."""
    def parse_or_none(text: str):
        return "none" if text.strip().lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value") + " or none"
    return parse_or_none


def _add_config_flags(parser: argparse.ArgumentParser, config: type, what: str) -> None:
    """One ``--name`` flag per field of ``config`` that the command line offers, typed, checked and documented by
    the field itself; unset (None) means the preset's value. A field that may be None takes ``none``."""
    for f in flag_fields(config):
        m = f.metadata
        if m["choices"]:
            extra = {"choices": (*m["choices"], *(("none",) if m["optional"] else ()))}
        else:
            extra = {"type": _or_none(_field_type(f)) if m["optional"] else _field_type(f)}
        parser.add_argument("--" + f.name.replace("_", "-"), default=None, dest=f.name,
                            help=f"{what}: {m['help']} (default: the preset's)", **extra)


def _config_flags(args, config: type) -> dict:
    """The config fields set on the command line (``none`` → None)."""
    values = {f.name: getattr(args, f.name) for f in flag_fields(config) if getattr(args, f.name) is not None}
    return {k: None if v == "none" else v for k, v in values.items()}


class _Registered:
    """The names of a registry, read only when argparse checks a value or prints help (the registries live in
    modules that import torch, and ``--help`` of the other commands must not)."""

    def __init__(self, module: str, names, kind: str):
        self.module, self.names, self.kind = module, names, kind

    def _load(self) -> tuple[str, ...]:
        import importlib

        return tuple(self.names(importlib.import_module(self.module)))

    def __iter__(self):
        return iter(self._load())

    def __contains__(self, name) -> bool:
        return name in self._load()

    def parse(self, text: str) -> str:
        if text not in self:
            raise argparse.ArgumentTypeError(str(unknown_name(self.kind, text, self._load())))
        return text


#: what ``--method`` accepts: every name in the experiments' method tables, read from them
P3B_METHODS = _Registered("sparselab.experiments.p3b", lambda m: m.METHODS, "method")
ART_METHODS = _Registered("sparselab.experiments.art", lambda m: m.METHOD_REGISTRY, "method")


def _schedule(text: str) -> tuple[int, int, int]:
    """``--schedule warmup,sparsify,finalize`` (three integers)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--schedule must be three integers warmup,sparsify,finalize (epochs, e.g. 10,25,50), "
                          f"got {text!r}")
    return values  # type: ignore[return-value]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``sparselab: error: ...`` line (exit status 2), like the library's."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see: {self.prog} --help)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` except for unset options (None: the preset's value) and flags."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------------------ shared checks
def _check_out_path(out: Path, want: str = "folder") -> None:
    """Refuse an output path that cannot be written before any work: ``out`` itself of the wrong kind, or an
    ancestor that is a file."""
    if want == "folder" and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if want == "file" and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name (e.g. {out / 'model.onnx'})")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out} cannot be created: {parent} is a file")
            break


def _check_out(out: Path, args, identity: dict | None = None) -> list[str]:
    """Refuse to write a run into a folder that holds one, unless ``--resume`` (continue it) or ``--overwrite``
    (replace it) was given; ``--resume`` refuses a folder whose run was made by another command or with other
    settings that no checkpoint holds (``identity``), and one that holds outputs but no checkpoint to continue
    from. Changes nothing; returns the run files found in ``out``."""
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        raise ConfigError(RESUME_AND_OVERWRITE)
    _check_out_path(out)
    found = [name for name in RUN_MARKERS if (out / name).exists()]
    if found and resume:
        _check_resumable(out, identity or {})
    if found and not resume and not overwrite:
        raise ConfigError(f"--out {out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                          f"--overwrite to replace it, or choose another --out")
    return found


def _prepare_out(out: Path, args, identity: dict | None = None) -> None:
    """:func:`_check_out`, then with ``--overwrite`` delete sparselab's outputs in ``out``, and keep ``identity``
    (the command and settings no checkpoint holds, such as where the starting weights come from) in
    ``RUN_IDENTITY``. Called once the run's inputs have loaded, so that a bad one leaves the folder as it was."""
    found = _check_out(out, args, identity)
    if found and getattr(args, "overwrite", False) and os.environ.get("RANK", "0") == "0":
        # under torchrun one process clears the folder
        for name in RUN_OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
    if identity is not None and os.environ.get("RANK", "0") == "0":
        out.mkdir(parents=True, exist_ok=True)
        _write_text(out / RUN_IDENTITY, json.dumps(identity, indent=2, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a run killed while writing leaves the old file or the new one."""
    from .atomic import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _check_resumable(out: Path, identity: dict) -> None:
    """``--resume`` into ``out``: it must hold a checkpoint, made by the same command with the same settings."""
    path = out / RUN_IDENTITY
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict):
            raise ConfigError(f"--resume: {path} cannot be read; the run in --out {out} cannot be checked")
        if recorded.get("recipe") == DEFAULT_RECIPE:  # written by a version that kept the default recipe too
            recorded = {k: v for k, v in recorded.items() if k != "recipe"}
        differ = [f"{k}: {recorded.get(k)!r} there, {identity.get(k)!r} now"
                  for k in sorted(set(recorded) | set(identity)) if recorded.get(k) != identity.get(k)]
        if differ:
            raise ConfigError(f"--resume: the run in --out {out} was made with other settings ({'; '.join(differ)}); "
                              f"resume it with its own, or choose another --out")
    if not (out / "checkpoint").is_dir():
        raise ConfigError(f"--resume: --out {out} holds outputs but no checkpoint/ to continue from; pass "
                          f"--overwrite to replace them, or choose another --out")


def _pretrained_arg(value: str | None):
    """``--pretrained``: False, True (timm hub), a source dataset, or an existing checkpoint path."""
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("none", "false"):
        return False
    if lowered == "true":
        return True
    if value in SOURCE_DATASETS:
        return value
    if not Path(value).expanduser().is_file():
        raise CheckpointError(f"--pretrained {value!r} is neither a checkpoint file nor one of: true (timm hub "
                              f"weights), none, {', '.join(SOURCE_DATASETS)}")
    return value


def _jsonable_pretrained(value) -> str | bool | None:
    """Where the starting weights come from, as the run's record keeps it (a path as an absolute path)."""
    if isinstance(value, (bool, type(None))) or value in SOURCE_DATASETS:
        return value
    return str(Path(value).expanduser().resolve())


def _check_model_name(name: str | None) -> None:
    if name is not None:
        from .models import check_name

        check_name(name)


# ------------------------------------------------------------------------------------------------ commands
def _cmd_pretrain(args) -> int:
    from .models.pretrained import pretrain

    model, dataset, recipe = args.model, args.dataset, args.recipe
    if args.preset is not None:
        if model is not None or recipe is not None or dataset is not None:
            raise ConfigError("--preset picks the model, source dataset and recipe the preset's source model "
                              "needs; leave out --model, --dataset and --recipe")
        from .experiments.p3b import p3b_preset

        preset = p3b_preset(args.preset)
        if preset.pretrained not in SOURCE_DATASETS:
            print(f"preset {preset.name!r} needs no source model from sparselab (pretrained="
                  f"{preset.pretrained!r}); nothing to do")
            return 0
        model, dataset, recipe = preset.model, preset.pretrained, preset.recipe or "default"
    path = pretrain(model or "vit_mini_patch7_28", dataset or "fashion_mnist", recipe or "default", force=args.force,
                    resume=args.resume)
    print(path)
    print(path.with_suffix(".json").read_text())
    return 0


def _cmd_train(args) -> int:
    from . import models
    from .experiments.provenance import code_version

    _check_model_name(args.model)
    pretrained = _pretrained_arg(args.pretrained)
    if args.recipe is not None and pretrained not in SOURCE_DATASETS:
        raise ConfigError(f"--recipe picks how a source model is pretrained; it needs --pretrained "
                          f"{' or '.join(SOURCE_DATASETS)}")
    from .training import TrainConfig, fit

    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay, optimizer=args.optimizer, seed=args.seed)
    size = models.input_size(args.model)
    if size is not None and args.image_size is not None and args.image_size != size:
        raise ConfigError(f"{args.model} takes {size}-px images, but --image-size is {args.image_size}; pass "
                          f"--image-size {size} or a model for {args.image_size}-px images")
    out = Path(args.out)
    identity = {"command": "train", "pretrained": _jsonable_pretrained(pretrained)}
    if args.recipe not in (None, DEFAULT_RECIPE):  # which source weights the run started from: no checkpoint holds it
        identity["recipe"] = args.recipe
    _check_out(out, args, identity=identity)

    import torch

    from . import data as sl_data

    torch.manual_seed(args.seed)
    bundle = sl_data.load(args.data, image_size=args.image_size if args.image_size is not None else size,
                          limit=args.limit)
    extra = {"recipe": args.recipe} if args.recipe is not None else {}
    if args.model == "lenet_300_100":
        extra["image_size"] = bundle.image_size
    model = models.create(args.model, num_classes=bundle.num_classes, in_chans=bundle.in_chans,
                          pretrained=pretrained or False, **extra)
    models.check_input_size(model, args.model, bundle.image_size)
    _prepare_out(out, args, identity=identity)
    history = fit(model, bundle, config=config, checkpoint_dir=out / "checkpoint", resume=args.resume)
    history.meta.update({"command": _command_line(args), "pretrained": str(args.pretrained),
                         "code": code_version()})
    history.save(out / "history.jsonl.gz")
    # a split that was never evaluated (no test images) is left out, not written as NaN
    summary = {split: {k: history.last(k, split) for k in ("acc", "loss")} for split in ("val", "test")
               if not math.isnan(history.last("acc", split))}
    _write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    print(json.dumps(summary, indent=2))
    print(f"history: {out / 'history.jsonl.gz'}")
    return 0


def _command_line(args) -> str:
    """The command that made this run, as given to :func:`main` (not the host process's arguments, which differ
    when ``main`` is called from Python)."""
    import shlex

    return "sparselab " + shlex.join(getattr(args, "argv", sys.argv[1:]))


def _cmd_p3b(args) -> int:
    from .experiments import p3b_preset, run_p3b
    from .experiments.p3b import METHODS
    from .experiments.presets import load_data, preset_settings, require_test_split
    from .experiments.provenance import code_version
    from .experiments.recipes import method_patch_probe, method_probe_options
    from .probes import FAST_PROBES

    benefit_flags = _config_flags(args, BenefitConfig)
    probe_flags = ["--" + name.replace("_", "-") for name in benefit_flags]
    probe_flags += ["--fast-probes"] if args.fast_probes else []
    with_probes = [m for m, options in METHODS.items() if options.get("allocation") == "benefit"]
    if probe_flags and args.method not in with_probes:
        raise ConfigError(f"{', '.join(probe_flags)} set the block-benefit probes, which --method {args.method} does "
                          f"not use (only {', '.join(with_probes)} do)")
    if args.qkv_unit != "dim" and args.method == "dense":
        raise ConfigError("--qkv-unit sets what P3B prunes in attention; --method dense prunes nothing")
    if args.prune_ratio is not None and args.method == "dense":
        raise ConfigError("--prune-ratio sets how much to prune; --method dense prunes nothing")
    prune_ratio = 0.0 if args.method == "dense" else (0.5 if args.prune_ratio is None else args.prune_ratio)
    # the flags that choose the patch probe and its cadence, which a method like p3b_fast_probes fixes itself
    patch_keys = ("patch_probe", "probe_every", "probe_fraction")
    patch_flags = [flag for flag in probe_flags if flag in ["--fast-probes", *("--" + k.replace("_", "-")
                                                                              for k in patch_keys)]]
    fixed = set(METHODS[args.method]) & set(patch_keys)
    if fixed and patch_flags:
        raise ConfigError(f"--method {args.method} fixes its probes itself ({', '.join(sorted(fixed))}); leave out "
                          f"{', '.join(patch_flags)}")
    if args.fast_probes and len(patch_flags) > 1:
        given = [flag for flag in patch_flags if flag != "--fast-probes"]
        raise ConfigError(f"--fast-probes sets the probes (sparselab.probes.FAST_PROBES: the class-token probes alone, "
                          f"no patch probe); leave out {', '.join(given)}, or --fast-probes")
    _check_model_name(args.model)
    changes: dict = {}
    if args.model is not None:
        changes["model"] = args.model
    if args.pretrained is not None:
        changes["pretrained"] = _pretrained_arg(args.pretrained)
        if changes["pretrained"] not in SOURCE_DATASETS:  # the preset's source recipe would refuse other weights
            changes["recipe"] = None
    if args.data is not None:
        changes["data"] = args.data
    if args.image_size is not None:
        changes["image_size"] = args.image_size
    preset = p3b_preset(args.preset, **changes)
    data_options = dict(preset.data_options)
    if args.data_root is not None:
        data_options["root"] = args.data_root
    if args.limit is not None:
        data_options["limit"] = args.limit
    fit_options = dict(preset.fit)
    finetune = dict(preset.finetune)
    for key, value in (("batch_size", args.batch_size), ("max_steps_per_epoch", args.max_steps_per_epoch),
                       ("num_workers", args.workers), ("lr", args.lr)):
        if value is not None:
            fit_options[key] = value
            finetune[key] = value
    schedule = preset.schedule
    if args.schedule is not None:
        w, s_, f = _schedule(args.schedule)
        # only the three epochs change: the preset's mask-update rate and soft-mask temperatures stay
        schedule = dataclasses.replace(schedule, warmup=w, sparsify=s_, finalize=f)
    fast = dict(FAST_PROBES) if args.fast_probes else {}
    patch_probe = fast.pop("patch_probe", benefit_flags.pop("patch_probe", preset.patch_probe))
    _check_patch_cadence(patch_probe, [flag for flag in probe_flags if flag in ("--probe-every", "--probe-fraction")],
                         "--patch-probe none" if "--patch-probe" in probe_flags else f"the preset {preset.name!r}")
    probe_options = {**preset.probe_options, **fast, **benefit_flags}
    # the one run this command makes (what --dry-run shows and result.json's settings record)
    preset = preset.replace(methods=(args.method,), prune_ratios=(prune_ratio,), seeds=(args.seed,))
    preset = preset.replace(data_options=data_options, fit=fit_options, finetune=finetune, schedule=schedule,
                            finetune_epochs=args.finetune_epochs if args.finetune_epochs is not None
                            else preset.finetune_epochs,
                            patch_probe=patch_probe, probe_options=probe_options)
    _check_image_size(preset)
    if args.dry_run:
        return _dry_run(preset)
    out = Path(args.out)
    identity = {"command": "p3b", "pretrained": _jsonable_pretrained(preset.pretrained)}
    _check_out(out, args, identity=identity)
    data = load_data(preset)
    require_test_split(data)
    _check_starting_weights(preset, data)
    _prepare_out(out, args, identity=identity)

    import torch

    from . import runtime as dist_utils

    pruner_options = {"qkv_unit": args.qkv_unit} if args.qkv_unit != "dim" else None
    run = run_p3b(preset, args.method, prune_ratio, args.seed, data=data, checkpoint_dir=str(out / "checkpoint"),
                  resume=args.resume, measure_latency=not args.no_latency, pruner_options=pruner_options)
    rank, _ = dist_utils.world()
    if rank == 0:
        run.history.save(out / "history.jsonl.gz")
        if run.finetune_history is not None:
            run.finetune_history.save(out / "finetune_history.jsonl.gz")
        else:  # no fine-tune this time: an earlier invocation's must not stand beside this result
            (out / "finetune_history.jsonl.gz").unlink(missing_ok=True)
        if run.pruner is not None:
            run.pruner.save_compact(out / "compact", model=run.model)
        probes = METHODS.get(args.method, {}).get("allocation") == "benefit"
        record = {"preset": preset.name, "method": args.method, "prune_ratio": prune_ratio, "seed": args.seed,
                  **({"qkv_unit": args.qkv_unit} if args.method != "dense" else {}),
                  **({"patch_probe": method_patch_probe(preset, args.method),
                      "probe_options": method_probe_options(preset, args.method)} if probes else {}),
                  "settings": preset_settings(preset), "code": code_version(), **run.result}
        _write_text(out / "result.json", json.dumps(record, indent=2, allow_nan=False))
        print(json.dumps(run.result, indent=2))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _check_starting_weights(preset, data) -> None:
    """Build the source model once when its weights come from a checkpoint file, so that a file that cannot be
    read or does not fit the model stops the command before ``--overwrite`` clears the earlier run (the run builds
    it again; torch's random state is left as it was)."""
    if isinstance(preset.pretrained, bool) or preset.pretrained in SOURCE_DATASETS:
        return
    import warnings

    import torch

    from .experiments import source_model

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run itself warns, e.g. of resampled position embeddings
        source_model(preset, data)


def _check_patch_cadence(patch_probe: str | None, flags: list[str], source: str) -> None:
    """Refuse patch-probe cadence flags (``--probe-every``, ``--probe-fraction``) where no patch probe runs
    (``source`` says why): they would be recorded in result.json but change nothing."""
    if patch_probe is None and flags:
        raise ConfigError(f"{', '.join(flags)} set how often and on how much of each batch the patch probes run, "
                          f"but there is no patch probe ({source}); pass --patch-probe conv2, conv1 or linear, or "
                          f"leave out {', '.join(flags)}")


def _cmd_art(args) -> int:
    from .experiments import art as art_exp
    from .experiments.presets import load_data, preset_settings, require_test_split
    from .experiments.provenance import code_version

    _check_model_name(args.model)
    changes: dict = {key: getattr(args, key) for key in ("model", "data", "image_size", "finetune_epochs")
                     if getattr(args, key) is not None}
    changes.update(_config_flags(args, ARTConfig))  # the ART options the preset holds under the same names
    art_only = [f for f in _config_flags(args, ARTConfig) if f != "warmup_epochs"]
    art_methods = ("hypersparse", "l1", "l2", *art_exp.ART_ABLATIONS)
    if art_only and args.method not in art_methods:
        flags = ", ".join("--" + f.replace("_", "-") for f in art_only)
        raise ConfigError(f"{flags} set ART's regularized sparsification, which --method {args.method} does not "
                          f"run (only {', '.join(art_methods)} do)")
    preset = art_exp.art_preset(args.preset, **changes)
    # the one run this command makes (what --dry-run shows and result.json's settings record)
    preset = preset.replace(methods=(args.method,), sparsities=(args.sparsity,), seeds=(args.seed,))
    if args.data_root is not None:
        preset = preset.replace(data_options={**preset.data_options, "root": args.data_root})
    for key, value in (("batch_size", args.batch_size), ("max_steps_per_epoch", args.max_steps_per_epoch)):
        if value is not None:
            preset = preset.replace(fit={**preset.fit, key: value}, finetune={**preset.finetune, key: value})
    _check_image_size(preset)
    if args.dry_run:
        return _dry_run(preset)
    out = Path(args.out)
    _check_out(out, args, identity={"command": "art"})
    data = load_data(preset)
    require_test_split(data)
    _prepare_out(out, args, identity={"command": "art"})

    from . import runtime as dist_utils

    run = art_exp.run_art(preset, args.method, args.sparsity, args.seed, data=data,
                          checkpoint_dir=str(out / "checkpoint"), resume=args.resume)
    rank, _ = dist_utils.world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        run.history.save(out / "history.jsonl.gz")
        run.finetune_history.save(out / "finetune_history.jsonl.gz")
        from safetensors.torch import save_file

        from .atomic import atomic_write

        state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
        atomic_write(out / "model.safetensors", lambda tmp: save_file(state, tmp))
        # a best over fine-tuning that was not measured (a validation split: the test split seen once) is left out
        result = {k: v for k, v in run.result.items() if not (k == "acc_best" and math.isnan(v))}
        record = {"preset": preset.name, "method": args.method, "sparsity": args.sparsity, "seed": args.seed,
                  "settings": preset_settings(preset), "code": code_version(), **result}
        _write_text(out / "result.json", json.dumps(record, indent=2, allow_nan=False))
        print(json.dumps(result, indent=2))
    return 0


def _dry_run(preset) -> int:
    """Print the resolved recipe (schedules in optimizer steps) and exit without training."""
    from .experiments.presets import load_data
    from .experiments.recipes import format_recipe, resolved_recipe

    try:
        data = load_data(preset)
        note = ""
    except DataNotFoundError as exc:  # bad options are errors; only data that is not on this machine is a note
        data, note = None, f"(step counts need the data, which is not here: {exc})"
    print(format_recipe(resolved_recipe(preset, data)))
    if note:
        print(note)
    return 0


def _cmd_presets(args) -> int:
    from .experiments import recipes

    if args.action != "show" and args.name is not None:
        raise ConfigError(f"presets {args.action} takes no preset name (got {args.name!r}); presets show NAME "
                          f"shows one")
    if args.action != "markdown" and args.out is not None:
        raise ConfigError(f"--out is for presets markdown; presets {args.action} prints to the terminal")
    if args.action == "list":
        print(f"{'name (for presets show)':32s} {'run it with':40s} model on data")
        for name, preset in recipes.all_presets().items():
            command = "p3b" if isinstance(preset, recipes.P3BPreset) else "art"
            use = f"sparselab {command} --preset {name.split('/')[-1]}"
            print(f"{name:32s} {use:40s} {preset.model} on {preset.data}")
        return 0
    if args.action == "markdown":
        text = recipes.render_markdown()
        if args.out:
            _check_out_path(Path(args.out), want="file")
            if Path(args.out).is_dir():
                raise ConfigError(f"--out {args.out} is a folder; give a file name such as docs/presets.md")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
            print(args.out)
        else:
            print(text)
        return 0
    if not args.name:
        raise ConfigError("presets show needs a preset name (see: sparselab presets list)")
    print(recipes.render_table(args.name))
    return 0


#: every figure :func:`history_figures` may draw, by file stem
FIGURE_NAMES = ("block_benefit_heatmap", "block_benefit_profile", "keep_ratios", "reactivations",
                "gradient_profile", "exchange", "art_keep_ratios")


def history_figures(history, run: str | None = None) -> dict:
    """The key figures of a saved History, by name: P3B's block benefit, keep ratios and reactivations; ART's
    gradient profile, exchange and per-layer keep ratios over ART epochs. Raises ConfigError when none applies."""
    from . import plots

    runs_meta = history.meta.get("runs") if isinstance(history.meta.get("runs"), dict) else None
    blocks = history.blocks

    def present(name) -> set:
        """The block metrics of run ``name`` (of the whole History when it holds one run)."""
        if name is None or "run" not in blocks.columns:
            return set(blocks.metric)
        return set(blocks.metric[blocks.run.astype(str) == str(name)])

    if run is not None and runs_meta and str(run) not in map(str, runs_meta):
        raise ConfigError(f"--run {run!r} is not a run of this History; it holds: "
                          f"{', '.join(map(str, runs_meta))}")
    figures = {}
    p3b_run = run
    if p3b_run is None and runs_meta:
        # the first run with P3B block traces (a P3B run first): a dense run or an ART run has none to draw
        traced = [r for r in runs_meta if present(r) & {"keep_goal", "benefit_cls"}]
        p3b_run = next((r for r in traced if str(r).startswith("p3b")), traced[0] if traced else None)
    metrics_present = present(p3b_run) if p3b_run is not None or not runs_meta else set()
    # a pruning run without probes (uniform, l1, global_taylor, ...) has keep ratios and mask changes but no benefit
    if "benefit_cls" in metrics_present:
        if "keep_goal" in metrics_present:
            figures["block_benefit_heatmap"] = plots.plot_block_benefit(history, view="heatmap", run=p3b_run)
        figures["block_benefit_profile"] = plots.plot_block_benefit(history, view="profile", run=p3b_run)
    if "keep_goal" in metrics_present:
        figures.update({
            "keep_ratios": plots.plot_keep_ratios(history, run=p3b_run),
            "reactivations": plots.plot_reactivations(history, run=p3b_run),
        })
    if runs_meta:
        art_runs = [r for r, m in runs_meta.items() if isinstance(m, dict) and m.get("profiles")]
    else:
        art_runs = [None] if history.meta.get("profiles") else []
    if run is not None and runs_meta:  # --run names one run: ART's figures only where it is an ART run
        art_runs = [r for r in art_runs if str(r) == str(run)]
    if art_runs:
        art_run = run if run is not None else art_runs[0]
        figures["gradient_profile"] = plots.plot_gradient_profile(history, run=art_run)
        figures["exchange"] = plots.plot_exchange(history)
        if "keep_ratio" in present(art_run):
            figures["art_keep_ratios"] = plots.plot_art_keep_ratios(history, run=art_run)
    if not figures:
        raise ConfigError("no figure applies to this History: it holds neither P3B block traces (keep_goal, "
                          "benefit_cls) nor ART gradient profiles")
    return figures


def _check_image_size(preset) -> None:
    """Refuse a preset whose model takes another image size than the preset gives it (before any data loads)."""
    from .models import input_size

    size = input_size(preset.model)
    if size is not None and preset.image_size is not None and preset.image_size != size:
        raise ConfigError(f"{preset.model} takes {size}-px images, but the image size is {preset.image_size}; pass "
                          f"--image-size {size} or a --model for {preset.image_size}-px images")


def _cmd_figures(args) -> int:
    from . import plots
    from .history import History

    out = Path(args.out)
    _check_out_path(out)
    history = History.load(args.history)
    figures = history_figures(history, run=args.run)
    formats = list(dict.fromkeys(args.format)) if args.format else ["png"]
    written = plots.export_figures(figures, out, formats=formats)
    for path in written:
        print(path)
    _replace_figure_manifest(out, written, history=args.history, run=args.run)
    return 0


#: the file in a `sparselab figures` folder that names the History its figures were drawn from
FIGURE_MANIFEST = "figures.json"


def _replace_figure_manifest(out: Path, written: list[Path], history: str, run: str | None) -> None:
    """Record what ``written`` shows in ``out/figures.json`` and remove the figures an earlier call wrote there
    that this one did not (another run's, or another format's), so its figures show one History. Files no call
    of this command wrote are left, with a note on stderr when they bear a figure's name."""
    from .atomic import atomic_write

    manifest = out / FIGURE_MANIFEST
    names = {p.name for p in written}
    known = {f"{name}.{fmt}" for name in FIGURE_NAMES for fmt in FIGURE_FORMATS}
    earlier = []
    if manifest.is_file():
        try:
            earlier = [Path(str(n)).name for n in json.loads(manifest.read_text()).get("files", [])]
        except (ValueError, AttributeError):  # unreadable: nothing is removed on its word
            earlier = []
    for name in earlier:
        stale = out / name  # a figure's name inside the folder, never a path out of it nor another file
        if name in known and name not in names and stale.is_file():
            stale.unlink()
            print(f"removed {stale} (an earlier call's figure that this History does not draw)")
    present = {p.name for p in out.iterdir()} if out.is_dir() else set()
    strangers = sorted(present & (known - names - set(earlier)))
    if strangers:
        print(f"note: {out} also holds {', '.join(strangers)}, not written by `sparselab figures` with a "
              f"{FIGURE_MANIFEST}; they may show another run", file=sys.stderr)
    record = dict(history=str(Path(history).resolve()), run=run, files=sorted(names))
    atomic_write(manifest, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))


def _cmd_export(args) -> int:
    source = Path(args.source)
    folder = next((f for f in (source / "compact", source) if (f / "spec.json").is_file()), None)
    if folder is None:
        raise ConfigError(f"no compact model in {source}: give the folder with spec.json and model.safetensors "
                          f"(a run's compact/) or the run folder that holds it")
    out = Path(args.out) if args.out is not None else folder / "model.onnx"
    _check_out_path(out, want="file")
    from .structure.compact import export_onnx, load_compact

    report = export_onnx(load_compact(folder), out)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_list(args) -> int:
    if args.command == "datasets":
        from .data import available

        for name, desc in available().items():
            print(f"{name:16s} {desc}")
    else:
        from .models import available

        print("\n".join(available(include_timm=args.all)))
    return 0


# ------------------------------------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparselab", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    p = add("pretrain", help="train and cache a source-pretrained small ViT")
    p.add_argument("--model", default=None, help="one of sparselab's small ViTs (default: vit_mini_patch7_28)")
    p.add_argument("--dataset", default=None, help="the source dataset (default: fashion_mnist)")
    p.add_argument("--recipe", default=None,
                   help="default, quick (seconds; tests and the tiny scale) or split04 (classes 0-4, the cpu "
                        "preset's source) (default: default)")
    p.add_argument("--preset", default=None,
                   help="pretrain what this P3B preset's source model needs (tiny, cpu; nothing for paper-*)")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--resume", action="store_true", help="continue an interrupted pretraining from its checkpoint")
    p.set_defaults(fn=_cmd_pretrain)

    t = add("train", help="train (or fine-tune) a model and save its History")
    t.add_argument("--model", default="vit_mini_patch7_28", help="a model name (sparselab models)")
    t.add_argument("--data", default="digits", help="a dataset name (sparselab datasets) or an ImageFolder path")
    t.add_argument("--pretrained", default=None,
                   help="fashion_mnist, a checkpoint path, true (timm hub) or none (default: none)")
    t.add_argument("--recipe", default=None, help="source-pretraining recipe with --pretrained fashion_mnist "
                                                  "(default, quick, split04)")
    t.add_argument("--image-size", type=IMAGE_SIZE, default=None,
                   help="side length images are resized to (default: the model's input size, else the dataset's)")
    t.add_argument("--limit", type=int, default=None, help="cap on training images (default: all)")
    t.add_argument("--epochs", type=POSITIVE, default=10, help="passes over the training images")
    t.add_argument("--lr", type=LR, default=5e-4, help="learning rate")
    t.add_argument("--batch-size", type=POSITIVE, default=64, help="images per step")
    t.add_argument("--weight-decay", type=_number_in(0.0), default=0.05, help="weight decay")
    t.add_argument("--optimizer", default="adamw", help="adamw, adam or sgd")
    t.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed")
    t.add_argument("--out", default="runs/train", help="output folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    t.set_defaults(fn=_cmd_train)

    pb = add("p3b", help="prune a ViT with P3B (or a baseline) during transfer; torchrun-launchable")
    pb.add_argument("--preset", default="cpu", help="tiny, cpu, cpu-full, cpu-digits, cpu-split, cpu-split-1k, "
                                                    "paper-deit-{s,t}-{cifar100,ifood,inat19}[-ft50] "
                                                    "(sparselab presets list)")
    pb.add_argument("--method", default="p3b", type=P3B_METHODS.parse, choices=P3B_METHODS, metavar="METHOD",
                    help="one of %(choices)s")
    pb.add_argument("--prune-ratio", type=RATIO, default=None,
                    help="share of the parameters to remove, in [0, 1) (default 0.5; not with --method dense)")
    pb.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed")
    pb.add_argument("--model", default=None, help="a ViT name (default: the preset's)")
    pb.add_argument("--pretrained", default=None,
                    help="true (timm hub), none, fashion_mnist or a checkpoint path (default: the preset's)")
    pb.add_argument("--data", default=None, help="a dataset name or ImageFolder path (default: the preset's)")
    pb.add_argument("--data-root", default=None, help="where the dataset lives (ImageFolder tree, torchvision root)")
    pb.add_argument("--image-size", type=IMAGE_SIZE, default=None, help="image side length (default: the preset's)")
    pb.add_argument("--limit", type=int, default=None, help="cap on training images (default: the preset's)")
    pb.add_argument("--batch-size", type=POSITIVE, default=None,
                    help="images per step, of the pruning run and the compact fine-tune (default: the preset's)")
    pb.add_argument("--lr", type=LR, default=None,
                    help="learning rate of the pruning run and the compact fine-tune (default: the preset's)")
    pb.add_argument("--max-steps-per-epoch", type=POSITIVE, default=None,
                    help="cap on optimizer steps per epoch (default: the preset's)")
    pb.add_argument("--workers", type=NON_NEGATIVE, default=None, help="DataLoader workers (default: the preset's)")
    pb.add_argument("--schedule", default=None,
                    help="warmup,sparsify,finalize epochs, e.g. 10,25,50 (default: the preset's)")
    pb.add_argument("--finetune-epochs", type=NON_NEGATIVE, default=None,
                    help="epochs of compact fine-tuning; 0: none (default: the preset's)")
    _add_config_flags(pb, BenefitConfig, "block benefit")
    pb.add_argument("--fast-probes", action="store_true",
                    help="sparselab.probes.FAST_PROBES: the class-token probes alone, no patch probe (about a third "
                         "of the reference probes' cost)")
    pb.add_argument("--qkv-unit", choices=QKV_UNITS, default="dim",
                    help="what P3B prunes in attention: one dimension of every head (dim, the reference) or whole "
                         "heads (head, an extension: the compact model has fewer heads)")
    pb.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    pb.add_argument("--out", default="runs/p3b", help="output folder")
    pb.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    pb.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    pb.add_argument("--dry-run", action="store_true",
                    help="print the resolved recipe (data, image size, effective batch, schedules in optimizer "
                         "steps) and exit without training")
    pb.set_defaults(fn=_cmd_p3b)

    ar = add("art", help="sparsify with ART (HyperSparse/L1/L2) or a magnitude baseline, then fine-tune")
    ar.add_argument("--preset", default="cpu", help="tiny, tiny-vit, tiny-cnn, cpu, cpu-full, cpu-cnn, cpu-vit, "
                                                    "paper-{resnet32,vgg19}-{cifar10,cifar100,tinyimagenet} "
                                                    "(sparselab presets list)")
    ar.add_argument("--method", default="hypersparse", type=ART_METHODS.parse, choices=ART_METHODS,
                    metavar="METHOD", help="one of %(choices)s")
    ar.add_argument("--sparsity", type=RATIO, default=0.98, help="in [0, 1); 0.9, 0.98, 0.995, 0.998 in the paper")
    ar.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed")
    ar.add_argument("--model", default=None, help="a model name (default: the preset's)")
    ar.add_argument("--data", default=None, help="a dataset name (default: the preset's)")
    ar.add_argument("--data-root", default=None, help="where the dataset lives")
    ar.add_argument("--image-size", type=IMAGE_SIZE, default=None, help="image side length (default: the preset's)")
    ar.add_argument("--finetune-epochs", type=_int_at_least(1, "ART's result is the fine-tuned sparse model"),
                    default=None, help="fine-tuning epochs with the mask fixed (default: the preset's)")
    _add_config_flags(ar, ARTConfig, "ART")
    ar.add_argument("--batch-size", type=POSITIVE, default=None, help="images per step (default: the preset's)")
    ar.add_argument("--max-steps-per-epoch", type=POSITIVE, default=None,
                    help="cap on optimizer steps per epoch (default: the preset's)")
    ar.add_argument("--out", default="runs/art", help="output folder")
    ar.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    ar.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    ar.add_argument("--dry-run", action="store_true",
                    help="print the resolved recipe (schedules in optimizer steps) and exit without training")
    ar.set_defaults(fn=_cmd_art)

    ps = add("presets", help="list presets, or show one beside the reference recipe")
    ps.add_argument("action", choices=("list", "show", "markdown"), help="what to do")
    ps.add_argument("name", nargs="?", default=None, help="a preset name (for show)")
    ps.add_argument("--out", default=None, help="for markdown: write to this file (e.g. docs/presets.md)")
    ps.set_defaults(fn=_cmd_presets)

    fg = add("figures", help="write the key figures of a saved History as PNG/SVG/PDF")
    fg.add_argument("history", help="a History file (.jsonl or .jsonl.gz) written by sparselab")
    fg.add_argument("--run", default=None,
                    help="the run of a merged History (default: the first P3B run, or the first ART run)")
    fg.add_argument("--out", default="runs/figures",
                    help="output folder (figures an earlier call wrote there that this History does not draw are "
                         "removed; other files are left)")
    fg.add_argument("--format", nargs="+", action="extend", default=None, choices=FIGURE_FORMATS,
                    help="file formats (--format png svg, or --format repeated) (default: png)")
    fg.set_defaults(fn=_cmd_figures)

    ex = add("export", help="export a compact model to ONNX, checked against PyTorch with ONNX Runtime")
    ex.add_argument("format", choices=("onnx",), help="the format")
    ex.add_argument("source", help="a compact-model folder (spec.json, model.safetensors) or a run with compact/")
    ex.add_argument("--out", default=None, help="the .onnx file (default: model.onnx beside spec.json)")
    ex.set_defaults(fn=_cmd_export)

    for name in ("datasets", "models"):
        lp = add(name, help=f"list available {name}")
        if name == "models":
            lp.add_argument("--all", action="store_true", help="include every timm ViT/DeiT")
        lp.set_defaults(fn=_cmd_list)
    return parser


# ------------------------------------------------------------------------------------------------ entry point
def _sigterm_as_interrupt(signum, frame) -> None:
    """SIGTERM behaves like Ctrl-C: whatever handles SIGINT now (the training loop defers it to a step boundary
    and checkpoints) handles it; without a handler it raises KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if in_main_thread else None
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if getattr(args, "resume", False) and getattr(args, "overwrite", False):  # --dry-run never reaches _prepare_out
            raise ConfigError(RESUME_AND_OVERWRITE)
        return args.fn(args)
    except SparselabError as exc:
        text = str(exc)
        if isinstance(exc, DivergedError):  # nonfinite='skip' is an option of sl.fit, not of the command line
            text = text.replace(", or pass nonfinite='skip' to drop such steps", " (or a step size such as "
                                "--probe-weight-decay)")
        print(f"sparselab: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        detail = str(exc).strip()  # the training loop says where it stopped and where the checkpoint is
        line = "sparselab: " + (detail if detail.startswith("interrupted") else "interrupted")
        if args is not None and hasattr(args, "resume"):
            line += "; resume with the same command and --resume"
        print(line, file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    raise SystemExit(main())

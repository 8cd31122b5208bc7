"""The training loop: :func:`fit` trains a model on a :class:`~sparselab.data.DataBundle`, calls the pruner's
hooks, evaluates every epoch, checkpoints atomically, resumes exactly, and returns a :class:`History`.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=8)
    >>> model = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
    >>> history = sl.fit(model, data, epochs=2, lr=1e-3, batch_size=64, progress=False)
    >>> history.last("acc", split="test") > 0.5
    True
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import re
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import runtime as dist_utils
from ..callbacks import Callback, Pruner, TrainState
from ..data.batches import epoch_groups, local_chunk, to_model_input, train_batches
from ..data.datasets import DataBundle
from ..errors import CheckpointError, ConfigError, DivergedError, check_bool
from ..evaluation import evaluate
from ..history import History, json_form
from ..models import LeNet300100, num_classes_of
from ..models.checkpoints import state_dict_mismatch
from ..runtime import amp_dtype, autocast, task_loss
from .checkpoint import FORMAT, atomic_save, load_checkpoint, remove_orphans
from .config import TrainConfig
from .optim import build_optimizer, build_scheduler, param_groups

CHECKPOINT_NAME = "last.pt"


class _DeferredInterrupt:
    """Turn Ctrl-C (SIGINT) and SIGTERM into a flag checked between steps, so the run stops at a consistent point
    and checkpoints. A second signal interrupts at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.enabled:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
        return False

    def check(self, world_size: int) -> bool:
        flag = self.requested
        if world_size > 1:  # every process must stop at the same step
            t = torch.tensor([float(flag)])
            dist_utils.all_reduce_sum(t)
            flag = t.item() > 0
        return flag


#: what fit calls on a pruner or callback (a subclass of sl.Pruner / Callback has them all; any object with
#: them works)
HOOKS = tuple(name for name in vars(Callback) if not name.startswith("_") and callable(getattr(Callback, name)))


def _check_hooks(what: str, obj: Any, example: str) -> None:
    missing = [h for h in HOOKS if not callable(getattr(obj, h, None))]
    if missing:
        raise ConfigError(f"{what} must be {example}: an object with the hooks {', '.join(HOOKS)}; "
                          f"{obj!r} lacks {', '.join(missing)}")


def check_model_fits_data(model: nn.Module, data: DataBundle) -> None:
    """Refuse a model whose classes, channels or image size do not match ``data``, saying how to make them fit."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch nn.Module (e.g. from sparselab.models.create), got "
                          f"{type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise ConfigError(f"data must be a sparselab DataBundle (from sparselab.data.load), got {type(data).__name__}")
    n = num_classes_of(model)
    if n is not None and n != data.num_classes:
        raise ConfigError(f"the model has {n} output classes but {data.name!r} has {data.num_classes}; create it "
                          f"with num_classes={data.num_classes}")
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != data.in_chans:
        raise ConfigError(f"the model takes {first_conv.in_channels}-channel images but {data.name!r} has "
                          f"{data.in_chans}; create it with in_chans={data.in_chans}")
    size = data.image_size
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "strict_img_size", False) and not getattr(embed, "dynamic_img_pad",
                                                                                        False):
        expected = tuple(embed.img_size)
        if expected != (size, size):
            raise ConfigError(f"the model takes {expected[0]}x{expected[1]} images but {data.name!r} is loaded at "
                              f"{size}x{size}; load it with image_size={expected[0]} (or create the model for "
                              f"{size}-px images)")
    if isinstance(model, LeNet300100) and model.fc1.in_features != data.in_chans * size * size:
        raise ConfigError(f"the model takes flattened {model.fc1.in_features}-value images but {data.name!r} gives "
                          f"{data.in_chans}x{size}x{size} = {data.in_chans * size * size}; create it with "
                          f"image_size={size}")


def _check_same_run(path: Path, what: str, before: Any, now: Any) -> None:
    """Refuse to resume a checkpoint written by a different run, naming what differs."""
    if before is None or _jsonable_deep(before) == _jsonable_deep(now):
        return
    if isinstance(before, dict) and isinstance(now, dict):
        keys = sorted(set(before) | set(now), key=str)
        diff = {k: (before.get(k), now.get(k)) for k in keys
                if _jsonable_deep(before.get(k)) != _jsonable_deep(now.get(k))}
        detail = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
    else:
        detail = f"{before!r} in the checkpoint, {now!r} now"
    raise CheckpointError(f"{path} belongs to another run: its {what} differ ({detail}). Resume with the same "
                          f"settings, or start a new run in another folder")


def _architecture(model: nn.Module) -> list[str]:
    """The module tree as ``repr`` prints it (layer types, sizes, activations, dropout and drop-path rates), one
    line per entry, object addresses removed: what a state dict does not show but a resumed run must share."""
    return [re.sub(r" at 0x[0-9a-fA-F]+", "", line).rstrip() for line in repr(model).splitlines()]


def _check_same_architecture(path: Path, before: list[str] | None, now: list[str]) -> None:
    if before is None or before == now:  # a checkpoint written before the architecture was kept: not checked
        return
    first = next((i for i, (a, b) in enumerate(zip(before, now)) if a != b), min(len(before), len(now)))
    was = before[first].strip() if first < len(before) else "(nothing)"
    is_ = now[first].strip() if first < len(now) else "(nothing)"
    raise CheckpointError(f"{path} belongs to another run: its model differs in what the weights do not show "
                          f"(line {first + 1} of the module tree: {was!r} in the checkpoint, {is_!r} now). Resume "
                          f"with the same model, or start a new run in another folder")


def _jsonable_deep(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable_deep(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable_deep(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


#: what :func:`fit` reads from a checkpoint when it resumes
CHECKPOINT_KEYS = ("config", "loop", "step", "model", "optimizer", "scheduler", "scaler", "plugins", "history", "rng")


def _check_fit_arguments(checkpoint_dir: Any, resume: Any, progress: Any, history: Any, grad_scaler: Any,
                         cfg: TrainConfig) -> None:
    """Refuse arguments of :func:`fit` that would fail only after training started, or be read wrongly."""
    check_bool("resume", resume)
    check_bool("progress", progress)
    if checkpoint_dir is not None:
        if not isinstance(checkpoint_dir, (str, Path)):
            raise ConfigError(f"checkpoint_dir must be a folder path (str or pathlib.Path) or None, got "
                              f"{checkpoint_dir!r}")
        folder = Path(checkpoint_dir)
        # the first checkpoint is written after an epoch's work (or checkpoint_every steps): a folder that cannot
        # be made or written there is refused now, without making it
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if existing == folder and not folder.is_dir():
            raise ConfigError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file, not a folder: pass the folder "
                              f"that is to hold {CHECKPOINT_NAME}")
        if not existing.is_dir():
            raise ConfigError(f"checkpoint_dir {str(checkpoint_dir)!r} lies under {str(existing)!r}, which is a file; "
                              f"pass a folder elsewhere")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"checkpoint_dir {str(checkpoint_dir)!r} cannot be written ({str(existing)!r} is not "
                              f"writable by this process); pass a folder elsewhere")
    elif cfg.checkpoint_every is not None:
        raise ConfigError(f"checkpoint_every={cfg.checkpoint_every} needs checkpoint_dir (the folder that holds "
                          f"{CHECKPOINT_NAME}); without one nothing is checkpointed")
    if history is not None and not isinstance(history, History):
        raise ConfigError(f"history must be a sparselab History to append to, or None, got {type(history).__name__}")
    if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
        raise ConfigError(f"grad_scaler must be a torch.amp.GradScaler or None, got {type(grad_scaler).__name__}")


def _runtime(amp: bool, cfg: TrainConfig, scaler: Any) -> dict[str, Any]:
    """What decides a run's numbers beside its settings: the precision actually used (AMP depends on the device)
    and whether a loss scaler runs. (The loader workers do not: each item's augmentation has its own seed.)"""
    return {"amp": amp, "amp_dtype": str(amp_dtype(cfg.amp_dtype)) if amp else None,
            "grad_scaler": scaler is not None}


@dataclasses.dataclass
class LoopProgress:
    """Where :func:`fit` stands, saved in every checkpoint (as a dict) so that a resumed run continues at the same
    batch: the ``epoch`` and ``batch`` within it, whether training ``finished`` or was ``stopped`` by a callback,
    the running sums of the logging ``window`` (loss sum, images) and of the epoch's ``train`` metrics (loss sum,
    correct, images; of the steps that updated the weights), the count of ``skipped`` steps (those without an
    update: a non-finite loss, or gradients the loss scaler found non-finite), and the ``last_test`` evaluation of
    the test split after an epoch (its ``step``, ``loss`` and ``acc``; None where the epochs evaluate the
    validation split), and the ``lr`` the last optimizer step used (the first group's; the schedule has moved on
    since)."""

    epoch: int = 0
    batch: int = 0
    finished: bool = False
    stopped: bool = False
    window: list = dataclasses.field(default_factory=lambda: [0.0, 0.0])
    train: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    skipped: int = 0
    last_test: dict | None = None
    lr: float | None = None


def fit(model: nn.Module, data: DataBundle, epochs: int | None = None, pruner: Pruner | None = None, *,
        config: TrainConfig | None = None, callbacks: Sequence[Callback] = (), history: History | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
        grad_scaler: torch.amp.GradScaler | None = None, **options: Any) -> History:
    """Train ``model`` on ``data`` and return the run's :class:`History`.

    Args:
        model: any ``nn.Module`` mapping images to logits; its class count must match the data's.
        data: a :class:`~sparselab.data.DataBundle`.
        epochs: shorthand for ``options["epochs"]``.
        pruner: a :class:`Pruner` whose hooks are called during training (None: plain training).
        config: a :class:`TrainConfig`; keyword ``options`` override its fields (e.g. ``lr=5e-4``).
        callbacks: :class:`~sparselab.callbacks.Callback` objects (probes, timers, ...), called after ``pruner``.
        history: a History to append to (default: a new one).
        checkpoint_dir: where ``last.pt`` is written (atomically) after every epoch and every
            ``checkpoint_every`` steps; Ctrl-C then stops after the current step and checkpoints first.
        resume: continue from ``checkpoint_dir/last.pt`` if it exists; the result equals an uninterrupted run.
            Without it, an existing ``last.pt`` is replaced at the first checkpoint (with a warning).
        progress: show a progress bar (terminal or notebook).
        grad_scaler: a ``torch.amp.GradScaler`` to use instead of the automatic one (float16 autocast on CUDA
            gets one by itself); hooks see its scale in ``state.grad_scale`` and skipped steps in
            ``state.step_skipped``.

    A step without an update, whether its loss was not finite (``nonfinite="skip"``) or the loss scaler skipped
    it for inf/NaN gradients, adds nothing to the logged train ``loss``, ``epoch_loss`` and ``acc``; the
    History's ``skipped_steps`` counts both kinds (running total, logged at each such step).

    Under ``torchrun`` the model is wrapped in DistributedDataParallel, each process takes its share of every
    global batch, and metrics are all-reduced, so every process returns the same History.
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a sl.TrainConfig (options can also be given as keywords), got "
                          f"{type(config).__name__}")
    if pruner is not None:
        _check_hooks("pruner", pruner, "a pruner object such as sl.P3B(model, 0.5) or sl.ART(model, 0.9)")
    if isinstance(callbacks, (Callback, str)) or not hasattr(callbacks, "__iter__"):
        raise ConfigError(f"callbacks must be a list of callback objects, got {callbacks!r}")
    callbacks = list(callbacks)  # a generator would be used up by the checks below
    for c in callbacks:
        _check_hooks("each of callbacks", c, "a callback object (sparselab.callbacks.Callback)")
    cfg = config or TrainConfig()
    if epochs is not None:
        options["epochs"] = epochs
    cfg = cfg.replace(**options)
    check_model_fits_data(model, data)
    _check_fit_arguments(checkpoint_dir, resume, progress, history, grad_scaler, cfg)
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir")
    if cfg.eval_split == "test" and data.test is None:
        raise ConfigError(f"eval_split='test', but {data.name!r} has no test split: use eval_split='val'")
    device = dist_utils.local_device(cfg.device)
    distributed = dist_utils.init_if_launched(device)
    rank, world = dist_utils.world()
    amp = (device.type == "cuda") if cfg.amp is None else (cfg.amp and device.type == "cuda")
    model.to(device)
    plugins: list[Callback] = [p for p in (pruner, *callbacks) if p is not None]
    for p in plugins:  # a resume compares these: a value without a stable JSON form would never match itself
        try:
            json.dumps(_jsonable_deep(p.config()))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{type(p).__name__}.config() must return JSON values (a dict of strings, numbers, "
                              f"booleans, None, lists and dicts), so that a resume can compare them: {exc}") from None

    train_ds = data.train
    eval_name = "val" if (cfg.eval_split == "val" and data.val is not None) else "test"
    eval_ds = data.val if eval_name == "val" else data.test

    def plan(epoch: int) -> list[list[torch.Tensor]]:
        return epoch_groups(len(train_ds), cfg.batch_size, cfg.accumulate_steps, cfg.drop_last, cfg.seed, epoch,
                            cfg.repeated_aug, world)

    n_steps = len(plan(0))
    if n_steps == 0:
        drawn = sum(len(b) for g in epoch_groups(len(train_ds), cfg.batch_size, cfg.accumulate_steps, False, cfg.seed,
                                                  0, cfg.repeated_aug, world) for b in g)
        source = (f"the {drawn} images an epoch draws with repeated_aug={cfg.repeated_aug} (timm's sampler keeps a "
                  f"multiple of 256 of the {len(train_ds)} training images)" if cfg.repeated_aug > 1
                  else f"the {len(train_ds)} training images")
        raise ConfigError(f"an effective batch of {cfg.effective_batch_size} images (batch_size {cfg.batch_size} x "
                          f"accumulate_steps {cfg.accumulate_steps}) exceeds {source}"
                          + (" (with drop_last=True no batch is left)" if cfg.drop_last else ""))
    steps_per_epoch = min(n_steps, cfg.max_steps_per_epoch or n_steps)
    cfg.check_schedule_length()
    if cfg.mixup or cfg.cutmix:
        _check_even_batches(plan(0)[:steps_per_epoch], world, cfg)

    groups = param_groups(model, cfg)
    for p in plugins:
        groups = p.param_groups(groups)
    optimizer = build_optimizer(groups, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    if grad_scaler is not None:
        scaler = grad_scaler
    else:
        scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype(cfg.amp_dtype) == torch.float16 else None
    if history is None:
        history = History()
    architecture = _architecture(model)  # before any pruner or callback changes the model
    runtime = _runtime(amp, cfg, scaler)
    history.meta.setdefault("config", _jsonable(cfg.fingerprint()))
    history.meta.setdefault("model", type(model).__name__)
    history.meta.setdefault("data", data.name)
    history.meta.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    if plugins:  # what the pruner and callbacks were configured with, beside the training options
        history.meta.setdefault("plugins", [{"name": type(p).__name__, "config": json_form(p.config())}
                                            for p in plugins])

    state = TrainState(model=model, optimizer=optimizer, history=history, device=device, epochs=cfg.epochs,
                       steps_per_epoch=steps_per_epoch, rank=rank, world_size=world, data=data,
                       label_smoothing=cfg.label_smoothing, accumulate_steps=cfg.accumulate_steps, amp=amp,
                       amp_dtype=amp_dtype(cfg.amp_dtype))
    loop = LoopProgress()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # timm's Mixup draws from numpy and random
    random.seed(cfg.seed)
    mixup = _mixup(cfg, data.num_classes)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None

    def save_checkpoint() -> None:
        # never replace a good checkpoint by a diverged model, nor return one (a finite loss can still have
        # non-finite gradients, and nonfinite="skip" drops only steps whose loss is not finite)
        _check_finite_weights(model, state.step, ckpt_path)
        if ckpt_path is None:
            return
        progress = dataclasses.asdict(loop)
        # the running sums are this process's own: the checkpoint keeps those of all processes (a resume restores
        # them on process 0 alone, so that the epoch's all-reduce counts each image once)
        for key in ("window", "train"):
            progress[key] = dist_utils.all_reduce_sum(torch.tensor(progress[key], dtype=torch.float64)).tolist()
        if rank == 0:
            atomic_save({
                "format": FORMAT, "config": cfg.fingerprint(), "loop": progress, "step": state.step,
                "data": data.fingerprint(), "plugin_configs": [p.config() for p in plugins],
                "architecture": architecture, "runtime": runtime,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "plugins": [(type(p).__name__, p.state_dict()) for p in plugins],
                "history": history.state_dict(), "hook_state": _hook_state(state),
                "rng": {"torch": torch.get_rng_state(), "data": data_gen.get_state(),
                        "numpy": np.random.get_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            }, ckpt_path)
        dist_utils.barrier()

    if not resume and ckpt_path is not None and ckpt_path.exists() and rank == 0:
        warnings.warn(f"{ckpt_path} holds the checkpoint of an earlier run; resume=False starts afresh and replaces it "
                      f"at the first checkpoint (pass resume=True to continue that run instead)", RuntimeWarning,
                      stacklevel=2)
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if ck.get("format") != FORMAT:
            raise CheckpointError(f"{ckpt_path} is not a sparselab training checkpoint")
        missing = [k for k in CHECKPOINT_KEYS if k not in ck]
        if missing:
            raise CheckpointError(f"{ckpt_path} is incomplete: it lacks {', '.join(missing)} (delete it to start "
                                  f"over)")
        if ck["config"] != cfg.fingerprint():
            diff = {k: (ck["config"].get(k), v) for k, v in cfg.fingerprint().items() if ck["config"].get(k) != v}
            raise CheckpointError(f"{ckpt_path} was written with other settings (checkpoint vs now): {diff}")
        saved = [name for name, _ in ck["plugins"]]
        if saved != [type(p).__name__ for p in plugins]:
            raise CheckpointError(f"{ckpt_path} was written with pruner/callbacks {saved}, now "
                                  f"{[type(p).__name__ for p in plugins]}")
        _check_same_run(ckpt_path, "data", ck.get("data"), data.fingerprint())
        _check_same_run(ckpt_path, "precision and data-loading settings", ck.get("runtime"), runtime)
        if "plugin_configs" in ck:  # a checkpoint written before plugin settings were kept is not checked
            for p, before in zip(plugins, ck["plugin_configs"]):
                now = p.config()
                if _jsonable_deep(before) != _jsonable_deep(now):
                    _check_same_run(ckpt_path, f"{type(p).__name__} settings", before if before is not None
                                    else {}, now if now is not None else {})
        # both checks before any weight is loaded: a refused resume leaves the model as it was given
        mismatch = state_dict_mismatch(model.state_dict(), ck["model"])
        if mismatch:
            raise CheckpointError(f"{ckpt_path} does not fit this model: {mismatch}")
        _check_same_architecture(ckpt_path, ck.get("architecture"), architecture)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck["scaler"] is not None:
            scaler.load_state_dict(ck["scaler"])
        for p, (_, s) in zip(plugins, ck["plugins"]):
            p.load_state_dict(s)
        history.load_state_dict(ck["history"])
        torch.set_rng_state(ck["rng"]["torch"])
        data_gen.set_state(ck["rng"]["data"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        if ck["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        loop.__dict__.update(dataclasses.asdict(LoopProgress(**ck["loop"])))  # a checkpoint without "skipped" too
        if rank != 0:  # the checkpoint's running sums are of all processes; process 0 carries them on
            loop.window, loop.train = [0.0, 0.0], [0.0, 0.0, 0.0]
        state.step = ck["step"]
        _load_hook_state(state, ck.get("hook_state"))

    if ckpt_path is not None and rank == 0:
        remove_orphans(ckpt_path)  # a write killed half-way leaves its temporary file behind
    for p in plugins:
        p.on_fit_start(state)
    if loop.finished:
        for p in plugins:
            p.on_fit_end(state)
        return history

    net: nn.Module = model
    if distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    total = cfg.epochs * steps_per_epoch
    bar = tqdm(total=total, initial=loop.epoch * steps_per_epoch + loop.batch, disable=not progress or rank,
               desc="train", unit="step", dynamic_ncols=True)
    interrupt = _DeferredInterrupt(enabled=ckpt_path is not None)
    try:
        with interrupt:
            while loop.epoch < cfg.epochs and not loop.stopped:
                epoch = state.epoch = loop.epoch
                model.train()
                groups = plan(epoch)[:steps_per_epoch]
                micro = [b for group in groups[loop.batch:] for b in group]
                sizes = [[len(b) for b in group] for group in groups[loop.batch:]]
                stream = train_batches(train_ds, micro, data_gen, rank, world, cfg.num_workers,
                                       epoch_seed=cfg.seed * 100_003 + epoch,
                                       first=sum(len(group) for group in groups[:loop.batch]))
                for group_sizes in sizes:
                    _train_step(net, [next(stream) for _ in group_sizes], group_sizes, state, plugins, cfg, device,
                                amp, scaler, optimizer, scheduler, loop, mixup)
                    loop.batch += 1
                    bar.update(1)
                    if state.step % cfg.log_every == 0:
                        _log_window(loop, state, optimizer, bar)
                    if interrupt.check(world):
                        save_checkpoint()
                        raise KeyboardInterrupt(f"interrupted at step {state.step}; checkpoint saved to {ckpt_path}"
                                                if ckpt_path else "interrupted")
                    if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                        save_checkpoint()
                # statistics that a skipped step made NaN: before evaluation (in eval mode) logs what they give;
                # non-finite weights are left to the pruner's own check at the epoch's end
                _check_finite_weights(model, state.step, ckpt_path, stats_only=True)
                _end_epoch(state, plugins, loop, eval_ds, eval_name, cfg, device, amp, bar)
                save_checkpoint()
            if cfg.final_test and data.test is not None:
                _final_test(model, data.test, state, plugins, loop, cfg, device, amp)
            loop.finished = True
            save_checkpoint()
    finally:
        bar.close()
    for p in plugins:
        p.on_fit_end(state)
    return history


def _final_test(model: nn.Module, test_ds, state: TrainState, plugins, loop: LoopProgress, cfg: TrainConfig,
                device, amp: bool) -> None:
    """Log the test metrics of the model that training ended with, once.

    Where the epochs evaluate the test split, the last epoch's row already measured it at this step: it is not
    evaluated again unless a plug-in's ``on_epoch_end`` (which runs after that evaluation) may have changed the
    model, and an evaluation that gives the same numbers adds no second row."""
    last = loop.last_test if loop.last_test is not None and loop.last_test["step"] == state.step else None
    if last is not None and not any(_acts_at_epoch_end(p) for p in plugins):
        return
    test = evaluate(model, test_ds, cfg.eval_batch_size, device, amp, cfg.num_workers,
                    amp_dtype=amp_dtype(cfg.amp_dtype))
    if last is not None and all(last[k] == v for k, v in test.items()):
        return
    state.history.log_metrics(test, step=state.step, epoch=max(loop.epoch - 1, 0), split="test")


def _acts_at_epoch_end(plugin: Any) -> bool:
    """Whether ``plugin`` has an ``on_epoch_end`` of its own (one that may change the model), not Callback's."""
    return getattr(type(plugin), "on_epoch_end", None) is not Callback.on_epoch_end


def _hook_state(state: TrainState) -> dict[str, Any]:
    """What hooks set or read between steps and a checkpoint must carry: a stop requested during the epoch and
    the last epoch's metrics."""
    return {"should_stop": bool(state.should_stop), "metrics": dict(state.metrics)}


def _load_hook_state(state: TrainState, saved: dict[str, Any] | None) -> None:
    if saved is not None:  # a checkpoint written before this was kept: nothing to restore
        state.should_stop = saved["should_stop"]
        state.metrics = dict(saved["metrics"])


#: buffers that training updates like weights (normalisation statistics): a NaN batch leaves them non-finite
RUNNING_STATS = ("running_mean", "running_var")


def _check_finite_weights(model: nn.Module, step: int, ckpt_path: Path | None, stats_only: bool = False) -> None:
    """Stop with :class:`DivergedError` when a weight or a normalisation statistic is NaN or infinite (with
    ``stats_only``, a statistic)."""
    tensors = [*(() if stats_only else model.named_parameters()),
               *((n, b) for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in RUNNING_STATS)]
    bad = [n for n, p in tensors if not bool(torch.isfinite(p).all())]
    if bad:
        kept = f"; the checkpoint in {ckpt_path.parent} was not overwritten" if ckpt_path is not None else ""
        raise DivergedError(f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) at "
                            f"step {step}: training diverged{kept}. Lower the learning rate (or other step sizes) "
                            f"and start again")


def _check_even_batches(groups: list[list[torch.Tensor]], world: int, cfg: TrainConfig) -> None:
    """Refuse mixup/cutmix where a process would get an odd batch (timm's Mixup mixes pairs): the last incomplete
    batch of ``drop_last=False``, or a batch split unevenly over processes. Every epoch has the same sizes."""
    for batch in (b for group in groups for b in group):
        odd = [n for n in (len(batch[local_chunk(batch, r, world)]) for r in range(world)) if n % 2]
        if odd:
            where = f" (on {world} processes, one gets {odd[0]})" if world > 1 else ""
            raise ConfigError(f"mixup/cutmix need an even number of images in every batch, but the epoch has a "
                              f"batch of {len(batch)}{where} (batch_size={cfg.batch_size}, drop_last="
                              f"{cfg.drop_last}); use drop_last=True, or a batch size that splits the training "
                              f"split into even batches")


def _mixup(cfg: TrainConfig, num_classes: int):
    if not (cfg.mixup or cfg.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def _train_step(net, batches, sizes: list[int], state: TrainState, plugins, cfg: TrainConfig, device, amp, scaler,
                optimizer, scheduler, loop, mixup=None) -> None:
    """One optimizer step over ``len(batches)`` accumulated micro-batches (each weighted by its share of images).

    Only a step that updates the weights adds its loss and accuracy to the logging window and the epoch's train
    metrics: one dropped for a non-finite loss, or one the loss scaler skipped for non-finite gradients, adds
    nothing and is counted in ``skipped_steps`` instead."""
    total_size = sum(sizes)
    optimizer.zero_grad(set_to_none=True)
    measured = [0.0, 0.0, 0.0]  # loss sum, correct, images: counted only when the whole step is taken
    for i, ((x, y), size) in enumerate(zip(batches, sizes)):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            micro = _micro_step(net, x, y, size / total_size, state, plugins, cfg, device, amp, scaler, mixup)
        if micro is None:
            if cfg.nonfinite == "raise":
                raise DivergedError(
                    f"non-finite loss at step {state.step + 1} (epoch {state.epoch + 1}): training diverged. Lower "
                    f"the learning rate, or pass nonfinite='skip' to drop such steps; checkpoints already written "
                    f"are left as they were")
            _skip_step(state, plugins, optimizer, scheduler, loop)
            return
        measured = [a + b for a, b in zip(measured, micro)]
    state.grad_scale = float(scaler.get_scale()) if scaler is not None else 1.0
    if scaler is not None:
        scaler.unscale_(optimizer)
    for p in plugins:
        p.after_backward(state)
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
        state.step_skipped = float(scaler.get_scale()) < state.grad_scale  # the scaler backs off after an overflow
    else:
        optimizer.step()
        state.step_skipped = False
    if state.step_skipped:  # the scaler found inf/NaN gradients: like a non-finite loss, no update to measure
        _log_skipped(state, loop)
    else:
        loop.window[0] += measured[0]
        loop.window[1] += measured[2]
        loop.train = [a + b for a, b in zip(loop.train, measured)]
    _count_step(state, plugins, scheduler, loop)


def _skip_step(state: TrainState, plugins, optimizer, scheduler, loop) -> None:
    """Drop an optimizer step whose loss was not finite: no update; schedules and hooks still count the step."""
    optimizer.zero_grad(set_to_none=True)
    state.grad_scale, state.step_skipped = 1.0, True  # hooks drop what they hold outside the optimizer
    _log_skipped(state, loop)
    with warnings.catch_warnings():  # torch warns that a schedule stepped without the optimizer: intended here
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        _count_step(state, plugins, scheduler, loop)


def _log_skipped(state: TrainState, loop) -> None:
    """Count a step that made no update (a non-finite loss, or gradients the loss scaler found non-finite) in
    the History's running ``skipped_steps``, logged at that step."""
    loop.skipped += 1
    state.history.log_metric("skipped_steps", float(loop.skipped), step=state.step + 1, epoch=state.epoch,
                             split="train")


def _count_step(state: TrainState, plugins, scheduler, loop) -> None:
    """Advance the schedules and the step count, then call the plug-ins' ``after_step``."""
    loop.lr = scheduler.optimizer.param_groups[0]["lr"]  # what this step used: the History logs it at this step
    scheduler.step()
    state.step += 1
    for p in plugins:
        p.after_step(state)


def _micro_step(net, x, y, weight: float, state: TrainState, plugins, cfg: TrainConfig, device, amp, scaler,
                mixup) -> tuple[float, int, int] | None:
    """Forward and backward of one micro-batch, returning its loss sum, correct predictions and images; None (and
    no backward) when its loss is not finite."""
    x, y = to_model_input(x, state.model, device), y.to(device, non_blocking=True)
    soft = None
    if mixup is not None:
        x, soft = mixup(x, y)
    with autocast(device, amp, amp_dtype(cfg.amp_dtype)):
        out = net(x)
    loss = task_loss(out, soft if soft is not None else y, cfg.label_smoothing)
    state.inputs, state.targets, state.soft_targets, state.outputs, state.loss = x, y, soft, out, loss
    state.backward = functools.partial(_backward, weight=weight, scaler=scaler)
    total = loss
    for p in plugins:
        extra = p.extra_loss(state)
        if extra is not None:
            total = total + extra
    if weight != 1.0:
        total = total * weight
    finite = bool(torch.isfinite(total.detach()))
    if state.world_size > 1:  # every process must take the same branch (backward all-reduces)
        flag = torch.tensor([0.0 if finite else 1.0])
        dist_utils.all_reduce_sum(flag)
        finite = flag.item() == 0
    if not finite:
        return None
    _backward(total, 1.0, scaler)
    n = len(y)
    return loss.item() * n, (out.detach().argmax(1) == y).sum().item(), n


def _backward(term: torch.Tensor, weight: float, scaler) -> None:
    """Back-propagate a loss term as the micro-batch's total: times its share ``weight``, then the AMP scale."""
    if weight != 1.0:
        term = term * weight
    (scaler.scale(term) if scaler is not None else term).backward()


def _log_window(loop, state: TrainState, optimizer, bar) -> None:
    t = dist_utils.all_reduce_sum(torch.tensor(loop.window, dtype=torch.float64))
    lr = loop.lr if loop.lr is not None else optimizer.param_groups[0]["lr"]
    loop.window = [0.0, 0.0]
    if t[1].item() == 0:  # every step of the window was skipped (no update): there is no loss to report
        state.history.log_metrics({"lr": lr}, step=state.step, epoch=state.epoch, split="train")
        return
    loss = t[0].item() / t[1].item()
    state.history.log_metrics({"loss": loss, "lr": lr}, step=state.step, epoch=state.epoch, split="train")
    bar.set_postfix(epoch=state.epoch + 1, loss=f"{loss:.3f}", refresh=False)


def _end_epoch(state: TrainState, plugins, loop, eval_ds, split: str, cfg: TrainConfig, device, amp,
               bar) -> None:
    t = dist_utils.all_reduce_sum(torch.tensor(loop.train, dtype=torch.float64))
    n = t[2].item()
    if n > 0:
        metrics = {"train_loss": t[0].item() / n, "train_acc": t[1].item() / n}
        state.history.log_metrics({"epoch_loss": metrics["train_loss"], "acc": metrics["train_acc"]},
                                  step=state.step, epoch=state.epoch, split="train")
    else:  # every step of the epoch was skipped (no update): nothing was measured, and the History says nothing
        metrics = {"train_loss": math.nan, "train_acc": math.nan}
    loop.last_test = None
    if eval_ds is not None:
        ev = evaluate(state.model, eval_ds, cfg.eval_batch_size, device, amp, cfg.num_workers,
                      amp_dtype=amp_dtype(cfg.amp_dtype))
        state.history.log_metrics(ev, step=state.step, epoch=state.epoch, split=split)
        metrics.update({f"{split}_loss": ev["loss"], f"{split}_acc": ev["acc"]})
        if split == "test":
            loop.last_test = {"step": state.step, **ev}
    state.metrics = metrics
    for p in plugins:
        p.on_epoch_end(state)
    bar.set_postfix(epoch=state.epoch + 1, **{k: f"{v:.3f}" for k, v in metrics.items()})
    loop.train = [0.0, 0.0, 0.0]
    loop.batch = 0
    loop.epoch += 1
    loop.stopped = bool(state.should_stop)

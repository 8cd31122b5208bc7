"""Overhead of recording History traces and mask events, as a share of training time.

Times every call into the recording code during real runs (nested calls counted once) and divides by the wall
time of the whole fit:

- P3B (the ``cpu-digits`` preset model on digits, 3 updates per epoch and, as a stress case, 20): the per-update record
  (benefits, scores, keep ratios, kept parameters, one event per flipped gate element), the probes' window
  bookkeeping and every History append, plus the training loop's loss logging;
- ART (LeNet-300-100 on 20k Fashion-MNIST images: a worst case, its epochs take a fraction of a second while the
  traces are taken once per epoch): the regularizer statistics, the kept-set bookkeeping and magnitude / gradient
  profile snapshots (every 5 ART epochs by default, every epoch as a stress case), the final overlap trace and every
  History append.

Usage: python benchmarks/bench_history.py [--quick] [--out benchmarks/results/history.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import sparselab as sl
from sparselab.experiments.p3b import load_data, p3b_preset, source_model
from sparselab.history import History
from sparselab.probes.block_benefit import BlockBenefit
from sparselab.pruners.art import ART
from sparselab.pruners.p3b import P3B
from sparselab.pruners.regularizers import Regularizer
from sparselab.training import loop

HISTORY_METHODS = [(History, n) for n in ("log_metric", "log_metrics", "log_blocks", "log_events")]
P3B_RECORDING = [(P3B, "_record"), (BlockBenefit, "log"), (loop, "_log_window")] + HISTORY_METHODS
ART_RECORDING = [(Regularizer, "stats"), (ART, "_snapshot"), (ART, "on_fit_end"), (loop, "_log_window")] + \
    HISTORY_METHODS


@contextmanager
def recording_timer(targets):
    """Patch ``targets`` so that time spent inside any of them (outermost call only) is summed."""
    spent = {"seconds": 0.0, "calls": 0}
    depth = [0]
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]

    def wrap(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - t0
                spent["calls"] += 1
                depth[0] -= 1

        return timed

    for owner, name, fn in originals:
        setattr(owner, name, wrap(fn))
    try:
        yield spent
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def p3b_case(updates_per_epoch: int, epochs: int, steps: int | None):
    preset = p3b_preset("cpu-digits")
    data = load_data(preset)
    torch.manual_seed(0)
    model = source_model(preset, data)
    schedule = sl.P3BSchedule(warmup=0, sparsify=1, finalize=epochs, updates_per_epoch=updates_per_epoch)
    pruner = sl.P3B(model, 0.5, schedule=schedule, patch_probe="linear")
    return lambda: sl.fit(model, data, epochs=epochs, pruner=pruner, progress=False, max_steps_per_epoch=steps,
                          **preset.fit)


def art_case(epochs: int, limit: int, profile_every: int = 5):
    data = sl.data.load("fashion_mnist", limit=limit)
    torch.manual_seed(0)
    model = sl.models.create("lenet_300_100")
    pruner = sl.ART(model, 0.98, warmup_epochs=1, max_art_epochs=epochs - 1, profile_every=profile_every)
    return lambda: sl.fit(model, data, epochs=pruner.max_epochs, pruner=pruner, progress=False, optimizer="sgd",
                          lr=0.05, batch_size=128)


def measure(name, run, targets):
    with recording_timer(targets) as spent:
        t0 = time.perf_counter()
        history = run()
        total = time.perf_counter() - t0
    row = {"case": name, "fit_s": total, "recording_s": spent["seconds"], "calls": spent["calls"],
           "share": spent["seconds"] / total, "rows": {k: len(history.table(k)) for k in ("metrics", "blocks",
                                                                                          "events")}}
    print(f"{name:40s} recording {spent['seconds'] * 1000:8.1f} ms of {total:6.1f} s = {row['share']:.2%} "
          f"({row['rows']['events']} events, {row['rows']['blocks']} block rows)", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and epochs")
    parser.add_argument("--out", default="benchmarks/results/history.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    steps = 10 if args.quick else None
    epochs, limit = (4, 5000) if args.quick else (11, 20000)
    rows = [
        measure("P3B, 3 updates per epoch", p3b_case(3, 3, steps), P3B_RECORDING),
        measure("P3B, 20 updates per epoch (stress)", p3b_case(20 if not args.quick else 10, 3, steps),
                P3B_RECORDING),
        measure("ART at 98 %, profile every 5 epochs", art_case(epochs, limit), ART_RECORDING),
        measure("ART at 98 %, profile every epoch (stress)", art_case(epochs, limit, profile_every=1),
                ART_RECORDING),
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": 2, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

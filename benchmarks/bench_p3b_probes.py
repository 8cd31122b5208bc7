"""P3B training-step cost against plain fine-tuning, and cheaper block-benefit estimators against the reference.

Every estimator runs the same P3B transfer experiment (the ``cpu`` preset: Fashion-MNIST ViT pruned to 50 % while
fine-tuned on digits) with the same seeds. Reported per estimator:

- step cost: mean CPU time of a training step (data, forward, backward, probes, gates, optimizer; epoch-end
  evaluations excluded) over the whole pruning run, divided by that of plain fine-tuning of the same model.
  Process CPU time, not wall time: runs follow each other, and on this shared machine the wall time of one run
  against the next drifts by tens of percent with the neighbours' load;
- agreement with the reference run of the same seed: Spearman correlation of the final per-block keep ratios and of
  the benefit ranking (the block importance averaged over all updates), averaged over seeds;
- accuracy: the compact model's test accuracy after its fine-tune, mean over seeds, and its difference to the
  reference against the reference's seed spread.

``uniform`` (the same gates and Taylor selection, no probes) separates the cost of the probes from that of the
masking machinery.

Usage: python benchmarks/bench_p3b_probes.py [--quick] [--out benchmarks/results/p3b_probes.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import sparselab as sl
from sparselab.experiments.p3b import load_data, p3b_preset, run_p3b
from sparselab.training.pruner import Pruner

ESTIMATORS: dict[str, dict] = {  # name: (patch probe, BlockBenefit options)
    "reference (conv2, every step, whole batch)": dict(patch_probe="conv2"),
    "conv1 patch probe": dict(patch_probe="conv1"),
    "linear patch probe": dict(patch_probe="linear"),
    "class-token probe only": dict(patch_probe=None),
    "conv2, every 4th step": dict(patch_probe="conv2", probe_every=4),
    "conv2, 1/4 of the batch": dict(patch_probe="conv2", probe_fraction=0.25),
    "conv2, every 4th step, 1/4 of the batch": dict(patch_probe="conv2", probe_every=4, probe_fraction=0.25),
    "conv2, every 8th step, 1/4 of the batch": dict(patch_probe="conv2", probe_every=8, probe_fraction=0.25),
}
REFERENCE = next(iter(ESTIMATORS))


class StepClock(Pruner):
    """Process CPU time between consecutive optimizer steps, leaving out the epoch ends (evaluation)."""

    def __init__(self):
        self.intervals: list[float] = []
        self._last: float | None = None

    def on_fit_start(self, state) -> None:
        self._last = None

    def after_step(self, state) -> None:
        now = time.process_time()
        if self._last is not None:
            self.intervals.append(now - self._last)
        self._last = now

    def on_epoch_end(self, state) -> None:
        self._last = None

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass


def keep_ratios(history: sl.History) -> np.ndarray:
    goal = history.blocks[history.blocks.metric == "keep_goal"]
    last = goal[goal.step == goal.step.max()]
    return last.sort_values("block").value.to_numpy()


def mean_importance(history: sl.History) -> np.ndarray:
    imp = history.blocks[history.blocks.metric == "importance"]
    return imp.groupby("block").value.mean().sort_index().to_numpy()


def one_run(preset, method, seed, data, options):
    clock = StepClock()
    probe = dict(options)
    patch = probe.pop("patch_probe", preset.patch_probe)
    run = run_p3b(preset.replace(patch_probe=patch, probe_options=probe), method, 0.5, seed, data=data,
                  progress=False, measure_latency=False, callbacks=[clock])
    return run, statistics.fmean(clock.intervals)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed and a shortened schedule")
    parser.add_argument("--out", default="benchmarks/results/p3b_probes.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    preset = p3b_preset("cpu")
    if args.quick:
        preset = preset.replace(schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=3),
                                fit={**preset.fit, "max_steps_per_epoch": 12}, finetune_epochs=1, seeds=(0,))
    else:
        preset = preset.replace(seeds=(0, 1, 2))
    data = load_data(preset)
    seeds = list(preset.seeds)
    plain, rows = {}, {}
    for seed in seeds:
        _, plain[seed] = one_run(preset, "dense", seed, data, {})
    jobs = [("uniform (no probes)", "uniform", {})] + [(name, "p3b", opts) for name, opts in ESTIMATORS.items()]
    runs = {}
    for name, method, opts in jobs:
        for seed in seeds:
            run, step = one_run(preset, method, seed, data, opts)
            runs[name, seed] = run
            rows.setdefault(name, []).append({"seed": seed, "step_ratio": step / plain[seed], "acc": run.result["acc"],
                                              "achieved_ratio": run.result["achieved_ratio"]})
            print(f"{name:44s} seed {seed}: step {step / plain[seed]:.2f}x plain, acc {run.result['acc']:.4f}",
                  flush=True)
    table = []
    ref_acc = [r["acc"] for r in rows[REFERENCE]]
    for name, method, _ in jobs:
        entry = {"estimator": name, "step_ratio": statistics.fmean(r["step_ratio"] for r in rows[name]),
                 "acc": statistics.fmean(r["acc"] for r in rows[name]), "per_seed": rows[name]}
        entry["acc_diff"] = entry["acc"] - statistics.fmean(ref_acc)
        if method == "p3b":
            keep = [spearmanr(keep_ratios(runs[name, s].history), keep_ratios(runs[REFERENCE, s].history))[0]
                    for s in seeds]
            rank = [spearmanr(mean_importance(runs[name, s].history),
                              mean_importance(runs[REFERENCE, s].history))[0] for s in seeds]
            entry["keep_spearman"] = float(np.mean(keep))
            entry["benefit_spearman"] = float(np.mean(rank))
        table.append(entry)
    seed_std = statistics.stdev(ref_acc) if len(ref_acc) > 1 else float("nan")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": preset.name, "quick": args.quick, "seeds": seeds,
                               "reference_acc_seed_std": seed_std, "rows": table}, indent=2))
    print(f"\nreference accuracy seed std: {seed_std:.4f}")
    print(f"{'estimator':44s} {'step/plain':>10s} {'keep rho':>9s} {'benefit rho':>12s} {'acc':>7s} {'Δacc':>7s}")
    for e in table:
        print(f"{e['estimator']:44s} {e['step_ratio']:9.2f}x {e.get('keep_spearman', float('nan')):9.2f} "
              f"{e.get('benefit_spearman', float('nan')):12.2f} {e['acc']:7.4f} {e['acc_diff']:+7.4f}")


if __name__ == "__main__":
    main()

"""P3B training-step cost against plain fine-tuning, and cheaper block-benefit estimators against the reference.

Two passes over the same estimators:

- step cost (the median of ``COST_REPEATS`` passes, run round robin over the estimators): P3B with each estimator
  prunes the ``cpu-digits`` preset's model (Fashion-MNIST ViT on digits, 50 %) over a shortened schedule (warm-up,
  sparsify and finalize phases all present); after every P3B step a plain fine-tuning step of a second copy of the
  model runs on the same batch, with the optimizer :func:`sparselab.fit` builds. The ratio is the mean wall
  time of the P3B steps (data, forward, backward, probes, gates, optimizer, mask updates; epoch-end evaluations
  excluded) over that of the plain steps; with patch probes on every k-th step only, steps with and without them
  are averaged apart and weighted 1/k and 1 - 1/k (the short run need not hold whole periods). Interleaving step
  by step keeps the neighbours' load on this shared machine out of the ratio; ``dense`` (no pruner) is the control
  and should read 1.0;
- agreement: the full ``cpu-digits`` preset run with every estimator and each seed; Spearman correlation with the
  reference run of the same seed of the final per-block keep ratios and of the benefit ranking (block importance
  averaged over all updates), averaged over seeds; the compact model's test accuracy after its fine-tune, mean over
  seeds, and its difference to the reference's against the reference's seed spread.

``uniform`` (the same gates and Taylor selection, no probes) separates the cost of the probes from that of the
masking machinery.

The ``cpu-digits`` model is tiny (17 tokens of width 128, a 80 ms step), so per-operation overheads weigh more
there than the arithmetic does. A third pass times the same step ratio on the model family the paper prunes:
DeiT-Tiny at 224 px (random weights and images, batch 32, P3B at 50 %), over the three phases with enough steps per
epoch (at least 7) that some of FAST_PROBES' patch-probe steps are timed (the first step of each epoch is not).
Accuracy cannot be compared at that scale on this machine, so this pass reports cost only.

Usage: python benchmarks/bench_p3b_probes.py [--quick] [--out benchmarks/results/p3b_probes.json]
       python benchmarks/bench_p3b_probes.py --deit-only   # only the DeiT-Tiny pass, merged into --out
       python benchmarks/bench_p3b_probes.py --agreement-only "ESTIMATOR" ...   # agreement again, into --out
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from scipy.stats import spearmanr

import sparselab as sl
from sparselab.callbacks import Pruner
from sparselab.experiments.p3b import load_data, p3b_preset, run_p3b, source_model
from sparselab.pruners import p3b as p3b_module
from sparselab.structure.gates import Gates
from sparselab.training.config import TrainConfig
from sparselab.training.optim import build_optimizer, param_groups


def subsampled_conv2(every: int = 1, fraction: float = 1.0) -> tuple[str, dict]:
    """The row of the reference patch probe run on every ``every``-th step and a ``fraction`` of the batch: its name
    (e.g. "conv2 patch probe, every 16th step, 1/4 of the batch") and its options."""
    suffix = "th" if 10 <= every % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(every % 10, "th")
    parts = ([f"every {every}{suffix} step"] if every > 1 else []) + \
        ([f"1/{round(1 / fraction)} of the batch"] if fraction < 1 else [])
    options = dict(patch_probe="conv2", **({"probe_every": every} if every > 1 else {}),
                   **({"probe_fraction": fraction} if fraction < 1 else {}))
    return ", ".join(["conv2 patch probe", *parts]), options


ESTIMATORS: dict[str, dict] = {  # name: patch probe and BlockBenefit options (class-token probes always run)
    "reference (conv2, every step, whole batch)": dict(patch_probe="conv2"),
    "conv1 patch probe": dict(patch_probe="conv1"),
    "linear patch probe": dict(patch_probe="linear"),
    "class-token probe only": dict(patch_probe=None),
    **dict(subsampled_conv2(every, fraction) for every, fraction in (
        (4, 1.0), (1, 0.25), (4, 0.25), (8, 0.25), (8, 0.125), (16, 0.25), (16, 0.125), (32, 0.25), (32, 0.125))),
}
REFERENCE = next(iter(ESTIMATORS))
#: step-cost passes over all estimators (the reported ratio is their median; one run spreads by a few percent)
COST_REPEATS = 5
#: the row of sl.probes.FAST_PROBES
FAST = next(name for name, o in ESTIMATORS.items() if o == {"patch_probe": "conv2", **sl.probes.FAST_PROBES})
QUICK = (REFERENCE, "class-token probe only", FAST)  # the estimators --quick runs


class LockstepClock(Pruner):
    """After every step of the run it joins, times one plain fine-tuning step of its own model on the same batch
    (with the optimizer :func:`sparselab.fit` builds: AdamW, fused, no decay on biases and norms); sums both,
    leaving out the epoch ends (evaluation)."""

    def __init__(self, plain: torch.nn.Module, lr: float, weight_decay: float, probe_every: int = 1):
        self.plain = plain
        self.plain.train()
        cfg = TrainConfig(lr=lr, weight_decay=weight_decay)  # built as sl.fit builds the P3B run's optimizer
        self.optimizer = build_optimizer(param_groups(plain, cfg), cfg)
        self.probe_every = probe_every
        self.timed: list[tuple[bool, float, float]] = []  # (patch probes ran, run step s, plain step s) per step
        self._end: float | None = None

    def after_step(self, state) -> None:
        start = time.perf_counter()
        if self._end is not None:
            run_s = start - self._end
            x, y = state.inputs.detach().clone(), state.targets
            loss = torch.nn.functional.cross_entropy(self.plain(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss.item()
            self.timed.append((state.step % self.probe_every == 0, run_s, time.perf_counter() - start))
        self._end = time.perf_counter()

    @property
    def steps(self) -> int:
        return len(self.timed)

    def step_ratio(self) -> float:
        """Run time over plain time per step. With patch probes on every k-th step only, the steps with and without
        them are averaged apart and weighted 1/k and 1 - 1/k: a short run holds whole periods only by chance (with
        k = 32 and 57 timed steps, one probe step instead of 1.8), which would bias a plain sum."""
        k = self.probe_every
        strata = [(1.0, self.timed)] if k == 1 else \
            [(1 / k, [t for t in self.timed if t[0]]), (1 - 1 / k, [t for t in self.timed if not t[0]])]
        if any(not rows for _, rows in strata):
            raise RuntimeError(f"no timed step with and without patch probes (every {k}th step); run longer")
        run = sum(w * statistics.fmean(t[1] for t in rows) for w, rows in strata)
        plain = sum(w * statistics.fmean(t[2] for t in rows) for w, rows in strata)
        return run / plain

    @property
    def plain_s(self) -> float:
        return sum(t[2] for t in self.timed)

    def on_epoch_end(self, state) -> None:
        self._end = None

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


def patch_probe_period(pruner: sl.P3B | None) -> int:
    """Every how many steps the pruner's patch probes run (1 without patch probes: every step is alike)."""
    probes = None if pruner is None else pruner.probes
    return probes.probe_every if probes is not None and probes.patch_probe else 1


def step_cost(preset, data, method: str, options: dict, max_steps: int | None) -> dict:
    """P3B steps over interleaved plain steps, on a shortened schedule (see the module docstring)."""
    schedule = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=preset.schedule.updates_per_epoch)
    torch.manual_seed(0)
    model, plain = source_model(preset, data), source_model(preset, data)
    pruner = None
    if method != "dense":
        probe = dict(options)
        patch = probe.pop("patch_probe", None)
        site = probe.pop("gates_on", "weights")
        with mock.patch.object(p3b_module, "Gates", functools.partial(Gates, on=site)):
            pruner = sl.P3B(model, 0.5, schedule=schedule, allocation=method, num_classes=data.num_classes,
                            patch_probe=patch, **probe)
    clock = LockstepClock(plain, lr=preset.fit["lr"], weight_decay=preset.fit["weight_decay"],
                          probe_every=patch_probe_period(pruner))
    fit_options = {**preset.fit, "max_steps_per_epoch": max_steps}
    sl.fit(model, data, epochs=schedule.finalize, pruner=pruner, callbacks=[clock], progress=False, seed=0,
           **fit_options)
    return {"step_ratio": clock.step_ratio(), "steps": clock.steps, "plain_step_ms": clock.plain_s /
            clock.steps * 1000}


#: the previous FAST_PROBES (patch probes on every 16th step and a quarter of the batch), timed on DeiT-Tiny too
PATCH_CADENCE = "conv2 patch probe, every 16th step, 1/4 of the batch"
#: the DeiT-Tiny pass: estimators timed (none for dense), steps per epoch over warm-up, sparsify, finalize
DEIT_JOBS = (("dense (control)", None), ("uniform (no probes)", dict(allocation="uniform")),
             *((name, dict(allocation="benefit", **ESTIMATORS[name]))
               for name in dict.fromkeys(("class-token probe only", FAST, PATCH_CADENCE, REFERENCE))))
#: steps per epoch: at least 7, and enough that the patch-probe steps of every job include one that is timed (the
#: first step of each of the three epochs is not)
DEIT_STEPS_PER_EPOCH = max(7, *(math.ceil((o.get("probe_every", 1) + 1) / 3) for _, o in DEIT_JOBS if o))
DEIT_BATCH = 32


def deit_step_cost(options: dict | None) -> dict:
    """P3B steps over interleaved plain steps on DeiT-Tiny, 224 px (see the module docstring)."""
    from sparselab.data.datasets import DataBundle, TensorImages

    torch.manual_seed(0)
    model = sl.models.create("deit_tiny_patch16_224", num_classes=10)
    plain = sl.models.create("deit_tiny_patch16_224", num_classes=10)
    n = DEIT_BATCH * (DEIT_STEPS_PER_EPOCH + 1)
    images, labels = torch.randn(n, 3, 224, 224), torch.arange(n) % 10
    data = DataBundle(name="random", train=TensorImages(images, labels), val=None,
                      test=TensorImages(images[:DEIT_BATCH], labels[:DEIT_BATCH]), num_classes=10, in_chans=3,
                      image_size=224)
    schedule = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2)
    pruner = None if options is None else sl.P3B(model, 0.5, schedule=schedule, num_classes=10, **options)
    clock = LockstepClock(plain, lr=1e-4, weight_decay=0.05, probe_every=patch_probe_period(pruner))
    sl.fit(model, data, epochs=schedule.finalize, pruner=pruner, callbacks=[clock], batch_size=DEIT_BATCH,
           max_steps_per_epoch=DEIT_STEPS_PER_EPOCH, progress=False, final_test=False, lr=1e-4, weight_decay=0.05)
    return {"step_ratio": clock.step_ratio(), "steps": clock.steps,
            "plain_step_ms": clock.plain_s / clock.steps * 1000}


def deit_pass() -> list[dict]:
    rows = []
    for name, options in DEIT_JOBS:
        rows.append({"estimator": name, **deit_step_cost(options)})
        print(f"DeiT-Tiny {name:44s} step {rows[-1]['step_ratio']:.2f}x plain ({rows[-1]['steps']} steps)",
              flush=True)
    return rows


def agreement_run(preset, method, seed, data, options):
    probe = dict(options)
    patch = probe.pop("patch_probe", preset.patch_probe)
    return run_p3b(preset.replace(patch_probe=patch, probe_options=probe), method, 0.5, seed, data=data,
                   progress=False, measure_latency=False)


def agreement_runs(preset, data, names: list[str]) -> tuple[dict, dict]:
    """P3B with each named estimator over the preset's seeds: the runs by (name, seed), and per name the accuracy
    and achieved ratio of each seed."""
    runs, rows = {}, {}
    for name in names:
        for seed in preset.seeds:
            run = agreement_run(preset, "p3b", seed, data, ESTIMATORS[name])
            runs[name, seed] = run
            rows.setdefault(name, []).append({"seed": seed, "acc": run.result["acc"],
                                              "achieved_ratio": run.result["achieved_ratio"]})
            print(f"{name:44s} seed {seed}: acc {run.result['acc']:.4f}", flush=True)
    return runs, rows


def agreement(name: str, runs: dict, rows: list[dict], ref_acc: list[float], seeds: list[int]) -> dict:
    """Accuracy, its difference to the reference's, and the Spearman ρ of keep ratios and importance, over seeds."""
    acc = statistics.fmean(r["acc"] for r in rows)
    return {"acc": acc, "acc_diff": acc - statistics.fmean(ref_acc), "per_seed": rows,
            "keep_spearman": float(np.mean([
                spearmanr(keep_ratios(runs[name, s].history), keep_ratios(runs[REFERENCE, s].history))[0]
                for s in seeds])),
            "benefit_spearman": float(np.mean([
                spearmanr(mean_importance(runs[name, s].history), mean_importance(runs[REFERENCE, s].history))[0]
                for s in seeds]))}


def agreement_again(out: Path, names: list[str]) -> None:
    """Measure the agreement of ``names`` again and replace it in ``out``, keeping their step cost (for a change
    of how the benefit is turned into an allocation, which leaves a step's cost alone). The reference runs again
    too and must reproduce its recorded accuracies, or nothing is written."""
    results = json.loads(out.read_text())
    unknown = [n for n in names if n not in ESTIMATORS or n == REFERENCE]
    if unknown:
        raise SystemExit(f"--agreement-only: not an estimator other than the reference: {unknown}")
    preset = p3b_preset("cpu-digits").replace(seeds=tuple(results["seeds"]))
    data = load_data(preset)
    seeds = list(preset.seeds)
    runs, rows = agreement_runs(preset, data, [REFERENCE, *names])
    by_name = {r["estimator"]: r for r in results["rows"]}
    if [r["acc"] for r in rows[REFERENCE]] != [r["acc"] for r in by_name[REFERENCE]["per_seed"]]:
        raise SystemExit("the reference runs no longer reproduce the recorded accuracies; run the whole benchmark")
    ref_acc = [r["acc"] for r in rows[REFERENCE]]
    for name in names:
        by_name[name].update(agreement(name, runs, rows[name], ref_acc, seeds))
    out.write_text(json.dumps(results, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, a shortened schedule, and only the reference, class-token and fast estimators")
    parser.add_argument("--out", default="benchmarks/results/p3b_probes.json")
    parser.add_argument("--cost-only", action="store_true", help="only the step-cost pass (prints, writes nothing)")
    parser.add_argument("--deit-only", action="store_true",
                        help="only the DeiT-Tiny step-cost pass, merged into the existing --out file")
    parser.add_argument("--agreement-only", nargs="+", metavar="ESTIMATOR",
                        help="only the agreement pass of these estimators, replaced in the existing --out file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.agreement_only:
        agreement_again(Path(args.out), args.agreement_only)
        return
    if args.deit_only:
        out = Path(args.out)
        results = json.loads(out.read_text())
        results["deit_rows"] = deit_pass()
        results["fast_row"] = FAST
        out.write_text(json.dumps(results, indent=2))
        return
    preset = p3b_preset("cpu-digits")
    if args.quick:
        preset = preset.replace(schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=3),
                                fit={**preset.fit, "max_steps_per_epoch": 12}, finetune_epochs=1, seeds=(0,))
    else:
        preset = preset.replace(seeds=(0, 1, 2))
    data = load_data(preset)
    seeds = list(preset.seeds)
    estimators = {k: v for k, v in ESTIMATORS.items() if not args.quick or k in QUICK}
    jobs = [("dense (control)", "dense", {}), ("uniform (no probes)", "uniform", {})] + \
        [(name, "benefit", opts) for name, opts in estimators.items()]
    # the same machinery with the gates multiplying the activations (forward hooks), the former implementation
    on_activations = [] if args.quick else [
        (f"{FAST} (gates on activations)", "benefit", {**ESTIMATORS[FAST], "gates_on": "activations"}),
        ("uniform (no probes, gates on activations)", "uniform", {"gates_on": "activations"})]
    runs_per_job: dict[str, list[dict]] = {}
    for rep in range(1 if args.quick else COST_REPEATS):  # round robin: a slow spell of the machine hits every job
        for name, method, opts in jobs + on_activations:
            r = step_cost(preset, data, method, opts, 12 if args.quick else None)
            runs_per_job.setdefault(name, []).append(r)
            print(f"{name:44s} step {r['step_ratio']:.2f}x plain ({r['steps']} steps, repeat {rep + 1})", flush=True)
    costs = {name: {"step_ratio": statistics.median(r["step_ratio"] for r in rs),
                    "step_ratio_runs": [r["step_ratio"] for r in rs], "steps": rs[0]["steps"],
                    "plain_step_ms": statistics.median(r["plain_step_ms"] for r in rs)}
             for name, rs in runs_per_job.items()}
    if args.cost_only:
        return
    runs, rows = agreement_runs(preset, data, list(estimators))
    table = []
    ref_acc = [r["acc"] for r in rows[REFERENCE]]
    for name, method, _ in jobs + on_activations:
        entry = {"estimator": name, **costs[name]}
        if name in rows:
            entry.update(agreement(name, runs, rows[name], ref_acc, seeds))
        table.append(entry)
    seed_std = statistics.stdev(ref_acc) if len(ref_acc) > 1 else float("nan")
    deit_rows = [] if args.quick else deit_pass()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": preset.name, "quick": args.quick, "seeds": seeds,
                               "reference_acc_seed_std": seed_std, "rows": table, "deit_rows": deit_rows,
                               "fast_row": FAST},
                              indent=2))
    print(f"\nreference accuracy seed std: {seed_std:.4f}")
    print(f"{'estimator':44s} {'step/plain':>10s} {'keep rho':>9s} {'benefit rho':>12s} {'acc':>7s} {'Δacc':>7s}")
    nan = float("nan")
    for e in table:
        print(f"{e['estimator']:44s} {e['step_ratio']:9.2f}x {e.get('keep_spearman', nan):9.2f} "
              f"{e.get('benefit_spearman', nan):12.2f} {e.get('acc', nan):7.4f} {e.get('acc_diff', nan):+7.4f}")


if __name__ == "__main__":
    main()

"""What head pruning costs in accuracy: P3B pruning whole heads (``qkv_unit="head"``, an extension) against P3B
pruning head dimensions (the reference), on the ``cpu-digits`` preset at 50 % and 75 %.

Both run the preset's full recipe (fine-tuning while pruning, then the compact model's fine-tune) with the same
seeds; the figure is the compact model's test accuracy after its fine-tune, and the paired difference heads − dims
over seeds with its 95 % interval (:func:`sparselab.stats.paired_mean_ci`). The speed side is measured by
``bench_compact_latency.py`` on DeiT.

Usage: python benchmarks/bench_head_pruning.py [--quick] [--out benchmarks/results/head_pruning.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from sparselab.experiments.p3b import load_data, p3b_preset, run_p3b
from sparselab.stats import paired_mean_ci

UNITS = ("dim", "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 50 % only, a shortened schedule")
    parser.add_argument("--out", default="benchmarks/results/head_pruning.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    preset = p3b_preset("cpu-digits")
    seeds, ratios = ((0,), (0.5,)) if args.quick else ((0, 1, 2, 3, 4), (0.5, 0.75))
    if args.quick:
        preset = preset.replace(fit={**preset.fit, "max_steps_per_epoch": 4}, finetune_epochs=1)
    data = load_data(preset)
    runs = []
    for ratio in ratios:
        for seed in seeds:
            for unit in UNITS:
                run = run_p3b(preset, "p3b", ratio, seed, data=data, progress=False, measure_latency=False,
                              pruner_options={"qkv_unit": unit})
                runs.append({"prune_ratio": ratio, "seed": seed, "qkv_unit": unit, "acc": run.result["acc"],
                             "achieved_ratio": run.result["achieved_ratio"]})
                print(f"{ratio:.2f} seed {seed} {unit:4s}: acc {run.result['acc']:.4f} "
                      f"(pruned {run.result['achieved_ratio']:.3f})", flush=True)
    table = pd.DataFrame(runs)
    summary = []
    for ratio in ratios:
        per = table[table.prune_ratio == ratio].pivot(index="seed", columns="qkv_unit", values="acc")
        diff, low, high, n = paired_mean_ci(per["head"], per["dim"])
        summary.append({"prune_ratio": ratio, "acc_dim": float(per["dim"].mean()),
                        "acc_head": float(per["head"].mean()), "diff": diff, "low": low, "high": high, "n": n})
        print(f"{ratio:.2f}: heads − dims {diff * 100:+.2f} points [{low * 100:+.2f}, {high * 100:+.2f}], {n} seeds")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": preset.name, "quick": args.quick, "seeds": list(seeds), "runs": runs,
                               "summary": summary}, indent=2))


if __name__ == "__main__":
    main()

"""How fast the interactive explorers of notebook 05 answer a slider move, on the ``cpu`` models.

The explorers are built from :func:`sparselab.experiments.explorers.prepare` (the dense ART model with its
HyperSparse checkpoint, and a P3B run), exactly as the notebook builds them. Each measurement sets a slider (or a
dropdown) to a new value in the kernel and stops the clock when the explorer's ``update`` has returned, i.e. when
its figures and tables hold the new values (what the browser then draws is not included). Every control is moved
through several values; the table reports the median and the slowest response. Goal: ≤ 1 s.

Usage: python benchmarks/bench_explorers.py [--quick] [--out benchmarks/results/explorers.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sparselab.experiments.explorers import prepare
from sparselab.widgets import BudgetExplorer, SparsityExplorer, TraceScrubber


def responses(control, values) -> list[float]:
    """Seconds from setting ``control.value`` to the explorer having updated, for each value (the observers run
    synchronously inside the assignment)."""
    times = []
    for v in values:
        if control.value == v:  # no change, no update
            continue
        t0 = time.perf_counter()
        control.value = v
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny models (seconds to prepare)")
    parser.add_argument("--out", default="benchmarks/results/explorers.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    scale = "tiny" if args.quick else "cpu"
    inputs = prepare(scale, progress=False)
    sparsity = SparsityExplorer(inputs.model, inputs.data, checkpoints=inputs.checkpoints)
    budget = BudgetExplorer(inputs.p3b_history, inputs.p3b_model)
    scrubber = TraceScrubber(inputs.p3b_history)
    rows = []

    def add(explorer: str, control: str, times: list[float]) -> None:
        rows.append({"explorer": explorer, "control": control, "n": len(times), "median_s": statistics.median(times),
                     "max_s": max(times)})
        print(f"{explorer:18s} {control:24s} median {rows[-1]['median_s'] * 1000:6.0f} ms, "
              f"max {rows[-1]['max_s'] * 1000:6.0f} ms", flush=True)

    add("SparsityExplorer", "sparsity slider", responses(sparsity.slider, [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.7]))
    add("SparsityExplorer", "method dropdown", responses(sparsity.method, list(sparsity.method.options)[1:] +
                                                         [sparsity.method.options[0]]))
    add("BudgetExplorer", "prune-ratio slider", responses(budget.slider, [0.3, 0.5, 0.7, 0.9, 0.6, 0.4]))
    steps = scrubber.steps
    picks = [steps[i] for i in sorted({0, len(steps) // 3, len(steps) // 2, 2 * len(steps) // 3, len(steps) - 1})]
    add("TraceScrubber", "update-step slider", responses(scrubber.slider, picks[::-1] + picks[1:2]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "scale": scale, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

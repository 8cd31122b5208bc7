"""Where a compact model's time goes next to the uniform anchor of the same multiply-accumulates.

``bench_compact_latency.py`` times P3B-compacted DeiT models against uniformly narrower timm ViTs of the same
multiply-accumulates (the *anchors*); this benchmark takes the cells of its head-pruned layout (``qkv_unit="head"``,
``pad_to=8``) at 75 % and 90 % and splits the difference by kind of work. For each cell it times the compact model
and the faster anchor interleaved (the *time / anchor* of that table), then profiles forward passes of both with
``torch.profiler`` and sums the time of the top-level ATen operations by :data:`KINDS`:

- ``matrix products`` — the Linear layers (``linear``/``addmm``/``matmul``);
- ``attention`` — the fused attention kernel (``scaled_dot_product_attention``), one score map per head;
- ``GELU`` — the MLP activation, one per hidden unit and token: at the same multiply-accumulates P3B keeps more
  hidden units than the anchors, because it also narrows the residual channels each MLP reads;
- ``LayerNorm``;
- ``residual stream`` — what moves the residual channels: the compact model's channel gathers and ``index_add``
  (which copies the stream and adds a branch into its channels) against the anchor's plain residual adds;
- ``patch embedding`` — the convolution in front of the blocks (the same in both);
- ``other operations`` — reshapes, permutes, concatenations and the like;
- ``between operations`` — the profiled wall time no ATen operation covers (Python, module calls).

Each kind is reported as the compact model's time minus the anchor's, over the anchor's whole profiled time, so the
kinds add up to the profiled ratio minus one. The profiler adds a few microseconds to every operation, which weighs
on batch 1 (the compact model runs more, smaller operations); the unprofiled ratio is reported beside it.

Last, both models are compiled with ``torch.compile`` (inductor, static shapes) and timed interleaved again: what
is left of the difference when Python, module calls and per-operation dispatch are gone and the elementwise work
is fused (the gathers and ``index_add`` into their neighbours). Skipped with ``--quick``.

Usage: python benchmarks/bench_compact_gap.py [--quick] [--out benchmarks/results/compact_gap.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from torch.profiler import ProfilerActivity, profile

from sparselab.structure.compact import compact_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compact_latency as latency  # noqa: E402

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224")
RATIOS = (0.75, 0.9)
VARIANT = "heads, pad 8"
#: kind of work -> the top-level ATen operations that do it (anything else is "other operations")
KINDS = {
    "matrix products": ("aten::linear", "aten::addmm", "aten::matmul", "aten::mm", "aten::bmm"),
    "attention": ("aten::scaled_dot_product_attention", "aten::softmax", "aten::_softmax"),
    "GELU": ("aten::gelu", "aten::gelu_"),
    "LayerNorm": ("aten::layer_norm", "aten::native_layer_norm"),
    "residual stream": ("aten::gather", "aten::index_add", "aten::index_add_", "aten::scatter_add_", "aten::add",
                        "aten::add_", "aten::scatter_", "aten::new_zeros"),
    "patch embedding": ("aten::conv2d", "aten::convolution", "aten::_convolution"),
}
OTHER, BETWEEN = "other operations", "between operations"
ORDER = (*KINDS, OTHER, BETWEEN)


def kind_of(op: str) -> str:
    """The kind of work of a top-level ATen operation.

    Example:
        >>> kind_of("aten::index_add"), kind_of("aten::permute")
        ('residual stream', 'other operations')
    """
    return next((kind for kind, ops in KINDS.items() if op in ops), OTHER)


def profiled_ms_by_kind(model: torch.nn.Module, x: torch.Tensor, passes: int) -> dict[str, float]:
    """Milliseconds per forward pass of ``model`` on ``x`` by kind of work (:data:`ORDER`), from ``passes``
    profiled passes: each top-level ATen operation counts with everything it calls; the wall time they leave
    uncovered is ``between operations``."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(passes):
            model(x)
        wall_us = (time.perf_counter() - start) * 1e6
    totals = dict.fromkeys(ORDER, 0.0)
    for event in prof.events():
        if event.cpu_parent is None and event.name.startswith("aten::"):
            totals[kind_of(event.name)] += event.cpu_time_total
    totals[BETWEEN] = max(0.0, wall_us - sum(totals.values()))
    return {kind: us / passes / 1000 for kind, us in totals.items()}


def median_by_kind(runs: list[dict[str, float]]) -> dict[str, float]:
    return {kind: statistics.median(r[kind] for r in runs) for kind in ORDER}


def mlp_hidden_units(model: torch.nn.Module) -> int:
    """MLP hidden units over all blocks (a branch that became a constant has none)."""
    return sum(getattr(getattr(blk.mlp, "fc1", None), "out_features", 0) for blk in model.blocks)


def cell_rows(name: str, ratio: float, batches: dict[int, tuple[int, int]], rounds: int,
              compiled: bool = True) -> list[dict]:
    """The rows of one model and prune ratio: per batch, the timed ratio, the profiled split by kind and (with
    ``compiled``) the ratio of the two models compiled."""
    data = latency.random_images()
    compact = latency.p3b_compact(name, ratio, data, "head")
    target = compact_stats(compact["heads"])["flops"]  # the anchors match the unpadded model's MACs
    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False, num_classes=data.num_classes).eval()
    anchors = latency.uniform_anchors(dense, target)
    if not anchors:  # whole heads cannot meet the MACs (DeiT-Tiny at 90 %): no anchor, no cell
        print(f"{name} {ratio:.2f}: no uniform anchor at these multiply-accumulates", flush=True)
        return []
    model = compact[VARIANT]
    rows = []
    for batch, (repeats, passes) in batches.items():
        timed = latency.interleaved_ms({"compact": model, **anchors}, batch, repeats)
        anchor = min(anchors, key=timed.get)
        x = torch.randn(batch, 3, 224, 224)
        split: dict[str, list[dict[str, float]]] = {"compact": [], "anchor": []}
        for _ in range(rounds):  # alternate the two, as the timing does
            split["compact"].append(profiled_ms_by_kind(model, x, passes))
            split["anchor"].append(profiled_ms_by_kind(anchors[anchor], x, passes))
        ms = {who: median_by_kind(runs) for who, runs in split.items()}
        anchor_total = sum(ms["anchor"].values())
        co, compile_s = ({}, {}) if not compiled else latency.compiled_ms(
            {"compact": model, "anchor": anchors[anchor]}, batch, repeats)
        torch._dynamo.reset()  # free the compiled graphs before the next batch size
        rows.append({
            "model": name, "prune_ratio": ratio, "variant": VARIANT, "batch": batch, "anchor": anchor,
            "compact_ms": timed["compact"], "anchor_ms": timed[anchor], "vs_anchor": timed["compact"] / timed[anchor],
            "profiled_vs_anchor": sum(ms["compact"].values()) / anchor_total,
            "compact_ms_by_kind": ms["compact"], "anchor_ms_by_kind": ms["anchor"],
            "difference_by_kind": {k: (ms["compact"][k] - ms["anchor"][k]) / anchor_total for k in ORDER},
            "heads": latency.attention_heads(model), "anchor_heads": latency.attention_heads(anchors[anchor]),
            "hidden_units": mlp_hidden_units(model), "anchor_hidden_units": mlp_hidden_units(anchors[anchor]),
            "compiled_compact_ms": co.get("compact"), "compiled_anchor_ms": co.get("anchor"),
            "compiled_vs_anchor": co["compact"] / co["anchor"] if {"compact", "anchor"} <= set(co) else None,
            "compile_s": compile_s,
        })
        r = rows[-1]
        print(f"{name:24s} {ratio:.2f} batch {batch:2d}: {r['vs_anchor']:.2f}x the {anchor} anchor "
              f"(profiled {r['profiled_vs_anchor']:.2f}x): " +
              ", ".join(f"{k} {v:+.1%}" for k, v in r["difference_by_kind"].items())
              + (f"; compiled {r['compiled_vs_anchor']:.2f}x" if r["compiled_vs_anchor"] else ""), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="DeiT-Tiny at 75 % only, fewer passes")
    parser.add_argument("--out", default="benchmarks/results/compact_gap.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cells = [(MODELS[0], 0.75)] if args.quick else [(m, r) for m in MODELS for r in RATIOS]
    # batch -> (interleaved timing repeats, passes per profile)
    batches = {1: (10, 5), 32: (2, 1)} if args.quick else {1: (60, 20), 32: (10, 2)}
    rounds = 1 if args.quick else 5
    rows = [row for name, ratio in cells for row in cell_rows(name, ratio, batches, rounds, not args.quick)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": 2, "variant": VARIANT, "batches": batches,
                               "rounds": rounds, "kinds": list(ORDER), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

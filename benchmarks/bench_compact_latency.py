"""CPU latency of P3B-compacted DeiT models against the dense model and against the ideal speed-up from FLOPs.

For ``deit_tiny_patch16_224`` and ``deit_small_patch16_224`` (random weights, 224 px, 10 classes) P3B prunes 50 %,
75 % and 90 % of the parameters during a few training steps on random images (class-token probes, so the allocation is
P3B's own), the model is compacted (:meth:`sparselab.P3B.compact`) as is (``pad_to=1``) and with its kept widths
rounded up to multiples of 8 by zero weights (``pad_to=8``), and the forward pass is timed at batch 1 and 32,
interleaved with the dense model so that all see the same machine load. P3B runs twice: pruning head dimensions as
the reference does (variants ``exact``; every head is kept) and pruning whole heads (``qkv_unit="head"``, variants
``heads``; the compact attention has fewer heads of the full width). The ideal speed-up is the dense model's
multiply-accumulates over those of the unpadded compact model of the same run; ``speed-up / ideal`` near 1 means
the removed multiply-accumulates turn into time.

The fairer anchor is what a uniform structured pruner gives at the same cost: a timm ViT with the same residual
width and depth whose attention and MLP are uniformly narrower, with the multiply-accumulates of the unpadded P3B
compact model of the same run — ``narrower heads`` (every head keeps the same share of its dimensions, the MLP
hidden layer the same share of its units) and ``fewer heads`` (whole heads of the full head dimension, the MLP
hidden width making up the rest). Both are timed in the same interleaved rounds; ``vs uniform`` is the compact
model's time over the faster of the two.

glibc's allocator returns every freed block above its mmap threshold (at most 32 MB) to the kernel, so each forward
pass page-faults fresh memory for such tensors — at batch 32 the MLP hidden activations of a DeiT-S block with all
1536 units (38.7 MB), which the dense model and P3B's full-width blocks have and the uniformly narrower anchors do
not: a GELU over them takes about 7x longer per element than over a 19 MB tensor. A second pass therefore times
DeiT-S again in a child process started with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` raised to
4 GiB (rows tagged ``allocator``; both are needed: the heap would otherwise be trimmed back to the kernel), the
setting a CPU deployment on glibc would use. The compact models' MLPs (``CompactMlp``) apply their GELU in place on
hidden activations of 4 MiB or more, which spares them one such buffer per block; the dense model and the uniform
anchors are plain timm modules.

Usage: python benchmarks/bench_compact_latency.py [--quick] [--out benchmarks/results/compact_latency.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import timm
import torch

import sparselab as sl
from sparselab.data.datasets import DataBundle, TensorImages
from sparselab.structure.compact import compact_stats

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224")
RATIOS = (0.5, 0.75, 0.9)
#: how each P3B compact model is built: (P3B's qkv_unit, pruner.compact's pad_to)
VARIANTS = {"exact": ("dim", 1), "exact, pad 8": ("dim", 8), "heads": ("head", 1), "heads, pad 8": ("head", 8)}
#: per qkv_unit, the unpadded variant whose multiply-accumulates the ideal and the uniform anchors refer to
UNPADDED = {"dim": "exact", "head": "heads"}
ANCHORS = ("narrower heads", "fewer heads")


def random_images(n: int = 16, classes: int = 10, seed: int = 0) -> DataBundle:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 224, 224, generator=gen)
    labels = torch.arange(n) % classes
    split = TensorImages(images, labels)
    return DataBundle("random", split, None, TensorImages(images[:8], labels[:8]), classes, 3, 224)


def p3b_pruner(name: str, prune_ratio: float, data: DataBundle, qkv_unit: str) -> sl.P3B:
    """P3B (class-token probes, pruning head dimensions or whole heads) after a few training steps of ``name`` on
    ``data``; the caller removes it."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=data.num_classes)
    pruner = sl.P3B(model, prune_ratio, schedule=sl.P3BSchedule(warmup=0, sparsify=1, finalize=2, updates_per_epoch=2),
                    patch_probe=None, qkv_unit=qkv_unit)
    sl.fit(model, data, epochs=2, pruner=pruner, batch_size=8, progress=False, eval_batch_size=8)
    return pruner


def p3b_compact(name: str, prune_ratio: float, data: DataBundle, qkv_unit: str) -> dict[str, torch.nn.Module]:
    """The P3B-compacted model (pruning head dimensions or whole heads) in each of its :data:`VARIANTS`."""
    pruner = p3b_pruner(name, prune_ratio, data, qkv_unit)
    compact = {variant: pruner.compact(pad_to=pad).eval() for variant, (unit, pad) in VARIANTS.items()
               if unit == qkv_unit}
    pruner.remove()
    return compact


def uniform_anchors(dense: torch.nn.Module, target: int) -> dict[str, torch.nn.Module]:
    """Uniformly narrower copies of ``dense`` with about ``target`` MACs (random weights: only shapes matter for
    time): ``narrower heads`` (a share k of every head's dimensions and of the MLP units) and ``fewer heads``
    (round(k·heads) whole heads, the MLP width making up the rest of the MACs)."""
    from timm.layers import Attention, Mlp

    first = dense.blocks[0]
    d, heads, hd = dense.embed_dim, first.attn.num_heads, first.attn.head_dim
    hidden0, depth, tokens = first.mlp.fc1.out_features, len(dense.blocks), compact_stats(dense)["tokens"]

    def attn(h: int, dim: int) -> int:  # qkv and proj per token, and the two attention matmuls
        return 4 * d * h * dim * tokens + 2 * tokens * tokens * h * dim

    def mlp(hidden: int) -> int:
        return 2 * d * hidden * tokens

    outside = compact_stats(dense)["flops"] - depth * (attn(heads, hd) + mlp(hidden0))

    def macs(h: int, dim: int, hidden: int) -> int:
        return outside + depth * (attn(h, dim) + mlp(hidden))

    def build(h: int, dim: int, hidden: int) -> torch.nn.Module:
        torch.manual_seed(0)
        model = timm.create_model(dense.default_cfg["architecture"], pretrained=False,
                                  num_classes=dense.num_classes).eval()
        for blk in model.blocks:
            blk.attn = Attention(d, num_heads=h, attn_head_dim=dim, dim_out=d, qkv_bias=True).eval()
            blk.mlp = Mlp(d, hidden, d).eval()
        return model

    lo, hi = 0.0, 1.0
    for _ in range(40):  # the share k with macs(k) = target
        k = (lo + hi) / 2
        lo, hi = (k, hi) if macs(heads, max(1, round(k * hd)), max(1, round(k * hidden0))) < target else (lo, k)
    fewer = max(1, round(lo * heads))
    rest = max(1, round((target - outside - depth * attn(fewer, hd)) / (depth * mlp(1))))
    anchors = {"narrower heads": build(heads, max(1, round(lo * hd)), max(1, round(lo * hidden0))),
               "fewer heads": build(fewer, hd, rest)}
    # one whole head can cost more than the target allows (DeiT-Tiny at 90 %): no such anchor then
    return {k: m for k, m in anchors.items() if abs(compact_stats(m)["flops"] / target - 1) <= 0.05}


def attention_heads(model: torch.nn.Module) -> int:
    """Attention heads over all blocks (a branch that became a constant has none): each head computes its own
    token-by-token softmax, a cost the multiply-accumulate count leaves out."""
    return sum(getattr(blk.attn, "num_heads", 0) for blk in model.blocks)


def interleaved_median_ms(calls: dict[Any, Callable[[], object]], repeats: int) -> dict[Any, float]:
    """Median time in ms of each call, calling them in turn on every repeat (the first round warms up)."""
    times: dict[Any, list[float]] = {k: [] for k in calls}
    for i in range(repeats + 1):
        for key, call in calls.items():
            t0 = time.perf_counter()
            call()
            if i:
                times[key].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.inference_mode()
def interleaved_ms(models: dict[str, torch.nn.Module], batch: int, repeats: int) -> dict[str, float]:
    """Median forward time per model on a random batch, timing the models in turn on every repeat."""
    x = torch.randn(batch, 3, 224, 224)
    return interleaved_median_ms({k: functools.partial(m, x) for k, m in models.items()}, repeats)


def compiled_ms(models: dict, batch: int, repeats: int) -> tuple[dict, dict]:
    """Median forward time per model compiled with ``torch.compile`` (after one compiling call per model), timed in
    turn on every repeat; and the seconds each compile took (or the error, for a model that did not compile)."""
    x = torch.randn(batch, 3, 224, 224)
    calls, compile_s = {}, {}
    with torch.no_grad():
        for key, model in models.items():
            try:
                fn = torch.compile(model, dynamic=False)
                t0 = time.perf_counter()
                fn(x)
                compile_s[key] = time.perf_counter() - t0
                calls[key] = functools.partial(fn, x)
            except Exception as exc:  # reported, not fatal: the other columns stand on their own
                compile_s[key] = f"{type(exc).__name__}: {exc}"[:200]
        return interleaved_median_ms(calls, repeats), compile_s


#: the allocator setting of the second pass (environment of a child process; glibc reads it at start-up)
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def allocator_pass(name: str) -> list[dict]:
    """The rows of ``name`` measured again in a child process with :data:`ALLOCATOR` in its environment."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        subprocess.run([sys.executable, __file__, "--models", name, "--no-allocator-pass", "--out", str(out)],
                       env={**os.environ, **ALLOCATOR}, check=True)
        rows = json.loads(out.read_text())["rows"]
    tag = ", ".join(f"{k}={v}" for k, v in ALLOCATOR.items())
    return [{**r, "allocator": tag} for r in rows]


def measure(names, repeats: dict[int, int]) -> list[dict]:
    """Timed rows for every model in ``names`` (see the module docstring)."""
    data = random_images()
    rows = []
    for name in names:
        torch.manual_seed(0)
        dense = timm.create_model(name, pretrained=False, num_classes=data.num_classes).eval()
        models = {"dense": dense}
        for r in RATIOS:
            for unit, unpadded in UNPADDED.items():
                for variant, m in p3b_compact(name, r, data, unit).items():
                    models[r, variant] = m
                for kind, m in uniform_anchors(dense, compact_stats(models[r, unpadded])["flops"]).items():
                    models[r, unpadded, kind] = m  # anchors at the MACs of this unit's compact model
        flops = {k: compact_stats(m)["flops"] for k, m in models.items()}
        params = {k: compact_stats(m)["params"] for k, m in models.items()}
        for batch, reps in repeats.items():
            ms = interleaved_ms(models, batch, reps)
            for (ratio, variant) in [k for k in models if k != "dense" and len(k) == 2]:
                key, unpadded = (ratio, variant), UNPADDED[VARIANTS[variant][0]]
                speedup, ideal = ms["dense"] / ms[key], flops["dense"] / flops[ratio, unpadded]
                uniform = {kind: ms[ratio, unpadded, kind] for kind in ANCHORS if (ratio, unpadded, kind) in ms}
                rows.append({"model": name, "prune_ratio": ratio, "variant": variant, "batch": batch,
                             "dense_ms": ms["dense"], "compact_ms": ms[key],
                             "params_ratio": params[key] / params["dense"], "speedup": speedup,
                             "heads": attention_heads(models[key]),
                             "ideal_speedup": ideal, "speedup_over_ideal": speedup / ideal})
                if uniform:  # no anchor when whole heads cannot meet the MACs (tiny models at 90 %)
                    rows[-1].update({"uniform_ms": uniform, "vs_uniform": ms[key] / min(uniform.values()),
                                     "uniform_heads": {kind: attention_heads(models[ratio, unpadded, kind])
                                                       for kind in uniform},
                                     "uniform_macs_ratio": {kind: flops[ratio, unpadded, kind] / flops[ratio, unpadded]
                                                            for kind in uniform}})
                print(f"{name:24s} {ratio:.2f} {variant:12s} batch {batch:2d}: dense {ms['dense']:8.1f} ms, compact "
                      f"{ms[key]:8.1f} ms, speed-up {speedup:.2f}x of ideal {ideal:.2f}x "
                      f"({speedup / ideal:.0%}); vs uniform {rows[-1].get('vs_uniform', float('nan')):.2f}x",
                      flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="deit_tiny only, fewer repeats")
    parser.add_argument("--out", default="benchmarks/results/compact_latency.json")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="only these models")
    parser.add_argument("--no-allocator-pass", action="store_true",
                        help="skip the second pass with glibc's mmap threshold raised")
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = args.models or (MODELS[:1] if args.quick else MODELS)
    repeats = {1: 5 if args.quick else 20, 32: 2 if args.quick else 9}
    rows = measure(names, repeats)
    if not (args.quick or args.no_allocator_pass):
        rows += allocator_pass(MODELS[-1])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": 2, "repeats": repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

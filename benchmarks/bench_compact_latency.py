"""CPU latency of P3B-compacted DeiT models against the dense model and against the ideal speed-up from FLOPs.

For ``deit_tiny_patch16_224`` and ``deit_small_patch16_224`` (random weights, 224 px, 10 classes) P3B prunes 50 %
and 75 % of the parameters during a few training steps on random images (class-token probes, so the allocation is
P3B's own), the model is compacted (:meth:`sparselab.P3B.compact`) as is (``pad_to=1``) and with its kept widths
rounded up to multiples of 8 by zero weights (``pad_to=8``), and the forward pass is timed at batch 1 and 32,
interleaved with the dense model so that all see the same machine load. The ideal speed-up is the dense model's
multiply-accumulates over those of the unpadded compact model; ``speed-up / ideal`` near 1 means the removed
multiply-accumulates turn into time.

Usage: python benchmarks/bench_compact_latency.py [--quick] [--out benchmarks/results/compact_latency.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import timm
import torch

import sparselab as sl
from sparselab.data.datasets import DataBundle, TensorImages
from sparselab.structure.compact import compact_stats

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224")


def random_images(n: int = 16, classes: int = 10, seed: int = 0) -> DataBundle:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 224, 224, generator=gen)
    labels = torch.arange(n) % classes
    split = TensorImages(images, labels)
    return DataBundle("random", split, None, TensorImages(images[:8], labels[:8]), classes, 3, 224)


def p3b_compact(name: str, prune_ratio: float, data: DataBundle) -> dict[int, torch.nn.Module]:
    """The P3B-compacted model without and with padding to multiples of 8, keyed by ``pad_to``."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=data.num_classes)
    pruner = sl.P3B(model, prune_ratio, schedule=sl.P3BSchedule(warmup=0, sparsify=1, finalize=2, updates_per_epoch=2),
                    patch_probe=None)
    sl.fit(model, data, epochs=2, pruner=pruner, batch_size=8, progress=False, eval_batch_size=8)
    compact = {pad: pruner.compact(pad_to=pad).eval() for pad in (1, 8)}
    pruner.remove()
    return compact


@torch.inference_mode()
def interleaved_ms(models: dict[str, torch.nn.Module], batch: int, repeats: int) -> dict[str, float]:
    """Median forward time per model, timing the models in turn on every repeat."""
    x = torch.randn(batch, 3, 224, 224)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(repeats + 1):
        for key, model in models.items():
            t0 = time.perf_counter()
            model(x)
            if i:  # the first round warms up
                times[key].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="deit_tiny only, fewer repeats")
    parser.add_argument("--out", default="benchmarks/results/compact_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = MODELS[:1] if args.quick else MODELS
    repeats = {1: 5 if args.quick else 20, 32: 2 if args.quick else 5}
    data = random_images()
    rows = []
    for name in names:
        torch.manual_seed(0)
        dense = timm.create_model(name, pretrained=False, num_classes=data.num_classes).eval()
        models = {"dense": dense}
        for r in (0.5, 0.75):
            for pad, m in p3b_compact(name, r, data).items():
                models[r, pad] = m
        flops = {k: compact_stats(m)["flops"] for k, m in models.items()}
        params = {k: compact_stats(m)["params"] for k, m in models.items()}
        for batch, reps in repeats.items():
            ms = interleaved_ms(models, batch, reps)
            for (ratio, pad) in [k for k in models if k != "dense"]:
                key = (ratio, pad)
                speedup, ideal = ms["dense"] / ms[key], flops["dense"] / flops[ratio, 1]
                rows.append({"model": name, "prune_ratio": ratio, "pad_to": pad, "batch": batch,
                             "dense_ms": ms["dense"], "compact_ms": ms[key],
                             "params_ratio": params[key] / params["dense"], "speedup": speedup,
                             "ideal_speedup": ideal, "speedup_over_ideal": speedup / ideal})
                print(f"{name:24s} {ratio:.2f} pad {pad} batch {batch:2d}: dense {ms['dense']:8.1f} ms, compact "
                      f"{ms[key]:8.1f} ms, speed-up {speedup:.2f}x of ideal {ideal:.2f}x "
                      f"({speedup / ideal:.0%})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": 2, "repeats": repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

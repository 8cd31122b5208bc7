"""The deployment path: P3B-compacted DeiT models in ONNX Runtime on the CPU, against the dense model.

For ``deit_tiny_patch16_224`` and ``deit_small_patch16_224`` (random weights, 224 px) P3B prunes 50 % and 75 %
during a few steps on random images, exactly as in ``bench_compact_latency.py``; the dense model and the compact
models (``pad_to=8``) are exported with :func:`sparselab.structure.export_onnx` (which
checks ONNX Runtime's outputs against PyTorch's) and timed in ONNX Runtime with 2 threads at batch 1 and 32, in turn
on every repeat, beside the same models in PyTorch, eager and compiled with ``torch.compile`` (inductor, static
shapes; compiled once per batch size before timing; a model that fails to compile is reported as such; skipped
with ``--quick``).

Usage: python benchmarks/bench_onnx_latency.py [--quick] [--out benchmarks/results/onnx_latency.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import timm
import torch
from bench_compact_latency import MODELS, compiled_ms, interleaved_median_ms, interleaved_ms, p3b_compact, random_images

from sparselab.structure.compact import compact_stats
from sparselab.structure.compact.onnx import export_onnx, onnx_session

RATIOS = (0.5, 0.75)
VARIANTS = ("exact, pad 8",)


def onnx_ms(paths: dict, batch: int, repeats: int) -> dict:
    """Median ONNX Runtime time per exported model, timed in turn on every repeat (the first round warms up)."""
    sessions = {k: onnx_session(p, threads=2) for k, p in paths.items()}
    feed = {"images": torch.randn(batch, 3, 224, 224).numpy()}
    return interleaved_median_ms({k: functools.partial(s.run, None, feed) for k, s in sessions.items()}, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="deit_tiny only, fewer repeats")
    parser.add_argument("--out", default="benchmarks/results/onnx_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = MODELS[:1] if args.quick else MODELS
    repeats = {1: 5 if args.quick else 20, 32: 2 if args.quick else 5}
    data = random_images()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            models = {"dense": timm.create_model(name, pretrained=False, num_classes=data.num_classes).eval()}
            for r in RATIOS:
                for variant, m in p3b_compact(name, r, data, "dim").items():
                    if variant in VARIANTS or variant == "exact":
                        models[r, variant] = m
            flops = {k: compact_stats(m)["flops"] for k, m in models.items()}
            timed = {k: m for k, m in models.items() if k == "dense" or k[1] in VARIANTS}
            paths = {}
            for i, (key, model) in enumerate(timed.items()):
                paths[key] = Path(tmp) / f"{name}-{i}.onnx"
                t0 = time.perf_counter()
                export_onnx(model, paths[key], input_shape=(3, 224, 224), check_batch=2)
                print(f"exported {name} {key} in {time.perf_counter() - t0:.0f} s", flush=True)
            for batch, reps in repeats.items():
                ort = onnx_ms(paths, batch, reps)
                pt = interleaved_ms(timed, batch, reps)
                if args.quick:  # compiling every model would take most of the quick budget
                    co, compile_s = {}, {k: "skipped with --quick" for k in timed}
                else:
                    co, compile_s = compiled_ms(timed, batch, reps)
                    torch._dynamo.reset()  # free the compiled graphs before the next batch size
                for key in [k for k in timed if k != "dense"]:
                    ratio, variant = key
                    compiled = key in co and "dense" in co
                    rows.append({"model": name, "prune_ratio": ratio, "variant": variant, "batch": batch,
                                 "ort_dense_ms": ort["dense"], "ort_compact_ms": ort[key],
                                 "ort_speedup": ort["dense"] / ort[key], "torch_dense_ms": pt["dense"],
                                 "torch_compact_ms": pt[key], "torch_speedup": pt["dense"] / pt[key],
                                 "compiled_dense_ms": co.get("dense"), "compiled_compact_ms": co.get(key),
                                 "compiled_speedup": co["dense"] / co[key] if compiled else None,
                                 "compile_s": {"dense": compile_s["dense"], "compact": compile_s[key]},
                                 "ideal_speedup": flops["dense"] / flops[ratio, "exact"]})
                    print(f"{name:24s} {ratio:.2f} {variant:12s} batch {batch:2d}: ONNX Runtime {ort['dense']:7.1f} → "
                          f"{ort[key]:7.1f} ms ({rows[-1]['ort_speedup']:.2f}x), PyTorch {pt['dense']:7.1f} → "
                          f"{pt[key]:7.1f} ms ({rows[-1]['torch_speedup']:.2f}x), compiled "
                          + (f"{co['dense']:7.1f} → {co[key]:7.1f} ms ({rows[-1]['compiled_speedup']:.2f}x)"
                             if compiled else f"failed ({compile_s[key]})"), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": 2, "repeats": repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Peak memory of a P3B step (reference and fast probes, gates only) against plain fine-tuning, and of ART against
plain training.

Each case runs in its own process: build the model and random data, then reset the kernel's peak-RSS mark
(``/proc/self/clear_refs``) and train a few steps with :func:`sparselab.fit`; the figure is the peak resident
memory during training minus the resident memory before it (``VmHWM − VmRSS``: activations, gradients, optimizer
state, probes, gates and allocator slack). Where CUDA is available the same cases also report
``torch.cuda.max_memory_allocated`` on the GPU. Ratios are against the plain case of the same model.

- ViT: DeiT-Tiny (random weights), 224 px, batch 32, 10 classes; P3B at 50 % with warm-up, sparsify and finalize
  steps all inside the run;
- CNN: VGG-19-BN, 32 px, batch 64; ART with HyperSparse at 98 % (no warm-up), which also evaluates a pruned copy on
  training images at each ART epoch's end.

Usage: python benchmarks/bench_memory.py [--quick] [--out benchmarks/results/memory.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES = {  # name: (model family, what trains)
    "ViT plain fine-tuning": ("vit", "plain"),
    "P3B, gates only (uniform)": ("vit", "uniform"),
    "P3B, fast probes": ("vit", "fast"),
    "P3B, reference probes": ("vit", "reference"),
    "CNN plain training": ("cnn", "plain"),
    "ART with HyperSparse": ("cnn", "art"),
}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(family: str, kind: str, steps: int) -> dict:
    """Run one case in this process and return its memory figures."""
    import torch

    import sparselab as sl
    from sparselab.data.datasets import DataBundle, TensorImages

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    if family == "vit":
        model = sl.models.create("deit_tiny_patch16_224", num_classes=10)
        size, chans, batch = 224, 3, 32
    else:
        model = sl.models.create("vgg19_bn", num_classes=10, in_chans=3)
        size, chans, batch = 32, 3, 64
    n = batch * steps
    images = torch.randn(n, chans, size, size)
    labels = torch.arange(n) % 10
    ds = TensorImages(images, labels)
    data = DataBundle(name="random", train=ds, val=None, test=TensorImages(images[:batch], labels[:batch]),
                      num_classes=10, in_chans=chans, image_size=size)
    pruner, epochs = None, 1
    if kind in ("uniform", "fast", "reference"):
        schedule = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=1)
        options = {"uniform": dict(allocation="uniform"),
                   "fast": dict(allocation="benefit", **sl.probes.FAST_PROBES),
                   "reference": dict(allocation="benefit")}[kind]
        pruner = sl.P3B(model, 0.5, schedule=schedule, num_classes=10, **options)
        epochs = schedule.finalize
    elif kind == "art":
        pruner = sl.ART(model, 0.98, warmup_epochs=0, max_art_epochs=1, train_eval_limit=batch)
        epochs = pruner.max_epochs
    per_epoch = max(1, steps // epochs)
    optim = dict(lr=1e-4, weight_decay=0.05) if family == "vit" else dict(optimizer="sgd", lr=0.01, momentum=0.9)
    rss_before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    if cuda:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    sl.fit(model, data, epochs=epochs, pruner=pruner, batch_size=batch, max_steps_per_epoch=per_epoch,
           progress=False, final_test=False, device="cuda" if cuda else "cpu", **optim)
    out = {"rss_before_mb": rss_before / 2**20, "peak_delta_mb": (_status("VmHWM") - rss_before) / 2**20,
           "steps": per_epoch * epochs}
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


SKIPPED_WHEN_QUICK = ("P3B, reference probes",)  # keeps run_all --quick under 5 minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, without the reference-probe case")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # a child process: run one case
    args = parser.parse_args()
    steps = 4 if args.quick else 12
    if args.case is not None:
        family, kind = CASES[args.case]
        print(json.dumps(measure(family, kind, steps)))
        return
    rows = []
    for name in [c for c in CASES if not (args.quick and c in SKIPPED_WHEN_QUICK)]:
        cmd = [sys.executable, __file__, "--case", name] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"case": name, "family": CASES[name][0], **result})
        print(f"{name:28s} peak +{result['peak_delta_mb']:7.0f} MB over {result['rss_before_mb']:.0f} MB "
              f"({result['steps']} steps)", flush=True)
    for row in rows:
        plain = next(r for r in rows if r["family"] == row["family"] and r["case"].endswith(("fine-tuning",
                                                                                             "plain training")))
        row["ratio"] = row["peak_delta_mb"] / plain["peak_delta_mb"]
        if "cuda_peak_mb" in row:
            row["cuda_ratio"] = row["cuda_peak_mb"] / plain["cuda_peak_mb"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "steps": steps, "rows": rows}, indent=2))
    for row in rows:
        print(f"{row['case']:28s} {row['ratio']:.2f}x plain")


if __name__ == "__main__":
    main()

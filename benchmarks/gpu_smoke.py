"""GPU smoke test of the paper presets: a few hundred optimizer steps of each reference recipe on a CUDA device.

For every selected ``paper-*`` preset it trains with the preset's real recipe (batch, accumulation, repeated
augmentation, mixup/cutmix, probes, AMP) on the real dataset when it is on disk and on generated images of the
right shape otherwise, and records into ``benchmarks/results/gpu/<preset>-<precision>.json``:

- images per second (effective batch / median optimizer-step time),
- peak GPU memory (``torch.cuda.max_memory_allocated``),
- for P3B: the step cost of P3B (reference probes, Taylor scores, mask updates) against plain fine-tuning of the
  same model with the same recipe (ratio of median step times, measured in one process),
- that every loss and weight stayed finite, and for fp16 how many steps the loss scaler skipped.

P3B presets run under AMP twice — bfloat16, and float16 with the loss scaler — ART presets in fp32 as their
recipe says. Without CUDA the script prints why and exits 0 without writing anything.

Usage:
    python benchmarks/gpu_smoke.py                    # one preset per model and recipe, 200 steps each
    python benchmarks/gpu_smoke.py --all --steps 300  # every paper preset
    python benchmarks/gpu_smoke.py --presets paper-deit-s-ifood --precision bf16
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import sparselab as sl

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "gpu"
DEFAULT = ["paper-deit-s-ifood", "paper-deit-t-cifar100", "paper-resnet32-cifar100", "paper-vgg19-cifar10",
           "paper-vgg19-tinyimagenet"]
GENERATED_IMAGES = 1024


class StepClock(sl.Pruner):
    """Wall time of every optimizer step (CUDA-synchronised) and the finiteness of every loss."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.finite, self._t = device, [], True, None

    def on_fit_start(self, state):
        torch.cuda.synchronize(self.device)
        self._t = time.perf_counter()

    def after_step(self, state):
        torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times.append(now - self._t)
        self._t = now
        self.finite &= bool(torch.isfinite(state.loss).item())

    def on_epoch_end(self, state):
        self._t = time.perf_counter()  # evaluation is not a step

    def median(self, skip: int = 5) -> float:
        tail = self.times[skip:] or self.times
        return statistics.median(tail)


def generated_bundle(preset, num_classes: int):
    """Random images of the preset's shape (a stand-in when the real dataset is not on this machine)."""
    from sparselab.data import DataBundle, TensorImages

    size = preset.image_size or 32
    g = torch.Generator().manual_seed(0)
    images = torch.randn(GENERATED_IMAGES, 3, size, size, generator=g)
    labels = torch.randint(0, num_classes, (GENERATED_IMAGES,), generator=g)
    train = TensorImages(images, labels, augment="crop_flip", pad=4)
    test = TensorImages(images[:256], labels[:256])
    return DataBundle(f"generated-{preset.data}", train, None, test, num_classes=num_classes, in_chans=3,
                      image_size=size)


CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "ifood": 251, "inat19": 1010}


def load(preset):
    from sparselab.errors import SparselabError
    from sparselab.experiments.presets import load_data

    try:
        return load_data(preset), "real"
    except SparselabError as exc:
        print(f"  {preset.data}: not on this machine ({str(exc)[:80]}...); generated images instead", flush=True)
        return generated_bundle(preset, CLASSES[preset.data]), "generated"


def build_p3b_model(preset, data):
    from sparselab.errors import SparselabError

    try:
        return sl.models.create(preset.model, num_classes=data.num_classes, pretrained=preset.pretrained,
                                **preset.model_options), "timm hub"
    except SparselabError:
        return sl.models.create(preset.model, num_classes=data.num_classes, **preset.model_options), "random init"


def run_p3b(name: str, steps: int, precision: str, device: torch.device) -> dict:
    from sparselab.experiments import p3b_preset

    preset = p3b_preset(name)
    data, source = load(preset)
    per_epoch = max(2, steps // 2)
    fit = {**preset.fit, "max_steps_per_epoch": per_epoch, "amp": True, "amp_dtype": precision,
           "device": str(device), "eval_batch_size": 256, "final_test": False}
    if source == "generated":
        fit["num_workers"] = 0
    schedule = sl.P3BSchedule(warmup=0, sparsify=1, finalize=2, updates_per_epoch=3)  # pruning active throughout
    out = {"preset": name, "kind": "p3b", "precision": precision, "data": source, "steps": 2 * per_epoch,
           "effective_batch": fit["batch_size"] * fit.get("accumulate_steps", 1)}
    for mode in ("plain", "p3b"):
        torch.manual_seed(0)
        model, weights = build_p3b_model(preset, data)
        out["weights"] = weights
        pruner = (sl.P3B(model, 0.5, schedule=schedule, num_classes=data.num_classes, patch_probe=preset.patch_probe,
                         **preset.probe_options) if mode == "p3b" else None)
        clock = StepClock(device)
        torch.cuda.reset_peak_memory_stats(device)
        history = sl.fit(model, data, epochs=2, pruner=pruner, callbacks=[clock], progress=False, **fit)
        out[f"{mode}_step_s"] = clock.median()
        out[f"{mode}_images_per_s"] = out["effective_batch"] / clock.median()
        out[f"{mode}_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        out[f"{mode}_finite"] = clock.finite and all(bool(torch.isfinite(p).all()) for p in model.parameters())
        if pruner is not None:
            out["achieved_prune_ratio"] = pruner.achieved_prune_ratio()
            out["skipped_steps"] = pruner.skipped_steps
            out["taylor_finite"] = all(bool(torch.isfinite(v).all()) for v in pruner._taylor_prev.values())
        out[f"{mode}_train_loss"] = history.last("epoch_loss", "train")
        del model, pruner
        torch.cuda.empty_cache()
    out["p3b_step_cost"] = out["p3b_step_s"] / out["plain_step_s"]
    return out


def run_art(name: str, steps: int, device: torch.device) -> dict:
    from sparselab.experiments.art import art_preset

    preset = art_preset(name)
    data, source = load(preset)
    per_epoch = max(2, steps // 3)
    fit = {**preset.fit, "max_steps_per_epoch": per_epoch, "device": str(device), "final_test": False}
    if source == "generated":
        fit["num_workers"] = 0
    torch.manual_seed(0)
    model = sl.models.create(preset.model, num_classes=data.num_classes, **preset.model_options)
    art = sl.ART(model, 0.98, lam_init=preset.lam_init, eta=preset.eta, warmup_epochs=1, max_art_epochs=2,
                 candidate_rule=preset.candidate_rule, train_eval_limit=2048)
    clock = StepClock(device)
    torch.cuda.reset_peak_memory_stats(device)
    sl.fit(model, data, epochs=art.max_epochs, pruner=art, callbacks=[clock], progress=False, **fit)
    return {"preset": name, "kind": "art", "precision": "fp32", "data": source, "steps": len(clock.times),
            "effective_batch": fit["batch_size"], "step_s": clock.median(),
            "images_per_s": fit["batch_size"] / clock.median(),
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30,
            "finite": clock.finite and all(bool(torch.isfinite(p).all()) for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=None, help=f"default: {' '.join(DEFAULT)}")
    parser.add_argument("--all", action="store_true", help="every paper preset")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"],
                        help="AMP precisions for the P3B presets (ART runs fp32)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_smoke: skipped: no CUDA device here (nothing written)")
        return 0
    from sparselab.experiments.p3b import P3BPreset
    from sparselab.experiments.recipes import find_preset, paper_presets

    names = paper_presets() if args.all else (args.presets or DEFAULT)
    for name in names:
        find_preset(name)  # a clear error for a typo before anything runs
    device = torch.device("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__}
    for name in names:
        runs = ([("p3b", p) for p in args.precision] if isinstance(find_preset(name), P3BPreset) else [("art", "fp32")])
        for kind, precision in runs:
            print(f"== {name} {precision}", flush=True)
            t0 = time.perf_counter()
            result = run_p3b(name, args.steps, precision, device) if kind == "p3b" else run_art(name, args.steps,
                                                                                                device)
            result.update(meta, wall_s=time.perf_counter() - t0)
            path = out / f"{name}-{precision}.json"
            path.write_text(json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float)
                                       and not math.isfinite(v) else str(v)) + "\n")
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

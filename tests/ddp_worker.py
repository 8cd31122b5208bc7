"""Run by the tests under torchrun: trains a small model (plain, or pruned by P3B) and saves each rank's result."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import sparselab as sl

FIT_OPTIONS = dict(epochs=2, batch_size=64, lr=3e-3, max_steps_per_epoch=6, log_every=2, progress=False,
                   optimizer="adamw", seed=3)
P3B_OPTIONS = dict(epochs=3, batch_size=64, lr=1e-3, max_steps_per_epoch=4, progress=False, seed=3)


def run(mode: str = "plain", out: Path | None = None) -> dict:
    torch.manual_seed(0)
    result: dict = {}
    if mode == "plain":
        data = sl.data.load("digits", image_size=8, augment="crop_flip")
        model = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
        history = sl.fit(model, data, device="cpu", **FIT_OPTIONS)
    elif mode == "resume":  # "plain", interrupted mid-epoch after a checkpoint at step 2, then resumed
        from sparselab.callbacks import Callback

        class Crash(Callback):
            def __init__(self, at: int | None = 3):
                self.at = at

            def after_step(self, state):
                if state.step == self.at:
                    raise RuntimeError("simulated crash")

        data = sl.data.load("digits", image_size=8, augment="crop_flip")
        folder = out / "checkpoint"
        model = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
        try:
            sl.fit(model, data, device="cpu", callbacks=[Crash()], checkpoint_dir=folder, checkpoint_every=2,
                   **FIT_OPTIONS)
        except RuntimeError:
            pass
        torch.manual_seed(1)
        model = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
        history = sl.fit(model, data, device="cpu", callbacks=[Crash(None)], checkpoint_dir=folder,
                         checkpoint_every=2, resume=True, **FIT_OPTIONS)
    elif mode == "repeat":  # timm's repeated augmentation and gradient accumulation
        data = sl.data.load("digits", image_size=8, augment="crop_flip")
        model = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
        history = sl.fit(model, data, device="cpu", **{**FIT_OPTIONS, "batch_size": 32, "accumulate_steps": 2,
                                                       "repeated_aug": 3, "max_steps_per_epoch": 3})
    else:
        data = sl.data.load("digits", image_size=28, limit=320)
        # float64: summing gradients in another order (across processes) must not reorder near-tied scores
        model = sl.models.create("vit_nano_patch4_28", num_classes=10).double()
        pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3), patch_probe="conv1")
        history = sl.fit(model, data, pruner=pruner, device="cpu", **P3B_OPTIONS)
        result["masks"] = pruner.hard_masks()
    result.update({"model": model.state_dict(), "history": history.state_dict()})
    if out is not None:
        rank = torch.distributed.get_rank()
        result["world"] = torch.distributed.get_world_size()
        torch.save(result, out / f"rank{rank}.pt")
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]))

"""Run by tests/test_training.py under torchrun: trains a small model and saves each rank's result."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import sparselab as sl

FIT_OPTIONS = dict(epochs=2, batch_size=64, lr=3e-3, max_steps_per_epoch=6, log_every=2, progress=False,
                   optimizer="adamw", seed=3)


def run(out: Path | None = None) -> tuple[dict, sl.History]:
    torch.manual_seed(0)
    data = sl.data.load("digits", image_size=8, augment="crop_flip")
    model = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
    history = sl.fit(model, data, device="cpu", **FIT_OPTIONS)
    if out is not None:
        rank = torch.distributed.get_rank()
        torch.save({"model": model.state_dict(), "history": history.state_dict(),
                    "world": torch.distributed.get_world_size()}, out / f"rank{rank}.pt")
        torch.distributed.destroy_process_group()
    return model.state_dict(), history


if __name__ == "__main__":
    run(Path(sys.argv[1]))

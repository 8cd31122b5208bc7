"""Ways to lay out a P3B compact DeiT-S for speed, each timed against the layout ``compact(pad_to=8)`` builds.

P3B prunes DeiT-S (random weights, 224 px) at 50 %, 75 % and 90 % by head dimension (``dim``) and by whole heads
(``head``), as in ``bench_compact_latency.py``, and the compact model is built in several layouts that all compute
the same function (or, where marked, the same shapes):

- ``pad 8`` — the reference here: ``pruner.compact(pad_to=8)``; each compact block (:class:`CompactBlock`) adds a
  branch that writes only some residual channels with one ``index_add``;
- ``selection inline`` — the same model calling each branch's norm alone and gathering its input channels inline,
  where the reference calls the ``Sequential`` of the norm and its ``SelectChannels`` (two module calls fewer per
  branch; inference only, as nothing hooks these models);
- ``MLP added in place`` — the same model adding its MLP branch in place into the block's own stream after
  attention (an intermediate no one else holds under inference), which spares one full-width copy per block;
- ``scatter into zeros`` — the same model with timm's own ``Block.forward``: the branch output is scattered into a
  zero tensor of the full width, which is then added (the layout before :class:`CompactBlock`);
- ``pad 16`` / ``pad 32`` — kept widths rounded up to larger multiples (more zero weights, friendlier shapes);
- ``unsliced inputs`` — ``attn_in`` and ``mlp_in`` kept whole: the first Linear of each branch reads the full
  residual width (zero columns for the pruned channels) instead of a gathered subset; ``unsliced inputs and
  outputs`` also writes the full width (zero rows) instead of adding into a subset. Shapes only: the zero columns
  and rows are not written, so these two time the layout, not a model with the same outputs;
- ``contiguous channels`` — selection without gathers or scatters: every branch reads its first k residual
  channels as a view (no gather) and adds into its first k channels of a copy of the stream (a slice add instead
  of the ``index_add``'s scatter), with the widths of ``pad 8``. No channel order makes every block's kept channels
  contiguous at once, so this is shapes only as well: what the gather and scatter kernels cost beyond contiguous
  access. It keeps the copy of the stream per branch that ``index_add`` makes (``bench_compact_gap.py`` splits
  the whole residual-stream cost out of a profile).

Each is timed interleaved with the reference at batch 1 and 32; ``time / pad 8`` below 1 means the layout pays.

Usage: python benchmarks/bench_compact_layouts.py [--quick] [--out benchmarks/results/compact_layouts.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from timm.models.vision_transformer import Block

from sparselab.structure.compact import CompactBlock, compact_stats, compact_vit
from sparselab.structure.compact.modules import SelectChannels, add_branch, scattered_channels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compact_latency import interleaved_ms, p3b_pruner, random_images  # noqa: E402

MODEL = "deit_small_patch16_224"
RATIOS = (0.5, 0.75, 0.9)
UNITS = ("dim", "head")
REFERENCE = "pad 8"
LAYOUTS = (REFERENCE, "selection inline", "MLP added in place", "scatter into zeros", "pad 16", "pad 32",
           "unsliced inputs", "unsliced inputs and outputs", "contiguous channels")


class InPlaceMlpBlock(CompactBlock):
    """:class:`CompactBlock` adding its MLP branch in place into the stream after attention (inference only: the
    stream is this block's own intermediate, and nothing here hooks it)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = add_branch(x, self.attn(self.norm1(x), *args, **kwargs), self.ls1, self.drop_path1)
        out = self.mlp(self.norm2(x))
        index = scattered_channels(self.ls2, self.drop_path2)
        if index is not None:
            return x.index_add_(-1, index, out)
        return x.add_(self.drop_path2(self.ls2(out)))


def inline_input(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a compact branch's ``Sequential(norm, SelectChannels)``: the norm called alone and the
    channels gathered inline (two module calls fewer; nothing hooks these models)."""
    if isinstance(norm, torch.nn.Sequential) and isinstance(norm[-1], SelectChannels):
        h = norm[0](x)
        return h.gather(-1, norm[-1].index.expand(*h.shape[:-1], -1))
    return norm(x)


class InlineSelectBlock(CompactBlock):
    """:class:`CompactBlock` calling each branch's norm alone and gathering its input channels inline, instead of
    calling the ``Sequential`` of the norm and its :class:`SelectChannels`. Inference only."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = add_branch(x, self.attn(inline_input(self.norm1, x), *args, **kwargs), self.ls1, self.drop_path1)
        return add_branch(x, self.mlp(inline_input(self.norm2, x)), self.ls2, self.drop_path2)


class FirstChannels(torch.nn.Module):
    """The first ``k`` channels of the last dimension, as a view (stands in for a gather of ``k`` channels)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :self.k]


class SliceAddBlock(CompactBlock):
    """:class:`CompactBlock` adding each branch into the first channels of a copy of the stream (a slice add where
    the reference has an ``index_add``; the same copies, no scatter). Shapes only."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for norm, branch, ls, drop_path in ((self.norm1, self.attn, self.ls1, self.drop_path1),
                                            (self.norm2, self.mlp, self.ls2, self.drop_path2)):
            out = branch(norm(x), *args, **kwargs) if branch is self.attn else branch(norm(x))
            if scattered_channels(ls, drop_path) is None:
                x = x + drop_path(ls(out))
            else:
                x = x.clone()
                x[..., :out.shape[-1]] += out
        return x


def contiguous(reference: torch.nn.Module) -> torch.nn.Module:
    """``reference`` with every channel gather a view of the first channels and every ``index_add`` a slice add."""
    model = copy.deepcopy(reference)
    for blk in model.blocks:
        for norm in (blk.norm1, blk.norm2):
            if isinstance(norm, torch.nn.Sequential) and isinstance(norm[-1], SelectChannels):
                norm[-1] = FirstChannels(norm[-1].index.numel())
        blk.__class__ = SliceAddBlock
    return model


def p3b_masks(prune_ratio: float, qkv_unit: str) -> tuple[torch.nn.Module, dict]:
    """The model P3B pruned (gates removed) and its hard masks, from the same run as ``bench_compact_latency.py``."""
    pruner = p3b_pruner(MODEL, prune_ratio, random_images(), qkv_unit)
    masks = pruner.hard_masks()
    pruner.remove()
    return pruner.structure.model, masks


def layouts(model: torch.nn.Module, masks: dict, qkv_unit: str) -> dict[str, torch.nn.Module]:
    """The compact model in every layout of :data:`LAYOUTS`."""
    def widened(gates: tuple[str, ...]) -> dict:  # live gates in ``gates`` kept whole (shapes only)
        return {i: {g: torch.ones_like(m) if g in gates and bool(m.any()) else m for g, m in per.items()}
                for i, per in masks.items()}

    reference = compact_vit(model, masks, pad_to=8, qkv_unit=qkv_unit).eval()
    scatter, in_place, inline = copy.deepcopy(reference), copy.deepcopy(reference), copy.deepcopy(reference)
    for model_copy, cls in ((scatter, Block), (in_place, InPlaceMlpBlock), (inline, InlineSelectBlock)):
        for blk in model_copy.blocks:
            blk.__class__ = cls
    return {REFERENCE: reference, "selection inline": inline, "MLP added in place": in_place,
            "scatter into zeros": scatter,
            "pad 16": compact_vit(model, masks, pad_to=16, qkv_unit=qkv_unit).eval(),
            "pad 32": compact_vit(model, masks, pad_to=32, qkv_unit=qkv_unit).eval(),
            "unsliced inputs": compact_vit(model, widened(("attn_in", "mlp_in")), pad_to=8, qkv_unit=qkv_unit).eval(),
            "unsliced inputs and outputs": compact_vit(
                model, widened(("attn_in", "mlp_in", "attn_out", "mlp_out")), pad_to=8, qkv_unit=qkv_unit).eval(),
            "contiguous channels": contiguous(reference).eval()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="75 % only, fewer repeats")
    parser.add_argument("--out", default="benchmarks/results/compact_layouts.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ratios = (0.75,) if args.quick else RATIOS
    repeats = {1: 10 if args.quick else 40, 32: 2 if args.quick else 8}
    models, macs = {}, {}
    for ratio in ratios:
        for unit in UNITS:
            model, masks = p3b_masks(ratio, unit)
            for name, m in layouts(model, masks, unit).items():
                models[ratio, unit, name] = m
                macs[ratio, unit, name] = compact_stats(m)["flops"]
    rows = []
    for batch, reps in repeats.items():
        ms = interleaved_ms(models, batch, reps)
        for (ratio, unit, name), t in ms.items():
            ref = ms[ratio, unit, REFERENCE]
            rows.append({"prune_ratio": ratio, "qkv_unit": unit, "layout": name, "batch": batch, "ms": t,
                         "vs_reference": t / ref, "macs_vs_reference": macs[ratio, unit, name] /
                         macs[ratio, unit, REFERENCE]})
            print(f"{ratio:.2f} {unit:4s} {name:28s} batch {batch:2d}: {t:8.1f} ms, {t / ref:.3f}x pad 8", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": 2, "model": MODEL, "repeats": repeats, "rows": rows},
                              indent=2))


if __name__ == "__main__":
    main()

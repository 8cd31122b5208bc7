"""Command line: ``sparselab pretrain``, ``sparselab train``, ``sparselab datasets``, ``sparselab models``.

Example:
    $ sparselab train --model vit_mini_patch7_28 --pretrained fashion_mnist --data digits --epochs 10 --out runs/demo
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SparselabError


def _cmd_pretrain(args) -> int:
    from .models.pretrained import pretrain

    path = pretrain(args.model, args.dataset, args.recipe, force=args.force)
    print(path)
    print(path.with_suffix(".json").read_text())
    return 0


def _cmd_train(args) -> int:
    import torch

    from . import data as sl_data
    from . import models
    from .training import fit

    torch.manual_seed(args.seed)
    bundle = sl_data.load(args.data, image_size=args.image_size, limit=args.limit)
    pretrained = args.pretrained
    if pretrained in ("true", "True"):
        pretrained = True
    model = models.create(args.model, num_classes=bundle.num_classes, in_chans=bundle.in_chans,
                          pretrained=pretrained or False, **({"recipe": args.recipe} if args.recipe else {}))
    out = Path(args.out)
    history = fit(model, bundle, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  weight_decay=args.weight_decay, optimizer=args.optimizer, seed=args.seed,
                  checkpoint_dir=out / "checkpoint", resume=args.resume)
    history.meta.update({"command": " ".join(sys.argv), "pretrained": str(args.pretrained)})
    history.save(out / "history.jsonl.gz")
    summary = {split: {k: history.last(k, split) for k in ("acc", "loss")} for split in ("val", "test")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"history: {out / 'history.jsonl.gz'}")
    return 0


def _cmd_list(args) -> int:
    if args.command == "datasets":
        from .data import available

        for name, desc in available().items():
            print(f"{name:16s} {desc}")
    else:
        from .models import available

        print("\n".join(available(include_timm=args.all)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparselab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train and cache a source-pretrained small ViT")
    p.add_argument("--model", default="vit_mini_patch7_28")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--recipe", default="default")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.set_defaults(fn=_cmd_pretrain)

    t = sub.add_parser("train", help="train (or fine-tune) a model and save its History")
    t.add_argument("--model", default="vit_mini_patch7_28")
    t.add_argument("--data", default="digits")
    t.add_argument("--pretrained", default=None, help="fashion_mnist, a checkpoint path, or true (timm hub)")
    t.add_argument("--recipe", default=None, help="source-pretraining recipe (default, quick)")
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--limit", type=int, default=None, help="cap on training images")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--optimizer", default="adamw")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/train")
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    t.set_defaults(fn=_cmd_train)

    for name in ("datasets", "models"):
        lp = sub.add_parser(name, help=f"list available {name}")
        if name == "models":
            lp.add_argument("--all", action="store_true", help="include every timm ViT/DeiT")
        lp.set_defaults(fn=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SparselabError as exc:
        print(f"sparselab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line: ``sparselab pretrain | train | p3b | art | presets | figures | datasets | models``.

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


def _cmd_p3b(args) -> int:
    import torch

    from .experiments import p3b_preset, run_p3b
    from .probes import FAST_PROBES
    from .pruners import P3BSchedule
    from .training import distributed as dist_utils

    changes: dict = {}
    if args.model:
        changes["model"] = args.model
    if args.pretrained is not None:
        changes["pretrained"] = {"none": False, "false": False, "true": True}.get(args.pretrained.lower(),
                                                                                    args.pretrained)
    if args.data:
        changes["data"] = args.data
    if args.image_size is not None:
        changes["image_size"] = args.image_size
    preset = p3b_preset(args.preset, **changes)
    data_options = dict(preset.data_options)
    if args.data_root:
        data_options["root"] = args.data_root
    if args.limit:
        data_options["limit"] = args.limit
    fit_options = dict(preset.fit)
    finetune = dict(preset.finetune)
    for key, value in (("batch_size", args.batch_size), ("max_steps_per_epoch", args.max_steps_per_epoch),
                       ("num_workers", args.workers), ("lr", args.lr)):
        if value is not None:
            fit_options[key] = value
            finetune[key] = value
    schedule = preset.schedule
    if args.schedule:
        w, s_, f = (int(v) for v in args.schedule.split(","))
        schedule = P3BSchedule(warmup=w, sparsify=s_, finalize=f, updates_per_epoch=schedule.updates_per_epoch)
    preset = preset.replace(data_options=data_options, fit=fit_options, finetune=finetune, schedule=schedule,
                            finetune_epochs=args.finetune_epochs if args.finetune_epochs is not None
                            else preset.finetune_epochs,
                            patch_probe=None if args.patch_probe == "none" else (args.patch_probe or preset.patch_probe),
                            probe_options={**preset.probe_options, **(FAST_PROBES if args.fast_probes else {}),
                                           **({"probe_every": args.probe_every} if args.probe_every else {}),
                                           **({"probe_fraction": args.probe_fraction} if args.probe_fraction else {})})
    if args.dry_run:
        return _dry_run(preset)
    out = Path(args.out)
    run = run_p3b(preset, args.method, args.prune_ratio, args.seed, checkpoint_dir=str(out / "checkpoint"),
                  resume=args.resume, measure_latency=not args.no_latency)
    rank, _ = dist_utils.world()
    if rank == 0:
        run.history.save(out / "history.jsonl.gz")
        if run.finetune_history is not None:
            run.finetune_history.save(out / "finetune_history.jsonl.gz")
        if run.pruner is not None:
            run.pruner.save_compact(out / "compact", model=run.model)
        (out / "result.json").write_text(json.dumps({"preset": preset.name, "method": args.method,
                                                     "prune_ratio": args.prune_ratio, "seed": args.seed,
                                                     "patch_probe": preset.patch_probe,
                                                     "probe_options": preset.probe_options, **run.result}, indent=2))
        print(json.dumps(run.result, indent=2))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _cmd_art(args) -> int:
    from .experiments import art as art_exp
    from .training import distributed as dist_utils

    changes: dict = {}
    for key in ("model", "data", "image_size", "warmup_epochs", "max_art_epochs", "finetune_epochs", "lam_init",
                "eta"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = value
    preset = art_exp.art_preset(args.preset, **changes)
    if args.data_root:
        preset = preset.replace(data_options={**preset.data_options, "root": args.data_root})
    for key, value in (("batch_size", args.batch_size), ("max_steps_per_epoch", args.max_steps_per_epoch)):
        if value is not None:
            preset = preset.replace(fit={**preset.fit, key: value}, finetune={**preset.finetune, key: value})
    if args.dry_run:
        return _dry_run(preset)
    run = art_exp.run_art(preset, args.method, args.sparsity, args.seed)
    rank, _ = dist_utils.world()
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        run.history.save(out / "history.jsonl.gz")
        run.finetune_history.save(out / "finetune_history.jsonl.gz")
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "result.json").write_text(json.dumps({"preset": preset.name, "method": args.method,
                                                     "sparsity": args.sparsity, "seed": args.seed, **run.result},
                                                    indent=2))
        print(json.dumps(run.result, indent=2))
    return 0


def _dry_run(preset) -> int:
    """Print the resolved recipe (schedules in optimizer steps) and exit without training."""
    from .experiments.presets import load_data
    from .experiments.recipes import format_recipe, resolved_recipe

    try:
        data = load_data(preset)
        note = ""
    except SparselabError as exc:
        data, note = None, f"(step counts need the data, which is not here: {exc})"
    print(format_recipe(resolved_recipe(preset, data)))
    if note:
        print(note)
    return 0


def _cmd_presets(args) -> int:
    from .experiments import recipes

    if args.action == "list":
        for name, preset in recipes.all_presets().items():
            kind = "P3B" if isinstance(preset, recipes.P3BPreset) else "ART"
            print(f"{name:32s} {kind}  {preset.model} on {preset.data}")
        return 0
    if args.action == "markdown":
        text = recipes.render_markdown()
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
            print(args.out)
        else:
            print(text)
        return 0
    if not args.name:
        print("sparselab: error: presets show needs a preset name (see: sparselab presets list)", file=sys.stderr)
        return 2
    print(recipes.render_table(args.name))
    return 0


def _cmd_figures(args) -> int:
    from . import plots
    from .history import History

    history = History.load(args.history)
    run = args.run
    if run is None and "runs" in history.meta:
        run = next((r for r in history.meta["runs"] if r.startswith("p3b")), next(iter(history.meta["runs"])))
    figures = {}
    if "keep_goal" in set(history.blocks.metric):
        figures.update({
            "block_benefit_heatmap": plots.plot_block_benefit(history, view="heatmap", run=run),
            "block_benefit_profile": plots.plot_block_benefit(history, view="profile", run=run),
            "keep_ratios": plots.plot_keep_ratios(history, run=run),
            "reactivations": plots.plot_reactivations(history, run=run),
        })
    elif "benefit_cls" in set(history.blocks.metric):
        figures["block_benefit_profile"] = plots.plot_block_benefit(history, view="profile", run=run)
    if "runs" in history.meta and any(m.get("profiles") for m in history.meta["runs"].values()):
        figures["gradient_profile"] = plots.plot_gradient_profile(history, run=run)
        figures["exchange"] = plots.plot_exchange(history)
    if not figures:
        print("sparselab: error: no figure applies to this History", file=sys.stderr)
        return 2
    for path in plots.export_figures(figures, args.out, formats=args.format):
        print(path)
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

    pb = sub.add_parser("p3b", help="prune a ViT with P3B (or a baseline) during transfer; torchrun-launchable")
    pb.add_argument("--preset", default="cpu", help="tiny, cpu, paper-deit-{s,t}-{cifar100,ifood,inat19}[-ft50] "
                                                    "(sparselab presets list)")
    pb.add_argument("--method", default="p3b", help="p3b, uniform, global_taylor, l1, fixed, dense")
    pb.add_argument("--prune-ratio", type=float, default=0.5)
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--model", default=None)
    pb.add_argument("--pretrained", default=None, help="true (timm hub), none, fashion_mnist or a checkpoint path")
    pb.add_argument("--data", default=None)
    pb.add_argument("--data-root", default=None, help="where the dataset lives (ImageFolder tree, torchvision root)")
    pb.add_argument("--image-size", type=int, default=None)
    pb.add_argument("--limit", type=int, default=None)
    pb.add_argument("--batch-size", type=int, default=None)
    pb.add_argument("--lr", type=float, default=None)
    pb.add_argument("--max-steps-per-epoch", type=int, default=None)
    pb.add_argument("--workers", type=int, default=None)
    pb.add_argument("--schedule", default=None, help="warmup,sparsify,finalize epochs, e.g. 10,25,50")
    pb.add_argument("--finetune-epochs", type=int, default=None)
    pb.add_argument("--patch-probe", default=None, help="conv2, conv1, linear or none")
    pb.add_argument("--probe-every", type=int, default=None,
                    help="run the patch probes on every k-th step only (default 1: every step)")
    pb.add_argument("--probe-fraction", type=float, default=None,
                    help="share of each batch the patch probes see, in (0, 1] (default 1)")
    pb.add_argument("--fast-probes", action="store_true",
                    help="sparselab.probes.FAST_PROBES: patch probes on every 8th step and a quarter of the batch")
    pb.add_argument("--no-latency", action="store_true")
    pb.add_argument("--out", default="runs/p3b")
    pb.add_argument("--resume", action="store_true")
    pb.add_argument("--dry-run", action="store_true",
                    help="print the resolved recipe (data, image size, effective batch, schedules in optimizer "
                         "steps) and exit without training")
    pb.set_defaults(fn=_cmd_p3b)

    ar = sub.add_parser("art", help="sparsify with ART (HyperSparse/L1/L2) or a magnitude baseline, then fine-tune")
    ar.add_argument("--preset", default="cpu", help="tiny, cpu, cpu-cnn, paper-{resnet32,vgg19}-{cifar10,cifar100,"
                                                    "tinyimagenet} (sparselab presets list)")
    ar.add_argument("--method", default="hypersparse", help="hypersparse, l1, l2, gmp, oneshot, layerwise")
    ar.add_argument("--sparsity", type=float, default=0.98, help="0.9, 0.98, 0.995, 0.998 in the paper")
    ar.add_argument("--seed", type=int, default=0)
    ar.add_argument("--model", default=None)
    ar.add_argument("--data", default=None)
    ar.add_argument("--data-root", default=None)
    ar.add_argument("--image-size", type=int, default=None)
    ar.add_argument("--warmup-epochs", type=int, default=None)
    ar.add_argument("--max-art-epochs", type=int, default=None)
    ar.add_argument("--finetune-epochs", type=int, default=None)
    ar.add_argument("--lam-init", type=float, default=None)
    ar.add_argument("--eta", type=float, default=None)
    ar.add_argument("--batch-size", type=int, default=None)
    ar.add_argument("--max-steps-per-epoch", type=int, default=None)
    ar.add_argument("--out", default="runs/art")
    ar.add_argument("--dry-run", action="store_true",
                    help="print the resolved recipe (schedules in optimizer steps) and exit without training")
    ar.set_defaults(fn=_cmd_art)

    ps = sub.add_parser("presets", help="list presets, or show one beside the reference recipe")
    ps.add_argument("action", choices=("list", "show", "markdown"))
    ps.add_argument("name", nargs="?", default=None, help="a preset name (for show)")
    ps.add_argument("--out", default=None, help="for markdown: write to this file (e.g. docs/presets.md)")
    ps.set_defaults(fn=_cmd_presets)

    fg = sub.add_parser("figures", help="write the key figures of a saved History as PNG/SVG/PDF")
    fg.add_argument("history", help="a History file (.jsonl or .jsonl.gz)")
    fg.add_argument("--run", default=None, help="the run of a merged History (default: the first P3B run)")
    fg.add_argument("--out", default="runs/figures")
    fg.add_argument("--format", nargs="+", default=["png"], help="png, svg, pdf")
    fg.set_defaults(fn=_cmd_figures)

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

"""Run every benchmark (each in its own process) and write benchmarks/RESULTS.md from their JSON results.

Usage:
    python benchmarks/run_all.py            # the full measurements (over an hour on 2 cores) -> RESULTS.md
    python benchmarks/run_all.py --quick    # a few minutes: shorter runs, fewer repeats, one seed (no head pruning)
                                            #   -> benchmarks/results/quick/RESULTS.md (the full results stay)
    python benchmarks/run_all.py --render   # only rewrite RESULTS.md from benchmarks/results/*.json
    python benchmarks/run_all.py --only hypersparse history
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = {  # name: script
    "hypersparse": "bench_hypersparse.py",
    "p3b_probes": "bench_p3b_probes.py",
    "compact_latency": "bench_compact_latency.py",
    "compact_layouts": "bench_compact_layouts.py",
    "compact_gap": "bench_compact_gap.py",
    "history": "bench_history.py",
    "memory": "bench_memory.py",
    "explorers": "bench_explorers.py",
    "onnx_latency": "bench_onnx_latency.py",
    "head_pruning": "bench_head_pruning.py",
}
#: left out of --quick (which stays under 5 minutes): accuracy over seeds has no meaningful short form, and the
#: layout comparison and the split of the gap to the anchors add nothing a quick check needs; ``--quick --only
#: head_pruning compact_layouts compact_gap`` still runs their smoke versions
NOT_QUICK = ("head_pruning", "compact_layouts", "compact_gap")


def run(names: list[str], quick: bool, folder: Path) -> None:
    env = {**os.environ, "SPARSELAB_OFFLINE": os.environ.get("SPARSELAB_OFFLINE", "1")}
    for name in names:
        cmd = [sys.executable, str(HERE / BENCHMARKS[name]), "--out", str(folder / f"{name}.json")]
        if quick:
            cmd.append("--quick")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        print(f"== {name}: {time.perf_counter() - t0:.0f} s", flush=True)


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _heading(title: str, result: dict) -> str:
    """A section heading, tagged ``(quick)`` for results of a ``--quick`` run."""
    return f"## {title}{' (quick)' if result.get('quick') else ''}"


def _ratio_with_runs(row: dict) -> str:
    """A step ratio, with the range of its repeated passes where there were several."""
    runs = row.get("step_ratio_runs", [])
    spread = f" ({min(runs):.2f}-{max(runs):.2f})" if len(runs) > 1 else ""
    return f"{row['step_ratio']:.2f}x{spread}"


def _met(ok: bool) -> str:
    return "**yes**" if ok else "no"


def render(folder: Path = RESULTS) -> str:
    parts = ["# Benchmark results", "",
             "Written by `python benchmarks/run_all.py` from `benchmarks/results/*.json`. Measured on the project's "
             "2-core CPU machine with `torch.set_num_threads(2)`; every number is a ratio of timings taken in the "
             "same run (absolute times on this shared machine are noise). A `(quick)` tag marks results of "
             "`--quick`, which shortens runs and repeats.", ""]
    hs = _load(folder, "hypersparse")
    if hs:
        parts += [_heading("HyperSparse overhead per training step", hs), "",
                  "Share of one plain training step (forward, backward, SGD step). *in place*: "
                  "`HyperSparse.add_gradient` (what ART trains with: banded exact threshold on every step, "
                  "sigmoid-based gradient into `.grad`, fused kernels from 4 M weights on); *loss path*: the same "
                  "regularizer backpropagated as a loss (np.partition threshold, per-tensor sums); *reference*: "
                  "full `torch.sort` and one concatenated copy. "
                  "Goal: ≤ 5 % for ResNet-32 and VGG-19.", ""]
        rows = []
        for r in hs["rows"]:
            goal = "resnet32 (" in r["model"] or "vgg19" in r["model"]
            rows.append([r["model"], f"{r['ours_share_of_step']:.1%}", f"{r['loss_path_share_of_step']:.1%}",
                         f"{r['reference_share_of_step']:.1%}", f"{r['speedup_vs_loss_path']:.1f}x",
                         f"{r['speedup_vs_reference']:.1f}x",
                         _met(r["ours_share_of_step"] <= 0.05) if goal else "–"])
        parts += [_table(["model", "in place / step", "loss path / step", "reference / step",
                          "in place vs loss path", "in place vs reference", "≤ 5 %"], rows), ""]
    pb = _load(folder, "p3b_probes")
    if pb:
        fast = pb["fast_row"]
        parts += [_heading("P3B step cost and cheaper block-benefit estimators", pb),
                  "",
                  f"P3B at 50 % on the `{pb['preset']}` preset. Step cost: wall time of the P3B steps over that of "
                  "plain fine-tuning steps interleaved with them on the same batches (`dense` is the control; "
                  "with patch probes on every k-th step, steps with and without them are averaged apart and "
                  "weighted 1/k and 1 − 1/k); the median of repeated passes, their range in brackets. "
                  f"Agreement over seeds {pb['seeds']}: ρ is the Spearman correlation with the reference run of the "
                  "same seed (final per-block keep ratios; block importance averaged over all updates); Δacc is the "
                  "compact model's test accuracy after its fine-tune, mean over seeds, minus the reference's "
                  f"(reference seed std: {pb['reference_acc_seed_std'] * 100:.2f} points). "
                  "Goal: ≤ 1.10x plain with keep-ratio ρ ≥ 0.9 and |Δacc| within seed noise (two reference seed "
                  f"standard deviations). `sl.probes.FAST_PROBES` is the row \"{fast}\".", ""]
        rows = []
        noise = pb["reference_acc_seed_std"]
        for r in pb["rows"]:
            has = "keep_spearman" in r
            ok = has and r["step_ratio"] <= 1.10 and r["keep_spearman"] >= 0.9 and abs(r["acc_diff"]) <= 2 * noise
            rows.append([r["estimator"], _ratio_with_runs(r),
                         f"{r['keep_spearman']:.2f}" if has else "–", f"{r['benefit_spearman']:.2f}" if has else "–",
                         f"{r['acc'] * 100:.2f}" if has else "–", f"{r['acc_diff'] * 100:+.2f}" if has else "–",
                         _met(ok) if has else "–"])
        parts += [_table(["estimator", "step / plain", "keep ρ", "benefit ρ", "acc %", "Δacc (points)",
                          "goal"], rows), ""]
        if pb.get("deit_rows"):
            parts += ["The same step ratio on the model family the paper prunes: DeiT-Tiny at 224 px (random "
                      "weights and images, batch 32, P3B at 50 %; warm-up, sparsify and finalize phases, "
                      f"{pb['deit_rows'][0]['steps'] // 3 + 1} steps each, the first of each not timed). "
                      "The `cpu-digits` ViT above "
                      "has 17 tokens of width 128, where per-operation overheads outweigh the arithmetic; "
                      "allocation quality is only measured there. Goal: ≤ 1.10x plain for `FAST_PROBES`.", ""]
            rows = [[r["estimator"], f"{r['step_ratio']:.2f}x", str(r["steps"]), f"{r['plain_step_ms']:.0f}",
                     _met(r["step_ratio"] <= 1.10) if r["estimator"] == fast else "–"] for r in pb["deit_rows"]]
            parts += [_table(["estimator (DeiT-Tiny, 224 px)", "step / plain", "timed steps", "plain step ms",
                              "≤ 1.10x"], rows), ""]
    cl = _load(folder, "compact_latency")
    if cl:
        parts += [_heading("Compact-model CPU latency (P3B-compacted DeiT, random weights, 224 px)", cl), "",
                  "Forward time of the compact model against the dense one (interleaved, median), and the ideal "
                  "speed-up from the multiply-accumulate count of the unpadded compact model. *exact*: P3B as the "
                  "reference prunes attention, by head dimension (every head stays, narrower); *heads*: P3B with "
                  "`qkv_unit=\"head\"`, pruning whole heads (the compact attention has fewer heads of the full "
                  "width; a separate run with its own allocation). `pad 8`: `pruner.compact(pad_to=8)`, kept widths "
                  "rounded up to multiples of 8 with zero weights (same outputs). *uniform*: the faster of two "
                  "uniformly narrower timm ViTs with the multiply-accumulates of the unpadded compact model of the "
                  "same run and the same residual width (narrower heads; fewer whole heads), timed in the "
                  "same rounds; *vs uniform* is the compact model's time over it, *vs narrower / fewer heads* its "
                  "time over each anchor's. Goals: within 10 % of the uniform model, and ≥ 85 % of the ideal for "
                  "DeiT-S at 50 %, batch 32. The *exact* layout keeps every head, so its attention computes "
                  "a softmax over as many token-by-token score maps as the dense model, where the *fewer heads* "
                  "anchor computes one per kept head; the *narrower heads* anchor has the same head count as "
                  "*exact*, the *fewer heads* anchor the same kind of heads as *heads*. The compact models' MLPs "
                  "(`CompactMlp`) apply their GELU in place on hidden activations of 4 MiB or more, which spares "
                  "them one freshly page-faulted buffer per block at batch 32; the dense model and the anchors "
                  "are plain timm modules. *heads*: attention heads over all blocks of the compact model / of the "
                  "narrower-heads / of the fewer-heads anchor (each head computes its own softmax over a "
                  "token-by-token score map, which the multiply-accumulate count leaves out).", ""]
        def over(r: dict, anchor: str) -> str:
            ms = r.get("uniform_ms", {}).get(anchor)
            return "–" if ms is None else f"{r['compact_ms'] / ms:.2f}x"

        def heads(r: dict) -> str:
            anchors = r.get("uniform_heads", {})
            return " / ".join([str(r["heads"])] + [str(anchors.get(a, "–")) for a in ("narrower heads", "fewer heads")])

        with_heads = all("heads" in r for r in cl["rows"])
        rows = []
        for r in [r for r in cl["rows"] if "allocator" not in r]:
            has = "vs_uniform" in r
            variant = r.get("variant", "exact" if r.get("pad_to", 1) == 1 else f"exact, pad {r['pad_to']}")
            rows.append([r["model"], f"{r['prune_ratio']:.0%}", variant, str(r["batch"]),
                         f"{r['dense_ms']:.1f}", f"{r['compact_ms']:.1f}",
                         f"{min(r['uniform_ms'].values()):.1f}" if has else "–", f"{r['params_ratio']:.2f}",
                         f"{r['speedup']:.2f}x", f"{r['ideal_speedup']:.2f}x", f"{r['speedup_over_ideal']:.0%}",
                         f"{over(r, 'narrower heads')} / {over(r, 'fewer heads')}",
                         *([heads(r)] if with_heads else []),
                         f"{r['vs_uniform']:.2f}x" if has else "–", _met(r["vs_uniform"] <= 1.10) if has else "–"])
        parts += [_table(["model", "pruned", "layout", "batch", "dense ms", "compact ms", "uniform ms", "params kept",
                          "speed-up", "ideal", "of ideal", "vs narrower / fewer heads",
                          *(["heads"] if with_heads else []), "vs uniform", "≤ 1.10x"], rows), ""]
        tuned = [r for r in cl["rows"] if "allocator" in r]
        if tuned:
            parts += [f"The same models timed again in a process started with `{tuned[0]['allocator']}`: glibc then "
                      "keeps freed blocks above 32 MB for reuse instead of returning them to the kernel, so the "
                      "1536-unit MLP activations at batch 32 (38.7 MB, in the dense model and in P3B's full-width "
                      "blocks, not in the uniform anchors) stop page-faulting on every forward pass. *vs narrower / "
                      "fewer heads*: the compact model's time over each anchor's.", ""]
            rows = [[r["model"], f"{r['prune_ratio']:.0%}", r["variant"], str(r["batch"]), f"{r['dense_ms']:.1f}",
                     f"{r['compact_ms']:.1f}", f"{min(r['uniform_ms'].values()):.1f}" if "vs_uniform" in r else "–",
                     f"{r['speedup']:.2f}x", f"{r['speedup_over_ideal']:.0%}",
                     f"{over(r, 'narrower heads')} / {over(r, 'fewer heads')}",
                     _met(r["vs_uniform"] <= 1.10) if "vs_uniform" in r else "–"] for r in tuned]
            parts += [_table(["model", "pruned", "layout", "batch", "dense ms", "compact ms", "uniform ms",
                              "speed-up", "of ideal", "vs narrower / fewer heads", "≤ 1.10x"], rows), ""]
    lay = _load(folder, "compact_layouts")
    if lay:
        parts += [_heading("Compact-model layouts (P3B-compacted DeiT-S, random weights, 224 px)", lay), "",
                  "Ways to lay out the same compact model for speed, each timed interleaved with the layout "
                  "`compact(pad_to=8)` builds (*time / pad 8* below 1: the layout pays). *selection inline*: "
                  "each branch's norm called alone and its input channels gathered inline, where `CompactBlock` "
                  "calls the `Sequential` of the norm and its `SelectChannels` (two module calls fewer per branch). "
                  "*MLP added in place*: "
                  "`CompactBlock` adding its MLP branch in place into the block's own stream after attention "
                  "instead of out of place (one full-width copy less per block). *scatter into zeros*: "
                  "timm's `Block.forward`, which adds a branch writing only some residual channels by scattering it "
                  "into a zero tensor of the full width (the layout before `CompactBlock`'s single `index_add`); "
                  "*pad 16 / 32*: kept widths rounded up to larger multiples with zero weights; *unsliced inputs*: "
                  "the first Linear of each branch reads the full residual width (zero columns) instead of a "
                  "gathered subset, *and outputs*: also writes the full width (zero rows) instead of adding into a "
                  "subset (shapes only). *contiguous channels*: every branch reads its first k residual channels "
                  "as a view and adds into its first k channels of a copy of the stream (no gather, no scatter; "
                  "shapes only, since no channel order makes every block's channels contiguous at once): what "
                  "the gather and scatter kernels cost beyond contiguous access. *MACs / pad 8*: "
                  "multiply-accumulates over those of the reference.", ""]
        cells: dict = {}  # (ratio, unit, layout) -> batch -> row, in the benchmark's own order
        for r in lay["rows"]:
            cells.setdefault((r["prune_ratio"], r["qkv_unit"], r["layout"]), {})[r["batch"]] = r
        rows = [[f"{ratio:.0%}", {"dim": "head dimensions", "head": "whole heads"}[unit], name,
                 f"{next(iter(by.values()))['macs_vs_reference']:.2f}",
                 *(f"{by[b]['vs_reference']:.2f}x" if b in by else "–" for b in (1, 32))]
                for (ratio, unit, name), by in cells.items() if name != "pad 8"]
        parts += [_table(["pruned", "P3B prunes", "layout", "MACs / pad 8", "time / pad 8, batch 1",
                          "time / pad 8, batch 32"], rows), ""]
    gap = _load(folder, "compact_gap")
    if gap:
        parts += [_heading("Compact models against the uniform anchor: where the difference goes", gap), "",
                  f"The head-pruned compact models (`{gap['variant']}`) of the latency table at 75 % and 90 %, timed "
                  "interleaved with the faster uniform anchor of the same multiply-accumulates (*time / anchor*), "
                  "then profiled (`torch.profiler`, median of "
                  f"{gap['rounds']} alternating rounds): the time of the top-level ATen operations summed by kind. "
                  "Each kind is the compact model's time minus the anchor's, as a share of the anchor's profiled "
                  "time, so the kinds add up to *profiled* minus one. *residual stream*: the compact model's "
                  "channel gathers and `index_add` (a copy of the stream plus an add into some of its channels) "
                  "against the anchor's plain residual adds; *between operations*: profiled wall time outside any "
                  "ATen operation (Python and module calls, and the profiler's own cost per operation, which weighs "
                  "on batch 1); *patch embedding* is the same convolution in both, so its share shows the noise. "
                  "*hidden units*, *heads*: MLP hidden units and attention heads over all blocks, "
                  "compact / anchor. *compiled*: the compact model's time over the anchor's with both compiled by "
                  "`torch.compile` (inductor, static shapes; interleaved medians): what remains of the difference "
                  "without Python, module calls and per-operation dispatch, with the elementwise work fused.", ""]
        kinds = gap["kinds"]
        rows = [[r["model"], f"{r['prune_ratio']:.0%}", str(r["batch"]), r["anchor"], f"{r['vs_anchor']:.2f}x",
                 f"{r['profiled_vs_anchor']:.2f}x", *(f"{r['difference_by_kind'][k]:+.1%}" for k in kinds),
                 f"{r['hidden_units']} / {r['anchor_hidden_units']}", f"{r['heads']} / {r['anchor_heads']}",
                 f"{r['compiled_vs_anchor']:.2f}x" if r.get("compiled_vs_anchor") else "–"]
                for r in gap["rows"]]
        parts += [_table(["model", "pruned", "batch", "anchor", "time / anchor", "profiled", *kinds,
                          "hidden units", "heads", "compiled"], rows), ""]
    hp = _load(folder, "head_pruning")
    if hp:
        parts += [_heading("Head pruning: accuracy", hp), "",
                  f"P3B pruning whole heads (`qkv_unit=\"head\"`, an extension) against P3B pruning head "
                  f"dimensions (the reference) on the `{hp['preset']}` preset, seeds {hp['seeds']}: the compact "
                  "model's test accuracy after its fine-tune, and the paired difference heads − dimensions with "
                  "its 95 % interval. The speed side is in the compact-latency table (*heads* rows).", ""]
        rows = [[f"{r['prune_ratio']:.0%}", f"{r['acc_dim'] * 100:.2f}", f"{r['acc_head'] * 100:.2f}",
                 f"{r['diff'] * 100:+.2f}",
                 f"[{r['low'] * 100:+.2f}, {r['high'] * 100:+.2f}]" if r["n"] > 1 else "–", str(r["n"])]
                for r in hp["summary"]]
        parts += [_table(["pruned", "head dimensions acc %", "whole heads acc %", "heads − dimensions (points)",
                          "95 % interval", "seeds"], rows), ""]
    ox = _load(folder, "onnx_latency")
    if ox:
        parts += [_heading("Compact models in ONNX Runtime", ox), "",
                  "The deployment path: dense and P3B-compacted DeiT models (random weights, 224 px, `pad_to=8`) "
                  "exported with `sl.structure.export_onnx` (outputs checked against PyTorch) and timed in ONNX "
                  "Runtime on the CPU with 2 threads, beside the same models in PyTorch, eager and compiled with "
                  "`torch.compile` (inductor, static shapes; interleaved medians). *compiled vs eager*: the compiled "
                  "compact model's time over the eager compact model's.", ""]
        rows = [[r["model"], f"{r['prune_ratio']:.0%}", r["variant"], str(r["batch"]), f"{r['ort_dense_ms']:.1f}",
                 f"{r['ort_compact_ms']:.1f}", f"{r['ort_speedup']:.2f}x", f"{r['torch_speedup']:.2f}x",
                 f"{r['compiled_speedup']:.2f}x" if r.get("compiled_speedup") else "–",
                 f"{r['compiled_compact_ms'] / r['torch_compact_ms']:.2f}x" if r.get("compiled_speedup") else "–",
                 f"{r['ideal_speedup']:.2f}x"] for r in ox["rows"]]
        parts += [_table(["model", "pruned", "layout", "batch", "ORT dense ms", "ORT compact ms", "ORT speed-up",
                          "PyTorch speed-up", "compiled speed-up", "compiled vs eager", "ideal"], rows), ""]
    hi = _load(folder, "history")
    if hi:
        parts += [_heading("History recording overhead", hi), "",
                  "Time inside the recording code (outermost calls) as a share of the whole fit. Goal: ≤ 2 %.", ""]
        rows = [[r["case"], f"{r['recording_s'] * 1000:.0f} ms", f"{r['fit_s']:.1f} s", f"{r['share']:.2%}",
                 str(r["rows"]["events"]), str(r["rows"]["blocks"]), _met(r["share"] <= 0.02)] for r in hi["rows"]]
        parts += [_table(["run", "recording", "fit", "share", "events", "block rows", "≤ 2 %"], rows), ""]
    me = _load(folder, "memory")
    if me:
        parts += [_heading("Peak memory of a training step", me), "",
                  "Peak resident memory while training (`VmHWM` after resetting it) minus the resident memory before "
                  f"the fit, {me['steps']} steps, each case in its own process; the ratio is against plain training "
                  "of the same model. ViT: DeiT-Tiny, 224 px, batch 32, P3B at 50 %; CNN: VGG-19-BN, 32 px, batch "
                  "64, ART with HyperSparse at 98 %. Goal: P3B ≤ 1.3x plain fine-tuning.", ""]
        gpu = any("cuda_peak_mb" in r for r in me["rows"])
        rows = [[r["case"], f"{r['peak_delta_mb']:.0f} MB", f"{r['ratio']:.2f}x",
                 *([f"{r['cuda_peak_mb']:.0f} MB ({r['cuda_ratio']:.2f}x)"] if gpu else []),
                 _met(r["ratio"] <= 1.3) if r["case"].startswith("P3B") else "–"] for r in me["rows"]]
        parts += [_table(["case", "peak over baseline", "vs plain", *(["CUDA peak"] if gpu else []), "≤ 1.3x"],
                         rows), ""]
    ex = _load(folder, "explorers")
    if ex:
        parts += [_heading("Explorer response time", ex), "",
                  f"Notebook 05's explorers on the `{ex['scale']}` models: seconds from setting a control's value in "
                  "the kernel to the explorer's figures and tables holding the new result (the browser's drawing "
                  "excluded), median and slowest over several values. Goal: ≤ 1 s.", ""]
        rows = [[r["explorer"], r["control"], str(r["n"]), f"{r['median_s'] * 1000:.0f} ms",
                 f"{r['max_s'] * 1000:.0f} ms", _met(r["max_s"] <= 1.0)] for r in ex["rows"]]
        parts += [_table(["explorer", "control", "moves", "median", "slowest", "≤ 1 s"], rows), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs and fewer repeats (a few minutes)")
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from the JSON results")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    args = parser.parse_args()
    folder = RESULTS / "quick" if args.quick else RESULTS
    if not args.render:
        folder.mkdir(parents=True, exist_ok=True)
        names = args.only or [n for n in BENCHMARKS if not (args.quick and n in NOT_QUICK)]
        run(names, args.quick, folder)
    target = folder / "RESULTS.md" if args.quick else HERE / "RESULTS.md"
    target.write_text(render(folder) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

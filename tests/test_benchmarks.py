"""The committed benchmark report is the rendering of the committed results (no timings are taken here)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_runner():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_md_is_rendered_from_the_json_results():
    runner = load_runner()
    text = runner.render()
    assert (BENCH / "RESULTS.md").read_text() == text + "\n"
    for name in runner.BENCHMARKS:  # every benchmark has committed results and a section
        assert (BENCH / "results" / f"{name}.json").exists()
    for heading in ("HyperSparse overhead", "P3B step cost", "Compact-model CPU latency", "History recording"):
        assert f"## {heading}" in text
    probes = json.loads((BENCH / "results" / "p3b_probes.json").read_text())
    control = next(r for r in probes["rows"] if r["estimator"].startswith("dense"))
    assert 0.8 < control["step_ratio"] < 1.25  # the interleaved control reads about 1
    assert f"{control['step_ratio']:.2f}x" in text


def test_the_p3b_step_ratio_weights_patch_probe_steps_by_their_period():
    import pytest
    import torch

    spec = importlib.util.spec_from_file_location("bench_p3b_probes", BENCH / "bench_p3b_probes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    clock = bench.LockstepClock(torch.nn.Linear(2, 2), lr=1e-3, weight_decay=0.0, probe_every=4)
    # one probe step among ten timed ones, where the run holds one in four: a plain sum would weigh it 1/10
    clock.timed = [(True, 3.0, 1.0)] + [(False, 1.2, 1.0)] * 9
    assert clock.step_ratio() == pytest.approx(0.25 * 3.0 + 0.75 * 1.2)
    assert clock.steps == 10 and clock.plain_s == pytest.approx(10.0)
    every = bench.LockstepClock(torch.nn.Linear(2, 2), lr=1e-3, weight_decay=0.0)
    every.timed = [(True, 2.0, 1.0), (True, 3.0, 2.0)]
    assert every.step_ratio() == pytest.approx(5.0 / 3.0)  # every step probes: the summed times
    clock.timed = clock.timed[1:]
    with pytest.raises(RuntimeError, match="run longer"):
        clock.step_ratio()
    assert bench.ESTIMATORS[bench.FAST] == {"patch_probe": "conv2", **bench.sl.probes.FAST_PROBES}

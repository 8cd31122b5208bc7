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

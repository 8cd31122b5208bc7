"""Every notebook executes at the ``tiny`` scale (the parameters cell is injected by papermill)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, path.name
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1 and 'scale = "cpu"' in "".join(tagged[0]["source"]), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_at_tiny_scale(path, tmp_path):
    import papermill

    out_dir = tmp_path / "out"
    executed = tmp_path / path.name
    papermill.execute_notebook(str(path), str(executed), parameters={"scale": "tiny", "out_dir": str(out_dir)},
                               kernel_name="python3", execution_timeout=300, progress_bar=False, cwd=str(ROOT))
    nb = json.loads(executed.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    views = ("application/vnd.plotly.v1+json", "application/vnd.jupyter.widget-view+json")
    figures = [o for c in nb["cells"] for o in c.get("outputs", []) if any(v in o.get("data", {}) for v in views)]
    assert figures, "the notebook shows plotly figures or widgets"
    if path.name.startswith("05"):  # explorers: small when saved, figures kept without a kernel
        assert executed.stat().st_size < 8_000_000
        states = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        drawn = [o for m in states.values() if m.get("model_name") == "OutputModel"
                 for o in m["state"].get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
        assert len(drawn) >= 5  # the five explorer figures, as data
        text = executed.read_text()
        assert text.count("plotly.js v") == 1  # plotly.js embedded once
    parameters = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    if "out_dir" in "".join(parameters["source"]):
        assert any(out_dir.iterdir()), "results are saved"

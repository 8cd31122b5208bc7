"""Experiment drivers shared by the notebooks and the command line (presets, runs, result tables)."""
from . import art, explorers, findings
from .p3b import (
    METHODS,
    PRESETS,
    P3BPreset,
    P3BRun,
    benefit_trace,
    compare,
    latency_table,
    load_data,
    p3b_preset,
    run_p3b,
    save_results,
    source_model,
    summarize,
)

__all__ = ["P3BPreset", "P3BRun", "PRESETS", "METHODS", "p3b_preset", "run_p3b", "compare", "summarize",
           "load_data", "source_model", "latency_table", "save_results", "benefit_trace", "art", "explorers",
           "findings"]

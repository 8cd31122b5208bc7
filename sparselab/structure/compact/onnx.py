"""ONNX export of (compact) models, checked against PyTorch with ONNX Runtime.

ONNX Runtime and the exporter's helpers (``onnx``, ``onnxscript``) are an optional extra
(``pip install sparselab[deploy]``); the export says so when they are missing.

Example:
    >>> import sparselab as sl, torch
    >>> model = sl.models.create("vit_nano_patch4_28", num_classes=10).eval()
    >>> small = sl.structure.compact_vit(model, {0: {"mlp_hid": torch.arange(256) < 100}})
    >>> report = export_onnx(small, "small.onnx")                        # doctest: +SKIP
    >>> report["max_abs_diff"] < 1e-4                                     # doctest: +SKIP
    True
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...atomic import atomic_write
from ...errors import ConfigError

#: largest |ONNX Runtime − PyTorch| on the check batch that :func:`export_onnx` accepts
TOLERANCE = 1e-4


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Only errors from these loggers while the block runs (the exporter logs notes about its own graph)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs {module!r}: pip install 'sparselab[deploy]' (onnx, onnxscript, "
                          f"onnxruntime)") from None


def model_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) a timm-style image model takes, from its patch embedding."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or getattr(pe, "img_size", None) is None:
        raise ConfigError(f"cannot tell the input size of {type(model).__name__}; pass input_shape=(C, H, W)")
    h, w = pe.img_size
    return int(pe.proj.in_channels), int(h), int(w)


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` (``threads``: intra-op threads; None: ONNX Runtime's default)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, int, int] | None = None,
                check_batch: int = 4, opset: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Export ``model`` (in eval mode, on the CPU) to an ONNX file with a dynamic batch dimension, then run a
    random batch of ``check_batch`` images through ONNX Runtime and PyTorch and refuse (:class:`ConfigError`, no
    file left behind) if they differ by more than :data:`TOLERANCE`.

    Returns ``{"path", "max_abs_diff", "input_shape", "bytes"}``.
    """
    if check_batch < 1:
        raise ConfigError(f"check_batch must be >= 1, got {check_batch}")
    _require("onnx")
    _require("onnxscript")
    shape = tuple(input_shape) if input_shape is not None else model_input_shape(model)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape must be (channels, height, width), got {shape!r}")
    path = Path(path)
    was_training = model.training
    model = model.eval().cpu()
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
    check = torch.randn(check_batch, *shape, generator=torch.Generator().manual_seed(seed + 1))
    found: dict[str, float] = {}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
            warnings.simplefilter("ignore")  # the exporter's deprecation and progress notes
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        input_names=["images"], output_names=["logits"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(tmp)
        got = onnx_session(tmp).run(None, {"images": check.numpy()})[0]
        found["diff"] = diff = float(abs(got - expected).max())
        if not diff <= TOLERANCE:  # atomic_write removes the file
            raise ConfigError(f"the ONNX model's outputs differ from PyTorch's by {diff:.2e} (> {TOLERANCE:g}); "
                              f"nothing was written to {path}")

    try:
        expected = model(check).numpy()
        atomic_write(path, write)
    finally:
        model.train(was_training)
    return {"path": str(path), "max_abs_diff": found["diff"], "input_shape": list(shape),
            "bytes": path.stat().st_size}

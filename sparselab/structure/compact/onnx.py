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
import copy
import itertools
import logging
import operator
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...atomic import atomic_write
from ...cost import checked_call
from ...errors import ConfigError, check_positive_int
from ...runtime import evaluating

#: largest |ONNX Runtime − PyTorch| on the check batch that :func:`export_onnx` accepts, for outputs of magnitude
#: up to 1; larger outputs are held to it relative to their largest magnitude (float32 rounds relative to scale)
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
    """Export ``model`` (a float32 model, in eval mode, on the CPU) to an ONNX file with a dynamic batch
    dimension, then run a random batch of ``check_batch`` images through ONNX Runtime and PyTorch and refuse
    (:class:`ConfigError`, no file left behind) if they differ by more than :data:`TOLERANCE` (times the largest
    output's magnitude where that exceeds 1). A model on another device is exported from a CPU copy; ``model``
    itself stays where it is.

    ``opset`` (None: the exporter's default) is the ONNX opset the file must use; one the exporter cannot write
    (it would silently write another) is refused, as is one ONNX Runtime cannot run.

    Returns ``{"path", "max_abs_diff", "input_shape", "bytes"}``.
    """
    check_positive_int("check_batch", check_batch)
    if opset is not None:
        check_positive_int("opset", opset)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    onnx = _require("onnx")
    _require("onnxscript")
    given = input_shape if input_shape is not None else model_input_shape(model)
    try:
        shape = tuple(operator.index(n) for n in given)
    except TypeError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or any(isinstance(n, bool) for n in given):
        raise ConfigError(f"input_shape must be (channels, height, width), got {given!r}")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the path of the .onnx file to write")
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    wrong = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if wrong:
        raise ConfigError(f"ONNX export takes a float32 model (its inputs are float32 images); this one has "
                          f"{', '.join(wrong)} parameters (export model.float())")
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
    check = torch.randn(check_batch, *shape, generator=torch.Generator().manual_seed(seed + 1))
    found: dict[str, float] = {}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
            warnings.simplefilter("ignore")  # the exporter's deprecation and progress notes
            program = torch.onnx.export(net, (example,), dynamo=True, opset_version=opset,
                                        input_names=["images"], output_names=["logits"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(tmp)
        written = next((o.version for o in onnx.load(tmp, load_external_data=False).opset_import
                        if o.domain in ("", "ai.onnx")), None)
        if opset is not None and written != opset:  # the exporter moves an opset it cannot write to its own
            raise ConfigError(f"the exporter could not write ONNX opset {opset} for this model and wrote opset "
                              f"{written} instead; nothing was written to {path}. Give an opset it can write "
                              f"(opset={written} works) or leave opset out")
        try:
            got = onnx_session(tmp).run(None, {"images": check.numpy()})[0]
        except Exception as exc:  # ONNX Runtime's own exception types (an opset newer than it supports, ...)
            raise ConfigError(f"ONNX Runtime cannot run the exported model (opset {written}): "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
        found["diff"] = diff = float(abs(got - expected).max())
        scale = max(1.0, float(abs(expected).max()))
        if not diff <= TOLERANCE * scale:  # atomic_write removes the file (NaN fails too)
            bound = f"{TOLERANCE:g}" + (f" × the largest output {scale:.3g}" if scale > 1 else "")
            raise ConfigError(f"the ONNX model's outputs differ from PyTorch's by {diff:.2e} (> {bound}); "
                              f"nothing was written to {path}")

    with evaluating(model):
        net = copy.deepcopy(model).cpu() if any(t.device.type != "cpu" for t in tensors) else model
        expected = checked_call(net, check).numpy()
        atomic_write(path, write)
    return {"path": str(path), "max_abs_diff": found["diff"], "input_shape": list(shape),
            "bytes": path.stat().st_size}

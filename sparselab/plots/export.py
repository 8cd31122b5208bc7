"""Static images of figures (PNG, SVG, PDF) through kaleido, which drives the system's Chromium.

Example:
    >>> import plotly.graph_objects as go
    >>> paths = export_figures({"bars": go.Figure(go.Bar(y=[1, 2]))}, "/tmp/sparselab-figs", formats=("svg",))
    ... # doctest: +SKIP
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Mapping

import plotly.graph_objects as go

from ..errors import ConfigError

FORMATS = ("png", "svg", "pdf")


def export_figures(figures: Mapping[str, go.Figure], out_dir: str | Path, formats: Iterable[str] = ("png",),
                   scale: float = 2.0, width: int = 1100, height: int | None = None) -> list[Path]:
    """Write every figure as ``out_dir/<name>.<format>``; one browser serves all of them. Returns the paths.

    Needs ``kaleido`` and a Chromium/Chrome (Debian's ``chromium`` is found automatically; ``BROWSER_PATH``
    points elsewhere).
    """
    formats = [formats] if isinstance(formats, str) else list(formats)  # "png" is one format, not letters
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"formats must be among {FORMATS}, got {bad}")
    try:
        import kaleido
    except ImportError:
        raise ConfigError("static export needs kaleido: pip install kaleido (and a Chromium)") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    started = False
    try:
        kaleido.start_sync_server(mathjax=False)
        started = True
    except Exception:  # already running in this process
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # plotly notes that kaleido options go unused
            for name, fig in figures.items():
                for fmt in formats:
                    path = out / f"{name}.{fmt}"
                    fig.write_image(str(path), format=fmt, scale=scale, width=width,
                                    height=height or fig.layout.height or 600)
                    paths.append(path)
    finally:
        if started:
            kaleido.stop_sync_server()
    return paths

"""Classical importance criteria per ViT block, recorded over training beside the block benefit.

For every attention / MLP block (its Linear weights): mean |w|, mean |∂L/∂w| and mean (w·∂L/∂w)² (the squared
first-order Taylor term), averaged over the optimizer steps of a window. These are what magnitude-, gradient- and
Taylor-based pruning would read; the late-converging analysis compares them with ΔΨ.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=28, limit=128)
    >>> model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    >>> crit = BlockCriteria(model)
    >>> h = sl.fit(model, data, epochs=1, batch_size=64, callbacks=[crit], progress=False)
    >>> sorted(h.blocks.metric.unique())
    ['crit_abs_grad', 'crit_abs_w', 'crit_taylor']
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from ..callbacks import TrainState
from ..errors import ConfigError
from ..history import select_run
from ..structure.vit import ViTStructure
from .block_benefit import check_structure, check_trained_model
from .window import WindowedRecorder

if TYPE_CHECKING:
    import pandas as pd

CRITERIA = ("crit_abs_w", "crit_abs_grad", "crit_taylor")


def block_weights(structure: ViTStructure) -> list[list[nn.Parameter]]:
    """The Linear weights of each block, in block order."""
    out = []
    for b in structure.blocks:
        layer = structure.layers[b.layer]
        out.append([layer.attn.qkv.weight, layer.attn.proj.weight] if b.kind == "attn"
                   else [layer.mlp.fc1.weight, layer.mlp.fc2.weight])
    return out


class BlockCriteria(WindowedRecorder):
    """Training plug-in recording the classical criteria of every block at each epoch end (and every ``log_every``
    steps when given)."""

    def __init__(self, model: nn.Module, log_every: int | None = None, structure: ViTStructure | None = None):
        self.structure = structure or ViTStructure(model)
        check_structure(self.structure, model)
        self.weights = block_weights(self.structure)
        super().__init__(log_every)
        self.reset()

    def on_fit_start(self, state: TrainState) -> None:
        check_trained_model(self.structure, state.model, "the block criteria")

    def reset(self) -> None:
        k = len(self.weights)
        self.grad_sums = torch.zeros(k, dtype=torch.float64)
        self.taylor_sums = torch.zeros(k, dtype=torch.float64)
        self.count = 0
        self._pending = None

    @torch.no_grad()
    def after_backward(self, state: TrainState) -> None:
        """Measure the step's gradients; they join the window in :meth:`after_step` unless the step is skipped."""
        k = len(self.weights)
        grad, taylor = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        for k, params in enumerate(self.weights):
            n = sum(p.numel() for p in params)
            grads = [p.grad for p in params if p.grad is not None]
            if len(grads) != len(params):
                continue
            grad[k] = sum(float(g.abs().sum()) for g in grads) / n
            taylor[k] = sum(float((p * g).pow(2).sum()) for p, g in zip(params, grads)) / n
        self._pending = (grad, taylor)

    def after_step(self, state: TrainState) -> None:
        # a step the grad scaler skipped after an overflow has non-finite gradients and changed no weight
        pending, self._pending = self._pending, None
        if pending is not None and not state.step_skipped:
            self.grad_sums += pending[0]
            self.taylor_sums += pending[1]
            self.count += 1
        super().after_step(state)

    @torch.no_grad()
    def values(self) -> dict[str, torch.Tensor]:
        """The criteria of the current window (mean |w| of the weights as they are now)."""
        n = max(self.count, 1)
        abs_w = torch.tensor([sum(float(p.abs().sum()) for p in params) / sum(p.numel() for p in params)
                              for params in self.weights], dtype=torch.float64)
        return {"crit_abs_w": abs_w, "crit_abs_grad": self.grad_sums / n, "crit_taylor": self.taylor_sums / n}

    def log(self, state: TrainState) -> None:
        """Write the window's criteria into the History and start a new window."""
        names = [b.name for b in self.structure.blocks]
        for metric, vec in self.values().items():
            state.history.log_blocks(metric, dict(zip(names, vec.tolist())), step=state.step, epoch=state.epoch)
        self.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"grad": self.grad_sums.clone(), "taylor": self.taylor_sums.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad_sums, self.taylor_sums, self.count = state["grad"].clone(), state["taylor"].clone(), state["count"]


def agreement(history, reference: str = "benefit_cls", metrics=CRITERIA, run: str | None = None) -> pd.DataFrame:
    """Spearman rank correlation across blocks between each criterion and ``reference`` (ΔΨ), at every moment both
    were recorded: 1 means the criterion ranks the blocks as the block benefit does. ``run`` picks one run of a
    History merged with ``History.concat`` (required when it holds several).

    Example:
        >>> from sparselab.history import History
        >>> h = History()
        >>> h.log_blocks("benefit_cls", {"a": 1.0, "b": 2.0, "c": 3.0}, step=5, epoch=0)
        >>> h.log_blocks("crit_abs_w", {"a": 3.0, "b": 2.0, "c": 1.0}, step=5, epoch=0)
        >>> float(agreement(h, metrics=["crit_abs_w"]).loc[5, "crit_abs_w"])
        -1.0
    """
    import pandas as pd

    b = select_run(history, run)["blocks"]
    wide = b[b.metric.isin([reference, *metrics])].pivot_table(index=["step", "block"], columns="metric",
                                                                values="value", aggfunc="last")
    rows = {}
    for step, table in wide.groupby(level="step"):
        table = table.dropna(axis=1, how="all")
        if reference not in table or len(table) < 3:
            continue
        corr = table.rank().corr()[reference]
        rows[step] = {m: corr.get(m) for m in metrics if m in corr}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("step").dropna(how="all")


def last_block_values(history, metrics: Mapping[str, str], run: str | None = None) -> dict[str, dict[str, float]]:
    """The last recorded value of each block for every metric of ``History.blocks`` in ``metrics`` (metric →
    label), keyed by label: e.g. ΔΨ and mean |w| at the end of a run, to set beside other per-block scores
    (:func:`sparselab.plots.plot_block_scores`). ``run`` picks one run of a merged History.

    Raises:
        ConfigError: a metric the History did not record (the message lists those it did).

    Example:
        >>> from sparselab.history import History
        >>> h = History()
        >>> for step, value in ((1, 0.5), (2, 0.7)):
        ...     h.log_blocks("crit_abs_w", {"blocks.0.attn": value, "blocks.0.mlp": 2 * value}, step=step, epoch=0)
        >>> last_block_values(h, {"crit_abs_w": "mean |w| (end)"})
        {'mean |w| (end)': {'blocks.0.attn': 0.7, 'blocks.0.mlp': 1.4}}
    """
    blocks = select_run(history, run)["blocks"]
    recorded = sorted(set(blocks.metric))
    out = {}
    for metric, label in metrics.items():
        rows = blocks[blocks.metric == metric]
        if rows.empty:
            raise ConfigError(f"the History has no {metric!r} rows; it recorded {', '.join(recorded) or 'none'}")
        out[label] = {str(b): float(v) for b, v in rows.sort_values("step", kind="stable").groupby("block")
                      .value.last().items()}
    return out

"""ART — Adaptive Regularized Training (HyperSparse paper): sparsify by an ever stronger regularizer, no mask.

Phases inside one :func:`sparselab.fit` call:

1. dense warm-up for ``warmup_epochs``;
2. ART epochs e = 0, 1, …: loss = CE + λ_e·L_reg with λ_e = λ_init·η^e. After each epoch a copy of the model is
   pruned globally by magnitude at κ and its training accuracy measured; over a sliding window of 3 such results,
   the window's middle model becomes the candidate whenever the window mean is the best so far; training stops as
   soon as the best window mean exceeds the dense model's training accuracy of the epoch, or — with a warning — after
   ``max_art_epochs``.

Then :meth:`ART.finetune` trains the candidate with its mask fixed (fresh optimizer; the paper: 160 epochs, lr × 0.1
at 80 and 120). Every ART epoch writes traces into the History: λ, threshold, dense and pruned-copy training
accuracy, the fractions of the kept set that entered and left since the previous epoch, the overlap with the final
kept set, per-layer keep ratios, and snapshots of the sorted-magnitude / regularizer-gradient profile.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=8)
    >>> model = sl.models.create("lenet_300_100", image_size=8)
    >>> art = sl.ART(model, sparsity=0.9, warmup_epochs=1, lam_init=1e-4, eta=2.0, max_art_epochs=4)
    >>> history = sl.fit(model, data, epochs=art.max_epochs, pruner=art, progress=False)   # doctest: +SKIP
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, check_ratio
from ..structure.unstructured import apply_masks, magnitude_masks, prunable_weights, sparsity
from ..training.pruner import Pruner, TrainState
from .masking import FixedMask
from .regularizers import Regularizer, make_regularizer

PROFILE_POINTS = 256


class ART(Pruner):
    """Adaptive regularized training towards ``sparsity`` (see the module docstring).

    Args:
        model: any model with Conv2d/Linear weights.
        sparsity: target prune rate κ in [0, 1).
        regularizer: ``hypersparse``, ``l1``, ``l2`` or a :class:`Regularizer`.
        lam_init: λ_init (5e-6, the reference code's value).
        eta: growth factor η of λ per ART epoch (1.05).
        warmup_epochs: dense epochs before ART (60 in the paper).
        window: sliding-window length (3).
        max_art_epochs: stop after this many ART epochs even without reaching the dense accuracy.
        train_eval_limit: measure the pruned copy's training accuracy on at most this many training images
            (None: all).
        profile_every: snapshot the magnitude/gradient profile every this many ART epochs (and the last).
    """

    def __init__(self, model: nn.Module, sparsity: float, regularizer: str | Regularizer = "hypersparse", *,
                 lam_init: float = 5e-6, eta: float = 1.05, warmup_epochs: int = 60, window: int = 3,
                 max_art_epochs: int = 200, train_eval_limit: int | None = None, profile_every: int = 5,
                 threshold_every: int = 1):
        self.sparsity = check_ratio("sparsity", sparsity)
        if lam_init <= 0 or eta < 1:
            raise ConfigError(f"need lam_init > 0 and eta >= 1, got {lam_init}, {eta}")
        if window < 1 or window % 2 == 0:
            raise ConfigError(f"window must be an odd integer >= 1 (its middle model is the candidate), got {window}")
        if warmup_epochs < 0 or max_art_epochs < 1:
            raise ConfigError(f"need warmup_epochs >= 0 and max_art_epochs >= 1, got {warmup_epochs}, "
                              f"{max_art_epochs}")
        self.regularizer = make_regularizer(regularizer, sparsity, threshold_every=threshold_every)
        self.lam_init, self.eta = lam_init, eta
        self.warmup_epochs, self.window, self.max_art_epochs = warmup_epochs, window, max_art_epochs
        self.train_eval_limit, self.profile_every = train_eval_limit, profile_every
        prunable_weights(model)  # clear error for a model without prunable weights
        self.model = model
        self._window: list[tuple[float, dict[str, torch.Tensor]]] = []
        self.best_mean = -1.0
        self.candidate: dict[str, torch.Tensor] | None = None
        self.candidate_epoch: int | None = None
        self.terminated = False
        self.stop_reason = ""
        self._prev_kept: dict[str, torch.Tensor] | None = None
        self._kept_history: list[tuple[int, int, np.ndarray]] = []  # (step, art epoch, packed kept bits)

    @property
    def max_epochs(self) -> int:
        """Epochs to pass to :func:`sparselab.fit`: warm-up plus the ART limit (ART stops itself earlier)."""
        return self.warmup_epochs + self.max_art_epochs

    def lam(self, art_epoch: int) -> float:
        """λ_e = λ_init·η^e."""
        return self.lam_init * self.eta ** art_epoch

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, state: TrainState) -> None:
        self.model = state.model

    def after_backward(self, state: TrainState) -> None:
        # λ_e·∇R added straight into the gradients: the same update as backpropagating λ_e·R, without its graph
        e = state.epoch - self.warmup_epochs
        if e < 0 or self.terminated:
            return
        self.regularizer.add_gradient(state.model, scale=self.lam(e))

    def on_epoch_end(self, state: TrainState) -> None:
        e = state.epoch - self.warmup_epochs
        if e < 0 or self.terminated:
            return
        model, h, step = state.model, state.history, state.step
        masks = magnitude_masks(model, self.sparsity)
        pruned = copy.deepcopy(model)
        apply_masks(pruned, masks)
        acc_pruned = self._train_accuracy(pruned, state)
        acc_dense = state.metrics.get("train_acc", float("nan"))
        stats = self.regularizer.stats(model)
        kept_now = {k: v.cpu() for k, v in masks.items()}
        entered = left = float("nan")
        if self._prev_kept is not None:
            n_kept = sum(int(m.sum()) for m in kept_now.values())
            entered = sum(int((m & ~self._prev_kept[k]).sum()) for k, m in kept_now.items()) / max(n_kept, 1)
            left = sum(int((~m & self._prev_kept[k]).sum()) for k, m in kept_now.items()) / max(n_kept, 1)
        self._prev_kept = kept_now
        self._kept_history.append((step, e, np.packbits(torch.cat([m.flatten() for m in kept_now.values()]).numpy())))
        h.log_metrics({"lambda": self.lam(e), "threshold": stats["threshold"], "acc_dense": acc_dense,
                       "acc_pruned": acc_pruned, "kept_entered": entered, "kept_left": left,
                       "l1_below_share": stats["l1_below_share"], "grad_pruned": stats["grad_pruned"],
                       "grad_kept": stats["grad_kept"], "grad_ratio": stats["grad_ratio"], "art_epoch": e},
                      step=step, epoch=state.epoch, split="train")
        h.log_blocks("keep_ratio", {k: float(m.float().mean()) for k, m in kept_now.items()}, step=step,
                     epoch=state.epoch)
        if e % self.profile_every == 0:
            self._snapshot(state, e)
        self._window.append((acc_pruned, {k: v.detach().cpu().clone() for k, v in pruned.state_dict().items()}))
        if len(self._window) > self.window:
            self._window.pop(0)
        if len(self._window) == self.window:
            mean = float(np.mean([a for a, _ in self._window]))
            if mean > self.best_mean:
                self.best_mean = mean
                self.candidate = self._window[self.window // 2][1]
                self.candidate_epoch = e - self.window // 2
            if self.best_mean > acc_dense:
                self._stop(state, e, f"the pruned copy's accuracy (window mean {self.best_mean:.4f}) exceeds the "
                                     f"dense model's ({acc_dense:.4f}) after ART epoch {e}")
                return
        if e + 1 >= self.max_art_epochs:
            self._stop(state, e, f"reached max_art_epochs={self.max_art_epochs} without the pruned copy matching "
                                 f"the dense model (best window mean {self.best_mean:.4f}); using the best candidate")
            warnings.warn(f"ART: {self.stop_reason}", stacklevel=2)

    def _stop(self, state: TrainState, e: int, reason: str) -> None:
        self.terminated = True
        self.stop_reason = reason
        state.should_stop = True
        if self.candidate is None:  # fewer epochs than the window: take the last pruned copy
            self.candidate = self._window[-1][1]
            self.candidate_epoch = e
        self._snapshot(state, e)

    def on_fit_end(self, state: TrainState) -> None:
        h = state.history
        if self.candidate is None:
            return
        state.model.load_state_dict({k: v.to(state.device) for k, v in self.candidate.items()})
        final = torch.cat([m.flatten() for m in self.masks().values()]).cpu().numpy()
        for step, e, packed in self._kept_history:
            kept = np.unpackbits(packed, count=final.size).astype(bool)
            h.log_metric("overlap_final", float((kept & final).sum() / max(final.sum(), 1)), step=step,
                         epoch=self.warmup_epochs + e, split="train")
        h.meta["art"] = {"terminated": self.terminated, "stop_reason": self.stop_reason,
                         "candidate_art_epoch": self.candidate_epoch, "best_window_mean": self.best_mean,
                         "sparsity": self.sparsity, "regularizer": self.regularizer.name}

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _train_accuracy(self, model: nn.Module, state: TrainState) -> float:
        from ..training.loop import evaluate

        ds = state.data.train
        if self.train_eval_limit is not None and len(ds) > self.train_eval_limit:
            idx = torch.arange(self.train_eval_limit)
            ds = ds.subset(idx) if hasattr(ds, "subset") else torch.utils.data.Subset(ds, idx.tolist())
        return evaluate(model, ds, device=state.device)["acc"]

    @torch.no_grad()
    def _snapshot(self, state: TrainState, e: int) -> None:
        """Sorted |w| from the 65th percentile up with |∂L_reg/∂w| aligned to it, downsampled."""
        weights = list(prunable_weights(state.model).values())
        grads = self.regularizer.gradient(weights)
        a = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
        g = torch.cat([x.abs().flatten().float().cpu() for x in grads])
        n = a.numel()
        start = int(0.65 * n)
        idx = torch.linspace(start, n - 1, min(PROFILE_POINTS, n - start)).round().long()
        # only the sampled order statistics are needed: a multi-pivot partial sort, not a full argsort
        order = torch.from_numpy(np.argpartition(a.numpy(), idx.unique().numpy()))
        profiles = state.history.meta.setdefault("profiles", [])
        profiles.append({"art_epoch": e, "step": state.step, "sparsity": self.sparsity,
                         "regularizer": self.regularizer.name, "lambda": self.lam(e),
                         "relative_index": (idx.float() / (n - 1)).tolist(), "abs_w": a[order[idx]].tolist(),
                         "grad": g[order[idx]].tolist(), "threshold": self.regularizer.threshold})

    def masks(self) -> dict[str, torch.Tensor]:
        """The candidate's kept set (its nonzero pattern at exactly the target sparsity)."""
        if self.candidate is None:
            raise ConfigError("ART has no candidate yet: train with sparselab.fit first")
        net = copy.deepcopy(self.model)
        net.load_state_dict(self.candidate)
        return magnitude_masks(net, self.sparsity)

    def finetune_pruner(self) -> FixedMask:
        """A :class:`FixedMask` pruner holding the candidate's mask, for the fine-tuning run."""
        return FixedMask(self.masks())

    def achieved_sparsity(self) -> float:
        return sparsity(self.masks())

    def state_dict(self) -> dict[str, Any]:
        return {"window": self._window, "best_mean": self.best_mean, "candidate": self.candidate,
                "candidate_epoch": self.candidate_epoch, "terminated": self.terminated,
                "stop_reason": self.stop_reason, "prev_kept": self._prev_kept, "kept_history": self._kept_history,
                "threshold": self.regularizer.threshold, "calls": self.regularizer._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._window = state["window"]
        self.best_mean, self.candidate = state["best_mean"], state["candidate"]
        self.candidate_epoch, self.terminated = state["candidate_epoch"], state["terminated"]
        self.stop_reason, self._prev_kept = state["stop_reason"], state["prev_kept"]
        self._kept_history = state["kept_history"]
        self.regularizer.threshold, self.regularizer._calls = state["threshold"], state["calls"]

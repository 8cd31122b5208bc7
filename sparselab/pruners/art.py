"""ART — Adaptive Regularized Training (HyperSparse paper): sparsify by an ever stronger regularizer, no mask.

Phases inside one :func:`sparselab.fit` call:

1. dense warm-up for ``warmup_epochs``;
2. ART epochs e = 0, 1, …: loss = CE + λ_e·L_reg with λ_e = λ_init·η^e. After each epoch a copy of the model is
   pruned globally by magnitude at κ and its training accuracy measured (eval mode, on *augmented* training
   batches, as the reference does). The results go into a sliding window of up to ``window`` (3) entries, filled
   from the first ART epoch; partial windows count, and the window's middle model is entry
   ``min(len(window) - 1, window // 2)``. With the default ``candidate_rule="reference"`` (the reference code's
   rule) the middle model becomes the candidate whenever the window mean exceeds the *candidate's own* pruned
   accuracy (the first window always makes one), and training stops as soon as the window mean that chose the
   current candidate exceeds the dense model's running training accuracy of the epoch — possibly right after ART
   epoch 0. ``candidate_rule="best_mean"`` is the variant: full windows only, the candidate is the middle model of
   the best window mean so far, and training stops once that best mean exceeds the dense accuracy. Either way
   training also stops — with a warning — after ``max_art_epochs``.

Then fine-tuning trains the candidate with its mask fixed (:meth:`ART.finetune_pruner`; fresh optimizer; the
paper: 160 epochs, lr × 0.1 at 80 and 120). Every ART epoch writes traces into the History: λ, threshold, dense and
pruned-copy training accuracy, the fractions of the kept set that entered and left since the previous epoch, the
overlap with the final kept set, per-layer keep ratios, and snapshots of the sorted-magnitude /
regularizer-gradient profile. ``history.meta["art"]`` records the rule, the candidate (its ART epoch, own accuracy
and the window mean that chose it) and why ART stopped.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=8)
    >>> model = sl.models.create("lenet_300_100", image_size=8)
    >>> art = sl.ART(model, sparsity=0.9, warmup_epochs=1, lam_init=1e-4, eta=2.0, max_art_epochs=4)
    >>> history = sl.fit(model, data, epochs=art.max_epochs, pruner=art, progress=False)   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..callbacks import Pruner, TrainState
from ..configs import CANDIDATE_RULES, ARTConfig  # noqa: F401  (CANDIDATE_RULES: re-exported)
from ..errors import CheckpointError, ConfigError, DivergedError, check_positive_int, check_ratio
from ..structure.unstructured import apply_masks, magnitude_masks, prunable_weights, sparsity
from .masking import FixedMask
from .regularizers import REGULARIZERS, Regularizer, make_regularizer
from .schedules import ExponentialLambda

PROFILE_POINTS = 256


def profile_indices(n: int, points: int = PROFILE_POINTS, start: float = 0.65) -> torch.Tensor:
    """Evenly spaced order-statistic positions from the ``start`` quantile to the largest of ``n`` values (float64:
    float32 cannot hold every position beyond 2^24 weights, e.g. VGG-19's 20 M).

    Example:
        >>> int(profile_indices(20_024_000)[-1])
        20023999
    """
    first = int(start * n)
    idx = torch.linspace(first, n - 1, min(points, n - first), dtype=torch.float64).round().long()
    return idx.clamp_(0, n - 1)
TRAIN_EVAL_BATCH = 512
_TRAIN_EVAL_SEED = 0x5EED_A27  # the pruned copy's augmentation stream at ART epoch e is seeded with this + e


class ART(Pruner):
    """Adaptive regularized training towards ``sparsity`` (see the module docstring).

    After every ART epoch e the globally magnitude-pruned copy's training accuracy a_e enters a window of the last
    (up to) ``window`` results, whose middle entry is ``min(len - 1, window // 2)``. With
    ``candidate_rule="reference"``, window = 3 and accuracies a_0, a_1, a_2, …:

    - after e = 0 the window is [a_0] (middle a_0): copy 0 becomes the candidate (there is none yet), chosen by the
      mean a_0; ART stops at once if a_0 exceeds the dense running training accuracy of epoch 0;
    - after e = 1 the window is [a_0, a_1] (middle a_1): copy 1 replaces the candidate if (a_0 + a_1)/2 exceeds
      the candidate's own accuracy;
    - from e = 2 on the window is [a_{e-2}, a_{e-1}, a_e] (middle a_{e-1}), likewise;
    - ART stops after the first epoch whose dense training accuracy is below the window mean that chose the
      current candidate (the same as this epoch's window mean whenever the candidate was just replaced).

    ``candidate_rule="best_mean"`` uses full windows only, takes the middle model of the best window mean so far,
    and stops once that best mean exceeds the dense accuracy.

    Args:
        model: any model with Conv2d/Linear weights.
        sparsity: target prune rate κ in [0, 1).
        regularizer: ``hypersparse``, ``l1``, ``l2`` or a :class:`Regularizer`.
        lam_init: λ_init (5e-6, the reference code's value).
        eta: growth factor η of λ per ART epoch (1.05).
        warmup_epochs: dense epochs before ART (60 in the paper).
        window: sliding-window length (3).
        max_art_epochs: stop after this many ART epochs even without reaching the dense accuracy.
        train_eval_limit: measure the pruned copy's training accuracy on the first this many training images
            (None: all).
        profile_every: snapshot the magnitude/gradient profile every this many ART epochs (and the last).
        threshold_every: recompute the regularizer's threshold every this many steps (1: every step).
        candidate_rule: ``"reference"`` (the reference code's rule, default) or ``"best_mean"`` (the variant that
            sparselab used before: full windows, best mean so far).
        train_eval_augment: measure the pruned copy's training accuracy in eval mode on *augmented* training
            batches (True, as the reference does: for an in-memory :class:`~sparselab.data.TensorImages` split a
            generator seeded from the ART epoch draws the augmentation, so resuming stays exact and the global RNG
            is untouched; any other split already applies its training transforms, which then run under RNGs
            seeded the same way and restored afterwards). False: :func:`sparselab.evaluate` on the training split
            (un-augmented for in-memory splits; other splits apply their own transforms).
    """

    def __init__(self, model: nn.Module, sparsity: float, regularizer: str | Regularizer = "hypersparse", *,
                 lam_init: float = 5e-6, eta: float = 1.05, warmup_epochs: int = 60, window: int = 3,
                 max_art_epochs: int = 200, train_eval_limit: int | None = None, profile_every: int = 5,
                 threshold_every: int = 1, candidate_rule: str = "reference", train_eval_augment: bool = True):
        self.sparsity = check_ratio("sparsity", sparsity)
        check_positive_int("profile_every", profile_every)
        self.options = ARTConfig(lam_init=lam_init, eta=eta, warmup_epochs=warmup_epochs, window=window,
                                 max_art_epochs=max_art_epochs, train_eval_limit=train_eval_limit,
                                 candidate_rule=candidate_rule, train_eval_augment=train_eval_augment,
                                 threshold_every=threshold_every)
        self.regularizer = make_regularizer(regularizer, sparsity, threshold_every=threshold_every)
        self.lam_init, self.eta = lam_init, eta
        self.lambda_schedule = ExponentialLambda(lam_init, eta)
        self.warmup_epochs, self.window, self.max_art_epochs = warmup_epochs, window, max_art_epochs
        self.train_eval_limit, self.profile_every = train_eval_limit, profile_every
        self.candidate_rule, self.train_eval_augment = candidate_rule, train_eval_augment
        prunable_weights(model)  # clear error for a model without prunable weights
        self.model = model
        self._window: list[tuple[float, dict[str, torch.Tensor]]] = []
        self.best_mean = -1.0  # best window mean so far (full windows only under "best_mean")
        self.candidate: dict[str, torch.Tensor] | None = None
        self.candidate_epoch: int | None = None
        self.candidate_acc: float | None = None  # the candidate's own pruned-copy training accuracy
        self.candidate_mean: float | None = None  # the window mean that made it the candidate
        self.terminated = False
        self.stop_reason = ""
        self._prev_kept: dict[str, torch.Tensor] | None = None
        self._kept_history: list[tuple[int, int, np.ndarray]] = []  # (step, art epoch, packed kept bits)

    def config(self) -> dict[str, Any]:
        reg = self.regularizer
        # a regularizer of the user's own class is named by its class, so that a resume with another one is refused
        own = REGULARIZERS.get(reg.name) is type(reg)
        name = reg.name if own else f"{type(reg).__module__}.{type(reg).__qualname__}"
        return {"sparsity": self.sparsity, "regularizer": name, **self.options.record()}

    @property
    def max_epochs(self) -> int:
        """Epochs to pass to :func:`sparselab.fit`: warm-up plus the ART limit (ART stops itself earlier)."""
        return self.warmup_epochs + self.max_art_epochs

    def lam(self, art_epoch: int) -> float:
        """λ_e = λ_init·η^e."""
        return self.lambda_schedule.value(art_epoch)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, state: TrainState) -> None:
        self.model = state.model
        if state.epochs <= self.warmup_epochs and not self.terminated:
            warnings.warn(f"training for {state.epochs} epochs ends within ART's dense warm-up "
                          f"({self.warmup_epochs} epochs): no ART epoch runs, the model stays dense and there is no "
                          f"candidate; train for at least {self.warmup_epochs + 1} epochs (art.max_epochs: "
                          f"{self.max_epochs})", stacklevel=3)

    def after_backward(self, state: TrainState) -> None:
        # λ_e·∇R added straight into the gradients: the same update as backpropagating λ_e·R, without its graph
        e = state.epoch - self.warmup_epochs
        if e < 0 or self.terminated:
            return
        self.regularizer.add_gradient(state.model, scale=self.lam(e))

    def on_epoch_end(self, state: TrainState) -> None:
        if self.terminated:
            return
        self._art_epoch_end(state)
        if self.candidate is not None and (self.terminated or state.epoch + 1 >= state.epochs):
            # training ends with this epoch: the candidate goes back into the model now, so that fit's final test
            # (which runs before on_fit_end) measures the model fit returns
            self._load_candidate(state)

    def _load_candidate(self, state: TrainState) -> None:
        state.model.load_state_dict({k: v.to(state.device) for k, v in self.candidate.items()})

    def _art_epoch_end(self, state: TrainState) -> None:
        e = state.epoch - self.warmup_epochs
        if e < 0 or self.terminated:
            return
        model, h, step = state.model, state.history, state.step
        diverged = [n for n, w in prunable_weights(model).items() if not bool(torch.isfinite(w).all())]
        if diverged or not math.isfinite(state.metrics.get("train_acc", 0.0)):
            raise DivergedError(f"ART diverged in ART epoch {e}: non-finite weights in "
                                f"{', '.join(diverged[:3]) or 'the model'} (λ = {self.lam(e):.3g}); no candidate from "
                                f"a diverged model is reported. Lower lam_init or eta, or the learning rate")
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
        reason = self._update_window(acc_pruned, pruned.state_dict(), acc_dense, e)
        if reason:
            self._stop(state, e, reason)
            return
        if e + 1 >= self.max_art_epochs:
            which = "best" if self.candidate_rule == "best_mean" else "current"
            self._stop(state, e, f"reached max_art_epochs={self.max_art_epochs} without the pruned copy matching "
                                 f"the dense model (best window mean {self.best_mean:.4f}); using the {which} "
                                 f"candidate")
            warnings.warn(f"ART: {self.stop_reason}", stacklevel=3)

    def _update_window(self, acc_pruned: float, weights: dict[str, torch.Tensor], acc_dense: float,
                       e: int) -> str | None:
        """Push ART epoch ``e``'s pruned copy (its accuracy and state dict) into the window, update the candidate
        by ``candidate_rule``, and return why ART stops now (None: it goes on)."""
        self._window.append((float(acc_pruned), {k: v.detach().cpu().clone() for k, v in weights.items()}))
        if len(self._window) > self.window:
            self._window.pop(0)
        accs = [a for a, _ in self._window]
        mean = float(np.mean(accs))
        if self.candidate_rule == "best_mean":
            if len(self._window) < self.window:
                return None
            mid = self.window // 2
            if mean > self.best_mean:
                self.best_mean = mean
                self._choose(mid, e, mean)
            if self.best_mean > acc_dense:
                return (f"the pruned copy's accuracy (window mean {self.best_mean:.4f}) exceeds the dense model's "
                        f"({acc_dense:.4f}) after ART epoch {e}")
            return None
        # the reference rule (GreenAutoML4FAS/HyperSparse, utils/art.py): partial windows count
        mid = min(len(self._window) - 1, self.window // 2)
        self.best_mean = max(self.best_mean, mean)
        if self.candidate is None or mean > self.candidate_acc:
            self._choose(mid, e, mean)
        if self.candidate_mean > acc_dense:
            return (f"the pruned copy's accuracy (window mean {self.candidate_mean:.4f} over "
                    f"{len(self._window)} ART epoch(s)) exceeds the dense model's ({acc_dense:.4f}) after ART "
                    f"epoch {e}")
        return None

    def _choose(self, mid: int, e: int, mean: float) -> None:
        self.candidate_acc, self.candidate = self._window[mid]
        self.candidate_epoch = e - (len(self._window) - 1 - mid)
        self.candidate_mean = mean

    def _stop(self, state: TrainState, e: int, reason: str) -> None:
        self.terminated = True
        self.stop_reason = reason
        state.should_stop = True
        if self.candidate is None:  # best_mean with fewer epochs than the window: take the last pruned copy
            self.candidate_acc, self.candidate = self._window[-1]
            self.candidate_epoch = e
            self.candidate_mean = float(np.mean([a for a, _ in self._window]))
        self._snapshot(state, e)

    def on_fit_end(self, state: TrainState) -> None:
        h = state.history
        if self.candidate is None:
            if self._window:  # ART epochs ran, but too few for a full window under candidate_rule="best_mean"
                warnings.warn(f"ART ended after {len(self._window)} ART epoch(s), fewer than a full window "
                              f"({self.window}) that candidate_rule={self.candidate_rule!r} needs: no candidate, "
                              f"the model stays dense; train for {self.max_epochs} epochs (art.max_epochs)",
                              stacklevel=3)
            return
        self._load_candidate(state)
        final = torch.cat([m.flatten() for m in self.masks().values()]).cpu().numpy()
        for step, e, packed in self._kept_history:
            kept = np.unpackbits(packed, count=final.size).astype(bool)
            h.log_metric("overlap_final", float((kept & final).sum() / max(final.sum(), 1)), step=step,
                         epoch=self.warmup_epochs + e, split="train")
        h.meta["art"] = {"terminated": self.terminated, "stop_reason": self.stop_reason,
                         "candidate_rule": self.candidate_rule, "candidate_art_epoch": self.candidate_epoch,
                         "candidate_acc": self.candidate_acc, "candidate_window_mean": self.candidate_mean,
                         "best_window_mean": self.best_mean, "window": self.window,
                         "train_eval_augment": self.train_eval_augment, "sparsity": self.sparsity,
                         "regularizer": self.regularizer.name}

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _train_accuracy(self, model: nn.Module, state: TrainState) -> float:
        """The pruned copy's training accuracy (eval mode) at ART epoch ``state.epoch - warmup_epochs``, summed
        over processes under torchrun."""
        from .. import runtime as dist_utils
        from ..evaluation import evaluate

        ds = state.data.train
        if not self.train_eval_augment:
            if self.train_eval_limit is not None and len(ds) > self.train_eval_limit:
                idx = torch.arange(self.train_eval_limit)
                ds = ds.subset(idx) if hasattr(ds, "subset") else torch.utils.data.Subset(ds, idx.tolist())
            return evaluate(model, ds, device=state.device, amp=state.amp, amp_dtype=state.amp_dtype)["acc"]
        counts = self._train_counts(model, state)
        dist_utils.all_reduce_sum(counts)
        return counts[0].item() / max(counts[1].item(), 1.0)

    @torch.no_grad()
    def _train_counts(self, model: nn.Module, state: TrainState) -> torch.Tensor:
        """(correct, seen) of this process's share of the augmented training images, as a float64 tensor.

        In-memory splits are augmented a whole batch of ``TRAIN_EVAL_BATCH`` at a time by one generator seeded from
        the ART epoch and process ``r`` of ``w`` takes every ``w``-th image of each batch, so the summed counts do
        not depend on the number of processes. Other splits yield every ``w``-th image through a DataLoader with
        their training transforms, under RNGs seeded from the ART epoch and restored afterwards (there the drawn
        augmentations depend on the number of processes).
        """
        from ..data.batches import to_model_input
        from ..data.datasets import TensorImages
        from ..runtime import amp_enabled, autocast, evaluating

        ds = state.data.train
        n = len(ds) if self.train_eval_limit is None else min(len(ds), self.train_eval_limit)
        seed = _TRAIN_EVAL_SEED + max(state.epoch - self.warmup_epochs, 0)
        rank, world = state.rank, state.world_size
        device = state.device
        totals = torch.zeros(2, dtype=torch.float64)
        if isinstance(ds, TensorImages):
            gen = torch.Generator().manual_seed(seed)
            batches: Any = (ds.get_batch(idx, gen, train=True) for idx in torch.arange(n).split(TRAIN_EVAL_BATCH))
            batches = ((x[rank::world], y[rank::world]) for x, y in batches)
            rng = contextlib.nullcontext()
        else:
            share = torch.utils.data.Subset(ds, list(range(rank, n, world)))
            batches = torch.utils.data.DataLoader(share, batch_size=TRAIN_EVAL_BATCH)
            rng = _seeded_rngs(seed)
        with rng, evaluating(model):
            for x, y in batches:
                if len(y) == 0:
                    continue
                x, y = to_model_input(x, model, device), y.to(device, non_blocking=True)
                with autocast(device, amp_enabled(device, state.amp), state.amp_dtype):
                    out = model(x)
                totals[0] += (out.argmax(1) == y).sum().item()
                totals[1] += len(y)
        return totals

    @torch.no_grad()
    def _snapshot(self, state: TrainState, e: int) -> None:
        """Sorted |w| from the 65th percentile up with |∂L_reg/∂w| aligned to it, downsampled."""
        weights = list(prunable_weights(state.model).values())
        grads = self.regularizer.gradient(weights)
        a = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
        g = torch.cat([x.abs().flatten().float().cpu() for x in grads])
        n = a.numel()
        idx = profile_indices(n)
        # only the sampled order statistics are needed: a multi-pivot partial sort, not a full argsort
        order = torch.from_numpy(np.argpartition(a.numpy(), idx.unique().numpy()))
        profiles = state.history.meta.setdefault("profiles", [])
        profiles.append({"art_epoch": e, "step": state.step, "sparsity": self.sparsity,
                         "regularizer": self.regularizer.name, "lambda": self.lam(e),
                         "relative_index": (idx.float() / max(n - 1, 1)).tolist(), "abs_w": a[order[idx]].tolist(),
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
                "candidate_epoch": self.candidate_epoch, "candidate_acc": self.candidate_acc,
                "candidate_mean": self.candidate_mean, "candidate_rule": self.candidate_rule,
                "train_eval_augment": self.train_eval_augment, "terminated": self.terminated,
                "stop_reason": self.stop_reason, "prev_kept": self._prev_kept, "kept_history": self._kept_history,
                "threshold": self.regularizer.threshold, "calls": self.regularizer._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # checkpoints from before candidate_rule existed were written by the "best_mean" rule on un-augmented images
        saved = (state.get("candidate_rule", "best_mean"), state.get("train_eval_augment", False))
        if saved != (self.candidate_rule, self.train_eval_augment):
            raise CheckpointError(f"the checkpoint's ART state was written with candidate_rule={saved[0]!r}, "
                                  f"train_eval_augment={saved[1]}; this ART has candidate_rule="
                                  f"{self.candidate_rule!r}, train_eval_augment={self.train_eval_augment}")
        self._window = list(state["window"])  # a copy: the loaded dict may be shared
        self.best_mean, self.candidate = state["best_mean"], state["candidate"]
        self.candidate_epoch, self.terminated = state["candidate_epoch"], state["terminated"]
        self.candidate_acc = state.get("candidate_acc")
        self.candidate_mean = state.get("candidate_mean")
        if self.candidate is not None and self.candidate_mean is None:  # written before candidate_mean existed
            self.candidate_mean = self.best_mean
        self.stop_reason, self._prev_kept = state["stop_reason"], state["prev_kept"]
        self._kept_history = list(state["kept_history"])
        self.regularizer.threshold, self.regularizer._calls = state["threshold"], state["calls"]


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed the global CPU torch, numpy and Python RNGs (what dataset transforms draw from) for the block and put
    their states back afterwards."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stay as they are
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)

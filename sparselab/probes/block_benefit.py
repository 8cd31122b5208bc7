"""Block benefit ΔΨ: how much each attention / MLP block improves the features for the task at hand.

For every block k a pair of small probe heads is trained on *detached* residual-stream features (they never
train the backbone) and evaluated on the block's input x_{k-1} and output x_k:

    ΔΨ_k = loss(probe_k(x_{k-1})) − loss(probe_k(x_k))

separately for the class-token probe (ΔΨ^c) and the patch probe (ΔΨ^p). The loss is the task's own: during
:func:`sparselab.fit` the probes train and measure on the targets the model trains on (mixed and smoothed under
mixup/cutmix, smoothed with label smoothing), never on hard labels next to mixed images. Benefits are summed over
a window of steps and averaged when read; the previous window is kept so that both can be merged (P3B's
finalisation). Under torchrun sums, counts and probe gradients are all-reduced.

The reference estimator evaluates every probe on the whole batch at every step. Nearly all of its cost is the
patch probes' 3x3 convolutions; two knobs make them cheaper (``benchmarks/bench_p3b_probes.py`` measures cost and
agreement with the reference): ``probe_every=k`` trains and measures the patch probes on every k-th step only,
``probe_fraction=f`` on the first ⌈f·B⌉ samples of each batch. The class-token probes (one Linear each) always run
on every step and the whole batch; each variant's window mean divides by its own batch count, and a window in
which the patch probes did not run has no patch mean at all (P3B's update then goes by the class-token benefit).
:data:`FAST_PROBES` (the class-token probes alone) keeps the reference's allocation at a third of its cost; the
benchmark lists the cadences above and how much agreement each gives up.

:class:`BlockBenefit` is a training plug-in: pass it to :func:`sparselab.fit` as a callback to record benefits
during ordinary fine-tuning (``log_every`` steps and at every epoch end), or let :class:`sparselab.P3B` drive it.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=28, limit=256)
    >>> model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    >>> probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    >>> h = sl.fit(model, data, epochs=1, batch_size=64, callbacks=[probes], progress=False)
    >>> sorted(h.blocks.metric.unique())
    ['benefit_cls', 'benefit_patch']
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .. import runtime as dist_utils
from ..callbacks import TrainState
from ..data.batches import to_model_input
from ..errors import ConfigError, check_finite, check_positive_int
from ..structure.taps import ResidualTaps
from ..structure.vit import ViTStructure
from .heads import ProbePair
from .window import WindowedRecorder

VARIANTS = ("cls", "patch")

#: The class-token probes alone, no patch probe: in ``benchmarks/bench_p3b_probes.py`` (P3B at 50 % on the
#: ``cpu-digits`` preset, 3 seeds) a P3B step cost 1.10x a plain fine-tuning step (1.096, median of 5 passes)
#: instead of 4.08x with the reference probes, the final per-block keep ratios correlated 0.95 (Spearman) with the
#: reference's and the mean accuracy was 0.09 points above the reference's (seed std 0.16 points); on DeiT-Tiny at
#: 224 px a step cost 1.00x instead of 4.57x. Patch probes on every 16th step and a quarter of the batch
#: (``probe_every=16, probe_fraction=0.25``) agreed more closely (ρ 0.97) at 1.15x; every 32nd step and an eighth
#: of the batch at 1.11x.
#: Use as ``sl.P3B(model, 0.5, **sl.probes.FAST_PROBES)``.
FAST_PROBES = {"patch_probe": None}


class BlockBenefit(WindowedRecorder):
    """Probe heads on every block of a timm ViT and the running block-benefit sums.

    Args:
        model: a timm VisionTransformer-family model.
        num_classes: classes of the task the probes learn.
        patch_probe: ``conv2`` (reference: two 3x3 conv layers), ``conv1``, ``linear``, or None (class probe only).
        log_every: when used as a callback, record the window means every this many steps (and always at the
            end of an epoch); None: at epoch ends only. Use :meth:`calibrate` and :meth:`measure` for benefits
            before fine-tuning.
        structure: an existing :class:`ViTStructure` of ``model`` (to share one).
        probe_every: train and measure the patch probes on every this many training steps (1: every step, the
            reference).
        probe_fraction: share of each batch the patch probes see during training, in (0, 1] (1: the whole
            batch, the reference).
        lr: the probes' own learning rate (the reference: 5e-4, not scaled with the batch); None: the model's.
        weight_decay: the probes' weight decay on conv/linear weights (the reference: 0.05); biases and BatchNorm
            get none.
    """

    def __init__(self, model: nn.Module, num_classes: int, patch_probe: str | None = "conv2",
                 log_every: int | None = None, structure: ViTStructure | None = None, probe_every: int = 1,
                 probe_fraction: float = 1.0, lr: float | None = None, weight_decay: float = 0.0):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 1:
            raise ConfigError(f"probe_every must be an integer >= 1 (1 = every step), got {probe_every!r}")
        check_finite("probe_fraction", probe_fraction)
        if not 0 < probe_fraction <= 1:
            raise ConfigError(f"probe_fraction must lie in (0, 1] (1 = the whole batch), got {probe_fraction!r}")
        if patch_probe is None and (probe_every != 1 or probe_fraction != 1):
            raise ConfigError(f"probe_every={probe_every!r} and probe_fraction={probe_fraction!r} set how often and on "
                              f"how much of each batch the patch probes run, but patch_probe=None runs none (the "
                              f"class-token probes see every step and the whole batch); pass a patch probe (one of "
                              f"conv2, conv1, linear) or leave both at 1")
        if lr is not None:  # None: the model's learning rate
            check_finite("the probes' lr", lr, low=0, low_inclusive=False)
        check_finite("the probes' weight_decay", weight_decay, low=0)
        self.probe_every, self.probe_fraction = probe_every, float(probe_fraction)
        self.lr, self.weight_decay = lr, float(weight_decay)
        self.structure = structure or ViTStructure(model)
        check_structure(self.structure, model)
        s = self.structure
        self.num_classes = num_classes
        self.patch_probe = patch_probe
        super().__init__(log_every)
        self.probes = nn.ModuleList([ProbePair(s.embed_dim, num_classes, patch_probe) for _ in s.blocks])
        self.variants = VARIANTS if patch_probe else VARIANTS[:1]
        self.taps = ResidualTaps(s)
        self.accumulate = True
        self._training_step = False  # inside extra_loss: non-finite benefits are dropped with fit's step
        self.reset()

    # ------------------------------------------------------------------ sums
    def reset(self) -> None:
        """Start a new window: the current one becomes the previous one; zero the sums and the batch counts."""
        k = len(self.structure.blocks)
        if hasattr(self, "sums"):
            self.prev_sums, self.prev_counts = self.sums, self.counts
        else:
            self.prev_sums = torch.zeros(len(VARIANTS), k, dtype=torch.float64)
            self.prev_counts = torch.zeros(len(VARIANTS), dtype=torch.float64)
        self.sums = torch.zeros(len(VARIANTS), k, dtype=torch.float64)
        self.counts = torch.zeros(len(VARIANTS), dtype=torch.float64)

    @property
    def count(self) -> int:
        """Batches in the current window (those of the class-token probe, which runs on every one)."""
        return int(self.counts.max())

    def window_mean(self, reduce: bool = True, merge_previous: bool = False) -> dict[str, torch.Tensor]:
        """Mean ΔΨ per block over the current window, per variant (``cls``, ``patch``); all-reduced.
        ``merge_previous``: over the previous and the current window together.

        A variant that saw no batch in the window is left out of the result: it has no measurement there (with
        ``probe_every`` longer than a window, the patch probes skip whole windows), which is not a benefit of 0.
        """
        sums, counts = self.sums, self.counts
        if merge_previous:
            sums, counts = sums + self.prev_sums, counts + self.prev_counts
        t = torch.cat([sums.flatten(), counts])
        if reduce:
            t = dist_utils.all_reduce_sum(t)
        counts = t[-len(VARIANTS):]
        means = t[:-len(VARIANTS)].view_as(self.sums) / counts.clamp_min(1.0)[:, None]
        return {v: means[i].clone() for i, v in enumerate(VARIANTS) if v in self.variants and counts[i] > 0}

    # ------------------------------------------------------------------ probe losses
    def probe_loss(self, targets: torch.Tensor, patch: bool = True, patch_samples: int | None = None,
                   label_smoothing: float = 0.0, backward: Callable[[torch.Tensor], None] | None = None
                   ) -> torch.Tensor:
        """Sum of all probe losses on the last forward pass's taps; accumulates ΔΨ when ``accumulate``.

        ``targets`` are class indices ``(B,)`` (cross-entropy with ``label_smoothing``) or target distributions
        ``(B, C)`` (soft-target cross-entropy, as under mixup/cutmix); see :func:`sparselab.training.task_loss`.
        ``patch=False`` skips the patch probes; ``patch_samples`` gives them only the first samples of the batch.
        ``backward`` (fit's :attr:`~sparselab.callbacks.TrainState.backward`): back-propagate each patch probe's
        loss as soon as it is computed, so that only one probe's graph is alive at a time; their share of the
        result is then a detached value (it still tells whether the losses are finite). During training (from
        :meth:`extra_loss`) a batch whose benefits are not all finite adds nothing to the sums: fit drops its step.

        The class-token probes of all blocks run as one batched matrix product over the stacked probe weights.
        """
        stream = self.taps.stream
        s = self.structure
        if len(stream) != len(s.blocks) + 1:
            raise RuntimeError("BlockBenefit saw no complete forward pass; is the model the one it was built on?")
        patch = patch and self.probes[0].patch is not None
        n = len(targets) if patch_samples is None else max(1, min(patch_samples, len(targets)))
        cls_losses = self._class_losses(stream, targets, label_smoothing)  # (2, K): block input, block output
        total = cls_losses.sum()
        deltas = torch.zeros(len(VARIANTS), len(s.blocks), dtype=torch.float64)
        deltas[0] = (cls_losses[0] - cls_losses[1]).detach().double().cpu()
        if patch:
            patch_losses = []
            pair_targets = twice(targets[:n])
            for k, pair in enumerate(self.probes):
                grids = torch.cat([s.patch_tokens(stream[k][:n], self.taps.grid),
                                   s.patch_tokens(stream[k + 1][:n], self.taps.grid)])
                pl = _loss(pair.patch(grids), pair_targets, label_smoothing).view(2, -1).mean(1)
                if backward is not None:
                    backward(pl.sum())
                    pl = pl.detach()
                patch_losses.append(pl)
            pls = torch.stack(patch_losses, dim=1)  # (2, K)
            deltas[1] = (pls[0] - pls[1]).detach().double().cpu()
            total = total + pls.sum()
        if self.accumulate and not (self._training_step and not bool(torch.isfinite(deltas).all())):
            self.sums += deltas
            self.counts += torch.tensor([1.0, float(patch)], dtype=torch.float64)
        return total

    def _class_losses(self, stream: list[torch.Tensor], targets: torch.Tensor, label_smoothing: float
                      ) -> torch.Tensor:
        """Mean loss of every block's class-token probe on the block's input (row 0) and output (row 1)."""
        k = len(self.probes)
        pooled = torch.stack([self.structure.pooled(x) for x in stream])  # (K + 1, B, D)
        weight = torch.stack([pair.cls.weight for pair in self.probes])  # (K, C, D)
        bias = torch.stack([pair.cls.bias for pair in self.probes])  # (K, C)
        feats = torch.stack([pooled[:-1], pooled[1:]])  # (2, K, B, D)
        logits = torch.matmul(feats, weight.transpose(1, 2)) + bias[:, None]  # (2, K, B, C)
        batch = len(targets)
        repeated = targets.repeat(2 * k, *([1] * (targets.dim() - 1)))
        losses = _loss(logits.reshape(2 * k * batch, -1), repeated, label_smoothing)
        return losses.view(2, k, batch).mean(-1)

    # ------------------------------------------------------------------ hooks
    def _check_classes(self, data) -> None:
        """Refuse data of another class count than the probes were built for (their heads would index past their
        outputs, or learn classes the data never shows)."""
        data_classes = getattr(data, "num_classes", None)
        if isinstance(data_classes, int) and not isinstance(data_classes, bool) and data_classes != self.num_classes:
            raise ConfigError(f"the block-benefit probes were built for num_classes={self.num_classes}, but "
                              f"{getattr(data, 'name', 'the data')!r} has {data_classes} classes; build "
                              f"them (or P3B) with num_classes={data_classes}")

    def _check_labels(self, y: torch.Tensor, what: str) -> None:
        """Refuse class labels outside ``[0, num_classes)`` with the call that read them."""
        if y.dtype.is_floating_point or y.dim() != 1 or not len(y):
            return
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= self.num_classes:
            raise ConfigError(f"{what} read class label {low if low < 0 else high}, but the block-benefit probes "
                              f"were built for num_classes={self.num_classes} (labels 0..{self.num_classes - 1}); "
                              f"build them with the data's class count")

    def on_fit_start(self, state: TrainState) -> None:
        self._check_classes(state.data)
        check_trained_model(self.structure, state.model, "the block-benefit probes")
        self._place_like(state.model)

    def _place_like(self, model: nn.Module) -> None:
        """The probe heads (made in float32 on the CPU) on the device and in the dtype of ``model``'s weights."""
        weight = next(model.parameters())
        self.probes.to(weight.device, dtype=weight.dtype)

    def param_groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # placed before the optimizer holds them: a resume loads their weights and optimizer state in the model's
        # dtype and on its device, not into float32 CPU heads that are moved afterwards
        self._place_like(self.structure.model)
        decay = [p for p in self.probes.parameters() if p.ndim > 1]
        no_decay = [p for p in self.probes.parameters() if p.ndim <= 1]
        lr = {"lr": self.lr} if self.lr is not None else {}
        return groups + [{"params": decay, "weight_decay": self.weight_decay, **lr},
                         {"params": no_decay, "weight_decay": 0.0, **lr}]

    def patch_probes_this_step(self, state: TrainState) -> bool:
        """Whether the patch probes run on the current step (``probe_every``)."""
        return state.step % self.probe_every == 0

    def patch_samples(self, batch: int) -> int | None:
        """How many samples of a batch of ``batch`` the patch probes see: ``probe_fraction`` of it rounded up, at
        least one; None for the whole batch.

        Example:
            >>> import sparselab as sl
            >>> model = sl.models.create("vit_nano_patch4_28", num_classes=10)
            >>> sl.probes.BlockBenefit(model, 10, probe_fraction=0.07).patch_samples(100)
            7
        """
        if self.probe_fraction >= 1:
            return None
        # rounded first: 0.07 * 100 is 7.000000000000001 in floating point, which a bare ceil makes 8
        return max(1, math.ceil(round(self.probe_fraction * batch, 9)))

    def extra_loss(self, state: TrainState) -> torch.Tensor:
        if not self.probes.training:
            self.probes.train()
        n = self.patch_samples(len(state.targets))
        # a non-finite probe loss makes the step's loss non-finite, and fit drops that step: its benefits too
        self._training_step = True
        try:
            return self.probe_loss(state.loss_targets, patch=self.patch_probes_this_step(state), patch_samples=n,
                                   label_smoothing=state.label_smoothing, backward=state.backward)
        finally:
            self._training_step = False

    def after_backward(self, state: TrainState) -> None:
        if state.world_size > 1:
            all_reduce_mean_grads(list(self.probes.parameters()), state.world_size)

    def log(self, state: TrainState) -> None:
        """Write the window means into the History (``benefit_cls``/``benefit_patch``; a variant without a batch in
        the window writes nothing) and reset."""
        means = self.window_mean()
        for v, values in means.items():
            state.history.log_blocks(f"benefit_{v}", {b.name: float(values[b.index]) for b in self.structure.blocks},
                                     step=state.step, epoch=state.epoch)
        self.reset()

    def record(self, history, values: dict[str, torch.Tensor], step: int = 0, epoch: int = 0) -> None:
        """Write measured benefits (e.g. from :meth:`measure` before fine-tuning) into a History."""
        for v, vec in values.items():
            history.log_blocks(f"benefit_{v}", {b.name: float(vec[b.index]) for b in self.structure.blocks},
                               step=step, epoch=epoch)

    @torch.no_grad()
    def calibrate(self, data, steps: int = 50, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> None:
        """Fit the probes alone on the frozen model (e.g. to measure benefit *before* fine-tuning)."""
        from ..data.batches import epoch_order

        check_positive_int("calibrate()'s steps", steps, allow_zero=True)
        check_positive_int("calibrate()'s batch_size", batch_size)
        check_finite("calibrate()'s lr", lr, low=0, low_inclusive=False)
        if len(data.train) == 0:
            raise ConfigError("calibrate() needs a non-empty training split")
        self._check_classes(data)
        model = self.structure.model
        ref = next(model.parameters())
        device = ref.device
        self.probes.to(device, dtype=ref.dtype)
        opt = torch.optim.AdamW(self.probes.parameters(), lr=lr, weight_decay=0.0)
        train = data.train
        was_training, accumulate = model.training, self.accumulate
        model.eval()
        self.accumulate = False
        order = epoch_order(len(train), seed, 0)
        try:  # a failed call gives the model its mode back and keeps recording benefits as before
            for i in range(steps):
                idx = order[(i * batch_size) % len(order):][:batch_size]
                x, y = train.get_batch(idx) if hasattr(train, "get_batch") else _stack(train, idx)
                self._check_labels(y, "calibrate()")
                model(to_model_input(x, model, device))
                with torch.enable_grad():
                    loss = self.probe_loss(y.to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            model.train(was_training)
            self.accumulate = accumulate
        self.reset()

    @torch.no_grad()
    def measure(self, data, batches: int = 4, batch_size: int = 128) -> dict[str, torch.Tensor]:
        """ΔΨ per block on a few held-out batches (probes and model in eval mode); does not touch the sums."""
        model = self.structure.model
        device = next(model.parameters()).device
        ds = data.eval_split if hasattr(data, "eval_split") else data
        if len(ds) == 0 or isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ConfigError(f"measure() needs batches >= 1 and a non-empty split, got batches={batches!r} and "
                              f"{len(ds)} samples")
        check_positive_int("measure()'s batch_size", batch_size)
        self._check_classes(data)
        self.probes.to(device, dtype=next(model.parameters()).dtype)
        saved = (self.sums.clone(), self.counts.clone(), self.accumulate, model.training, self.probes.training)
        previous = (self.prev_sums, self.prev_counts)
        self.reset()
        self.accumulate = True
        model.eval()
        self.probes.eval()
        try:  # a failed call leaves the window sums and the modes as they were
            for i in range(batches):
                if i * batch_size >= len(ds):
                    break
                idx = torch.arange(i * batch_size, min((i + 1) * batch_size, len(ds)))
                x, y = ds.get_batch(idx) if hasattr(ds, "get_batch") else _stack(ds, idx)
                self._check_labels(y, "measure()")
                model(to_model_input(x, model, device))
                self.probe_loss(y.to(device))
            result = self.window_mean()
        finally:
            self.sums, self.counts, self.accumulate = saved[0], saved[1], saved[2]
            self.prev_sums, self.prev_counts = previous
            model.train(saved[3])
            self.probes.train(saved[4])
        return result

    def remove(self) -> None:
        """Detach the taps from the model."""
        self.taps.remove()

    def config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "patch_probe": self.patch_probe, "probe_every": self.probe_every,
                "probe_fraction": self.probe_fraction, "lr": self.lr, "weight_decay": self.weight_decay,
                "log_every": self.log_every}

    def state_dict(self) -> dict[str, Any]:
        return {"probes": self.probes.state_dict(), "sums": self.sums.clone(), "counts": self.counts.clone(),
                "prev_sums": self.prev_sums.clone(), "prev_counts": self.prev_counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probes.load_state_dict(state["probes"])
        self.sums = state["sums"].clone()
        self.counts = (state["counts"].clone() if "counts" in state
                       else torch.full((len(VARIANTS),), float(state["count"]), dtype=torch.float64))
        if "prev_sums" in state:
            self.prev_sums, self.prev_counts = state["prev_sums"].clone(), state["prev_counts"].clone()


def check_structure(structure: ViTStructure, model: nn.Module) -> None:
    """Refuse a ``structure`` of another model than ``model`` (its taps would read that model's stream)."""
    if structure.model is not model:
        raise ConfigError("structure= describes another model than model=: pass ViTStructure(model) of the same "
                          "model, or leave structure out")


def check_trained_model(structure: ViTStructure, model: nn.Module, what: str) -> None:
    """Refuse to train ``model`` when it does not hold the blocks ``structure`` reads."""
    first = structure.layers[0]
    if not any(m is first for m in model.modules()):
        raise ConfigError(f"{what} were built on another model than the one being trained; build them on the model "
                          f"passed to fit")


def twice(targets: torch.Tensor) -> torch.Tensor:
    """Targets for a probe evaluated on a block's input and output stacked along the batch."""
    return torch.cat([targets, targets])


def _loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    from ..runtime import task_loss

    return task_loss(logits, targets, label_smoothing, reduction="none")


def all_reduce_mean_grads(params: list[torch.Tensor], world_size: int) -> None:
    """Average the gradients of parameters that live outside DistributedDataParallel, in one collective."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist_utils.all_reduce_sum(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _stack(ds, idx):
    items = [ds[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

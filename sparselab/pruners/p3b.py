"""P3B — Pruning by Block Benefit: structured pruning of a ViT while it is fine-tuned on a new domain.

Between blocks, each block's keep ratio is set from its measured benefit (probe heads, §1.3–1.4) and re-set
throughout training, so a block whose benefit rises gets budget back and its pruned elements are reactivated.
Inside a block, a squared first-order Taylor criterion on the gates decides which elements stay (§1.5).

The same machinery runs the baselines (``allocation=``): ``uniform`` (one keep ratio for every block, Taylor
selection inside), ``global`` (one Taylor ranking across all blocks, no per-block budget), ``fixed``
(hand-set keep-ratio profile, rescaled to the budget), and ``criterion="l1"`` (structured L1 magnitude instead
of Taylor).

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=28, limit=256)
    >>> model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    >>> pruner = sl.P3B(model, prune_ratio=0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3),
    ...                 patch_probe="linear")
    >>> history = sl.fit(model, data, epochs=3, batch_size=64, pruner=pruner, progress=False)
    >>> abs(pruner.achieved_prune_ratio() - 0.5) < 0.005
    True
    >>> compact = pruner.compact()          # a physically smaller timm ViT   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..callbacks import Pruner, TrainState
from ..configs import BenefitConfig, P3BConfig
from ..errors import ConfigError, DivergedError, check_positive_int, check_ratio, unknown_name
from ..probes.block_benefit import BlockBenefit, all_reduce_mean_grads, check_trained_model
from ..structure.gates import Gates
from ..structure.vit import ViTStructure
from .allocation import ramp_keep, water_fill
from .allocators import (
    ALLOCATIONS,
    Allocation,
    AllocationContext,
    BenefitAllocation,
    FixedAllocation,
    create_allocation,
)
from .criteria import CRITERIA, GateCriterion, create_criterion
from .schedules import P3BSchedule, P3BSteps
from .selection import (
    GATE_FACTORS,
    find_threshold,
    masks_for_threshold,
    merged_gate_factors,
    order_block_elements,
    soft_masks,
)


class P3B(Pruner):
    """Block-benefit structured pruning of a timm ViT (and its baselines), as a :func:`sparselab.fit` pruner.

    Args:
        model: a timm VisionTransformer-family model.
        prune_ratio: fraction of parameters to remove, in [0, 1) — of the whole model by default, of the
            blocks only with ``blocks_only=True``.
        schedule: a :class:`P3BSchedule` (epochs of warm-up / sparsify / finalize, updates per epoch, τ).
        num_classes: classes of the task (default: the model's).
        allocation: ``benefit`` (P3B), ``uniform``, ``global``, ``fixed`` or any name registered with
            :func:`~sparselab.pruners.allocators.register_allocation` — or an
            :class:`~sparselab.pruners.allocators.Allocation` instance (see the module docstring).
        criterion: ``taylor`` (Σ(m·∂L/∂m)² over the window), ``l1`` (structured weight magnitude), any name
            registered with :func:`~sparselab.pruners.criteria.register_criterion`, or a
            :class:`~sparselab.pruners.criteria.GateCriterion` instance.
        keep_ratios: per-block keep-ratio profile for ``allocation="fixed"`` (length 2·depth).
        patch_probe: ``conv2`` (reference), ``conv1``, ``linear`` or None (class-token probe only).
        probe_every, probe_fraction: run the patch probes on every k-th step only / on a share of each batch
            (cheaper benefit estimates; see :class:`sparselab.probes.BlockBenefit`). Default: the reference. An
            update whose window held no patch-probe batch goes by the class-token benefit alone.
            ``**sl.probes.FAST_PROBES`` (the class-token probes alone, ``patch_probe=None``) cut a P3B step from
            4.1x to 1.10x plain fine-tuning with nearly the same allocation (keep ratios ρ = 0.95) in the project's
            benchmark (DeiT-Tiny at 224 px: 4.6x to 1.00x); patch probes on every 16th step and a quarter of the
            batch agree more closely (ρ = 0.97) at 1.15x.
        benefit_scale: T in z = T·ΔΨ/max ΔΨ and in the soft clip (default 10). This and the other probe and
            benefit options (``patch_probe``, ``probe_every``, ``probe_fraction``, ``probe_lr``,
            ``probe_weight_decay``, ``per_parameter``, ``momentum``, ``class_weight``) configure the ``benefit``
            allocation (:class:`~sparselab.pruners.allocators.BenefitAllocation`).
        per_parameter: divide the benefit by the ``remaining`` (reference) or ``dense`` parameter count.
        momentum: γ of the importance momentum across updates (0.2).
        class_weight: α, the class-token share of the class/patch mix (0.5).
        gate_factors: per-gate multipliers of the rank-normalised scores; the gates named override the method's
            factors (``attn_out`` 1.5, ``mlp_hid`` 0.75, ``mlp_out`` 1.5, others 1), the rest keep them.
        blocks_only: let ``prune_ratio`` refer to the blocks' parameters only.
        probe_lr, probe_weight_decay: the probes' own optimizer settings (the reference: 5e-4 and 0.05 on
            conv/linear weights); ``probe_lr=None`` uses the model's learning rate.
        reactivation: ``False`` makes a pruning permanent — an element whose gate was below 0.5 after an update
            stays below the threshold in every later update (an ablation of the reactivation P3B relies on). The
            water-filling caps each block at what its living elements hold, so the budget is still met.
        freeze_allocation_after: keep the per-block goal keep ratios of this many first updates' last one for
            the rest of the run (``1``: the benefit read at the first update decides; an ablation of late
            re-allocation). None: re-allocate at every update (the method). Without reactivation a block whose
            living elements no longer reach its frozen ratio is capped there, and the other blocks take up the
            rest of the budget in proportion to their frozen ratios.
        qkv_unit: what one ``attn_qkv`` element removes: ``"dim"``, one dimension of every head (the reference,
            which keeps every head), or ``"head"``, one whole head (head pruning, an extension: the compact model
            then has fewer heads of the full width, which runs faster than as many narrower ones).

    ``pruner.options`` holds these options (all but ``prune_ratio`` and ``schedule``) as a typed
    :class:`~sparselab.configs.P3BConfig`; :meth:`from_config` builds a pruner from one, and :meth:`config` is the
    flat record its History and checkpoint keep.

    Under fp16 loss scaling the gate gradients (the gates are outside the optimizer) are unscaled like every other
    gradient, and a step the scaler skips adds nothing to the Taylor scores. At finalisation the Taylor scores and
    the block benefit are both taken over the last two windows merged.
    """

    def __init__(self, model: nn.Module, prune_ratio: float, schedule: P3BSchedule | None = None, *,
                 num_classes: int | None = None, allocation: str | Allocation = "benefit",
                 criterion: str | GateCriterion = "taylor",
                 keep_ratios: Sequence[float] | None = None, patch_probe: str | None = "conv2",
                 benefit_scale: float = 10.0, per_parameter: str = "remaining", momentum: float = 0.2,
                 class_weight: float = 0.5, gate_factors: Mapping[str, float] | None = None,
                 blocks_only: bool = False, probe_every: int = 1, probe_fraction: float = 1.0,
                 probe_lr: float | None = None, probe_weight_decay: float = 0.0, reactivation: bool = True,
                 freeze_allocation_after: int | None = None, qkv_unit: str = "dim"):
        self.prune_ratio = check_ratio("prune_ratio", prune_ratio)
        if isinstance(allocation, str) and allocation not in ALLOCATIONS:
            raise unknown_name("allocation", allocation, ALLOCATIONS)
        if isinstance(criterion, str) and criterion not in CRITERIA:
            raise unknown_name("criterion", criterion, CRITERIA)
        # a BenefitConfig checks the options whichever allocation runs
        benefit = BenefitAllocation(BenefitConfig(
            patch_probe=patch_probe, benefit_scale=benefit_scale, per_parameter=per_parameter, momentum=momentum,
            class_weight=class_weight, probe_every=probe_every, probe_fraction=probe_fraction, probe_lr=probe_lr,
            probe_weight_decay=probe_weight_decay))
        if schedule is not None and not isinstance(schedule, P3BSchedule):
            raise ConfigError(f"schedule must be a sl.P3BSchedule (or None for the reference defaults), got "
                              f"{type(schedule).__name__}: {schedule!r}")
        self.schedule = schedule or P3BSchedule()
        if keep_ratios is not None and allocation != "fixed":
            name = allocation if isinstance(allocation, str) else type(allocation).__name__
            raise ConfigError(f"keep_ratios set the profile of allocation='fixed', but allocation is {name!r}, "
                              f"which would ignore them: pass allocation='fixed' or leave keep_ratios out")
        if allocation != "benefit":  # the probes and the benefit are not used: a changed option would be ignored
            unused = _changed_benefit_options(benefit.options)
            if unused:
                if isinstance(allocation, str):
                    raise ConfigError(f"{', '.join(unused)} set the block-benefit allocation, but allocation is "
                                      f"{allocation!r}, which runs no probes and would ignore them: pass "
                                      f"allocation='benefit' or leave them out")
                raise ConfigError(f"{', '.join(unused)} set the block-benefit allocation, but allocation is a "
                                  f"{type(allocation).__name__} object, which carries its own settings and would "
                                  f"ignore them: set them on the object, or pass allocation='benefit' with them")
        self.structure = ViTStructure(model, qkv_unit)
        s = self.structure
        if allocation == "benefit":
            self.allocation: Allocation = benefit
        elif allocation == "fixed":
            self.allocation = FixedAllocation(keep_ratios)
        else:
            self.allocation = create_allocation(allocation)
        self.criterion: GateCriterion = create_criterion(criterion)
        self.gate_factors = merged_gate_factors(gate_factors)
        if self.allocation.selection == "global" and self.gate_factors != GATE_FACTORS:
            raise ConfigError(f"gate_factors weigh the rank-normalised scores inside each block, but allocation "
                              f"{self.allocation.name or type(self.allocation).__name__!r} ranks the raw scores "
                              f"across all blocks and would ignore them: leave gate_factors out or pick an "
                              f"allocation with per-block selection")
        self.blocks_only = blocks_only  # checked with the other options by P3BConfig below
        if freeze_allocation_after is not None:
            check_positive_int("freeze_allocation_after", freeze_allocation_after)
            if self.allocation.selection == "global":
                raise ConfigError(f"freeze_allocation_after freezes the per-block keep ratios, but allocation "
                                  f"{self.allocation.name or type(self.allocation).__name__!r} ranks every element "
                                  f"across all blocks without per-block keep ratios and would ignore it: leave "
                                  f"freeze_allocation_after out or pick an allocation with per-block selection")
        self.reactivation = reactivation
        self.freeze_allocation_after = freeze_allocation_after
        #: everything but the prune ratio and schedule, typed (what :meth:`from_config` takes back)
        self.options = P3BConfig(
            allocation=allocation if isinstance(allocation, str) else self.allocation.name,
            criterion=criterion if isinstance(criterion, str) else criterion.name,
            # an allocation instance carries its own profile or benefit options (the keywords are left at their
            # defaults then): they are what from_config must rebuild
            keep_ratios=(self.allocation.keep_ratios if isinstance(self.allocation, FixedAllocation)
                         and self.allocation.keep_ratios is not None else None),
            gate_factors=dict(self.gate_factors), blocks_only=self.blocks_only, reactivation=self.reactivation,
            freeze_allocation_after=freeze_allocation_after, qkv_unit=qkv_unit,
            benefit=self.allocation.options if isinstance(self.allocation, BenefitAllocation) else benefit.options)
        self._config = {"prune_ratio": self.prune_ratio, "schedule": dataclasses.asdict(self.schedule),
                        **self.options.record()}
        if not isinstance(allocation, str):
            self._config.update(self.allocation.config())

        self.dense_linear = torch.tensor([s.linear_params(b) for b in s.blocks], dtype=torch.float64)
        self.dense_block = torch.tensor([s.block_params(b) for b in s.blocks], dtype=torch.float64)
        blocks_total = float(self.dense_block.sum())
        total = blocks_total if blocks_only else blocks_total + s.outside_params()
        self.linear_budget = (1 - self.prune_ratio) * total - (total - float(self.dense_linear.sum()))
        if self.linear_budget < 0:
            most = float(self.dense_linear.sum()) / total
            raise ConfigError(f"prune_ratio {self.prune_ratio} removes more than the prunable Linear layers hold: "
                              f"at most {most:.3f} of {'the blocks' if blocks_only else 'the model'} is prunable")

        with contextlib.ExitStack() as undo:  # an option refused while attaching leaves the model as it was given
            self.gates = Gates(s)
            undo.callback(self.gates.remove)
            if not self.criterion.needs_gate_grads:  # only gradient-based criteria read the gates' gradients
                self.gates.requires_grad_(False)
            self.criterion.attach(s, self.gates)
            undo.callback(self.criterion.remove)
            n_cls = num_classes if num_classes is not None else getattr(model, "num_classes", None)
            self.allocation.attach(model, s, n_cls)
            undo.pop_all()
        self.steps: P3BSteps | None = None
        self.finalized = False
        self.updates = 0
        self._dead: dict[str, torch.Tensor] = {}  # without reactivation: elements pruned at an earlier update
        self._frozen_kappa: torch.Tensor | None = None

    @classmethod
    def from_config(cls, model: nn.Module, prune_ratio: float, config: P3BConfig,
                    schedule: P3BSchedule | None = None, num_classes: int | None = None) -> "P3B":
        """P3B configured by a :class:`~sparselab.configs.P3BConfig` (e.g. another run's ``pruner.options``).

        Example:
            >>> import sparselab as sl
            >>> from sparselab.configs import P3BConfig
            >>> model = sl.models.create("vit_nano_patch4_28", num_classes=10)
            >>> P3B.from_config(model, 0.5, P3BConfig(allocation="uniform")).options.allocation
            'uniform'
        """
        options = dataclasses.asdict(config)
        benefit = options.pop("benefit")
        return cls(model, prune_ratio, schedule, num_classes=num_classes, **options, **benefit)

    @property
    def probes(self) -> BlockBenefit | None:
        """The block-benefit probes of the ``benefit`` allocation (None for the others)."""
        return getattr(self.allocation, "probes", None)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps the criterion left out of its windows (overflowed fp16 steps)."""
        return self.criterion.skipped_steps

    def config(self) -> dict[str, Any]:
        """Everything this pruner was built with (recorded in checkpoints; a resume with other settings fails)."""
        return dict(self._config)

    # ------------------------------------------------------------------ helpers
    def hard_masks(self) -> dict[int, dict[str, torch.Tensor]]:
        """Boolean masks (gate ≥ 0.5) of every layer and gate."""
        return self.gates.hard_masks()

    def achieved_prune_ratio(self) -> float:
        """Fraction of parameters the current hard masks remove (same reference as ``prune_ratio``)."""
        return self.structure.prune_ratio(self.hard_masks(), blocks_only=self.blocks_only)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, state: TrainState) -> None:
        check_trained_model(self.structure, state.model, "P3B's gates")  # whatever the allocation
        self.gates.to(state.device)
        self.allocation.on_fit_start(state)
        self.steps = self.schedule.steps(state.steps_per_epoch)
        self._gate_next_step(state.step)
        if state.epochs < self.schedule.finalize and not self.finalized:
            warnings.warn(f"training for {state.epochs} epochs ends before P3B finalizes (epoch "
                          f"{self.schedule.finalize}); masks stay soft", stacklevel=3)
        if self.finalized:
            return
        if self.schedule.updates_per_epoch > state.steps_per_epoch:
            warnings.warn(f"updates_per_epoch={self.schedule.updates_per_epoch} exceeds the {state.steps_per_epoch} "
                          f"optimizer steps of an epoch: the masks are updated after every step, "
                          f"{state.steps_per_epoch} times per epoch", stacklevel=3)
        total = len(range(self.steps.start + self.steps.interval, self.steps.final, self.steps.interval)) + 1
        if self.freeze_allocation_after is not None and self.freeze_allocation_after >= total:
            warnings.warn(f"freeze_allocation_after={self.freeze_allocation_after}, but this schedule makes {total} "
                          f"mask updates (the final one included): no update after the freeze would use the frozen "
                          f"keep ratios, so the option changes nothing", stacklevel=3)

    def param_groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # the gates stay out of the optimizer (they are set, never stepped); their gradients are cleared in after_step
        return self.allocation.param_groups(groups)

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        if self.finalized:
            return None
        return self.allocation.extra_loss(state, active=state.step >= self.steps.start)

    def after_backward(self, state: TrainState) -> None:
        if state.grad_scale != 1.0:  # the gates are outside the optimizer: the scaler did not unscale them
            inv = 1.0 / state.grad_scale
            for p in self.gates.parameters():
                if p.grad is not None:
                    p.grad.mul_(inv)
        if state.world_size > 1:
            params = [p for p in self.gates.parameters() if p.requires_grad]
            if not self.finalized:
                params += self.allocation.grad_params()
            all_reduce_mean_grads(params, state.world_size)

    @torch.no_grad()
    def after_step(self, state: TrainState) -> None:
        collect = not self.finalized and self.steps.in_window(state.step)
        if collect:  # a step the grad scaler skipped (or any overflow) adds nothing, not even to the count
            collect = self.criterion.collect(state)
        for p in self.gates.parameters():
            p.grad = None
        if collect:
            self.criterion.count += 1
        self.criterion.end_step()
        if not self.finalized and self.steps.is_update(state.step):
            self.update(state)
        self._gate_next_step(state.step)

    def _gate_next_step(self, step: int) -> None:
        """Let the gates act on the coming optimizer step (``step + 1``) only where that changes something: where
        a gate is not 1, or where the criterion reads the gates' gradients after that step. Before the scoring
        window opens every gate is 1 and no gradient is read, so those steps skip the gating's products."""
        reads_grads = self.criterion.needs_gate_grads and not self.finalized and self.steps.in_window(step + 1)
        self.gates.enabled = reads_grads or not self.gates.all_one()

    def on_epoch_end(self, state: TrainState) -> None:
        if not self.finalized and state.epoch + 1 >= self.schedule.finalize:
            self.update(state, final=True)
            self.finalized = True
            self.allocation.remove()
            self.criterion.remove()
            self._gate_next_step(state.step)

    # ------------------------------------------------------------------ allocation
    def _allocate(self, state: TrainState, final: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Goal keep ratios κ_k of the blocks' Linear parameters, and the logged intermediate values."""
        ctx = AllocationContext(self.structure, self.hard_masks, self.dense_linear, self.dense_block, final, state)
        importance, logged = self.allocation.importance(ctx)
        importance = torch.as_tensor(importance, dtype=torch.float64)
        if importance.shape != (len(self.structure.blocks),) or not bool(torch.isfinite(importance).all()):
            bad = ([b.name for b, v in zip(self.structure.blocks, importance.tolist()) if not math.isfinite(v)]
                   if importance.shape == (len(self.structure.blocks),) else [])
            raise DivergedError(
                f"allocation {self.allocation.name or type(self.allocation).__name__!r} gave "
                + (f"a non-finite importance for {', '.join(bad)}" if bad else
                   f"an importance of shape {tuple(importance.shape)}, not one value per block "
                   f"({len(self.structure.blocks)})")
                + f" at step {state.step}: no allocation can be made from it (a diverged probe or a bug in the "
                  f"allocation); the last checkpoint is left as it was")
        kappa = water_fill(importance, self.dense_linear, self.linear_budget, upper=self._alive_caps())
        return kappa, logged

    def _alive_caps(self) -> torch.Tensor | None:
        """Without reactivation: the largest keep ratio each block can still reach (its dead elements stay off)."""
        if not self._dead:
            return None
        s = self.structure
        caps = []
        for b in s.blocks:
            sizes = s.gate_sizes(b.layer)
            alive = {g: sizes[g] - int(self._dead[Gates.key(b.layer, g)].sum()) for g in b.gates}
            caps.append(s.kept_counts_params(b, alive)[0] / float(self.dense_linear[b.index]))
        return torch.tensor(caps, dtype=torch.float64)

    # ------------------------------------------------------------------ the update
    @torch.no_grad()
    def update(self, state: TrainState, final: bool = False) -> None:
        """Re-allocate budgets, re-select elements and set the gates; records everything in the History."""
        s = self.structure
        step = state.step
        ramp = 1.0 if final else self.steps.ramp(step)
        tau = 0.0 if final else self.steps.tau(step)
        old = self.hard_masks()
        scores = self.criterion.scores(final)
        self._check_scores(scores, step)
        values: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(s.depth)}
        if self.allocation.selection == "global":
            kappa = torch.full((len(s.blocks),), self.linear_budget / float(self.dense_linear.sum()),
                               dtype=torch.float64)
            # one ranking across blocks: the per-block keep ratios are what it leaves in each block (at the full
            # budget for the goal, at the ramped one for the applied ratio), not the model-wide fraction
            kappa, applied = self._select_global(scores, float((ramp_keep(kappa, ramp) * self.dense_linear).sum()),
                                                 tau, values)
            logged: dict[str, torch.Tensor] = {}
        else:
            kappa, logged = self._allocate(state, final)
            if self.freeze_allocation_after is not None:
                if self._frozen_kappa is not None:
                    kappa = self._frozen_kappa.clone()
                    caps = self._alive_caps()
                    if caps is not None and bool((kappa > caps).any()):
                        # without reactivation a block may no longer hold its frozen share: the rest of the budget
                        # goes to the other blocks in proportion to their frozen keep ratios
                        kappa = water_fill(kappa, self.dense_linear, self.linear_budget, upper=caps)
                elif self.updates + 1 >= self.freeze_allocation_after:
                    self._frozen_kappa = kappa.clone()
            applied = ramp_keep(kappa, ramp)
            for b in s.blocks:
                sizes = {g: s.gate_sizes(b.layer)[g] for g in b.gates}
                block_scores = {g: scores[Gates.key(b.layer, g)] for g in b.gates}
                dead = {g: self._dead[Gates.key(b.layer, g)] for g in b.gates if Gates.key(b.layer, g) in self._dead}
                gates, order = order_block_elements(block_scores, self.gate_factors, dead or None)
                target = float(applied[b.index] * self.dense_linear[b.index])
                t = find_threshold(gates, sizes, order, lambda kept, b=b: s.kept_linear_params(b, kept), target)
                t = max(t, sum(int(d.sum()) for d in dead.values()))  # dead elements sort first and stay below t
                values[b.layer].update(soft_masks(gates, sizes, order, t, tau))
        self.gates.set_values(values)
        new = self.hard_masks()
        if not self.reactivation:
            for layer, gates in new.items():
                for g, keep in gates.items():
                    key = Gates.key(layer, g)
                    self._dead[key] = self._dead.get(key, torch.zeros_like(keep.cpu())) | ~keep.cpu()
        self._record(state, old, new, kappa, applied, logged, ramp, tau)
        self.criterion.next_window()
        self.updates += 1

    def _check_scores(self, scores: Mapping[str, torch.Tensor], step: int) -> None:
        """A criterion's scores must hold one finite value per element of every gate: a NaN would rank first and a
        wrong length would leave elements unscored, either a silently wrong selection."""
        s, name = self.structure, self.criterion.name or type(self.criterion).__name__
        for layer in range(s.depth):
            for gate, size in s.gate_sizes(layer).items():
                key = Gates.key(layer, gate)
                if key not in scores:
                    raise ConfigError(f"criterion {name!r} gave no scores for gate {key} (scores() must return one "
                                      f"tensor per gate key, e.g. 'L0_mlp_hid')")
                t = torch.as_tensor(scores[key])
                if t.shape != (size,):
                    raise ConfigError(f"criterion {name!r} gave scores of shape {tuple(t.shape)} for gate {key}; "
                                      f"it has {size} elements, one score each")
                if not bool(torch.isfinite(t).all()):
                    raise DivergedError(f"criterion {name!r} gave non-finite scores for gate {key} at step {step}: no "
                                        f"selection can be made from them; the last checkpoint is left as it was")

    def _select_global(self, scores: Mapping[str, torch.Tensor], target: float, tau: float,
                       values: dict[int, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One ranking of every element across all blocks, thresholded to ``target`` kept Linear parameters (the
        gate values go to ``values``). Returns the per-block Linear keep ratios this ranking leaves at the full
        budget (the goal) and at ``target`` (applied)."""
        s = self.structure
        keys = list(scores)
        flat = torch.cat([torch.where(self._dead[k], torch.full_like(scores[k], -math.inf), scores[k])
                          if k in self._dead else scores[k] for k in keys])
        key_idx = torch.cat([torch.full((scores[k].numel(),), i) for i, k in enumerate(keys)])
        elem_idx = torch.cat([torch.arange(scores[k].numel()) for k in keys])
        order_idx = torch.argsort(flat, stable=True)
        order = torch.stack([key_idx[order_idx], elem_idx[order_idx]], dim=1)
        sizes = {k: scores[k].numel() for k in keys}

        def kept_total(kept: Mapping[str, torch.Tensor]) -> torch.Tensor:
            total = 0
            for b in s.blocks:
                total += s.kept_linear_params(b, {g: kept[Gates.key(b.layer, g)] for g in b.gates})
            return total

        n_dead = sum(int(d.sum()) for d in self._dead.values())

        def by_layer(flat: Mapping[str, torch.Tensor], into: dict[int, dict[str, torch.Tensor]]):
            for key, v in flat.items():  # gate keys are "L{layer}_{gate}" (Gates.key)
                layer, gate = key[1:].split("_", 1)
                into[int(layer)][gate] = v
            return into

        def block_keep(t: int) -> torch.Tensor:
            masks = by_layer(masks_for_threshold(keys, sizes, order, t), {i: {} for i in range(s.depth)})
            return torch.tensor([s.linear_params(b, masks) for b in s.blocks], dtype=torch.float64) / self.dense_linear

        t = max(find_threshold(keys, sizes, order, kept_total, target), n_dead)
        t_goal = max(find_threshold(keys, sizes, order, kept_total, self.linear_budget), n_dead)
        by_layer(soft_masks(keys, sizes, order, t, tau), values)
        return block_keep(t_goal), block_keep(t)

    def _record(self, state: TrainState, old, new, kappa, applied, logged, ramp: float, tau: float) -> None:
        s, h, step, epoch = self.structure, state.history, state.step, state.epoch
        names = [b.name for b in s.blocks]
        for metric, vec in logged.items():
            h.log_blocks(metric, dict(zip(names, vec.tolist())), step=step, epoch=epoch)
        h.log_blocks("keep_goal", dict(zip(names, kappa.tolist())), step=step, epoch=epoch)
        h.log_blocks("keep_applied", dict(zip(names, applied.tolist())), step=step, epoch=epoch)
        h.log_blocks("kept_params", {b.name: s.block_params(b, new) for b in s.blocks}, step=step, epoch=epoch)
        h.log_blocks("dense_params", dict(zip(names, self.dense_block.tolist())), step=step, epoch=epoch)
        h.log_metrics({"prune_ratio": self.achieved_prune_ratio(), "ramp": ramp, "tau": tau}, step=step,
                      epoch=epoch, split="train")
        for b in s.blocks:
            for g in b.gates:
                before, after = old[b.layer][g], new[b.layer][g]
                for o, n in ((0, 1), (1, 0)):
                    changed = torch.nonzero((before == bool(o)) & (after == bool(n))).flatten()
                    if len(changed):
                        h.log_events(step=step, epoch=epoch, block=b.name, gate=g, elements=changed.tolist(),
                                     old=o, new=n)

    # ------------------------------------------------------------------ results
    def compact(self, pad_to: int = 1) -> nn.Module:
        """A physically smaller copy of the model under the current hard masks (outputs equal the hard-masked
        model's); the pruner's model is left untouched. ``pad_to=8`` rounds kept widths up with zero weights for
        faster CPU inference (see :func:`sparselab.structure.compact_vit`)."""
        from ..structure.compact import compact_vit

        self._check_hard_gates("compact()")
        return compact_vit(self.structure.model, self.hard_masks(), pad_to=pad_to, qkv_unit=self.structure.qkv_unit)

    def _check_hard_gates(self, what: str) -> None:
        """Refuse to cut a compact model while gates are soft: cut at 0.5, it would not compute what the gated
        model that was trained and evaluated computes."""
        soft = sum(int(((v > 0) & (v < 1)).sum()) for v in self.gates.values.values())
        if soft:
            raise ConfigError(f"{what}: {soft} gate values lie strictly between 0 and 1, so a compact model would not "
                              f"compute what the gated model computes; P3B makes its masks hard at the end of epoch "
                              f"{self.schedule.finalize} (schedule.finalize): train through it first")

    def save_compact(self, directory, model: nn.Module | None = None, pad_to: int = 1):
        """Save the compact model (``model``, e.g. after fine-tuning, or a fresh :meth:`compact`; built with the
        same ``pad_to``) as ``spec.json`` + ``model.safetensors`` in ``directory``;
        :func:`sparselab.structure.load_compact` reads it back."""
        from ..structure.compact import compact_spec, save_compact

        self._check_hard_gates("save_compact()")
        spec = compact_spec(self.structure.model, self.hard_masks(), pad_to=pad_to, qkv_unit=self.structure.qkv_unit)
        return save_compact(model if model is not None else self.compact(pad_to), spec, directory)

    def remove(self) -> None:
        """Detach gates and probes from the model (it computes densely again)."""
        self.gates.remove()
        self.allocation.remove()
        self.criterion.remove()

    def state_dict(self) -> dict[str, Any]:
        return {
            "gates": {k: v.detach().cpu().clone() for k, v in self.gates.values.items()},
            # each part's state under its own key: an allocation and a criterion may use the same names
            "allocation_state": self.allocation.state_dict(), "criterion_state": self.criterion.state_dict(),
            "finalized": self.finalized, "updates": self.updates, "dead": dict(self._dead),
            "frozen_kappa": self._frozen_kappa,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["gates"].items():
                self.gates.values[k].copy_(v)
        self.gates.enabled = True  # on_fit_start decides again for the loaded values
        # a checkpoint written before the parts had keys of their own holds their states merged into one dict
        self.allocation.load_state_dict(state.get("allocation_state", state))
        self.criterion.load_state_dict(state.get("criterion_state", state))
        self.finalized, self.updates = state["finalized"], state["updates"]
        self._dead = {k: v.clone() for k, v in state.get("dead", {}).items()}
        self._frozen_kappa = state.get("frozen_kappa")
        if self.finalized:
            self.allocation.remove()
            self.criterion.remove()


def implied_prune_ratio(structure: ViTStructure, keep_ratios: Sequence[float], blocks_only: bool = False) -> float:
    """The global prune ratio that per-block Linear keep ratios ``keep_ratios`` amount to."""
    lin = torch.tensor([structure.linear_params(b) for b in structure.blocks], dtype=torch.float64)
    blocks = float(sum(structure.block_params(b) for b in structure.blocks))
    total = blocks if blocks_only else blocks + structure.outside_params()
    removed = float(((1 - torch.tensor(list(keep_ratios), dtype=torch.float64)) * lin).sum())
    return removed / total


__all__ = ["P3B", "P3BSchedule", "implied_prune_ratio"]


def _changed_benefit_options(options: BenefitConfig) -> list[str]:
    """The block-benefit options that differ from their defaults (``patch_probe=None``, no probes, counts as
    unchanged: it is what an allocation without probes means)."""
    default = BenefitConfig()
    return [f"{f.name}={getattr(options, f.name)!r}" for f in dataclasses.fields(options)
            if getattr(options, f.name) != getattr(default, f.name)
            and not (f.name == "patch_probe" and getattr(options, f.name) is None)]

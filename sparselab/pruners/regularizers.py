"""Sparsity regularizers over all prunable weights (every Conv2d/Linear weight): HyperSparse, L1 and L2.

HyperSparse (Glandorf, Kaiser & Rosenhahn 2023) with target prune rate κ over weights w, a = |w|:

    τ_κ = the ⌊κn⌋-th smallest a (0-based, no gradient),    s = atanh(1/√3) / τ_κ ≈ 0.6585 / τ_κ
    ∂L/∂w_i = sign(w_i) · s · sech²(s·a_i) · ‖w‖₁ / Σ_j tanh(s·a_j)      (s and the denominator constant)

so small weights are pushed hard and the largest almost not at all; the inflection of the gradient sits exactly at
the threshold. The loss returned here is C·Σ tanh(s·a) with C = stop-gradient(‖w‖₁ / Σ tanh(s·a)): autograd yields
exactly the gradient above and the value equals ‖w‖₁ (the reference's loss is a constant 0). The threshold is an
order statistic (``np.partition``), not a full sort; sums are taken per tensor, never over one concatenated copy.

Training uses :meth:`Regularizer.add_gradient` instead of the loss: it adds λ·∂L/∂w straight into ``.grad`` with a
few in-place passes over reused buffers (for HyperSparse sech²(x) = 4σ(2x)(1−σ(2x)) and tanh(x) = 2σ(2x)−1, as the
sigmoid kernel is several times faster than tanh on CPU), and finds each new threshold exactly by selecting only
among the magnitudes in a narrow band around the previous one (:func:`banded_threshold`). Both give the same numbers
as the loss path (tests), at a fraction of its cost (``benchmarks/bench_hypersparse.py``). From
:data:`FUSE_MIN_WEIGHTS` weights on, a step is three fused passes over the weights (``torch.compile``, compiled
once per model; eager passes if compilation is not available): the threshold band (:func:`fused_banded_threshold`,
still exact on every step), the sums, and the gradient, with no magnitude or sign buffers.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(100, 10)
    >>> reg = HyperSparse(0.9)
    >>> loss = reg(net)
    >>> loss.backward()
    >>> sorted(reg.stats(net))[:3]
    ['grad_kept', 'grad_pruned', 'grad_ratio']
    >>> net.zero_grad()
    >>> value = reg.add_gradient(net, scale=1e-4)  # the same gradient, added in place
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, check_positive_int, check_ratio, unknown_name
from ..structure.unstructured import num_pruned, prunable_weights

INFLECTION = math.atanh(1 / math.sqrt(3))  # 0.6585...: sech² has its inflection at s·τ = this
#: from this many weights on, HyperSparse's elementwise passes run as fused kernels (below it compiling them costs
#: more than it saves)
FUSE_MIN_WEIGHTS = 1 << 22


def _fused_sums(weights: list[torch.Tensor], two_s: torch.Tensor) -> list[torch.Tensor]:
    """Per tensor: (Σ|w|, Σσ(2s|w|)) in one pass."""
    return [torch.stack([w.abs().sum(), torch.sigmoid(two_s * w.abs()).sum()]) for w in weights]


def _fused_gradient(weights: list[torch.Tensor], grads: list[torch.Tensor], two_s: torch.Tensor,
                    coef: torch.Tensor) -> None:
    """grad += coef·sign(w)·u(1−u), u = σ(2s|w|), in one pass per tensor."""
    for w, g in zip(weights, grads):
        u = torch.sigmoid(two_s * w.abs())
        g.add_(coef * torch.sign(w) * u * (1 - u))


def _fused_band(weights: list[torch.Tensor], band: list[torch.Tensor], lo: torch.Tensor, hi: torch.Tensor
                ) -> list[torch.Tensor]:
    """Per tensor: the count of |w| < lo, and ``band`` set to |w| where lo <= |w| <= hi, else 0, in one pass
    (a float store: the compiled kernel writes floats several times faster than booleans)."""
    counts = []
    for w, b in zip(weights, band):
        a = w.abs()
        b.copy_(torch.where((a >= lo) & (a <= hi), a, 0.0))
        counts.append((a < lo).sum())
    return counts


_COMPILED: dict[str, object] = {}
#: dtypes HyperSparse computes in directly; narrower ones (float16, bfloat16) are computed in float32, as their sums
#: over a model overflow (float16) or lose the small tanh values to rounding
_WORK_DTYPES = (torch.float32, torch.float64)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype HyperSparse computes in for weights of ``dtype``."""
    return dtype if dtype in _WORK_DTYPES else torch.float32


def _selection_dtype(weights: list[torch.Tensor]) -> torch.dtype:
    """float64 where any weight is float64 (float32 would round the order statistic), else float32."""
    return torch.float64 if any(w.dtype == torch.float64 for w in weights) else torch.float32


def _compiled(name: str):
    if name not in _COMPILED:
        fn = {"sums": _fused_sums, "gradient": _fused_gradient, "band": _fused_band}[name]
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def magnitude_threshold(weights: list[torch.Tensor], sparsity: float) -> float:
    """τ_κ: the ⌊κn⌋-th smallest |w| (0-based) over all tensors, by partial selection."""
    dtype = _selection_dtype(weights)
    flat = torch.cat([w.detach().abs().flatten().to(dtype).cpu() for w in weights]).numpy()
    k = min(num_pruned(flat.size, sparsity), flat.size - 1)
    return float(np.partition(flat, k)[k])


def banded_threshold(magnitudes: list[torch.Tensor], sparsity: float, guess: float, width: float = 0.02,
                     scratch: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> float:
    """The same order statistic as :func:`magnitude_threshold`, given the magnitudes ``|w|`` and a nearby ``guess``.

    Counts the magnitudes below ``guess·(1−width)`` and selects among the few inside the band
    ``[guess·(1−width), guess·(1+width)]``; exact whenever the answer lies in the band, otherwise (a first call, a
    jump) it falls back to the full selection. ``scratch``: two reusable bool tensors per magnitude tensor.
    """
    n = sum(a.numel() for a in magnitudes)
    k = min(num_pruned(n, sparsity), n - 1)
    if guess > 0 and math.isfinite(guess):
        lo, hi = guess * (1 - width), guess * (1 + width)
        if scratch is None:
            scratch = [(torch.empty_like(a, dtype=torch.bool), torch.empty_like(a, dtype=torch.bool))
                       for a in magnitudes]
        below, band = 0, []
        for a, (is_below, in_band) in zip(magnitudes, scratch):
            below += int(torch.count_nonzero(torch.lt(a, lo, out=is_below)))
            torch.le(a, hi, out=in_band).logical_xor_(is_below)  # lo <= a <= hi
            band.append(_gather(a, in_band))
        j = k - below
        band = np.concatenate(band)
        if 0 <= j < band.size:
            return float(np.partition(band, j)[j])
    return magnitude_threshold(magnitudes, sparsity)


def _gather(values: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """``values[mask]`` as a float32 (float64 for float64 values) numpy array. On the CPU through numpy, whose
    index scan over a sparse boolean mask is several times faster than torch's boolean indexing (the band holds well
    under 1 % of the weights)."""
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values[mask].float().cpu().numpy()
    flat = values.detach().reshape(-1).numpy()
    return flat[np.flatnonzero(mask.reshape(-1).numpy())]


def _nonzero_values(flat: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """The nonzero entries of ``flat`` (float32, or float64 for float64), scanned in cache-sized chunks (a third
    faster than one pass over the whole array, whose comparison result no longer fits in the cache)."""
    dtype = np.float64 if flat.dtype == np.float64 else np.float32
    parts = [c[c != 0] for c in (flat[i:i + chunk] for i in range(0, flat.size, chunk))]
    return np.concatenate(parts).astype(dtype, copy=False) if parts else flat[:0].astype(dtype)


def fused_banded_threshold(weights: list[torch.Tensor], sparsity: float, guess: float, band: list[torch.Tensor],
                           width: float = 0.02) -> float:
    """:func:`banded_threshold` straight from the weights: one fused pass per tensor counts the magnitudes below
    the band and copies those inside it into ``band`` (one reusable float CPU tensor per weight, zero elsewhere),
    then only the nonzero band values are gathered and selected among. Exact; falls back to the full selection like
    the eager one."""
    n = sum(w.numel() for w in weights)
    k = min(num_pruned(n, sparsity), n - 1)
    if guess > 0 and math.isfinite(guess):
        dtype = weights[0].dtype
        lo, hi = torch.tensor(guess * (1 - width), dtype=dtype), torch.tensor(guess * (1 + width), dtype=dtype)
        with torch.no_grad():
            counts = _compiled("band")([w.detach() for w in weights], band, lo, hi)
        j = k - int(sum(int(c) for c in counts))
        values = np.concatenate([_nonzero_values(b.detach().reshape(-1).numpy()) for b in band])
        if 0 <= j < values.size:
            return float(np.partition(values, j)[j])
    return magnitude_threshold(weights, sparsity)


class Regularizer:
    """A penalty on all prunable weights of a model. Subclasses implement :meth:`penalty`."""

    name = "regularizer"

    def __init__(self, sparsity: float, threshold_every: int = 1):
        self.sparsity = check_ratio("sparsity", sparsity)
        self.threshold_every = check_positive_int("threshold_every", threshold_every)
        self._calls = 0
        self.threshold = float("nan")

    def weights(self, model: nn.Module) -> list[torch.Tensor]:
        return list(prunable_weights(model).values())

    def __call__(self, model: nn.Module) -> torch.Tensor:
        weights = self.weights(model)
        if self._threshold_due():
            self.threshold = magnitude_threshold(weights, self.sparsity)
        return self.penalty(weights)

    def _threshold_due(self) -> bool:
        """Count one use; True when the threshold is to be recomputed (the first use, then every
        ``threshold_every`` uses)."""
        due = self._calls % self.threshold_every == 0 or math.isnan(self.threshold)
        self._calls += 1
        return due

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def add_gradient(self, model: nn.Module, scale: float = 1.0) -> float:
        """Add ``scale``·∂penalty/∂w to every prunable weight's ``.grad`` (created if missing); return the
        penalty's value. Equivalent to backpropagating ``scale * self(model)``, without an autograd graph."""
        weights = self.weights(model)
        if self._threshold_due():
            self.threshold = magnitude_threshold(weights, self.sparsity)
        value = float(self.penalty([w.detach() for w in weights]))
        for w, g in zip(weights, self.gradient(weights)):
            _accumulate(w, g, scale)
        return value

    def gradient(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The penalty's gradient for each tensor (computed with autograd on detached copies)."""
        leaves = [w.detach().clone().requires_grad_(True) for w in weights]
        with torch.enable_grad():
            grads = torch.autograd.grad(self.penalty(leaves), leaves)
        return list(grads)

    @torch.no_grad()
    def stats(self, model: nn.Module) -> dict[str, float]:
        """Scalars that mean something: the threshold, the share of the L1 mass on the to-be-pruned weights, and
        the mean gradient magnitude on the to-be-pruned versus the kept weights (and their ratio). The to-be-pruned
        weights are the ⌊κn⌋ smallest, as magnitude pruning removes them: the threshold's own weight is kept, and
        of weights tied at the threshold only as many as that count asks for are to be pruned."""
        weights = self.weights(model)
        tau = magnitude_threshold(weights, self.sparsity)
        if math.isnan(self.threshold):
            self.threshold = tau
        grads = self.gradient(weights)
        n = sum(w.numel() for w in weights)
        n_pruned = min(num_pruned(n, self.sparsity), n - 1)
        mass = _split_at_threshold([w.abs() for w in weights], [w.abs() for w in weights], tau, n_pruned)
        grad = _split_at_threshold([w.abs() for w in weights], [g.abs() for g in grads], tau, n_pruned)
        total = mass[0] + mass[1]
        mean_p, mean_k = grad[0] / max(n_pruned, 1), grad[1] / (n - n_pruned)
        return {"threshold": tau, "l1_below_share": mass[0] / max(total, 1e-30), "l1": total,
                "grad_pruned": mean_p, "grad_kept": mean_k, "grad_ratio": mean_p / max(mean_k, 1e-30)}


def _split_at_threshold(magnitudes: list[torch.Tensor], values: list[torch.Tensor], tau: float,
                        n_pruned: int) -> tuple[float, float]:
    """Σ ``values`` over the ``n_pruned`` smallest ``magnitudes`` and over the rest, given the order statistic
    ``tau`` at that position: of the magnitudes equal to ``tau``, ``n_pruned`` minus the count below it are on the
    pruned side (their values are shared out by their mean, so the split does not depend on their order)."""
    below = above = tie_sum = 0.0
    n_below = n_tie = 0
    for a, v in zip(magnitudes, values):
        is_below, is_tie = a < tau, a == tau
        below += float(v[is_below].sum(dtype=torch.float64))
        above += float(v[a > tau].sum(dtype=torch.float64))
        tie_sum += float(v[is_tie].sum(dtype=torch.float64))
        n_below += int(is_below.sum())
        n_tie += int(is_tie.sum())
    tied_pruned = n_pruned - n_below
    tie_mean = tie_sum / max(n_tie, 1)
    return below + tied_pruned * tie_mean, above + (n_tie - tied_pruned) * tie_mean


class HyperSparse(Regularizer):
    """The HyperSparse regularizer (see the module docstring). ``fuse=False`` keeps :meth:`add_gradient` on eager
    passes for any model size."""

    name = "hypersparse"
    fuse = True

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        tau = max(self.threshold, 1e-12)
        s = INFLECTION / tau
        weights = [w.to(_work_dtype(w.dtype)) for w in weights]
        tanh_sums = [torch.tanh(s * w.abs()).sum() for w in weights]
        l1 = sum(w.detach().abs().sum() for w in weights)
        total = sum(tanh_sums)
        # all weights zero: Σ tanh is 0 and so is the gradient (sign(0) = 0), as in the closed form
        return (l1 / total.detach().clamp_min(1e-30)) * total

    @torch.no_grad()
    def add_gradient(self, model: nn.Module, scale: float = 1.0) -> float:
        weights = self.weights(model)
        due = self._threshold_due()
        if (self.fuse and sum(w.numel() for w in weights) >= FUSE_MIN_WEIGHTS and weights[0].device.type == "cpu"
                and all(w.dtype in _WORK_DTYPES for w in weights)):
            try:
                return self._fused_step(weights, scale, due)
            except Exception as exc:  # no compiler here: the eager passes below give the same numbers
                warnings.warn(f"HyperSparse: fused kernels unavailable ({type(exc).__name__}: {exc}); using eager "
                              f"passes", RuntimeWarning, stacklevel=2)
                self.fuse = False
        buffers = self._buffers(weights)
        for w, b in zip(weights, buffers):
            torch.abs(w, out=b) if b.dtype == w.dtype else b.copy_(w).abs_()
        if due:
            self.threshold = banded_threshold(buffers, self.sparsity, self.threshold, scratch=self._masks)
        l1, coef = self._gradient_from_magnitudes(weights, buffers, self._signs)
        for w, b, sign in zip(weights, buffers, self._signs):
            if not w.requires_grad:  # frozen: backpropagating the penalty gives it no gradient either
                continue
            if w.grad is None:
                w.grad = b.mul(sign).mul_(scale * coef).to(w.dtype)
            else:
                w.grad.addcmul_(b, sign, value=scale * coef)
        return l1

    def _fused_step(self, weights: list[torch.Tensor], scale: float, threshold_due: bool) -> float:
        """:meth:`add_gradient` as three fused passes over the weights (threshold band, sums, gradient); no
        magnitude or sign buffers."""
        if threshold_due:
            band, _ = self._reused("_band", weights)
            self.threshold = fused_banded_threshold(weights, self.sparsity, self.threshold, band)
        s = INFLECTION / max(self.threshold, 1e-12)
        two_s = torch.tensor(2 * s, dtype=weights[0].dtype)
        sums = torch.stack(_compiled("sums")(weights, two_s)).double().sum(0)
        l1, tanh_sum = float(sums[0]), 2 * float(sums[1]) - sum(w.numel() for w in weights)
        coef = (l1 / max(tanh_sum, 1e-30)) * s * 4 * scale
        trainable = [w for w in weights if w.requires_grad]
        for w in trainable:
            if w.grad is None:
                w.grad = torch.zeros_like(w)
        _compiled("gradient")(trainable, [w.grad for w in trainable], two_s,
                              torch.tensor(coef, dtype=weights[0].dtype))
        return l1

    @torch.no_grad()
    def gradient(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The closed-form gradient for each tensor (the same numbers as autograd through :meth:`penalty`)."""
        weights = [w.detach() for w in weights]
        buffers = [w.abs().to(_work_dtype(w.dtype)) for w in weights]
        signs = [torch.empty_like(b) for b in buffers]
        _, coef = self._gradient_from_magnitudes(weights, buffers, signs)
        return [b.mul_(sign).mul_(coef).to(w.dtype) for w, b, sign in zip(weights, buffers, signs)]

    def _gradient_from_magnitudes(self, weights, buffers, signs) -> tuple[float, float]:
        """Turn ``buffers`` (holding |w|) in place into u(1 − u) with u = σ(2s|w|) and fill ``signs`` with sign(w)
        (sign(0) = 0, as autograd's |w| has it); return ‖w‖₁ and the factor c that makes c·sign·buffer the
        gradient: tanh(x) = 2σ(2x) − 1 and sech²(x) = 4σ(2x)(1 − σ(2x))."""
        s = INFLECTION / max(self.threshold, 1e-12)
        l1 = sum(float(b.sum()) for b in buffers)
        for b in buffers:
            b.mul_(2 * s).sigmoid_()
        tanh_sum = sum(2 * float(b.sum()) - b.numel() for b in buffers)
        for w, b, sign in zip(weights, buffers, signs):
            b.addcmul_(b, b, value=-1)
            torch.sign(w, out=sign) if sign.dtype == w.dtype else sign.copy_(w).sign_()
        return l1, (l1 / max(tanh_sum, 1e-30)) * s * 4

    def _buffers(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The eager passes' magnitude buffers (with their ``_masks`` and ``_signs``), one per weight."""
        scratch, fresh = self._reused("_scratch", weights)
        if fresh:
            self._masks = [(torch.empty_like(b, dtype=torch.bool), torch.empty_like(b, dtype=torch.bool))
                           for b in scratch]
            self._signs = [torch.empty_like(b) for b in scratch]
        return scratch

    def _reused(self, name: str, weights: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """One scratch tensor like each weight, kept as attribute ``name`` between steps (fresh allocations cost
        more than the arithmetic), and whether it was (re)made now."""
        cached = getattr(self, name, None)
        if cached is not None and len(cached) == len(weights) and all(
                b.shape == w.shape and b.dtype == _work_dtype(w.dtype) and b.device == w.device
                for b, w in zip(cached, weights)):
            return cached, False
        cached = [torch.empty_like(w, dtype=_work_dtype(w.dtype), memory_format=torch.contiguous_format)
                  for w in weights]
        setattr(self, name, cached)
        return cached, True


def _accumulate(weight: torch.Tensor, grad: torch.Tensor, scale: float) -> None:
    if not weight.requires_grad:  # frozen: backpropagating the penalty gives it no gradient either
        return
    if weight.grad is None:
        weight.grad = grad.mul(scale)
    else:
        weight.grad.add_(grad, alpha=scale)


class L1(Regularizer):
    """Σ|w| over all prunable weights."""

    name = "l1"

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return sum(w.abs().sum() for w in weights)

    @torch.no_grad()
    def add_gradient(self, model: nn.Module, scale: float = 1.0) -> float:
        weights = self.weights(model)
        self._calls += 1
        for w in weights:
            _accumulate(w, w.sign(), scale)
        return float(sum(w.abs().sum(dtype=torch.float64) for w in weights))


class L2(Regularizer):
    """Σw² over all prunable weights."""

    name = "l2"

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return sum(w.pow(2).sum() for w in weights)

    @torch.no_grad()
    def add_gradient(self, model: nn.Module, scale: float = 1.0) -> float:
        weights = self.weights(model)
        self._calls += 1
        for w in weights:
            _accumulate(w, w, 2 * scale)
        return float(sum(w.pow(2).sum(dtype=torch.float64) for w in weights))


REGULARIZERS = {"hypersparse": HyperSparse, "l1": L1, "l2": L2}


def make_regularizer(name: str | Regularizer, sparsity: float, **options) -> Regularizer:
    """A regularizer by name (``hypersparse``, ``l1``, ``l2``) or the instance given."""
    if isinstance(name, type) and issubclass(name, Regularizer):
        raise ConfigError(f"regularizer must be a name or a Regularizer instance, got the class {name.__name__}: "
                          f"pass {name.__name__}({sparsity}) or its name")
    if not isinstance(name, (str, Regularizer)):
        raise ConfigError(f"regularizer must be one of {', '.join(map(repr, REGULARIZERS))} or a Regularizer "
                          f"instance, got {name!r} ({type(name).__name__})")
    if isinstance(name, Regularizer):
        # the instance's own settings decide its threshold: they must be the ones the caller states
        if name.sparsity != sparsity:
            raise ConfigError(f"the {name.name} regularizer given was built for sparsity {name.sparsity}, but "
                              f"it is used at sparsity {sparsity}: build it with the same sparsity, or pass "
                              f"its name ({name.name!r})")
        every = options.get("threshold_every", name.threshold_every)
        if every != name.threshold_every:
            raise ConfigError(f"the {name.name} regularizer given recomputes its threshold every "
                              f"{name.threshold_every} steps, but threshold_every={every} was asked: set it on "
                              f"the regularizer, or pass its name ({name.name!r})")
        return name
    if name not in REGULARIZERS:
        raise unknown_name("regularizer", name, REGULARIZERS)
    return REGULARIZERS[name](sparsity, **options)

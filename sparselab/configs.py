"""Typed, documented options of the pruners: what a run is configured by, and the JSON-able record that its
History and checkpoint keep.

Each field carries its documentation and its allowed values (``metadata``): the dataclass checks them when it is
made, and the command line derives its flags from the same fields (:func:`flag_fields`), so a bound or a help text
is written once. The module does not import torch, so ``sparselab --help`` stays quick.

- :class:`BenefitConfig`: P3B's block-benefit allocation (probes, scale, per-parameter normalisation, momentum,
  class weight);
- :class:`P3BConfig`: P3B's allocation, criterion and ablations, with its :class:`BenefitConfig`;
- :class:`ARTConfig`: ART's λ schedule, warm-up, stop criterion and candidate rule.

Example:
    >>> BenefitConfig(momentum=0.5).momentum
    0.5
    >>> from_options(BenefitConfig, {"momentun": 0.5}, "probe option")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sparselab.errors.UnknownNameError: unknown probe option 'momentun'. Did you mean 'momentum'? ...
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, TypeVar

from .errors import ConfigError, check_finite, unknown_name

T = TypeVar("T")

PATCH_PROBES = ("conv2", "conv1", "linear")
PER_PARAMETER = ("remaining", "dense")
#: what one ``attn_qkv`` gate element is: one dimension of every head (``dim``, the reference) or one whole head
#: (``head``, head pruning: an extension the compact model turns into fewer heads)
QKV_UNITS = ("dim", "head")
CANDIDATE_RULES = ("reference", "best_mean")


def option(default: Any, help: str, *, low: float | None = None, low_open: bool = False, high: float | None = None,
           high_open: bool = False, choices: tuple | None = None, integer: bool = False, optional: bool = False,
           odd: bool = False, flag: bool = False, label: str | None = None, check: bool = True) -> Any:
    """A dataclass field with its documentation and allowed values: ``low``/``high`` bounds (``*_open``: the bound
    itself is excluded), ``choices``, ``integer``, ``optional`` (None allowed), ``odd``; ``flag``: the command
    line offers it; ``label``: how error messages name it (default: the field's name); ``check=False``: the
    value is checked where it is used (a registered name, a profile whose length depends on the model)."""
    rule = dict(help=help, low=low, low_open=low_open, high=high, high_open=high_open, choices=choices,
                integer=integer, optional=optional, odd=odd, flag=flag, label=label, check=check)
    return field(default=default, metadata=rule)


def allowed(f: dataclasses.Field) -> str:
    """The allowed values of a field in words, e.g. ``a number in (0, 1]`` or ``one of remaining, dense``."""
    m = f.metadata
    if m.get("choices") is not None:
        text = "one of " + ", ".join(str(c) for c in m["choices"])
    else:
        kind = "an odd integer" if m["odd"] else "an integer" if m["integer"] else "a number"
        low, high = m["low"], m["high"]
        if low is not None and high is not None:
            text = f"{kind} in {'(' if m['low_open'] else '['}{low:g}, {high:g}{')' if m['high_open'] else ']'}"
        elif low is not None:
            text = f"{kind} {'>' if m['low_open'] else '>='} {low:g}"
        elif high is not None:
            text = f"{kind} {'<' if m['high_open'] else '<='} {high:g}"
        else:
            text = kind
    return text + (" or None" if m["optional"] else "")


def check_field(f: dataclasses.Field, value: Any) -> Any:
    """``value`` if it is allowed for field ``f``, else a :class:`ConfigError` naming the field and what is
    allowed."""
    m = f.metadata
    name = m["label"] or f.name
    if (value is None and m["optional"]) or not m["check"]:
        return value
    if m["choices"] is not None:
        names = [c for c in m["choices"] if isinstance(c, str)]
        if isinstance(value, str) and value not in m["choices"] and names:
            raise unknown_name(name, value, names)
        if value not in m["choices"] or isinstance(value, bool) != isinstance(m["choices"][0], bool):
            raise ConfigError(f"{name} must be {allowed(f)}, got {value!r}")
        return value
    if m["integer"] and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be {allowed(f)}, got {value!r}")
    v = check_finite(name, value)
    low, high = m["low"], m["high"]
    if ((low is not None and (v < low or (v == low and m["low_open"])))
            or (high is not None and (v > high or (v == high and m["high_open"]))) or (m["odd"] and v % 2 == 0)):
        raise ConfigError(f"{name} must be {allowed(f)}, got {value!r}")
    return value


class _Checked:
    """Checks every field with a rule when the dataclass is made."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if "help" in f.metadata:
                check_field(f, getattr(self, f.name))

    def record(self) -> dict[str, Any]:
        """The JSON-able record (field name → value) that Histories and checkpoints keep."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BenefitConfig(_Checked):
    """Options of P3B's block-benefit allocation (METHODS §1.3–1.4) and of its probes.

    Example:
        >>> BenefitConfig(probe_every=8, probe_fraction=0.25).record()["probe_every"]
        8
    """

    patch_probe: str | None = option("conv2", "patch probe: conv2 (reference), conv1, linear, or None for the "
                                     "class-token probe only", choices=PATCH_PROBES, optional=True, flag=True,
                                     label="patch probe")
    benefit_scale: float = option(10.0, "T in z = T·ΔΨ/max ΔΨ and in the soft clip", low=0, low_open=True,
                                  flag=True)
    per_parameter: str = option("remaining", "divide the benefit by the remaining (reference) or the dense "
                                "parameter count of each block", choices=PER_PARAMETER, flag=True)
    momentum: float = option(0.2, "γ of the importance momentum across updates", low=0, low_open=True, high=1,
                             flag=True)
    class_weight: float = option(0.5, "α, the class-token share of the class/patch mix", low=0, high=1, flag=True)
    probe_every: int = option(1, "run the patch probes on every k-th step only", low=1, integer=True, flag=True)
    probe_fraction: float = option(1.0, "run the patch probes on this share of each batch", low=0, low_open=True,
                                   high=1, flag=True)
    probe_lr: float | None = option(None, "the probes' learning rate (None: the model's)", low=0, low_open=True,
                                    optional=True, flag=True)
    probe_weight_decay: float = option(0.0, "the probes' weight decay on conv/linear weights", low=0, flag=True)


@dataclass(frozen=True)
class P3BConfig(_Checked):
    """Options of P3B besides its prune ratio and schedule (``sl.P3B(model, ratio, schedule, **options)`` or
    :meth:`sparselab.P3B.from_config`). :meth:`record` is the flat JSON-able dict that P3B's History and
    checkpoint hold (with the prune ratio and schedule).

    Example:
        >>> P3BConfig(allocation="uniform", reactivation=False).record()["reactivation"]
        False
    """

    allocation: str = option("benefit", "between-block allocation: a name registered with register_allocation",
                             check=False)
    criterion: str = option("taylor", "within-block criterion: a name registered with register_criterion",
                            check=False)
    keep_ratios: tuple[float, ...] | None = option(None, "keep-ratio profile of allocation='fixed' (2·depth)",
                                                   check=False)
    gate_factors: Mapping[str, float] | None = option(None, "per-gate multipliers of the rank-normalised scores "
                                                      "(None: the method's)", check=False)
    blocks_only: bool = option(False, "let the prune ratio refer to the blocks' parameters only",
                               choices=(True, False))
    reactivation: bool = option(True, "False: an element once pruned stays pruned (an ablation)",
                                choices=(True, False))
    freeze_allocation_after: int | None = option(None, "keep the allocation of this many first updates (an "
                                                 "ablation; None: re-allocate at every update)", low=1,
                                                 integer=True, optional=True)
    qkv_unit: str = option("dim", "what one attn_qkv gate element removes: one dimension of every head (the "
                           "reference) or one whole head (head pruning, an extension)", choices=QKV_UNITS)
    benefit: BenefitConfig = field(default_factory=BenefitConfig)

    def record(self) -> dict[str, Any]:
        benefit = self.benefit.record()
        if self.allocation != "benefit":
            benefit["patch_probe"] = None  # no probes run
        return {"allocation": self.allocation, "criterion": self.criterion,
                "keep_ratios": list(map(float, self.keep_ratios)) if self.keep_ratios is not None else None,
                **benefit, "gate_factors": dict(self.gate_factors) if self.gate_factors is not None else None,
                "blocks_only": self.blocks_only, "reactivation": self.reactivation,
                "freeze_allocation_after": self.freeze_allocation_after,
                # the reference unit is left out, so that records and checkpoints of earlier runs still match
                **({"qkv_unit": self.qkv_unit} if self.qkv_unit != "dim" else {})}


@dataclass(frozen=True)
class ARTConfig(_Checked):
    """Options of ART (METHODS §2): the λ schedule λ_e = λ_init·η^e, the dense warm-up, the window of the stop
    criterion, the epoch limit and how the candidate is chosen.

    Example:
        >>> ARTConfig(eta=1.1).record()["eta"]
        1.1
    """

    lam_init: float = option(5e-6, "λ_init, the regularizer's initial weight", low=0, low_open=True, flag=True)
    eta: float = option(1.05, "η, λ's growth factor per ART epoch", low=1, flag=True)
    warmup_epochs: int = option(60, "dense epochs before ART starts", low=0, integer=True, flag=True)
    window: int = option(3, "epochs in the stop criterion's window (its middle model is the candidate)", low=1,
                         integer=True, odd=True)
    max_art_epochs: int = option(200, "ART epochs at most (ART stops itself earlier when it converges)", low=1,
                                 integer=True, flag=True)
    train_eval_limit: int | None = option(None, "training images the pruned copy is evaluated on (None: all)",
                                          low=1, integer=True, optional=True)
    candidate_rule: str = option("reference", "how the candidate is chosen", choices=CANDIDATE_RULES)
    train_eval_augment: bool = option(True, "evaluate the pruned copy on augmented training images",
                                      choices=(True, False))
    threshold_every: int = option(1, "recompute the exact magnitude threshold every this many steps", low=1,
                                  integer=True)


def from_options(cls: type[T], options: Mapping[str, Any], kind: str, base: T | None = None) -> T:
    """``cls`` made from ``options`` (on top of ``base``), naming an unknown option with its close matches.

    Example:
        >>> from_options(BenefitConfig, {"probe_every": 4}, "probe option").probe_every
        4
    """
    names = {f.name for f in dataclasses.fields(cls)}
    for key in options:
        if key not in names:
            raise unknown_name(kind, key, sorted(names))
    return dataclasses.replace(base, **options) if base is not None else cls(**options)


def flag_fields(cls: type) -> Iterator[dataclasses.Field]:
    """The fields of ``cls`` that the command line offers as ``--name-with-dashes`` flags."""
    return (f for f in dataclasses.fields(cls) if f.metadata.get("flag"))

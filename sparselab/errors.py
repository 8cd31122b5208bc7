"""Errors that say what was wrong and what is allowed.

Example:
    >>> from sparselab.errors import unknown_name
    >>> str(unknown_name("dataset", "fashon_mnist", ["fashion_mnist", "digits"]))
    "unknown dataset 'fashon_mnist'. Did you mean 'fashion_mnist'? Available: digits, fashion_mnist"
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Iterable


class SparselabError(Exception):
    """Base class of sparselab's own errors."""


class UnknownNameError(SparselabError, KeyError):
    """A dataset, model or method name that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataNotFoundError(SparselabError, FileNotFoundError):
    """A dataset that is neither on disk nor downloadable here."""


class CheckpointError(SparselabError, ValueError):
    """A checkpoint that is empty, unreadable or does not fit the model."""


class ConfigError(SparselabError, ValueError):
    """A parameter outside its allowed range or inconsistent with another."""


class DivergedError(SparselabError, FloatingPointError):
    """Training produced non-finite values (NaN or inf)."""


def unknown_name(kind: str, name: str, choices: Iterable[str], extra: str = "",
                 listed: Iterable[str] | None = None) -> UnknownNameError:
    """Build an error for an unknown ``name`` of ``kind`` with close matches among ``choices``; the message lists
    ``listed`` (default: all ``choices``)."""
    choices = sorted(set(choices))
    preferred = sorted(set(listed)) if listed is not None else choices
    close = difflib.get_close_matches(name, preferred, n=3, cutoff=0.6)
    close += [c for c in difflib.get_close_matches(name, choices, n=3, cutoff=0.6) if c not in close]
    close = close[:3]
    choices = preferred
    msg = f"unknown {kind} {name!r}."
    if close:
        msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = choices if len(choices) <= 25 else choices[:25] + [f"... ({len(choices) - 25} more)"]
    msg += " Available: " + ", ".join(shown)
    if extra:
        msg += ". " + extra
    return UnknownNameError(msg)


def check_finite(name: str, value: float, *, low: float | None = None, low_inclusive: bool = True,
                 high: float | None = None) -> float:
    """Validate a finite number (NaN and ±inf are refused) within optional bounds and return it as float.

    Example:
        >>> check_finite("lr", 5e-4, low=0, low_inclusive=False)
        0.0005
    """
    if isinstance(value, (str, bytes)):  # float("1e-3") would pass, and the string would be kept by the caller
        raise ConfigError(f"{name} must be a number, got the string {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        raise ConfigError(f"{name} must be {'>=' if low_inclusive else '>'} {low:g}, got {value!r}")
    if high is not None and v > high:
        raise ConfigError(f"{name} must be <= {high:g}, got {value!r}")
    return v


def check_ratio(name: str, value: float, *, allow_zero: bool = True) -> float:
    """Validate a ratio in [0, 1) (or (0, 1) when ``allow_zero`` is False) and return it as float.

    Example:
        >>> check_ratio("prune_ratio", 0.5)
        0.5
    """
    if isinstance(value, (str, bytes, bool)):  # float("0.5") would pass, and the caller may keep the string
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}") from None
    lo_ok = v >= 0 if allow_zero else v > 0
    if not (lo_ok and v < 1):
        allowed = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must lie in {allowed}, got {value!r}")
    return v


def check_bool(name: str, value: bool, *, optional: bool = False) -> bool | None:
    """Validate a flag: ``True`` or ``False`` (or None where ``optional``). Strings such as ``"False"`` are
    refused rather than read by truthiness, which would turn them on.

    Example:
        >>> check_bool("reactivation", False)
        False
        >>> check_bool("reactivation", "False")
        Traceback (most recent call last):
        ...
        sparselab.errors.ConfigError: reactivation must be True or False, got 'False'
    """
    if value is None and optional:
        return None
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):
        value = bool(value)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False{' or None' if optional else ''}, got {value!r}")
    return value


def check_seed(name: str, value: int) -> int:
    """Validate a seed: a Python integer in [0, 2**32) (what every generator of the project accepts).

    Example:
        >>> check_seed("seed", 7)
        7
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 32:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {value!r}")
    return value


def check_distinct_seeds(seeds: Iterable[int], unit: str) -> list[int]:
    """``seeds`` as a list, refused when a seed is given more than once (``unit``: what each seed counts as, for
    the message).

    Example:
        >>> check_distinct_seeds((0, 1), "one pair")
        [0, 1]
    """
    seeds = list(seeds)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds {repeated} are given more than once; each seed is {unit}, so give distinct seeds")
    return seeds


def check_positive_int(name: str, value: int, *, allow_zero: bool = False) -> int:
    """Validate a positive (or non-negative) integer (a numpy integer too; returned as a Python int, bool refused).

    Example:
        >>> import numpy as np
        >>> check_positive_int("epochs", np.int64(3))
        3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)

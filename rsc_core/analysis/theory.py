"""Closed-form predictions of the study's linear model (PROTOCOL.md section 6, "Theory").

A linear model sees an invariant feature of mean magnitude ``x_inv`` and variance ``s_inv`` and a
spurious feature of magnitude ``x_sp`` (``x_sp2`` = x_sp squared) and variance ``s_sp``; the
spurious feature is present in a fraction ``g`` of the training data, and ``ridge`` is the ridge
(L2) parameter L. With h = g/2 and Phi the standard normal CDF::

    t    = ((g(1-g)/2 * x_sp^2 + s_sp + L) / (s_inv + L)) * x_inv^2
    top  = t + h^2 x_sp^2
    top1 = t - h^2 x_sp^2
    top2 = t + h(h - 1) x_sp^2
    down = sqrt(t^2 s_inv + h^2 x_sp^4 s_sp)
    clean test accuracy    = Phi(top/down)/2 + Phi(top1/down)/2
    spurious test accuracy = Phi(top2/down)
    spurious score = h (s_inv+L) x_sp^2 / [ (s_inv+L)(s_sp+L)
                     + (s_sp+L + h(1-h)(s_inv+L) + h(1-g) x_sp^2) x_sp^2 ]

The formulas are implemented exactly as the protocol states them (see docs/theory.md for notes).

Input noise of variance v adds to both feature variances: the variances used above are the
*effective* ones, ``s_inv = params.s_inv + v`` and ``s_sp = params.s_sp + v``, where
``params.s_inv`` / ``params.s_sp`` are the noise-free base variances (0.5 and 0.1 in the study)
and v is ``params.noise_var``.

Every function takes ``g`` as a scalar or array in [0, 1] and returns a float64 ``numpy.ndarray``
of the same shape (0-d for a scalar; ``float(...)`` turns it into a Python float). The study's
curves use g in [0, 0.5]; :func:`study_curves` builds them as JSON-ready plain data.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.stats import norm

from rsc_core.errors import ConfigError

__all__ = [
    "TheoryParams", "spurious_score", "clean_accuracy", "spurious_accuracy",
    "Curve", "StudyCurves", "study_curves",
    "STUDY_RIDGES", "STUDY_NOISES", "STUDY_G_MAX", "STUDY_POINTS",
]

#: The study's curve families: ridge parameters (at v = 0) and noise variances (at L = 0).
STUDY_RIDGES: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0)
STUDY_NOISES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
STUDY_G_MAX = 0.5
STUDY_POINTS = 101
#: Upper bound on grid points, so a typo cannot ask for gigabytes.
MAX_POINTS = 1_000_000


def _check_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    return value


def _check_nonneg(name: str, value: float) -> float:
    value = _check_finite(name, value)
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


@dataclass(frozen=True)
class TheoryParams:
    """Parameters of the linear model; defaults are the study's.

    ``s_inv`` and ``s_sp`` are the noise-free (base) variances; input noise of variance
    ``noise_var`` adds to both, giving :attr:`s_inv_eff` and :attr:`s_sp_eff`, which are what the
    formulas use. Invalid values raise :class:`~rsc_core.errors.ConfigError` on construction.
    """

    x_inv: float = 1.0      # mean magnitude of the invariant feature (> 0)
    x_sp2: float = 5.0      # squared magnitude of the spurious feature, x_sp^2 (>= 0)
    s_inv: float = 0.5      # base variance of the invariant feature (>= 0)
    s_sp: float = 0.1       # base variance of the spurious feature (>= 0)
    ridge: float = 0.0      # ridge parameter L (>= 0)
    noise_var: float = 0.0  # input-noise variance v (>= 0), added to both variances

    def __post_init__(self) -> None:
        x_inv = _check_finite("x_inv", self.x_inv)
        if x_inv <= 0:
            raise ConfigError(f"x_inv must be > 0, got {x_inv}")
        values = {"x_inv": x_inv}
        for name in ("x_sp2", "s_inv", "s_sp", "ridge", "noise_var"):
            values[name] = _check_nonneg(name, getattr(self, name))
        for name, value in values.items():  # store plain floats (JSON-friendly, hashable)
            object.__setattr__(self, name, value)
        for name in ("s_inv", "s_sp"):
            if values[name] + values["noise_var"] <= 0:
                raise ConfigError(
                    f"effective {name} = {name} + noise_var must be > 0, got "
                    f"{values[name]} + {values['noise_var']}")

    @property
    def s_inv_eff(self) -> float:
        """Invariant-feature variance with input noise: ``s_inv + noise_var``."""
        return self.s_inv + self.noise_var

    @property
    def s_sp_eff(self) -> float:
        """Spurious-feature variance with input noise: ``s_sp + noise_var``."""
        return self.s_sp + self.noise_var

    def replace(self, **changes: float) -> "TheoryParams":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


_DEFAULT = TheoryParams()


def _as_g(g: Any) -> np.ndarray:
    try:
        arr = np.asarray(g, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"g must be a number or an array of numbers, got {g!r}") from None
    if arr.size and not np.all(np.isfinite(arr)):
        raise ConfigError("g must be finite (no NaN or inf)")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ConfigError(
            f"g must lie in [0, 1], got values from {arr.min():g} to {arr.max():g}")
    return arr


def _params(params: TheoryParams | None) -> TheoryParams:
    if params is None:
        return _DEFAULT
    if not isinstance(params, TheoryParams):
        raise ConfigError(f"params must be a TheoryParams, got {type(params).__name__}")
    return params


def spurious_score(g: Any, params: TheoryParams | None = None) -> np.ndarray:
    """The predicted spurious score at spurious fraction(s) ``g``; exactly 0 at g = 0.

    The denominator is >= (s_inv+L)(s_sp+L) > 0 for every valid ``params``, so no division by
    zero can occur.
    """
    g, p = _as_g(g), _params(params)
    h = g / 2.0
    a, b, x2 = p.s_inv_eff + p.ridge, p.s_sp_eff + p.ridge, p.x_sp2
    num = h * a * x2
    den = a * b + (b + h * (1.0 - h) * a + h * (1.0 - g) * x2) * x2
    return num / den


def _terms(g: np.ndarray, p: TheoryParams) -> tuple[np.ndarray, ...]:
    """(top, top1, top2, down) of the protocol. ``down`` > 0 always: t > 0 because x_inv > 0,
    s_sp_eff > 0 and g(1-g) >= 0 on [0, 1], and s_inv_eff > 0."""
    h = g / 2.0
    s_inv, s_sp, L, x2 = p.s_inv_eff, p.s_sp_eff, p.ridge, p.x_sp2
    t = ((g * (1.0 - g) / 2.0 * x2 + s_sp + L) / (s_inv + L)) * p.x_inv ** 2
    top = t + h ** 2 * x2
    top1 = t - h ** 2 * x2
    top2 = t + h * (h - 1.0) * x2
    down = np.sqrt(t ** 2 * s_inv + h ** 2 * x2 ** 2 * s_sp)
    return top, top1, top2, down


def clean_accuracy(g: Any, params: TheoryParams | None = None) -> np.ndarray:
    """Predicted accuracy on clean test data: Phi(top/down)/2 + Phi(top1/down)/2."""
    g, p = _as_g(g), _params(params)
    top, top1, _, down = _terms(g, p)
    return np.asarray(norm.cdf(top / down) / 2.0 + norm.cdf(top1 / down) / 2.0, dtype=np.float64)


def spurious_accuracy(g: Any, params: TheoryParams | None = None) -> np.ndarray:
    """Predicted accuracy on spurious test data (pattern added to the other class):
    Phi(top2/down)."""
    g, p = _as_g(g), _params(params)
    _, _, top2, down = _terms(g, p)
    return np.asarray(norm.cdf(top2 / down), dtype=np.float64)


@dataclass(frozen=True)
class Curve:
    """One curve of a family: the three predictions over the shared g grid."""

    label: str
    ridge: float
    noise_var: float
    spurious_score: list[float]
    clean_accuracy: list[float]
    spurious_accuracy: list[float]


@dataclass(frozen=True)
class StudyCurves:
    """The study's two curve families over one g grid.

    ``families["ridge"]``: one curve per ridge value L, at noise_var = 0.
    ``families["noise"]``: one curve per noise variance v, at ridge = 0.
    ``params``: the base parameters (x_inv, x_sp2, s_inv, s_sp) shared by all curves.
    """

    g: list[float]
    params: dict[str, float]
    families: dict[str, list[Curve]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and floats: ``json.dumps(curves.to_dict())`` works."""
        return asdict(self)


def _values(name: str, values: Iterable[float]) -> list[float]:
    out: list[float] = []
    for value in values:
        value = _check_nonneg(name, value)
        if value not in out:  # keep first occurrence, drop repeats
            out.append(value)
    return out


def _curve(label: str, g: np.ndarray, p: TheoryParams) -> Curve:
    return Curve(label=label, ridge=p.ridge, noise_var=p.noise_var,
                 spurious_score=spurious_score(g, p).tolist(),
                 clean_accuracy=clean_accuracy(g, p).tolist(),
                 spurious_accuracy=spurious_accuracy(g, p).tolist())


def study_curves(ridges: Sequence[float] = STUDY_RIDGES,
                 noises: Sequence[float] = STUDY_NOISES,
                 g_max: float = STUDY_G_MAX,
                 points: int = STUDY_POINTS,
                 params: TheoryParams | None = None) -> StudyCurves:
    """The study's curve families on ``points`` evenly spaced g in [0, g_max].

    ``ridges`` gives the ridge family (each at noise_var = 0) and ``noises`` the noise family
    (each at ridge = 0); either may be empty, not both. Repeated values are dropped. ``params``
    supplies x_inv, x_sp2, s_inv and s_sp; its ``ridge`` and ``noise_var`` are ignored.
    """
    base = _params(params)
    g_max = _check_finite("g_max", g_max)
    if not 0 < g_max <= 1:
        raise ConfigError(f"g_max must be in (0, 1], got {g_max}")
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)):
        raise ConfigError(f"points must be an integer, got {points!r}")
    if not 2 <= points <= MAX_POINTS:
        raise ConfigError(f"points must be between 2 and {MAX_POINTS}, got {points}")
    ridge_values = _values("ridge", ridges)
    noise_values = _values("noise variance", noises)
    if not ridge_values and not noise_values:
        raise ConfigError("give at least one ridge value or noise variance")
    base = base.replace(ridge=0.0, noise_var=0.0)
    g = np.linspace(0.0, g_max, int(points))
    ridge_curves = [_curve(f"L = {L:g}", g, base.replace(ridge=L)) for L in ridge_values]
    noise_curves = [_curve(f"v = {v:g}", g, base.replace(noise_var=v)) for v in noise_values]
    shared = {k: v for k, v in base.to_dict().items() if k not in ("ridge", "noise_var")}
    return StudyCurves(g=g.tolist(), params=shared,
                       families={"ridge": ridge_curves, "noise": noise_curves})

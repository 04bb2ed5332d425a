"""The membership-inference attack interface (PROTOCOL.md section 8): how far does a model reveal
which examples it was trained on.

An attack never trains anything itself. It declares which shadow models it needs
(``shadow_design`` and ``num_shadows``); rsc trains them as ordinary runs (reusing what exists),
observes every model on the examples the design names, and hands the attack those observations:

* ``SHADOW_POOL`` (the study's attack, LOSS): ONE shadow model trained on the shadow pool's
  members, observed on the shadow pool (its members and non-members, disjoint from the target's
  data). ``shadows`` is a one-element list.
* ``TARGET_HALVES`` (online LiRA): ``num_shadows`` models, each trained on a random half of
  the target's own pool (planted images included), observed on the target's examples.
* ``CLEAN_HALVES`` (offline LiRA, RMIA): ``num_shadows`` models, each trained on a random
  half of the target pool WITHOUT planted images (the same shadows for every n), observed on
  the target's examples (the planted images as the target saw them).

The target's examples are its pool (members, then non-members) followed by the control
images: the planted pattern drawn on images of the target class that no model trained on.
An attack cannot tell them apart and scores them exactly as it scores the pool; rsc computes
the metrics over the pool and reports the control as its own slice. An attack with
``needs_population`` also gets a ``Population`` (RMIA's z: shadow-pool images that neither
the target nor any clean-halves shadow trained on).

``attack`` returns a score per target example (higher: more likely a member) and the attack's
own member/non-member decision, from which rsc computes the metrics
(``rsc_core.membership_metrics``). Options come by name (``option_defaults``), from the
command line's ``--attack NAME:key=value,...``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from rsc_core.errors import ConfigError
from rsc_core.named_options import convert_option, format_named_options

SHADOW_POOL = "shadow-pool"
TARGET_HALVES = "target-halves"
CLEAN_HALVES = "clean-halves"
SHADOW_DESIGNS = (SHADOW_POOL, TARGET_HALVES, CLEAN_HALVES)
DEFAULT_SHADOWS = 16


@dataclass(frozen=True)
class Observations:
    """One model seen on a list of examples: its logits, the true labels, and which examples
    the model trained on (known for shadows; for the target, the ground truth the metrics
    use, which an attack must not read)."""

    logits: np.ndarray  # N x C, float
    labels: np.ndarray  # N, int
    member: np.ndarray  # N, bool

    def __post_init__(self) -> None:
        logits = np.asarray(self.logits, dtype=np.float64)
        labels = np.asarray(self.labels, dtype=np.int64)
        member = np.asarray(self.member, dtype=bool)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],) or member.shape != labels.shape:
            raise ConfigError(f"observations need N x C logits with N labels and N membership "
                              f"flags, got {logits.shape}, {labels.shape}, {member.shape}")
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "member", member)

    def __len__(self) -> int:
        return int(self.labels.size)

    def logit_confidence(self) -> np.ndarray:
        """phi = log(p_y / (1 - p_y)) = z_y - logsumexp of the other logits, per example, in
        float64 from the logits: exact where p_y is within 1e-16 of 1 (a probability would
        round to 1 there, and its log-odds to infinity or to ties)."""
        from scipy.special import logsumexp  # here: scipy.special slows every plugin load

        rows = np.arange(len(self))
        others = self.logits.copy()
        others[rows, self.labels] = -np.inf
        return self.logits[rows, self.labels] - logsumexp(others, axis=1)

    def losses(self) -> np.ndarray:
        """Per-example cross-entropy, -log p_y = log(1 + exp(-phi)), from the log-odds: a
        confidently right example keeps its tiny loss (e.g. 4e-18) instead of rounding to
        exactly 0, where ties would make low-FPR thresholds meaningless."""
        return np.logaddexp(0.0, -self.logit_confidence())

    def correct(self) -> np.ndarray:
        return self.logits.argmax(axis=1) == self.labels


@dataclass(frozen=True)
class Population:
    """Population data for attacks that compare an example with others (RMIA's z): examples
    that no model trained on and that the attacker knows to be nobody's members, observed
    by the target and by each shadow model."""

    target: Observations
    shadows: Sequence[Observations]


@dataclass(frozen=True)
class AttackOutput:
    """Scores (higher: more likely a member), decisions, and what the attack chose (e.g. a
    threshold or a regularisation constant), for metrics.json."""

    scores: np.ndarray
    decisions: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """A membership-inference attack. Created with ``shadows`` (the number of shadow models,
    for the designs that train several; ignored by ``SHADOW_POOL`` attacks) and the options
    of ``option_defaults`` by name (``--attack NAME:key=value,...`` on the command line)."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    shadow_design: ClassVar[str] = SHADOW_POOL
    #: The fewest shadow models the attack can work with (designs with several shadows).
    min_shadows: ClassVar[int] = 1
    #: Every option the attack takes, with its default.
    option_defaults: ClassVar[dict[str, Any]] = {}
    #: Whether ``attack`` takes a ``population`` (examples known to be nobody's members).
    needs_population: ClassVar[bool] = False

    def __init__(self, shadows: int = DEFAULT_SHADOWS, **options: Any) -> None:
        if self.shadow_design not in SHADOW_DESIGNS:
            raise ConfigError(f"attack {self.name} has unknown shadow design "
                              f"{self.shadow_design!r}; use one of {', '.join(SHADOW_DESIGNS)}")
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            known = ", ".join(self.option_defaults) or "none"
            raise ConfigError(f"attack {self.name} has no option {unknown[0]!r}; its options: "
                              f"{known}")
        self.given = dict(options)
        self.options = {**self.option_defaults, **{
            key: value if self.option_defaults[key] is None else convert_option(
                key, value, type(self.option_defaults[key]), f"attack {self.name}")
            for key, value in options.items()}}
        self.shadows = shadows
        if self.shadow_design != SHADOW_POOL:
            check_shadow_count(self.label, shadows, self.fewest_shadows())

    def fewest_shadows(self) -> int:
        """The fewest shadow models these options can work with (``min_shadows`` unless an
        option needs more)."""
        return self.min_shadows

    @property
    def label(self) -> str:
        """The name, with the options given explicitly: the attack's key in results."""
        return format_named_options(self.name, self.given)

    @property
    def num_shadows(self) -> int:
        return 1 if self.shadow_design == SHADOW_POOL else self.shadows

    @abstractmethod
    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        """Score the target's examples (``target.member`` is NOT to be read) from the
        shadows' observations, as the attack's ``shadow_design`` describes them. An attack
        with ``needs_population`` is called with a third argument, ``population``. A score
        may be NaN only for an example the attack cannot score by design (e.g. online LiRA
        on an example no shadow trained on); rsc then reports that slice as unscored."""


def check_shadow_count(name: str, shadows: Any, minimum: int) -> int:
    """Shadows come in complementary pairs (every example in exactly half of them)."""
    if isinstance(shadows, bool) or not isinstance(shadows, int):
        raise ConfigError(f"the number of shadow models must be a whole number, got "
                          f"{shadows!r}")
    if shadows < minimum or shadows % 2:
        raise ConfigError(f"{name} needs an even number of shadow models, at least {minimum}, "
                          f"got {shadows}; use e.g. --shadows {max(minimum, 16)}")
    return shadows

"""When runs are seeds of one experiment: the one rule that ``rsc compare``, ``rsc report`` and
the results index (its ``recipe_id``) all apply, written once here.

Two runs pool as seeds only when everything but their seeds is the same: the dataset spec
(without its seed, n and name; n is what a comparison groups by), the training recipe without
its seed (regularisers, precision, trainer, Adam kernel... every field ``config.json`` records),
the training subset, and the removal (method, options, forget set, and what the removal
started from). Everything else is refused with one line naming the field that differs.

The training subset is compared by WHAT it removes relative to the spec, not by its size:
``--exclude spurious`` removes other indices for every dataset seed, so it is identified as
``spurious``, while an explicit list (``--exclude 1,2,3``) or a kept-rows set (an ``rsc mia``
target or shadow) is identified by its rows (``minus3-<digest>``, ``keep14745-<digest>``).
A removal's forget set is ``spurious`` when it is exactly the planted rows its source trained
on, and its rows otherwise; the removal also carries its source's subset and removal, so a
removal of an ``--exclude spurious`` run never pools with one of a plain run."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from rsc_core.data.subsets import TrainSubset

#: The spec fields that vary between seeds of one experiment (n is a comparison's grouping).
SEED_SPEC_FIELDS = ("seed", "n", "name")
SPURIOUS = "spurious"


def planted_count(spec: Mapping[str, Any]) -> int:
    """How many training rows the spec plants its pattern on (n per target class)."""
    return int(spec.get("n") or 0) * len(spec.get("targets") or ())


def subset_identity(config: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> str | None:
    """What a trained run's training subset removes, relative to its spec: None (the whole
    set), ``spurious`` (exactly the planted rows, whatever their indices), or the subset's
    rows (``minus3-1a2b3c4d``, ``keep100-...``). ``spurious`` is read from the finished run:
    it excluded as many rows as the spec plants and kept none of the planted ones."""
    data = config.get("subset")
    if not data:
        return None
    subset = TrainSubset.from_dict(data)
    kept = (metrics or {}).get("spurious_indices")
    count = planted_count(config["spec"])
    if subset.mode == "exclude" and count and kept == [] and len(subset.indices) == count:
        return SPURIOUS
    return subset.tag()


def forget_identity(forget: list[int], source_planted: list[int] | None) -> str:
    """``spurious`` when the forget set is exactly the planted rows the source trained on
    (other rows for every dataset seed), else the rows themselves (``minus3-<digest>``)."""
    if source_planted and sorted(forget) == sorted(source_planted):
        return SPURIOUS
    return TrainSubset.excluding(forget).tag()


def _legacy_removal(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A removal folder written before its metrics recorded its pool identity: such folders
    dropped the source's subset, so their source is taken to be a whole-set run, whose
    planted rows the removal forgot when none remain and the forget set is that large."""
    forget = list(config["removal"].get("forget") or [])
    source = {"subset": None, "removal": None}  # what a new removal of such a source records
    if metrics.get("spurious_indices") == [] and len(forget) == planted_count(config["spec"]):
        return {"forget": SPURIOUS, "source": source}
    return {"forget": TrainSubset.excluding(forget).tag() if forget else None, "source": source}


def removal_identity(config: Mapping[str, Any],
                     metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A removal run's method, options, forget set and source (its subset and removal)."""
    removal = config.get("removal")
    if not removal:
        return None
    recorded = ((metrics or {}).get("removal") or {}).get("pool")
    pool = recorded or _legacy_removal(config, metrics or {})
    return {"method": removal.get("method"), "options": removal.get("options"),
            "forget": pool.get("forget"), "source": pool.get("source") or {}}


def variant_identity(config: Mapping[str, Any],
                     metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a run trained on and what was done to it after: ``{"subset": ..., "removal":
    ...}`` (None for a plain run on the whole set). A removal's ``subset`` is its source's."""
    removal = removal_identity(config, metrics)
    if removal is not None:
        return {"subset": removal["source"].get("subset"), "removal": removal}
    return {"subset": subset_identity(config, metrics), "removal": None}


def pool_identity(config: Mapping[str, Any],
                  metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every field that must be equal for two runs to pool as seeds, flat and named as the
    refusal names them: ``spec.*``, ``train.*`` (the recipe without its seed), ``subset``,
    ``removal.*``."""
    identity = {f"spec.{k}": v for k, v in config["spec"].items() if k not in SEED_SPEC_FIELDS}
    identity.update(recipe_identity(config, metrics))
    return identity


def recipe_identity(config: Mapping[str, Any],
                    metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pool identity without the spec (``spec.*`` is what a report groups by first): the
    recipe, subset and removal, whose hash is the results index's ``recipe_id``."""
    identity = {f"train.{k}": v for k, v in config["train"].items() if k != "seed"}
    variant = variant_identity(config, metrics)
    identity["subset"] = variant["subset"]
    for key, value in (variant["removal"] or {}).items():
        identity[f"removal.{key}"] = value
    return identity


def baseline_identity(config: Mapping[str, Any],
                      metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a clean baseline run must share with the runs it is the baseline of: their recipe
    and training rows. A removal's baseline is that of its source (the clean run trained like
    the source), and ``spurious`` rows are matched by the whole set (a clean spec plants
    nothing, so excluding its planted rows excludes nothing). A baseline that is itself a
    removal keeps its ``removal.*`` fields, so it matches no trained run."""
    identity = recipe_identity(config, metrics)
    if config.get("removal") and config["spec"].get("targets"):
        identity = {k: v for k, v in identity.items() if not k.startswith("removal.")}
    if identity["subset"] == SPURIOUS:
        identity["subset"] = None
    return identity


def identity_hash(identity: Mapping[str, Any]) -> str:
    """A short hash of a ``recipe_identity`` or ``baseline_identity``: runs of one dataset,
    pattern and target(s) with equal recipe hashes pool (the results index's ``recipe_id``),
    and a clean run whose recipe hash is a run's baseline hash is its baseline (``baseline_id``).
    A plain run on the whole set hashes its recipe alone, as before subsets existed."""
    fields = {k: v for k, v in identity.items() if not (k == "subset" and v is None)}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def pool_mismatch(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """Why two identities (``pool_identity`` or ``recipe_identity``) do not pool: the first
    field that differs, ``train.lr (0.01 vs 0.1)``; None when they pool. Fields are checked
    in the identity's order (spec, recipe, subset, removal method first), so a removal set
    beside a trained run is named by its method."""
    for key in [*a, *(k for k in b if k not in a)]:
        left, right = a.get(key, "<absent>"), b.get(key, "<absent>")
        if left != right:
            return f"{key} ({left!r} vs {right!r})"
    return None


def variant_label(config: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> str:
    """The words a recipe's readable label gets for its subset and removal, e.g.
    ``minus-spurious``, ``keep100-1a2b3c4d``, ``rm-retrain``, ``rm-retrain forget minus3-..``,
    so that groups that do not pool are never labelled alike."""
    variant = variant_identity(config, metrics)
    words = []
    subset = variant["subset"]
    if subset:
        words.append("minus-spurious" if subset == SPURIOUS else subset)
    removal = variant["removal"]
    if removal:
        source = removal["source"].get("removal")
        if source:
            words.append(f"rm-{source['method']}")
        tag = (config.get("removal") or {}).get("tag") or ""
        words.append(f"rm-{removal['method']}{'-' + tag if tag else ''}")
        if removal["forget"] not in (SPURIOUS, None):
            words.append(f"forget {removal['forget']}")
    return " ".join(words)


__all__ = ["SPURIOUS", "baseline_identity", "forget_identity", "identity_hash",
           "pool_identity", "pool_mismatch", "planted_count", "recipe_identity",
           "subset_identity", "variant_identity", "variant_label"]

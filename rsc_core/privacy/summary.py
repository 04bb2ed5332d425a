"""Membership-inference results over seeds: mean and standard error of the mean (scipy's
``sem``, ddof 1) of each attack's metrics for every (dataset, pattern, n, label), beside the
study's stored numbers for its attack (PROTOCOL.md section 8) where they exist.

The stored numbers come from the reference's evaluation, which reused the members' logits for
its non-member half and used a split it never published (docs/privacy.md), so they are a
point of comparison, not a parity target."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.stats import sem

#: The study's attack (shadow-lr), R3 (v20), target 0, 10 seeds, LargeMLP (MNIST, Fashion) or
#: altResNet20Norm02 (CIFAR-10): (overall attack accuracy, member rate of the spurious
#: examples), from PROTOCOL.md section 8.
REFERENCE = {
    "fashion": {1: (.528, .90), 3: (.531, .93), 5: (.530, .82), 10: (.528, .71),
                20: (.530, .515), 100: (.530, .20), 1000: (.531, .30)},
    "mnist": {1: (.514, .70), 3: (.514, .77), 5: (.514, .82), 10: (.514, .76),
              20: (.514, .745), 100: (.513, .60), 1000: (.514, .61)},
    "cifar10": {1: (.562, 1.00), 3: (.564, 1.00), 5: (.563, .94), 10: (.562, .98),
                20: (.562, .99), 100: (.562, .98), 1000: (.568, .9996)},
}
REFERENCE_ATTACK = "shadow-lr"

#: (name in the summary, path into one attack's metrics)
METRICS = (
    ("balanced_accuracy", ("balanced_accuracy",)),
    ("auc", ("auc",)),
    ("tpr_at_0.1%_fpr", ("tpr_at_0.1%_fpr",)),
    ("tpr_at_1%_fpr", ("tpr_at_1%_fpr",)),
    ("planted_member_rate", ("planted", "member_rate")),
    ("same_class_member_rate", ("same_class_members", "member_rate")),
    ("control_member_rate", ("patterned_nonmembers", "member_rate")),
    ("planted_tpr_at_1%_fpr", ("planted", "tpr_at_1%_fpr")),
    ("same_class_tpr_at_1%_fpr", ("same_class_members", "tpr_at_1%_fpr")),
    ("control_tpr_at_1%_fpr", ("patterned_nonmembers", "tpr_at_1%_fpr")),
)


def reference_numbers(dataset: str, pattern: str, n: int, target: int,
                      attack: str) -> dict[str, float] | None:
    """The study's stored (accuracy, spurious member rate) for this setting, if it has one."""
    if attack != REFERENCE_ATTACK or pattern != "v20" or target != 0:
        return None
    stored = REFERENCE.get(dataset, {}).get(n)
    if stored is None:
        return None
    return {"accuracy": stored[0], "spurious_member_rate": stored[1]}


def _lookup(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = metrics
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = float(np.mean(values))
    error = float(sem(values)) if len(values) > 1 else math.nan
    return mean, (None if math.isnan(error) else error)


def summarise(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, pattern, n, label, attack) over the seeds in ``results`` (each a
    result's metrics.json), in first-seen order. ``control_*`` is the control slice (the
    pattern on images no model trained on), the comparison that separates membership from the
    learned pattern."""
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for result in results:
        spec = result["spec"]["spurious"]
        for attack, metrics in result["attacks"].items():
            key = (spec["dataset"], spec["pattern"], spec["n"], spec["targets"][0], attack)
            groups.setdefault(key, []).append((spec["seed"], metrics))
    rows = []
    for (dataset, pattern, n, target, attack), members in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "pattern": pattern, "n": n,
                               "target": target, "attack": attack,
                               "seeds": [seed for seed, _ in members]}
        for name, path in METRICS:
            values = [v for _, m in members if (v := _lookup(m, path)) is not None]
            row[f"{name}_mean"], row[f"{name}_sem"] = _mean_sem(values)
        plugin = members[0][1].get("attack", attack)  # the label may carry options
        row["reference"] = reference_numbers(dataset, pattern, n, target, plugin)
        rows.append(row)
    return rows

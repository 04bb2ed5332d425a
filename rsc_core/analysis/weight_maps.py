"""First-layer weight maps of an MLP (PROTOCOL.md section 9): for every input pixel, the max
over hidden units of the first layer's weights from that pixel, shown as an image. A pixel
some unit weighs strongly (a planted pattern's pixels, once learned) stands out; the map of
two runs' difference shows whether a removal changed what the first layer looks at.

The first layer is the first ``nn.Linear`` whose input is the flattened image, so any MLP on
flattened images works; other architectures get one clear error."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from rsc_core.errors import ConfigError
from rsc_core.plots import fit_title, plt, save_figure


@dataclass(frozen=True)
class WeightMap:
    name: str
    values: np.ndarray  # H x W (one channel) or C x H x W

    def summary(self) -> dict[str, Any]:
        v = self.values.astype(np.float64)
        return {"name": self.name, "shape": list(v.shape), "min": float(v.min()),
                "max": float(v.max()), "mean": float(v.mean()), "std": float(v.std())}


def first_layer_map(model: nn.Module, input_shape: Sequence[int], name: str = "") -> WeightMap:
    """The max over hidden units of the first layer's weights, per input pixel."""
    pixels = int(np.prod(input_shape))
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if first is None or first.in_features != pixels or _has_conv(model):
        raise ConfigError(f"{name or type(model).__name__} is not an MLP on flattened images "
                          f"(its first layer is not a Linear layer over all {pixels} inputs); "
                          f"weight maps are defined for MLPs only")
    values = first.weight.detach().cpu().double().max(dim=0).values.numpy()
    shape = tuple(input_shape)
    values = values.reshape(shape[1:] if shape[0] == 1 else shape)
    return WeightMap(name, values)


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def difference_summary(first: WeightMap, second: WeightMap) -> dict[str, Any]:
    """How far two maps differ: max and mean absolute difference, L2 norm, correlation."""
    if first.values.shape != second.values.shape:
        raise ConfigError(f"the two runs' inputs differ in shape ({first.values.shape} vs "
                          f"{second.values.shape}); compare runs of one dataset")
    a, b = first.values.ravel(), second.values.ravel()
    diff = b - a
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
    return {"max_abs": float(np.abs(diff).max()), "mean_abs": float(np.abs(diff).mean()),
            "l2": float(np.linalg.norm(diff)), "correlation": correlation,
            "argmax_abs": [int(i) for i in np.unravel_index(int(np.abs(diff).argmax()),
                                                               first.values.shape)]}


#: What the colour of a weight map means, on its colour bar.
MAP_LABEL = "max weight over hidden units"
DIFFERENCE_LABEL = "second map - first map"


def save_weight_maps(maps: Sequence[WeightMap], path: str | Path, title: str) -> Path:
    """Write ``build_weight_maps`` to ``path``."""
    return save_figure(build_weight_maps(maps, title), path, dpi=100)


def build_weight_maps(maps: Sequence[WeightMap], title: str):
    """One panel per map (shared colour scale), plus their difference (second minus first,
    on a symmetric diverging scale) when there are two; every colour bar says what its
    colour means. Returned open, for inspection."""
    panels = list(maps)
    count = len(panels) + (1 if len(panels) == 2 else 0)
    fig, axes = plt.subplots(1, count, figsize=(3.6 * count, 3.9), squeeze=False)
    low = min(float(m.values.min()) for m in panels)
    high = max(float(m.values.max()) for m in panels)
    for axis, weight_map in zip(axes[0], panels):
        image = axis.imshow(_picture(weight_map.values), cmap="viridis", vmin=low, vmax=high)
        axis.set_title(_short(weight_map.name), fontsize=8)
        fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04).set_label(MAP_LABEL, fontsize=7)
    if len(panels) == 2:
        diff = panels[1].values - panels[0].values
        bound = max(float(np.abs(diff).max()), 1e-12)
        axis = axes[0][2]
        image = axis.imshow(_picture(diff), cmap="RdBu_r", vmin=-bound, vmax=bound)
        axis.set_title("difference (second - first)", fontsize=8)
        fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04).set_label(DIFFERENCE_LABEL,
                                                                          fontsize=7)
    for axis in axes[0]:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(fit_title(title, fig.get_figwidth(), font_size=9), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # room for the title above two-line panel titles
    return fig


def _picture(values: np.ndarray) -> np.ndarray:
    """H x W as is; a C x H x W map (colour input) shows its max over channels."""
    return values if values.ndim == 2 else values.max(axis=0)


def _short(name: str, width: int = 40) -> str:
    """A run folder name wrapped at its underscores, so the spec (its start) and the method
    and hash (its end) both stay readable above a narrow panel."""
    lines = [""]
    for part in name.split("_"):
        candidate = f"{lines[-1]}_{part}" if lines[-1] else part
        if len(candidate) > width and lines[-1]:
            lines.append(part)
        else:
            lines[-1] = candidate
    return "\n".join(lines)

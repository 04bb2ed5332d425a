"""The study's experiments as ready-made grids (``rsc sweep --preset NAME``). Each preset is
a function of the dataset, because the study trains MNIST and Fashion-MNIST with one recipe and
CIFAR-10 with another (PROTOCOL.md section 4). ``rsc sweep --preset NAME --show-grid`` prints
a preset as a grid file to copy and edit.

All presets follow the study's seed protocol: dataset seeds 0-4 (``--seeds`` narrows them),
training seed 0 for every run."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rsc_core.errors import ConfigError

#: The paper's patterns: S1-S3 (squares), R1-R3 (random noise), and the core-feature bar.
STUDY_PATTERNS = ["v1", "v3", "v8", "v18", "v19", "v20", "v30"]
STUDY_N = [0, 1, 3, 5, 10, 20, 100, 1000]
STUDY_SEEDS = "0-4"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    build: Callable[[str], dict[str, Any]]


def study_recipe(dataset: str) -> dict[str, Any]:
    """PROTOCOL 4: LargeMLP, Adam lr 0.01, batch 128, 70 epochs on the grey datasets;
    altResNet20Norm02 with aug01, SGD lr 0.1 momentum 0.9, weight decay 1e-4 on CIFAR."""
    if dataset.startswith("cifar"):
        return {"model": "aug01-ce-tor-altResNet20Norm02", "optimizer": "sgd", "lr": 0.1,
                "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128, "epochs": 70}
    return {"arch": "LargeMLP", "optimizer": "adam", "lr": 0.01, "batch_size": 128,
            "epochs": 70}


def _base(dataset: str, patterns: list[str], ns: list[int]) -> dict[str, Any]:
    return {"dataset": dataset, "pattern": patterns, "n": ns, "target": 0,
            "seed": STUDY_SEEDS, "train_seed": 0}


def score_vs_n(dataset: str) -> dict[str, Any]:
    """The central figure: every pattern, n from 0 to 1000, the study's recipe."""
    return {"name": f"score-vs-n-{dataset}", **_base(dataset, STUDY_PATTERNS, STUDY_N),
            **study_recipe(dataset)}


def optimizers(dataset: str) -> dict[str, Any]:
    """PROTOCOL 9: SGD (momentum 0.9) against Adam, lr 0.01, for S3 and R3 at n = 3 and 10
    (and the clean baseline, n = 0)."""
    recipe = study_recipe(dataset)
    for key in ("optimizer", "lr", "momentum"):
        recipe.pop(key, None)
    return {"name": f"optimizers-{dataset}", **_base(dataset, ["v8", "v20"], [0, 3, 10]),
            **recipe, "lr": 0.01,
            "recipe": [{"optimizer": "adam"}, {"optimizer": "sgd", "momentum": 0.9}]}


def architectures(dataset: str) -> dict[str, Any]:
    """PROTOCOL 9: MLP, LargeMLP, LargeMLPv2 and CNN002 (grey datasets) or ResNet20/32/110
    and VGG16 (CIFAR), each with the dataset's recipe, for S3 and R3 over the study's n."""
    recipe = study_recipe(dataset)
    if dataset.startswith("cifar"):
        recipe.pop("model")
        archs = ["altResNet20Norm02", "altResNet32Norm02", "altResNet110Norm02", "Vgg16Norm02"]
        recipe["aug"] = "aug01"
    else:
        recipe.pop("arch")
        archs = ["MLP", "LargeMLP", "LargeMLPv2", "CNN002"]
    return {"name": f"architectures-{dataset}", **_base(dataset, ["v8", "v20"], STUDY_N),
            **recipe, "arch": archs}


#: PROTOCOL 6's mitigation levels: (grey datasets, CIFAR).
WEIGHT_DECAY = ([1e-5, 1e-4, 1e-3, 1e-2, 5e-2, 1e-1], [1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
INPUT_NOISE = ([0.05, 0.1, 0.2, 0.5, 0.75, 1.0, 5.0], [0.1, 0.2, 0.5, 1.0, 2.0])
GRAD_CLIP = ([1e-1, 1e-2, 1e-3, 1e-4, 1e-5], [1e-2, 1e-1, 1.0, 10.0])


def mitigations(dataset: str) -> dict[str, Any]:
    """PROTOCOL 6: S3, target 0, the study's n, no mitigation and every level of weight
    decay, Gaussian input noise and gradient value clipping. On CIFAR, the study's stored
    table uses Adam lr 0.01 without weight decay as the unmitigated recipe; so does this."""
    cifar = dataset.startswith("cifar")
    recipe = study_recipe(dataset)
    if cifar:
        recipe.update(optimizer="adam", lr=0.01)
        recipe.pop("momentum")
        recipe.pop("weight_decay")
    pick = 1 if cifar else 0
    sets: list[list[str]] = [[]]
    sets += [[f"weight-decay:value={v!r}"] for v in WEIGHT_DECAY[pick]]
    sets += [[f"input-noise:sigma={v!r}"] for v in INPUT_NOISE[pick]]
    sets += [[f"grad-clip:value={v!r}"] for v in GRAD_CLIP[pick]]
    return {"name": f"mitigations-{dataset}", **_base(dataset, ["v8"], STUDY_N), **recipe,
            "regularisers": sets}


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("score-vs-n", "7 patterns x n in {0,1,3,5,10,20,100,1000} x seeds 0-4, the study's "
           "recipe (the central figure)", score_vs_n),
    Preset("optimizers", "Adam vs SGD (momentum 0.9), lr 0.01, S3 and R3 at n in {0,3,10} "
           "(PROTOCOL 9)", optimizers),
    Preset("architectures", "4 architectures (MLPs and CNN002; ResNets and VGG16 on CIFAR), "
           "S3 and R3, the study's n (PROTOCOL 9)", architectures),
    Preset("mitigations", "none + weight decay, input noise and gradient clipping at the "
           "study's levels, S3, the study's n (PROTOCOL 6)", mitigations),
)}


def preset_grid(name: str, dataset: str) -> dict[str, Any]:
    """The grid of preset ``name`` for ``dataset``, as a grid file would declare it."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name].build(dataset)

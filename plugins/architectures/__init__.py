"""rsc's architecture plugins, one module per source of networks:

* ``reference``: the reference's zoo (MLPs, CNN002, CIFAR ResNets, VGG-16), re-implemented so
  its checkpoints load;
* ``torchvision_models``: the family ``torchvision:<name>``, any ``torchvision.models``
  classifier;
* ``timm_models``: the family ``timm:<name>``, any timm model (optional extra ``rsc[timm]``).

A family is one registry item standing for many names (``rsc_core.registry``), so
``--arch torchvision:resnet18`` works wherever ``--arch`` does."""
from __future__ import annotations

from typing import Any

from rsc_core import hookimpl

from .reference import ARCHITECTURES
from .timm_models import TimmFamily
from .torchvision_models import TorchvisionFamily


@hookimpl
def register_architectures(register: Any) -> None:
    for architecture in ARCHITECTURES:
        register(architecture)
    register(TorchvisionFamily)
    register(TimmFamily)

"""rsc's architecture plugins.

The reference's zoo (PROTOCOL.md section 3), re-implemented so its checkpoints load, one module
per network definition:

* ``mlp``: ``MLP``, ``MLPv2``, ``LargeMLP``, ``LargeMLPv2`` (one MLP at four widths);
* ``cnn002``: ``CNN002``, the small TRADES CNN;
* ``resnet``: ``altResNet20/32/110`` and their ``...Norm02`` variants (one CIFAR ResNet at three
  depths, with or without in-model normalisation);
* ``vgg``: ``Vgg16Norm02``;
* ``reference_base``: what they share (input-shape check, in-model normalisation, the base
  class that takes each name's description from its docstring).

A module per network rather than per registered name: the registered names of one module are
variants of one ``nn.Module`` (a width, a depth, a normalisation), a few lines each, and they
read best beside the network they configure.

Networks from libraries, one module per library:

* ``torchvision_models``: the family ``torchvision:<name>``, any ``torchvision.models``
  classifier;
* ``timm_models``: the family ``timm:<name>``, any timm model (optional extra ``rsc[timm]``).

A family is one registry item standing for many names (``rsc_core.registry``, ``family``), so
``--arch torchvision:resnet18`` works wherever ``--arch`` does."""
from __future__ import annotations

from typing import Any

from rsc_core import hookimpl
from rsc_core.training.architectures import Architecture

from .cnn002 import CNN002Architecture
from .mlp import MLP, LargeMLP, LargeMLPv2, MLPv2
from .resnet import (AltResNet20, AltResNet20Norm02, AltResNet32, AltResNet32Norm02,
                     AltResNet110, AltResNet110Norm02)
from .timm_models import TimmFamily
from .torchvision_models import TorchvisionFamily
from .vgg import Vgg16Norm02

#: The reference's architectures, in registration order.
REFERENCE_ARCHITECTURES: tuple[type[Architecture], ...] = (
    MLP, MLPv2, LargeMLP, LargeMLPv2, CNN002Architecture,
    AltResNet20, AltResNet32, AltResNet110,
    AltResNet20Norm02, AltResNet32Norm02, AltResNet110Norm02,
    Vgg16Norm02,
)


@hookimpl
def register_architectures(register: Any) -> None:
    for architecture in REFERENCE_ARCHITECTURES:
        register(architecture)
    register(TorchvisionFamily)
    register(TimmFamily)

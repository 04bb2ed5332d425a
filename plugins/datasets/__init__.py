"""rsc's dataset plugins, one module per kind of source:

* ``idx``: MNIST and Fashion-MNIST; ``cifar``: CIFAR-10 and CIFAR-100 (fine or coarse). These
  read the data root in torchvision's layout and verify published MD5s.
* ``imagefolder`` and ``arrays``: a user's own data (an ``ImageFolder`` tree, or an ``.npz`` /
  ``.pt`` of arrays), declared by name in ``rsc.toml`` (``declared``; the file itself is read
  by ``rsc_core.user_config``).

All are ``CachedProvider`` subclasses (``rsc_core.dataset_cache``), so decoded uint8 tensors are
cached in rsc's own cache folder, and all are registered by the one hook below, exactly as a
third-party plugin registers its own: built-ins first, then the user's declarations, whose
names may not take a built-in's."""
from __future__ import annotations

from typing import Any

import rsc_core
from rsc_core.data.datasets import DatasetProvider

from .cifar import CIFAR10, CIFAR100, CIFAR100Coarse, CifarProvider, read_pickle
from .declared import declared_providers
from .idx import MNIST, FashionMNIST, IdxProvider

PROVIDERS: tuple[type[DatasetProvider], ...] = (MNIST, FashionMNIST, CIFAR10, CIFAR100,
                                                CIFAR100Coarse)

__all__ = ["PROVIDERS", "MNIST", "FashionMNIST", "IdxProvider", "CIFAR10", "CIFAR100",
           "CIFAR100Coarse", "CifarProvider", "read_pickle"]


@rsc_core.hookimpl
def register_datasets(register: Any) -> None:
    """Register the built-in datasets, then the ones the user declares in rsc.toml."""
    for provider in PROVIDERS:
        register(provider)
    builtin = {name for p in PROVIDERS for name in (p.name, *p.aliases)}
    for provider in declared_providers(builtin):
        register(provider)

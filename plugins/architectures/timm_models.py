"""Every ``timm`` model as an rsc architecture: ``timm:<name>``, e.g. ``--arch timm:resnet10t``
(``rsc plugins`` lists the family as ``timm:``). timm is an optional extra: ``pip install
'rsc[timm]'``; without it, a ``timm:`` name is one error that says so.

timm builds every model for any number of classes and input channels itself
(``create_model(name, pretrained=False, num_classes=..., in_chans=...)``; rsc never downloads
weights). Models with a fixed input size (the vision transformers) are built again for the
images' own size (``img_size``) when the default size does not fit; whether the result can take
the images is checked once, on blank images (``rsc_core.training.architectures.check_input``)."""
from __future__ import annotations

from typing import Any

from torch import nn

from rsc_core.training.architectures import check_input
from rsc_core.errors import ConfigError, OptionalDependencyError

from .family import LibraryArchitecture, ModelFamily


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise OptionalDependencyError("timm: architectures need the optional extra timm; "
                                      "install it with pip install 'rsc[timm]'") from None
    return timm


class TimmArchitecture(LibraryArchitecture):
    """One timm model, built untrained for the images' shape."""

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        timm = import_timm()
        shape = tuple(int(s) for s in input_shape)
        options = {"pretrained": False, "num_classes": num_classes, "in_chans": shape[0]}
        try:
            return check_input(timm.create_model(self.model, **options), self.name, shape,
                               num_classes)
        except ConfigError as first:
            try:  # a fixed-size model (a ViT): build it for these images
                model = timm.create_model(self.model, **options, img_size=shape[1:])
            except TypeError:  # the builder takes no img_size: the first error stands
                raise first from None
            return check_input(model, self.name, shape, num_classes)


class TimmFamily(ModelFamily):
    """Any timm model, untrained: timm:<name>, e.g. timm:resnet10t (needs rsc[timm])."""

    name = "timm:"
    library = "timm"
    architecture = TimmArchitecture

    @classmethod
    def models(cls) -> list[str]:
        return import_timm().list_models()

    @classmethod
    def known(cls, model: str) -> bool:
        return import_timm().is_model(model)

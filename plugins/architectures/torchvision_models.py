"""Every ``torchvision.models`` classifier as an rsc architecture: ``torchvision:<name>``, e.g.
``--arch torchvision:resnet18`` (``rsc plugins`` lists the family as ``torchvision:``).

The network is built untrained (``weights=None``: rsc never downloads) with the dataset's
number of classes. torchvision's classifiers take 3-channel images; for another channel count
the first convolution that reads the image is replaced by one with as many input channels and
otherwise the same settings, freshly initialised. Two builders get arguments for rsc's use:
the ViTs are built for the images' own size (``image_size``, which must be square and a
multiple of the patch), and GoogLeNet and Inception v3 without their auxiliary training heads
(rsc's trainers expect one tensor of logits). Whether the result can take the images is
checked once, on blank images, when it is built (``rsc_core.training.architectures.check_input``):
e.g. AlexNet's pooling stack needs larger images than MNIST's."""
from __future__ import annotations

from typing import Any

from torch import nn

from rsc_core.training.architectures import check_input
from rsc_core.errors import ConfigError

from .family import LibraryArchitecture, ModelFamily


def classifier_names() -> list[str]:
    """The image classifiers torchvision builds (its detection, segmentation and video models
    live in sub-modules and are not classifiers of C x H x W images)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def builder_options(model: str, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Arguments some builders need beyond ``weights`` and ``num_classes`` (module docstring)."""
    if model.startswith("vit_"):
        return {"image_size": input_shape[1]}
    if model in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    return {}


def adapt_input_channels(model: nn.Module, channels: int, name: str) -> nn.Module:
    """Replace the first 3-channel ``Conv2d`` (the one reading the image) by a
    ``channels``-channel one with the same settings; nothing changes for 3 channels."""
    if channels == 3:
        return model
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(parent, child_name, nn.Conv2d(
                    channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None,
                    child.padding_mode))
                return model
    raise ConfigError(f"{name} has no 3-channel convolution reading the image, so rsc cannot "
                      f"adapt it to {channels}-channel images; use 3-channel images")


class TorchvisionArchitecture(LibraryArchitecture):
    """One torchvision classifier, built untrained for the images' shape."""

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        import torchvision.models

        shape = tuple(int(s) for s in input_shape)
        net = torchvision.models.get_model(self.model, weights=None, num_classes=num_classes,
                                           **builder_options(self.model, shape))
        adapt_input_channels(net, shape[0], self.name)
        return check_input(net, self.name, shape, num_classes)


class TorchvisionFamily(ModelFamily):
    """Any torchvision.models classifier, untrained: torchvision:<name>, e.g. resnet18."""

    name = "torchvision:"
    library = "torchvision.models"
    architecture = TorchvisionArchitecture

    @classmethod
    def models(cls) -> list[str]:
        return classifier_names()

"""Architectures: PROTOCOL.md parameter counts, reference state_dict names, initialisation,
forward shapes and registry access. Every model is built once per module (VGG-16 included)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import rsc_core
from rsc_core.training.architectures import Architecture, count_parameters
from rsc_core.errors import ConfigError, UnknownNameError
from rsc_plugins.architectures import REFERENCE_ARCHITECTURES
from rsc_plugins.architectures.cnn002 import CNN002Architecture
from rsc_plugins.architectures.mlp import MLP, LargeMLP
from rsc_plugins.architectures.reference_base import CIFAR_MEAN, CIFAR_STD
from rsc_plugins.architectures.resnet import AltResNet20, AltResNet20Norm02
from rsc_plugins.architectures.vgg import Vgg16Norm02

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)

# name -> (input shape, parameters with 10 classes), from PROTOCOL.md section 3
EXPECTED = {
    "MLP": (MNIST, 203_530),
    "MLPv2": (MNIST, 269_322),
    "LargeMLP": (MNIST, 335_114),
    "LargeMLPv2": (MNIST, 932_362),
    "CNN002": (MNIST, 312_202),
    "altResNet20": (CIFAR, 269_722),
    "altResNet32": (CIFAR, 464_154),
    "altResNet110": (CIFAR, 1_727_962),
    "altResNet20Norm02": (CIFAR, 269_722),
    "altResNet32Norm02": (CIFAR, 464_154),
    "altResNet110Norm02": (CIFAR, 1_727_962),
    "Vgg16Norm02": (CIFAR, 134_301_514),
}
NAMES = list(EXPECTED)
SMALL = [n for n in NAMES if n != "Vgg16Norm02"]
ARCH = {cls.name: cls for cls in REFERENCE_ARCHITECTURES}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    with torch.no_grad():
        return {name: ARCH[name]().build(shape, 10) for name, (shape, _) in EXPECTED.items()}


def _bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{s}" for s in
            ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _resnet_keys(blocks: int) -> list[str]:
    """The reference ResNet's state_dict keys, in order."""
    keys = ["conv1.weight", *_bn_keys("bn1")]
    for layer in (1, 2, 3):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            keys += [f"{p}.conv1.weight", *_bn_keys(f"{p}.bn1"),
                     f"{p}.conv2.weight", *_bn_keys(f"{p}.bn2")]
    return keys + ["linear.weight", "linear.bias"]


def _weight_bias(*prefixes: str) -> list[str]:
    return [f"{p}.{s}" for p in prefixes for s in ("weight", "bias")]


REFERENCE_KEYS = {
    "MLP": _weight_bias("hidden", "fc"),
    "MLPv2": _weight_bias("hidden", "hidden2", "fc"),
    "LargeMLP": _weight_bias("hidden", "hidden2", "hidden3", "fc"),
    "LargeMLPv2": _weight_bias("hidden", "hidden2", "hidden3", "fc"),
    "CNN002": _weight_bias(*(f"feature_extractor.conv{i}" for i in range(1, 5)),
                           *(f"classifier.fc{i}" for i in range(1, 4))),
    "altResNet20": _resnet_keys(3),
    "altResNet32": _resnet_keys(5),
    "altResNet110": _resnet_keys(18),
    "altResNet20Norm02": _resnet_keys(3),
    "altResNet32Norm02": _resnet_keys(5),
    "altResNet110Norm02": _resnet_keys(18),
    "Vgg16Norm02": _weight_bias(*(f"features.{i}" for i in
                                  (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
                                *(f"classifier.{i}" for i in (0, 3, 6))),
}


def test_every_architecture_is_covered():
    assert sorted(ARCH) == sorted(NAMES)
    for cls in REFERENCE_ARCHITECTURES:
        assert issubclass(cls, Architecture)
        assert cls.description and "\n" not in cls.description
        assert cls.flat_input == (cls.name in {"MLP", "MLPv2", "LargeMLP", "LargeMLPv2"})


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(models, name):
    assert count_parameters(models[name]) == EXPECTED[name][1]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_match_reference(models, name):
    assert list(models[name].state_dict()) == REFERENCE_KEYS[name]


def test_large_mlp_keys_and_shapes(models):
    shapes = {k: tuple(v.shape) for k, v in models["LargeMLP"].state_dict().items()}
    assert shapes == {"hidden.weight": (256, 784), "hidden.bias": (256,),
                      "hidden2.weight": (256, 256), "hidden2.bias": (256,),
                      "hidden3.weight": (256, 256), "hidden3.bias": (256,),
                      "fc.weight": (10, 256), "fc.bias": (10,)}


def test_vgg_matches_torchvision_layout(models):
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        reference = torchvision.models.vgg16(num_classes=10)
    ours = {k: v.shape for k, v in models["Vgg16Norm02"].state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(models, name):
    shape = EXPECTED[name][0]
    model = models[name].eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL)
def test_state_dict_loads_strictly_into_fresh_instance(models, name):
    shape = EXPECTED[name][0]
    source = models[name].eval()
    twin = ARCH[name]().build(shape, 10).eval()
    twin.load_state_dict(source.state_dict(), strict=True)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), source(x))


def test_vgg_state_dict_loads_strictly(models):
    with torch.device("meta"):  # a second 134M-parameter model costs nothing on meta
        twin = Vgg16Norm02().build(CIFAR, 10)
    twin.load_state_dict(models["Vgg16Norm02"].state_dict(), strict=True, assign=True)
    assert not any(p.is_meta for p in twin.parameters())


@pytest.mark.parametrize("name", ["MLP", "LargeMLPv2"])
def test_mlps_flatten_images_themselves(models, name):
    model = models[name]
    x = torch.rand(4, *MNIST)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.flatten(1)))


def test_cnn002_last_layer_is_zero_and_conv_biases_are_zero(models):
    model = models["CNN002"]
    fc3 = model.classifier.fc3
    assert torch.count_nonzero(fc3.weight) == 0 and torch.count_nonzero(fc3.bias) == 0
    for i in range(1, 5):
        assert torch.count_nonzero(getattr(model.feature_extractor, f"conv{i}").bias) == 0
    with torch.no_grad():
        assert torch.count_nonzero(model(torch.rand(2, *MNIST))) == 0


def test_cnn002_on_cifar_shapes():
    model = CNN002Architecture().build(CIFAR, 10)
    assert model.classifier.fc1.in_features == 64 * 5 * 5
    assert model.feature_extractor.conv1.in_channels == 3
    with torch.no_grad():
        assert model.eval()(torch.rand(2, *CIFAR)).shape == (2, 10)


def test_cnn002_rejects_tiny_images():
    with pytest.raises(ConfigError, match="16x16"):
        CNN002Architecture().build((1, 12, 12), 10)


def test_vgg_initialisation(models):
    model = models["Vgg16Norm02"]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(module.bias) == 0
    head = model.classifier[6].weight
    assert abs(head.std().item() - 0.01) < 0.002


def test_resnet_kaiming_init(models):
    model = models["altResNet110"]
    conv = model.layer3[0].conv1.weight  # 32 in-channels, 3x3: fan_in 288
    assert abs(conv.std().item() - (2 / 288) ** 0.5) < 0.01
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("depth", [20, 32, 110])
def test_norm02_normalises_inside_the_model(models, depth):
    plain = models[f"altResNet{depth}"].eval()
    normed = ARCH[f"altResNet{depth}Norm02"]().build(CIFAR, 10).eval()
    normed.load_state_dict(plain.state_dict(), strict=True)  # same keys: no stats in state_dict
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x = torch.rand(2, *CIFAR)
    with torch.no_grad():
        torch.testing.assert_close(normed(x), plain((x - mean) / std))


def test_norm02_statistics_follow_dtype_and_reject_grey_images():
    model = ARCH["altResNet20Norm02"]().build(CIFAR, 10).double().eval()
    with torch.no_grad():
        assert model(torch.rand(1, *CIFAR, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ConfigError, match="Norm02"):
        AltResNet20Norm02().build(MNIST, 10)


def test_resnet_runs_on_grey_images():
    model = AltResNet20().build(MNIST, 10).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *MNIST)).shape == (2, 10)


def test_sizes_follow_input_shape_and_classes():
    assert LargeMLP().build(MNIST, 2).fc.out_features == 2
    assert count_parameters(MLP().build(CIFAR, 10)) == 3072 * 256 + 256 + 2570


def test_registry_access():
    names = rsc_core.list_names("architectures")
    assert set(NAMES) <= set(names)
    model = rsc_core.create("architectures", "LargeMLP").build(MNIST, 10)
    assert count_parameters(model) == 335_114
    entry = rsc_core.get("architectures", "altResNet20Norm02")
    assert entry.description == AltResNet20Norm02.description
    assert entry.obj.flat_input is False


def test_unknown_architecture_raises():
    with pytest.raises(UnknownNameError, match="LargeMLP"):
        rsc_core.create("architectures", "LargeMPL")

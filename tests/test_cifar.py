"""CIFAR-10 fidelity (issue 12): the reference's ResNet pooling and MLP flatten order give
bit-identical logits for reference checkpoints; a spec must name its pattern; ``aug01`` draws
from torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip distribution.

The reference-style modules below re-implement the reference's forward passes as the reference
writes them (NHWC arrays reshaped for MLPs; ``F.avg_pool2d(out, out.size()[3])`` and an
in-place residual add for ResNets), independently of rsc's code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_THREAD_ENV
from torch import nn

import rsc_core
from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint

CIFAR_SHAPE = (3, 32, 32)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


# --------------------------------------------------------------------------- reference-style


class RefShortcut(nn.Module):
    def __init__(self, planes: int) -> None:
        super().__init__()
        self.planes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.planes // 4
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0)


class RefBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = RefShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class RefResNet20Norm02(nn.Module):
    """The reference's ResNet-20 with in-model normalisation, written the reference's way."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._layer(16, 1)
        self.layer2 = self._layer(32, 2)
        self.layer3 = self._layer(64, 2)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)

    def _layer(self, planes: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in (stride, 1, 1):
            blocks.append(RefBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(MEAN, dtype=x.dtype)[None, :, None, None]
        std = torch.as_tensor(STD, dtype=x.dtype)[None, :, None, None]
        x = (x - mean) / std
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


class RefLargeMLP(nn.Module):
    """The reference's LargeMLP: it sees rows of an N x (H*W*C) array."""

    def __init__(self, n_features: int, n_classes: int = 10) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, 256)
        self.hidden2 = nn.Linear(256, 256)
        self.hidden3 = nn.Linear(256, 256)
        self.fc = nn.Linear(256, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.hidden(x))
        x = F.relu(self.hidden2(x))
        x = F.relu(self.hidden3(x))
        return self.fc(x)


def reference_checkpoint(model: nn.Module, path) -> dict:
    """Save ``model`` as the reference does and read it back through rsc's loader."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 70, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict()}, path)
    return read_checkpoint(path)


def trained_batch_norm(model: nn.Module) -> None:
    """Give every batch norm non-trivial statistics and affine terms (a fresh one is the
    identity up to eps, which would hide a mismatch in how eval mode uses them)."""
    generator = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.weight, module.bias, module.running_mean):
                tensor.data.copy_(torch.randn(tensor.shape, generator=generator) * 0.3
                                  + (1.0 if tensor is module.weight else 0.0))
            module.running_var.copy_(torch.rand(module.running_var.shape,
                                                generator=generator) + 0.5)


# --------------------------------------------------------------------------- ResNet pooling


def test_reference_resnet_checkpoint_gives_bit_identical_logits(tmp_path):
    torch.manual_seed(0)
    reference = RefResNet20Norm02()
    trained_batch_norm(reference)
    checkpoint = reference_checkpoint(reference, tmp_path / "ref.pt")
    model = build_model_from_checkpoint(checkpoint, "altResNet20Norm02", CIFAR_SHAPE, 10)
    x = torch.rand(8, *CIFAR_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for mode in (False, True):  # eval (scoring) and train (batch statistics)
            reference.train(mode), model.train(mode)
            assert torch.equal(model(x), reference(x)), f"train={mode}"


def test_resnet_is_initialised_like_the_reference():
    torch.manual_seed(3)
    reference = RefResNet20Norm02()
    torch.manual_seed(3)
    ours = rsc_core.create("architectures", "altResNet20Norm02").build(CIFAR_SHAPE, 10)
    theirs = reference.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs[key]), key


def test_resnet_pooling_is_the_same_in_channels_last():
    torch.manual_seed(0)
    model = rsc_core.create("architectures", "altResNet20").build(CIFAR_SHAPE, 10).eval()
    x = torch.rand(4, *CIFAR_SHAPE)
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected)  # convolutions may round differently


# --------------------------------------------------------------------------- MLP flatten order


@pytest.mark.parametrize("arch", ["LargeMLP", "MLP"])
def test_reference_mlp_on_colour_images_gives_bit_identical_logits(tmp_path, arch):
    torch.manual_seed(0)
    ours_fresh = rsc_core.create("architectures", arch).build(CIFAR_SHAPE, 10)
    reference = RefLargeMLP(3 * 32 * 32) if arch == "LargeMLP" else None
    source = reference if reference is not None else ours_fresh
    checkpoint = reference_checkpoint(source, tmp_path / "ref.pt")
    model = build_model_from_checkpoint(checkpoint, arch, CIFAR_SHAPE, 10).eval()
    nhwc = np.random.RandomState(0).rand(6, 32, 32, 3).astype(np.float32)  # the reference's
    flat = torch.from_numpy(nhwc.reshape(len(nhwc), -1))   # arrays, reshaped as it does
    images = torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))  # rsc's NCHW
    with torch.no_grad():
        expected = _reference_forward(source, flat)
        assert torch.equal(model(images), expected)
        assert torch.equal(model(images.contiguous(memory_format=torch.channels_last)),
                           expected)
        assert torch.equal(model(flat), expected)  # flat input is taken as the reference's
        # Channel-first flattening (rsc's old order) feeds the weights other pixels.
        assert not torch.allclose(_reference_forward(source, images.flatten(1)), expected)


def _reference_forward(model: nn.Module, flat: torch.Tensor) -> torch.Tensor:
    """Apply the layers of an MLP (reference-style or rsc's) to already-flat rows."""
    x = flat
    names = [name for name, _ in model.named_children()]
    for name in names[:-1]:
        x = F.relu(getattr(model, name)(x))
    return getattr(model, names[-1])(x)


def test_stacked_mlps_flatten_colour_images_in_the_same_order():
    """The multi-model trainer's ``forward_stacked`` sees what ``forward`` sees."""
    torch.manual_seed(0)
    models = [rsc_core.create("architectures", "MLPv2").build(CIFAR_SHAPE, 10) for _ in range(2)]
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
              for name, _ in models[0].named_parameters()}
    x = torch.rand(2, 5, *CIFAR_SHAPE)
    with torch.no_grad():
        stacked = models[0].forward_stacked(params, x)
        for k, model in enumerate(models):
            torch.testing.assert_close(stacked[k], model(x[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["LargeMLP", "MLP", "MLPv2", "LargeMLPv2"])
def test_grey_images_flatten_exactly_as_before(arch):
    """For one channel, height-width-channel and channel-height-width order are the same
    pixels in the same order, and rsc flattens the tensor as it did before the change (a view,
    no copy), so MNIST and Fashion-MNIST results cannot change."""
    from rsc_plugins.architectures.mlp import flatten_hwc

    x = torch.rand(7, 1, 28, 28)
    flat = flatten_hwc(x, 1)
    assert torch.equal(flat, x.flatten(1))
    assert torch.equal(flat, x.permute(0, 2, 3, 1).reshape(7, -1))
    assert flat.data_ptr() == x.data_ptr()
    torch.manual_seed(0)
    model = rsc_core.create("architectures", arch).build((1, 28, 28), 10).eval()
    with torch.no_grad():
        assert torch.equal(model(x), _reference_forward(model, x.flatten(1)))
        stacked = flatten_hwc(x.unsqueeze(0).expand(2, *x.shape), 2)
        assert torch.equal(stacked[1], x.flatten(1))


# --------------------------------------------------------------------------- no pattern


@pytest.mark.parametrize("text,suggestion", [
    ("cifar10-3-0-0", "cifar10v8-3-0-0"),
    ("mnist-3-0-0", "mnistv1-3-0-0"),
    ("fashion-0-0-0", "fashionv8-0-0-0"),
    ("cifar100-1-99-7", "cifar100v1-1-99-7"),
    ("twoclassmnist-3-1-2-0", "twoclassmnistv8-3-1-2-0"),
])
def test_a_spec_without_a_pattern_is_one_line_saying_what_to_write(text, suggestion):
    """The reference turns a missing pattern into v1 on grey images and rejects it on colour
    ones; rsc has one rule for every dataset: name the pattern."""
    from rsc_core.errors import SpecError
    from rsc_core.data.spec import parse_spec

    with pytest.raises(SpecError, match="names no pattern") as info:
        parse_spec(text)
    message = str(info.value)
    assert "\n" not in message and suggestion in message and text in message


def test_options_and_direct_construction_follow_the_same_rule():
    from rsc_core.errors import SpecError
    from rsc_core.data.spec import SpuriousSpec

    with pytest.raises(SpecError, match="cifar10-3-0-0 names no pattern.*--pattern"):
        SpuriousSpec.build("cifar10", None, 3, 0, 0)
    with pytest.raises(SpecError, match="names no pattern"):
        SpuriousSpec("cifar10", None, 3, (0,), 0)
    with pytest.raises(SpecError, match="names no pattern"):  # a hand-edited run config
        SpuriousSpec.from_dict({"dataset": "mnist", "pattern": None, "n": 3, "targets": [0],
                                "seed": 0})
    assert SpuriousSpec.build("cifar10").is_clean  # the clean dataset needs no pattern
    assert SpuriousSpec.build("cifar10", "s3", 0, 0, 0).name == "cifar10v8-0-0-0"


def test_cli_refuses_a_spec_without_a_pattern(tiny_data):
    from click.testing import CliRunner
    from rsc_cli.main import cli

    result = CliRunner().invoke(cli, ["data", "summary", "--spec", "cifar10-1-0-0",
                                      "--data-dir", str(tiny_data.root)])
    assert result.exit_code == 2
    assert result.output.startswith("Error: cifar10-1-0-0 names no pattern")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


# --------------------------------------------------------------------------- aug01


def _windows(image: torch.Tensor) -> dict[bytes, tuple[int, int, bool]]:
    """Every output aug01 can make of ``image`` (C x H x W): its 9 x 9 zero-padded crops,
    plain and mirrored, keyed by their bytes."""
    _, height, width = image.shape
    padded = F.pad(image, (4, 4, 4, 4))
    found = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + height, dx:dx + width]
            for flip in (False, True):
                window = crop.flip(-1) if flip else crop
                found[window.contiguous().numpy().tobytes()] = (dy, dx, flip)
    return found


def test_aug01_offsets_and_flips_have_torchvisions_distribution():
    """20,000 crops of one image whose pixels are all different: each output is exactly one
    of the 162 zero-padded windows, and the offsets (0..8 per axis) and flips are uniform and
    independent (chi-square tests; the generator is seeded, so the test is deterministic)."""
    from scipy import stats

    n = 20_000
    image = (torch.arange(1, 145, dtype=torch.float32) / 255).view(1, 12, 12)  # 8-bit values
    from rsc_core.training.trainer import aug01_draws, augment_aug01

    out = augment_aug01(image.expand(n, 1, 12, 12).contiguous(),
                        torch.Generator().manual_seed(11))
    windows = _windows(image)
    seen = np.array([windows[row.numpy().tobytes()] for row in out])  # KeyError: not a window
    dy, dx, flip = seen[:, 0], seen[:, 1], seen[:, 2].astype(bool)
    drawn = aug01_draws(n, torch.Generator().manual_seed(11))
    assert np.array_equal(dy, drawn[0].numpy()) and np.array_equal(dx, drawn[1].numpy())
    assert np.array_equal(flip, drawn[2].numpy())
    for offsets in (dy, dx):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9 and stats.chisquare(counts).pvalue > 1e-3
    joint = np.bincount(dy * 9 + dx, minlength=81)
    assert stats.chisquare(joint).pvalue > 1e-3  # the two offsets are independent
    assert stats.binomtest(int(flip.sum()), n, 0.5).pvalue > 1e-3
    table = np.array([np.bincount(dy[flip == f], minlength=9) for f in (False, True)])
    assert stats.chi2_contingency(table).pvalue > 1e-3  # flips independent of offsets


def test_torchvision_random_crop_draws_the_same_offsets():
    """What the test above compares with: RandomCrop(32, padding=4) pads to 40 x 40 and draws
    each offset uniformly from 0..8; RandomHorizontalFlip mirrors with probability 0.5."""
    from scipy import stats
    from torchvision import transforms

    torch.manual_seed(0)
    padded = torch.zeros(3, 40, 40)
    draws = np.array([transforms.RandomCrop.get_params(padded, (32, 32))[:2]
                      for _ in range(4_000)])
    for axis in range(2):
        counts = np.bincount(draws[:, axis])
        assert len(counts) == 9 and stats.chisquare(counts).pvalue > 1e-3
    assert transforms.RandomHorizontalFlip().p == 0.5


def fixed_crop(dy: int, dx: int):
    """torchvision's own RandomCrop(32, padding=4) (its padding and cropping code), made to
    use the given offsets instead of drawing them."""
    from torchvision import transforms

    class FixedCrop(transforms.RandomCrop):
        @staticmethod
        def get_params(img, output_size):
            return dy, dx, 32, 32

    return FixedCrop(32, padding=4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_aug01_pixels_equal_the_references_transforms_for_the_same_draws(channels_last):
    """For a fixed draw, every pixel equals the reference's per-image pipeline
    ``ToPILImage, RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor`` with the same
    offsets and flips -- on 8-bit images and on images carrying the noise pattern R3, whose
    pixels the reference's ToPILImage rounds down to 1/255 steps."""
    from torchvision import transforms

    from rsc_core.training.trainer import aug01_apply, aug01_draws, augment_aug01

    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randint(0, 256, (24, 3, 32, 32)).astype(np.float32) / 255)
    patterned = rsc_core.create("patterns", "v20").apply(images[:8], 0)
    images = torch.cat([images, patterned])
    assert not torch.equal(patterned.mul(255).floor() / 255, patterned)  # R3 is not 8-bit
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dy, dx, flip = aug01_draws(len(images), torch.Generator().manual_seed(3))
    out = augment_aug01(images, torch.Generator().manual_seed(3))
    assert torch.equal(out, aug01_apply(images, dy, dx, flip))
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert bool(flip.any()) and not bool(flip.all()) and len(set(dy.tolist())) > 3
    for i, image in enumerate(images):
        reference = transforms.Compose([
            transforms.ToPILImage(), fixed_crop(int(dy[i]), int(dx[i])),
            transforms.RandomHorizontalFlip(p=1.0 if flip[i] else 0.0), transforms.ToTensor()])
        assert torch.equal(out[i], reference(image.contiguous())), i


def test_aug01_pads_with_zeros_and_keeps_8bit_images_exact():
    from rsc_core.training.trainer import aug01_apply

    ones = torch.ones(2, 3, 32, 32)
    corner = aug01_apply(ones, torch.tensor([0, 8]), torch.tensor([0, 8]),
                         torch.tensor([False, True]))
    assert torch.equal(corner[0, :, :4, :], torch.zeros(3, 4, 32))   # top padding
    assert torch.equal(corner[0, :, :, :4], torch.zeros(3, 32, 4))   # left padding
    assert torch.equal(corner[1, :, 28:, :], torch.zeros(3, 4, 32))  # bottom padding
    assert torch.equal(corner[1, :, :, :4], torch.zeros(3, 32, 4))   # right, mirrored left
    assert int(corner[0].sum()) == 3 * 28 * 28
    x = torch.from_numpy(np.random.RandomState(1).randint(0, 256, (4, 3, 32, 32))
                         .astype(np.float32) / 255)
    centre = aug01_apply(x, torch.full((4,), 4), torch.full((4,), 4), torch.zeros(4, dtype=bool))
    assert torch.equal(centre, x)  # offset 4 is the image itself, to the bit
    assert aug01_apply(x[:0], *(t[:0] for t in (torch.zeros(4, dtype=torch.int64),) * 2),
                       torch.zeros(0, dtype=bool)).shape == (0, 3, 32, 32)


# --------------------------------------------------------------------------- benchmark


def test_cifar_throughput_benchmark_runs_end_to_end(tiny_data):
    """Not a timing test: the benchmark script runs on the tiny CIFAR files in a fresh process
    (its DataLoader workers need a ``__main__`` guard), takes every measurement, and its ratios
    and verdicts follow from its own numbers."""
    import json
    import math
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar_throughput.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--data-dir", str(tiny_data.root), "--batches", "2",
         "--batch-size", "4", "--warmup-batches", "1", "--batch-work-batches", "3",
         "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    epoch = result["epoch_seconds"]
    variants = {"fp32-nchw", "fp32-channels_last"}
    if not result["bf16"].startswith("not available"):
        variants |= {"bf16-nchw", "bf16-channels_last"}
    user = {v for v in variants if v != "bf16-nchw"}  # (u): as users run it, no bf16 NCHW
    assert set(epoch) == {f"{kind}/{v}" for kind in ("rsc", "floor") for v in variants} | {
        f"user/{v}" for v in user} | {"ref/fp32-nchw", "batch_work/fp32-nchw"}
    settings = result["settings"]
    assert settings["epoch_batches"] == math.ceil(10 / 4) and settings["clock"] == "wall"
    for variant in user:  # the whole epoch: steps scaled, evaluation scaled, once-only spread
        [run] = result["samples"][f"user/{variant}"]
        assert run["evaluation_seconds"] > 0 and run["steps_seconds"] > 0
        assert run["evaluation_scale"] == 10_000 / settings["test_images"]
        assert run["epoch_seconds"] == pytest.approx(
            run["steps_seconds"] / 2 * 3 + run["evaluation_seconds"] * run["evaluation_scale"]
            + run["once_seconds"] / settings["run_epochs"])
        assert result["ratios"][f"user_over_floor/{variant}"] == pytest.approx(
            epoch[f"user/{variant}"] / epoch[f"floor/{variant}"])
        target = result["targets"][f"user/{variant}"]
        assert target["pass"] == (target["value"] <= 1.15)
    for name, runs in result["samples"].items():
        assert all(run["seconds"] > 0 and math.isfinite(run["train_loss"]) for run in runs)
    ref = result["samples"]["ref/fp32-nchw"][0]
    assert ref["epoch_seconds"] == pytest.approx(
        ref["first_batch_seconds"] + ref["steady_batch_seconds"] * 2)
    ratios = result["ratios"]
    for variant in variants:
        assert ratios[f"rsc_over_floor/{variant}"] == pytest.approx(
            epoch[f"rsc/{variant}"] / epoch[f"floor/{variant}"])
        assert ratios[f"ref_over_rsc/{variant}"] == pytest.approx(
            epoch["ref/fp32-nchw"] / epoch[f"rsc/{variant}"])
    assert ratios["batch_work_over_floor/fp32-nchw"] == pytest.approx(
        epoch["batch_work/fp32-nchw"] / epoch["floor/fp32-nchw"])
    targets = result["targets"]
    assert targets["vs_reference"]["pass"] == (ratios["ref_over_rsc/fp32-nchw"] >= 2.0)
    for variant in variants:
        target = targets[f"floor/{variant}"]
        assert target["pass"] == (target["value"] <= 1.15)


# --------------------------------------------------------------------------- CIFAR runs


def test_cifar_run_stopped_part_way_is_scored_from_its_latest_checkpoint(tiny_data, tmp_path,
                                                                           monkeypatch):
    """A CIFAR-sized run in CI, on tiny files in the real format: altResNet20Norm02 with
    aug01 is stopped after epoch 1 of 3; ``rsc score <run>/checkpoint.pt`` then gives the
    spurious score and clean accuracy of the weights so far (how the long real-data runs are
    read while they train), and the run resumes and finishes."""
    import json

    from click.testing import CliRunner
    from rsc_cli.main import cli

    from rsc_core.runs import training as runs_module
    from rsc_core.data.datasets import load_dataset
    from rsc_core.runs.training import train_run
    from rsc_core.evaluation.spurious_score import score_model
    from rsc_core.data.spec import SpuriousSpec
    from rsc_core.training.trainer import TrainConfig

    target = int(tiny_data["cifar10"].train.labels[0])
    spec = SpuriousSpec.build("cifar10", "v8", 1, target, 0)
    config = TrainConfig(arch="altResNet20Norm02", aug="aug01", optimizer="adam", lr=0.01,
                         batch_size=4, epochs=3)
    real_save = runs_module.save_checkpoint

    def save_then_stop(path, model, optimizer, scheduler, epoch, history, meta):
        real_save(path, model, optimizer, scheduler, epoch, history, meta)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_module, "save_checkpoint", save_then_stop)
    kwargs = dict(runs_dir=tmp_path / "runs", data_dir=tiny_data.root, progress=False,
                  device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, config, **kwargs)
    monkeypatch.setattr(runs_module, "save_checkpoint", real_save)
    [folder] = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    checkpoint_path = folder / "checkpoint.pt"
    checkpoint = read_checkpoint(checkpoint_path)
    assert checkpoint["epoch"] == 1 and "test_accuracy" in checkpoint["history"][-1]

    result = CliRunner().invoke(cli, ["score", str(checkpoint_path), "--data-dir",
                                      str(tiny_data.root), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output[result.output.index("{"):])
    assert (scored["pattern"], scored["target"], scored["seed"]) == ("v8", target, 0)
    model = build_model_from_checkpoint(checkpoint)
    test = load_dataset("cifar10", tiny_data.root).test
    direct = score_model(model, test, "v8", target, 0)
    assert scored["score"] == direct.score
    assert scored["clean_accuracy"] == direct.clean_accuracy
    assert scored["num_images"] == len(tiny_data["cifar10"].test.labels)

    finished = train_run(spec, config, **kwargs)
    assert finished.resumed_from == 1 and finished.run.finished
    assert [h["epoch"] for h in finished.run.metrics["history"]] == [1, 2, 3]

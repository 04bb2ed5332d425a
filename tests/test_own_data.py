"""Bring your own data and model (issue 22): an image folder and an array file declared in
rsc.toml run the whole path (train, score, mia with two shadows, remove); torchvision and timm
architectures train on them; a model trained outside rsc is imported and analysed; every kind
of bad input is one line and leaves nothing cached or half-written."""
from __future__ import annotations

import hashlib
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

import rsc_core
from rsc_cli.main import cli
from rsc_core.data.datasets import load_dataset
from rsc_core.errors import ConfigError, SpecError, UnknownNameError, UserConfigError
from rsc_core.runs.folder import Run
from rsc_core.evaluation.spurious_score import score_model
from rsc_core.data.spec import parse_spec
from rsc_core.data.planting import build_spurious_dataset
from rsc_core.training.trainer import parse_model_spec

SIDE = 16
CLASSES = ("ant", "bee")
PER_CLASS = {"train": 24, "test": 4}  # enough for a membership split: 3 class-0 rows a part


# -- building data in a temporary project ------------------------------------------------------
def pixels(seed: int, count: int, channels: int = 1, side: int = SIDE) -> np.ndarray:
    """uint8 count x C x side x side images, brighter for class 1 so a model can learn."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 200, size=(count, channels, side, side)).astype(np.uint8)


def save_image(path: Path, chw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(path)


def write_folder(root: Path, channels: int = 1, side: int = SIDE) -> dict[str, np.ndarray]:
    """An ImageFolder tree; returns the images in rsc's expected order ("class" order)."""
    written = {}
    for split, count in PER_CLASS.items():
        rows = []
        for label, name in enumerate(CLASSES):
            images = pixels(hash((split, label)) % 1000, count, channels, side)
            images += np.uint8(50 * label)
            for i, image in enumerate(images):
                save_image(root / split / name / f"{i:03d}.png", image)
            rows.append(images)
        written[split] = np.concatenate(rows)
    return written


def write_arrays(path: Path, channels: int = 1, layout: str = "nchw") -> dict[str, np.ndarray]:
    arrays = {}
    for split, count in PER_CLASS.items():
        labels = np.repeat(np.arange(2), count)
        images = pixels(7 if split == "train" else 8, labels.size, channels) + \
            (50 * labels).astype(np.uint8)[:, None, None, None]
        arrays[f"x_{split}"] = images if layout == "nchw" else images.transpose(0, 2, 3, 1)
        arrays[f"y_{split}"] = labels
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder (where rsc.toml is looked for) and a fresh plugin state."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RSC_CONFIG", raising=False)
    monkeypatch.setenv("RSC_RUNS_DIR", str(tmp_path / "runs"))
    rsc_core.reset_plugins()
    yield tmp_path
    rsc_core.reset_plugins()


def declare(project: Path, text: str) -> None:
    (project / "rsc.toml").write_text(text, encoding="utf-8")
    rsc_core.reset_plugins()


def rsc(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, prog_name="rsc")


def one_line_error(result: Result, *words: str) -> None:
    """Exit 2 and exactly one line, ``Error: ...``, holding ``words``."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


def cached(cache: Path) -> list[str]:
    folder = cache / "tensors"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- an image folder ----------------------------------------------------------------------------
def test_image_folder_decodes_exactly_in_class_order(project, _isolated_cache):
    written = write_folder(project / "bugs")
    declare(project, '[datasets.bugs]\nkind = "imagefolder"\npath = "bugs"\n')
    bundle = load_dataset("bugs")
    assert bundle.classes == CLASSES and bundle.input_shape == (1, SIDE, SIDE)
    assert torch.equal((bundle.train.images * 255).round().to(torch.uint8),
                       torch.from_numpy(written["train"]))
    assert bundle.train.labels.tolist() == [0] * 24 + [1] * 24
    assert bundle.test.labels.tolist() == [0] * 4 + [1] * 4
    assert len(cached(_isolated_cache)) == 1
    provider = rsc_core.create("datasets", "bugs")
    first = provider.load_raw(Path("unused")).digest
    assert len(first) == 64
    save_image(project / "bugs" / "train" / "ant" / "000.png", pixels(99, 1)[0])
    rsc_core.reset_plugins()  # an edited image is decoded again, with a new checksum
    again = rsc_core.create("datasets", "bugs").load_raw(Path("unused"))
    assert again.digest != first and len(cached(_isolated_cache)) == 1
    assert torch.equal(again.train_images[0], torch.from_numpy(pixels(99, 1)[0]))


def test_name_order_numbers_images_by_file_name_across_classes(project):
    """order = "name": file names give the indices (how MNIST written out keeps its own)."""
    labels = [1, 0, 0, 1, 1, 0]
    for index, label in enumerate(labels):
        for split in ("train", "test"):
            save_image(project / "mixed" / split / CLASSES[label] / f"{index:05d}.png",
                       np.full((1, 8, 8), index, np.uint8))
    declare(project, '[datasets.mixed]\nkind = "imagefolder"\npath = "mixed"\n'
                     'order = "name"\n')
    bundle = load_dataset("mixed")
    assert bundle.train.labels.tolist() == labels
    assert (bundle.train.images[:, 0, 0, 0] * 255).round().tolist() == list(range(6))
    # the spurious draw depends on positions and labels: the same as for any copy in this order
    spec = parse_spec("mixedv8-2-0-3")
    expected = np.random.RandomState(3).choice(np.where(np.array(labels) == 0)[0], 2, False)
    assert build_spurious_dataset(spec).spurious_indices.tolist() == expected.tolist()


def test_declared_size_resizes_or_refuses_and_channels_convert(project):
    write_folder(project / "big", channels=3, side=12)
    declare(project, '[datasets.big]\nkind = "imagefolder"\npath = "big"\nsize = 8\n'
                     'resize = true\nchannels = 1\n')
    bundle = load_dataset("big")
    assert bundle.input_shape == (1, 8, 8) and len(bundle.train) == 48
    declare(project, '[datasets.big]\nkind = "imagefolder"\npath = "big"\nsize = 8\n')
    with pytest.raises(rsc_core.errors.DatasetCorruptError, match="12x12.*resize = true"):
        load_dataset("big")


def test_every_pattern_draws_on_the_images_own_size_or_names_it(project):
    write_folder(project / "rgb", channels=3, side=12)
    declare(project, '[datasets.rgb]\nkind = "imagefolder"\npath = "rgb"\n')
    data = build_spurious_dataset("rgbv20-2-1-5")
    planted = data.train.images[torch.from_numpy(data.spurious_indices)]
    assert planted.shape[1:] == (3, 12, 12)
    clean = load_dataset("rgb").train.images[torch.from_numpy(data.spurious_indices)]
    assert not torch.equal(planted, clean)
    assert torch.equal(build_spurious_dataset("rgbv8-2-1-5").train.images[
        torch.from_numpy(data.spurious_indices)][:, :, :5, :5], torch.ones(2, 3, 5, 5))
    one_line_error(rsc("train", "--spec", "rgbv30-2-1-5", "--epochs", "1", "-q"),
                   "v30", "25x16", "12x12")
    assert not (project / "runs").exists() or not any(
        p for p in (project / "runs").iterdir() if not p.name.startswith("."))


def test_mnist_written_out_by_the_docs_script_is_mnist_again(project, dataset_writers,
                                                              monkeypatch):
    """docs/examples/write_imagefolder.py (no rsc code) writes an MNIST-format root as PNGs;
    with order = "name" the folder gives MNIST's tensors, indices and spurious images."""
    root = project / "data"
    dataset_writers.balanced_mnist(root, seed=5, train_per_class=3, test_per_class=1)
    script = Path(__file__).parent.parent / "docs" / "examples" / "write_imagefolder.py"
    monkeypatch.setattr(sys, "argv", [str(script), "mnist", str(root), "digits"])
    runpy.run_path(str(script), run_name="__main__")  # in-process: torch is imported already
    monkeypatch.setenv("RSC_DATA_DIR", str(root))
    declare(project, '[datasets.digits]\nkind = "imagefolder"\npath = "digits"\n'
                     'order = "name"\n')
    mnist, digits = load_dataset("mnist"), load_dataset("digits")
    for split in ("train", "test"):
        assert torch.equal(getattr(mnist, split).images, getattr(digits, split).images)
        assert torch.equal(getattr(mnist, split).labels, getattr(digits, split).labels)
    ours, theirs = build_spurious_dataset("digitsv20-2-3-1"), build_spurious_dataset(
        "mnistv20-2-3-1")
    assert ours.spurious_indices.tolist() == theirs.spurious_indices.tolist()
    assert torch.equal(ours.train.images, theirs.train.images)


# -- an array file ------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_arrays_decode_in_either_layout(project, layout):
    arrays = write_arrays(project / "scans.npz", channels=3, layout=layout)
    declare(project, '[datasets.scans]\nkind = "arrays"\npath = "scans.npz"\n'
                     'classes = ["ok", "bad"]\n')
    bundle = load_dataset("scans")
    x = arrays["x_train"] if layout == "nchw" else arrays["x_train"].transpose(0, 3, 1, 2)
    assert bundle.classes == ("ok", "bad") and bundle.input_shape == (3, SIDE, SIDE)
    assert torch.equal((bundle.train.images * 255).round().to(torch.uint8),
                       torch.from_numpy(x))


def test_a_pt_file_of_tensors_and_unit_floats_read_like_an_npz(project):
    arrays = write_arrays(project / "a.npz")
    torch.save({key: torch.from_numpy(value.astype(np.float32) / 255 if key[0] == "x"
                                      else value) for key, value in arrays.items()},
               project / "a.pt")
    declare(project, '[datasets.anpz]\nkind = "arrays"\npath = "a.npz"\n\n'
                     '[datasets.apt]\nkind = "arrays"\npath = "a.pt"\n')
    one, two = load_dataset("anpz"), load_dataset("apt")
    assert torch.equal(one.train.images, two.train.images)
    assert torch.equal(one.test.labels, two.test.labels) and one.classes == ("0", "1")


# -- the whole path on each kind of source ----------------------------------------------------
def declare_both(project: Path) -> None:
    write_folder(project / "bugs")
    write_arrays(project / "scans.npz")
    declare(project, '[datasets.bugs]\nkind = "imagefolder"\npath = "bugs"\n\n'
                     '[datasets.scans]\nkind = "arrays"\npath = "scans.npz"\n')


@pytest.mark.parametrize("name", ["bugs", "scans"])
def test_train_score_mia_with_two_shadows_and_remove(project, name):
    declare_both(project)
    recipe = ["--arch", "MLP", "--epochs", "1", "--batch-size", "16"]
    trained = rsc("train", "--spec", f"{name}v8-2-0-0", *recipe, "-q", "--json")
    assert trained.exit_code == 0, trained.output
    run = json.loads(trained.output)["run"]
    score = json.loads(rsc("score", run, "--json").output)
    assert score["num_images"] == 8 and 0 <= score["score"] <= 1
    mia = rsc("mia", "--spec", f"mem{name}v20-2-0-0", "--attack", "rmia:population=10",
              "--shadows", "2", *recipe, "-q", "--json", "--output", str(project / "mia"))
    assert mia.exit_code == 0, mia.output
    metrics = json.loads(mia.output)
    assert metrics["attacks"]["rmia:population=10"]["shadows"] == 2
    assert metrics["attacks"]["rmia:population=10"]["planted"]["count"] == 2
    removed = rsc("remove", run, "-m", "retrain", "-q", "--json")
    assert removed.exit_code == 0, removed.output
    removal = json.loads(removed.output)["removal"]
    assert removal["forget_set"]["size"] == 2 and removal["training_rows"]["after"] == 46
    listed = json.loads(rsc("runs", "list", "--where", f"dataset={name} and n=2",
                            "--json").output)
    assert {row["spec"] for row in listed} == {f"{name}v8-2-0-0", f"{name}v20-2-0-0"}
    sweep = rsc("sweep", "--preset", "score-vs-n", "--dataset", name, "--patterns", "v8",
                "--n", "0,2", "--seeds", "0", "--dry-run")
    assert sweep.exit_code == 0 and f"{name}v8-2-0-0" in sweep.output, sweep.output


def test_a_torchvision_model_trains_on_grey_images_and_falls_back_to_generic_hvp(project):
    declare_both(project)
    trained = rsc("train", "--spec", "bugsv8-2-0-0", "--arch", "torchvision:shufflenet_v2_x0_5",
                  "--epochs", "1", "--batch-size", "16", "-q", "--json")
    assert trained.exit_code == 0, trained.output
    run = Run.open(json.loads(trained.output)["run"])
    model = run.load_model()
    assert model.conv1[0].in_channels == 1  # the first convolution, adapted to grey images
    removed = rsc("remove", str(run.path), "-m", "group-influence", "--scale", "25",
                  "--depth", "2", "--repeats", "1", "-q", "--json")
    assert removed.exit_code == 0, removed.output  # no MLP fast path: torch.func's generic HVP
    assert json.loads(removed.output)["removal"]["l2_to_source"] > 0


def test_a_timm_model_trains_one_epoch(project):
    pytest.importorskip("timm")
    declare_both(project)
    for arch in ("timm:test_resnet", "timm:test_vit"):  # the ViT is rebuilt for 16x16 images
        trained = rsc("train", "--spec", "scansv20-2-1-0", "--arch", arch, "--epochs", "1",
                      "--batch-size", "16", "-q", "--json")
        assert trained.exit_code == 0, trained.output
        assert json.loads(trained.output)["epochs"] == 1


def test_family_names_resolve_or_say_what_is_wrong(project):
    entry = rsc_core.get("architectures", "torchvision:resnet18")
    assert entry.name == "torchvision:resnet18" and entry.source == "rsc"
    assert parse_model_spec("ce-tor-torchvision:resnet18").arch == "torchvision:resnet18"
    with pytest.raises(UnknownNameError, match="torchvision:resnet18"):
        rsc_core.get("architectures", "torchvision:resnet81")
    with pytest.raises(UnknownNameError, match="after the colon"):
        rsc_core.get("architectures", "torchvision:")
    with pytest.raises(ConfigError, match="cannot take 1x8x8 images"):
        rsc_core.create("architectures", "torchvision:alexnet").build((1, 8, 8), 2)


# -- models trained elsewhere -------------------------------------------------------------------
def train_outside(x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    """What a user does with torchvision alone: a few full-batch Adam steps."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    images, labels = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


def test_an_imported_model_is_scored_attacked_and_removed_from(project):
    write_arrays(project / "rgb.npz", channels=3)
    declare(project, '[datasets.rgb]\nkind = "arrays"\npath = "rgb.npz"\n')
    exported = rsc("data", "export", "memrgbv8-2-0-0", "-o", "target.npz")
    assert exported.exit_code == 0, exported.output
    target = np.load(project / "target.npz")
    model = train_outside(target["x_train"], target["y_train"])
    torch.save(model.state_dict(), project / "weights.pt")
    args = ["import", "weights.pt", "--arch", "torchvision:shufflenet_v2_x0_5", "--spec",
            "memrgbv8-2-0-0", "--epochs", "1", "--batch-size", "5", "--json"]
    imported = rsc(*args)
    assert imported.exit_code == 0, imported.output
    run = Run.open(json.loads(imported.output)["run"])
    assert run.name.endswith(run.name[-10:]) and "_imported-" in run.name
    assert run.spec.name == "rgbv8-2-0-0" and run.subset is not None
    expected = score_model(model, load_dataset("rgb").test, "v8", 0, 0)
    assert json.loads(rsc("score", str(run.path), "--json").output)["score"] == expected.score
    assert rsc(*args).output.count('"reused": true') == 1
    sensitivity = rsc("sensitivity", str(run.path), "--images", "4", "--steps", "3", "-o",
                      "s.png", "--json")
    assert sensitivity.exit_code == 0, sensitivity.output
    mia = rsc("mia", "--spec", "memrgbv8-2-0-0", "--attack", "shadow-lr", "--target-run",
              str(run.path), "-q", "--json", "--output", "mia")
    assert mia.exit_code == 0, mia.output
    assert json.loads(mia.output)["runs"]["target"] == [run.name]
    removed = rsc("remove", str(run.path), "-m", "retrain", "-q", "--json")
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.output)["removal"]["forget_set"]["size"] == 2


def test_import_with_an_index_file_of_images_planted_by_the_user(project):
    write_arrays(project / "rgb.npz", channels=3)
    declare(project, '[datasets.rgb]\nkind = "arrays"\npath = "rgb.npz"\n')
    data = load_dataset("rgb")
    model = train_outside(data.train.images.numpy(), data.train.labels.numpy())
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, "dp.pt")
    (project / "planted.txt").write_text("# my watermarked images\n3\n5\n")
    imported = rsc("import", "dp.pt", "--arch", "torchvision:shufflenet_v2_x0_5", "--dataset",
                   "rgb", "--planted", "planted.txt", "--epochs", "1", "--batch-size", "16",
                   "--json")
    assert imported.exit_code == 0, imported.output
    metrics = json.loads(imported.output)
    assert metrics["spurious_indices"] == [3, 5] and metrics["score"] is None
    scored = json.loads(rsc("score", metrics["run"], "--pattern", "v8", "--target", "1",
                            "--json").output)
    assert scored["score"] == score_model(model, data.test, "v8", 1, 0).score
    removed = rsc("remove", metrics["run"], "-m", "retrain", "-q", "--json")
    assert json.loads(removed.output)["removal"]["forget"] == [3, 5]


def test_import_refuses_pickled_models_and_weights_that_do_not_fit(project):
    write_arrays(project / "rgb.npz", channels=3)
    declare(project, '[datasets.rgb]\nkind = "arrays"\npath = "rgb.npz"\n')
    import torchvision

    model = torchvision.models.shufflenet_v2_x0_5(num_classes=2)
    torch.save(model, project / "whole.pt")
    torch.save(model.state_dict(), project / "weights.pt")
    base = ["--dataset", "rgb", "--arch"]
    one_line_error(rsc("import", "whole.pt", *base, "torchvision:shufflenet_v2_x0_5"),
                   "refuses to load", "torch.save(model.state_dict(), PATH)")
    one_line_error(rsc("import", "weights.pt", *base, "torchvision:shufflenet_v2_x1_0"),
                   "do not fit", "shape mismatches")
    one_line_error(rsc("import", "weights.pt", *base, "MLP"), "missing keys",
                   "unexpected keys")
    one_line_error(rsc("import", "weights.pt", "--spec", "rgbv8-2-0-0", "--dataset", "rgb"),
                   "not both")
    one_line_error(rsc("import", "weights.pt", *base, "torchvision:shufflenet_v2_x0_5",
                       "--planted", "3,48"), "planted index 48 is out of range", "0-47")
    assert not (project / "runs").exists() or not [
        p for p in (project / "runs").iterdir() if not p.name.startswith(".")]


# -- rsc.toml and rsc data add ------------------------------------------------------------------
def test_data_add_appends_keeps_comments_and_checks_first(project):
    write_folder(project / "bugs")
    (project / "rsc.toml").write_text("# my project\n[datasets.old]\nkind = \"arrays\"\n"
                                      "path = \"gone.npz\"\n")
    added = rsc("data", "add", "bugs", "bugs")
    assert added.exit_code == 0, added.output
    assert "48 training and 8 test images, 1 x 16 x 16, 2 classes (ant, bee)" in added.output
    text = (project / "rsc.toml").read_text()
    assert text.startswith("# my project\n") and '[datasets.bugs]\nkind = "imagefolder"\n' \
        'path = "bugs"\n' in text
    assert rsc("data", "summary", "--spec", "bugsv8-3-1-0").exit_code == 0
    before = (project / "rsc.toml").read_text()
    for args, words in ((("mnist", "bugs"), ("built-in",)), (("mnistv8", "bugs"), ("ambiguous",)),
                        (("memo", "bugs"), ("'mem'",)), (("bugs", "bugs"), ("already",)),
                        (("Bugs2", "bugs"), ("lower-case",))):
        one_line_error(rsc("data", "add", *args), *words)
        assert (project / "rsc.toml").read_text() == before


def test_a_broken_rsc_toml_stops_every_command_with_one_line(project):
    declare(project, "[datasets.x\nkind = 1\n")
    with pytest.raises(UserConfigError, match="rsc.toml is not valid TOML"):
        rsc_core.registry("datasets")
    one_line_error(rsc("data", "summary", "--spec", "mnist"), "rsc.toml", "not valid TOML")
    declare(project, '[datasets.mnist]\nkind = "imagefolder"\npath = "x"\n')
    one_line_error(rsc("train", "--spec", "mnistv8-3-0-0"), "built-in dataset")
    declare(project, '[datasets.x]\nkind = "folder"\npath = "x"\n')
    one_line_error(rsc("data", "summary", "--spec", "mnist"), "kind must be one of")
    declare(project, '[datasets.x]\nkind = "imagefolder"\npath = "x"\nsize = "big"\n')
    one_line_error(rsc("data", "summary", "--spec", "mnist"), "size must be")


def test_rsc_config_names_the_file_anywhere(project, monkeypatch):
    write_folder(project / "sub" / "bugs")
    (project / "sub" / "conf.toml").write_text('[datasets.bugs]\nkind = "imagefolder"\n'
                                               'path = "bugs"\n')
    monkeypatch.setenv("RSC_CONFIG", str(project / "sub" / "conf.toml"))
    rsc_core.reset_plugins()
    assert len(load_dataset("bugs").train) == 48  # path relative to the file, not the cwd
    monkeypatch.setenv("RSC_CONFIG", str(project / "new.toml"))  # not there yet: no datasets
    rsc_core.reset_plugins()
    assert "bugs" not in rsc_core.list_names("datasets")
    assert rsc("data", "add", "bugs", "sub/bugs").exit_code == 0  # creates it
    assert (project / "new.toml").read_text() == ('[datasets.bugs]\nkind = "imagefolder"\n'
                                                  'path = "sub/bugs"\n')
    monkeypatch.setenv("RSC_CONFIG", str(project))
    rsc_core.reset_plugins()
    with pytest.raises(UserConfigError, match="is a folder"):
        rsc_core.registry("datasets")


def test_a_name_that_shadows_a_builtin_spec_is_an_ambiguity_error(project):
    """rsc data add refuses such a name; written by hand, it makes those specs an error."""
    write_folder(project / "bugs")
    declare(project, '[datasets.mnistv8]\nkind = "imagefolder"\npath = "bugs"\n')
    with pytest.raises(SpecError, match="ambiguous: dataset 'mnistv8' or dataset 'mnist' with "
                                        "pattern 'v8'"):
        parse_spec("mnistv8-1-0-0")
    assert parse_spec("mnistv20-1-0-0").dataset == "mnist"  # every other head reads as before


# -- bad input: one clear error each, nothing half-cached --------------------------------------
def _empty_class(root: Path) -> None:
    (root / "train" / "wasp").mkdir()
    (root / "test" / "wasp").mkdir()
    save_image(root / "test" / "wasp" / "0.png", pixels(1, 1)[0])


def _train_only_class(root: Path) -> None:
    save_image(root / "train" / "wasp" / "0.png", pixels(1, 1)[0])


def _mixed_sizes(root: Path) -> None:
    save_image(root / "train" / "ant" / "999.png", pixels(1, 1, side=9)[0])


def _unreadable(root: Path) -> None:
    (root / "test" / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


@pytest.mark.parametrize("damage, words", [
    (_empty_class, ("wasp", "holds no image")),
    (_train_only_class, ("'wasp' is in train/ but not in test/",)),
    (_mixed_sizes, ("999.png is 9x9", "16x16", "resize = true")),
    (_unreadable, ("broken.png cannot be read",)),
])
def test_bad_image_folders(project, _isolated_cache, damage, words):
    write_folder(project / "bugs")
    damage(project / "bugs")
    declare(project, '[datasets.bugs]\nkind = "imagefolder"\npath = "bugs"\n')
    one_line_error(rsc("data", "summary", "--spec", "bugsv8-1-0-0"), *words)
    assert cached(_isolated_cache) == []
    one_line_error(rsc("train", "--spec", "bugsv8-1-0-0", "-q"), *words)


@pytest.mark.parametrize("arrays, words", [
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4, np.int64),
      "x_test": np.zeros((2, 8, 8), np.uint8)}, ("has no y_test",)),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(3, np.int64),
      "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.zeros(2, np.int64)},
     ("y_train", "shape (4,)")),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.arange(4) % 2,
      "x_test": np.zeros((2, 9, 9), np.uint8), "y_test": np.zeros(2, np.int64)},
     ("x_test holds 1 x 9 x 9", "1 x 8 x 8")),
    ({"x_train": np.zeros((4, 5, 8, 8), np.uint8), "y_train": np.arange(4) % 2,
      "x_test": np.zeros((2, 5, 8, 8), np.uint8), "y_test": np.zeros(2, np.int64)},
     ("(4, 5, 8, 8)", "C = 1 or 3")),
    ({"x_train": np.full((4, 8, 8), 0.3), "y_train": np.arange(4) % 2,
      "x_test": np.zeros((2, 8, 8)), "y_test": np.zeros(2, np.int64)}, ("multiples of 1/255",)),
])
def test_bad_array_files(project, _isolated_cache, arrays, words):
    np.savez(project / "bad.npz", **arrays)
    declare(project, '[datasets.bad]\nkind = "arrays"\npath = "bad.npz"\n')
    one_line_error(rsc("data", "summary", "--spec", "badv8-1-0-0"), *words)
    assert cached(_isolated_cache) == []


def test_a_missing_source_names_the_table_to_fix(project):
    declare(project, '[datasets.gone]\nkind = "imagefolder"\npath = "nowhere"\n')
    one_line_error(rsc("data", "summary", "--spec", "gonev8-1-0-0"), "nowhere does not exist",
                   "[datasets.gone]")
    assert "gone" in rsc_core.list_names("datasets")  # declaring costs nothing until used


def test_tree_checksum_is_of_paths_and_bytes(project):
    """The digest is SHA-256 over each image's split-relative path and SHA-256, in order."""
    write_folder(project / "bugs")
    declare(project, '[datasets.bugs]\nkind = "imagefolder"\npath = "bugs"\n')
    expected = hashlib.sha256()
    for split in ("train", "test"):
        for path in sorted((project / "bugs" / split).rglob("*.png")):
            expected.update(f"{split}/{path.relative_to(project / 'bugs' / split)}\0".encode())
            expected.update(hashlib.sha256(path.read_bytes()).digest())
    raw = rsc_core.create("datasets", "bugs").load_raw(Path("unused"))
    assert raw.digest == expected.hexdigest()

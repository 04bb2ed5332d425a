"""--precision bf16 (issue 11, mixed precision on CPU): recorded in the run config and hash,
refused with one line on a CPU without bfloat16 matrix instructions (unless emulation is
allowed), bf16 autocast around the forward with float32 losses, in single and group training;
old configs with "amp" still load, and fp32 runs keep the hashes they had before."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import rsc_core
from rsc_cli.main import cli
from rsc_cli.train_options import build_train_config
from rsc_core.training import hardware
from rsc_core.data.datasets import ImageData
from rsc_core.errors import ConfigError
from rsc_core.runs.groups import RunRequest, train_runs
from rsc_core.storage.atomic import write_json
from rsc_core.runs.folder import Run
from rsc_core.runs.training import find_run
from rsc_core.data.spec import SpuriousSpec, parse_spec
from rsc_core.training.trainer import TrainConfig
from rsc_plugins.trainers import erm, erm_group

ENV = hardware.ALLOW_EMULATED_ENV


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that has bfloat16 matrix instructions (whatever this machine has)."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)


@pytest.fixture
def plain_cpu(monkeypatch):
    """A CPU without them (AVX2 only, like the machine these numbers were measured on)."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)


def separable(n: int = 64) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 1, 4, 4, generator=generator) * 0.5 + labels.view(-1, 1, 1, 1) * 0.5
    return ImageData(images, labels.long())


def fit_recording(config: TrainConfig, monkeypatch) -> tuple[dict, object]:
    """Fit a tiny MLP, recording the dtype of the model's output (inside the autocast) and of
    the per-example losses the trainer computes."""
    seen: dict[str, set] = {"logits": set(), "losses": set()}
    make_loss = erm.make_loss

    def recording_loss(name):
        loss = make_loss(name)

        def wrapped(logits, y):
            out = loss(logits, y)
            seen["losses"].add(out.dtype)
            return out
        return wrapped

    monkeypatch.setattr(erm, "make_loss", recording_loss)
    torch.manual_seed(config.seed)
    model = rsc_core.create("architectures", config.arch).build((1, 4, 4), 2)
    model.register_forward_hook(lambda module, args, out: seen["logits"].add(out.dtype))
    state = rsc_core.create("trainers", "erm").fit(model, separable(), separable(), config)
    return seen, state


def test_precision_is_recorded_and_changes_the_hash(tmp_path):
    spec = parse_spec("mnistv20-3-0-0")
    fp32, bf16 = TrainConfig(), TrainConfig(precision="bf16")
    assert bf16.as_dict()["precision"] == "bf16"
    assert TrainConfig.from_dict(bf16.as_dict()) == bf16
    assert TrainConfig.from_dict(fp32.as_dict()) == fp32
    assert find_run(spec, fp32, tmp_path).path != find_run(spec, bf16, tmp_path).path
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        TrainConfig(precision="fp16")


def test_fp32_runs_keep_the_hash_they_had_before_precision_existed(tmp_path):
    # The folder of this run, trained on 2026-11-29 with "amp": false in its config.
    run = find_run(parse_spec("mnistv20-3-0-0"), TrainConfig(epochs=70), tmp_path)
    assert run.path.name == "mnistv20-3-0-0_ce-tor-LargeMLP_adam-lr0.01-b128-e70-s0-cb785be470"


def test_old_configs_with_amp_load(tmp_path):
    old = {key: value for key, value in TrainConfig(epochs=3).as_dict().items()}
    assert old.pop("amp") is False and "precision" not in old
    assert TrainConfig.from_dict({**old, "amp": False}).precision == "fp32"
    assert TrainConfig.from_dict({**old, "amp": True}).precision == "bf16"
    assert TrainConfig.from_dict(old).precision == "fp32"
    folder = tmp_path / "old-run"
    folder.mkdir()
    write_json(folder / "config.json", {"rsc_run": 2, "spec": parse_spec("mnist").as_dict(),
                                        "train": {**old, "amp": True}})
    assert Run(folder).train_config == TrainConfig(epochs=3, precision="bf16")


def test_amp_flag_is_an_alias_of_precision_bf16():
    values = dict(model_spec=None, arch="MLP", loss="ce", aug=None, optimizer="adam", lr=0.01,
                  momentum=0.0, batch_size=8, epochs=1, train_seed=0, milestones=None,
                  regularisers=(), weight_decay=None, grad_clip=None, input_noise=None)
    assert build_train_config(**values, amp=True).precision == "bf16"
    assert build_train_config(**values, amp=False).precision == "fp32"
    assert build_train_config(**values, amp=False, precision="bf16").precision == "bf16"
    assert build_train_config(**values, amp=True, precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="--amp means --precision bf16"):
        build_train_config(**values, amp=True, precision="fp32")


def test_bf16_on_a_cpu_without_the_instructions_is_refused_in_one_line(plain_cpu,
                                                                       monkeypatch):
    with pytest.raises(ConfigError) as error:
        hardware.check_precision("bf16", "cpu")
    message = str(error.value)
    assert "\n" not in message
    assert "lacks bfloat16 matrix instructions" in message and ENV in message
    hardware.check_precision("fp32", "cpu")  # fp32 is never refused
    hardware.check_precision("bf16", "cuda")  # CUDA's own bf16 is not this check's business
    with pytest.raises(ConfigError, match="cpu and cuda only"):
        hardware.check_precision("bf16", "meta")
    with pytest.raises(ConfigError, match="lacks bfloat16"):
        fit_recording(TrainConfig(arch="MLP", epochs=1, batch_size=16, precision="bf16"),
                      monkeypatch)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: None)  # not Linux: unknown
    with pytest.raises(ConfigError, match="cannot tell whether this CPU"):
        hardware.check_precision("bf16", "cpu")
    monkeypatch.setenv(ENV, "1")
    hardware.check_precision("bf16", "cpu")


def test_bf16_is_allowed_where_the_cpu_has_the_instructions(bf16_cpu):
    hardware.check_precision("bf16", torch.device("cpu"))


def test_detection_reads_the_cpuinfo_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(hardware.platform, "system", lambda: "Linux")
    for flags, expected in (("fpu sse2 avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                            ("avx2 amx_tile amx_bf16", True)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        hardware._cpu_flags.cache_clear()
        assert hardware.cpu_has_bf16() is expected
    hardware._cpu_flags.cache_clear()
    monkeypatch.setattr(hardware.platform, "system", lambda: "Darwin")
    assert hardware.cpu_has_bf16() is None
    hardware._cpu_flags.cache_clear()


def test_bf16_trains_in_bfloat16_with_float32_losses(bf16_cpu, monkeypatch):
    config = TrainConfig(arch="MLP", epochs=3, batch_size=16, precision="bf16")
    seen, state = fit_recording(config, monkeypatch)
    # Training batches run under autocast; evaluation stays in fp32 (as with --amp before).
    assert seen["logits"] == {torch.bfloat16, torch.float32}
    assert seen["losses"] == {torch.float32}
    assert all(isinstance(h["train_loss"], float) for h in state.history)
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    fp32, _ = fit_recording(TrainConfig(arch="MLP", epochs=1, batch_size=16), monkeypatch)
    assert fp32["logits"] == {torch.float32}


def test_emulation_can_be_allowed_by_the_environment(plain_cpu, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    seen, _ = fit_recording(TrainConfig(arch="MLP", epochs=1, batch_size=16,
                                        precision="bf16"), monkeypatch)
    assert torch.bfloat16 in seen["logits"]


@pytest.fixture
def data(tmp_path, dataset_writers):
    root = tmp_path / "data"
    written = dataset_writers.idx_dataset(root, "MNIST", seed=3, n_train=64, n_test=8)
    return root, int(written.train.labels[0])


def test_bf16_runs_train_together_in_a_group(bf16_cpu, data, tmp_path, monkeypatch):
    assert erm_group.group_key(TrainConfig(precision="bf16")) is not None
    assert erm_group.group_key(TrainConfig(precision="bf16")) != erm_group.group_key(
        TrainConfig())
    dtypes = set()
    forward = erm_group._Stack.forward

    def recording(self, x, train):
        out = forward(self, x, train)
        dtypes.add((train, out.dtype))
        return out

    monkeypatch.setattr(erm_group._Stack, "forward", recording)
    root, target = data
    config = TrainConfig(arch="LargeMLP", epochs=1, batch_size=16, precision="bf16")
    requests = [RunRequest(SpuriousSpec.build("mnist", "v20", 3, target, seed), config)
                for seed in (0, 1)]
    results = train_runs(requests, runs_dir=tmp_path / "runs", data_dir=root, progress=False,
                         device="cpu")
    assert all(r.error is None for r in results), [str(r.error) for r in results]
    assert [r.group_size for r in results] == [2, 2]
    assert dtypes == {(True, torch.bfloat16), (False, torch.float32)}
    assert results[0].outcome.run.config["train"]["precision"] == "bf16"


def test_rsc_train_refuses_emulated_bf16_in_one_line(plain_cpu, data, tmp_path):
    root, target = data
    args = ["train", "--spec", f"mnistv8-1-{target}-0", "--arch", "MLP", "--epochs", "1",
            "--quiet", "--data-dir", str(root), "--runs-dir", str(tmp_path / "runs"),
            "--device", "cpu"]
    for flags in (["--precision", "bf16"], ["--amp"]):
        result = CliRunner().invoke(cli, args + flags)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "lacks bfloat16" in result.output
        assert not any(Path(tmp_path / "runs").glob("*/model.pt"))
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--precision" in help_text and "Deprecated" in help_text


def test_emulated_bf16_is_refused_before_any_data_is_loaded(tmp_path, monkeypatch):
    """The refusal comes before the dataset is read: a missing data root is never reached."""
    from rsc_core.training import hardware
    from rsc_core.errors import ConfigError
    from rsc_core.runs.groups import RunRequest, train_runs
    from rsc_core.runs.training import train_run
    from rsc_core.data.spec import SpuriousSpec
    from rsc_core.training.trainer import TrainConfig

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    monkeypatch.delenv(hardware.ALLOW_EMULATED_ENV, raising=False)
    config = TrainConfig(arch="MLP", epochs=1, precision="bf16")
    with pytest.raises(ConfigError):
        train_run(SpuriousSpec.build("mnist"), config, runs_dir=tmp_path / "runs",
                  data_dir=tmp_path / "absent", progress=False, device="cpu")
    with pytest.raises(ConfigError):
        train_runs([RunRequest(SpuriousSpec.build("mnist"), config)], runs_dir=tmp_path / "r",
                   data_dir=tmp_path / "absent", progress=False, device="cpu")

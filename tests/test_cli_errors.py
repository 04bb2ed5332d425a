"""Every failure of the command line is ONE line on stderr starting with ``Error:`` and a
non-zero exit code: bad options, unusable folders, full disks, corrupt run files, numbers too
large to parse, interrupts. Nothing half-written or half-created is left behind.

Tests run as root, where chmod does not stop writes, so read-only folders and full disks are
simulated: an ``os.mkdir`` that fails with EROFS/EACCES, and files that take a few bytes and
then fail with ENOSPC, as on a full disk (or /dev/full, which fails every write that way)."""
from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner, Result

import rsc_core.storage.atomic as atomic
from rsc_cli.main import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, cli, os_error_message
from rsc_core.data.cache import CacheWarning
from rsc_core.errors import SpecError
from rsc_core.runs.folder import Run, run_slug
from rsc_core.data.spec import SpuriousSpec, parse_spec
from rsc_core.training.trainer import TrainConfig

BIG = "9" * 5000  # past Python's 4,300-digit int() limit
DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")


def rsc(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False,
                              prog_name="rsc")


def assert_one_line_error(result: Result, *fragments: str, exit_code: int = 2) -> str:
    """The command failed with exactly one ``Error:`` line containing every fragment."""
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in line, line
    return line


def run_folders(runs: Path) -> list[Path]:
    """Run folders under a runs root (the hidden .locks folder is not one)."""
    return [p for p in runs.iterdir() if not p.name.startswith(".")] if runs.is_dir() else []


def temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")] if root.exists() else []


@pytest.fixture
def train_args(tiny_data, tmp_path):
    """Arguments of a tiny spurious training run (5 MNIST images, MLP, batch 2)."""
    target = int(tiny_data["mnist"].train.labels[0])
    return ["train", "--spec", f"mnistv8-1-{target}-0", "--arch", "MLP", "--epochs", "1",
            "--batch-size", "2", "--quiet", "--data-dir", str(tiny_data.root),
            "--runs-dir", str(tmp_path / "runs")]


class FullDisk:
    """A file on a disk with ``room`` bytes left: writes beyond it store what fits and fail
    with ENOSPC, as a real full disk does (torch then fails again closing its archive)."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data):
        if len(data) > self.room:
            self.fh.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self) -> "FullDisk":
        return self

    def __exit__(self, *exc_info) -> None:
        self.fh.close()


def fill_disk(monkeypatch, full: Callable[[Path], bool] = lambda path: True,
              room: int = 1000) -> None:
    """Atomic writes (runs, caches) to the temporary files ``full(path)`` selects run out of
    disk space after ``room`` bytes."""
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return FullDisk(fh, room) if full(Path(file)) else fh

    monkeypatch.setattr(atomic, "open", open_, raising=False)


# --- the boundary: OS errors, interrupts, overflow, usage errors ----------------------------

@pytest.mark.parametrize("exc,fragments", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.pt"),
     ["no space left on device", "/runs/x/model.pt", "RSC_RUNS_DIR"]),
    (OSError(errno.ENOSPC, "No space left on device"), ["no space left on device"]),
    (OSError(errno.EROFS, "Read-only file system", "/ro/runs"),
     ["/ro/runs is not writable", "read-only", "--runs-dir"]),
    (PermissionError(errno.EACCES, "Permission denied", "/locked/cache"),
     ["/locked/cache is not writable", "permissions"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/metrics.json"),
     ["/x/metrics.json is a folder"]),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere/x"),
     ["/nowhere/x does not exist"]),
    (FileExistsError(errno.EEXIST, "File exists", "/x/runs"), ["a file of that name exists"]),
    (OSError(errno.EIO, "Input/output error", "/disk/x"), ["/disk/x: Input/output error"]),
])
def test_os_error_messages_say_what_and_where(exc, fragments):
    message = os_error_message(exc)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_not_a_directory_names_the_file_component(tmp_path):
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "runs" / "x"
    message = os_error_message(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path)))
    assert f"{tmp_path / 'afile'} is a file, not a folder" in message


@pytest.mark.parametrize("exc,fragments", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/MNIST/raw"),
     ["/data/MNIST/raw is not writable (or not readable)"]),
    (OSError(errno.ENOSPC, "No space left on device", "/cache/t.pt"),
     ["no space left on device while writing /cache/t.pt"]),
    (OverflowError("int too large to convert"), ["too large", "smaller values"]),
])
def test_errors_escaping_a_command_are_one_line(exc, fragments, monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("rsc_cli.data_commands.load_dataset", fail)
    assert_one_line_error(rsc("data", "summary", "--spec", "mnist", "--data-dir",
                              str(tmp_path)), *fragments)


def test_keyboard_interrupt_exits_130_with_one_line(monkeypatch, tmp_path):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("rsc_cli.data_commands.load_dataset", interrupt)
    result = rsc("data", "summary", "--spec", "mnist", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "interrupted", "run the same command again",
                          exit_code=EXIT_INTERRUPTED)


def test_interrupted_training_stays_resumable(train_args, tmp_path, monkeypatch):
    from rsc_core.runs import training as runs

    real_save = runs.save_checkpoint
    calls = []

    def save_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C while the second epoch is being saved
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    args = [*train_args[:train_args.index("--epochs") + 1], "2",
            *train_args[train_args.index("--epochs") + 2:]]
    monkeypatch.setattr(runs, "save_checkpoint", save_then_interrupt)
    assert_one_line_error(rsc(*args), "interrupted", exit_code=EXIT_INTERRUPTED)
    [folder] = run_folders(tmp_path / "runs")
    assert (folder / "checkpoint.pt").is_file() and not temporary_files(folder)
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    resumed = rsc(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from epoch 1" in resumed.output


def test_broken_pipe_exits_quietly(monkeypatch, tmp_path):
    def closed(*args, **kwargs):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr("rsc_cli.data_commands.load_dataset", closed)
    result = rsc("data", "summary", "--spec", "mnist", "--data-dir", str(tmp_path))
    assert result.exit_code == EXIT_BROKEN_PIPE and result.output == ""


@pytest.mark.parametrize("args,fragments", [
    (["--bogus"], ["No such option '--bogus'", "rsc --help"]),
    (["bogus"], ["No such command 'bogus'"]),
    (["train", "--epochs", "x"], ["'x' is not a valid integer", "rsc train --help"]),
    (["train", "--epochs", BIG], ["is not a valid integer", "(5000 digits)"]),
    (["score", "nowhere"], ["'nowhere' does not exist", "rsc score --help"]),
    (["patterns", "show", "v18", "--seed", "-1"], ["--seed", "0<=x<=4294967295"]),
])
def test_usage_errors_are_one_line(args, fragments):
    line = assert_one_line_error(rsc(*args), *fragments)
    assert len(line) < 300  # a 5,000-digit value is not echoed in full


# --- runs folders: read-only, under a file, full disk --------------------------------------

@pytest.mark.parametrize("code,reason", [(errno.EROFS, "Read-only file system"),
                                         (errno.EACCES, "Permission denied")])
def test_read_only_runs_dir_fails_before_loading_data(code, reason, tmp_path, monkeypatch):
    runs = tmp_path / "ro-runs"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(runs):
            raise OSError(code, reason, str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    # The data root does not exist: reaching the data would be a different error.
    result = rsc("train", "--spec", "mnistv8-1-0-0", "--arch", "MLP", "--epochs", "1",
                 "--data-dir", str(tmp_path / "no-data"), "--runs-dir", str(runs))
    assert_one_line_error(result, f"cannot write runs under {runs}", reason,
                          "--runs-dir or RSC_RUNS_DIR")
    assert not runs.exists()


@pytest.mark.parametrize("via_env", [False, True])
def test_runs_dir_under_a_file(via_env, train_args, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    runs = tmp_path / "afile" / "runs"
    args = [a if a != str(tmp_path / "runs") else str(runs) for a in train_args]
    if via_env:
        index = args.index("--runs-dir")
        del args[index:index + 2]
    result = rsc(*args, env={"RSC_RUNS_DIR": str(runs)} if via_env else None)
    assert_one_line_error(result, f"cannot write runs under {runs}", "Not a directory")


def test_full_disk_while_training_leaves_no_run_folder(train_args, tmp_path, monkeypatch):
    fill_disk(monkeypatch, lambda path: path.is_relative_to(tmp_path / "runs"), room=0)
    result = rsc(*train_args)
    line = assert_one_line_error(result, "no space left on device while writing",
                                 str(tmp_path / "runs"))
    assert "config.json" in line  # the first file a run writes
    runs = tmp_path / "runs"
    assert run_folders(runs) == [] and temporary_files(runs) == []


@pytest.mark.parametrize("room", [0, 1000])
def test_full_disk_at_a_checkpoint_names_it_and_removes_its_temp_file(room, train_args, tmp_path,
                                                                       monkeypatch):
    # torch.save itself hits the full disk, after config.json and the log were written.
    fill_disk(monkeypatch, lambda path: path.name.startswith(".checkpoint.pt."), room)
    line = assert_one_line_error(rsc(*train_args), "no space left on device")
    assert "checkpoint.pt" in line
    runs = tmp_path / "runs"
    assert run_folders(runs) == [] and temporary_files(runs) == []


def test_full_disk_for_the_dataset_cache_only_warns(tiny_data, _isolated_cache, monkeypatch):
    fill_disk(monkeypatch)
    with pytest.warns(CacheWarning, match="No space left on device"):
        result = rsc("data", "summary", "--spec", "mnist", "--data-dir", str(tiny_data.root),
                     "--json")
    assert result.exit_code == 0, result.output
    assert list(_isolated_cache.rglob("*.pt")) == [] and temporary_files(_isolated_cache) == []


# --- the atomic writer -----------------------------------------------------------------------

@pytest.mark.parametrize("room", [0, 1000])
@pytest.mark.parametrize("writer,value", [
    (atomic.write_torch, {"w": torch.zeros(1000)}),
    (atomic.write_json, {"a": list(range(1000))}),
    (atomic.write_text, "text" * 1000),
    (atomic.write_numpy, torch.zeros(1000).numpy()),
])
def test_atomic_write_on_a_full_disk(writer, value, room, tmp_path, monkeypatch):
    """The error is an OSError (ENOSPC) naming the real file, not the temporary one and,
    for torch, not torch's RuntimeError; the old file stays and no temporary is left."""
    path = tmp_path / "f.bin"
    path.write_text("old")
    fill_disk(monkeypatch, room=room)
    with pytest.raises(OSError) as info:
        writer(path, value)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_atomic_write_over_a_folder_names_the_destination(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic.write_json(tmp_path / "metrics.json", {})
    assert info.value.filename == str(tmp_path / "metrics.json")
    assert temporary_files(tmp_path) == []


@needs_dev_full
def test_run_log_on_a_full_disk_names_the_log(tmp_path):
    (tmp_path / "log.txt").symlink_to(DEV_FULL)
    with pytest.raises(OSError) as info:
        Run(tmp_path).log("start")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "log.txt")


# --- corrupt run files -------------------------------------------------------------------------

@pytest.mark.parametrize("garbage", ["garbage{", "[1, 2]", "\udcff"])
def test_corrupt_metrics_json_then_force(garbage, train_args, tmp_path):
    trained = rsc(*train_args, "--json")
    assert trained.exit_code == 0, trained.output
    run = Path(json.loads(trained.output)["run"])
    (run / "metrics.json").write_bytes(garbage.encode("utf-8", "surrogateescape"))
    metrics = str(run / "metrics.json")
    assert_one_line_error(rsc(*train_args), metrics, "corrupt", "--force")
    assert_one_line_error(rsc("score", str(run), "--data-dir", train_args[-3]), metrics,
                          "--force")
    forced = rsc(*train_args, "--force")
    assert forced.exit_code == 0, forced.output
    assert rsc("score", str(run), "--data-dir", train_args[-3]).exit_code == 0


# --- devices -----------------------------------------------------------------------------------

BAD_DEVICES = ["gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_bad_device_for_train_and_quickstart_creates_nothing(device, train_args, tmp_path):
    assert_one_line_error(rsc(*train_args, "--device", device), device)
    result = rsc("quickstart", "--epochs", "1", "--runs-dir", str(tmp_path / "qs"),
                 "--data-dir", train_args[-3], "-o", str(tmp_path / "q.png"),
                 "--device", device)
    assert_one_line_error(result, device)  # before "training ..." is printed
    assert run_folders(tmp_path / "runs") == [] and not (tmp_path / "qs").exists()
    assert not (tmp_path / "q.png").exists()


def test_gpu_device_error_lists_the_valid_devices(train_args):
    assert_one_line_error(rsc(*train_args, "--device", "gpu"), "auto, cpu, cuda")


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_bad_device_for_score_and_compare_even_when_cached(device, train_args):
    trained = rsc(*train_args, "--json")
    assert trained.exit_code == 0, trained.output
    run = json.loads(trained.output)["run"]  # its own score is cached at finish
    data = ["--data-dir", train_args[-3]]
    assert_one_line_error(rsc("score", run, *data, "--device", device), device)
    assert_one_line_error(rsc("compare", run, *data, "--device", device), device)


# --- numbers -------------------------------------------------------------------------------------

def test_spec_with_a_5000_digit_number(tmp_path):
    with pytest.raises(SpecError, match="5000 digits"):
        parse_spec(f"mnistv8-{BIG}-0-0")
    line = assert_one_line_error(rsc("data", "summary", "--spec", f"mnistv8-{BIG}-0-0",
                                     "--data-dir", str(tmp_path)), "5000 digits")
    assert len(line) < 300


def test_spec_numbers_may_have_leading_zeros():
    assert parse_spec(f"mnistv8-{'0' * 5000}3-0-0") == SpuriousSpec.build("mnist", "v8", 3,
                                                                             (0,), 0)


def test_huge_learning_rate_is_one_line_and_leaves_no_folder(train_args, tmp_path):
    # Beyond float32 the optimizers cannot even take the value (SGD overflowed with a
    # traceback): refused up front. Within float32, training diverges and says so.
    result = rsc(*train_args, "--lr", "1e308")
    assert_one_line_error(result, "1e+308", "larger than the largest float32")
    assert run_folders(tmp_path / "runs") == []
    result = rsc(*train_args, "--lr", "1e30")
    assert_one_line_error(result, "diverged", "lower learning rate")
    assert run_folders(tmp_path / "runs") == []


@pytest.mark.parametrize("lr", ["inf", "nan", "-inf"])
def test_non_finite_learning_rate_is_rejected(lr, train_args, tmp_path):
    assert_one_line_error(rsc(*train_args, "--lr", lr), "learning rate")
    assert run_folders(tmp_path / "runs") == []


@pytest.mark.parametrize("lr", [3e38, 1e-300, 0.0123456789])
def test_run_slug_round_trips_the_learning_rate(lr):
    slug = run_slug(SpuriousSpec.build("mnist"), TrainConfig(lr=lr))
    text = slug.split("-lr", 1)[1].split("-b", 1)[0]
    assert float(text) == lr


def test_huge_training_seed_is_one_line(train_args):
    assert_one_line_error(rsc(*train_args, "--train-seed", "1" + "0" * 30), "training seed")


def test_huge_pattern_seed_when_scoring_is_one_line(train_args):
    trained = rsc(*train_args, "--json")
    run = json.loads(trained.output)["run"]
    result = rsc("score", run, "--pattern", "v18", "--seed", "1" + "0" * 30, "--data-dir",
                 train_args[-3])
    assert_one_line_error(result, "pattern seed must be an integer in [0, 4294967295]")


def test_theory_overflow_is_one_line(tmp_path):
    assert_one_line_error(rsc("theory", "--x-inv", "1e308", "-o", str(tmp_path / "t.png")),
                          "overflow", "--x-inv")


# --- figures (-o) ---------------------------------------------------------------------------

def test_patterns_show_unsupported_extension_names_the_supported_ones(tmp_path):
    # The data root does not exist: the output is checked before any data is loaded.
    result = rsc("patterns", "show", "v8", "--data-dir", str(tmp_path / "no-data"), "-o",
                 str(tmp_path / "x.xyz"))
    assert_one_line_error(result, "unsupported extension '.xyz'", "png", "pdf", "svg")


def test_patterns_show_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    for output in (tmp_path / "afile" / "x.png", tmp_path / "afile" / "sub" / "x.png"):
        result = rsc("patterns", "show", "v8", "--data-dir", str(tmp_path / "no-data"), "-o",
                     str(output))
        assert_one_line_error(result, f"{tmp_path / 'afile'} is a file, not a folder")


def test_patterns_show_into_an_unwritable_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("rsc_core.plots.os.access", lambda path, mode: False)
    result = rsc("patterns", "show", "v8", "--data-dir", str(tmp_path / "no-data"), "-o",
                 str(tmp_path / "x.png"))
    assert_one_line_error(result, "is not writable")


def test_patterns_show_creates_missing_folders_and_other_formats(tiny_data, tmp_path):
    output = tmp_path / "new" / "folder" / "x.pdf"
    result = rsc("patterns", "show", "v8", "--data-dir", str(tiny_data.root), "--count", "2",
                 "-o", str(output))
    assert result.exit_code == 0, result.output
    assert output.read_bytes().startswith(b"%PDF")


def test_patterns_show_on_a_full_disk_leaves_no_partial_figure(tiny_data, tmp_path,
                                                              monkeypatch):
    (tmp_path / "fig").mkdir()
    output = tmp_path / "fig" / "x.png"

    def savefig(self, fname, *args, **kwargs):  # half a PNG, then the disk is full
        with open(fname, "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", savefig)
    result = rsc("patterns", "show", "v8", "--data-dir", str(tiny_data.root), "--count", "2",
                 "-o", str(output))
    assert_one_line_error(result, "no space left on device while writing", str(output))
    assert list((tmp_path / "fig").iterdir()) == []


def test_theory_output_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = rsc("theory", "--points", "3", "-o", str(tmp_path / "afile" / "t.png"))
    assert_one_line_error(result, "is a file, not a directory")


def test_quickstart_checks_its_output_before_training(tiny_data, tmp_path):
    for output, fragment in ((tmp_path / "q.xyz", "unsupported extension"),
                             (tmp_path / "q.png" / "x.png", "is a file")):
        (tmp_path / "q.png").write_text("x")
        result = rsc("quickstart", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"),
                     "--data-dir", str(tiny_data.root), "-o", str(output))
        assert_one_line_error(result, fragment)
        assert not (tmp_path / "runs").exists()  # nothing was trained

"""The GPU check (issue 21): everything rsc should confirm on one CUDA GPU, in one call of at most
10 minutes, written under one folder. ``benchmarks/gpu_check.sh`` is the entry point.

Steps, in order (each one's result, or its error, goes into ``summary.json``; a failing step
does not stop the others):

  architectures  every built-in architecture trained for one epoch by the ``erm`` trainer with
                 the data resident on the GPU (MLPs and CNN002 on MNIST, the others on CIFAR-10;
                 at most ``--arch-images`` training images each, so VGG-16 and ResNet-110 fit
                 the time), then evaluated on the test split: seconds, loss, accuracy.
  logits         one checkpoint (altResNet20Norm02 from the step above, saved and read back
                 with rsc's checkpoint functions) evaluated on CPU and on GPU: the largest
                 logit difference and the share of equal predictions, with cuDNN's TF32 on
                 (torch's default for convolutions) and off.
  cifar_epoch    ``benchmarks/cifar_throughput.py --device cuda`` on whole epochs: rsc's
                 trainer, rsc as a user runs it and the floor, fp32 / channels-last / bf16.
  multi_model    ``benchmarks/multi_model.py --device cuda`` at K = 8 and 64 against the
                 single trainer (LargeMLP, MNIST).
  cifar_runs     the study's CIFAR-10 runs (``rsc train``: the clean model, then
                 cifar10v8-10-0-0 and cifar10v8-100-0-0; altResNet20Norm02, aug01, Adam lr 0.01,
                 batch 128, 70 epochs, training seed 0) for as long as the budget allows; a run
                 cut off keeps its last epoch's checkpoint in ``runs/`` (rsc resumes it).

Refuses at once, with exit status 2 and one line, when no CUDA device is present. The budget
(``--budget-seconds``) is wall-clock from the start; every step is given what is left.

Run:  RSC_DATA_DIR=/path/to/data benchmarks/gpu_check.sh      (writes under $OUT if set)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("architectures", "logits", "cifar_epoch", "multi_model", "cifar_runs")
CIFAR_RUNS = ("cifar10", "cifar10v8-10-0-0", "cifar10v8-100-0-0")
CIFAR_RECIPE = ("--model", "aug01-ce-tor-altResNet20Norm02", "--optimizer", "adam", "--lr",
                "0.01", "--batch-size", "128", "--epochs", "70", "--train-seed", "0")
NO_CUDA_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None,
                        help="output folder (default: $OUT, else ./gpu-check-out)")
    parser.add_argument("--budget-seconds", type=float, default=540.0,
                        help="wall-clock budget of the whole check (default 540: 9 minutes)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated steps to run (default: all of {', '.join(STEPS)})")
    parser.add_argument("--arch-images", type=int, default=10_000,
                        help="at most this many training images per architecture (0: all)")
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: RSC_DATA_DIR / rsc's default)")
    parser.add_argument("--device", default="cuda", help="the CUDA device (cuda, cuda:1, ...)")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    if args.budget_seconds <= 0 or args.arch_images < 0:
        parser.error("--budget-seconds must be positive and --arch-images non-negative")
    args.steps = steps
    args.out = Path(args.out or os.environ.get("OUT") or "gpu-check-out")
    return args


def require_cuda(device: str) -> None:
    """Exit with one clear line when there is no CUDA device: nothing here makes sense on
    a CPU, and a CPU fallback would report CPU numbers as GPU ones."""
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False); this check needs one GPU",
              file=sys.stderr)
        raise SystemExit(NO_CUDA_EXIT)
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        print(f"gpu_check: {device} does not exist ({torch.cuda.device_count()} CUDA "
              f"device(s))", file=sys.stderr)
        raise SystemExit(NO_CUDA_EXIT)


class Budget:
    """Seconds left of the check's wall-clock budget."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


# --------------------------------------------------------------------------- steps


def step_architectures(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    import torch

    import rsc_core
    from rsc_core.runs.checkpoints import save_checkpoint
    from rsc_core.data.datasets import load_dataset
    from rsc_core.evaluation.predictions import loss_and_accuracy
    from rsc_core.training.memory_format import use_channels_last
    from rsc_core.training.trainer import TrainConfig, make_loss

    device = torch.device(args.device)
    bundles = {name: load_dataset(name, args.data_dir) for name in ("mnist", "cifar10")}
    resident = {name: _resident(b, args.arch_images, device) for name, b in bundles.items()}
    results: dict[str, Any] = {}
    for arch in rsc_core.list_names("architectures"):
        if budget.left() < 30:
            results[arch] = {"skipped": "budget spent"}
            continue
        dataset = "mnist" if "MLP" in arch or arch == "CNN002" else "cifar10"
        train, test = resident[dataset]
        torch.manual_seed(0)
        model = rsc_core.create("architectures", arch).build(tuple(train.images.shape[1:]), 10)
        config = TrainConfig(arch=arch, optimizer="adam", lr=0.001, batch_size=128, epochs=1,
                             aug="aug01" if dataset == "cifar10" else None)
        _synchronize(device)
        started = time.perf_counter()
        state = rsc_core.create("trainers", "erm").fit(
            model, train, None, config, device=device,
            channels_last=use_channels_last("auto", model))  # as rsc train does
        _synchronize(device)
        seconds = time.perf_counter() - started
        loss, accuracy = loss_and_accuracy(model, test.images, test.labels,
                                           make_loss("ce"), device)
        results[arch] = {"dataset": dataset, "train_images": len(train), "seconds": seconds,
                         "train_loss": state.history[-1]["train_loss"],
                         "test_loss": loss, "test_accuracy": accuracy}
        if arch == "altResNet20Norm02":
            meta = {"arch": arch, "input_shape": list(train.images.shape[1:]),
                    "num_classes": 10, "config": config.as_dict()}
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
            save_checkpoint(args.out / "altResNet20Norm02.pt", model, optimizer, scheduler,
                            1, state.history, meta)
        print(f"  {arch}: {seconds:.1f} s, test accuracy {accuracy:.3f}", flush=True)
    return results


def _synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _resident(bundle: Any, limit: int, device: Any) -> tuple[Any, Any]:
    from rsc_core.data.datasets import ImageData

    n = len(bundle.train.labels) if limit == 0 else min(limit, len(bundle.train.labels))
    train = ImageData(bundle.train.images[:n].to(device), bundle.train.labels[:n].to(device))
    return train, ImageData(bundle.test.images.to(device), bundle.test.labels.to(device))


def step_logits(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    import torch

    from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
    from rsc_core.data.datasets import load_dataset
    from rsc_core.evaluation.predictions import predict_logits

    path = args.out / "altResNet20Norm02.pt"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: the architectures step writes it")
    model = build_model_from_checkpoint(read_checkpoint(path))
    images = load_dataset("cifar10", args.data_dir).test.images[:1000]
    on_cpu = predict_logits(model.cpu(), images, "cpu")
    result: dict[str, Any] = {"images": len(images)}
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        on_gpu = predict_logits(model.to(args.device), images, args.device)
        model.cpu()
        key = "tf32_on" if tf32 else "tf32_off"
        result[key] = {"max_abs_difference": float((on_gpu - on_cpu).abs().max()),
                       "max_abs_logit": float(on_cpu.abs().max()),
                       "same_prediction": float((on_gpu.argmax(1) == on_cpu.argmax(1))
                                                .float().mean())}
    torch.backends.cudnn.allow_tf32 = True
    return result


def step_cifar_epoch(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    return _script(args, budget, "cifar_throughput.py",
                   ["--device", args.device, "--batches", "0", "--warmup-batches", "20",
                    "--skip-reference", "--json"], share=0.5)


def step_multi_model(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    return _script(args, budget, "multi_model.py",
                   ["--device", args.device, "--batches", "469", "--ks", "8", "64",
                    "--repeats", "2", "--mm-size", "4096", "--json"], share=0.5)


def _script(args: argparse.Namespace, budget: Budget, name: str, options: list[str],
            share: float) -> dict[str, Any]:
    """Run a benchmark script with ``--json`` in a child process, limited to ``share`` of
    the budget left (at least 30 s), and return its JSON."""
    limit = max(30.0, budget.left() * share)
    command = [sys.executable, str(ROOT / "benchmarks" / name), *options]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=limit,
                               cwd=ROOT)
    (args.out / f"{Path(name).stem}.stderr.txt").write_text(completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{name} exited with {completed.returncode}: "
                           f"{completed.stderr.strip().splitlines()[-1:]}")
    (args.out / f"{Path(name).stem}.json").write_text(completed.stdout)
    return json.loads(completed.stdout)


def step_cifar_runs(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """The study's CIFAR-10 runs one after another until the budget is spent. Each is cut
    off 20 s before the end (killed; its last epoch's checkpoint stays in ``runs/``)."""
    results: dict[str, Any] = {}
    for spec in CIFAR_RUNS:
        limit = budget.left() - 20
        if limit < 30:
            results[spec] = {"status": "not started: budget spent"}
            continue
        command = [sys.executable, "-m", "rsc_cli", "train", "--spec", spec, *CIFAR_RECIPE,
                   "--device", args.device, "--runs-dir", str(args.out / "runs"), "-q",
                   "--json"]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        started = time.perf_counter()
        try:
            completed = subprocess.run(command, capture_output=True, text=True,
                                       timeout=limit, cwd=ROOT)
        except subprocess.TimeoutExpired:
            results[spec] = {"status": "cut off by the budget", "seconds": limit,
                             "epochs_done": _epochs_done(args.out / "runs")}
            continue
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            results[spec] = {"status": f"failed ({completed.returncode})",
                             "stderr": completed.stderr[-2000:], "seconds": seconds}
            continue
        results[spec] = {"status": "finished", "seconds": seconds,
                         "metrics": json.loads(completed.stdout[completed.stdout.index("{"):])}
    return results


def _epochs_done(runs: Path) -> dict[str, int]:
    """Epochs each run folder reached (from its last checkpoint's log lines)."""
    done = {}
    for log in sorted(runs.glob("*/log.txt")):
        epochs = [json.loads(line.split(" ", 1)[1]).get("epoch", 0)
                  for line in log.read_text().splitlines() if " {" in line]
        done[log.parent.name] = max(epochs, default=0)
    return done


STEP_FUNCTIONS: dict[str, Callable[[argparse.Namespace, Budget], dict[str, Any]]] = {
    "architectures": step_architectures, "logits": step_logits,
    "cifar_epoch": step_cifar_epoch, "multi_model": step_multi_model,
    "cifar_runs": step_cifar_runs,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_cuda(args.device)
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput as base

    budget = Budget(args.budget_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"machine": base.machine_info(),
                               "gpu": torch.cuda.get_device_name(args.device), "steps": {}}
    for step in args.steps:
        started = time.perf_counter()
        print(f"gpu_check: {step} ({budget.left():.0f} s left)", flush=True)
        try:
            result = {"status": "ok", "result": STEP_FUNCTIONS[step](args, budget)}
        except Exception as exc:  # a failing step is recorded; the others still run
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - started, 1)
        summary["steps"][step] = result
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        print(f"gpu_check: {step} {result['status']} in {result['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

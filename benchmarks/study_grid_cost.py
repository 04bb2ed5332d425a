"""What the study's full MNIST grid costs on this machine, projected from a short measurement,
against its FLOP floor measured in the same run (issue 21).

The grid: 7 patterns x n in {0, 1, 3, 5, 10, 20, 50, 100} x dataset seeds 0-4, LargeMLP,
70 epochs, training seed 0. At n = 0 every pattern and seed is the same clean dataset, so it
is ONE run (``rsc train`` reuses it): 7 x 7 x 5 + 1 = 246 distinct runs, 17,220 model-epochs
(280 runs, 19,600 model-epochs if n = 0 were trained per pattern and seed).

Measured, in one process, on the first ``--batches`` batches of MNIST (batch 128, Adam lr
0.01, fused), scaled to the 469-batch epoch:

  single    the ``erm`` trainer, one model (``rsc train --group-size 1``)
  group K   the multi-model trainer at each K of ``--ks`` (``rsc train --group-size K``)
  eval      the per-epoch evaluation of one model on MNIST's 10,000 test images
  matmul    fp32 ``torch.mm`` of ``--mm-size`` squares at the benchmark's thread count: the
            machine's matmul peak for this process

Per model-epoch = training (per model) + eval. The FLOP floor of the grid = model-epochs x
LargeMLP's forward + backward FLOPs per epoch (60,000 x 2,006,016 = 120.4 GFLOP;
``train_throughput.FLOPS_PER_EXAMPLE``) / the matmul peak: no trainer can beat it on this
processor. ``--cpu-time`` times with the process's CPU time (one thread), which on a shared
machine measures the work rather than the share of the cores the other processes leave;
core-hours are then CPU-hours of one core.

Run:  RSC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE \\
      .venv/bin/python benchmarks/study_grid_cost.py --cpu-time [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import multi_model  # noqa: E402
import train_throughput as base  # noqa: E402

PATTERNS = 7
NS = (0, 1, 3, 5, 10, 20, 50, 100)
SEEDS = 5
EPOCHS = 70
EPOCH_EXAMPLES = 60_000
EPOCH_GFLOP = EPOCH_EXAMPLES * base.FLOPS_PER_EXAMPLE / 1e9


def grid_runs() -> tuple[int, int]:
    """(distinct runs, nominal runs): n = 0 is one clean run for every pattern and seed."""
    nonzero = sum(1 for n in NS if n > 0)
    return PATTERNS * nonzero * SEEDS + (1 if 0 in NS else 0), PATTERNS * len(NS) * SEEDS


def time_evaluation(clock: Callable[[], float], data_dir: str | None) -> float:
    """One model's per-epoch evaluation on the MNIST test split, as the trainer runs it."""
    import rsc_core
    from rsc_core.data.datasets import load_dataset
    from rsc_core.evaluation.predictions import loss_and_accuracy
    from rsc_core.training.trainer import make_loss
    from rsc_plugins.trainers.erm import EVAL_BATCH

    test = load_dataset("mnist", data_dir).test
    model = rsc_core.create("architectures", "LargeMLP").build((1, 28, 28), 10)
    started = clock()
    loss_and_accuracy(model, test.images, test.labels, make_loss("ce"), "cpu",
                      batch_size=EVAL_BATCH)
    return (clock() - started) * 10_000 / len(test.labels)


def matmul_peak(size: int, reps: int, clock: Callable[[], float]) -> float:
    """GFLOP/s of fp32 ``torch.mm`` at this process's thread count, on ``clock``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    started = clock()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * size**3 * reps / (clock() - started) / 1e9


def measure(args: argparse.Namespace) -> dict[str, Any]:
    clock = time.process_time if args.cpu_time else time.perf_counter
    train = multi_model.subset(args.batches, args.data_dir)
    scale = multi_model.EPOCH_BATCHES / math.ceil(len(train) / base.BATCH_SIZE)
    timers: dict[str, Callable[[], float]] = {
        "single": lambda: multi_model.time_single(train, "cpu", clock) * scale,
        "eval": lambda: time_evaluation(clock, args.data_dir),
        "matmul_gflops": lambda: matmul_peak(args.mm_size, args.mm_reps, clock)}
    for k in args.ks:
        timers[f"group{k}"] = lambda k=k: multi_model.time_group(train, k, "cpu", clock) * scale / k
    for timer in timers.values():  # warm-up
        timer()
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for repeat in range(args.repeats):  # interleaved, rotated
        names = list(timers)
        names = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in names:
            samples[name].append(timers[name]())
    median = {name: statistics.median(values) for name, values in samples.items()}
    return {"machine": base.machine_info(), "clock": "cpu" if args.cpu_time else "wall",
            "batches": args.batches, "samples": samples, "median": median,
            "projection": project(median)}


def project(median: dict[str, float]) -> dict[str, Any]:
    """The grid's hours for each trainer (training per model + evaluation) and its floor."""
    distinct, nominal = grid_runs()
    model_epochs = distinct * EPOCHS
    floor_seconds = EPOCH_GFLOP / median["matmul_gflops"]
    rows = {"FLOP floor (matmul peak)": floor_seconds}
    for name, seconds in median.items():
        if name == "single" or name.startswith("group"):
            rows[name] = seconds + median["eval"]
    return {"distinct_runs": distinct, "nominal_runs": nominal, "model_epochs": model_epochs,
            "epoch_gflop": EPOCH_GFLOP,
            "rows": {name: {"seconds_per_model_epoch": s, "grid_hours": s * model_epochs / 3600,
                            "over_floor": s / floor_seconds}
                     for name, s in rows.items()}}


def print_report(result: dict[str, Any]) -> None:
    info, projection = result["machine"], result["projection"]
    print(f"{info['cpu_model']} ({' '.join(info.get('cpu_vector_flags') or [])}), "
          f"{info['torch_threads']} thread(s), {result['clock']} time, load average "
          f"{info['load_average_at_start']} at start; {result['batches']} batches per sample")
    print(f"grid: {projection['distinct_runs']} distinct runs ({projection['nominal_runs']} "
          f"nominal) x {EPOCHS} epochs = {projection['model_epochs']} model-epochs; evaluation "
          f"{result['median']['eval']:.3f} s per model-epoch; matmul peak "
          f"{result['median']['matmul_gflops']:.1f} GFLOP/s")
    print(f"{'trainer':>26} {'s / model-epoch':>16} {'grid hours':>11} {'x floor':>8}")
    for name, row in projection["rows"].items():
        print(f"{name:>26} {row['seconds_per_model_epoch']:>16.3f} {row['grid_hours']:>11.1f} "
              f"{row['over_floor']:>8.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batches", type=int, default=40, help="batches per sample")
    parser.add_argument("--ks", type=int, nargs="*", default=[8, 16],
                        help="group sizes of the multi-model trainer to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mm-size", type=int, default=1024)
    parser.add_argument("--mm-reps", type=int, default=10)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time (use with one thread)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.repeats < 1 or any(k < 2 for k in args.ks):
        parser.error("--batches and --repeats must be at least 1, every K at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

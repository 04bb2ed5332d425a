"""fp32 against bf16 autocast (``--precision bf16``) on this machine's CPU: speed, and what
bf16 does to clean accuracy and the spurious score.

Speed: rsc's ``erm`` trainer (LargeMLP, batch 128, Adam lr 0.01, cross-entropy, fused Adam) on
the first ``--batches`` batches of full MNIST's training set, no evaluation, ``--repeats``
times with fp32 and bf16 interleaved (their order alternating), each after a short warm-up on
a throwaway copy of the model; the median is extrapolated to a full epoch (469 batches).

Effect: ``train_run`` of each ``--spec`` for ``--epochs`` epochs in fp32 and in bf16 (training
seed 0, otherwise the defaults above) in a temporary runs folder; reports each run's clean test
accuracy, spurious score and seconds per epoch (training + evaluation, from its history).
With ``--rounding-control`` each spec is also trained in fp32 with Adam's ``foreach`` kernel,
which changes nothing but rounding: how far its scores move from fp32's is the yardstick for
bf16's (a few memorised examples are sensitive to any rounding change).

On a CPU without bfloat16 matrix instructions bf16 is emulated; the script then sets
RSC_ALLOW_EMULATED_BF16=1 for itself (that is what it measures) and says so.

Run:  RSC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/precision.py [--json]
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

import rsc_core
from rsc_core.training import hardware
from rsc_core.data.datasets import ImageData, load_dataset
from rsc_core.runs.training import train_run
from rsc_core.data.spec import parse_spec
from rsc_core.training.trainer import TrainConfig

PRECISIONS = ("fp32", "bf16")
BATCH_SIZE = 128


def machine() -> dict[str, Any]:
    """What the numbers depend on; the load average says whether the CPU was shared."""
    model = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.lower().startswith("model name")), model)
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu_model": model, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            **hardware.hardware_report()}


def progress(line: str) -> None:
    """Each measurement as it is taken (stderr), so a long run that is cut short keeps them."""
    print(line, file=sys.stderr, flush=True)


def config(precision: str, epochs: int = 1, adam_impl: str = "fused") -> TrainConfig:
    return TrainConfig(arch="LargeMLP", optimizer="adam", lr=0.01, batch_size=BATCH_SIZE,
                       epochs=epochs, precision=precision, adam_impl=adam_impl)


def time_batches(x: torch.Tensor, y: torch.Tensor, precision: str, warmup: int) -> float:
    """Seconds for one ``erm`` epoch over ``x`` (a fixed number of batches)."""
    trainer = rsc_core.create("trainers", "erm")
    torch.manual_seed(0)
    model = rsc_core.create("architectures", "LargeMLP").build((1, 28, 28), 10)
    n = warmup * BATCH_SIZE
    trainer.fit(copy.deepcopy(model), ImageData(x[:n], y[:n]), None, config(precision))
    started = time.perf_counter()
    trainer.fit(model, ImageData(x, y), None, config(precision))
    return time.perf_counter() - started


def measure_speed(data_dir: str | None, batches: int, repeats: int,
                  warmup: int) -> dict[str, Any]:
    train = load_dataset("mnist", data_dir).train
    n = batches * BATCH_SIZE
    x, y = train.images[:n].contiguous(), train.labels[:n].contiguous()
    per_epoch = math.ceil(len(train) / BATCH_SIZE) / batches
    samples: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for repeat in range(repeats):
        order = PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]
        for precision in order:
            samples[precision].append(time_batches(x, y, precision, warmup))
            progress(f"{precision}: {samples[precision][-1]:.3f} s for {batches} batches")
    result = {p: {"seconds_per_batches": s, "median_epoch_seconds":
                  statistics.median(s) * per_epoch} for p, s in samples.items()}
    result["bf16_over_fp32"] = (result["bf16"]["median_epoch_seconds"]
                                / result["fp32"]["median_epoch_seconds"])
    return {"batches": batches, "repeats": repeats, **result}


def measure_effect(specs: list[str], epochs: int, data_dir: str | None,
                   rounding_control: bool) -> list[dict]:
    variants = [(p, "fused") for p in PRECISIONS]
    variants += [("fp32", "foreach")] if rounding_control else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsc-precision-") as runs_dir:
        for name in specs:
            for precision, adam_impl in variants:
                run = train_run(parse_spec(name), config(precision, epochs, adam_impl),
                                runs_dir=runs_dir, data_dir=data_dir, progress=False,
                                device="cpu").run
                metrics = run.metrics or {}
                rows.append({"spec": name, "precision": precision, "adam_impl": adam_impl,
                             "clean_accuracy": metrics["clean_accuracy"],
                             "score": (metrics.get("score") or {}).get("score"),
                             "epoch_seconds": statistics.median(
                                 h["seconds"] for h in metrics["history"])})
                progress(json.dumps(rows[-1]))
    return rows


def report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"{m['date']}  {m['cpu_model']}  {m['cpu_count']} CPUs, torch {m['torch']} "
          f"({m['torch_threads']} threads, dispatch {m['torch_cpu_capability']}), load "
          f"{', '.join(f'{v:.2f}' for v in m['load_average'])}")
    print(f"bf16 matrix instructions: {m['cpu_bf16_flags'] or 'none'}"
          f"{' (bf16 is EMULATED here)' if result['emulated'] else ''}")
    if "speed" in result:
        s = result["speed"]
        print(f"speed ({s['batches']} batches x {s['repeats']} repeats, median, per epoch): "
              f"fp32 {s['fp32']['median_epoch_seconds']:.2f} s, bf16 "
              f"{s['bf16']['median_epoch_seconds']:.2f} s ({s['bf16_over_fp32']:.2f}x)")
    for row in result.get("effect", []):
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        print(f"{row['spec']} {row['precision']} ({row['adam_impl']} Adam): clean accuracy {row['clean_accuracy']:.4f}, "
              f"score {score}, {row['epoch_seconds']:.2f} s per epoch (with evaluation)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="default: RSC_DATA_DIR")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-batches", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="of each effect run")
    parser.add_argument("--spec", action="append", default=None,
                        help="spec of an effect run (repeatable; default mnistv20-3-0-0)")
    parser.add_argument("--rounding-control", action="store_true",
                        help="also train each spec in fp32 with Adam's foreach kernel")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-effect", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emulated = not hardware.cpu_has_bf16()
    if emulated:
        os.environ[hardware.ALLOW_EMULATED_ENV] = "1"
    result: dict[str, Any] = {"machine": machine(), "emulated": emulated}
    if not args.skip_speed:
        result["speed"] = measure_speed(args.data_dir, args.batches, args.repeats,
                                        args.warmup_batches)
    if not args.skip_effect:
        result["effect"] = measure_effect(args.spec or ["mnistv20-3-0-0"], args.epochs,
                                          args.data_dir, args.rounding_control)
    result["load_average_at_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()

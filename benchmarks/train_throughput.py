"""Training throughput on CPU: rsc's ``erm`` trainer against reference-style DataLoader loops and
the machine's matmul peak, measured in one run on the same data.

Measurements (each repeated ``--repeats`` times, interleaved, median reported):

  (a) rsc      ``rsc_core.create("trainers", "erm").fit(model, train, None,
                TrainConfig(epochs=1, ...), device="cpu")`` -- one epoch, no evaluation.
  (b) ref-w4   the reference-style loop: ``DataLoader(TensorDataset(x, y), batch_size=128,
                shuffle=True, num_workers=4)``, per-batch ``.to(device)``, zero_grad, forward,
                loss, backward, step, ``loss.item()`` and accuracy ``.item()`` per batch.
                One epoch, including the start-up of the 4 worker processes (as every epoch
                of the reference pays it: a new iterator forks new workers).
  (c) ref-w0   the same loop with ``num_workers=0``.
  (d) matmul   single-precision ``torch.mm`` of two n x n matrices (default 2048), repeated;
                GFLOP/s = 2 n^3 reps / seconds, with all cores (and, if ``--threads`` sets
                fewer, also with that many); (d) is the better figure.
  (e) floor    the least work any eager PyTorch trainer can do per epoch: the same tensors,
                a seeded ``randperm``, ``index_select`` batches, fused Adam, forward, loss,
                backward, step -- no per-batch bookkeeping, no progress, no hooks. (b) / (e)
                is the largest "a vs b" ratio any eager trainer could show on this machine,
                and (a) / (e) is what rsc's own loop costs on top of the floor.

All four training measurements use the full MNIST training set (``load_dataset("mnist")``),
LargeMLP from the registry, batch 128, Adam lr 0.01, cross-entropy, and a fresh model built
under the same seed (so they start from identical weights). Before each timed epoch a few
batches are run on a throwaway copy of the model (warm-up: allocator, kernels, thread pools).

LargeMLP's cost: its layers are 784->256, 256->256, 256->256, 256->10, i.e.
784*256 + 256*256*2 + 256*10 = 334,336 multiply-adds per example; forward is 2 FLOPs per
multiply-add and backward about twice forward (input and weight gradients), so one training
step costs 3 * 2 * 334,336 = 2,006,016 FLOPs per example (~2.0 MFLOP; biases, ReLU, the loss
and the optimizer are ignored, and so is the first layer's unneeded input gradient), and one
epoch of 60,000 examples about 120.4 GFLOP.

Both the median and the best (minimum) of the repeats are reported: on a shared machine a
slow sample says more about the neighbours than about the code, and the minimum is the usual
estimate of what the code itself costs (``timeit``'s advice); the targets are judged on the
medians.

Targets (for a 2-core CPU): rsc >= 3x faster than (b), >= 1.4x faster than (c), and rsc's
achieved GFLOP/s >= 40% of (d). PASS/FAIL is printed per target; the exit status is 0 either way.

Run:  RSC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/train_throughput.py [--json]
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH_SIZE = 128
LR = 0.01
LAYERS = ((784, 256), (256, 256), (256, 256), (256, 10))  # LargeMLP on MNIST
MACS_PER_EXAMPLE = sum(i * o for i, o in LAYERS)          # 334,336
FLOPS_PER_EXAMPLE = 3 * 2 * MACS_PER_EXAMPLE              # forward + backward, 2,006,016
TARGETS = {  # name: (description, threshold)
    "rsc_vs_ref_w4": ("rsc >= 3x faster than (b) DataLoader num_workers=4", 3.0),
    "rsc_vs_ref_w0": ("rsc >= 1.4x faster than (c) DataLoader num_workers=0", 1.4),
    "rsc_pct_of_matmul": ("rsc achieved GFLOP/s >= 40% of (d) matmul GFLOP/s", 40.0),
}


# --------------------------------------------------------------------------- machine facts


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _vector_flags() -> list[str] | None:
    from rsc_core.training.hardware import cpu_vector_flags

    flags = cpu_vector_flags()
    return None if flags is None else list(flags)


def machine_info() -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_at_start": load_average(),
        "cpu_vector_flags": _vector_flags(),
        "thread_env": {name: os.environ.get(name) for name in
                       ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")},
    }


# --------------------------------------------------------------------------- measurements


def fresh_model(seed: int) -> nn.Module:
    import rsc_core

    torch.manual_seed(seed)
    return rsc_core.create("architectures", "LargeMLP").build((1, 28, 28), 10)


def measure_rsc(x: torch.Tensor, y: torch.Tensor, seed: int, warmup_batches: int) -> dict:
    import rsc_core
    from rsc_core.data.datasets import ImageData
    from rsc_core.training.trainer import TrainConfig

    trainer = rsc_core.create("trainers", "erm")
    config = TrainConfig(arch="LargeMLP", loss="ce", optimizer="adam", lr=LR,
                         batch_size=BATCH_SIZE, epochs=1, seed=seed)
    model = fresh_model(seed)
    if warmup_batches > 0:  # a short epoch on a throwaway copy
        n = min(len(y), warmup_batches * BATCH_SIZE)
        trainer.fit(copy.deepcopy(model), ImageData(x[:n], y[:n]), None, config, device="cpu")
    train = ImageData(x, y)
    started = time.perf_counter()
    state = trainer.fit(model, train, None, config, device="cpu")
    seconds = time.perf_counter() - started
    record = state.history[-1]
    return {"seconds": seconds, "train_loss": record["train_loss"],
            "train_accuracy": record["train_accuracy"]}


def measure_floor(x: torch.Tensor, y: torch.Tensor, seed: int, warmup_batches: int) -> dict:
    """(e): the minimal eager epoch on the same tensors, the floor under any eager trainer."""
    model = fresh_model(seed)
    if warmup_batches > 0:
        _floor_epoch(copy.deepcopy(model), x, y, seed, warmup_batches)
    started = time.perf_counter()
    _floor_epoch(model, x, y, seed, None)
    return {"seconds": time.perf_counter() - started}


def _floor_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                 max_batches: int | None) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    model.train()
    for i, index in enumerate(order.split(BATCH_SIZE)):
        if max_batches is not None and i >= max_batches:
            break
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.index_select(0, index)), y.index_select(0, index)).backward()
        optimizer.step()


def _reference_epoch(model: nn.Module, loader: DataLoader, device: torch.device,
                     max_batches: int | None = None) -> tuple[float, float, int, int]:
    """The reference's training loop, one epoch (or ``max_batches`` batches); also returns how
    many worker processes were alive at the first batch."""
    workers = 0
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    train_loss, train_acc, seen = 0.0, 0.0, 0
    for i, (xb, yb) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        if i == 0:
            workers = len(multiprocessing.active_children())
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        outputs = model(xb)
        loss = loss_fn(outputs, yb)
        loss.backward()
        optimizer.step()
        train_loss += loss.item() * yb.shape[0]
        train_acc += (outputs.argmax(dim=1) == yb).sum().float().item()
        seen += yb.shape[0]
    return train_loss / max(seen, 1), train_acc / max(seen, 1), seen, workers


def measure_reference(x: torch.Tensor, y: torch.Tensor, seed: int, warmup_batches: int,
                      num_workers: int) -> dict:
    device = torch.device("cpu")
    dataset = TensorDataset(x, y)

    def loader() -> DataLoader:
        return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers,
                          generator=torch.Generator().manual_seed(seed))

    model = fresh_model(seed)
    if warmup_batches > 0:
        _reference_epoch(copy.deepcopy(model), loader(), device, warmup_batches)
    started = time.perf_counter()
    loss, acc, _, workers = _reference_epoch(model, loader(), device)
    seconds = time.perf_counter() - started
    if workers < num_workers:
        raise RuntimeError(f"expected {num_workers} DataLoader worker processes, saw {workers}")
    return {"seconds": seconds, "train_loss": loss, "train_accuracy": acc,
            "worker_processes": workers}


def _matmul_gflops(size: int, reps: int) -> float:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up
    torch.mm(a, b, out=out)
    started = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b, out=out)
    return 2 * size**3 * reps / (time.perf_counter() - started) / 1e9


def measure_matmul(size: int, reps: int) -> dict:
    """GFLOP/s with every core and, if training uses fewer threads, with the training's thread
    count too; (d) is the better of the two, the machine's best matmul rate."""
    threads = torch.get_num_threads()
    cores = os.cpu_count() or threads
    result: dict[str, Any] = {}
    try:
        torch.set_num_threads(cores)
        result["gflops_all_cores"] = _matmul_gflops(size, reps)
    finally:
        torch.set_num_threads(threads)
    if threads != cores:
        result["gflops_training_threads"] = _matmul_gflops(size, reps)
    result["gflops"] = max(v for k, v in result.items() if k.startswith("gflops_"))
    result["seconds"] = 2 * size**3 * reps / result["gflops"] / 1e9
    return result


# --------------------------------------------------------------------------- driver


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rsc_core.data.datasets import load_dataset

    # (b) deliberately uses more workers than cores, as the reference does; don't warn about it.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    started = time.perf_counter()
    bundle = load_dataset("mnist", args.data_dir)
    x, y = bundle.train.images, bundle.train.labels
    if args.subset:
        x, y = x[:args.subset].contiguous(), y[:args.subset].contiguous()
    info["data_load_seconds"] = round(time.perf_counter() - started, 2)
    examples = int(y.shape[0])
    epoch_gflop = examples * FLOPS_PER_EXAMPLE / 1e9

    jobs: dict[str, Callable[[], dict]] = {
        "rsc": lambda: measure_rsc(x, y, args.seed, args.warmup_batches),
        "ref_w4": lambda: measure_reference(x, y, args.seed, args.warmup_batches, 4),
        "ref_w0": lambda: measure_reference(x, y, args.seed, args.warmup_batches, 0),
        "matmul": lambda: measure_matmul(args.mm_size, args.mm_reps),
        "floor": lambda: measure_floor(x, y, args.seed, args.warmup_batches),
    }
    order = list(jobs)
    samples: dict[str, list[dict]] = {name: [] for name in jobs}
    for repeat in range(args.repeats):
        rotated = order[repeat % len(order):] + order[:repeat % len(order)]
        for name in rotated:
            before = load_average()
            result = jobs[name]()
            result["repeat"] = repeat
            result["load_average_before"] = before
            samples[name].append(result)
            if not args.json:
                extra = (f"{result['gflops']:7.1f} GFLOP/s" if name == "matmul" else
                         "" if name == "floor" else
                         f"loss {result['train_loss']:.4f} acc {result['train_accuracy']:.4f}"
                         + (f" workers {result['worker_processes']}"
                            if "worker_processes" in result else ""))
                print(f"  repeat {repeat + 1}/{args.repeats} {name:7s} "
                      f"{result['seconds']:8.3f} s  {extra}  (load avg {before})", flush=True)

    figures = {"examples": examples, "flops_per_example": FLOPS_PER_EXAMPLE,
               "epoch_gflop": epoch_gflop}
    ratios: dict[str, dict[str, float]] = {}
    for stat, pick_seconds, pick_rate in (("median", statistics.median, statistics.median),
                                          ("best", min, max)):
        seconds = {name: pick_seconds(s["seconds"] for s in samples[name])
                   for name in jobs if name != "matmul"}
        mm_parts = {key: pick_rate(s[key] for s in samples["matmul"])
                    for key in ("gflops", "gflops_all_cores", "gflops_training_threads")
                    if key in samples["matmul"][0]}
        figures[stat] = {
            **{f"{name}_epoch_seconds": t for name, t in seconds.items()},
            **{f"{name}_examples_per_second": examples / t for name, t in seconds.items()},
            **{f"{name}_gflops": epoch_gflop / t for name, t in seconds.items()},
            **{f"matmul_{key}": value for key, value in mm_parts.items()},
        }
        ratios[stat] = {
            "rsc_vs_ref_w4": seconds["ref_w4"] / seconds["rsc"],
            "rsc_vs_ref_w0": seconds["ref_w0"] / seconds["rsc"],
            "rsc_pct_of_matmul": 100.0 * epoch_gflop / seconds["rsc"] / mm_parts["gflops"],
            "rsc_over_floor": seconds["rsc"] / seconds["floor"],
            "floor_vs_ref_w4": seconds["ref_w4"] / seconds["floor"],
        }
    targets = {name: {"description": desc, "threshold": threshold,
                      "value": ratios["median"][name], "best": ratios["best"][name],
                      "pass": ratios["median"][name] >= threshold}
               for name, (desc, threshold) in TARGETS.items()}
    info["load_average_at_end"] = load_average()
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    return {
        "machine": info,
        "settings": {"repeats": args.repeats, "warmup_batches": args.warmup_batches,
                     "batch_size": BATCH_SIZE, "lr": LR, "optimizer": "adam", "loss": "ce",
                     "arch": "LargeMLP", "seed": args.seed, "mm_size": args.mm_size,
                     "mm_reps": args.mm_reps, "subset": args.subset or None},
        "samples": samples,
        "figures": figures,
        "ratios": ratios,
        "targets": targets,
    }


def print_report(result: dict[str, Any]) -> None:
    info, ratios, work = result["machine"], result["ratios"], result["figures"]
    settings = result["settings"]
    print()
    print("rsc training throughput (LargeMLP, MNIST train, batch 128, Adam lr 0.01, CE)")
    print(f"  date          {info['date']}")
    print(f"  torch         {info['torch']} (python {info['python']})")
    print(f"  CPU           {info['cpu_model']}, {info['cpu_count']} logical cores")
    print(f"  threads       torch {info['torch_threads']} intra-op, "
          f"{info['torch_interop_threads']} inter-op")
    env = ", ".join(f"{k}={v}" for k, v in info["thread_env"].items() if v is not None)
    if env:
        print(f"  environment   {env}")
    print(f"  load average  {info['load_average_at_start']} at start, "
          f"{info['load_average_at_end']} at end (1/5/15 min)")
    print(f"  work          {work['examples']} examples x {work['flops_per_example']:,} FLOP "
          f"(3 * 2 * 334,336) = {work['epoch_gflop']:.1f} GFLOP per epoch")
    print(f"  repeats       {settings['repeats']} (interleaved; medians and best-of below), "
          f"warm-up {settings['warmup_batches']} batches")
    print()
    for stat in ("median", "best"):
        fig, ratio = result["figures"][stat], ratios[stat]
        print(f"  {stat + ' of the repeats':34s} {'s/epoch':>9s} {'examples/s':>11s} "
              f"{'GFLOP/s':>8s}")
        for key, label in (("rsc", "(a) rsc erm trainer"),
                           ("ref_w4", "(b) reference, DataLoader workers=4"),
                           ("ref_w0", "(c) reference, DataLoader workers=0"),
                           ("floor", "(e) floor, minimal eager loop")):
            print(f"  {label:34s} {fig[key + '_epoch_seconds']:9.2f} "
                  f"{fig[key + '_examples_per_second']:11.0f} {fig[key + '_gflops']:8.2f}")
        print(f"  {'(d) matmul ' + str(settings['mm_size']) + '^2 fp32':34s} {'':9s} {'':11s} "
              f"{fig['matmul_gflops']:8.2f}")
        for key, label in (("matmul_gflops_all_cores", f"all {info['cpu_count']} cores"),
                           ("matmul_gflops_training_threads",
                            f"{info['torch_threads']} thread(s), as training")):
            if fig.get(key) is not None:
                print(f"      {label:30s} {'':9s} {'':11s} {fig[key]:8.2f}")
        print(f"  a vs b  rsc is {ratio['rsc_vs_ref_w4']:.2f}x faster than DataLoader workers=4")
        print(f"  a vs c  rsc is {ratio['rsc_vs_ref_w0']:.2f}x faster than DataLoader workers=0")
        print(f"  a / d   rsc achieves {ratio['rsc_pct_of_matmul']:.1f}% of matmul GFLOP/s")
        print(f"  a / e   rsc's epoch is {ratio['rsc_over_floor']:.2f}x the eager floor's")
        print(f"  e vs b  the floor is {ratio['floor_vs_ref_w4']:.2f}x faster than workers=4 "
              "(the most any eager trainer could show here)")
        print()
    for target in result["targets"].values():
        verdict = "PASS" if target["pass"] else "FAIL"
        print(f"  {verdict}  {target['description']}: median {target['value']:.2f} "
              f"(best-of {target['best']:.2f})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements of each kind, interleaved; the median is reported")
    parser.add_argument("--warmup-batches", type=int, default=5,
                        help="batches run on a throwaway model before each timed epoch")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads before measuring (0: torch's default)")
    parser.add_argument("--mm-size", type=int, default=2048, help="matmul matrix size n")
    parser.add_argument("--mm-reps", type=int, default=10, help="matmuls per measurement")
    parser.add_argument("--seed", type=int, default=0, help="model and shuffle seed")
    parser.add_argument("--subset", type=int, default=0,
                        help="use only the first N training examples (smoke tests; 0: all)")
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: RSC_DATA_DIR / rsc's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_report(result)
    return 0  # targets are reported, not enforced


if __name__ == "__main__":  # required: DataLoader worker processes may re-import this module
    sys.exit(main())

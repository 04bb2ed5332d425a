"""Multi-model training throughput on CPU: K LargeMLPs trained in lockstep by the ``erm``
trainer's group path (``fit_group``) against the single-model ``erm`` trainer, measured in one
run on the same data, with the machine's matmul peak for scale.

Measurements (each repeated ``--repeats`` times, interleaved, median and best reported):

  single   ``rsc_core.create("trainers", "erm").fit(...)`` on the first ``--batches`` batches of
           MNIST (batch 128, Adam lr 0.01, no evaluation): one model.
  group K  ``fit_group`` of K members (seeds 0..K-1) on the same batches, for each K in ``--ks``.
  bmm K    a hand-written batched MLP (``torch.baddbmm`` per layer over stacked weights,
           autograd, fused Adam): the candidate "specialised MLP path" -- it is adopted only
           if it beats the generic ``torch.func`` path.
  matmul   single-precision ``torch.mm`` peak (``train_throughput.measure_matmul``).

Per-model seconds per epoch = time / K, scaled from ``--batches`` batches to a full epoch of
469 batches (60,000 images); models x epochs per hour = 3600 / that; achieved GFLOP/s counts
``train_throughput.FLOPS_PER_EXAMPLE`` per example per model. Targets (2-core CPU, fp32): at the
best K, per-model throughput >= 2x the single trainer's and >= 60% of the matmul peak; at
K = 8, >= 1.6x. PASS/FAIL is printed; the exit status is 0 either way.

Run:  RSC_DATA_DIR=/work/shared/data OMP_WAIT_POLICY=PASSIVE \\
      .venv/bin/python benchmarks/multi_model.py [--json]
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as base  # noqa: E402  (machine facts, matmul peak, FLOP count)

import rsc_core  # noqa: E402
from rsc_core.data.datasets import ImageData, load_dataset  # noqa: E402
from rsc_core.training.multi_model import GroupMember  # noqa: E402
from rsc_core.training.trainer import TrainConfig  # noqa: E402

EPOCH_BATCHES = math.ceil(60_000 / base.BATCH_SIZE)
TARGETS = {
    "best_k_vs_single": ("per-model throughput at the best K >= 2x the single trainer", 2.0),
    "best_k_pct_of_matmul": ("achieved GFLOP/s at the best K >= 60% of the matmul peak", 60.0),
    "k8_vs_single": ("per-model throughput at K = 8 >= 1.6x the single trainer", 1.6),
}


def subset(batches: int, data_dir: str | None) -> ImageData:
    train = load_dataset("mnist", data_dir).train
    n = min(len(train), batches * base.BATCH_SIZE)
    return ImageData(train.images[:n].contiguous(), train.labels[:n].contiguous())


def config(seed: int = 0) -> TrainConfig:
    return TrainConfig(arch="LargeMLP", optimizer="adam", lr=base.LR,
                       batch_size=base.BATCH_SIZE, epochs=1, seed=seed)


def models(k: int) -> list[torch.nn.Module]:
    built = []
    for seed in range(k):
        torch.manual_seed(seed)
        built.append(rsc_core.create("architectures", "LargeMLP").build((1, 28, 28), 10))
    return built


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_single(train: ImageData, device: str = "cpu",
                clock: Callable[[], float] = time.perf_counter) -> float:
    model = models(1)[0]
    synchronize(device)
    started = clock()
    rsc_core.create("trainers", "erm").fit(model, train, None, config(), device=device)
    synchronize(device)
    return clock() - started


def time_group(train: ImageData, k: int, device: str = "cpu",
               clock: Callable[[], float] = time.perf_counter) -> float:
    empty = torch.empty(0, dtype=torch.int64)
    members = [GroupMember(config(seed), empty, train.images[:0]) for seed in range(k)]
    trainer = rsc_core.create("trainers", "erm")
    built = models(k)
    synchronize(device)
    started = clock()
    results = trainer.fit_group(built, train, members, None, device=torch.device(device))
    synchronize(device)
    elapsed = clock() - started
    assert not any(isinstance(r, BaseException) for r in results), results
    return elapsed


def time_bmm(train: ImageData, k: int) -> float:
    """The specialised candidate: stacked weights, one ``baddbmm`` per layer, autograd."""
    built = models(k)
    layers = [(torch.stack([m.state_dict()[f"{name}.weight"].t() for m in built])
               .requires_grad_(),
               torch.stack([m.state_dict()[f"{name}.bias"] for m in built]).unsqueeze(1)
               .requires_grad_())
              for name in _layer_names(built[0])]
    params = [t for pair in layers for t in pair]
    optimizer = torch.optim.Adam(params, lr=base.LR, fused=True)
    x_all = train.images.reshape(len(train), -1)
    y_all = train.labels
    generators = [torch.Generator().manual_seed(seed) for seed in range(k)]
    started = time.perf_counter()
    orders = torch.stack([torch.randperm(len(train), generator=g) for g in generators])
    for start in range(0, len(train), base.BATCH_SIZE):
        index = orders[:, start:start + base.BATCH_SIZE]
        h = x_all.index_select(0, index.reshape(-1)).view(k, index.shape[1], -1)
        y = y_all.index_select(0, index.reshape(-1))
        for i, (weight, bias) in enumerate(layers):
            h = torch.baddbmm(bias, h, weight)
            if i < len(layers) - 1:
                h = F.relu(h)
        loss = F.cross_entropy(h.reshape(-1, h.shape[-1]), y, reduction="none")
        optimizer.zero_grad(set_to_none=True)
        loss.view(k, -1).mean(1).sum().backward()
        optimizer.step()
    return time.perf_counter() - started


def _layer_names(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    train = subset(args.batches, args.data_dir)
    batches = math.ceil(len(train) / base.BATCH_SIZE)
    scale = EPOCH_BATCHES / batches
    if args.device != "cpu":  # resident on the device, as the trainers keep it
        train = ImageData(train.images.to(args.device), train.labels.to(args.device))
    timers: dict[str, Callable[[], float]] = {
        "single": lambda: time_single(train, args.device)}
    for k in args.ks:
        timers[f"group{k}"] = lambda k=k: time_group(train, k, args.device)
        if k in args.bmm_ks and args.device == "cpu":
            timers[f"bmm{k}"] = lambda k=k: time_bmm(train, k)
    for timer in timers.values():  # warm-up: allocator, kernels, thread pools
        timer()
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(args.repeats):
        for name, timer in timers.items():
            samples[name].append(timer())
    rows = {}
    for name, values in samples.items():
        k = 1 if name == "single" else int(name.lstrip("groupbm"))
        for stat, value in (("median", statistics.median(values)), ("best", min(values))):
            per_model = value / k * scale
            rows.setdefault(name, {})[stat] = {
                "k": k, "seconds": value, "per_model_s_per_epoch": per_model,
                "model_epochs_per_hour": 3600 / per_model,
                "gflops": k * len(train) * base.FLOPS_PER_EXAMPLE / value / 1e9}
    matmul = (base.measure_matmul(args.mm_size, args.mm_reps) if args.device == "cpu"
              else cuda_matmul(args.mm_size, args.mm_reps, args.device))
    return {"batches": batches, "samples": samples, "rows": rows, "matmul": matmul,
            "device": args.device, "machine": base.machine_info()}


def cuda_matmul(size: int, reps: int, device: str) -> dict:
    """fp32 ``torch.mm`` rate on the GPU (TF32 as torch's default for matmuls: off)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"gflops": 2 * size**3 * reps / seconds / 1e9, "seconds": seconds}


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    single = rows["single"]["median"]["per_model_s_per_epoch"]
    groups = {name: row["median"] for name, row in rows.items() if name.startswith("group")}
    best_name = min(groups, key=lambda n: groups[n]["per_model_s_per_epoch"])
    best = groups[best_name]
    peak = result["matmul"]["gflops"]
    values = {"best_k": best["k"], "best_k_vs_single": single / best["per_model_s_per_epoch"],
              "best_k_pct_of_matmul": 100 * best["gflops"] / peak}
    if "group8" in groups:
        values["k8_vs_single"] = single / groups["group8"]["per_model_s_per_epoch"]
    return {name: {"description": TARGETS[name][0], "value": values[name],
                   "pass": values[name] >= TARGETS[name][1]}
            for name in TARGETS if name in values} | {"best_k": values["best_k"]}


def print_report(result: dict[str, Any]) -> None:
    peak = result["matmul"]["gflops"]
    print(f"{result['machine'].get('cpu_model', '')}, {result['batches']} batches per sample, "
          f"scaled to {EPOCH_BATCHES}; matmul peak {peak:.1f} GFLOP/s")
    print(f"{'run':>9} {'K':>3} {'stat':>6} {'s/epoch/model':>14} {'model-epochs/h':>15} "
          f"{'GFLOP/s':>8} {'% peak':>7} {'vs single':>9}")
    single = result["rows"]["single"]
    for name, row in result["rows"].items():
        for stat in ("median", "best"):
            r = row[stat]
            ratio = single[stat]["per_model_s_per_epoch"] / r["per_model_s_per_epoch"]
            print(f"{name:>9} {r['k']:>3} {stat:>6} {r['per_model_s_per_epoch']:>14.3f} "
                  f"{r['model_epochs_per_hour']:>15.0f} {r['gflops']:>8.1f} "
                  f"{100 * r['gflops'] / peak:>6.1f}% {ratio:>8.2f}x")
    for name, target in result["verdict"].items():
        if isinstance(target, dict):
            print(f"{'PASS' if target['pass'] else 'FAIL'} {target['description']}: "
                  f"{target['value']:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batches", type=int, default=60, help="batches per sample")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--bmm-ks", type=int, nargs="*", default=[8, 32],
                        help="K values at which to time the hand-written bmm MLP")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--mm-reps", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (data resident there)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    result["verdict"] = verdict(result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

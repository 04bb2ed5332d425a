"""CIFAR-10 training throughput: rsc's ``erm`` trainer against the reference-style pipeline and
the floor, for altResNet20Norm02 with aug01, measured in one run on the same data.

The work (issue 12): the CIFAR-10 training set, batch 128, SGD lr 0.1 momentum 0.9, weight
decay 1e-4 (the optimizer's coupled term), cross-entropy, ``aug01``.

  (a) rsc     ``rsc_core.create("trainers", "erm").fit(...)`` on the first B x 128 training
              images for one epoch, no evaluation: a seeded permutation, ``index_select``
              batches of the resident tensor, aug01 on the whole batch, forward, loss,
              backward, step, the trainer's own bookkeeping.
  (b) ref     the reference's pipeline: a Dataset of the images with the reference's
              per-image transform ``ToPILImage, RandomCrop(32, padding=4),
              RandomHorizontalFlip, ToTensor``, a ``DataLoader(batch_size=128, shuffle=True,
              num_workers=4)``, ``.to(device)`` per batch, zero_grad, forward, loss, backward,
              step, ``loss.item()`` and accuracy ``.item()`` per batch; fp32, channel-first,
              as the reference runs. Its epoch = the time to its first batch (starting 4 worker
              processes, as each reference epoch does) + the steady per-batch time x the rest.
  (c) floor   forward + backward + step on ONE fixed batch already on the device, nothing
              else: the least any trainer can spend per batch.
  batch_work  (a)'s own per-batch work besides the model (``index_select`` of the batch and
              aug01), timed alone over ``--batch-work-batches`` batches: on a busy machine,
              where (a) and (c) cannot be timed closely, batch_work / floor bounds what rsc
              adds to the floor more tightly than (a) / (c) does.

Each of (a) and (c) runs in every variant: fp32 or bf16 autocast, channel-first or
channels-last. bf16 on a CPU without bfloat16 matrix instructions (``rsc_core.hardware``) is
reported as not available, not timed, unless ``--allow-emulated-bf16`` asks for one clearly
labelled emulated measurement. On a GPU (``--device cuda``) the data are moved to the GPU before
(a) starts (resident, as rsc trains), and times are taken after ``torch.cuda.synchronize()``.

Timing: B batches (``--batches``; 0 = a whole epoch) after ``--warmup-batches`` on a throwaway
copy of the model, extrapolated to an epoch of ceil(N / 128) batches. ``--repeats`` > 1
interleaves the measurements and reports medians.

Targets (issue 12). CPU: (a) >= 2x faster than (b); (a) within 15% of (c) in the same precision
and memory format. GPU: (a) channels-last bf16 within 1.5x of (c) channels-last bf16. PASS/FAIL
is printed; the exit status is 0 either way (a benchmark, not a test).

Run:  RSC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 \\
      .venv/bin/python benchmarks/cifar_throughput.py --batches 20 [--device cuda] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as base  # noqa: E402  (machine facts)

import rsc_core  # noqa: E402
from rsc_core.datasets import ImageData, load_dataset  # noqa: E402
from rsc_core.hardware import ALLOW_EMULATED_ENV, cpu_bf16_flags, cpu_has_bf16  # noqa: E402
from rsc_core.regularisers import build_regularisers  # noqa: E402
from rsc_core.training import TrainConfig  # noqa: E402

ARCH = "altResNet20Norm02"
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
CPU_FLOOR_SLACK = 1.15  # (a) within 15% of (c)
CPU_VS_REFERENCE = 2.0  # (a) at least 2x faster than (b)
GPU_FLOOR_SLACK = 1.5   # (a) within 1.5x of (c), channels-last bf16


def variant_name(precision: str, channels_last: bool, emulated: bool = False) -> str:
    label = f"{precision}-emulated" if emulated and precision == "bf16" else precision
    return f"{label}-{'channels_last' if channels_last else 'nchw'}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(seed: int, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(seed)
    model = rsc_core.create("architectures", ARCH).build((3, 32, 32), 10)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format)


def autocast(precision: str, device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else (
        nullcontext())


# --------------------------------------------------------------------------- (a) rsc


def measure_rsc(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                device: torch.device, precision: str, channels_last: bool) -> dict:
    """One epoch of rsc's trainer on the first ``batches`` batches of the (resident) data."""
    trainer = rsc_core.create("trainers", "erm")
    weight_decay = ({"name": "weight-decay", "params": {"value": WEIGHT_DECAY}},)
    config = TrainConfig(arch=ARCH, aug="aug01", optimizer="sgd", lr=LR, momentum=MOMENTUM,
                         batch_size=args.batch_size, epochs=1, seed=args.seed,
                         regularisers=weight_decay, precision=precision)
    model = fresh_model(args.seed, device, channels_last)

    def fit(net: nn.Module, batches: int) -> Any:
        n = batches * args.batch_size
        return trainer.fit(net, ImageData(x[:n], y[:n]), None, config,
                           build_regularisers(config.regularisers), device=device,
                           channels_last=channels_last)

    state, seconds = timed(fit, model, args, device)
    record = state.history[-1]
    return {"seconds": seconds, "batches": args.batches,
            "epoch_seconds": seconds / args.batches * args.epoch_batches,
            "train_loss": record["train_loss"]}


# --------------------------------------------------------------------------- (b) reference


class ReferenceDataset(Dataset):
    """The reference's ``CustomTensorDataset``: channel-first float images and labels, the
    transform applied to each image as it is fetched."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def reference_transform() -> Any:
    """The reference's ``aug01`` training transform."""
    from torchvision import transforms

    return transforms.Compose([transforms.ToPILImage(), transforms.RandomCrop(32, padding=4),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor()])


def _reference_batches(model: nn.Module, loader: DataLoader, device: torch.device,
                       batches: int) -> tuple[float, float, float]:
    """The reference's training loop for ``batches`` batches; returns the seconds to the end
    of the first batch (worker start-up included), the seconds of the rest, the mean loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    model.train()
    total, seen, first = 0.0, 0, 0.0
    started = time.perf_counter()
    for i, (xb, yb) in enumerate(loader):
        if i >= batches:
            break
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        outputs = model(xb)
        loss = loss_fn(outputs, yb).mean()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        _ = (outputs.argmax(dim=1) == yb).sum().float().item()
        seen += len(yb)
        if i == 0:
            first = time.perf_counter() - started
    rest = time.perf_counter() - started - first
    return first, rest, total / max(seen, 1)


def measure_reference(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                      device: torch.device) -> dict:
    dataset = ReferenceDataset(x, y, reference_transform())

    def loader(workers: int) -> DataLoader:
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                          num_workers=workers, generator=torch.Generator().manual_seed(args.seed))

    model = fresh_model(args.seed, device, False)
    if args.warmup_batches:
        _reference_batches(copy.deepcopy(model), loader(0), device, args.warmup_batches)
    first, rest, loss = _reference_batches(model, loader(args.workers), device, args.batches)
    per_batch = rest / (args.batches - 1)
    return {"seconds": first + rest, "batches": args.batches, "first_batch_seconds": first,
            "steady_batch_seconds": per_batch, "workers": args.workers,
            "epoch_seconds": first + per_batch * (args.epoch_batches - 1), "train_loss": loss}


# --------------------------------------------------------------------------- (c) floor


def measure_floor(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                  device: torch.device, precision: str, channels_last: bool) -> dict:
    """Forward + backward + step on one fixed resident batch."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    xb = x[:args.batch_size].to(device).contiguous(memory_format=memory_format)
    yb = y[:args.batch_size].to(device)
    model = fresh_model(args.seed, device, channels_last)

    def steps(net: nn.Module, count: int) -> torch.Tensor:
        optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM,
                                    weight_decay=WEIGHT_DECAY)
        net.train()
        loss = torch.zeros(())
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, device):
                loss = F.cross_entropy(net(xb).float(), yb)
            loss.backward()
            optimizer.step()
        return loss

    loss, seconds = timed(steps, model, args, device)
    return {"seconds": seconds, "batches": args.batches,
            "epoch_seconds": seconds / args.batches * args.epoch_batches,
            "train_loss": float(loss.detach())}


def timed(train: Callable[[nn.Module, int], Any], model: nn.Module, args: argparse.Namespace,
          device: torch.device) -> tuple[Any, float]:
    """``train(model, args.batches)`` timed after ``args.warmup_batches`` on a copy (so the
    timed run starts from the same weights); returns its result and the seconds it took."""
    if args.warmup_batches:
        train(copy.deepcopy(model), args.warmup_batches)
    synchronize(device)
    started = time.perf_counter()
    result = train(model, args.batches)
    synchronize(device)
    return result, time.perf_counter() - started


# --------------------------------------------------------------------------- (a) - (c)


def measure_batch_work(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                       device: torch.device) -> dict:
    """What (a) does per batch besides the model: pick the batch from a permutation
    (``index_select`` of images and labels) and apply aug01; timed alone over many batches, so
    that it can be compared with the floor's per-batch time even on a busy machine."""
    from rsc_core.training import augment_aug01

    generator = torch.Generator(device=device).manual_seed(args.seed)
    order = torch.randperm(len(y), generator=generator, device=device)
    count = args.batch_work_batches
    batches = [order[(i * args.batch_size) % len(y):][:args.batch_size] for i in range(count)]
    augment_aug01(x.index_select(0, batches[0]), generator)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for index in batches:
        augment_aug01(x.index_select(0, index), generator)
        y.index_select(0, index)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "batches": count,
            "epoch_seconds": seconds / count * args.epoch_batches, "train_loss": 0.0}


# --------------------------------------------------------------------------- driver


def bf16_status(device: torch.device, allow_emulated: bool) -> tuple[bool, str]:
    """Whether to time bf16 here, and what to call it."""
    if device.type == "cuda":
        return True, "native (CUDA)"
    if cpu_has_bf16():
        return True, f"native ({', '.join(cpu_bf16_flags() or ())})"
    if allow_emulated:
        os.environ[ALLOW_EMULATED_ENV] = "1"  # rsc's trainer refuses emulated bf16 otherwise
        return True, "EMULATED (this CPU has no bf16 matrix instructions)"
    return False, ("not available: this CPU lacks bfloat16 matrix instructions (AVX512-BF16 / "
                   "AMX-BF16), so bf16 would be emulated; not timed (--allow-emulated-bf16 "
                   "times it once, labelled)")


def measurements(host: ImageData, x: torch.Tensor, y: torch.Tensor,
                 args: argparse.Namespace, device: torch.device,
                 bf16: bool, emulated: bool) -> dict[str, Callable[[], dict]]:
    """(a) and (c) read ``x``, ``y`` (on the device); (b) reads the host copy, as the
    reference's DataLoader does."""
    jobs: dict[str, Callable[[], dict]] = {}
    for precision, channels_last in VARIANTS:
        if precision == "bf16" and not bf16:
            continue
        name = variant_name(precision, channels_last, emulated)
        jobs[f"rsc/{name}"] = (lambda p=precision, c=channels_last:
                               measure_rsc(x, y, args, device, p, c))
        jobs[f"floor/{name}"] = (lambda p=precision, c=channels_last:
                                 measure_floor(x, y, args, device, p, c))
    jobs["batch_work/fp32-nchw"] = lambda: measure_batch_work(x, y, args, device)
    if not args.skip_reference:
        jobs["ref/fp32-nchw"] = lambda: measure_reference(host.images, host.labels, args,
                                                          device)
    return jobs


def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = base.machine_info()
    started = time.perf_counter()
    bundle = load_dataset("cifar10", args.data_dir)
    x, y = bundle.train.images, bundle.train.labels
    info["data_load_seconds"] = round(time.perf_counter() - started, 2)
    args.epoch_batches = math.ceil(len(y) / args.batch_size)
    if args.batches <= 0:
        args.batches = args.epoch_batches
    if args.batches < 2 or args.batches * args.batch_size > len(y):
        raise SystemExit(f"--batches must be between 2 and {len(y) // args.batch_size} "
                         f"for {len(y)} training images")
    if device.type == "cuda":  # resident: (a) and (c) read from GPU memory
        x, y = x.to(device), y.to(device)
        info["gpu"] = torch.cuda.get_device_name(device)
    bf16, bf16_label = bf16_status(device, args.allow_emulated_bf16)
    jobs = measurements(bundle.train, x, y, args, device, bf16,
                        emulated=bf16_label.startswith("EMULATED"))
    samples: dict[str, list[dict]] = {name: [] for name in jobs}
    order = list(jobs)
    for repeat in range(args.repeats):
        shift = repeat % len(order)
        for name in order[shift:] + order[:shift]:
            before = base.load_average()
            result = jobs[name]()
            result.update(repeat=repeat, load_average_before=before)
            samples[name].append(result)
            if not args.json:
                print(f"  repeat {repeat + 1}/{args.repeats} {name:26s} "
                      f"{result['seconds']:8.2f} s for {result['batches']} batches -> "
                      f"{result['epoch_seconds']:8.1f} s/epoch  loss {result['train_loss']:.3f}"
                      f"  (load avg {before})", flush=True)
    epoch = {name: statistics.median(s["epoch_seconds"] for s in runs)
             for name, runs in samples.items()}
    info["load_average_at_end"] = base.load_average()
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    return {"machine": info, "device": str(device), "bf16": bf16_label,
            "settings": {"arch": ARCH, "aug": "aug01", "optimizer": "sgd", "lr": LR,
                         "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
                         "batch_size": args.batch_size, "batches": args.batches,
                         "epoch_batches": args.epoch_batches, "train_images": int(len(y)),
                         "warmup_batches": args.warmup_batches, "repeats": args.repeats,
                         "workers": args.workers, "seed": args.seed},
            "samples": samples, "epoch_seconds": epoch,
            "ratios": ratios(epoch), "targets": targets(epoch, device)}


def ratios(epoch: dict[str, float]) -> dict[str, float]:
    """``rsc_over_floor/<variant>`` (a)/(c) and ``ref_over_rsc/<variant>`` (b)/(a): how many
    times faster (a) is than (b); ``ref_over_floor`` is the most any trainer could show."""
    out: dict[str, float] = {}
    for name, seconds in epoch.items():
        kind, variant = name.split("/")
        if kind != "rsc":
            continue
        if f"floor/{variant}" in epoch:
            out[f"rsc_over_floor/{variant}"] = seconds / epoch[f"floor/{variant}"]
        if "ref/fp32-nchw" in epoch:
            out[f"ref_over_rsc/{variant}"] = epoch["ref/fp32-nchw"] / seconds
    if "batch_work/fp32-nchw" in epoch and "floor/fp32-nchw" in epoch:
        out["batch_work_over_floor/fp32-nchw"] = (epoch["batch_work/fp32-nchw"]
                                                  / epoch["floor/fp32-nchw"])
    if "ref/fp32-nchw" in epoch and "floor/fp32-nchw" in epoch:
        out["ref_over_floor/fp32-nchw"] = epoch["ref/fp32-nchw"] / epoch["floor/fp32-nchw"]
    return out


def targets(epoch: dict[str, float], device: torch.device) -> dict[str, dict]:
    rat = ratios(epoch)
    found: dict[str, dict] = {}
    if device.type == "cuda":
        key = "rsc_over_floor/bf16-channels_last"
        if key in rat:
            found["gpu_floor"] = {"description": "(a) channels-last bf16 within 1.5x of (c)",
                                  "value": rat[key], "pass": rat[key] <= GPU_FLOOR_SLACK}
        return found
    key = "ref_over_rsc/fp32-nchw"
    if key in rat:
        found["vs_reference"] = {"description": "(a) fp32 >= 2x faster than (b)",
                                 "value": rat[key], "pass": rat[key] >= CPU_VS_REFERENCE}
    for name, value in rat.items():
        if name.startswith("rsc_over_floor/"):
            variant = name.split("/")[1]
            found[f"floor/{variant}"] = {
                "description": f"(a) within 15% of (c), {variant}", "value": value,
                "pass": value <= CPU_FLOOR_SLACK}
    return found


def print_report(result: dict[str, Any]) -> None:
    info, settings = result["machine"], result["settings"]
    print()
    print(f"CIFAR-10 throughput: {settings['arch']}, aug01, batch {settings['batch_size']}, SGD lr "
          f"{settings['lr']} momentum {settings['momentum']} wd {settings['weight_decay']}")
    print(f"  date          {info['date']}")
    print(f"  device        {result['device']}" + (f" ({info['gpu']})" if "gpu" in info else ""))
    print(f"  CPU           {info['cpu_model']}, {info['cpu_count']} logical cores; torch "
          f"{info['torch']}, {info['torch_threads']} thread(s)")
    env = ", ".join(f"{k}={v}" for k, v in info["thread_env"].items() if v is not None)
    if env:
        print(f"  environment   {env}")
    print(f"  load average  {info['load_average_at_start']} at start, "
          f"{info['load_average_at_end']} at end")
    print(f"  measured      {settings['batches']} batches after {settings['warmup_batches']} "
          f"warm-up, extrapolated to {settings['epoch_batches']} batches "
          f"({settings['train_images']} images); {settings['repeats']} repeat(s)")
    print(f"  bf16          {result['bf16']}")
    print()
    print(f"  {'measurement':30s} {'s/epoch':>10s}")
    for name, seconds in result["epoch_seconds"].items():
        print(f"  {name:30s} {seconds:10.1f}")
    print()
    for name, value in result["ratios"].items():
        print(f"  {name:36s} {value:7.3f}")
    print()
    for target in result["targets"].values():
        print(f"  {'PASS' if target['pass'] else 'FAIL'}  {target['description']}: "
              f"{target['value']:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20,
                        help="batches timed per measurement, extrapolated to an epoch "
                             "(0: a whole epoch)")
    parser.add_argument("--warmup-batches", type=int, default=2,
                        help="batches run on a throwaway model before each measurement")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements of each kind, interleaved; medians reported")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="batch size (128 is the measured recipe; smaller for smoke tests)")
    parser.add_argument("--batch-work-batches", type=int, default=50,
                        help="batches of (a)'s own per-batch work (index_select + aug01) timed "
                             "alone")
    parser.add_argument("--workers", type=int, default=4,
                        help="DataLoader worker processes of (b), as the reference")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads before measuring (0: torch's default)")
    parser.add_argument("--allow-emulated-bf16", action="store_true",
                        help="time bf16 on a CPU without bf16 instructions (labelled emulated)")
    parser.add_argument("--skip-reference", action="store_true", help="do not measure (b)")
    parser.add_argument("--seed", type=int, default=0, help="model and shuffle seed")
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: RSC_DATA_DIR / rsc's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be at least 1")
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

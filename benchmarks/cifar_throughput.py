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
  (u) user    rsc as a user runs it: ``rsc_core.runs.training.train_run`` (what ``rsc train`` calls)
              on the clean ``cifar10`` spec, its training rows cut to the first B x 128 images
              (``TrainSubset``), one epoch, then the trainer's evaluation on the whole test
              split on disk, the epoch checkpoint, the final scoring and model file. Its epoch
              = the training steps scaled to the epoch + the evaluation scaled to the 10,000
              test images of CIFAR-10 (timed by wrapping the trainer's ``loss_and_accuracy``)
              + the run's once-only work (building the dataset, saving, scoring) spread over
              ``--run-epochs`` (70, the study's runs).
  (c') floor, compiled  with ``--compile``: (c) with ``torch.compile`` (inductor) of the model,
              fp32 only; the compile time (wall clock, always) is reported, not counted.
  batch_work  (a)'s own per-batch work besides the model (``index_select`` of the batch and
              aug01), timed alone over ``--batch-work-batches`` batches: on a busy machine,
              where (a) and (c) cannot be timed closely, batch_work / floor bounds what rsc
              adds to the floor more tightly than (a) / (c) does.

Each of (a), (u) and (c) runs in every variant: fp32 or bf16 autocast, channel-first or
channels-last. bf16 on a CPU without bfloat16 matrix instructions (``rsc_core.hardware``) is
reported as not available, not timed, unless ``--allow-emulated-bf16`` asks for one clearly
labelled emulated measurement. On a GPU (``--device cuda``) the data are moved to the GPU before
(a) starts (resident, as rsc trains), and times are taken after ``torch.cuda.synchronize()``.

Clock: wall time, or with ``--cpu-time`` the process's CPU time (one thread, CPU, no (b)): on
a shared machine the wall clock measures what the other processes leave of the cores, the CPU
clock what the work costs (cache and memory-bandwidth contention still show).

Timing: B batches (``--batches``; 0 = a whole epoch) after ``--warmup-batches`` on a throwaway
copy of the model, extrapolated to an epoch of ceil(N / 128) batches. ``--repeats`` > 1
interleaves the measurements and reports medians.

Targets (issues 12 and 21). CPU: (a) >= 2x faster than (b); (a) and (u) within 15% of (c) in
the same precision and memory format. GPU: (a) channels-last bf16 within 1.5x of (c)
channels-last bf16. PASS/FAIL is printed; the exit status is 0 either way (a benchmark, not a
test).

Run:  RSC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 \\
      .venv/bin/python benchmarks/cifar_throughput.py --batches 20 [--device cuda] [--json]
      (shared CPU: --threads 1 --cpu-time --skip-reference; torch.compile: --compile)
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
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
import rsc_core.runs.training as rsc_runs  # noqa: E402
from rsc_core.data.datasets import ImageData, load_dataset  # noqa: E402
from rsc_core.training.hardware import ALLOW_EMULATED_ENV, cpu_bf16_flags, cpu_has_bf16  # noqa: E402
from rsc_core.training.regularisers import build_regularisers  # noqa: E402
from rsc_core.training.trainer import TrainConfig  # noqa: E402

ARCH = "altResNet20Norm02"
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
FULL_TEST_IMAGES = 10_000  # CIFAR-10's test split; a partial copy on disk is scaled up to it
clock = time.perf_counter  # the benchmark's clock: wall time, or with --cpu-time process time
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


# --------------------------------------------------------------------------- (u) user


def measure_user(args: argparse.Namespace, device: torch.device, precision: str,
                 channels_last: bool) -> dict:
    """``train_run`` as ``rsc train`` calls it, on the first ``batches`` batches (see the
    module docstring for how its epoch is assembled)."""
    from rsc_core.data.spec import parse_spec
    from rsc_core.data.subsets import TrainSubset

    weight_decay = ({"name": "weight-decay", "params": {"value": WEIGHT_DECAY}},)
    config = TrainConfig(arch=ARCH, aug="aug01", optimizer="sgd", lr=LR, momentum=MOMENTUM,
                         batch_size=args.batch_size, epochs=1, seed=args.seed,
                         regularisers=weight_decay, precision=precision)
    memory_format = "channels-last" if channels_last else "contiguous"
    evaluations: list[float] = []
    epochs: list[float] = []
    module = sys.modules[type(rsc_core.create("trainers", "erm")).__module__]

    def one_run(batches: int) -> tuple[dict, float]:
        subset = TrainSubset.keeping(range(batches * args.batch_size))
        with tempfile.TemporaryDirectory(prefix="rsc-cifar-bench-") as runs_dir, \
                _timing(module, "loss_and_accuracy", evaluations), \
                _timing(module.ErmTrainer, "_train_epoch", epochs):
            started = clock()
            outcome = rsc_runs.train_run(parse_spec("cifar10"), config, runs_dir=runs_dir,
                                         data_dir=args.data_dir, progress=False,
                                         device=str(device), memory_format=memory_format,
                                         subset=subset)
            synchronize(device)
            return outcome.run.metrics, clock() - started

    if args.warmup_batches:
        one_run(max(args.warmup_batches, 1))
    evaluations.clear()
    epochs.clear()
    metrics, total = one_run(args.batches)
    steps, evaluation = sum(epochs), sum(evaluations)
    once = total - steps - evaluation
    scale = FULL_TEST_IMAGES / max(args.test_images, 1)
    epoch = (steps / args.batches * args.epoch_batches + evaluation * scale
             + once / args.run_epochs)
    return {"seconds": total, "batches": args.batches, "epoch_seconds": epoch,
            "steps_seconds": steps, "evaluation_seconds": evaluation,
            "evaluation_scale": scale, "once_seconds": once,
            "train_loss": metrics["history"][-1]["train_loss"]}


class _timing:
    """Wraps ``owner.name`` (a module's function or a class's method) for the duration,
    appending the seconds of each call, on the benchmark's clock, to ``sink``: how (u) splits
    a run into its training steps, its evaluation and the rest without changing rsc."""

    def __init__(self, owner: Any, name: str, sink: list[float]) -> None:
        self.owner, self.name, self.sink = owner, name, sink

    def __enter__(self) -> None:
        self.original = original = getattr(self.owner, self.name)
        sink = self.sink

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            result = original(*args, **kwargs)
            sink.append(clock() - started)
            return result

        setattr(self.owner, self.name, timed_call)

    def __exit__(self, *exc: Any) -> None:
        setattr(self.owner, self.name, self.original)


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


def measure_floor_compiled(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                           device: torch.device, channels_last: bool) -> dict:
    """(c) with ``torch.compile`` of the model (inductor), fp32. The warm-up runs on the same
    compiled model (a copy would compile again); the first call's compile time is reported."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    xb = x[:args.batch_size].to(device).contiguous(memory_format=memory_format)
    yb = y[:args.batch_size].to(device)
    model = torch.compile(fresh_model(args.seed, device, channels_last))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    model.train()

    def steps(count: int) -> torch.Tensor:
        loss = torch.zeros(())
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
        synchronize(device)
        return loss

    started = time.perf_counter()  # wall: inductor compiles in worker processes too
    steps(1)
    compile_seconds = time.perf_counter() - started
    steps(max(args.warmup_batches, 1))
    started = clock()
    loss = steps(args.batches)
    seconds = clock() - started
    return {"seconds": seconds, "batches": args.batches, "compile_seconds": compile_seconds,
            "epoch_seconds": seconds / args.batches * args.epoch_batches,
            "train_loss": float(loss.detach())}


def timed(train: Callable[[nn.Module, int], Any], model: nn.Module, args: argparse.Namespace,
          device: torch.device) -> tuple[Any, float]:
    """``train(model, args.batches)`` timed after ``args.warmup_batches`` on a copy (so the
    timed run starts from the same weights); returns its result and the seconds it took."""
    if args.warmup_batches:
        train(copy.deepcopy(model), args.warmup_batches)
    synchronize(device)
    started = clock()
    result = train(model, args.batches)
    synchronize(device)
    return result, clock() - started


# --------------------------------------------------------------------------- (a) - (c)


def measure_batch_work(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                       device: torch.device) -> dict:
    """What (a) does per batch besides the model: pick the batch from a permutation
    (``index_select`` of images and labels) and apply aug01; timed alone over many batches, so
    that it can be compared with the floor's per-batch time even on a busy machine."""
    from rsc_core.training.trainer import augment_aug01

    generator = torch.Generator(device=device).manual_seed(args.seed)
    order = torch.randperm(len(y), generator=generator, device=device)
    count = args.batch_work_batches
    batches = [order[(i * args.batch_size) % len(y):][:args.batch_size] for i in range(count)]
    augment_aug01(x.index_select(0, batches[0]), generator)  # warm-up
    synchronize(device)
    started = clock()
    for index in batches:
        augment_aug01(x.index_select(0, index), generator)
        y.index_select(0, index)
    synchronize(device)
    seconds = clock() - started
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
        if not args.skip_user and (precision, channels_last) != ("bf16", False):
            jobs[f"user/{name}"] = (lambda p=precision, c=channels_last:
                                    measure_user(args, device, p, c))
        if args.compile and precision == "fp32":
            jobs[f"floor-compiled/{name}"] = (lambda c=channels_last:
                                              measure_floor_compiled(x, y, args, device, c))
    jobs["batch_work/fp32-nchw"] = lambda: measure_batch_work(x, y, args, device)
    if not args.skip_reference:
        jobs["ref/fp32-nchw"] = lambda: measure_reference(host.images, host.labels, args,
                                                          device)
    return jobs


def run(args: argparse.Namespace) -> dict[str, Any]:
    global clock
    clock = time.process_time if args.cpu_time else time.perf_counter
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = base.machine_info()
    started = time.perf_counter()
    bundle = load_dataset("cifar10", args.data_dir)
    x, y = bundle.train.images, bundle.train.labels
    args.test_images = len(bundle.test.labels)
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
                         "workers": args.workers, "seed": args.seed,
                         "test_images": args.test_images, "run_epochs": args.run_epochs,
                         "compile": args.compile,
                         "clock": "cpu" if args.cpu_time else "wall"},
            "samples": samples, "epoch_seconds": epoch,
            "ratios": ratios(epoch), "targets": targets(epoch, device)}


def ratios(epoch: dict[str, float]) -> dict[str, float]:
    """``rsc_over_floor/<variant>`` (a)/(c) and ``ref_over_rsc/<variant>`` (b)/(a): how many
    times faster (a) is than (b); ``ref_over_floor`` is the most any trainer could show."""
    out: dict[str, float] = {}
    for name, seconds in epoch.items():
        kind, variant = name.split("/")
        if kind == "user" and f"floor/{variant}" in epoch:
            out[f"user_over_floor/{variant}"] = seconds / epoch[f"floor/{variant}"]
        if kind == "floor-compiled" and f"floor/{variant}" in epoch:
            out[f"compiled_over_floor/{variant}"] = seconds / epoch[f"floor/{variant}"]
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
        if name.startswith("user_over_floor/"):
            variant = name.split("/")[1]
            found[f"user/{variant}"] = {
                "description": f"(u) whole epoch within 15% of (c), {variant}",
                "value": value, "pass": value <= CPU_FLOOR_SLACK}
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
    print(f"  CPU flags     {' '.join(info.get('cpu_vector_flags') or ['(unknown)'])}")
    env = ", ".join(f"{k}={v}" for k, v in info["thread_env"].items() if v is not None)
    if env:
        print(f"  environment   {env}")
    print(f"  load average  {info['load_average_at_start']} at start, "
          f"{info['load_average_at_end']} at end")
    print(f"  measured      {settings['batches']} batches after {settings['warmup_batches']} "
          f"warm-up, extrapolated to {settings['epoch_batches']} batches "
          f"({settings['train_images']} images); {settings['repeats']} repeat(s)")
    print(f"  bf16          {result['bf16']}")
    print(f"  clock         {settings['clock']} time")
    print()
    print(f"  {'measurement':30s} {'s/epoch':>10s}")
    for name, seconds in result["epoch_seconds"].items():
        print(f"  {name:30s} {seconds:10.1f}")
    for name, runs in result["samples"].items():
        for run in runs:
            if "evaluation_seconds" in run:
                print(f"    {name}: steps {run['steps_seconds']:.1f} s for {run['batches']} "
                      f"batches, evaluation {run['evaluation_seconds']:.1f} s (x "
                      f"{run['evaluation_scale']:.0f} for the full test split), once-only "
                      f"{run['once_seconds']:.1f} s (/ {settings['run_epochs']} epochs)")
            if "compile_seconds" in run:
                print(f"    {name}: compile {run['compile_seconds']:.1f} s (not counted)")
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
    parser.add_argument("--skip-user", action="store_true",
                        help="do not measure (u), rsc as a user runs it")
    parser.add_argument("--compile", action="store_true",
                        help="also time the floor with torch.compile (inductor), fp32")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of the wall clock: on "
                             "a shared machine, what the work costs rather than what the other "
                             "processes leave of the cores (CPU only, one thread, no (b), whose "
                             "worker processes it would not count)")
    parser.add_argument("--run-epochs", type=int, default=70,
                        help="epochs a run's once-only work is spread over in (u)")
    parser.add_argument("--seed", type=int, default=0, help="model and shuffle seed")
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: RSC_DATA_DIR / rsc's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.run_epochs < 1:
        parser.error("--repeats, --batch-size and --run-epochs must be at least 1")
    if args.cpu_time and (args.device != "cpu" or not args.skip_reference):
        parser.error("--cpu-time needs --device cpu and --skip-reference")
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

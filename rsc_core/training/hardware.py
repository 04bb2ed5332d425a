"""What the machine can do for training precision: whether the CPU has bfloat16 matrix
instructions, and the autocast context a ``TrainConfig.precision`` asks for.

bf16 autocast on a CPU only pays off with AVX512-BF16 or AMX-BF16: without them torch still
runs bfloat16 matmuls, but by converting to float32 and back (emulated), which is slower than
plain fp32 and changes the numerics for nothing. So bf16 on such a CPU is refused unless the
user opts in with ``RSC_ALLOW_EMULATED_BF16=1`` (an environment variable, not a recipe option:
it says something about the machine, not the run, and so stays out of the run's hash).

Run ``python -m rsc_core.hardware`` to see what this machine reports."""
from __future__ import annotations

import functools
import os
import platform
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from rsc_core.errors import ConfigError

PRECISIONS = ("fp32", "bf16")
#: /proc/cpuinfo flags of instructions that multiply bfloat16 matrices natively: x86's
#: AVX512-BF16 and AMX-BF16, and arm64's BF16 extension (BFMMLA, e.g. AWS Graviton3).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
ALLOW_EMULATED_ENV = "RSC_ALLOW_EMULATED_BF16"
_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags Linux reports, or None where there is no /proc/cpuinfo."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 and arm64 spellings
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_flags() -> tuple[str, ...] | None:
    """Which of ``BF16_CPU_FLAGS`` this CPU has (possibly none); None when unknown (not Linux)."""
    flags = _cpu_flags() if platform.system() == "Linux" else None
    if flags is None:
        return None
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def cpu_has_bf16() -> bool | None:
    """True if the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16), False if it
    does not, None if rsc cannot tell (only Linux's /proc/cpuinfo is read)."""
    found = cpu_bf16_flags()
    return None if found is None else bool(found)


def cpu_model() -> str | None:
    """The processor's name as Linux reports it (``model name``), or None where unknown."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None


def cpu_vector_flags() -> tuple[str, ...] | None:
    """The CPU's vector and matrix instruction flags that decide training speed (AVX2,
    every AVX-512 extension, AMX), sorted; None where unknown. Benchmarks record them beside
    every number, because the same epoch takes twice as long without AVX-512."""
    flags = _cpu_flags() if platform.system() == "Linux" else None
    if flags is None:
        return None
    return tuple(sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx"))))


def load_average() -> tuple[float, float, float] | None:
    """The 1-, 5- and 15-minute load averages, or None where the OS has none: a number
    measured on a loaded machine says little without it."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return None


def hardware_report() -> dict[str, object]:
    """What rsc knows about this machine's speed-relevant features (processor, vector and
    bfloat16 instructions, load), for users and benchmarks."""
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_vector_flags": cpu_vector_flags(),
        "load_average": load_average(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "cpu_has_bf16": cpu_has_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def emulation_allowed() -> bool:
    """The user's opt-in to emulated bf16 (e.g. to study bf16 numerics on any CPU)."""
    return os.environ.get(ALLOW_EMULATED_ENV, "").lower() in ("1", "true", "yes")


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse a precision the device cannot run usefully; see the module docstring."""
    device = torch.device(device)
    if precision == "fp32":
        return
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return
    if device.type != "cpu":
        raise ConfigError(f"--precision bf16 runs on cpu and cuda only, not {device.type}; use "
                          f"--precision fp32 there")
    has_bf16 = cpu_has_bf16()
    if has_bf16 or emulation_allowed():
        return
    if has_bf16 is None:
        raise ConfigError(f"cannot tell whether this CPU has bfloat16 matrix instructions "
                          f"(rsc reads Linux's /proc/cpuinfo only), so --precision bf16 may be "
                          f"emulated (slower, no benefit); use --precision fp32, or set "
                          f"{ALLOW_EMULATED_ENV}=1 to run bf16 anyway")
    raise ConfigError(f"this CPU lacks bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16), "
                      f"so --precision bf16 would be emulated (slower, with no benefit); use "
                      f"--precision fp32, or set {ALLOW_EMULATED_ENV}=1 to run bf16 anyway")


def precision_autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The context to wrap forward + loss in: bf16 autocast on the device's type, or nothing.
    Checks ``precision`` against the device first (``check_precision``)."""
    device = torch.device(device)
    check_precision(precision, device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


if __name__ == "__main__":
    for key, value in hardware_report().items():
        print(f"{key}: {value}")

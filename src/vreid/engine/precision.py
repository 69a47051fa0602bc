"""Mixed precision chosen per machine: ``SOLVER.AMP auto`` resolves to what is fast on the device at hand.

bf16 autocast only pays where the hardware computes in bf16: GPUs that support it, and CPUs with AVX512-BF16
or AMX-BF16 (x86) or the BF16 extension (Arm). Elsewhere PyTorch emulates bf16 and a ResNet step runs several
times SLOWER than in float32 (3.5x on a Xeon without AVX512-BF16), so ``auto`` picks float32 there. GPUs without
bf16 get fp16 with a gradient scaler.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

AMP_AUTO = "auto"
#: Explicit SOLVER.AMP / UNIT.AMP values and their autocast dtype (None: float32, no autocast).
AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: SOLVER.AMP values: ``auto`` or an explicit one.
AMP_CHOICES = (AMP_AUTO, *AMP_DTYPES)

# /proc/cpuinfo flags (x86) or features (Arm) that mean native bf16 arithmetic.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere, so ``auto`` stays float32 there."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (the one capability query; tests replace it)."""
    return bool(cpu_flags() & _NATIVE_BF16_FLAGS)


def cuda_has_bf16() -> bool:
    """Whether the current CUDA device supports bf16 (compute capability 8.0+); tests replace it."""
    return torch.cuda.is_bf16_supported()


def resolve_amp(setting: str, device: torch.device | str) -> str:
    """The explicit precision (a key of :data:`AMP_DTYPES`) that ``setting`` means on ``device``.

    ``auto``: GPU -> bf16 where supported, else fp16 (with a scaler); CPU -> bf16 only with native support, else
    float32 (``off``). Explicit values are returned as they are.
    """
    if setting != AMP_AUTO:
        if setting not in AMP_DTYPES:
            raise ValueError(f"unknown precision {setting!r}; choose from {', '.join(AMP_CHOICES)}")
        return setting
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if cuda_has_bf16() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "off"
    return "off"


def amp_dtype(setting: str, device: torch.device | str, key: str = "SOLVER.AMP") -> torch.dtype | None:
    """Autocast dtype of ``setting`` on ``device`` (None: float32), logged in one line."""
    resolved = resolve_amp(setting, device)
    dtype = AMP_DTYPES[resolved]
    why = ""
    if setting == AMP_AUTO:
        device = torch.device(device)
        if device.type == "cpu":
            why = " (CPU with native bf16)" if dtype is not None else " (CPU without native bf16: float32 is faster)"
        elif device.type == "cuda":
            why = " (GPU with bf16)" if dtype is torch.bfloat16 else " (GPU without bf16: fp16 with loss scaling)"
    log.info("precision: %s on %s, %s %s%s", "float32" if dtype is None else resolved, device, key, setting, why)
    return dtype

"""Device choice and mixed-precision dtype, shared by planning, training and inference."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from autoseg.errors import AutosegError, UsageError


def choose_device(name: str | torch.device | None = None, error: type[AutosegError] = UsageError) -> torch.device:
    """``None``/``auto``: CUDA, else Apple MPS, else CPU; a named device must exist on this machine."""
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise error(f"--device {name!r}: choose cpu, cuda, cuda:N, mps or auto") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise error(f"--device {name!r}: choose cpu, cuda, cuda:N, mps or auto")
    if device.type != "cuda" and device.index is not None:  # predict blamed the checkpoint: 'device cpu:1 is invalid'
        raise error(f"--device {name}: {device.type} takes no device number; use --device {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise error(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                    f"cuda:{torch.cuda.device_count() - 1}; choose one of them")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise error("--device mps: Apple MPS is not available on this machine; use --device cpu")
    return device


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of a CUDA device; None where torch cannot tell (CPU RAM is shared, MPS)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


# x86 instructions that compute in bf16; torch's own check accepts AVX-512 BW/VL/DQ, where oneDNN
# emulates bf16 through fp32 and autocast is slower than float32 (reference §4).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux x86), ``None`` where they cannot be read."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def cpu_has_native_bf16() -> bool:
    """True where oneDNN computes bf16 natively: AVX512-BF16 or AMX-BF16 on x86 (never emulated
    bf16 on AVX-512 BW/VL/DQ alone); elsewhere (Arm) torch's check of the bf16 extension."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    flags = cpu_flags()
    return flags is not None and bool(flags & NATIVE_BF16_FLAGS)


# The mixed_precision settings autocast_dtype reads (the training config's rules refuse any other).
MIXED_PRECISION_SETTINGS = ("auto", "fp16", "bf16", "off")


def autocast_dtype(setting: str, device: torch.device, error: type[AutosegError] = UsageError,
                   name: str = "mixed_precision") -> torch.dtype | None:
    """Autocast dtype: ``auto`` = fp16 on CUDA, bf16 on CPUs with native bf16, else off. ``name`` is the
    setting as the user spelled it in refusals: the command line's ``--mixed-precision``, where the
    training setting and the Python argument are ``mixed_precision``."""
    if setting == "off":
        return None
    if setting == "fp16":
        if device.type != "cuda":
            raise error(f"{name}=fp16 needs CUDA (device is {device.type}); use bf16 or off")
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if setting != "auto":
        raise error(f"{name}={setting!r}: choose auto, fp16, bf16 or off")
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def training_memory_format(setting: bool | str, device: torch.device, spatial_dims: int,
                           dtype: torch.dtype | None) -> torch.memory_format:
    """The memory format a network trains in, for the training config's ``channels_last`` (true, false, auto).

    ``auto``: channels-last for a 3D network trained on CPU in float32, where oneDNN's backward
    convolutions run faster in it (up to 1.16x per training step on an AVX2 CPU, docs/benchmarks.md);
    contiguous in 2D, under autocast and on GPUs, where it was measured no faster or not measured.
    """
    if setting == "auto":
        setting = device.type == "cpu" and dtype is None and spatial_dims == 3
    if not setting:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last

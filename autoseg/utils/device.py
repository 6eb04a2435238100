"""Device choice and mixed-precision dtype, shared by planning, training and inference."""

from __future__ import annotations

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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise error("--device mps: Apple MPS is not available on this machine; use --device cpu")
    return device


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of a CUDA device; None where torch cannot tell (CPU RAM is shared, MPS)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose oneDNN kernels compute bf16 natively (AVX512-BF16/AMX; reference §4)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(setting: str, device: torch.device, error: type[AutosegError] = UsageError) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = fp16 on CUDA, bf16 on CPUs with native bf16, else off."""
    if setting == "off":
        return None
    if setting == "fp16":
        if device.type != "cuda":
            raise error(f"mixed_precision=fp16 needs CUDA (device is {device.type}); use bf16 or off")
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if setting != "auto":
        raise error(f"mixed_precision={setting!r}: choose auto, fp16, bf16 or off")
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None

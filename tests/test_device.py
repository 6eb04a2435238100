"""Device choice and autocast dtype: one implementation for planning, training and inference."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import InferenceError, TrainingError, UsageError
from autoseg.utils.device import autocast_dtype, choose_device, cpu_has_native_bf16, training_memory_format


def test_auto_picks_an_available_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert choose_device(None).type == expected and choose_device("auto").type == expected
    assert choose_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("name", "message"), [("gpu", "choose cpu, cuda, cuda:N, mps or auto"), ("xla", "choose cpu")])
def test_bad_device_names(name: str, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        choose_device(name, TrainingError)


@pytest.mark.parametrize("name", ["cpu:1", "cpu:0", "mps:0"])
def test_a_numbered_cpu_is_refused_not_blamed_on_the_checkpoint(name: str) -> None:
    """``predict --device cpu:1`` passed and failed loading the weights: 'checkpoint_final.safetensors: not a
    readable safetensors file (device cpu:1 is invalid); it is damaged'."""
    kind = name.split(":")[0]
    with pytest.raises(InferenceError, match=rf"--device {name}: {kind} takes no device number; use --device {kind}"):
        choose_device(name, InferenceError)


def test_a_cuda_device_number_beyond_the_machines_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UsageError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        choose_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_clear_error() -> None:
    with pytest.raises(InferenceError, match="--device cuda: CUDA is not available on this machine; use --device cpu"):
        choose_device("cuda", InferenceError)


def test_autocast_settings() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("off", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(UsageError, match="mixed_precision=fp16 needs CUDA"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(TrainingError, match="mixed_precision='half': choose auto, fp16, bf16 or off"):
        autocast_dtype("half", cpu, TrainingError)


@pytest.mark.parametrize(
    ("setting", "device", "dims", "dtype", "layout"),
    [
        ("auto", "cpu", 3, None, torch.channels_last_3d),  # the one case measured faster (docs/benchmarks.md)
        ("auto", "cpu", 2, None, torch.contiguous_format),
        ("auto", "cpu", 3, torch.bfloat16, torch.contiguous_format),
        ("auto", "cuda", 3, None, torch.contiguous_format),
        ("auto", "cuda", 3, torch.float16, torch.contiguous_format),
        (True, "cuda", 3, torch.float16, torch.channels_last_3d),
        (True, "cpu", 2, None, torch.channels_last),
        (False, "cpu", 3, None, torch.contiguous_format),
    ],
)
def test_training_memory_format(setting: bool | str, device: str, dims: int, dtype: torch.dtype | None,
                                layout: torch.memory_format) -> None:
    assert training_memory_format(setting, torch.device(device), dims, dtype) is layout


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse avx2 avx512f avx512bw avx512vl avx512dq", False),  # AVX-512 without bf16: emulated, never auto
        ("fpu avx512f avx512bw avx512vl avx512dq avx512_bf16", True),
        ("fpu avx512f avx512bw amx_tile amx_bf16", True),
        (None, False),  # flags unreadable: no guess
    ],
)
def test_native_bf16_needs_bf16_instructions(flags: str | None, native: bool, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autoseg.utils.device as device_module

    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)
    monkeypatch.setattr(device_module.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # torch's check: AVX-512 BW/VL/DQ
    assert cpu_has_native_bf16() is native
    assert autocast_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # asked for by name: the user's choice

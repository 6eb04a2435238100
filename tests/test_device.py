"""Device choice and autocast dtype: one implementation for planning, training and inference."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import InferenceError, TrainingError, UsageError
from autoseg.utils.device import autocast_dtype, choose_device, cpu_has_native_bf16


def test_auto_picks_an_available_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert choose_device(None).type == expected and choose_device("auto").type == expected
    assert choose_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("name", "message"), [("gpu", "choose cpu, cuda, cuda:N, mps or auto"), ("xla", "choose cpu")])
def test_bad_device_names(name: str, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        choose_device(name, TrainingError)


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

"""A checkpoint cut to its first 0-8 bytes (an interrupted copy, download or full disk) was refused as 'not a
readable safetensors file (header too small); it is damaged or not written by autoseg'; it is now named as
truncated, as a checkpoint cut later is. A file that is no safetensors file at all is still called unreadable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from autoseg.errors import InferenceError
from autoseg.utils.weights_file import load_weights, load_weights_skeleton, save_weights


@pytest.fixture()
def whole(tmp_path: Path) -> bytes:
    path = tmp_path / "whole.safetensors"
    save_weights(path, {"network_weights": {"w": torch.zeros(100)}, "metadata": {"a": 1}})
    return path.read_bytes()


@pytest.mark.parametrize("load", [load_weights, load_weights_skeleton])
@pytest.mark.parametrize("keep", [0, 1, 7])
def test_a_checkpoint_shorter_than_its_header_length_is_truncated(load, keep: int, whole: bytes, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_final.safetensors"
    path.write_bytes(whole[:keep])
    with pytest.raises(InferenceError) as caught:
        load(path, InferenceError)
    assert str(caught.value) == (f"{path}: is truncated ({keep} bytes, fewer than the 8 bytes of its header length: an "
                                 "interrupted copy, download or write?); copy it again whole")


@pytest.mark.parametrize("load", [load_weights, load_weights_skeleton])
@pytest.mark.parametrize("keep", [8, 9])
def test_a_checkpoint_cut_at_its_header_is_truncated(load, keep: int, whole: bytes, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_final.safetensors"
    path.write_bytes(whole[:keep])
    header = 8 + int.from_bytes(whole[:8], "little")
    with pytest.raises(InferenceError) as caught:
        load(path, InferenceError)
    assert str(caught.value) == (f"{path}: is truncated ({keep} bytes, fewer than its {header}-byte header: an "
                                 "interrupted copy, download or write?); copy it again whole")


@pytest.mark.parametrize("content", [b"not weights at all", (40).to_bytes(8, "little") + b"[1, 2]"])
def test_a_file_that_is_no_safetensors_file_is_not_called_truncated(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_final.safetensors"
    path.write_bytes(content)
    with pytest.raises(InferenceError, match=rf"^{re.escape(str(path))}: not a readable safetensors file \(.*\); it is "
                                             "damaged or not written by autoseg$"):
        load_weights(path, InferenceError)

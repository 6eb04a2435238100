"""A deployment without torch: `autoseg predict --engine onnxruntime` runs an exported ONNX model zip in an
interpreter where `import torch` fails, and writes the torch engine's labels; a missing engine is one line.

The interpreter is a fresh subprocess whose ``sys.meta_path`` starts with a finder that refuses torch
(and, for one test, onnxruntime) before autoseg is imported, so any import of torch on the path, eager or
lazy, fails the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from autoseg.dataset.imageio import read_image
from autoseg.inference.tiling import numpy_sliding_window_slabs
from cli_helpers import autoseg
from test_onnx import CASE, make_family_model

# Runs the CLI with the modules named in argv[1] (comma-separated) unimportable; prints the torch
# modules loaded at the end on stdout's last line.
BLOCKED_RUN = """
import json, sys
blocked = set(sys.argv[1].split(","))
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Refuse())
sys.argv = ["autoseg", *sys.argv[2:]]
from autoseg.cli import main
try:
    main()
finally:
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in blocked)))
"""


def run_blocked(blocked: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, blocked, *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model folder, its ONNX zip, an input folder with one real Hippocampus case)."""
    tmp = tmp_path_factory.mktemp("deploy")
    folder = make_family_model(tmp / "results", "unet")
    zip_path = tmp / "unet.onnx.zip"
    autoseg("export-model", "-m", folder, "-o", zip_path, "--format", "onnx", "-f", 0)
    inputs = tmp / "in"
    inputs.mkdir()
    (inputs / CASE.name).write_bytes(CASE.read_bytes())
    return folder, zip_path, inputs


def test_onnxruntime_engine_predicts_without_torch_and_matches_the_torch_engine(exported, tmp_path: Path) -> None:
    """Reading, cropping, resampling, normalization, the Gaussian-weighted sliding window with 8 mirror
    passes, resampling back and export run with torch unimportable; labels equal the torch engine's
    voxel for voxel and saved probabilities agree within 1e-3 (float16 storage, float32 arithmetic)."""
    folder, zip_path, inputs = exported
    autoseg("predict", "-i", inputs, "-o", tmp_path / "torch", "-m", folder, "--mixed-precision", "off", "--save-probabilities")
    done = run_blocked("torch", "predict", "-i", inputs, "-o", tmp_path / "onnx", "-m", zip_path,
                       "--engine", "onnxruntime", "--save-probabilities")
    assert done.returncode == 0, done.stderr
    assert "1 case(s) predicted" in done.stdout and json.loads(done.stdout.splitlines()[-1]) == []
    info = json.loads((tmp_path / "onnx" / "predict_info.json").read_text())
    assert info["mirror_axes"] == [0, 1, 2] and info["autocast_dtype"] == "None" and info["device"] == "cpu"
    expected, expected_geometry = read_image(tmp_path / "torch" / "hippocampus_001.nii.gz")
    got, geometry = read_image(tmp_path / "onnx" / "hippocampus_001.nii.gz")
    source, source_geometry = read_image(CASE)
    assert got.shape == source.shape and geometry.to_dict() == source_geometry.to_dict() == expected_geometry.to_dict()
    assert len(np.unique(expected)) > 1  # random weights: not a constant map
    np.testing.assert_array_equal(got, expected)
    p_torch = np.load(tmp_path / "torch" / "hippocampus_001.npz")["probabilities"].astype(np.float32)
    p_onnx = np.load(tmp_path / "onnx" / "hippocampus_001.npz")["probabilities"].astype(np.float32)
    assert p_onnx.shape == p_torch.shape == (3, *source.shape)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-3, rtol=0)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_the_numpy_window_equals_the_torch_window(activation: str) -> None:
    """Same tiles, padding (axis 0 is shorter than the patch), Gaussian shares, mirror passes and fold
    average whether the arrays are numpy's or torch's (float32 sums in another order: 1e-5)."""
    import torch

    from autoseg.inference.sliding_window import sliding_window_predict
    from test_inference_sliding_window import tiny_unet

    folds = [tiny_unet(3, seed=0), tiny_unet(3, seed=1)]
    data = torch.randn(1, 6, 21, 17, generator=torch.Generator().manual_seed(0))
    options = dict(mirror_axes=(0, 2), activation=activation, batch_tiles=3)
    expected = sliding_window_predict(folds, data, (8, 16, 16), **options).numpy()

    def as_numpy(network: torch.nn.Module):
        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return network(torch.from_numpy(x)).numpy()
        return run

    got = np.full_like(expected, np.nan)
    for row, slab in numpy_sliding_window_slabs([as_numpy(n) for n in folds], data.numpy(), (8, 16, 16), **options):
        assert isinstance(slab, np.ndarray)
        got[:, row : row + slab.shape[1]] = slab
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_missing_onnxruntime_is_one_line_with_the_install_command(exported, tmp_path: Path) -> None:
    _, zip_path, inputs = exported
    done = run_blocked("torch,onnxruntime", "predict", "-i", inputs, "-o", tmp_path / "out", "-m", zip_path, "--engine", "onnxruntime")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "autoseg: error: the onnxruntime engine needs onnxruntime (No module named 'onnxruntime'); install it with: "
        "pip install onnxruntime (or pip install 'autoseg[onnx]')"
    ]
    assert not (tmp_path / "out").exists()


def test_torch_engine_without_torch_is_one_line_naming_both_fixes(exported, tmp_path: Path) -> None:
    folder, _, inputs = exported
    done = run_blocked("torch", "predict", "-i", inputs, "-o", tmp_path / "out", "-m", folder)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("autoseg: error: --engine torch needs torch (No module named 'torch'); install it")
    assert "`autoseg export-model --format onnx` and predict with --engine onnxruntime" in line
    assert not (tmp_path / "out").exists()

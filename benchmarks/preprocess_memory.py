"""Peak memory of preprocessing one large CT (issue 4: "within a few times the size of the image").

Writes a synthetic CT (int16 HU: air, an elliptic body, bones; a label with two organs) as uncompressed
NIfTI, then runs the worker path of ``autoseg preprocess`` (``runner.preprocess_one``: read, transpose,
crop, normalize, resample, class locations, store) in a fresh process and reports its peak resident
memory (VmHWM) above the interpreter's baseline, relative to the image's float32 size.

Run: ``OMP_NUM_THREADS=1 python benchmarks/preprocess_memory.py [--shape Z Y X] [--spacing ...] [--target ...]``
The default is the issue's 512x512x600 CT (0.8 x 0.8 mm in-plane, 1.5 mm slices) resampled to
1.25 x 0.8 x 0.8 mm (so the slice axis is resampled with the 3D cubic spline); docs/preprocessing.md
records the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESAMPLING = {"image_order": 3, "label_order": 1, "order_z": 0, "separate_z_anisotropy_threshold": 3.0}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU, label uint8) in array order (z, y, x); built slab by slab to stay small."""
    z, y, x = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    body = (yy / 0.7) ** 2 + (xx / 0.9) ** 2 < 1
    spine = ((yy - 0.45) / 0.12) ** 2 + (xx / 0.1) ** 2 < 1
    image = np.full(shape, -1000, np.int16)
    label = np.zeros(shape, np.uint8)
    for k in range(z):
        t = k / max(1, z - 1)
        slab = np.where(body, 40, -1000).astype(np.int16)
        slab[spine] = 700
        slab += rng.normal(0, 20, (y, x)).astype(np.int16)
        image[k] = slab
        liver = ((yy + 0.1) / 0.35) ** 2 + ((xx + 0.4) / (0.3 + 0.2 * t)) ** 2 < 1
        kidney = ((yy - 0.2) / 0.12) ** 2 + ((xx - 0.45) / 0.1) ** 2 < 1
        label[k][liver & (0.2 < t < 0.7)] = 1
        label[k][kidney & (0.4 < t < 0.8)] = 2
    return image, label


def _plans(target: list[float], patch: list[int]) -> dict:
    return {
        "version": 1, "plans_name": "autosegPlans", "labels": {"background": 0, "liver": 1, "kidney": 2},
        "ignore_label": None, "regions_class_order": None, "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "autosegPlans_3d_fullres", "spatial_dims": 3, "spacing": target,
            "patch_size": patch,
            "normalization": [{"scheme": "ct", "use_mask": False, "clip": [-1000.0, 800.0], "mean": 60.0, "std": 150.0}],
            "resampling": RESAMPLING,
        }},
    }


def child(folder: Path, target: list[float]) -> None:
    """Run one case through the worker path and print JSON with the peak memory."""
    from autoseg.preprocessing.runner import preprocess_one

    baseline = _status_kb("VmRSS")
    start = time.perf_counter()
    preprocess_one(
        "ct", [folder / "ct_0000.nii"], folder / "ct.nii", _plans(target, [96, 160, 160]), "3d_fullres",
        folder / "out", "benchmark",
    )
    seconds = time.perf_counter() - start
    print(json.dumps({"baseline_mb": baseline / 1024, "peak_mb": _status_kb("VmHWM") / 1024, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[600, 512, 512], help="array order z y x")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8])
    parser.add_argument("--target", type=float, nargs=3, default=[1.25, 0.8, 0.8])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.target)
        return
    from autoseg.dataset.imageio import Geometry, write_image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image, label = synthetic_ct(tuple(args.shape))
        geometry = Geometry(tuple(args.spacing), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
        write_image(image, geometry, folder / "ct_0000.nii")
        write_image(label, geometry, folder / "ct.nii")
        image_mb = image.size * 4 / 2**20
        del image, label
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--target", *map(str, args.target)],
            check=True, capture_output=True, text=True,
        )
        stats = json.loads(result.stdout.strip().splitlines()[-1])
        out_mb = sum(p.stat().st_size for p in (folder / "out").iterdir()) / 2**20
    used = stats["peak_mb"] - stats["baseline_mb"]
    print(
        f"shape {tuple(args.shape)} spacing {tuple(args.spacing)} -> {tuple(args.target)}: "
        f"image {image_mb:.0f} MB as float32; peak RSS {stats['peak_mb']:.0f} MB "
        f"({used:.0f} MB above the {stats['baseline_mb']:.0f} MB baseline = {used / image_mb:.2f}x the image); "
        f"{stats['seconds']:.1f} s; stored {out_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()

"""Measure blosc2 codecs / levels / chunk shapes for the preprocessed store (docs/preprocessing.md).

For each setting: write time, size on disk relative to raw float32, and the mean time to read a random
training patch through ``blosc2.open`` (memory-mapped). Data: real cases from ``/work/shared/data``
(the CT example, normalized and resampled to 1 mm in-plane like a preprocessed CT; 20 hippocampus MRIs),
so the numbers reflect real intensity statistics. Single-threaded, as one preprocessing worker runs.

Run: ``OMP_NUM_THREADS=1 python benchmarks/store_codecs.py [data_root]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np

from autoseg.dataset.imageio import read_case_images
from autoseg.preprocessing import store
from autoseg.preprocessing.normalization import normalize
from autoseg.preprocessing.resampling import ResamplingScheme, resample_data

SETTINGS = [
    ("LZ4", 5), ("LZ4HC", 5), ("ZSTD", 1), ("ZSTD", 3), ("ZSTD", 5), ("BLOSCLZ", 5),
]
PATCH_READS = 30


def _ct(root: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    data, _ = read_case_images([root / "ct_mr_examples" / "example_ct_sm.nii.gz"])
    lo, hi = np.percentile(data, [0.5, 99.5])
    normalize(data, [{"scheme": "ct", "clip": [lo, hi], "mean": float(data.mean()), "std": float(data.std())}], None)
    shape = (data.shape[1] * 2, data.shape[2] * 3, data.shape[3] * 3)  # 3 mm -> 1.5 x 1 x 1 mm
    return resample_data(data, shape, ResamplingScheme(3, 0, 0)), (64, 128, 128)


def _hippocampus(root: Path) -> list[np.ndarray]:
    files = sorted((root / "Dataset004_Hippocampus" / "imagesTr").glob("*.nii.gz"))[:20]
    arrays = []
    for f in files:
        data, _ = read_case_images([f])
        normalize(data, [{"scheme": "zscore", "use_mask": False}], None)
        arrays.append(data)
    return arrays


def measure(arrays: list[np.ndarray], patch: tuple[int, ...], codec: str, clevel: int, chunk_patch, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    raw = sum(a.nbytes for a in arrays)
    size, write_s, read_s, reads = 0, 0.0, 0.0, 0
    for i, array in enumerate(arrays):
        path = folder / f"{codec}{clevel}_{i}.b2nd"
        start = time.perf_counter()
        store.write_array(path, array, chunk_patch, codec=blosc2.Codec[codec], clevel=clevel)
        write_s += time.perf_counter() - start
        size += path.stat().st_size
        handle = blosc2.open(str(path), mode="r", mmap_mode="r")
        spatial = array.shape[1:]
        p = [min(a, b) for a, b in zip(patch, spatial)]
        for _ in range(max(1, PATCH_READS // len(arrays))):
            lo = [int(rng.integers(0, s - q + 1)) for s, q in zip(spatial, p)]
            start = time.perf_counter()
            handle[(slice(None), *(slice(a, a + q) for a, q in zip(lo, p)))]
            read_s += time.perf_counter() - start
            reads += 1
    return {"ratio": size / raw, "write_MBps": raw / 1e6 / write_s, "patch_ms": 1e3 * read_s / reads}


def main(root: Path) -> None:
    blosc2.set_nthreads(1)
    ct, ct_patch = _ct(root)
    hippo = _hippocampus(root)
    datasets = [
        (f"CT {ct.shape[1:]} patch {ct_patch}", [ct], ct_patch),
        ("20 hippocampus MRIs, patch (40, 56, 40)", hippo, (40, 56, 40)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, arrays, patch in datasets:
            print(f"\n{name}")
            print("| codec | level | chunks | size / raw | write MB/s | patch read ms |")
            print("|---|---|---|---|---|---|")
            for chunk_name, chunk_patch in (("patch", patch), ("patch/2", tuple(max(1, p // 2) for p in patch)),
                                             ("whole image", tuple(10**6 for _ in patch))):
                for codec, level in SETTINGS:
                    if chunk_name != "patch" and (codec, level) not in (("ZSTD", 1), ("LZ4HC", 5)):
                        continue
                    r = measure(arrays, patch, codec, level, chunk_patch, Path(tmp))
                    print(f"| {codec} | {level} | {chunk_name} | {r['ratio']:.3f} | {r['write_MBps']:.0f} | {r['patch_ms']:.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data"))

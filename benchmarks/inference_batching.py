"""Sliding-window speed against tiles per forward pass, autocast, channels-last and torch.compile.

Backs the defaults of ``autoseg.inference.sliding_window`` (``BATCH_VOXELS`` per device type, mirrored
copies filling small batches) and ``--mixed-precision auto`` with measurements. The network is nnU-Net
v2's 3d_fullres plan for Dataset004 (plain U-Net, 32-64-128-256 features, 40x56x40 patch) with random
weights; two images: one tile (a Hippocampus case, 8 TTA mirrorings) and many tiles (TTA off).

Run: ``python benchmarks/inference_batching.py [--device cpu|cuda] [--compile] [--channels-last] [--repeats 3]
[--many-shape Z Y X]``; prints a
Markdown table (seconds per image, the fastest of ``--repeats`` after a warm-up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs without installing autoseg

from autoseg.inference.sliding_window import default_batch_tiles, sliding_window_predict  # noqa: E402
from autoseg.networks import create_network  # noqa: E402

TOPOLOGY = {
    "spatial_dims": 3, "features_per_stage": [32, 64, 128, 256], "kernel_sizes": [[3, 3, 3]] * 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
}
PATCH = (40, 56, 40)
ONE_TILE = (36, 50, 35)  # a Hippocampus case


def timed(run, repeats: int, device: torch.device) -> float:
    run()  # warm-up: kernel selection, compilation
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(network)")
    parser.add_argument("--channels-last", action="store_true", help="also time channels-last tiles")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiles", type=int, nargs="+", default=[1, 2, 4, 8], help="tiles per pass to time (and the default)")
    parser.add_argument("--many-shape", type=int, nargs=3, default=[160, 224, 160], metavar=("Z", "Y", "X"),
                        help="the many-tile image (80 112 80 keeps a CPU run to minutes)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    network = create_network("unet", TOPOLOGY, 1, 3, deep_supervision=False).to(device).eval()
    variants = {"eager": (network, False)}
    if args.channels_last:
        variants["eager, channels-last"] = (network, True)
    if args.compile:
        variants["compiled"] = (torch.compile(network, dynamic=False), False)
    half = torch.bfloat16 if device.type == "cpu" else torch.float16
    default = default_batch_tiles(PATCH, device)
    rows = []
    images = {"one tile, TTA x8": (ONE_TILE, (0, 1, 2)),
              f"{'x'.join(map(str, args.many_shape))}, no TTA": (tuple(args.many_shape), ())}
    for image_name, (shape, mirror_axes) in images.items():
        data = torch.randn(1, *shape)
        for variant, (net, channels_last) in variants.items():
            for dtype in (None, half):
                for tiles in sorted({*args.tiles, default}):
                    def run() -> None:
                        sliding_window_predict(net, data, PATCH, mirror_axes=mirror_axes, batch_tiles=tiles,
                                               device=device, autocast_dtype=dtype, channels_last=channels_last)
                    seconds = timed(run, args.repeats, device)
                    name = "float32" if dtype is None else str(dtype).replace("torch.", "")
                    mark = " (default)" if tiles == default else ""
                    rows.append(f"| {image_name} | {variant} | {name} | {tiles}{mark} | {seconds:.3f} |")
                    print(rows[-1], flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"\n{device_name}, torch {torch.__version__}, patch {PATCH}\n")
    print("| image | network | dtype | tiles per pass | seconds |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

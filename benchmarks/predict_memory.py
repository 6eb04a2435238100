"""Peak RAM and time of ``autoseg predict`` on a synthetic CT (issue 7, reference.md §1.6).

The setting of reference §1.6: a 512x512x300 CT at 0.8x0.8x1.5 mm, a 14-class plain U-Net with 8-64
features and a 64^3 patch, TTA off; nnU-Net v2 took 690 s and 18.6 GB there. The model has random
weights (memory and time do not depend on them); the plan keeps the input spacing, so the run measures
sliding window + export, as nnU-Net's does. Peak RSS is the process's high-water mark
(``ru_maxrss``), reported with the baseline after imports so the prediction's own share is visible.

Run: ``python benchmarks/predict_memory.py [--shape 300 512 512] [--classes 14] [--tta]
[--mixed-precision auto|off|bf16|fp16] [--json out.json]``. At full size this takes
several minutes on a 2-core CPU; ``--shape 80 160 160`` checks the script in seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.dataset.imageio import Geometry
from autoseg.inference.model import load_model
from autoseg.inference.predictor import predict_array
from autoseg.networks import create_network
from autoseg.utils.weights_file import save_weights

SPACING = (1.5, 0.8, 0.8)  # array order (z, y, x), reference §1.6
FEATURES = [8, 16, 32, 64, 64]  # "8-64 features", 5 stages down to 4^3 at a 64^3 patch
PATCH = [64, 64, 64]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Air (-1000 HU) around a cylinder of soft tissue with noise, built slice by slice in float32."""
    rng = np.random.default_rng(seed)
    data = np.full((1, *shape), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    body = (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (0.4 * min(shape[1:])) ** 2
    for z in range(shape[0]):
        data[0, z][body] = 40.0 + 30.0 * rng.standard_normal(int(body.sum()), dtype=np.float32)
    return data


def write_model(folder: Path, n_classes: int) -> None:
    topology = {
        "spatial_dims": 3,
        "features_per_stage": FEATURES,
        "kernel_sizes": [[3, 3, 3]] * len(FEATURES),
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (len(FEATURES) - 1),
    }
    labels = {"background": 0, **{f"organ{i}": i for i in range(1, n_classes)}}
    config = {
        "data_identifier": "autosegPlans_3d_fullres", "spatial_dims": 3, "spacing": list(SPACING),
        "median_shape": [300, 512, 512], "patch_size": PATCH, "batch_size": 2,
        "normalization": [{"scheme": "ct", "use_mask": False, "clip": [-1000.0, 1000.0], "mean": 40.0, "std": 300.0}],
        "resampling": {"image_order": 3, "label_order": 1, "order_z": 0, "separate_z_anisotropy_threshold": 3.0},
        "network": {"name": "unet", "topology": topology, "options": {}},
        "predicted_memory_bytes": 0, "predicted_seconds_per_iteration": 0.0, "num_iterations": None,
        "iterations_per_epoch": 250, "previous_stage": None, "next_stage": None,
    }
    plans = {
        "version": 1, "plans_name": "autosegPlans", "dataset_name": "Dataset990_SyntheticCT",
        "created_by": "benchmarks/predict_memory.py", "fingerprint_sha256": "", "channel_names": {"0": "CT"},
        "labels": labels, "regions_class_order": None, "ignore_label": None, "file_ending": ".nii.gz",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "foreground_intensity_properties_per_channel": {}, "budget": {"device": "cpu"},
        "configurations": {"3d_fullres": config},
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.manual_seed(0)
    network = create_network("unet", topology, 1, n_classes, deep_supervision=False)
    metadata = {
        "format_version": 1, "network": "unet", "network_options": {"deep_supervision": False},
        "topology": topology, "in_channels": 1, "num_outputs": n_classes, "configuration": "3d_fullres",
        "plans_name": "autosegPlans", "dataset_name": plans["dataset_name"], "mirror_axes": [0, 1, 2],
        "patch_size": PATCH, "epoch": 0, "iteration": 0,
    }
    save_weights(folder / "fold_0" / "checkpoint_final.safetensors", {"network_weights": network.state_dict(), "metadata": metadata})


def main(argv: list[str] | None = None) -> dict[str, float | str | list[int] | bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--mixed-precision", choices=("auto", "off", "bf16", "fp16"), default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "unet__autosegPlans__3d_fullres"
        write_model(folder, args.classes)
        model = load_model(folder, folds=[0], device=args.device)
        data = synthetic_ct(tuple(args.shape))
        geometry = Geometry(SPACING, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        baseline = peak_rss_gb()
        start = time.perf_counter()
        prediction = predict_array(model, data, geometry, tta=args.tta, mixed_precision=args.mixed_precision,
                                   overwrite_input=True)  # as predict_folder does
        seconds = time.perf_counter() - start
    result = {
        "shape": list(args.shape), "classes": args.classes, "tta": args.tta, "mixed_precision": args.mixed_precision, "device": args.device, "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 1), "peak_rss_gb": round(peak_rss_gb(), 3),
        "baseline_rss_gb_with_input": round(baseline, 3), "labels_dtype": str(prediction.labels.dtype),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""onnxruntime against torch for ``autoseg predict`` on this CPU: same model, same cases, same settings.

A model folder with nnU-Net's Hippocampus 3d_fullres network (4 stages, 32-256 features, 40x56x40 patch,
1 mm; random weights: speed does not depend on their values) is exported with
``export-model --format onnx``; ``predict_folder`` then runs the same cases with the torch engine
(float32, ``--mixed-precision off``, and ``auto``: bf16 where the CPU has it) and with the onnxruntime
engine (float32), mirroring TTA on, one thread each. The fastest of ``--repeats`` runs per engine
counts (the machine is shared). The labels of the two float32 engines are compared voxel by voxel.

    python benchmarks/bench_onnx.py [--cases 5] [--repeats 2] [--threads 1] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common

CONFIGURATION = "3d_fullres"
PATCH = [40, 56, 40]
TOPOLOGY = {
    "spatial_dims": 3, "features_per_stage": [32, 64, 128, 256], "kernel_sizes": [[3, 3, 3]] * 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
}
ZSCORE = {"scheme": "zscore", "use_mask": False, "clip": None, "mean": None, "std": None}


def write_model(results: Path, dataset_json: dict) -> Path:
    """``<results>/Dataset004_Hippocampus/unet__bench__3d_fullres`` with random weights."""
    import torch

    from autoseg.networks import create_network
    from autoseg.utils.weights_file import save_weights

    configuration = {
        "data_identifier": "bench_3d_fullres", "spatial_dims": 3, "spacing": [1.0, 1.0, 1.0], "median_shape": [36, 50, 35],
        "patch_size": PATCH, "batch_size": 2, "normalization": [ZSCORE],
        "resampling": {"image_order": 3, "label_order": 1, "order_z": 0, "separate_z_anisotropy_threshold": 3.0},
        "network": {"name": "unet", "topology": TOPOLOGY, "options": {}}, "predicted_memory_bytes": 0,
        "predicted_seconds_per_iteration": 0.0, "num_iterations": 1, "iterations_per_epoch": 1,
        "previous_stage": None, "next_stage": None,
    }
    plans = {
        "version": 1, "plans_name": "bench", "dataset_name": common.HIPPOCAMPUS, "channel_names": dataset_json["channel_names"],
        "labels": dataset_json["labels"], "regions_class_order": None, "ignore_label": None, "file_ending": ".nii.gz",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "foreground_intensity_properties_per_channel": {},
        "configurations": {CONFIGURATION: configuration},
    }
    folder = results / common.HIPPOCAMPUS / f"unet__bench__{CONFIGURATION}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    torch.manual_seed(0)
    network = create_network("unet", TOPOLOGY, 1, len(dataset_json["labels"]))
    metadata = {"format_version": 1, "network": "unet", "topology": TOPOLOGY, "in_channels": 1,
                "num_outputs": len(dataset_json["labels"]), "configuration": CONFIGURATION, "mirror_axes": [0, 1, 2],
                "patch_size": PATCH}
    save_weights(folder / "fold_0" / "checkpoint_final.safetensors", {"network_weights": network.state_dict(), "metadata": metadata})
    return folder


def timed_predict(inputs: Path, output: Path, model, mixed_precision: str) -> float:
    from autoseg.inference.batch import predict_folder

    start = time.perf_counter()
    predict_folder(inputs, output, model, mixed_precision=mixed_precision)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="print only, do not write docs/benchmarks.md")
    args = parser.parse_args()
    import torch

    from autoseg.dataset.imageio import read_image
    from autoseg.inference.model import load_model
    from autoseg.inference.onnx_model import export_onnx_model, load_onnx_model

    torch.set_num_threads(args.threads)
    source = common.DATA_ROOT / common.HIPPOCAMPUS
    cases = sorted((source / "imagesTr").glob("*_0000.nii.gz"))[: args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = work / "in"
        inputs.mkdir()
        for case in cases:
            (inputs / case.name).write_bytes(case.read_bytes())
        folder = write_model(work / "results", json.loads((source / "dataset.json").read_text()))
        start = time.perf_counter()
        zip_path = export_onnx_model(folder, work / "model.onnx.zip", folds=[0])
        export_seconds = time.perf_counter() - start
        engines = {  # name: (model, --mixed-precision, output folder)
            "torch float32": (load_model(folder, [0], device="cpu"), "off", work / "torch"),
            "torch auto (bf16 if native)": (load_model(folder, [0], device="cpu"), "auto", work / "torch_auto"),
            "onnxruntime float32": (load_onnx_model(zip_path), "off", work / "onnxruntime"),
        }
        best = {name: float("inf") for name in engines}
        for repeat in range(args.repeats):
            for name, (model, precision, output) in engines.items():
                best[name] = min(best[name], timed_predict(inputs, output, model, precision))
                print(f"repeat {repeat}: {name} {best[name]:.2f} s", file=sys.stderr)
        same, total = 0, 0
        for case in cases:
            name = case.name.replace("_0000", "")
            a, _ = read_image(work / "torch" / name)
            b, _ = read_image(work / "onnxruntime" / name)
            same, total = same + int((a == b).sum()), total + a.size
    reference = best["torch float32"]
    rows = [[name, common.fmt_seconds(seconds), common.fmt_seconds(seconds / len(cases)), f"{reference / seconds:.2f}x"]
            for name, seconds in best.items()]
    command = f"python benchmarks/bench_onnx.py --cases {args.cases} --repeats {args.repeats} --threads {args.threads}"
    body = (
        f"```bash\n{command}\n```\n\n"
        f"{len(cases)} Hippocampus cases, nnU-Net's 3d_fullres network for Dataset004 (4 stages, 32-256 features, "
        f"patch 40x56x40, random weights), 1 fold, mirroring TTA, {args.threads} thread(s); fastest of {args.repeats} runs. "
        f"ONNX export of the fold took {export_seconds:.1f} s.\n\n"
        + common.markdown_table(["engine", "all cases", "per case", "speed vs torch float32"], rows)
        + f"\n\nLabels of onnxruntime and torch (both float32): {same} of {total} voxels equal "
        f"({100 * same / total:.4f} %).\n"
    )
    print(body)
    if not args.no_doc:
        common.write_section("onnx", "onnxruntime against torch for prediction on this CPU (issue 16)", body)


if __name__ == "__main__":
    main()

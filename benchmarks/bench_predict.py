"""Prediction: ``autoseg predict`` against ``nnUNetv2_predict`` (issue 7), both tools in one run.

Two measurements, each written as a section of ``docs/benchmarks.md``:

1. ``time``: the cases of Dataset004_Hippocampus (all 208, or ``--cases N``) predicted by both tools with
   the network nnU-Net v2 plans for that dataset (3d_fullres: its patch, features, kernels, strides, convs
   per stage), mirroring TTA on (8 passes), step 0.5, CPU. The plan comes from
   ``nnUNetv2_plan_and_preprocess --no_pp`` (or ``--nnunet-plans``); both networks get RANDOM weights:
   prediction time does not depend on the weights, and no training is measured.
2. ``memory``: the setting of reference.md §1.6, a synthetic CT (default 300x512x512 voxels at
   1.5x0.8x0.8 mm, 14 classes, a plain U-Net 8-16-32-64 with a 64^3 patch, TTA off, one case, spacing kept
   so no resampling), peak RSS of each process tree. And the export check "identical segmentations given
   identical logits": one logits tensor on a smaller case's preprocessed grid (with a spacing change and a
   crop) goes through nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` and
   autoseg's ``restore_probabilities_to_labels``; the fraction of agreeing voxels is reported.

nnU-Net's model folder is written in its own checkpoint format (``fold_0/checkpoint_final.pth`` with
``network_weights``, ``init_args``, ``trainer_name``, ``inference_allowed_mirroring_axes``) by a snippet
run with the nnU-Net venv's Python; autoseg's (docs/architecture.md) holds plans converted from the same
nnU-Net plan. Both networks' forward-path parameter counts are compared as a check of equal size.

Run: ``python benchmarks/bench_predict.py [time|memory|all] [--cases N] [--float32] [--shape Z Y X] [--classes C]``
(``--help`` for the rest). Full run on an idle 2-core machine, estimated: time 30-50 min per
repeat, memory 20-25 min (nnU-Net alone took 690 s there, reference §1.6).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import (
    HIPPOCAMPUS,
    Measurement,
    alternate,
    autoseg_command,
    check,
    fmt_bytes,
    fmt_seconds,
    markdown_table,
    nnunet_command,
    nnunet_venv,
    ratio,
    temporary_raw_root,
    thread_env,
    tree_rss_bytes,
    warm_file_cache,
    write_section,
)

CONFIGURATION = "3d_fullres"
NNUNET_TRAINER = "nnUNetTrainer"
NNUNET_PLANS_NAME = "nnUNetPlans"
AUTOSEG_NETWORK = "unet"
SEED = 0
MIRROR_AXES = (0, 1, 2)  # nnU-Net's default for 3D models: 8 TTA passes (reference §1.6)
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's separate-z threshold (reference §1.3)
NNUNET_NORMALIZATION = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none"}
# reference.md §1.6: the synthetic CT nnU-Net took 690 s and 18.6 GB on.
CT_SPACING = (1.5, 0.8, 0.8)  # array order (z, y, x)
CT_INTENSITIES = {"mean": 40.0, "std": 300.0, "median": 40.0, "min": -1000.0, "max": 1000.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}
CT_DATASET_ID = 990
CT_DATASET = f"Dataset{CT_DATASET_ID}_SyntheticCT"
CT_CASE = "synct_001"
EXPORT_TARGET_SPACING = (1.2, 1.2, 1.2)  # every axis resampled on export; anisotropy < 3: no separate z
EXPORT_SMOOTHING_SIGMA = 2.0  # voxels: logits vary smoothly, as a network's do
KILL_GRACE_SECONDS = 5.0

# Run with the nnU-Net venv's Python: instantiate nnU-Net's network from its plans manager, save it in
# nnUNetTrainer.save_checkpoint's format, print the parameter counts (all, and the forward path of a
# network without deep supervision: the last segmentation head only).
NNUNET_MODEL_SNIPPET = r"""
import json, os, sys
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

folder, configuration, seed, mirror_axes = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
plans = json.load(open(os.path.join(folder, "plans.json")))
dataset_json = json.load(open(os.path.join(folder, "dataset.json")))
manager = PlansManager(plans)
config = manager.get_configuration(configuration)
torch.manual_seed(seed)
network = nnUNetTrainer.build_network_architecture(
    manager, config, determine_num_input_channels(manager, config, dataset_json),
    manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
checkpoint = {
    "network_weights": network.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
    "logging": {}, "_best_ema": None, "current_epoch": 0,
    "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset_json,
                  "device": torch.device("cpu")},
    "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": tuple(mirror_axes),
}
os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
torch.save(checkpoint, os.path.join(folder, "fold_0", "checkpoint_final.pth"))
heads = len(network.decoder.seg_layers)
unused = [f"decoder.seg_layers.{i}." for i in range(heads - 1)]
total = sum(p.numel() for p in network.parameters())
forward = sum(p.numel() for n, p in network.named_parameters() if not n.startswith(tuple(unused)))
print(json.dumps({"parameters": total, "forward_parameters": forward}))
"""

# Run with the nnU-Net venv's Python: nnU-Net's own export of logits on the preprocessed grid.
NNUNET_EXPORT_SNIPPET = r"""
import json, os, sys
import numpy as np, torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

folder = sys.argv[1]
load = lambda name: json.load(open(os.path.join(folder, name)))
manager = PlansManager(load("plans.json"))
labels = manager.get_label_manager(load("dataset.json"))
logits = torch.from_numpy(np.load(os.path.join(folder, "logits.npy")))
seg = convert_predicted_logits_to_segmentation_with_correct_shape(
    logits, manager, manager.get_configuration("3d_fullres"), labels, load("properties.json"), num_threads_torch=1)
np.save(os.path.join(folder, "nnunet_seg.npy"), np.asarray(seg))
"""


# ------------------------------------------------------------------------------------ processes
@dataclass
class TreeMeasurement(Measurement):
    """A ``Measurement`` plus the peak PSS of the tree (shared pages split among the processes sharing them).

    Summed RSS counts a page shared by k processes (torch's libraries in every worker) k times; PSS
    counts it once in all. Both are reported: RSS is what the goal is stated in, PSS what RAM really held.
    """

    peak_pss_bytes: int = 0


def tree_pss_bytes(root_pid: int) -> int:
    """Proportional set size of ``root_pid`` and its descendants, summed (``/proc/PID/smaps_rollup``)."""
    total = 0
    for pid in common.process_tree(root_pid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return total


def run_tree(command: Sequence[str], env: dict[str, str], timeout: float | None = None) -> TreeMeasurement:
    """Like ``common.run_measured`` (plus PSS), but the command gets its own process group, killed at the end.

    nnU-Net's worker processes (and autoseg's, if any) die with the run even when the benchmark is
    interrupted or a worker outlives its parent; nothing else on the machine is touched. After ``timeout``
    seconds the group is killed (a tool whose worker the kernel killed for memory may wait forever).
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        peak = peak_pss = 0
        try:
            while process.poll() is None:
                if timeout is not None and time.perf_counter() - start > timeout:
                    print(f"  {command[0]}: over {timeout:.0f} s, killed", file=sys.stderr)
                    break
                peak = max(peak, tree_rss_bytes(process.pid))
                peak_pss = max(peak_pss, tree_pss_bytes(process.pid))
                time.sleep(common.RSS_POLL_SECONDS)
        finally:
            wall = time.perf_counter() - start
            _kill_group(process)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
    return TreeMeasurement(wall, peak, process.returncode, tail, peak_pss)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL the process group of ``process`` (its own session), if anything is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(0.2)  # let workers of an exited parent go before the final SIGKILL


def nnunet_python(snippet: str, arguments: Sequence[str], work: Path) -> str:
    """Run ``snippet`` with the nnU-Net venv's Python; its stdout."""
    script = work / "nnunet_snippet.py"
    script.write_text(snippet)
    result = subprocess.run([str(nnunet_venv() / "bin" / "python"), str(script), *arguments],
                            capture_output=True, text=True, env=thread_env(1), check=False)
    if result.returncode != 0:
        raise SystemExit(f"nnU-Net snippet failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def require_tools() -> None:
    """Stop with a clear message when autoseg predict or the nnU-Net venv is not usable."""
    if subprocess.run([*autoseg_command(), "predict", "--help"], capture_output=True, env=thread_env(1), check=False).returncode:
        raise SystemExit("not run: this autoseg has no `autoseg predict` command; docs/benchmarks.md is left unchanged")
    try:
        nnunet_command("nnUNetv2_predict")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"not run: the nnU-Net venv {common.NNUNET_VENV} is missing and benchmarks/setup_nnunet.sh failed "
            f"(exit {exc.returncode}); run `bash benchmarks/setup_nnunet.sh` and read its output"
        ) from None


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


# ---------------------------------------------------------------------------------- the plans
def nnunet_plan(raw: Path, work: Path, workers: int, given: Path | None) -> dict[str, Any]:
    """nnU-Net's own plans for Dataset004 (``nnUNetv2_plan_and_preprocess --no_pp``), or ``given``."""
    if given is not None:
        return json.loads(given.read_text())
    pre = work / "nnunet_planning"
    pre.mkdir()
    command = [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", CONFIGURATION,
               "-np", str(workers), "-npfp", str(workers), "--no_pp"]
    print("planning with nnU-Net (not timed) ...", file=sys.stderr)
    check(run_tree(command, common.nnunet_env(raw, pre, work / "unused_results", 1)), "nnUNetv2_plan_and_preprocess")
    return json.loads((pre / HIPPOCAMPUS / f"{NNUNET_PLANS_NAME}.json").read_text())


def architecture(nnunet_plans: dict[str, Any]) -> dict[str, Any]:
    """The 3d_fullres network of an nnU-Net plan as an autoseg topology (plain U-Net only)."""
    arch = nnunet_plans["configurations"][CONFIGURATION]["architecture"]
    if not arch["network_class_name"].endswith("PlainConvUNet"):
        raise SystemExit(f"nnU-Net plan uses {arch['network_class_name']}; this benchmark compares the plain U-Net")
    kw = arch["arch_kwargs"]
    return {
        "spatial_dims": len(kw["kernel_sizes"][0]),
        "features_per_stage": list(kw["features_per_stage"]),
        "kernel_sizes": kw["kernel_sizes"],
        "strides": kw["strides"],
        "blocks_per_stage": list(kw["n_conv_per_stage"]),
        "decoder_blocks_per_stage": list(kw["n_conv_per_stage_decoder"]),  # deepest first in both tools
    }


def autoseg_normalization(nnunet_plans: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    schemes = []
    for c, (name, use_mask) in enumerate(zip(config["normalization_schemes"], config["use_mask_for_norm"])):
        if name not in NNUNET_NORMALIZATION:
            raise SystemExit(f"nnU-Net normalization {name} has no autoseg equivalent in this benchmark")
        entry = {"scheme": NNUNET_NORMALIZATION[name], "use_mask": bool(use_mask), "clip": None, "mean": None, "std": None}
        if entry["scheme"] == "ct":
            p = nnunet_plans["foreground_intensity_properties_per_channel"][str(c)]
            entry.update(clip=[p["percentile_00_5"], p["percentile_99_5"]], mean=p["mean"], std=p["std"])
        schemes.append(entry)
    return schemes


def autoseg_plans(nnunet_plans: dict[str, Any], dataset_json: dict[str, Any]) -> dict[str, Any]:
    """autoseg plans (docs/architecture.md) with nnU-Net's 3d_fullres: spacing, patch, network, normalization."""
    config = nnunet_plans["configurations"][CONFIGURATION]
    data_kw, seg_kw = config["resampling_fn_data_kwargs"], config["resampling_fn_seg_kwargs"]
    topology = architecture(nnunet_plans)
    autoseg_config = {
        "data_identifier": f"{NNUNET_PLANS_NAME}_{CONFIGURATION}", "spatial_dims": topology["spatial_dims"],
        "spacing": config["spacing"], "median_shape": config["median_image_size_in_voxels"],
        "patch_size": config["patch_size"], "batch_size": config["batch_size"],
        "normalization": autoseg_normalization(nnunet_plans, config),
        "resampling": {"image_order": data_kw["order"], "label_order": seg_kw["order"], "order_z": data_kw["order_z"],
                       "separate_z_anisotropy_threshold": ANISOTROPY_THRESHOLD},
        "network": {"name": AUTOSEG_NETWORK, "topology": topology, "options": {}},
        "predicted_memory_bytes": 0, "predicted_seconds_per_iteration": 0.0, "num_iterations": None,
        "iterations_per_epoch": 250, "previous_stage": None, "next_stage": None,
    }
    return {
        "version": 1, "plans_name": NNUNET_PLANS_NAME, "dataset_name": nnunet_plans["dataset_name"],
        "created_by": "benchmarks/bench_predict.py from nnU-Net's plan", "fingerprint_sha256": "",
        "channel_names": dataset_json["channel_names"], "labels": dataset_json["labels"],
        "regions_class_order": None, "ignore_label": None, "file_ending": dataset_json["file_ending"],
        "transpose_forward": nnunet_plans["transpose_forward"], "transpose_backward": nnunet_plans["transpose_backward"],
        "foreground_intensity_properties_per_channel": nnunet_plans["foreground_intensity_properties_per_channel"],
        "budget": {"device": "cpu"}, "configurations": {CONFIGURATION: autoseg_config},
    }


def synthetic_ct_plans(template: dict[str, Any], shape: Sequence[int], spacing: Sequence[float], features: Sequence[int],
                       patch: int) -> dict[str, Any]:
    """nnU-Net plans for the synthetic CT: Dataset004's plan with its 3d_fullres edited (spacing kept, CT norm)."""
    plans = copy.deepcopy(template)
    config = plans["configurations"][CONFIGURATION]
    n = len(features)
    config.update(
        data_identifier=f"{NNUNET_PLANS_NAME}_{CONFIGURATION}", batch_size=2, patch_size=[patch] * 3,
        median_image_size_in_voxels=list(shape), spacing=list(spacing),
        normalization_schemes=["CTNormalization"], use_mask_for_norm=[False],
    )
    for key in ("previous_stage", "next_stage"):
        config.pop(key, None)
    config["architecture"]["arch_kwargs"].update(
        n_stages=n, features_per_stage=list(features), kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1), n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1),
    )
    plans.update(
        dataset_name=CT_DATASET, plans_name=NNUNET_PLANS_NAME, transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2],
        original_median_spacing_after_transp=list(spacing), original_median_shape_after_transp=list(shape),
        foreground_intensity_properties_per_channel={"0": dict(CT_INTENSITIES)}, configurations={CONFIGURATION: config},
    )
    return plans


def ct_dataset_json(classes: int) -> dict[str, Any]:
    labels = {"background": 0, **{f"organ{i}": i for i in range(1, classes)}}
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}


# ---------------------------------------------------------------------------------- the models
def write_nnunet_model(results: Path, nnunet_plans: dict[str, Any], dataset_json: dict[str, Any], work: Path,
                       mirror_axes: Sequence[int]) -> dict[str, int]:
    """``<results>/<Dataset>/nnUNetTrainer__nnUNetPlans__3d_fullres`` with random weights; its parameter counts."""
    folder = results / nnunet_plans["dataset_name"] / f"{NNUNET_TRAINER}__{NNUNET_PLANS_NAME}__{CONFIGURATION}"
    write_json(folder / "plans.json", nnunet_plans)
    write_json(folder / "dataset.json", dataset_json)
    out = nnunet_python(NNUNET_MODEL_SNIPPET, [str(folder), CONFIGURATION, str(SEED), json.dumps(list(mirror_axes))], work)
    return json.loads(out.strip().splitlines()[-1])


def write_autoseg_model(results: Path, plans: dict[str, Any], dataset_json: dict[str, Any],
                        mirror_axes: Sequence[int]) -> tuple[Path, int]:
    """``<results>/<Dataset>/unet__nnUNetPlans__3d_fullres`` with random weights; (folder, parameter count)."""
    import torch

    from autoseg.dataset.description import parse_description
    from autoseg.networks import create_network
    from autoseg.utils.weights_file import save_weights

    config = plans["configurations"][CONFIGURATION]
    topology = config["network"]["topology"]
    folder = results / plans["dataset_name"] / f"{AUTOSEG_NETWORK}__{NNUNET_PLANS_NAME}__{CONFIGURATION}"
    write_json(folder / "plans.json", plans)
    write_json(folder / "dataset.json", dataset_json)
    description = parse_description(dataset_json, folder / "dataset.json")
    n_in, n_out = description.num_channels, int(description.num_output_channels)
    torch.manual_seed(SEED)
    network = create_network(AUTOSEG_NETWORK, topology, n_in, n_out, deep_supervision=False)
    metadata = {
        "format_version": 1, "network": AUTOSEG_NETWORK, "network_options": {"deep_supervision": False},
        "topology": topology, "in_channels": n_in, "num_outputs": n_out, "configuration": CONFIGURATION,
        "plans_name": NNUNET_PLANS_NAME, "dataset_name": plans["dataset_name"], "mirror_axes": list(mirror_axes),
        "patch_size": config["patch_size"], "epoch": 0, "iteration": 0,
    }
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    save_weights(folder / "fold_0" / "checkpoint_final.safetensors", {"network_weights": network.state_dict(), "metadata": metadata})
    return folder, sum(p.numel() for p in network.parameters())


def network_line(plans: dict[str, Any], counts: dict[str, int], autoseg_parameters: int) -> str:
    topology = plans["configurations"][CONFIGURATION]["network"]["topology"]
    patch = plans["configurations"][CONFIGURATION]["patch_size"]
    same = "equal" if counts["forward_parameters"] == autoseg_parameters else "DIFFERENT"
    return (
        f"Network (nnU-Net's plan, both tools): plain U-Net, patch {'x'.join(map(str, patch))}, features "
        f"{'-'.join(map(str, topology['features_per_stage']))}, kernels {topology['kernel_sizes']}, strides "
        f"{topology['strides']}, {topology['blocks_per_stage'][0]} convs per stage. Parameters on the forward "
        f"path: nnU-Net {counts['forward_parameters']:,}, autoseg {autoseg_parameters:,} ({same}; nnU-Net's "
        f"checkpoint also holds its unused deep-supervision heads, {counts['parameters']:,} in all)."
    )


# -------------------------------------------------------------------------------- measurements
def count_outputs(folder: Path, ending: str) -> int:
    return sum(1 for p in folder.glob(f"*{ending}")) if folder.is_dir() else 0


class Predictions:
    """Runs both tools' prediction commands into fresh output folders and checks every case came out."""

    def __init__(self, work: Path, images: Path, n_cases: int, nnunet_args: list[str], autoseg_args: list[str],
                 nnunet_results: Path, threads: int, timeout: float | None, allow_nnunet_failure: bool = False) -> None:
        self.work, self.images, self.n_cases, self.threads = work, images, n_cases, threads
        self.nnunet_args, self.autoseg_args = nnunet_args, autoseg_args
        self.nnunet_results = nnunet_results
        self.allow_nnunet_failure = allow_nnunet_failure
        self.timeout = timeout
        self.runs = 0

    def _fresh(self, name: str) -> Path:
        self.runs += 1
        return self.work / f"out_{name}_{self.runs}"

    def _checked(self, result: Measurement, out: Path, what: str) -> Measurement:
        check(result, what)
        found = count_outputs(out, ".nii.gz")
        if found != self.n_cases:
            raise SystemExit(f"{what} wrote {found} of {self.n_cases} predictions into {out}:\n{result.output_tail}")
        return result

    def nnunet(self) -> Measurement:
        out = self._fresh("nnunet")
        empty = self.work / "nnunet_empty"
        empty.mkdir(exist_ok=True)
        env = common.nnunet_env(empty, empty, self.nnunet_results, self.threads)
        result = run_tree([nnunet_command("nnUNetv2_predict"), "-i", str(self.images), "-o", str(out), *self.nnunet_args], env, self.timeout)
        if result.returncode < 0 and self.allow_nnunet_failure:  # killed by a signal: out of memory or timeout
            return result
        return self._checked(result, out, "nnUNetv2_predict")

    def autoseg(self, extra: Sequence[str] = ()) -> Measurement:
        out = self._fresh("autoseg")
        env = thread_env(self.threads)
        command = [*autoseg_command(), "predict", "-i", str(self.images), "-o", str(out), *self.autoseg_args, *extra]
        result = run_tree(command, env, self.timeout)
        return self._checked(result, out, "autoseg predict")

    def autoseg_float32(self) -> Measurement:
        return self.autoseg(["--mixed-precision", "off"])


def nnunet_predict_args(dataset_id: int, workers: int, tta: bool) -> list[str]:
    args = ["-d", str(dataset_id), "-c", CONFIGURATION, "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu",
            "-npp", str(workers), "-nps", str(workers)]
    return args + ([] if tta else ["--disable_tta"])


def autoseg_predict_args(model: Path, tta: bool) -> list[str]:
    return ["-m", str(model), "-f", "0", "--device", "cpu"] + ([] if tta else ["--no-tta"])


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def shown(args: Sequence[str], replace: dict[str, str]) -> str:
    """A command line for the doc, temporary paths replaced by names."""
    text = " ".join(args)
    for path, name in sorted(replace.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return text


def command_block(images: Path, results: Path, model: Path, nn_args: Sequence[str], as_args: Sequence[str]) -> str:
    """Both tools' prediction commands for the doc, temporary paths shown as $IMGS, $RESULTS, $MODEL."""
    names = {str(images): "$IMGS", str(results): "$RESULTS"}
    model_shown = shown([str(model)], names)
    names[str(model)] = "$MODEL"
    return f"""```
nnUNet_results=$RESULTS nnUNetv2_predict -i $IMGS -o $OUT {" ".join(nn_args)}
autoseg predict -i $IMGS -o $OUT {shown(as_args, names)}
```
(`$MODEL` = `{model_shown}`.)"""


# ------------------------------------------------------------------------------------ 1. time
def bench_time(args: argparse.Namespace) -> None:
    with temporary_raw_root() as raw, tempfile.TemporaryDirectory(prefix="autoseg-bench-predict-") as tmp:
        work = Path(tmp)
        dataset = raw / HIPPOCAMPUS
        nnunet_plans = nnunet_plan(raw, work, args.num_workers, args.nnunet_plans)
        dataset_json = json.loads((dataset / "dataset.json").read_text())
        results = work / "results"
        counts = write_nnunet_model(results, nnunet_plans, dataset_json, work, MIRROR_AXES)
        plans = autoseg_plans(nnunet_plans, dataset_json)
        model, autoseg_parameters = write_autoseg_model(results, plans, dataset_json, MIRROR_AXES)

        images = work / "images"
        images.mkdir()
        cases = sorted(dataset.joinpath("imagesTr").glob("*_0000.nii.gz"))[: args.cases]
        for image in cases:
            (images / image.name).symlink_to(image.resolve())
        warm_file_cache(images)
        threads = usable_cores()
        nn_args = nnunet_predict_args(4, args.num_workers, tta=True)
        as_args = autoseg_predict_args(model, tta=True)
        runs = Predictions(work, images, len(cases), nn_args, as_args, results, threads, args.timeout)
        print(f"predicting {len(cases)} cases with each tool ...", file=sys.stderr)
        jobs = {"nnunet": runs.nnunet, "autoseg": runs.autoseg}
        if args.float32:
            jobs["autoseg_float32"] = runs.autoseg_float32
        best = alternate(jobs, args.repeats)
        commands = command_block(images, results, model, nn_args, as_args)
        network = network_line(plans, counts, autoseg_parameters)

    a, n = best["autoseg"], best["nnunet"]
    k = len(cases)
    float32_line = ""
    if "autoseg_float32" in best:
        f = best["autoseg_float32"]
        float32_line = (f"\nautoseg with `--mixed-precision off` (float32, as nnU-Net computes on a CPU), same run: "
                        f"{fmt_seconds(f.wall_s)} for the {k} cases, {ratio(n.wall_s, f.wall_s)} faster than nnU-Net.\n")
    table = markdown_table(
        ["", "nnU-Net v2", "autoseg", "ratio nnU-Net / autoseg"],
        [
            [f"wall time, {k} cases (best of {args.repeats})", fmt_seconds(n.wall_s), fmt_seconds(a.wall_s), ratio(n.wall_s, a.wall_s)],
            ["per case", fmt_seconds(n.wall_s / k), fmt_seconds(a.wall_s / k), ratio(n.wall_s, a.wall_s)],
            ["peak RSS, process tree", fmt_bytes(n.peak_rss_bytes), fmt_bytes(a.peak_rss_bytes), ratio(n.peak_rss_bytes, a.peak_rss_bytes)],
            pss_row(n, a),
        ],
    )
    subset = "" if k == 208 else f" (a subset: `--cases {k}`; the goal is stated for all 208)"
    body = f"""
{k} cases of `{HIPPOCAMPUS}` (`imagesTr`, sorted){subset}, predicted on the CPU by both tools with the
network of nnU-Net v2's own 3d_fullres plan for this dataset (`nnUNetv2_plan_and_preprocess -d 4 -c
{CONFIGURATION} --no_pp`), mirroring TTA over axes {list(MIRROR_AXES)} (8 passes), step 0.5, Gaussian weighting,
fold 0 only. Both models have **random weights** (seed {SEED}): prediction time does not depend on the weights
and no training is measured; the segmentations are therefore not compared here. nnU-Net's model folder is in
its own format (`fold_0/checkpoint_final.pth`: `network_weights`, `init_args`, `trainer_name`,
`inference_allowed_mirroring_axes`), autoseg's holds plans converted from the same nnU-Net plan (spacing,
patch, normalization, topology). Both use all {threads} cores for torch (`OMP_NUM_THREADS={threads}`; nnU-Net
sets its threads to `cpu_count()` on CPU itself). autoseg runs with its default `--mixed-precision auto`, bf16
autocast on this CPU (native bf16: AMX; Dice impact: the mixed-precision section); nnU-Net
autocasts on CUDA only, so it computes in float32 here. nnU-Net gets {args.num_workers} preprocessing and
{args.num_workers} export workers. Input files read once before timing; runs alternate, fastest kept. Wall time
is the whole command (start-up, model loading, reading and writing included); peak RSS is summed over each
process tree, peak PSS too but with each page shared by k processes counted 1/k (torch's libraries in every
nnU-Net worker), the fairer figure for a multi-process tool. Goal (issue 7): autoseg at most half nnU-Net's time (ratio >= 2).

{network}

{commands}

{table}
{float32_line}
Reproduce: `python benchmarks/bench_predict.py time --cases {k} -np {args.num_workers} --repeats {args.repeats}{" --float32" if args.float32 else ""}`.
"""
    write_section("predict", "Prediction time, Dataset004 with nnU-Net's 3d_fullres plan (issue 7)", body)
    print(table)


# ---------------------------------------------------------------------------------- 2. memory
def write_ct(path: Path, shape: Sequence[int]) -> None:
    """The synthetic CT of ``predict_memory.py`` (air around a noisy soft-tissue cylinder) as int16 NIfTI."""
    import SimpleITK as sitk
    from predict_memory import synthetic_ct

    image = sitk.GetImageFromArray(synthetic_ct(tuple(shape))[0].astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in reversed(CT_SPACING)))  # ITK order (x, y, z)
    sitk.WriteImage(image, str(path), useCompression=True)


def export_case(shape: Sequence[int], classes: int, seed: int = SEED) -> tuple[np.ndarray, dict[str, Any], list[int]]:
    """Smooth random logits on the preprocessed grid of a cropped case; (logits, nnU-Net properties, bbox sizes)."""
    from scipy import ndimage

    from autoseg.preprocessing.resampling import new_shape

    margins = [(1, 2), (3, 2), (2, 4)]  # voxels cropped before/after per axis: the un-crop is exercised
    bbox = [[lo, s - hi] for s, (lo, hi) in zip(shape, margins)]
    cropped = [b - a for a, b in bbox]
    pp_shape = new_shape(cropped, CT_SPACING, EXPORT_TARGET_SPACING)
    rng = np.random.default_rng(seed)
    logits = np.empty((classes, *pp_shape), dtype=np.float32)
    for c in range(classes):
        smooth = ndimage.gaussian_filter(rng.standard_normal(pp_shape).astype(np.float32), EXPORT_SMOOTHING_SIGMA)
        logits[c] = smooth / smooth.std()
    properties = {"spacing": list(CT_SPACING), "shape_before_cropping": list(shape), "bbox_used_for_cropping": bbox,
                  "shape_after_cropping_and_before_resampling": cropped}
    return logits, properties, cropped


def compare_export(template: dict[str, Any], shape: Sequence[int], classes: int, features: Sequence[int], patch: int,
                   work: Path) -> dict[str, Any]:
    """Same logits through both tools' export; agreement of the label maps and the top-2 gap where they differ."""
    import torch

    from autoseg.preprocessing.inverse import restore_probabilities_to_labels
    from autoseg.preprocessing.resampling import resample_array, scheme_for

    folder = work / "export"
    folder.mkdir()
    logits, nn_props, cropped = export_case(shape, classes)
    nnunet_plans = synthetic_ct_plans(template, shape, EXPORT_TARGET_SPACING, features, patch)
    dataset_json = ct_dataset_json(classes)
    np.save(folder / "logits.npy", logits)
    write_json(folder / "plans.json", nnunet_plans)
    write_json(folder / "dataset.json", dataset_json)
    write_json(folder / "properties.json", nn_props)
    nnunet_python(NNUNET_EXPORT_SNIPPET, [str(folder)], work)
    reference = np.load(folder / "nnunet_seg.npy", allow_pickle=False)

    plans = autoseg_plans(nnunet_plans, dataset_json)
    properties = {"spacing": list(CT_SPACING), "target_spacing": list(EXPORT_TARGET_SPACING), "shape_after_crop": cropped,
                  "bbox": nn_props["bbox_used_for_cropping"], "shape_before_crop": list(shape), "transpose_forward": [0, 1, 2],
                  "shape_after_resampling": list(logits.shape[1:])}
    from_logits = restore_probabilities_to_labels(logits, properties, plans, CONFIGURATION)
    probabilities = torch.softmax(torch.from_numpy(logits), 0).numpy()
    from_probabilities = restore_probabilities_to_labels(probabilities, properties, plans, CONFIGURATION)

    # The margin between the two highest resampled logits where autoseg (fed logits) and nnU-Net differ.
    config = plans["configurations"][CONFIGURATION]
    scheme = scheme_for(config["resampling"], CT_SPACING, EXPORT_TARGET_SPACING, "label")
    crop = tuple(slice(a, b) for a, b in nn_props["bbox_used_for_cropping"])
    differ = (from_logits != reference)[crop]
    gaps = np.empty(0, dtype=np.float32)
    if differ.any():
        resampled = np.stack([resample_array(logits[c], cropped, scheme)[differ] for c in range(classes)])
        top2 = np.sort(resampled, axis=0)[-2:]
        gaps = top2[1] - top2[0]
    return {
        "shape": list(shape), "preprocessed_shape": list(logits.shape[1:]), "voxels": int(reference.size),
        "agree_logits": float(np.mean(from_logits == reference)), "differ_logits": int(np.sum(from_logits != reference)),
        "differ_outside_crop": int(np.sum(from_logits != reference) - differ.sum()),
        "max_gap": float(gaps.max()) if gaps.size else 0.0,
        "agree_probabilities": float(np.mean(from_probabilities == reference)),
        "differ_probabilities": int(np.sum(from_probabilities != reference)),
        "dtypes": f"{reference.dtype} / {from_logits.dtype}",
    }


def pss_row(n: TreeMeasurement, a: TreeMeasurement) -> list[str]:
    return ["peak PSS, process tree (shared pages counted once)", fmt_bytes(n.peak_pss_bytes),
            fmt_bytes(a.peak_pss_bytes), ratio(n.peak_pss_bytes, a.peak_pss_bytes)]


def peak_cell(m: Measurement) -> str:
    return fmt_bytes(m.peak_rss_bytes) + ("" if m.returncode == 0 else f" (killed by signal {-m.returncode}: at least this)")


def bench_memory(args: argparse.Namespace) -> None:
    shape, classes, features, patch = list(args.shape), args.classes, args.features, args.patch
    with temporary_raw_root() as raw, tempfile.TemporaryDirectory(prefix="autoseg-bench-predict-") as tmp:
        work = Path(tmp)
        template = nnunet_plan(raw, work, args.num_workers, args.nnunet_plans)
        print("comparing the exports of one logits tensor ...", file=sys.stderr)
        export = compare_export(template, args.export_shape, classes, features, patch, work)

        nnunet_plans = synthetic_ct_plans(template, shape, CT_SPACING, features, patch)
        dataset_json = ct_dataset_json(classes)
        results = work / "results"
        counts = write_nnunet_model(results, nnunet_plans, dataset_json, work, MIRROR_AXES)
        plans = autoseg_plans(nnunet_plans, dataset_json)
        model, autoseg_parameters = write_autoseg_model(results, plans, dataset_json, MIRROR_AXES)
        images = work / "images"
        images.mkdir()
        print(f"writing the synthetic CT {'x'.join(map(str, shape))} ...", file=sys.stderr)
        write_ct(images / f"{CT_CASE}_0000.nii.gz", shape)
        warm_file_cache(images)
        threads = usable_cores()
        nn_args = nnunet_predict_args(CT_DATASET_ID, 1, tta=False)
        as_args = autoseg_predict_args(model, tta=False)
        runs = Predictions(work, images, 1, nn_args, as_args, results, threads, args.timeout,
                           allow_nnunet_failure=True)
        print("predicting the synthetic CT with each tool ...", file=sys.stderr)
        best = alternate({"nnunet": runs.nnunet, "autoseg": runs.autoseg}, args.repeats)
        commands = command_block(images, results, model, nn_args, as_args)
        network = network_line(plans, counts, autoseg_parameters)

    a, n = best["autoseg"], best["nnunet"]
    table = markdown_table(
        ["", "nnU-Net v2", "autoseg", "ratio nnU-Net / autoseg"],
        [
            ["peak RSS, process tree", peak_cell(n), fmt_bytes(a.peak_rss_bytes), ratio(n.peak_rss_bytes, a.peak_rss_bytes)],
            pss_row(n, a),
            [f"wall time (best of {args.repeats})", fmt_seconds(n.wall_s) + ("" if n.returncode == 0 else " (killed)"),
             fmt_seconds(a.wall_s), ratio(n.wall_s, a.wall_s)],
        ],
    )
    size = "x".join(map(str, reversed(shape)))
    export_size = "x".join(map(str, reversed(export["shape"])))
    pp_size = "x".join(map(str, reversed(export["preprocessed_shape"])))
    gap = (f"every differing voxel has its two highest resampled logits within {export['max_gap']:.2e} of each "
           "other: ties broken differently after float rounding of the two interpolation codes"
           if export["differ_logits"] else "none differ")
    body = f"""
One synthetic CT of {size} voxels (x, y, z) at {CT_SPACING[2]}x{CT_SPACING[1]}x{CT_SPACING[0]} mm (air around a
noisy soft-tissue cylinder, int16 NIfTI), {classes} classes, the same plain U-Net in both tools (features
{'-'.join(map(str, features))}, patch {patch}^3, 2 convs per stage, **random weights**, seed {SEED}), TTA off,
step 0.5, CPU, all {threads} cores. The plan keeps the input spacing, so prediction is sliding window + export
(reference.md §1.6 measured nnU-Net at 690 s and 18.6 GB on 512x512x300, 14 classes). nnU-Net runs with one
preprocessing and one export worker (its least memory); peak RSS is summed over each process tree, sampled every
{common.RSS_POLL_SECONDS} s; peak PSS likewise, with each page shared by k processes counted 1/k. Goal (issue 7): autoseg's peak RAM at most a third of nnU-Net's (ratio >= 3).

{network}

{commands}

{table}

**Identical segmentations given identical logits.** One tensor of smooth random logits ({classes} classes) on the
preprocessed grid {pp_size} (at {EXPORT_TARGET_SPACING[0]} mm) of a {export_size} case (at
{CT_SPACING[2]}x{CT_SPACING[1]}x{CT_SPACING[0]} mm, cropped by a few voxels per side) was exported by nnU-Net's
`convert_predicted_logits_to_segmentation_with_correct_shape` (which resamples the logits linearly, then takes
the argmax) and by autoseg's `restore_probabilities_to_labels` (slab by slab and class by class into a running
argmax, then un-crop: the export `autoseg predict` feeds with the sliding window's slabs):

- autoseg given the same logits: **{export['agree_logits']:.4%}** of {export['voxels']:,} voxels agree
  ({export['differ_logits']} differ, {export['differ_outside_crop']} of them outside the crop; {gap}).
- autoseg given their softmax, as `autoseg predict` passes it (it averages probabilities, not logits):
  {export['agree_probabilities']:.4%} agree ({export['differ_probabilities']} differ: interpolating
  probabilities instead of logits moves class borders where two classes are close).

Label dtypes (nnU-Net / autoseg): {export['dtypes']}.

Reproduce: `python benchmarks/bench_predict.py memory --shape {' '.join(map(str, shape))} --classes {classes}
--features {' '.join(map(str, features))} --patch {patch} --export-shape {' '.join(map(str, export['shape']))}
--repeats {args.repeats}`.
"""
    write_section("predict_memory", f"Peak RAM of prediction, synthetic {size} CT, {classes} classes (issue 7)", body)
    print(table)
    print(json.dumps(export, indent=1))


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("time", "memory", "all"), default="all")
    parser.add_argument("--cases", type=int, default=208, help="time: predict the first N cases (default all 208)")
    parser.add_argument("-np", "--num-workers", type=int, default=2,
                        help="nnU-Net's -npp/-nps (time) and planning workers")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds; the fastest run is kept")
    parser.add_argument("--float32", action="store_true", help="time: also time autoseg with --mixed-precision off")
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("Z", "Y", "X"),
                        help="memory: the synthetic CT's array shape")
    parser.add_argument("--classes", type=int, default=14, help="memory: classes incl. background")
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64], help="memory: features per stage")
    parser.add_argument("--patch", type=int, default=64, help="memory: cubic patch edge")
    parser.add_argument("--export-shape", type=int, nargs=3, default=[80, 160, 160], metavar=("Z", "Y", "X"),
                        help="memory: the case whose logits both exports restore")
    parser.add_argument("--nnunet-plans", type=Path, help="reuse this nnUNetPlans.json of Dataset004 instead of planning")
    parser.add_argument("--timeout", type=float, help="kill a prediction command after this many seconds")
    parser.add_argument("--doc", type=Path, help="write the sections into this file instead of docs/benchmarks.md")
    args = parser.parse_args()
    if args.doc is not None:
        common.DOC = args.doc.resolve()
    require_tools()
    if args.what in ("time", "all"):
        bench_time(args)
    if args.what in ("memory", "all"):
        bench_memory(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The planner's preparation-time model against measured preprocessing (issue 14: the budget pays for it).

1. Per case: ``preprocess_one`` (read, crop, normalise, resample, store) timed case by case in this
   process on the first cases of each dataset, at the configuration's spacing, 2x coarser, 0.7x finer and
   coarser along one axis, against ``accounting.preprocess_case_seconds`` for the same shapes.
2. Whole runs: ``autoseg plan --budget 5m -c <configuration>`` then ``autoseg preprocess`` into a fresh
   folder: the plan's predicted ``preprocess`` against the time ``autoseg preprocess`` records.

Datasets: Hippocampus, ACDC, BraTS-mini and DRIVE (2d) from the shared data (read through a temporary raw
root of symlinks), and a synthetic CT of 16 cases of about 113x384x384 at 2.5x0.9x0.9 mm with a large
and a small organ (written into the temporary work folder), the kind of large image the shared data lack.

Run: ``python benchmarks/preprocess_time_model.py [--write]`` (about 9 minutes on 2 cores; ``--write``
replaces its section of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common import autoseg_command, markdown_table, temporary_raw_root, write_section

from autoseg.dataset.cases import training_cases
from autoseg.dataset.description import load_description
from autoseg.planning import accounting as A
from autoseg.preprocessing.resampling import resampling_work, scheme_for
from autoseg.preprocessing.runner import input_fingerprint, preprocess_one

SYNTHETIC_CT = "Dataset960_SynthCT"
# (dataset, configuration, cases timed one by one, spacing factors per axis of the planned spacing)
PER_CASE = (
    ("Dataset004_Hippocampus", "3d_fullres", 12, ((1, 1, 1), (2, 2, 2), (0.7, 0.7, 0.7))),
    ("Dataset027_ACDC", "3d_fullres", 4, ((1, 1, 1), (2, 2, 2), (0.7, 0.7, 0.7), (1, 3, 3))),
    ("Dataset905_BraTS2015Mini", "3d_fullres", 2, ((1, 1, 1), (2, 2, 2), (0.7, 0.7, 0.7), (4, 1, 1))),
    (SYNTHETIC_CT, "3d_fullres", 2, ((1, 1, 1), (2, 2, 2), (0.7, 0.7, 0.7), (3, 1, 1), (2.8, 4, 4))),
    ("Dataset906_DRIVE", "2d", 4, ((1, 1, 1), (1, 2, 2), (1, 0.7, 0.7))),
)
WHOLE_RUNS = (("Dataset004_Hippocampus", "3d_fullres"), ("Dataset027_ACDC", "3d_fullres"),
              ("Dataset905_BraTS2015Mini", "3d_fullres"), (SYNTHETIC_CT, "3d_fullres"),
              ("Dataset906_DRIVE", "2d"), ("Dataset027_ACDC", "2d"))


def synthetic_ct(raw: Path, cases: int = 16) -> None:
    """CT-like cases: air around a body ellipse, a large 'liver' ellipsoid and a small 'kidney', noise."""
    root = raw / SYNTHETIC_CT
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(cases):
        shape = (int(rng.integers(100, 121)), 384, 384)
        zz, yy, xx = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
        image = np.full(shape, -1000, np.float32)
        image[((yy - 192) / 150) ** 2 + ((xx - 192) / 175) ** 2 < 1] = 20
        c = np.array([shape[0] / 2, 170, 140]) + rng.normal(0, [5, 10, 10])
        liver = ((zz - c[0]) / (shape[0] * 0.3)) ** 2 + ((yy - c[1]) / 60) ** 2 + ((xx - c[2]) / 70) ** 2 < 1
        c = np.array([shape[0] / 2, 230, 250]) + rng.normal(0, [5, 10, 10])
        kidney = ((zz - c[0]) / 8) ** 2 + ((yy - c[1]) / 18) ** 2 + ((xx - c[2]) / 14) ** 2 < 1
        image[liver], image[kidney] = 60, 130
        image += rng.normal(0, 15, shape).astype(np.float32)
        label = (liver & ~kidney).astype(np.uint8) + 2 * kidney.astype(np.uint8)
        for array, name in ((image.astype(np.int16), f"imagesTr/ct_{i:03d}_0000.nii.gz"), (label, f"labelsTr/ct_{i:03d}.nii.gz")):
            written = sitk.GetImageFromArray(array)
            written.SetSpacing((0.9, 0.9, 2.5))
            sitk.WriteImage(written, str(root / name), useCompression=True)
    description = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "kidney": 2},
                   "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(description, indent=2))


def autoseg(*args: str) -> None:
    subprocess.run([*autoseg_command(), *args], check=True, stdout=subprocess.DEVNULL)


def predicted_case_seconds(props: dict, plans: dict, config: dict) -> float:
    """The model's seconds for one stored case, from the shapes and spacings preprocessing recorded."""
    channels, labels = len(plans["channel_names"]), len(plans["labels"])
    work = None
    if props["shape_after_crop"] != props["shape_after_resampling"]:
        scheme = scheme_for(config["resampling"], props["spacing"], props["target_spacing"], "image",
                            int(config.get("spatial_dims", 3)))
        work = resampling_work(props["shape_after_crop"], props["shape_after_resampling"], scheme)
    return A.preprocess_case_seconds(math.prod(props["shape_before_crop"]), channels, work,
                                     math.prod(props["shape_after_resampling"]), labels)


def per_case_rows(dataset: str, configuration: str, count: int, factors, work: Path) -> list[list[str]]:
    raw = Path(os.environ["AUTOSEG_RAW"]) / dataset
    autoseg("fingerprint", dataset)
    autoseg("plan", dataset, "--gpu-memory", "8", "-c", configuration, "--overwrite")
    plans = json.loads((Path(os.environ["AUTOSEG_PREPROCESSED"]) / dataset / "autosegPlans.json").read_text())
    cases = training_cases(raw, load_description(raw))[:count]
    rows = []
    for factor in factors:
        variant = copy.deepcopy(plans)
        config = variant["configurations"][configuration]
        config["spacing"] = [s * f for s, f in zip(config["spacing"], factor)]
        out = work / "per_case"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        measured, predicted = [], []
        preprocess_one(cases[0].case_id, cases[0].images, cases[0].label, variant, configuration, out,
                       input_fingerprint(cases[0], variant, config))  # warm-up (imports, first reads)
        for case in cases:
            start = time.perf_counter()
            preprocess_one(case.case_id, case.images, case.label, variant, configuration, out,
                           input_fingerprint(case, variant, config))
            measured.append(time.perf_counter() - start)
            props = json.loads((out / f"{case.case_id}.json").read_text())
            predicted.append(predicted_case_seconds(props, variant, config))
        ratios = [p / m for p, m in zip(predicted, measured)]
        shape = "x".join(map(str, props["shape_after_crop"])) + " -> " + "x".join(map(str, props["shape_after_resampling"]))
        rows.append([dataset, configuration, "x".join(f"{f:g}" for f in factor), shape, str(len(cases)),
                     f"{np.mean(measured):.3f}", f"{np.mean(predicted):.3f}", f"{min(ratios):.2f}-{max(ratios):.2f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def whole_run_row(dataset: str, configuration: str) -> list[str]:
    autoseg("fingerprint", dataset)
    autoseg("plan", dataset, "--budget", "5m", "-c", configuration, "--overwrite")
    folder = Path(os.environ["AUTOSEG_PREPROCESSED"]) / dataset
    config = json.loads((folder / "autosegPlans.json").read_text())["configurations"][configuration]
    shutil.rmtree(folder / config["data_identifier"], ignore_errors=True)
    autoseg("preprocess", dataset, "-c", configuration)
    timing = json.loads((folder / f"{config['data_identifier']}_preprocess_timing.json").read_text())
    predicted = config["predicted_seconds"]["preprocess"]
    row = [dataset, configuration, "x".join(f"{s:.3g}" for s in config["spacing"]), str(timing["cases"]),
           str(timing["workers"]), f"{predicted:.1f}", f"{timing['seconds']:.1f}", f"{timing['seconds'] / predicted:.2f}"]
    print(" | ".join(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the section of docs/benchmarks.md")
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="autoseg-preprocess-model-") as tmp:
        work = Path(tmp)
        raw = work / "raw"
        raw.mkdir()
        for dataset in sorted({d for d, *_ in PER_CASE} - {SYNTHETIC_CT}):
            linked = stack.enter_context(temporary_raw_root(dataset))
            (raw / dataset).symlink_to(linked / dataset)
        synthetic_ct(raw)
        os.environ.update(AUTOSEG_RAW=str(raw), AUTOSEG_PREPROCESSED=str(work / "preprocessed"),
                          AUTOSEG_RESULTS=str(work / "results"))
        case_rows = [row for spec in PER_CASE for row in per_case_rows(*spec, work)]
        run_rows = [whole_run_row(*spec) for spec in WHOLE_RUNS]
    body = ("`python benchmarks/preprocess_time_model.py --write`. The planner's preparation time "
            "(`accounting.preprocess_case_seconds`, constants in `planning/constants.py`) against preprocessing "
            "as it runs. The synthetic CT: 16 cases of 100-120x384x384 at 2.5x0.9x0.9 mm.\n\n"
            "**Per case** (`preprocess_one` in one process, case by case after one warm-up; spacing factor x the "
            "planned spacing):\n\n"
            + markdown_table(["dataset", "configuration", "spacing factor", "shape (last case)", "cases",
                              "measured mean (s)", "predicted mean (s)", "predicted / measured"], case_rows)
            + "\n\n**Whole runs** (`autoseg plan --budget 5m -c <configuration>`, then `autoseg preprocess`: "
            "the plan's predicted preprocess against the time preprocess recorded):\n\n"
            + markdown_table(["dataset", "configuration", "spacing (mm)", "cases", "workers", "predicted (s)",
                              "actual (s)", "actual / predicted"], run_rows))
    if args.write:
        write_section("preprocess_time_model", "Preparation time: the planner's model against measured preprocessing (issue 14)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()

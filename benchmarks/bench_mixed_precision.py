"""Dice and time of mixed-precision inference against float32 with a trained model (issue 7 §5).

A trained autoseg model predicts held-out cases twice in one process, once in float32 and once under
autocast (bf16 on a CPU, fp16 on CUDA), with the same TTA and step; both are scored against the
reference labels. Reported: mean Dice per class for each, the largest per-case Dice change, the share
of voxels labelled identically, and the prediction time ratio. The model is the fold-0 model of the
30-minute training benchmark (``bench_training.py``) or any other: pass its folder.

Run: ``python benchmarks/bench_mixed_precision.py --model RESULTS/Dataset004_Hippocampus/unet__autosegPlans__3d_fullres
--splits PREPROCESSED/Dataset004_Hippocampus/splits_final.json [--fold 0] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import DATA_ROOT, HIPPOCAMPUS, fmt_seconds, markdown_table, ratio, write_section

from autoseg.dataset.imageio import read_image
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.inference.batch import predict_folder
from autoseg.inference.model import load_model


def link_images(raw: Path, cases: list[str], folder: Path) -> None:
    folder.mkdir(parents=True)
    for case in cases:
        for image in sorted((raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].*")):
            (folder / image.name).symlink_to(image)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained model folder")
    parser.add_argument("--splits", type=Path, required=True, help="splits_final.json: the fold's validation cases")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--dataset", type=Path, default=DATA_ROOT / HIPPOCAMPUS, help="raw dataset folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--doc", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()

    cases = sorted(json.loads(args.splits.read_text())[args.fold]["val"])
    model = load_model(args.model, folds=[args.fold], device=args.device)
    summaries, seconds, labels = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="autoseg-bench-mp-") as tmp:
        images = Path(tmp) / "images"
        link_images(args.dataset, cases, images)
        for name, mixed in (("float32", "off"), ("mixed", "auto")):
            out = Path(tmp) / name
            predict_folder(images, out, model, step=0.5, tta=True, mixed_precision=mixed)  # warm-up run
            start = time.perf_counter()
            predict_folder(images, out, model, step=0.5, tta=True, mixed_precision=mixed)
            seconds[name] = time.perf_counter() - start
            summaries[name] = evaluate_folders(out, args.dataset / "labelsTr", model.dataset, num_workers=1,
                                               case_ids=cases)
            labels[name] = {c: read_image(out / f"{c}{model.dataset.file_ending}")[0] for c in cases}

    same = sum(int((labels["float32"][c] == labels["mixed"][c]).sum()) for c in cases)
    total = sum(labels["float32"][c].size for c in cases)
    per_case = {name: {e["case_id"]: e["metrics"] for e in s["metric_per_case"]} for name, s in summaries.items()}
    classes = list(summaries["float32"]["mean"])
    worst = max(abs(per_case["mixed"][c][k]["dice"] - per_case["float32"][c][k]["dice"]) for c in cases for k in classes)
    rows = [[k, f"{summaries['float32']['mean'][k]['dice']:.4f}", f"{summaries['mixed']['mean'][k]['dice']:.4f}"]
            for k in classes]
    rows.append(["foreground mean", f"{summaries['float32']['foreground_mean']['dice']:.4f}",
                 f"{summaries['mixed']['foreground_mean']['dice']:.4f}"])
    dice_table = markdown_table(["Dice", "float32", "mixed precision"], rows)
    kind = "bf16" if model.device.type == "cpu" else "fp16"
    body = f"""
The fold-{args.fold} model of `{args.model.parent.name}/{args.model.name}` predicted its {len(cases)} validation cases
twice in one process, TTA on (8 mirrorings), step 0.5, device `{model.device}`: float32, and under {kind} autocast
(`autoseg predict --mixed-precision auto`, the default). Each timed run follows an untimed warm-up run.

{dice_table}

- Largest change of one case's Dice for one class: {worst:.4f}.
- Voxels labelled identically: {same / total:.4%} of {total:,}.
- Time for the {len(cases)} cases: float32 {fmt_seconds(seconds['float32'])}, {kind} {fmt_seconds(seconds['mixed'])}
  ({ratio(seconds['float32'], seconds['mixed'])} faster).

Reproduce: `python benchmarks/bench_mixed_precision.py --model $MODEL --splits $PRE/{HIPPOCAMPUS}/splits_final.json
--fold {args.fold} --device {args.device} --doc`.
"""
    print(body)
    if args.doc:
        write_section("mixed_precision", "Mixed-precision inference: Dice and time against float32 (issue 7)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

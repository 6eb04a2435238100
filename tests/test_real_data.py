"""The real-data suite (issue 13, item 6): every dataset of ../shared/data through the command line.

Each dataset is cropped small (5 training cases and 1 held-out case, centred on the labels, geometry
kept) into temporary roots, then: verify -> fingerprint -> plan (the CPU compute budget, and
``--gpu-memory 8`` under another plans name) -> preprocess -> train fold 0 for 2 iterations ->
predict the held-out case in its own file format and geometry -> evaluate. The slow steps run once per
dataset in module-scoped fixtures; the tests check what each step left behind.

The CT and the MR of ``ct_mr_examples`` are single scans with 41 and 23 labels: six crops of each make a
dataset (labels renumbered without gaps, as nnU-Net's format requires), which checks CT normalisation and
many classes, some absent from a case, through the same steps.

Configurations: ACDC, DRIVE (RGB PNG) and EM (grey PNG) train 2d, Hippocampus, BraTS, CT and MR 3d_fullres;
BraTS also runs the cascade (3d_lowres, 5 folds, then 3d_cascade_fullres) from a plan made for a small
memory budget, which makes the planner keep 3d_lowres on a 24^3 crop. BraTS is the region dataset
(sigmoid outputs, nested regions, ``regions_class_order``): its checks follow the regions from
training to the report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch

from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import read_case_images, read_image
from autoseg.evaluation.metrics import evaluation_classes
from autoseg.planning.constants import GPU_MEMORY_USABLE_FRACTION
from autoseg.planning.planner import build_plans
from autoseg.planning.plans import plans_path, write_plans
from autoseg.postprocessing.determine import apply_postprocessing
from autoseg.preprocessing import load_case
from cli_helpers import TRAIN_SETTINGS, autoseg, set_options
from conftest import SHARED_DATA, small_timing_probe
from real_data_helpers import crop_cases, crop_dataset, dataset_from_one_case

TRAIN = [*set_options(TRAIN_SETTINGS), "--epochs", 1, "--workers", 0]
GPU_PLANS = "gpu8Plans"


@dataclass(frozen=True)
class OneScan:
    """A single labelled scan of shared/ct_mr_examples, cut into crops to make a dataset."""

    image: str
    label: str
    channel: str


@dataclass(frozen=True)
class RealDataset:
    name: str
    cases: tuple[str, ...]  # the last one is held out
    crop: tuple[int, int, int]  # (z, y, x) voxels; z ignored for 2D images
    configuration: str  # the one trained and predicted
    is_2d: bool = False
    one_scan: OneScan | None = None  # the cases are crops of this scan, not of a shared dataset

    @property
    def training_cases(self) -> tuple[str, ...]:
        return self.cases[:-1]

    @property
    def held_out(self) -> str:
        return self.cases[-1]


DATASETS = [
    RealDataset("Dataset004_Hippocampus", ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006",
                                           "hippocampus_008", "hippocampus_017"), (24, 32, 24), "3d_fullres"),
    RealDataset("Dataset027_ACDC", ("patient002_frame01", "patient003_frame01", "patient004_frame02", "patient005_frame01",
                                    "patient006_frame02", "patient009_frame01"), (6, 64, 64), "2d"),
    RealDataset("Dataset905_BraTS2015Mini", tuple(f"brats_2013_pat000{i}_1" for i in range(1, 7)), (24, 24, 24),
                "3d_fullres"),
    RealDataset("Dataset906_DRIVE", ("drive_21", "drive_22", "drive_23", "drive_24", "drive_25", "drive_26"),
                (1, 64, 64), "2d", is_2d=True),
    RealDataset("Dataset907_EMMembrane", ("em_00", "em_01", "em_02", "em_03", "em_04", "em_05"), (1, 64, 64), "2d",
                is_2d=True),
    RealDataset("Dataset950_TotalSegCT", tuple(f"case_{i:03d}" for i in range(6)), (16, 48, 64), "3d_fullres",
                one_scan=OneScan("example_ct_sm.nii.gz", "example_seg.nii.gz", "CT")),
    RealDataset("Dataset951_TotalSegMR", tuple(f"case_{i:03d}" for i in range(6)), (12, 40, 48), "3d_fullres",
                one_scan=OneScan("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR")),
]
BRATS = next(d for d in DATASETS if d.name == "Dataset905_BraTS2015Mini")


def dataset_params() -> list[Any]:
    return [pytest.param(d, id=d.name.split("_", 1)[1]) for d in DATASETS]


@dataclass
class Run:
    """What the pipeline left for one dataset."""

    spec: RealDataset
    raw: Path
    preprocessed: Path
    results: Path
    held_images: Path
    held_labels: Path
    predictions: Path
    printed: dict[str, str]

    @property
    def model_folder(self) -> Path:
        return self.results / f"unet__autosegPlans__{self.spec.configuration}"

    @property
    def ending(self) -> str:
        return load_description(self.raw).file_ending


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One raw/preprocessed/results root for the whole module (each dataset has its own folders)."""
    base = tmp_path_factory.mktemp("real_data")
    paths = {k: base / k for k in ("raw", "preprocessed", "results", "held_out")}
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for key, var in (("raw", "AUTOSEG_RAW"), ("preprocessed", "AUTOSEG_PREPROCESSED"), ("results", "AUTOSEG_RESULTS")):
            patch.setenv(var, str(paths[key]))
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            patch.delenv(var, raising=False)
        for path in paths.values():
            path.mkdir()
        small_timing_probe(patch)
        torch.set_num_threads(1)
        yield paths
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipelines(roots: dict[str, Path]) -> Callable[[RealDataset], Run]:
    """Each dataset's run, made once for every test (and fixture) that needs it."""
    done: dict[str, Run] = {}

    def pipeline(spec: RealDataset) -> Run:
        if spec.name not in done:
            done[spec.name] = run_pipeline(spec, roots)
        return done[spec.name]

    return pipeline


@pytest.fixture(scope="module", params=dataset_params())
def run(request: pytest.FixtureRequest, pipelines: Callable[[RealDataset], Run]) -> Run:
    return pipelines(request.param)


def run_pipeline(spec: RealDataset, roots: dict[str, Path]) -> Run:
    """Crop, verify, fingerprint, plan, preprocess, train fold 0, predict the held-out case, evaluate."""
    held = roots["held_out"] / spec.name
    if spec.one_scan is not None:
        raw, scans = roots["raw"] / spec.name, SHARED_DATA / "ct_mr_examples"
        cases = dataset_from_one_case(scans / spec.one_scan.image, scans / spec.one_scan.label, spec.one_scan.channel,
                                      raw, held, spec.crop, len(spec.cases))
        assert tuple(cases) == spec.cases
    else:
        source = SHARED_DATA / spec.name
        raw = crop_dataset(source, roots["raw"], spec.training_cases, spec.crop)
        crop_cases(source, [spec.held_out], spec.crop, held / "images", held / "labels")
    printed = {
        "verify": autoseg("verify", spec.name),
        "fingerprint": autoseg("fingerprint", spec.name, "-np", 1),
        "plan": autoseg("plan", spec.name),
        "preprocess": autoseg("preprocess", spec.name, "-c", spec.configuration, "-np", 1),
    }
    printed["train"] = autoseg("train", spec.name, spec.configuration, 0, *TRAIN, "--save-probabilities")
    predictions = held / "predictions"
    printed["predict"] = autoseg("predict", "-i", held / "images", "-o", predictions, "-d", spec.name,
                                 "-c", spec.configuration, "--no-tta")
    printed["evaluate"] = autoseg("evaluate", "-p", predictions, "-r", held / "labels", "-d", spec.name)
    return Run(spec, raw, roots["preprocessed"] / spec.name, roots["results"] / spec.name, held / "images",
               held / "labels", predictions, printed)


def allowed_labels(raw: Path) -> set[int]:
    """Values a label map of this dataset may hold: background plus the label values, or for regions
    the values ``regions_class_order`` writes."""
    description = load_description(raw)
    if description.has_regions:
        return {0, *description.regions_class_order}
    return set(description.label_values)


# ------------------------------------------------------------------------------------------ every dataset
def test_verify_and_fingerprint_see_the_crops(run: Run) -> None:
    spec = run.spec
    assert f"{len(spec.training_cases)} case(s) checked, no problems found" in run.printed["verify"]
    fingerprint = json.loads((run.preprocessed / "fingerprint.json").read_text())
    assert fingerprint["num_cases"] == len(spec.training_cases)
    assert len(fingerprint["channel_names"]) == len(load_description(run.raw).channel_names)
    expected = [1, *spec.crop[1:]] if spec.is_2d else list(spec.crop)
    assert [round(v) for v in fingerprint["median_shape_after_crop"]] == expected
    # Label volumes by value, named by their class or, for region datasets, by the regions holding them.
    description = load_description(run.raw)
    for value in description.foreground_labels:
        name = description.class_names.get(value) or "in " + ", ".join(n for n, v in description.regions if value in v)
        size = "area" if spec.is_2d else "volume"  # a 2D image's placeholder slice spacing counts as 1 mm
        assert f"class {value} ({name}): median {size}" in run.printed["fingerprint"]


def test_cpu_plan_keeps_2d_and_3d_fullres_for_3d_data(run: Run) -> None:
    plans = json.loads(plans_path(run.preprocessed, "autosegPlans").read_text())
    configurations = plans["configurations"]
    assert set(configurations) >= ({"2d"} if run.spec.is_2d else {"2d", "3d_fullres"})
    assert plans["budget"]["device"] == "cpu"
    description = load_description(run.raw)
    assert plans["regions_class_order"] == description.regions_class_order
    for name, configuration in configurations.items():
        dims = configuration["spatial_dims"]
        median = configuration["median_shape"][3 - dims:]
        assert len(configuration["patch_size"]) == dims
        # The patch never exceeds the image by more than the total stride's rounding.
        stride = np.prod(configuration["network"]["topology"]["strides"], axis=0)
        assert all(p <= max(m, s) + s for p, m, s in zip(configuration["patch_size"], median, stride)), name
        assert name in run.printed["plan"]


def test_plan_for_an_8gb_gpu_fits_in_8gb(run: Run) -> None:
    autoseg("plan", run.spec.name, "--gpu-memory", 8, "--plans-name", GPU_PLANS)
    plans = json.loads(plans_path(run.preprocessed, GPU_PLANS).read_text())
    # Planned for a CUDA GPU of 8 GB, whichever machine made the plan.
    assert (plans["budget"]["device"], plans["budget"]["gpu_memory_gb"]) == ("cuda", 8)
    assert "3d_fullres" in plans["configurations"] or run.spec.is_2d
    for configuration in plans["configurations"].values():
        assert configuration["predicted_memory_bytes"] <= 8 * 2**30 * GPU_MEMORY_USABLE_FRACTION


def test_preprocessing_stores_every_training_case(run: Run) -> None:
    plans = json.loads(plans_path(run.preprocessed, "autosegPlans").read_text())
    store = run.preprocessed / plans["configurations"][run.spec.configuration]["data_identifier"]
    assert sorted(p.stem for p in store.glob("*.json")) == sorted(run.spec.training_cases)
    assert sorted(p.name for p in (run.preprocessed / "gt_segmentations").iterdir()) == sorted(
        f"{c}{run.ending}" for c in run.spec.training_cases
    )


def test_training_validates_every_class_or_region(run: Run) -> None:
    classes, _ = evaluation_classes(load_description(run.raw))
    assert "trained 2 iterations in 1 epochs" in run.printed["train"]
    validation = run.model_folder / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    assert list(summary["classes"]) == [name for name, _ in classes]
    assert summary["num_cases"] == 1  # 5 training cases: fold 0 validates one
    case = summary["metric_per_case"][0]["case_id"]
    reference, _ = read_image(run.preprocessed / "gt_segmentations" / f"{case}{run.ending}")
    predicted, _ = read_image(validation / f"{case}{run.ending}")
    for name, values in classes:  # NaN exactly for a class in neither label map (nnU-Net's convention)
        dice = summary["mean"][name]["dice"]
        if np.isin(reference, values).any() or np.isin(predicted, values).any():
            assert 0.0 <= dice <= 1.0, name
        else:
            assert np.isnan(dice), name
        assert name in run.printed["train"]
    # The pseudo-validation's Dice of each class (region), whose mean is the epoch's pseudo-Dice.
    row = json.loads((run.model_folder / "fold_0" / "metrics.jsonl").read_text().splitlines()[-1])
    per_class = row["pseudo_dice_per_class"]
    assert list(per_class) == [name for name, _ in classes]
    assert row["pseudo_dice"] == pytest.approx(np.mean([v for v in per_class.values() if v is not None]))
    probabilities = np.load(validation / f"{case}.npz")["probabilities"]
    description = load_description(run.raw)
    assert probabilities.shape[0] == description.num_output_channels
    if not description.has_regions:  # softmax: the channels of a voxel sum to 1
        np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=0.01)


def test_held_out_prediction_keeps_format_and_geometry(run: Run) -> None:
    case = run.spec.held_out
    prediction_file = run.predictions / f"{case}{run.ending}"
    assert "1 case(s) predicted" in run.printed["predict"]
    assert sorted(p.name for p in run.predictions.glob(f"*{run.ending}")) == [prediction_file.name]
    seg, geometry = read_image(prediction_file)
    image, image_geometry = read_case_images(sorted(run.held_images.glob(f"{case}_*{run.ending}")))
    assert image.shape[0] == len(load_description(run.raw).channel_names)
    assert seg.shape == image.shape[1:] and geometry == image_geometry
    assert np.issubdtype(seg.dtype, np.integer)
    assert set(np.unique(seg).tolist()) <= allowed_labels(run.raw)


def test_evaluation_of_the_held_out_case(run: Run) -> None:
    classes, _ = evaluation_classes(load_description(run.raw))
    summary = json.loads((run.predictions / "summary.json").read_text())
    assert summary["num_cases"] == 1 and list(summary["classes"]) == [name for name, _ in classes]
    seg, _ = read_image(run.predictions / f"{run.spec.held_out}{run.ending}")
    reference, _ = read_image(run.held_labels / f"{run.spec.held_out}{run.ending}")
    for name, values in classes:  # Dice by hand from the two label maps, class (or region) by membership
        p, r = np.isin(seg, values), np.isin(reference, values)
        expected = 2 * (p & r).sum() / (p.sum() + r.sum()) if p.any() or r.any() else float("nan")
        measured = summary["metric_per_case"][0]["metrics"][name]["dice"]
        assert measured == pytest.approx(expected, nan_ok=True), name
        assert name in run.printed["evaluate"]


# ------------------------------------------------------------------------------------ regions (BraTS)
TINY_PLANS = "tinyMemoryPlans"
# Makes the fullres patch 8x10x10, under 25% of the 24^3 crop, so the planner adds 3d_lowres (at 1.7 mm:
# 5x fewer voxels, well above its 2x minimum) and the cascade.
TINY_MEMORY_BYTES = 6 * 2**20
CROSSVAL = "crossval_folds_0_1_2_3_4"


@pytest.fixture(scope="module")
def brats(pipelines: Callable[[RealDataset], Run]) -> Run:
    return pipelines(BRATS)


def expected_regions() -> dict[str, list[int]]:
    labels = json.loads((SHARED_DATA / BRATS.name / "dataset.json").read_text())["labels"]
    return {name: values for name, values in labels.items() if name != "background"}


def ordered_regions(probabilities: np.ndarray, order: list[int]) -> np.ndarray:
    """nnU-Net's export of region outputs, written out: region by region in order, voxels whose
    probability exceeds 0.5 get that region's label, later regions overwriting earlier ones."""
    seg = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for channel, value in zip(probabilities, order):
        seg[channel > 0.5] = value
    return seg


def test_region_outputs_are_sigmoids_exported_in_regions_class_order(brats: Run) -> None:
    validation = brats.model_folder / "fold_0" / "validation"
    case = json.loads((validation / "summary.json").read_text())["metric_per_case"][0]["case_id"]
    probabilities = np.load(validation / f"{case}.npz")["probabilities"].astype(np.float32)
    seg, _ = read_image(validation / f"{case}.nii.gz")
    order = load_description(brats.raw).regions_class_order
    assert probabilities.shape == (3, *seg.shape) and probabilities.min() >= 0 and probabilities.max() <= 1
    # Independent sigmoids, not a softmax: the three channels do not sum to one.
    assert not np.allclose(probabilities.sum(0), 1.0, atol=0.05)
    # The stored probabilities are float16: voxels within its rounding of 0.5 may go either way.
    decided = (np.abs(probabilities - 0.5) > 1e-3).all(0)
    np.testing.assert_array_equal(seg[decided], ordered_regions(probabilities, order)[decided])


def test_evaluate_prints_each_region_with_its_labels(brats: Run) -> None:
    table = brats.printed["evaluate"].splitlines()
    assert table[0].startswith("region (labels)")
    assert [line.split(")")[0] + ")" for line in table[2:5]] == [
        f"{name} ({' '.join(map(str, values))})" for name, values in expected_regions().items()
    ]


def test_training_reports_region_dice(brats: Run) -> None:
    log = (brats.model_folder / "fold_0" / "training_log.txt").read_text()
    assert re.search(r"epoch 1: pseudo-Dice per region: whole_tumor \d\.\d{4}, tumor_core \d\.\d{4}, "
                     r"enhancing_tumor (\d\.\d{4}|-)", log)
    validation = re.search(r"validation Dice of 1 cases: mean [\d.]+ \((.*)\)", brats.printed["train"])
    assert validation and [part.split()[0] for part in validation.group(1).split(", ")] == list(expected_regions())
    summary = json.loads((brats.model_folder / "fold_0" / "validation" / "summary.json").read_text())
    assert summary["classes"] == expected_regions()


@pytest.fixture(scope="module")
def cascade(brats: Run) -> dict[str, Any]:
    """The BraTS crop planned for 6 MiB of memory (3d_lowres kept), preprocessed for 3d_lowres and
    the cascade; the 5 lowres folds and cascade fold 0 trained; the held-out case predicted through
    both stages and evaluated; find-best over the lowres cross-validation; the report."""
    fingerprint = json.loads((brats.preprocessed / "fingerprint.json").read_text())
    plans = build_plans(fingerprint, memory_budget_bytes=TINY_MEMORY_BYTES, plans_name=TINY_PLANS,
                        regions_class_order=load_description(brats.raw).regions_class_order,
                        cache_dir=brats.preprocessed / "planning_cache")
    assert list(plans["configurations"]) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    write_plans(plans, plans_path(brats.preprocessed, TINY_PLANS))
    tiny = ["--plans-name", TINY_PLANS]
    autoseg("preprocess", BRATS.name, "-c", "3d_lowres", "-c", "3d_cascade_fullres", *tiny, "-np", 1)
    for fold in range(5):
        autoseg("train", BRATS.name, "3d_lowres", fold, *tiny, *TRAIN)
    printed = {"train": autoseg("train", BRATS.name, "3d_cascade_fullres", 0, *tiny, *TRAIN)}
    predictions = brats.held_images.parent / "cascade_predictions"
    printed["predict"] = autoseg("predict", "-i", brats.held_images, "-o", predictions, "-d", BRATS.name,
                                 "-c", "3d_cascade_fullres", *tiny, "--no-tta")
    autoseg("evaluate", "-p", predictions, "-r", brats.held_labels, "-d", BRATS.name)
    printed["find-best"] = autoseg("find-best", BRATS.name, "-c", "3d_lowres", "--no-ensembles", "-np", 1)
    printed["report"] = autoseg("report", BRATS.name, "-np", 1)
    return {"plans": plans, "predictions": predictions, "printed": printed,
            "lowres": brats.results / f"unet__{TINY_PLANS}__3d_lowres"}


def test_cascade_predicts_through_both_stages(brats: Run, cascade: dict[str, Any]) -> None:
    assert "trained 2 iterations in 1 epochs" in cascade["printed"]["train"]
    case = BRATS.held_out
    seg, geometry = read_image(cascade["predictions"] / f"{case}.nii.gz")
    image, image_geometry = read_case_images(sorted(brats.held_images.glob(f"{case}_*.nii.gz")))
    assert seg.shape == image.shape[1:] and geometry == image_geometry
    assert set(np.unique(seg).tolist()) <= allowed_labels(brats.raw)
    summary = json.loads((cascade["predictions"] / "summary.json").read_text())
    assert summary["classes"] == expected_regions()
    info = json.loads((cascade["predictions"] / "predict_info.json").read_text())
    assert (info["configuration"], info["plans_name"]) == ("3d_cascade_fullres", TINY_PLANS)
    lowres = info["previous_stage"]  # the lowres stage ran first, with the cascade's folds
    assert (lowres["configuration"], lowres["folds"], info["folds"]) == ("3d_lowres", ["0"], ["0"])


def test_postprocessing_is_decided_and_applied_per_region(brats: Run, cascade: dict[str, Any], tmp_path: Path) -> None:
    crossval = cascade["lowres"] / CROSSVAL
    autoseg("postprocess", "determine", "-p", crossval, "-r", brats.preprocessed / "gt_segmentations",
            "-d", BRATS.name, "-np", 1)
    decision = json.loads((crossval / "postprocessing.json").read_text())
    assert decision["num_cases"] == len(BRATS.training_cases)
    targets = {(c["target"], tuple(c["label_values"])) for c in decision["candidates"]}
    assert {(name, tuple(values)) for name, values in expected_regions().items()} <= targets
    assert set(decision["dice_before"]) == {*expected_regions(), "foreground_mean"}
    output = tmp_path / "postprocessed"
    autoseg("postprocess", "apply", "-i", crossval, "-o", output, "--decision", crossval / "postprocessing.json")
    for case in BRATS.training_cases:
        seg, geometry = read_image(crossval / f"{case}.nii.gz")
        applied, _ = read_image(output / f"{case}.nii.gz")
        np.testing.assert_array_equal(applied, apply_postprocessing(decision, seg, geometry.spacing))


def test_report_shows_the_regions(brats: Run, cascade: dict[str, Any]) -> None:
    document = (brats.results / "report.html").read_text()
    for name, values in expected_regions().items():
        assert f"Dice {name}" in document
        assert f"{name}: labels {', '.join(map(str, values))}" in document
    assert "regions_class_order 2, 1, 4" in document


# -------------------------------------------------------------------- many labels (the CT and the MR)
ONE_SCAN = [d for d in DATASETS if d.one_scan is not None]


@pytest.fixture(scope="module", params=[pytest.param(d, id=d.name.split("_", 1)[1]) for d in ONE_SCAN])
def scan_run(request: pytest.FixtureRequest, pipelines: Callable[[RealDataset], Run]) -> Run:
    return pipelines(request.param)


def test_every_class_of_the_scan_is_declared_and_some_crops_lack_some(scan_run: Run) -> None:
    scan = scan_run.spec.one_scan
    values = np.unique(read_image(SHARED_DATA / "ct_mr_examples" / scan.label)[0])
    description = load_description(scan_run.raw)
    assert description.label_values == list(range(len(values)))  # 42 (CT) / 24 (MR) values, no gaps
    present = [set(np.unique(read_image(f)[0]).tolist()) for f in sorted((scan_run.raw / "labelsTr").glob("*.nii.gz"))]
    assert any(len(p) < len(values) for p in present)  # classes absent from a case reach training and evaluation
    assert len({frozenset(p) for p in present}) > 1


def test_intensities_are_normalised_as_the_channel_name_says(scan_run: Run) -> None:
    """CT: clipped to the dataset's foreground [p0.5, p99.5], standardised with its foreground mean and
    std; MR: z-scored per image. At the scans' own 3 mm nothing is resampled, so the stored image is the
    formula applied to the raw crop."""
    plans = json.loads(plans_path(scan_run.preprocessed, "autosegPlans").read_text())
    configuration = plans["configurations"][scan_run.spec.configuration]
    scheme = configuration["normalization"][0]
    case = scan_run.spec.training_cases[0]
    image, _ = read_case_images([scan_run.raw / "imagesTr" / f"{case}_0000.nii.gz"])
    stored, _, _ = load_case(scan_run.preprocessed / configuration["data_identifier"], case, mmap=False)
    assert stored.shape == image.shape  # no resampling, no cropping (the scans have no zero border)
    raw = image[0].astype(np.float64)
    if scan_run.spec.one_scan.channel == "CT":
        props = json.loads((scan_run.preprocessed / "fingerprint.json").read_text())[
            "foreground_intensity_properties_per_channel"]["0"]
        low, high = props["percentile_00_5"], props["percentile_99_5"]
        assert scheme == {"scheme": "ct", "use_mask": False, "clip": [low, high], "mean": props["mean"], "std": props["std"]}
        expected = (np.clip(raw, low, high) - props["mean"]) / props["std"]
    else:
        assert (scheme["scheme"], scheme["use_mask"]) == ("zscore", False)
        expected = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(stored[0], expected, rtol=1e-4, atol=1e-4)

"""find-best on synthetic 5-fold results: merged cross-validation, pairwise ensemble, postprocessing,
ranking and the inference commands, all checked against hand-computed Dice values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.dataset.imageio import Geometry, write_image
from autoseg.errors import EvaluationError
from autoseg.evaluation.selection import INSTRUCTIONS_JSON, INSTRUCTIONS_TXT, find_best, resolve_instructions
from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION, checkpoint_name, write_checkpoint
from autoseg.utils.probability_files import write_probability_files

DATASET = "Dataset777_Synth"
GOOD = "unet__autosegPlans__3d_fullres"  # class 1 has a one-voxel island far from the object
BAD = "unet__autosegPlans__2d"  # class 2 misses one column
PARTIAL = "unet__autosegPlans__3d_lowres"  # only fold 0 validated: not a candidate
SHAPE = (4, 12, 12)
GEOMETRY = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
LABELS = {"background": 0, "left": 1, "right": 2}
DESCRIPTION = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 10, "file_ending": ".nii.gz"}
CASES = [f"case_{i:03d}" for i in range(10)]
FOLD_OF = {case: i % 5 for i, case in enumerate(CASES)}
ISLAND = (3, 11, 0)
MISSING_COLUMN = (slice(1, 3), slice(7, 10), slice(9, 10))

# Hand-computed Dice. Reference: class 1 = 2x4x4 = 32 voxels, class 2 = 2x3x3 = 18 voxels.
GOOD_LEFT = 2 * 32 / (33 + 32)  # one false-positive voxel
BAD_RIGHT = 2 * 12 / (12 + 18)  # 6 of 18 voxels missed
GOOD_FOREGROUND = (GOOD_LEFT + 1.0) / 2
BAD_FOREGROUND = (1.0 + BAD_RIGHT) / 2


def reference(case_index: int) -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    shift = case_index % 2  # two different layouts, so cases are not all identical
    seg[1:3, 2 + shift : 6 + shift, 2:6] = 1
    seg[1:3, 7:10, 7:10] = 2
    return seg


def probabilities(seg: np.ndarray, confidence: float) -> np.ndarray:
    """One-hot probabilities with ``confidence`` on the predicted label, the rest shared equally."""
    probs = np.full((3, *SHAPE), (1 - confidence) / 2, dtype=np.float32)
    for label in range(3):
        probs[label][seg == label] = confidence
    return probs


def prediction(config: str, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label map and probabilities of one case; probabilities are built so that averaging GOOD and BAD
    fixes both mistakes (GOOD is unsure about its island, BAD is unsure everywhere)."""
    seg = ref.copy()
    if config == BAD:
        seg[MISSING_COLUMN] = 0
        return seg, probabilities(seg, 0.6)
    seg[ISLAND] = 1
    probs = probabilities(seg, 0.8)
    probs[(slice(None), *ISLAND)] = (0.4, 0.45, 0.15)
    return seg, probs


def write_prediction(folder: Path, case: str, seg: np.ndarray, probs: np.ndarray | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_image(seg, GEOMETRY, folder / f"{case}.nii.gz")
    if probs is not None:
        write_probability_files(folder, case, probs, GEOMETRY, LABELS, None)


def write_final_checkpoint(fold_dir: Path, model: str) -> None:
    """A small real final checkpoint of ``model``'s fold: find-best leaves out a fold its predict command finds none of."""
    network, plans_name, configuration = model.split("__")
    metadata = {"format_version": CHECKPOINT_FORMAT_VERSION, "network": network, "plans_name": plans_name,
                "configuration": configuration}
    write_checkpoint(fold_dir / checkpoint_name("final"), {"network_weights": {"weight": torch.zeros(2)}, "metadata": metadata})


def make_results(roots: dict[str, Path], probabilities_for: tuple[str, ...] = (GOOD, BAD)) -> Path:
    """Raw dataset (dataset.json + images), preprocessed gt_segmentations, and 5-fold results of GOOD
    and BAD (plus a PARTIAL configuration with one fold), in the documented layouts."""
    raw = roots["raw"] / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (raw / "dataset.json").write_text(json.dumps(DESCRIPTION))
    gt = roots["preprocessed"] / DATASET / "gt_segmentations"
    gt.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, case in enumerate(CASES):
        ref = reference(index)
        image = (ref * 40 + rng.normal(100, 10, SHAPE)).astype(np.float32)
        write_image(image, GEOMETRY, raw / "imagesTr" / f"{case}_0000.nii.gz")
        write_image(ref, GEOMETRY, raw / "labelsTr" / f"{case}.nii.gz")
        write_image(ref, GEOMETRY, gt / f"{case}.nii.gz")
    for config in (GOOD, BAD, PARTIAL):
        folder = roots["results"] / DATASET / config
        folder.mkdir(parents=True)
        (folder / "dataset.json").write_text(json.dumps(DESCRIPTION))
        (folder / "plans.json").write_text(json.dumps({"plans_name": "autosegPlans"}))
        for index, case in enumerate(CASES):
            fold = FOLD_OF[case]
            if config == PARTIAL and fold != 0:
                continue
            seg, probs = prediction(config, reference(index))
            write_prediction(folder / f"fold_{fold}" / "validation", case, seg, probs if config in probabilities_for else None)
            write_final_checkpoint(folder / f"fold_{fold}", config)
        for fold in range(5):
            lines = [json.dumps({"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "pseudo_dice": [0.5 + 0.1 * e, 0.4 + 0.1 * e],
                                 "ema_pseudo_dice": 0.4 + 0.1 * e, "lr": 0.01 * (1 - e / 4), "epoch_time_s": 2.0 + fold}) for e in range(4)]
            (folder / f"fold_{fold}").mkdir(exist_ok=True)
            (folder / f"fold_{fold}" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return roots["results"] / DATASET


def test_pairwise_ensemble_wins_when_it_fixes_both_configurations(roots: dict[str, Path]) -> None:
    results = make_results(roots)
    instructions = find_best(DATASET, num_workers=1)
    ensemble = f"ensemble___{BAD}___{GOOD}"
    ranking = [(c["name"], c["foreground_dice"]) for c in instructions["candidates"]]
    assert [name for name, _ in ranking] == [ensemble, GOOD, BAD]
    assert [dice for _, dice in ranking] == pytest.approx([1.0, GOOD_FOREGROUND, BAD_FOREGROUND], abs=1e-12)
    by_name = {c["name"]: c for c in instructions["candidates"]}
    assert by_name[GOOD]["class_dice"] == pytest.approx({"left": GOOD_LEFT, "right": 1.0})
    assert by_name[BAD]["class_dice"] == pytest.approx({"left": 1.0, "right": BAD_RIGHT})
    assert instructions["num_cases"] == 10 and instructions["skipped"] == [
        f"{PARTIAL}: no validation predictions for fold(s) 1, 2, 3, 4"
    ]
    # The merged cross-validation holds every case of every fold, with probabilities.
    merged = results / GOOD / "crossval_folds_0_1_2_3_4"
    assert sorted(p.name for p in merged.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    assert len(list(merged.glob("*.npz"))) == 10
    best = instructions["best"]
    assert best["name"] == ensemble and best["model_folders"] == [str(results / BAD), str(results / GOOD)]
    assert best["postprocessing_steps"] == [] and best["foreground_dice_postprocessed"] == pytest.approx(1.0)
    assert Path(best["postprocessing_file"]) == results / "ensembles" / ensemble / "postprocessing.json"
    assert instructions["commands"] == [
        f"autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER_MODEL1 -m {results / BAD} -f 0 1 2 3 4 --checkpoint final --save-probabilities",
        f"autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER_MODEL2 -m {results / GOOD} -f 0 1 2 3 4 --checkpoint final --save-probabilities",
        "autoseg ensemble -i OUTPUT_FOLDER_MODEL1 OUTPUT_FOLDER_MODEL2 -o OUTPUT_FOLDER",
    ]
    stored = json.loads((results / INSTRUCTIONS_JSON).read_text())
    assert stored["best"]["model_folders"] == [BAD, GOOD]  # relative to the dataset's folder: a copied root stays valid
    assert resolve_instructions(stored, results) == json.loads(json.dumps(instructions))
    text = (results / INSTRUCTIONS_TXT).read_text()
    assert text.splitlines()[-3:] == instructions["commands"]
    assert f"#  2. {GOOD}: {GOOD_FOREGROUND:.4f}" in text


def test_best_single_configuration_gets_its_postprocessing(roots: dict[str, Path]) -> None:
    """Without BAD's probabilities no ensemble exists; GOOD wins and removing its island is accepted."""
    results = make_results(roots, probabilities_for=(GOOD,))
    instructions = find_best(DATASET, num_workers=1)
    assert [c["name"] for c in instructions["candidates"]] == [GOOD, BAD]
    assert not (results / "ensembles").exists()
    best = instructions["best"]
    decision_file = results / GOOD / "postprocessing.json"
    assert Path(best["postprocessing_file"]) == decision_file and decision_file.is_file()
    # Keep-largest of all foreground would delete class 2 (a separate object) and is refused; for class 1
    # both candidates reach Dice 1 and the gentler removal of components below half the smallest true
    # component (32 voxels x 2 mm^3 / 2) is kept (postprocessing.determine's rule).
    assert best["postprocessing_steps"] == [
        {"operation": "remove_small", "target": "left", "label_values": [1], "min_volume_mm3": 32.0}
    ]
    assert best["foreground_dice"] == pytest.approx(GOOD_FOREGROUND)
    assert best["foreground_dice_postprocessed"] == pytest.approx(1.0)
    assert instructions["commands"] == [
        f"autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {results / GOOD} -f 0 1 2 3 4 --checkpoint final",
        f"autoseg postprocess apply -i OUTPUT_FOLDER -o OUTPUT_FOLDER_PP --decision {decision_file}",
    ]


def test_what_is_left_out_of_the_ranking_is_said(roots: dict[str, Path]) -> None:
    """A configuration with folds missing, and one left out of every ensemble for lack of saved probabilities,
    were recorded in the JSON at most: the printed ranking showed fewer candidates and no reason."""
    results = make_results(roots, probabilities_for=(GOOD,))
    instructions = find_best(DATASET, num_workers=1)
    partial = f"{PARTIAL}: no validation predictions for fold(s) 1, 2, 3, 4"
    no_ensemble = (f"{BAD}: in no ensemble: the validation of fold(s) 0, 1, 2, 3, 4 saved no probabilities; validate "
                   "each again with autoseg train DATASET 2d 0 --continue --save-probabilities")
    assert instructions["skipped"] == [partial, no_ensemble]
    text = (results / INSTRUCTIONS_TXT).read_text()
    assert f"# note: {partial}" in text and f"# note: {no_ensemble}" in text
    # -c 2d asks nothing of 3d_lowres: its folds are not reported missing
    assert find_best(DATASET, configurations=["2d"], num_workers=1)["skipped"] == []


def test_a_rerun_stopped_half_way_leaves_no_stale_instructions(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The instructions name the merged folders and summaries a rerun rebuilds: a rerun killed after
    rebuilding some left the old ranking beside new summaries for report to show."""
    import autoseg.evaluation.selection as selection

    results = make_results(roots, probabilities_for=(GOOD,))
    find_best(DATASET, num_workers=1)
    assert (results / INSTRUCTIONS_JSON).is_file() and (results / INSTRUCTIONS_TXT).is_file()

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(selection, "_evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        find_best(DATASET, num_workers=1)
    assert not (results / INSTRUCTIONS_JSON).exists() and not (results / INSTRUCTIONS_TXT).exists()


def test_configuration_filter_and_missing_results(roots: dict[str, Path]) -> None:
    make_results(roots)
    only = find_best(DATASET, configurations=["2d"], num_workers=1)
    assert [c["name"] for c in only["candidates"]] == [BAD]
    with pytest.raises(EvaluationError) as info:
        find_best(DATASET, configurations=["3d_lowres"], num_workers=1)
    assert str(info.value) == (
        f"{roots['results'] / DATASET}: no configuration has validation predictions for folds 0, 1, 2, 3, 4 "
        f"({PARTIAL}: no validation predictions for fold(s) 1, 2, 3, 4); train fold(s) 1, 2, 3, 4 first "
        "(autoseg train DATASET CONFIG FOLD, once per fold; fold 'all' has no validation), or rank a model meant to have "
        f"fewer folds over the folds trained (autoseg find-best {DATASET} -f 0)"
    )
    # Of other folds than the default, those folds: it said 'train folds 0-4' to find-best -f 1 -f 2.
    with pytest.raises(EvaluationError, match=r"for folds 1, 2 \(.*\); train fold\(s\) 1, 2 first \(autoseg train"):
        find_best(DATASET, folds=["1", "2"], configurations=["3d_lowres"], num_workers=1)


def test_a_configuration_without_model_folder_is_named(roots: dict[str, Path]) -> None:
    """A misspelt -c was reported as missing validation predictions, sending the user to train again."""
    make_results(roots)
    with pytest.raises(EvaluationError) as info:
        find_best(DATASET, configurations=["2d", "3d_fullrez"], num_workers=1)
    assert str(info.value) == (
        f"{roots['results'] / DATASET}: no model folder of configuration 3d_fullrez (trained: 2d, 3d_fullres, "
        "3d_lowres); give -c one of the trained configurations, or train it first"
    )


def test_overlapping_folds_are_refused(roots: dict[str, Path]) -> None:
    results = make_results(roots, probabilities_for=())
    validation = results / GOOD / "fold_1" / "validation"
    write_prediction(validation, CASES[0], reference(0), None)  # case_000 belongs to fold 0
    with pytest.raises(EvaluationError) as info:
        find_best(DATASET, num_workers=1)
    assert str(info.value) == (
        f"{validation / 'case_000.nii.gz'}: case case_000 is also a validation case of fold 0; folds must not "
        "overlap (check the split file the folds were trained with)"
    )


def _write_splits(roots: dict[str, Path]) -> None:
    """The split file training wrote beside the preprocessed data: fold k validates the cases of FOLD_OF k."""
    splits = [{"train": [c for c in CASES if FOLD_OF[c] != k], "val": [c for c in CASES if FOLD_OF[c] == k]} for k in range(5)]
    (roots["preprocessed"] / DATASET / "splits_final.json").write_text(json.dumps(splits))


def test_a_fold_missing_some_of_its_validation_cases_is_not_scored(roots: dict[str, Path]) -> None:
    """A validation stopped midway (or a removed file) would otherwise be scored on fewer cases without a word."""
    results = make_results(roots)
    _write_splits(roots)
    (results / BAD / "fold_1" / "validation" / "case_006.nii.gz").unlink()
    instructions = find_best(DATASET, num_workers=1, allow_ensembles=False)
    assert [c["name"] for c in instructions["candidates"]] == [GOOD]
    with pytest.raises(EvaluationError, match=rf"{BAD}: fold 1's validation lacks 1 of its split's case\(s\) \(case_006; a "
                                              rf"validation stopped midway or files removed\): re-run it with autoseg train "
                                              rf"DATASET 2d 1 --continue"):
        find_best(DATASET, configurations=["2d"], num_workers=1)


def test_folds_the_split_file_lacks_are_named_with_those_it_holds(roots: dict[str, Path]) -> None:
    """A split file of your own with 3 folds: the default folds 0-4 were reported as lacking validation
    predictions, 'train folds 0-4 first', which training refuses (fold 3 does not exist)."""
    results = make_results(roots)
    splits = [{"train": [c for c in CASES if FOLD_OF[c] % 3 != k], "val": [c for c in CASES if FOLD_OF[c] % 3 == k]}
              for k in range(3)]
    path = roots["preprocessed"] / DATASET / "splits_final.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(EvaluationError) as info:
        find_best(DATASET, num_workers=1)
    assert str(info.value) == (f"{path}: the split file holds folds 0, 1, 2, not fold(s) 3, 4 (find-best's default is "
                               "0-4); give the folds trained with it: -f 0 -f 1 -f 2")
    for config in (GOOD, BAD):  # the 3 folds trained with it: fold k validates folds k and k + 3 of FOLD_OF
        for fold in ("3", "4"):
            source = results / config / f"fold_{fold}" / "validation"
            for path_in_fold in source.iterdir():
                path_in_fold.rename(results / config / f"fold_{int(fold) - 3}" / "validation" / path_in_fold.name)
    instructions = find_best(DATASET, folds=["0", "1", "2"], num_workers=1)
    assert instructions["num_cases"] == 10


def test_a_damaged_validation_file_is_traced_to_its_fold(roots: dict[str, Path]) -> None:
    """The merged cross-validation links the folds' files: a cut-short one was named there with the reader's fix
    ('copy or export it again'), so rerunning find-best met it again; the fold's validation is the fix."""
    results = make_results(roots, probabilities_for=())
    damaged = results / GOOD / "fold_1" / "validation" / "case_006.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:60])
    with pytest.raises(EvaluationError) as info:
        find_best(DATASET, num_workers=1)
    assert "crossval_folds_0_1_2_3_4/case_006.nii.gz" in str(info.value)
    assert str(info.value).endswith(
        f"; crossval_folds_0_1_2_3_4 gathers {results / GOOD}/fold_<k>/validation/: validate the fold holding each case "
        "again (autoseg train DATASET 3d_fullres <k> --continue), then run find-best again")


def test_a_cascade_without_its_previous_stage_is_not_chosen(roots: dict[str, Path]) -> None:
    """Predict runs a cascade's lowres folder with the same folds first: a results root without them (the cascade
    copied alone) ranked the cascade, chose it, and printed commands that failed."""
    results = make_results(roots, probabilities_for=())
    cascade = results / "unet__autosegPlans__3d_cascade_fullres"
    shutil.copytree(results / GOOD, cascade)
    (cascade / "plans.json").write_text(json.dumps({"configurations": {"3d_cascade_fullres": {"previous_stage": "3d_lowres"}}}))
    for fold in range(5):  # the lowres folder holds fold 0's final checkpoint only (make_results)
        (results / PARTIAL / f"fold_{fold}").mkdir(exist_ok=True)
    instructions = find_best(DATASET, configurations=["3d_cascade_fullres", "3d_fullres"], num_workers=1)
    assert [c["name"] for c in instructions["candidates"]] == [GOOD]
    assert instructions["skipped"] == [
        f"{cascade.name}: a cascade stage, which predicts from the labels of {PARTIAL}, and {results / PARTIAL} has no "
        "final checkpoint of fold(s) 1, 2, 3, 4; train (or copy) those folds of 3d_lowres first"
    ]


def test_a_model_folder_copied_under_another_name_is_not_ranked(roots: dict[str, Path]) -> None:
    """predict reads the configuration from the folder's name: a backup copy (``cp -r MODEL MODEL.bak``) was
    ranked as configuration '3d_fullres.bak', ensembled with its original and chosen; predict refused it."""
    results = make_results(roots)
    (results / GOOD / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {"previous_stage": None}}}))
    shutil.copytree(results / GOOD, results / f"{GOOD}.bak")
    instructions = find_best(DATASET, num_workers=1)
    assert sorted(c["name"] for c in instructions["candidates"]) == sorted([GOOD, BAD, f"ensemble___{BAD}___{GOOD}"])
    assert instructions["skipped"][0] == (
        f"{GOOD}.bak: configuration '3d_fullres.bak' (read from the folder's name, as predict reads it) is not in its "
        f"plans.json (3d_fullres): a copy under another name? rename it <network>__<plans>__<configuration> or move it "
        f"out of {results}"
    )


def test_a_model_without_the_final_checkpoints_of_its_folds_is_not_chosen(roots: dict[str, Path]) -> None:
    """Predict loads each fold's final checkpoint: a model folder whose checkpoints were deleted (validation kept)
    was ranked, chosen, and its printed predict command failed."""
    results = make_results(roots, probabilities_for=())
    for fold in (1, 3):
        (results / GOOD / f"fold_{fold}" / "checkpoint_final.safetensors").unlink()
    instructions = find_best(DATASET, num_workers=1)
    assert [c["name"] for c in instructions["candidates"]] == [BAD]
    assert instructions["skipped"][0] == (
        f"{GOOD}: no final checkpoint of fold(s) 1, 3 (deleted or moved?), which the predict command needs; restore "
        "them, or train those folds of 3d_fullres again"
    )
    assert instructions["commands"][0].startswith(f"autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {results / BAD} ")


def test_a_configuration_whose_fold_is_being_trained_is_left_out_naming_the_training(roots: dict[str, Path]) -> None:
    """find-best during ``train --continue`` of a fold ranked that fold by its earlier run's validation (the new final
    checkpoint written, the new validation not yet); the training run holds the fold's lock (here another process)."""
    from test_training_locks import _holder

    results = make_results(roots, probabilities_for=(GOOD,))
    fold = results / GOOD / "fold_3"
    holder = _holder(fold)
    try:
        instructions = find_best(DATASET, num_workers=1)
    finally:
        holder.communicate("")
    trainer = f"process {holder.pid}" if Path("/proc/locks").is_file() else "another process"
    training = (f"{GOOD}: fold 3 is being trained by {trainer} right now, so its validation predictions may be an "
                "earlier run's; run find-best again once that training has ended")
    assert [c["name"] for c in instructions["candidates"]] == [BAD]
    assert instructions["skipped"] == [training, f"{PARTIAL}: no validation predictions for fold(s) 1, 2, 3, 4"]
    assert f"# note: {training}\n" in (results / INSTRUCTIONS_TXT).read_text()
    assert not list(results.rglob(".autoseg.lock"))  # the folds were asked without leaving a lock file in any
    assert find_best(DATASET, num_workers=1)["best"]["name"] == GOOD  # the training over, it is ranked again


def test_a_training_started_while_find_best_ranks_leaves_no_best_named(
        roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The folds were asked once, when the candidates were chosen: a training starting during the merges, ensembles
    and postprocessing (minutes) still got its fold ranked by its earlier run's validation, and a best was named."""
    import autoseg.evaluation.selection as selection
    from autoseg.utils.atomic import holder_text
    from test_training_locks import _holder

    results = make_results(roots, probabilities_for=(GOOD,))
    determine, trainers = selection.determine_postprocessing, []

    def training_starts(*args: object, **kwargs: object) -> object:
        trainers.append(_holder(results / GOOD / "fold_2"))  # returns once the other process holds the fold
        return determine(*args, **kwargs)

    monkeypatch.setattr(selection, "determine_postprocessing", training_starts)
    try:
        with pytest.raises(EvaluationError) as info:
            find_best(DATASET, num_workers=1)
    finally:
        for trainer in trainers:
            trainer.communicate("")
    pid = trainers[0].pid if Path("/proc/locks").is_file() else None
    assert str(info.value) == (
        f"{results}: a training started while find-best ranked the models, so none is named best: {GOOD}: fold 2 is "
        f"being trained by {holder_text(pid)} right now, so its validation predictions may be an earlier run's; run "
        "find-best again once that training has ended")
    assert not (results / INSTRUCTIONS_JSON).exists() and not (results / INSTRUCTIONS_TXT).exists()
    monkeypatch.setattr(selection, "determine_postprocessing", determine)
    assert find_best(DATASET, num_workers=1)["best"]["name"] == GOOD  # the training over, a best is named again


def test_a_run_waiting_for_another_says_so_and_chooses_its_candidates_once_it_runs(
        roots: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    """A find-best waiting for another one of the dataset had chosen its candidates before it waited: a fold that a
    training took up meanwhile was ranked by its earlier validation. It also waited without a word (minutes)."""
    import threading
    import time

    from test_store_wait_mend3 import _blocked_here
    from test_training_locks import _holder

    results = make_results(roots, probabilities_for=(GOOD,))
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(find_best(DATASET, num_workers=1))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    first = _holder(results)  # another find-best of the dataset, running
    thread, trainer = threading.Thread(target=run), None
    try:
        thread.start()
        while thread.is_alive() and not _blocked_here():  # this run waits for the other one's lock
            time.sleep(0.01)
        trainer = _holder(results / GOOD / "fold_3")  # meanwhile a training of fold 3 starts
    finally:
        first.communicate("")
        thread.join()
        if trainer is not None:
            trainer.communicate("")
    assert len(outcome) == 1 and isinstance(outcome[0], dict), outcome
    assert [c["name"] for c in outcome[0]["candidates"]] == [BAD]
    assert outcome[0]["skipped"][0].startswith(f"{GOOD}: fold 3 is being trained by ")
    holder = f"process {first.pid}" if Path("/proc/locks").is_file() else "another process"
    assert capfd.readouterr().err == (f"waiting for {holder} (another find-best or an import-model of this dataset) "
                                      f"to release {results}\n")


def test_with_every_fold_validated_find_best_does_not_say_to_train_them(roots: dict[str, Path]) -> None:
    """A model folder skipped for its checkpoints, its folds all validated, was told 'train fold(s) 0, 1, 2, 3, 4'."""
    results = make_results(roots)
    (results / GOOD / "fold_1" / "checkpoint_final.safetensors").unlink()
    with pytest.raises(EvaluationError) as info:
        find_best(DATASET, configurations=["3d_fullres"], num_workers=1)
    assert str(info.value) == (
        f"{results}: no configuration can be ranked over folds 0, 1, 2, 3, 4 ({GOOD}: no final checkpoint of fold(s) 1 "
        "(deleted or moved?), which the predict command needs; restore them, or train those folds of 3d_fullres "
        "again); fix what is named for each"
    )


def test_a_fold_given_twice_is_named(roots: dict[str, Path]) -> None:
    make_results(roots)
    with pytest.raises(EvaluationError, match=r"fold 0 is given twice; give each fold once"):
        find_best(DATASET, folds=["0", "0"], num_workers=1)


def test_float_noise_at_a_rounding_boundary_decides_nothing(tmp_path: Path) -> None:
    """0.88125001, 0.88124999 and 0.88125003 rounded to 0.8813, 0.8812 and 0.8813: the second ranked last and the tie
    note left it out; all lie within 1e-4 of the best, so the tie rule orders them and the note names both others."""
    from autoseg.evaluation.selection import Candidate, rank, tie_note

    ranked = rank([Candidate(name, (tmp_path / name,), tmp_path / name, {"foreground_mean": {"dice": dice}})
                   for name, dice in (("c", 0.88125001), ("a", 0.88124999), ("b", 0.88125003), ("d", 0.8810))])
    assert [c.name for c in ranked] == ["a", "b", "c", "d"]
    assert tie_note(ranked).startswith("a ties with b, c at 0.8813 (mean foreground Dice within 0.0001 of the best)")


@pytest.mark.parametrize(("folds", "message"), [
    (["0,1,2"], r"fold '0,1,2': not a cross-validation fold; give one fold number per -f \(-f 0 -f 1 -f 2, or -f 0 1 2\)"),
    (["0", "all"], r"fold 'all': not a cross-validation fold; give one fold number per -f; fold 'all' has no validation"),
])
def test_a_fold_that_is_no_fold_number_is_named_before_the_dataset(roots: dict[str, Path], folds: list[str], message: str) -> None:
    """``-f 0,1,2`` was looked for as a fold named '0,1,2': 'reference segmentations not found' or 'no validation
    predictions for fold(s) 0,1,2', after the dataset checks."""
    with pytest.raises(EvaluationError, match=message):
        find_best(DATASET, folds=folds, num_workers=1)


def test_candidates_within_1e_4_of_the_best_tie_and_the_tie_rule_chooses(tmp_path: Path) -> None:
    """Dice 0.8813001 (3d_fullres) beat 0.8812999 (2d) and the ensemble of both by float noise; within 1e-4 of the best
    they tie, the single configuration before the ensemble, then by name, and the output says so."""
    from autoseg.evaluation.selection import Candidate, instructions_text, rank, tie_note

    def candidate(name: str, models: int, dice: float) -> Candidate:
        return Candidate(name, tuple(tmp_path / f"m{i}" for i in range(models)), tmp_path / name,
                         {"foreground_mean": {"dice": dice}})

    ranked = rank([candidate("ensemble___a___b", 2, 0.8813004), candidate("unet__P__3d_fullres", 1, 0.8813001),
                   candidate("unet__P__2d", 1, 0.8812999), candidate("unet__P__3d_lowres", 1, 0.87)])
    assert [c.name for c in ranked] == ["unet__P__2d", "unet__P__3d_fullres", "ensemble___a___b", "unet__P__3d_lowres"]
    note = tie_note(ranked)
    assert note == ("unet__P__2d ties with unet__P__3d_fullres, ensemble___a___b at 0.8813 (mean foreground Dice within "
                    "0.0001 of the best); chosen by the tie rule: fewer models (a single configuration before an "
                    "ensemble: cheaper to predict), then the name, alphabetically")
    assert tie_note(ranked[2:]) is None
    text = instructions_text({"dataset_name": "D", "candidates": [], "rank_metric": "m", "num_cases": 1, "skipped": [],
                              "tie": note, "commands": [], "best": {"name": "unet__P__2d",
                              "foreground_dice_postprocessed": 0.9, "postprocessing_steps": [], "postprocessing_file": "f"}})
    assert f"# tie: {note}" in text.splitlines()

"""bf16 on the CPU never crashes or hangs training silently: the child-process bf16 probe, the float32
fallback it triggers, and the watchdog that reports an iteration running far longer than measured."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

import autoseg.training.model_setup as model_setup_module
from autoseg.errors import NetworkError, PlanError, TrainingError, UsageError
from autoseg.preprocessing.store import list_cases
from autoseg.training import train_fold
from autoseg.training.splits import kfold_splits
from autoseg.networks.bf16_guard import bf16_step_survives, bf16_steps, probe_modules, step_spec
from autoseg.training.watchdog import IterationWatchdog
from autoseg.utils.duration import parse_duration

from training_helpers import DATASET, TINY_TOPOLOGY, UNMIRRORED, data_roots, results  # noqa: F401 - fixtures

TINY_SPEC = dict(network="unet", topology=TINY_TOPOLOGY, in_channels=1, n_outputs=3,
                 options={"deep_supervision": True}, patch=[16, 16, 16], batch=2, threads=1)


def test_probe_passes_a_network_whose_bf16_steps_run() -> None:
    assert bf16_step_survives(TINY_SPEC) == (True, "")


@pytest.mark.parametrize(("network", "options"), [("conresnet", {}), ("vox2vox", {}), ("segresnet", {"vae": True})])
def test_probe_steps_every_layer_a_training_step_runs(network: str, options: dict) -> None:
    """The probe called ``network(x)`` only: ConResNet's residual heads, the VAE branch and Vox2Vox's
    discriminator, whose bf16 weight gradients training computes, were never stepped in the child."""
    topology = {"spatial_dims": 3, "features_per_stage": [8, 16, 16], "kernel_sizes": [[3, 3, 3]] * 3,
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}
    spec = step_spec(network, topology, 1, 2, options, [16, 16, 16], 1)
    model, discriminator = probe_modules(spec)
    bf16_steps(model, discriminator, torch.randn(1, 1, 16, 16, 16), steps=1)
    modules = [model] + ([discriminator] if discriminator is not None else [])
    assert (discriminator is not None) == (network == "vox2vox")
    assert [name for m in modules for name, p in m.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize(
    ("code", "timeout", "message"),
    [
        ("import os; os.abort()", 60, r"a bf16 step crashed \(killed by signal 6"),
        ("import sys; print('free(): invalid next size', file=sys.stderr); sys.exit(3)", 60,
         r"crashed \(exit code 3: free\(\): invalid next size\)"),
        ("import time; time.sleep(30)", 1, "a bf16 step had not finished after 1 s"),
    ],
)
def test_probe_reports_a_crashed_or_hung_child(code: str, timeout: float, message: str) -> None:
    survived, why = bf16_step_survives(TINY_SPEC, command=[sys.executable, "-c", code], timeout=timeout)
    assert not survived
    assert re.search(message, why), why


ALLOCATION_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                      "tried to allocate 452984832 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize(("code", "message"), [
    (f"import autoseg.networks.bf16_guard as guard\ndef step(*args):\n    raise RuntimeError({ALLOCATION_FAILURE!r})\n"
     "guard.bf16_steps = step\nguard.main()", r"in a child process: can't allocate memory: you tried to allocate 452984832"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL, most often the out-of-memory killer"),
])
def test_probe_running_out_of_memory_is_no_bf16_crash(code: str, message: str) -> None:
    """Under a memory limit torch's allocator failing in the probe ('can't allocate memory', a RuntimeError)
    was reported as a oneDNN bf16 crash, and training fell back to float32, which needs more memory."""
    with pytest.raises(MemoryError, match=r"a bf16 training step of unet at patch \[16, 16, 16\], batch 2 .*" + message):
        bf16_step_survives(TINY_SPEC, command=[sys.executable, "-c", code], timeout=120)


def test_training_falls_back_to_float32_when_the_probe_dies(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def dies(spec: dict) -> tuple[bool, str]:
        seen.append(spec)
        return False, "a bf16 step crashed (killed by signal 11)"

    monkeypatch.setattr(model_setup_module, "bf16_step_survives", dies)
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0,
               overrides=["iterations_per_epoch=2", "val_iterations_per_epoch=1", "mixed_precision=bf16"])
    assert seen and seen[0]["patch"] == [16, 16, 16] and seen[0]["topology"]["features_per_stage"] == [8, 16, 32]
    log = (results / DATASET / "unet__autosegPlans__3d_fullres" / "fold_all" / "training_log.txt").read_text()
    assert "warning: a bf16 step crashed (killed by signal 11) for unet at patch [16, 16, 16], batch 2" in log
    assert "training in float32" in log and "mixed precision None" in log
    # the layout follows the dtype the guard left: float32 on CPU, 3D -> channels-last (channels_last: auto)
    assert "memory format channels_last_3d, mixed precision None" in log


def test_watchdog_reports_a_stuck_iteration_with_advice() -> None:
    messages: list[str] = []
    watchdog = IterationWatchdog(0.01, messages.append, factor=20, floor=0.3, poll_seconds=0.02)
    try:
        watchdog.begin(0)
        watchdog.end()  # a fast iteration: nothing to say
        watchdog.begin(41)
        time.sleep(0.45)  # warned at 0.3 s; the next warning would come at 0.6 s
        watchdog.end()
    finally:
        watchdog.stop()
    assert len(messages) == 1, messages  # the next warning waits for twice the elapsed time
    assert messages[0].startswith("warning: iteration 42 has run for ")
    assert "mixed_precision=off" in messages[0] and "--continue" in messages[0]


def test_watchdog_stays_quiet_for_iterations_near_the_measured_time() -> None:
    messages: list[str] = []
    watchdog = IterationWatchdog(0.05, messages.append, factor=20, floor=0.5, poll_seconds=0.02)
    try:
        for i in range(5):
            watchdog.begin(i)
            time.sleep(0.06)
            watchdog.end()
    finally:
        watchdog.stop()
    assert messages == [] and 0.05 <= watchdog.expected < 0.07


def test_a_dataset_json_edited_after_planning_is_refused(data_roots: dict[str, Path], results: Path) -> None:
    """The loss follows dataset.json, preprocessing and export the plans: an ignore label (or regions)
    added after planning trained on a store that sampled ignored voxels as foreground, without a word."""
    path = data_roots["raw"] / DATASET / "dataset.json"
    original = path.read_text()
    description = json.loads(original)
    description["labels"]["ignore"] = 3
    path.write_text(json.dumps(description))
    try:
        with pytest.raises(PlanError, match=rf"dataset\.json: ignore label is 3, but .*autosegPlans\.json was planned with "
                                            rf"None; dataset\.json changed after planning: re-run autoseg fingerprint {DATASET}"):
            train_fold(DATASET, "3d_fullres", 0, epochs=1, device="cpu")
        # Was: a class added after planning trained an output the store had no class locations for.
        description["labels"] = {**json.loads(original)["labels"], "Extra": 3}
        path.write_text(json.dumps(description))
        with pytest.raises(PlanError, match=r"dataset\.json: labels are \{.*'Extra': 3\}, but .*autosegPlans\.json was planned "
                                            r"with \{'background': 0, 'Anterior': 1, 'Posterior': 2\}; dataset\.json changed after planning"):
            train_fold(DATASET, "3d_fullres", 0, epochs=1, device="cpu")
    finally:
        path.write_text(original)
    assert not results.exists()


def test_a_plan_naming_no_registered_network_is_named_with_its_file(data_roots: dict[str, Path], results: Path) -> None:
    """Was: "unknown network 'unetx'" without the plans file the name came from."""
    path = data_roots["preprocessed"] / DATASET / "autosegPlans.json"
    original = path.read_text()
    plans = json.loads(original)
    plans["configurations"]["3d_fullres"]["network"]["name"] = "unetx"
    path.write_text(json.dumps(plans))
    try:
        with pytest.raises(NetworkError, match=r"autosegPlans\.json: configuration 3d_fullres: unknown network 'unetx'; choose one "
                                               r"of: .*; fix the plans file's network name, or re-plan"):
            train_fold(DATASET, "3d_fullres", 0, epochs=1, device="cpu")
        with pytest.raises(NetworkError, match=r"^unknown network 'unety'"):  # --network: the user's own word
            train_fold(DATASET, "3d_fullres", 0, network="unety", epochs=1, device="cpu")
    finally:
        path.write_text(original)
    assert not results.exists()


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf"])
def test_a_budget_that_is_not_a_finite_time_is_refused_before_training(budget: str, results: Path) -> None:
    """Was: --budget nan trained, crashed with an internal ValueError after its first checkpoint and left the half run."""
    with pytest.raises(UsageError, match=rf"duration '{budget}' is not a finite time"):
        parse_duration(budget)
    with pytest.raises(TrainingError, match=r"--budget must be a positive, finite number of seconds, got .*parse_duration"):
        train_fold(DATASET, "3d_fullres", 0, budget_seconds=float(budget), device="cpu")
    assert not results.exists()


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_cannot_take_is_refused_before_training(seed: int, results: Path) -> None:
    """Was: an internal ValueError from np.random.seed ('Seed must be between 0 and 2**32 - 1')."""
    with pytest.raises(TrainingError, match=rf"--seed {seed}: must be a whole number from 0 to 4294967295"):
        train_fold(DATASET, "3d_fullres", 0, epochs=1, seed=seed, device="cpu")
    assert not results.exists()


def test_a_fold_trained_with_another_plan_than_the_models_folds_is_refused(results: Path) -> None:
    """Was: after `plan --overwrite` a new fold replaced the model folder's plans.json, so the folds trained
    before were predicted at the new spacing (or failed inside torch when ensembled)."""
    overrides = ["iterations_per_epoch=2", "val_iterations_per_epoch=1", UNMIRRORED]
    summary = train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=overrides, device="cpu")
    log = (Path(summary["model_folder"]) / "fold_0" / "training_log.txt").read_text()
    assert re.search(r"validation of \d+ cases in \d+ s: mean Dice (\d\.\d{4}|nan|none \(no foreground class scored\)) \(", log)
    stored = Path(summary["model_folder"]) / "plans.json"
    plans = json.loads(stored.read_text())
    plans["configurations"]["3d_fullres"]["spacing"] = [s * 2 for s in plans["configurations"]["3d_fullres"]["spacing"]]
    stored.write_text(json.dumps(plans))  # the plan fold 0 was trained with, before the re-plan
    before = stored.read_bytes()
    with pytest.raises(TrainingError, match=r"plans.json: fold_0 of this model were trained with another plan than .*autosegPlans.json "
                                            r"\(spacing \[.*\] \(trained\) vs \[.*\] \(now\); re-planned with --overwrite\?\)"):
        train_fold(DATASET, "3d_fullres", 1, epochs=1, workers=0, overrides=overrides, device="cpu")
    assert stored.read_bytes() == before and not (stored.parent / "fold_1").exists()


def test_continue_names_the_settings_it_changes_from_the_run_it_resumes(results: Path) -> None:
    """Was: --continue without the interrupted run's --set silently trained the rest with other settings."""
    common = ["val_iterations_per_epoch=1", UNMIRRORED]
    summary = train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=["iterations_per_epoch=2", *common], device="cpu")
    train_fold(DATASET, "3d_fullres", 0, epochs=2, workers=0, overrides=["iterations_per_epoch=3", *common], device="cpu",
               continue_=True)
    log = (Path(summary["model_folder"]) / "fold_0" / "training_log.txt").read_text()
    assert re.search(r"warning: --continue trains with other settings than the run it resumes \(iterations_per_epoch 2 -> 3; "
                     r"from .*fold_0/training_config.yaml\); repeat that run's --set", log), log


def test_a_fold_trained_again_without_continue_starts_its_own_log_and_validation(
    data_roots: dict[str, Path], results: Path
) -> None:
    """Was: after its checkpoints were deleted, a fold trained again appended to the earlier run's training_log.txt (two
    runs in one log) and left the validation of cases no longer in the split beside the new one (find-best merged
    them). The earlier log is kept under another name; the earlier validation goes; the user's own files stay."""
    overrides = ["iterations_per_epoch=1", "val_iterations_per_epoch=1", UNMIRRORED]
    first = train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=overrides, device="cpu")
    fold = Path(first["model_folder"]) / "fold_0"
    validation, val_cases = fold / "validation", sorted(c["case_id"] for c in first["validation"]["metric_per_case"])
    earlier_log = (fold / "training_log.txt").read_text()
    train_case = next(c for c in list_cases(data_roots["preprocessed"] / DATASET / "autosegPlans_3d_fullres")
                      if c not in val_cases)
    for checkpoint in fold.glob("checkpoint_*.safetensors"):
        checkpoint.unlink()
    # a validation case of an earlier split, trained on in this one
    shutil.copyfile(validation / f"{val_cases[0]}.nii.gz", validation / f"{train_case}.nii.gz")
    (validation / "my_notes.txt").write_text("mine")
    train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=overrides, device="cpu")
    [kept] = fold.glob("training_log.*.txt")
    assert kept.read_text() == earlier_log and re.fullmatch(r"training_log\.\d{8}-\d{6}\.txt", kept.name)
    assert (fold / "training_log.txt").read_text().count("training finished") == 1
    assert sorted(p.name for p in validation.iterdir()) == sorted(
        [f"{c}.nii.gz" for c in val_cases] + ["my_notes.txt", "summary.csv", "summary.json"])


@pytest.mark.parametrize("damaged", ['{"mean": {}', '{"mean": {}, "foreground_mean": {}, "metric_per_case": []}'])
def test_continue_of_a_finished_fold_validates_again_over_a_summary_that_is_none(results: Path, damaged: str) -> None:
    """Was: a --continue of a finished fold reused its validation/summary.json unread: a damaged one stopped it with an
    internal JSONDecodeError, ``[]`` or a summary of other cases was reported as the fold's validation."""
    overrides = ["iterations_per_epoch=1", "val_iterations_per_epoch=1", UNMIRRORED]
    first = train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=overrides, device="cpu")
    path = Path(first["model_folder"]) / "fold_0" / "validation" / "summary.json"
    path.write_text(damaged)
    again = train_fold(DATASET, "3d_fullres", 0, continue_=True, workers=0, overrides=overrides, device="cpu")
    assert again["validation"]["num_cases"] == first["validation"]["num_cases"] >= 1
    assert json.loads(path.read_text())["foreground_mean"] == first["validation"]["foreground_mean"]
    assert "not a summary of this fold's" in (path.parent.parent / "training_log.txt").read_text()


def test_a_case_named_summary_is_refused_before_training_with_save_probabilities(
    data_roots: dict[str, Path], results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sidecar summary.json is where evaluate writes: evaluate refused it only after training and predicting
    the validation, advising an -o that train has not."""
    name = "summary"
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    store = preprocessed / DATASET / "autosegPlans_3d_fullres"
    for path in store.glob("hippocampus_001*"):
        path.rename(store / path.name.replace("hippocampus_001", name))
    (preprocessed / DATASET / "splits_final.json").unlink(missing_ok=True)
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    fold = next(i for i, split in enumerate(kfold_splits(list_cases(store))) if name in split["val"])
    with pytest.raises(TrainingError, match=rf"case {name}: with --save-probabilities its probabilities' sidecar {name}\.json "
                                            rf"would be replaced by evaluate's summary in the fold's validation/ and in "
                                            rf"crossval_folds_\*/; rename the case's files in .*{DATASET} "
                                            rf"\(e\.g\. to {name}_case\) and preprocess again, or train without"):
        train_fold(DATASET, "3d_fullres", fold, epochs=1, workers=0, save_probabilities=True, device="cpu",
                   overrides=["iterations_per_epoch=2", "val_iterations_per_epoch=1"])
    assert not results.exists()

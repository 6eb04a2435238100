"""Training building blocks: config overrides, splits (and their file-lock race), checkpoints, schedule,
augmentation geometry, batch determinism and worker-death messages."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from autoseg.errors import TrainingError
from autoseg.training.augmentation import is_anisotropic_patch, sampling_size
from autoseg.planning.accounting import tiles_per_case
from autoseg.training.budget import affordable_total, poly_lr
from autoseg.training.checkpoints import capture_rng_state, load_checkpoint, restore_rng_state
from autoseg.utils.checkpoint_format import write_checkpoint as save_checkpoint
from autoseg.training.config import load_defaults, resolve_config
from autoseg.training.data_loading import BatchStream, batch_seed
from autoseg.training.splits import SPLITS_FILE, fold_cases, kfold_splits, load_or_create_splits

CASES = [f"c{i:02d}" for i in range(12)]


# ----------------------------------------------------------------------------------- config


def test_defaults_are_nnunets() -> None:
    config = resolve_config("unet")
    assert config["optimizer"] == {
        "name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "betas": [0.9, 0.999], "weight_decay": 3e-5,
    }
    assert (config["num_epochs"], config["val_iterations_per_epoch"], config["grad_clip"]) == (1000, 50, 12.0)
    assert config["lr_schedule"] == {"name": "poly", "exponent": 0.9}
    assert config["oversample_foreground"] == 0.33
    assert config["augmentation"]["rotation"]["p"] == 0.2 and config["augmentation"]["low_resolution"]["p"] == 0.25
    assert "networks" not in config


def test_network_section_then_overrides() -> None:
    config = resolve_config("vox2vox", ["optimizer.lr=1e-3", "num_workers=0", "mixed_precision=off"])
    assert config["optimizer"]["name"] == "adam" and config["optimizer"]["betas"] == [0.5, 0.999]
    assert config["optimizer"]["lr"] == 0.001  # YAML reads "1e-3" as a string; the float default converts it
    assert config["num_workers"] == 0 and config["mixed_precision"] == "off"  # "off" is not YAML's False here
    assert [resolve_config("unet", [f"channels_last={v}"])["channels_last"] for v in ("true", "false", "auto")] == [True, False, "auto"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lrr=1", "--set 'optimizer.lrr=1': unknown configuration key 'optimizer.lrr'; valid keys: "),
        ("optimizer.lr=fast", "--set optimizer.lr='fast': expected float, got str; the default is 0.01"),
        ("batch_size=1.5", "--set batch_size=1.5: expected int or null, got float; the default is null (chosen by the plan or for the machine)"),
        ("num_workers=many", "--set num_workers='many': expected int or 'auto', got str; the default is 'auto'"),
        ("channels_last=yes", "--set channels_last='yes': expected bool or 'auto', got str; the default is 'auto'"),
        ("loss.deep_supervision=3", "--set loss.deep_supervision=3: expected bool, got int; the default is True"),
        ("lr", "--set 'lr': expected key=value, e.g. --set optimizer.lr=0.003"),
    ],
)
def test_bad_overrides_are_rejected(override: str, message: str) -> None:
    with pytest.raises(TrainingError) as info:
        resolve_config("unet", [override])
    assert str(info.value).startswith(message)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(TrainingError, match="valid keys: .*optimizer.lr, .*oversample_foreground"):
        resolve_config("unet", ["epochs=3"])


# ----------------------------------------------------------------------------------- splits


def test_kfold_matches_scikit_learn() -> None:
    # KFold(5, shuffle=True, random_state=12345).split(12 sorted ids), computed with scikit-learn 1.9.
    expected_val = [["c00", "c03", "c08"], ["c07", "c10", "c11"], ["c06", "c09"], ["c01", "c04"], ["c02", "c05"]]
    splits = kfold_splits(list(reversed(CASES)))
    assert [s["val"] for s in splits] == expected_val
    for split in splits:
        assert split["train"] == sorted(set(CASES) - set(split["val"]))


def test_too_few_cases_for_five_folds_name_every_way_out(tmp_path: Path) -> None:
    # The advice was "add cases or train fold 'all'"; a splits_final.json of the user's own with fewer
    # folds is read as it is (load_or_create_splits), which is what a 4-case dataset needs.
    with pytest.raises(TrainingError, match=r"4 training cases cannot be split into 5 folds; add cases, train fold "
                                            r"'all' \(no validation\), or write your own splits_final.json .* find-best"):
        kfold_splits(CASES[:4])
    own = [{"train": CASES[1:4], "val": CASES[:1]}, {"train": CASES[:1] + CASES[2:4], "val": CASES[1:2]}]
    (tmp_path / SPLITS_FILE).write_text(json.dumps(own))
    assert load_or_create_splits(tmp_path, CASES[:4]) == own


def _create_splits(folder: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    start.wait()
    out.put(json.dumps(load_or_create_splits(Path(folder), CASES)))


def test_concurrent_jobs_read_one_complete_split_file(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    jobs = [context.Process(target=_create_splits, args=(str(tmp_path), start, out)) for _ in range(5)]
    for job in jobs:
        job.start()
    start.set()
    results = [out.get(timeout=60) for _ in jobs]
    for job in jobs:
        job.join(timeout=60)
    expected = json.dumps(kfold_splits(CASES))
    assert results == [expected] * 5
    assert json.loads((tmp_path / SPLITS_FILE).read_text()) == json.loads(expected)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_user_split_file_wins_and_is_checked(tmp_path: Path) -> None:
    (tmp_path / SPLITS_FILE).write_text(json.dumps([{"train": ["c00", "c01"], "val": ["c02"]}]))
    assert fold_cases(tmp_path, CASES, 0) == (["c00", "c01"], ["c02"])
    with pytest.raises(TrainingError, match=r"fold 1 does not exist: .*splits_final.json holds folds 0-0"):
        fold_cases(tmp_path, CASES, 1)
    (tmp_path / SPLITS_FILE).write_text(json.dumps([{"train": ["c00", "zz"], "val": ["c02"]}]))
    with pytest.raises(TrainingError, match=r"fold 0 names 1 case\(s\) missing from the preprocessed data \(zz\)"):
        fold_cases(tmp_path, CASES, 0)
    (tmp_path / SPLITS_FILE).write_text("[]")  # was "fold 0 does not exist: ... holds folds 0--1"
    with pytest.raises(TrainingError, match=r"splits_final.json: the split file holds no folds \(an empty list\); fix or delete it"):
        fold_cases(tmp_path, CASES, 0)


@pytest.mark.parametrize(
    ("fold", "message"),
    [
        ({"train": ["c00", 17], "val": ["c02"]}, r"fold 0 'train' holds 17, not a case id; case ids are strings"),
        ({"train": ["c00"], "val": [["c02"]]}, r"fold 0 'val' holds \[\"c02\"\], not a case id"),
        ({"train": ["c00", "c01"], "val": ["c02", "c02"]}, r"fold 0 lists c02 more than once in 'val'; list each case once"),
        ({"train": ["c00", "c00"], "val": ["c02"]}, r"fold 0 lists c00 more than once in 'train'"),
        ({"train": ["c00", "c01"], "val": ["c01", "c02"]}, r"fold 0 has 1 case\(s\) in both 'train' and 'val' \(c01\)"),
    ],
)
def test_hand_edited_split_with_odd_case_lists_is_refused(tmp_path: Path, fold: dict, message: str) -> None:
    """Was: an internal TypeError for a non-string id; a case in both lists or listed twice trained silently."""
    (tmp_path / SPLITS_FILE).write_text(json.dumps([fold]))
    with pytest.raises(TrainingError, match=message):
        fold_cases(tmp_path, CASES, 0)


def test_a_fold_written_with_a_leading_zero_trains_into_its_fold_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: `autoseg train D C 03` trained into fold_03, where predict -f 3, find-best and report never look."""
    import autoseg.training.run as run_module

    seen: list[str] = []

    def stop(dataset, configuration, fold, *args, **kwargs):
        seen.append(fold)
        raise TrainingError("stop")

    monkeypatch.setattr(run_module, "resolve_fold_run", stop)
    for fold in ("03", "+3", 3, "all"):
        with pytest.raises(TrainingError, match="stop"):
            run_module.train_fold("Dataset001", "3d_fullres", fold)
    assert seen == ["3", "3", "3", "all"]
    (tmp_path / SPLITS_FILE).write_text(json.dumps([{"train": ["c00", "c01"], "val": ["c02"]}]))
    assert fold_cases(tmp_path, CASES, "00") == (["c00", "c01"], ["c02"])
    with pytest.raises(TrainingError, match=r"fold 'x' is not a number or 'all'"):
        fold_cases(tmp_path, CASES, "x")


def test_fold_all_trains_on_everything(tmp_path: Path) -> None:
    assert fold_cases(tmp_path, CASES, "all") == (CASES, CASES)
    assert not (tmp_path / SPLITS_FILE).exists()


# ----------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    network = torch.nn.Conv3d(1, 2, 3)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    network(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    optimizer.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "rng_state": state,
        "trainer_state": {"epoch": 3, "history": [{"epoch": 1, "pseudo_dice": float("nan")}]},
        "metadata": {"format_version": 1, "network": "unet", "patch_size": [16, 16, 16]},
    }
    save_checkpoint(tmp_path / "checkpoint_latest.safetensors", checkpoint)
    loaded = load_checkpoint(tmp_path / "checkpoint_latest.safetensors")
    safetensors.torch.load_file(tmp_path / "checkpoint_latest.safetensors")  # a plain safetensors file
    assert torch.equal(loaded["network_weights"]["weight"], network.weight)
    assert loaded["optimizer_state"]["state"][0]["momentum_buffer"].shape == network.weight.shape
    assert loaded["trainer_state"]["epoch"] == 3
    restore_rng_state(loaded["rng_state"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unreadable_checkpoint_names_file_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.safetensors"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=r"checkpoint_latest.safetensors: not a readable safetensors file .*delete it to train the fold from the start"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------------- schedule, geometry


def test_poly_schedule_and_budget_arithmetic() -> None:
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    assert affordable_total(done=20, seconds_left=10.0, seconds_per_iteration=0.3) == 53
    assert affordable_total(done=20, seconds_left=-5.0, seconds_per_iteration=0.3) == 20
    assert affordable_total(done=0, seconds_left=0.0, seconds_per_iteration=0.3) == 1
    # 36 along a 16-patch axis: span 20 / step 8 -> ceil(2.5) + 1 = 4 tiles; 16 -> 1; 40 -> 4.
    assert tiles_per_case([36, 16, 40], [16, 16, 16]) == 16


def test_sampling_region_covers_rotated_and_scaled_patch() -> None:
    aug = load_defaults()["augmentation"]
    # 2D, rotation up to 180 deg: the diagonal (sqrt(2) x 20) at the largest scale 1.4.
    assert sampling_size([20, 20], aug) == [int(np.ceil(20 * np.sqrt(2) * 1.4))] * 2
    assert is_anisotropic_patch([8, 64, 64], 3.0) and not is_anisotropic_patch([40, 56, 40], 3.0)
    size = sampling_size([8, 64, 64], aug)
    assert size[0] == 8 and size[1] == size[2] == int(np.ceil(64 * np.sqrt(2) * 1.4))  # in-plane only
    no_spatial = {**aug, "rotation": {**aug["rotation"], "p": 0.0}, "scaling": {**aug["scaling"], "p": 0.0}}
    assert sampling_size([40, 56, 40], no_spatial) == [40, 56, 40]


# ----------------------------------------------------------------------------------- workers


def _seeded_batch(index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch_seed(7, 0, 0, index))
    return {"data": rng.random(3), "target": np.array([index])}


def _dies_at_three(index: int) -> dict[str, np.ndarray]:
    if index == 3:
        time.sleep(0.5)  # let the queue's feeder thread flush batch 1 first (a kill loses unsent batches)
        os.kill(os.getpid(), signal.SIGKILL)
    return _seeded_batch(index)


def _fails_at_two(index: int) -> dict[str, np.ndarray]:
    if index == 2:
        raise ValueError("case hippocampus_017 has no foreground")
    return _seeded_batch(index)


def test_batches_do_not_depend_on_worker_count() -> None:
    expected = [_seeded_batch(i)["data"] for i in range(5, 11)]
    for workers in (0, 2):
        with BatchStream(_seeded_batch, start=5, num_workers=workers) as stream:
            got = [next(stream)["data"] for _ in range(6)]
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_killed_worker_is_named_with_its_cause() -> None:
    with BatchStream(_dies_at_three, num_workers=2) as stream:
        assert [int(next(stream)["target"][0]) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(TrainingError) as info:
            next(stream)
    message = str(info.value)
    assert message.startswith("data loading worker 1 (pid ")
    assert message.endswith(
        "died while preparing batch 3: it was killed by SIGKILL, most often the operating system's "
        "out-of-memory killer; lower num_workers (--set num_workers=N) or the batch size, or free memory"
    )


def test_worker_exception_is_reported_with_its_message() -> None:
    with BatchStream(_fails_at_two, num_workers=2) as stream:
        next(stream), next(stream)
        with pytest.raises(TrainingError) as info:
            next(stream)
    assert str(info.value).startswith(
        "data loading worker 0 failed on batch 2: ValueError: case hippocampus_017 has no foreground (at test_training_units.py:"
    )


def test_network_options_are_free_form_and_checked_by_the_builder():
    from autoseg.errors import NetworkError
    from autoseg.networks import Topology, create_network

    config = resolve_config("segresnet", ["network_options.vae=true", "network_options.dropout=0.1"])
    assert config["network_options"] == {"vae": True, "dropout": 0.1}
    topology = Topology(3, [8, 16], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], extra={"patch_size": [16, 16, 16]})
    create_network("segresnet", topology, 1, 3, **config["network_options"])
    with pytest.raises(NetworkError, match=r"network 'unet': unknown option\(s\) vae; it takes deep_supervision"):
        create_network("unet", topology, 1, 3, vae=True)


def test_validation_reserve_counts_measured_tile_forwards():
    from autoseg.planning.accounting import final_validation_seconds

    # 2 cases of 4 and 1 tiles, 8 mirrored passes, 0.01 s per tile forward: 5 x 8 x 0.01 + 2 exports
    assert final_validation_seconds([4, 1], 8, 0.01, [0.5, 0.7]) == pytest.approx(0.4 + 1.2)


def test_an_epoch_with_a_nan_or_infinite_loss_keeps_metrics_standard_json(tmp_path: Path) -> None:
    """An epoch with one NaN step (fp16 overflow) that did not diverge wrote ``"train_loss": NaN`` (an infinite
    validation loss ``Infinity``) into metrics.jsonl, which strict JSON readers refuse."""
    import math

    from autoseg.training.monitor import Monitor
    from autoseg.training.pseudo_validation import PseudoValidationResult
    from autoseg.training.schedule import TrainingState
    from autoseg.training.trainer import epoch_row

    state = TrainingState(total_iterations=10, iteration=5, epoch=1)
    result = PseudoValidationResult(loss=math.inf, dice=0.5, per_class=[0.5])
    row = epoch_row(state, math.nan, result, ["a"], 1e-3, time.monotonic(), 0.1, torch.device("cpu"))
    assert row["train_loss"] is None and row["val_loss"] is None
    monitor = Monitor(tmp_path)
    monitor.log_epoch(row, False, 10, "class")
    monitor.write_history([row])
    line = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    json.loads(line, parse_constant=lambda token: pytest.fail(f"not standard JSON: {token}"))


def test_the_error_that_stops_a_run_ends_its_log_unless_the_log_cannot_take_it(tmp_path: Path) -> None:
    """The log's last line names the error (it went to stderr only); a log the disk refuses too, or a run that logged
    nothing yet (refused before it started), leaves the error itself to reach the caller unchanged."""
    from autoseg.training.monitor import LOG_FILE, Monitor

    untouched = Monitor(tmp_path / "refused")
    with pytest.raises(TrainingError, match="^refused$"), untouched.stop_logged():
        raise TrainingError("refused")
    assert not (tmp_path / "refused").exists()
    monitor = Monitor(tmp_path)
    monitor.log("epoch 1")
    with pytest.raises(TrainingError, match="^worker died$"), monitor.stop_logged():
        raise TrainingError("worker died")
    assert (tmp_path / LOG_FILE).read_text().splitlines()[-1].endswith("  stopped by an error: TrainingError: worker died")
    with pytest.raises(KeyboardInterrupt), monitor.stop_logged():
        raise KeyboardInterrupt
    assert (tmp_path / LOG_FILE).read_text().splitlines()[-1].endswith("  stopped by an error: KeyboardInterrupt")
    (tmp_path / LOG_FILE).unlink()
    (tmp_path / LOG_FILE).mkdir()  # the log cannot be opened now, as on a full disk
    with pytest.raises(OSError, match="No space left"), monitor.stop_logged():
        raise OSError(28, "No space left on device")


def test_a_log_line_naming_a_path_of_non_utf8_bytes_is_written_escaped(tmp_path: Path) -> None:
    """A folder named in Latin-1 (``caf\\xe9``) reaches Python as a surrogate escape; the log refused it with an
    internal UnicodeEncodeError that stopped training."""
    from autoseg.training.monitor import LOG_FILE, Monitor

    Monitor(tmp_path).log("resumed from /data/caf\udce9/fold_0")
    assert (tmp_path / LOG_FILE).read_text(encoding="utf-8").endswith("resumed from /data/caf\\udce9/fold_0\n")


def test_another_familys_patch_refusal_suggests_a_patch_that_holds() -> None:
    """nnformer's windows are chosen per patch: the advice 'a multiple of [4, 12, 16]' for [12, 20, 16] led to
    [12, 24, 16], refused again for [4, 16, 16]. The suggested patch now holds."""
    import re

    from autoseg.training.model_setup import network_topology

    plan = {"network": {"name": "unet", "topology": {"features_per_stage": [32]}}, "patch_size": [12, 20, 16],
            "spacing": [1.0, 1.0, 1.0], "width": 32}
    with pytest.raises(TrainingError, match=r"choose a patch it divides \(e\.g\. --set patch_size=\[") as refusal:
        network_topology(plan, "nnformer", [12, 20, 16], lambda *_: None)
    suggested = [int(v) for v in re.search(r"patch_size=\[([\d,]+)\]", str(refusal.value)).group(1).split(",")]
    assert all(s >= p for s, p in zip(suggested, [12, 20, 16]))
    topology = network_topology(plan, "nnformer", suggested, lambda *_: None)
    assert topology["features_per_stage"]


def test_a_split_file_not_utf8_or_a_folder_in_its_place_is_refused_by_name(tmp_path: Path) -> None:
    """Was: an internal UnicodeDecodeError (a case id with an accent saved as Latin-1), and an internal
    IsADirectoryError when the new split file was renamed onto a folder of its name."""
    (tmp_path / SPLITS_FILE).write_bytes('[{"train": ["c00"], "val": ["café"]}]'.encode("latin-1"))
    with pytest.raises(TrainingError, match=r"splits_final\.json: is not UTF-8 text \(byte 0xe9 at offset 32\): save it as "
                                            r"UTF-8 .*; else fix or delete it to recreate it$"):
        fold_cases(tmp_path, CASES, 0)
    (tmp_path / SPLITS_FILE).unlink()
    (tmp_path / SPLITS_FILE).mkdir()
    with pytest.raises(TrainingError, match=r"splits_final\.json: is a folder, not a JSON file; give the file itself"):
        fold_cases(tmp_path, CASES, 0)
    assert [p.name for p in tmp_path.iterdir() if p.name != f"{SPLITS_FILE}.lock"] == [SPLITS_FILE]


def test_the_progress_bar_redraws_twice_a_second_not_rich_s_ten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each redraw costs about 1.3 ms of CPU on the 2-core host, taken from the math threads; Rich's default of
    10 per second spent 1.3% of a core on the bar alone."""
    from autoseg.training.monitor import BAR_REFRESH_PER_SECOND, Monitor

    monkeypatch.setenv("AUTOSEG_PROGRESS", "1")
    monitor = Monitor(tmp_path)
    monitor.start(10, 0)
    try:
        assert monitor._progress is not None
        assert monitor._progress.live.refresh_per_second == BAR_REFRESH_PER_SECOND == 2
    finally:
        monitor.stop()


def test_optimistic_validation_warning_follows_the_dataset_id_and_the_split() -> None:
    """Was: no warning for weights of this dataset renamed since (same id), nor for the same fold number trained on
    another split (splits_final.json changed); the same fold of the same split is a resume and gets none."""
    from autoseg.training.checkpoints import split_digest
    from autoseg.training.pretrained import optimistic_validation_warning

    before, now = split_digest(["a", "b"], ["c"]), split_digest(["a", "c"], ["b"])
    renamed = {"dataset_name": "Dataset998_Old", "fold": "1", "split_sha256": before}
    assert optimistic_validation_warning(renamed, "w", "Dataset998_New", "0", now).startswith(
        "warning: w: was trained on fold 1 of Dataset998_New, whose training cases include fold 0's validation cases")
    assert optimistic_validation_warning({**renamed, "dataset_name": "Dataset997_New"}, "w", "Dataset998_New", "0") is None
    same_fold = {"dataset_name": "Dataset998_New", "fold": "0", "split_sha256": before}
    assert optimistic_validation_warning(same_fold, "w", "Dataset998_New", "0", now) == (
        "warning: w: was trained on fold 0 of Dataset998_New in another split of its cases (splits_final.json changed "
        "since), whose training cases include the validation cases fold 0 has now, so fold 0's validation Dice will be "
        "optimistic; for an honest cross-validation fine-tune from a model of another dataset, or from this dataset's "
        "fold 0 of this split")
    assert optimistic_validation_warning(same_fold, "w", "Dataset998_New", "0", before) is None


def test_patch_advice_keeps_a_family_s_min_slices():
    """A --set patch_size not divisible by ConResNet's stride was answered with a 1-slice patch (anisotropic
    spacing), which its builder then refuses (check_slices); the advice keeps the family's min_slices."""
    from autoseg.training.model_setup import _divisible_patch_for

    assert _divisible_patch_for("conresnet", [1, 30, 24], [10.0, 1.5, 1.5], 32) == [2, 32, 24]
    assert _divisible_patch_for("unet", [1, 30, 24], [10.0, 1.5, 1.5], 32) == [1, 32, 24]

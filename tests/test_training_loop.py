"""The training loop on real (tiny) data: exact resume after kill -9, extension with --epochs, a time
budget, and 2-process DDP with gloo. Fold ``all`` skips the final validation (tested with every
network in test_training_networks.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from autoseg.errors import NetworkError, TrainingError
from autoseg.training import train_fold
from autoseg.training.checkpoints import load_checkpoint
from autoseg.utils.checkpoint_format import write_checkpoint

from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

FAST = ["val_iterations_per_epoch=2", "mixed_precision=off"]
MODEL = "unet__autosegPlans__3d_fullres"


def _fold(results: Path, model: str = MODEL, fold: str = "all") -> Path:
    return results / DATASET / model / f"fold_{fold}"


def _uninterrupted_and_killed(results: Path, overrides: list[str]) -> tuple[dict, dict]:
    train_fold(DATASET, "3d_fullres", "all", epochs=4, workers=0, deterministic=True, overrides=overrides)
    reference = load_checkpoint(_fold(results) / "checkpoint_final.safetensors")
    killed_root = results.parent / "killed"
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from autoseg.training import train_fold\n"
        f"train_fold({DATASET!r}, '3d_fullres', 'all', epochs=4, workers=0, deterministic=True, overrides={overrides!r})\n"
    )
    env = {**os.environ, "AUTOSEG_RESULTS": str(killed_root), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    metrics = _fold(killed_root) / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 1:
            time.sleep(0.3)  # into the second epoch
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    os.environ["AUTOSEG_RESULTS"] = str(killed_root)
    resumed = train_fold(DATASET, "3d_fullres", "all", continue_=True, workers=0, deterministic=True, overrides=overrides)
    assert resumed["iterations"] == 32
    return reference, load_checkpoint(_fold(killed_root) / "checkpoint_final.safetensors")


def test_resume_after_kill_matches_uninterrupted_run(results: Path) -> None:
    overrides = ["iterations_per_epoch=8", *FAST]
    reference, resumed = _uninterrupted_and_killed(results, overrides)
    for key, tensor in reference["network_weights"].items():
        assert torch.equal(tensor, resumed["network_weights"][key]), key
    for a, b in zip(reference["optimizer_state"]["state"].values(), resumed["optimizer_state"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    timings = {"epoch_seconds", "seconds_per_iteration"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timings} for r in rows]  # noqa: E731
    assert strip(reference["trainer_state"]["history"]) == strip(resumed["trainer_state"]["history"])


def test_continue_extends_a_finished_run(results: Path) -> None:
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)
    # The config written next to the fold says what the augmentation's `auto` rules chose.
    resolved = yaml.safe_load((_fold(results) / "training_config.yaml").read_text())["augmentation"]
    assert (resolved["rotation"]["degrees_2d"], resolved["mask_channels"]) == (180.0, [])
    written = {p: p.read_bytes() for p in (_fold(results) / "training_config.yaml", _fold(results).parent / "training_config.yaml")}
    with pytest.raises(TrainingError, match=r"fold_all: this fold already has checkpoints; add --continue"):
        train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=[*FAST, "optimizer.lr=0.1"])
    # The refused run wrote nothing: the configs still describe the run that made the checkpoints.
    assert {p: p.read_bytes() for p in written} == written
    summary = train_fold(DATASET, "3d_fullres", "all", epochs=3, continue_=True, workers=0, overrides=FAST)
    assert (summary["epochs"], summary["iterations"]) == (3, 6)
    history = load_checkpoint(_fold(results) / "checkpoint_final.safetensors")["trainer_state"]["history"]
    # The poly schedule now runs over 6 iterations; epoch 2 ends with the lr of iteration index 3.
    assert [r["learning_rate"] for r in history][1] == pytest.approx(0.01 * (1 - 3 / 6) ** 0.9)
    with pytest.raises(TrainingError, match=r"--epochs 2: the run already trained 3 epochs \(6 iterations\)"):
        train_fold(DATASET, "3d_fullres", "all", epochs=2, continue_=True, workers=0, overrides=FAST)
    # Was: --continue --budget on a finished fold trained nothing, said nothing and exited 0.
    final = (_fold(results) / "checkpoint_final.safetensors").read_bytes()
    with pytest.raises(TrainingError, match=r"--budget 30 s: .*fold_all already finished its schedule \(6 of 6 iterations, 3 "
                                            r"epochs\); a budget does not extend a finished run .*--continue --epochs N with N > 3"):
        train_fold(DATASET, "3d_fullres", "all", budget_seconds=30, continue_=True, workers=0, overrides=FAST)
    train_fold(DATASET, "3d_fullres", "all", continue_=True, workers=0, overrides=FAST)
    assert "nothing left to train: " in (_fold(results) / "training_log.txt").read_text()
    assert (_fold(results) / "checkpoint_final.safetensors").read_bytes() == final
    # A final model without training state (what import-model installs) is not restarted over.
    (_fold(results) / "checkpoint_latest.safetensors").unlink()
    with pytest.raises(TrainingError, match=r"fold_all: holds a final model \(checkpoint_final.safetensors\) but no training "
                                            r"state \(checkpoint_latest.safetensors\) to continue from \(an imported model\?\)"):
        train_fold(DATASET, "3d_fullres", "all", epochs=4, continue_=True, workers=0, overrides=FAST)
    assert (_fold(results) / "checkpoint_final.safetensors").read_bytes() == final


def test_the_written_config_is_the_one_that_ran(results: Path) -> None:
    """--epochs 1 --workers 0 were written as ``num_epochs: 1000``, ``use_plan_schedule: true`` and ``num_workers:
    auto``; a --continue without --epochs (which trains to the checkpoint's schedule) rewrote 1000 and warned of it
    as a change. ``overrides=None`` (no overrides) raised a bare TypeError."""
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=None)
    written = lambda folder: yaml.safe_load((folder / "training_config.yaml").read_text())  # noqa: E731
    for config in (written(_fold(results)), written(_fold(results).parent)):
        assert (config["num_epochs"], config["use_plan_schedule"], config["num_workers"]) == (1, False, 0)
    train_fold(DATASET, "3d_fullres", "all", continue_=True, overrides=None)
    assert (written(_fold(results))["num_epochs"], written(_fold(results))["num_workers"]) == (1, "auto")
    assert "num_epochs" not in (_fold(results) / "training_log.txt").read_text()
    (_fold(results) / "training_config.yaml").write_bytes(b"num_epochs: \xff\n")  # damaged: was a UnicodeDecodeError
    train_fold(DATASET, "3d_fullres", "all", continue_=True, overrides=None)
    assert written(_fold(results))["num_epochs"] == 1000


def test_continue_to_n_epochs_keeps_the_trained_epochs_and_gives_the_rest_the_new_length(results: Path) -> None:
    """--continue --epochs N --set iterations_per_epoch=M after epochs of another length (docs/stages.md):
    N x M iterations ended after another number of epochs (2 of 5, then N=4 of 3: 12 iterations in 3 epochs)
    or refused an N above the epochs trained (N=3: 9 < 10 iterations). Now the trained iterations + (N -
    epochs trained) x M."""
    train_fold(DATASET, "3d_fullres", "all", epochs=2, workers=0, overrides=["iterations_per_epoch=5", *FAST])
    summary = train_fold(DATASET, "3d_fullres", "all", epochs=3, continue_=True, workers=0,
                         overrides=["iterations_per_epoch=3", *FAST])
    assert (summary["epochs"], summary["iterations"]) == (3, 13)
    summary = train_fold(DATASET, "3d_fullres", "all", epochs=5, continue_=True, workers=0,
                         overrides=["iterations_per_epoch=3", *FAST])
    assert (summary["epochs"], summary["iterations"]) == (5, 19)
    with pytest.raises(TrainingError, match=r"--epochs 4: the run already trained 5 epochs \(19 iterations\)"):
        train_fold(DATASET, "3d_fullres", "all", epochs=4, continue_=True, workers=0, overrides=["iterations_per_epoch=3", *FAST])


def test_a_setting_out_of_range_is_refused_before_anything_is_written(results: Path) -> None:
    for setting, message in (("num_workers=-1", r"--set num_workers=-1: must be >= 0 and at most \d+ \(4 per core of this machine\) or auto"),
                             ("case_cache_mb=-1", r"--set case_cache_mb=-1: must be >= 0 or auto"),
                             ("augmentation.rotation.p=1.5", r"--set augmentation.rotation.p=1.5: must be between 0 and 1"),
                             ("mixed_precision=fp16", r"mixed_precision=fp16 needs CUDA \(device is cpu\)")):
        with pytest.raises(TrainingError, match=message):
            train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, device="cpu", overrides=[*FAST, setting])
        assert not (results / DATASET).exists()
    # --workers 1000 was refused as num_workers once the trainer was built, leaving the fold's log; 2.5 trained with 2
    for workers in (1000, -1, 2.5, True):
        with pytest.raises(TrainingError, match=rf"^--workers {workers!r}: must be >= 0 and at most \d+ \(4 per core of "
                                                r"this machine\) or auto \(0: batches built in the training process\); "
                                                r"without --workers it is auto$"):
            train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=workers, device="cpu", overrides=FAST)
        assert not (results / DATASET).exists()


def test_a_network_the_options_cannot_build_is_refused_before_anything_is_written(results: Path) -> None:
    """The free-form network options, the family and a changed patch are checked by building the
    network's shapes (meta device) before plans.json, dataset.json and training_config.yaml are written."""
    for network, setting, error, message in (
        (None, "network_options.bogus=1", NetworkError, r"network 'unet': unknown option\(s\) bogus; it takes "),
        (None, "network_options.deep_supervision=3", NetworkError, r"option deep_supervision must be bool, got 3"),
        ("fcdensenet", "network_options.variant=99", NetworkError, r"fcdensenet: unknown variant '99'; choose one of 56, 67, 103"),
        (None, "patch_size=[16,16,13]", TrainingError, r"patch size \[16, 16, 13\] is not divisible by the total stride \[4, 4, 2\]"),
        (None, "patch_size=[16,16]", TrainingError, r"--set patch_size=\[16, 16\]: this configuration is 3D; give 3 values "
                                                    r"\(the plan's patch is \[16, 16, 16\]\)"),
    ):
        with pytest.raises(error, match=message):
            train_fold(DATASET, "3d_fullres", "all", network=network, epochs=1, workers=0, device="cpu",
                       overrides=[*FAST, setting])
        assert not (results / DATASET).exists()


def test_the_plans_training_settings_reach_the_optimizer(results: Path, data_roots: dict[str, Path]) -> None:
    """A short budget's plan carries AdamW (planning/short_schedule.py): the run's config and its
    optimizer say so, and --set brings back nnU-Net's SGD."""
    folder = data_roots["preprocessed"] / DATASET
    plans = json.loads((folder / "autosegPlans.json").read_text())
    plans["plans_name"] = "shortPlans"
    plans["configurations"]["3d_fullres"]["training"] = {"optimizer": {"name": "adamw", "lr": 0.001}}
    (folder / "shortPlans.json").write_text(json.dumps(plans))
    try:
        for overrides, optimizer, lr in (([], "adamw", 0.001), (["optimizer.name=sgd", "optimizer.lr=0.01"], "sgd", 0.01)):
            shutil.rmtree(results, ignore_errors=True)
            train_fold(DATASET, "3d_fullres", "all", plans_name="shortPlans", epochs=1, workers=0, device="cpu",
                       overrides=[*FAST, *overrides])
            model = results / DATASET / "unet__shortPlans__3d_fullres"
            config = yaml.safe_load((model / "training_config.yaml").read_text())
            assert (config["optimizer"]["name"], config["optimizer"]["lr"]) == (optimizer, lr)
            group = load_checkpoint(model / "fold_all" / "checkpoint_final.safetensors")["optimizer_state"]["param_groups"][0]
            assert ("betas" in group, "nesterov" in group) == ((True, False) if optimizer == "adamw" else (False, True))
    finally:
        (folder / "shortPlans.json").unlink()


@pytest.mark.exclusive  # a time budget: alone (tests/parallel_runs.py)
def test_budget_sets_the_schedule_from_measured_speed(results: Path) -> None:
    summary = train_fold(DATASET, "3d_fullres", "all", budget_seconds=8, workers=0, overrides=["iterations_per_epoch=20", *FAST])
    log = (_fold(results) / "training_log.txt").read_text()
    assert "time budget: " in log and "s per iteration measured" in log
    final = load_checkpoint(_fold(results) / "checkpoint_final.safetensors")
    assert final["metadata"]["total_iterations"] == final["metadata"]["iteration"] == summary["iterations"]
    assert 12 <= summary["iterations"] < 20000  # at least the probe, far fewer than 1000 epochs x 20
    first = final["trainer_state"]["history"][0]
    # 20 iterations per epoch: the 18 after the 2 warm-up iterations are timed; no GPU memory on a CPU.
    assert 0 < first["seconds_per_iteration"] < first["epoch_seconds"] / 18 * 1.5 and first["peak_memory_bytes"] is None
    assert 8 * 0.7 < summary["seconds"] < 8 * 1.3  # ends on time (fold all: no final validation)


DDP_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
from autoseg.training import run as run_module
original_fit = run_module.Trainer.fit
def fit(self):
    original_fit(self)
    torch.save(self.setup.network.state_dict(), os.path.join(sys.argv[1], f"rank{self.context.rank}.pt"))
run_module.Trainer.fit = fit
run_module.train_fold(sys.argv[2], "3d_fullres", "all", epochs=2, workers=0, overrides=sys.argv[3:])
"""


DDP_BUDGET_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from autoseg.training import run as run_module, trainer as trainer_module
build = trainer_module.build_step
def slowed(*args, **kwargs):  # rank 1's steps slow down after 15: the ranks' clocks disagree
    step, calls = build(*args, **kwargs), [0]
    train = step.train
    def slow_train(*a, **k):
        calls[0] += 1
        if calls[0] > 15 and torch.distributed.get_rank() == 1:
            time.sleep(0.2)
        return train(*a, **k)
    step.train = slow_train
    return step
trainer_module.build_step = slowed
run_module.train_fold(sys.argv[1], "3d_fullres", "all", budget_seconds=12, workers=0, overrides=sys.argv[2:])
"""


def _torchrun(tmp_path: Path) -> list[str]:
    """torchrun with two processes, its logs in the test's folder (by default it leaves a
    torchelastic_* folder in the temporary directory at every run)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--log-dir", str(tmp_path / "torchelastic")]


@pytest.mark.exclusive  # a time budget: alone (tests/parallel_runs.py)
def test_two_process_ddp_keeps_its_time_budget_in_step(results: Path, tmp_path: Path) -> None:
    """The budget's probe, re-plans and within-epoch pace checks are collectives: ranks whose clocks
    disagree must still take the same decisions at the same iterations (else one waits forever)."""
    script = tmp_path / "ddp_budget.py"
    script.write_text(DDP_BUDGET_SCRIPT)
    command = [*_torchrun(tmp_path), str(script), DATASET, "iterations_per_epoch=500", *FAST]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (_fold(results) / "training_log.txt").read_text()
    assert "world size 2" in log and "time budget: " in log and log.count("training finished") == 1


def test_two_process_gloo_ddp_keeps_ranks_identical(results: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    command = [*_torchrun(tmp_path), str(script), str(tmp_path), DATASET, *FAST]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    final = load_checkpoint(_fold(results) / "checkpoint_final.safetensors")
    for key, tensor in rank0.items():
        assert torch.equal(tensor, rank1[key]), key
        assert torch.equal(tensor, final["network_weights"][key]), key
    log = (_fold(results) / "training_log.txt").read_text()
    assert "world size 2" in log and log.count("training finished") == 1  # rank 0 alone writes


def _written(fold: Path) -> dict[Path, bytes]:
    """The run files a refused run must leave as they were."""
    paths = (fold / "training_config.yaml", fold.parent / "training_config.yaml", fold / "checkpoint_latest.safetensors")
    return {p: p.read_bytes() for p in paths}


def test_continue_with_another_optimizer_is_refused_before_anything_is_written(results: Path) -> None:
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)
    written = _written(_fold(results))
    with pytest.raises(TrainingError, match=r"was trained with optimizer.name=sgd, this run sets adamw; an optimiser "
                                            r"cannot take over another's state: continue with --set optimizer.name=sgd"):
        train_fold(DATASET, "3d_fullres", "all", epochs=2, continue_=True, workers=0, overrides=[*FAST, "optimizer.name=adamw"])
    assert _written(_fold(results)) == written
    # A checkpoint from before the optimiser was recorded: its state's misfit is named as the optimiser's.
    latest = _fold(results) / "checkpoint_latest.safetensors"
    checkpoint = load_checkpoint(latest)
    del checkpoint["metadata"]["optimizer"]
    write_checkpoint(latest, checkpoint)
    with pytest.raises(TrainingError, match=r"its optimiser state does not fit optimizer 'adamw' \(KeyError"):
        train_fold(DATASET, "3d_fullres", "all", epochs=2, continue_=True, workers=0, overrides=[*FAST, "optimizer.name=adamw"])
    summary = train_fold(DATASET, "3d_fullres", "all", epochs=2, continue_=True, workers=0, overrides=FAST)
    assert summary["iterations"] == 4


def test_refused_pretrained_weights_leave_no_fold_behind(results: Path, tmp_path: Path) -> None:
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)
    source = tmp_path / "other_network.safetensors"
    checkpoint = load_checkpoint(_fold(results) / "checkpoint_final.safetensors")
    checkpoint["metadata"]["network"] = "segresnet"
    write_checkpoint(source, checkpoint)
    shutil.rmtree(results)
    with pytest.raises(TrainingError, match=r"was trained as network 'segresnet', this run trains 'unet'"):
        train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST, pretrained_weights=source)
    assert not _fold(results).exists()


def test_without_pseudo_validation_metrics_stay_json_and_no_best_is_kept(results: Path) -> None:
    summary = train_fold(DATASET, "3d_fullres", "all", epochs=2, workers=0,
                         overrides=["val_iterations_per_epoch=0", "mixed_precision=off"])
    def refuse(constant: str) -> None:
        raise ValueError(f"metrics.jsonl holds {constant}, which is not JSON")
    rows = [json.loads(line, parse_constant=refuse) for line in (_fold(results) / "metrics.jsonl").read_text().splitlines()]
    assert [(r["val_loss"], r["pseudo_dice"], r["pseudo_dice_ema"]) for r in rows] == [(None, None, None)] * 2
    assert summary["best_pseudo_dice_ema"] is None
    assert not (_fold(results) / "checkpoint_best.safetensors").exists()
    assert (_fold(results) / "checkpoint_final.safetensors").is_file()
    assert "no pseudo-Dice (val_iterations_per_epoch=0" in (_fold(results) / "training_log.txt").read_text()


def test_a_fold_holding_only_an_earlier_best_checkpoint_is_refused_without_continue(results: Path) -> None:
    """Was: with checkpoint_latest and _final deleted, a run without pseudo-validation trained beside the earlier run's
    checkpoint_best.safetensors, which `predict --checkpoint best` then took for this run's best model."""
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)
    best = _fold(results) / "checkpoint_best.safetensors"
    earlier = best.read_bytes()
    for name in ("checkpoint_latest.safetensors", "checkpoint_final.safetensors"):
        (_fold(results) / name).unlink()
    with pytest.raises(TrainingError, match=r"fold_all: this fold already has checkpoints"):
        train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=["val_iterations_per_epoch=0"])
    assert best.read_bytes() == earlier


def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(results: Path) -> None:
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)
    good = (_fold(results) / "checkpoint_latest.safetensors").read_bytes()
    with pytest.raises(TrainingError, match=r"training diverged in epoch 2: the network's weights became NaN or infinite "
                                            r"\(.*checkpoint_latest.safetensors keeps epoch 1\); lower the learning rate"):
        train_fold(DATASET, "3d_fullres", "all", epochs=3, continue_=True, workers=0, overrides=[*FAST, "optimizer.lr=1e30"])
    assert (_fold(results) / "checkpoint_latest.safetensors").read_bytes() == good
    assert not (_fold(results) / "checkpoint_final.safetensors").exists() or load_checkpoint(
        _fold(results) / "checkpoint_final.safetensors")["trainer_state"]["epoch"] == 1


def test_a_best_checkpoint_refused_by_a_full_disk_is_written_by_the_rerun(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The best checkpoint is written before checkpoint_latest, which commits the epoch: --continue after
    freeing space redoes the epoch whose best checkpoint the full disk refused (was: taken as done, no best
    checkpoint, no metrics.jsonl)."""
    from autoseg.training import trainer as trainer_module

    def full_disk(path: Path, checkpoint: dict) -> None:
        if path.name == "checkpoint_best.safetensors":
            raise OSError(28, "No space left on device", str(path))
        write_checkpoint(path, checkpoint)

    monkeypatch.setattr(trainer_module, "write_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)
    last_line = (_fold(results) / "training_log.txt").read_text().splitlines()[-1]
    assert last_line.endswith("  stopped by an error: OSError: [Errno 28] No space left on device: "
                              f"'{_fold(results) / 'checkpoint_best.safetensors'}'")  # was: the log just ended
    monkeypatch.setattr(trainer_module, "write_checkpoint", write_checkpoint)
    train_fold(DATASET, "3d_fullres", "all", epochs=1, continue_=True, workers=0, overrides=FAST)
    assert (_fold(results) / "checkpoint_best.safetensors").is_file()
    assert len((_fold(results) / "metrics.jsonl").read_text().splitlines()) == 1

"""kill -9 anywhere: ``autoseg preprocess``, ``train``, ``predict`` and ``export-model`` are killed at seeded
random moments, then rerun with the documented resume option; the result equals an uninterrupted run's,
no temporary file is left, and nothing half-written was ever visible under a final name.

CI kills each command at ``AUTOSEG_KILL_POINTS`` moments (default 1); a long run on demand:
``AUTOSEG_KILL_POINTS=25 pytest tests/test_kill_resume.py`` (figures in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

from autoseg.cli import app, expand_multi_value_options
from autoseg.errors import TrainingError
from autoseg.utils.weights_file import load_weights

from cli_helpers import runner
from conftest import make_hippocampus_subset
from preprocessing_helpers import make_configuration, make_plans, stored_files
from training_helpers import CASES, PATCH, TINY_TOPOLOGY


def _weights(path: Path) -> dict:
    """A checkpoint read as training and prediction read it (safetensors, never pickle)."""
    return load_weights(path, TrainingError)

DATASET = "Dataset995_KillResume"
MODEL = "unet__autosegPlans__3d_fullres"
POINTS = int(os.environ.get("AUTOSEG_KILL_POINTS", "1"))
SEED = int(os.environ.get("AUTOSEG_KILL_SEED", "17"))
TRAIN_ARGS = ["train", DATASET, "3d_fullres", "all", "--epochs", "2", "--deterministic", "--workers", "0",
              "--set", "iterations_per_epoch=3", "--set", "val_iterations_per_epoch=1", "--set", "mixed_precision=off"]
PROBE_SECONDS = 0.01


def temporaries(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*tmp*")]


def cli(env: dict[str, str], *args: object) -> str:
    """Run ``autoseg ARGS`` in this process under the roots of ``env`` (exit code 0)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = runner.invoke(app, expand_multi_value_options([str(a) for a in args]))
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert result.exit_code == 0, result.output
    return result.output


def killed(env: dict[str, str], args: list[str], started: Callable[[], bool], work_seconds: float,
           rng: random.Random) -> bool:
    """Start ``autoseg ARGS`` as a process and SIGKILL it at a random moment: before its first output
    (one time in five) or within the time its work takes; True when the kill came before it finished."""
    process = subprocess.Popen([sys.executable, "-m", "autoseg", *map(str, args)],
                               env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rng.random() < 0.2:
        time.sleep(rng.uniform(0.0, 3.0))  # during start-up (imports, reading the plan)
    else:
        deadline = time.monotonic() + 120
        while not started() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(PROBE_SECONDS)
        time.sleep(rng.uniform(0.0, work_seconds))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def assert_nothing_half_written(killed_root: Path, reference: dict[str, bytes], same_bytes: bool = True) -> None:
    """Every file under a final name is one the uninterrupted run wrote (byte-identical)."""
    for name, data in stored_files(killed_root).items():
        if Path(name).name.startswith("."):
            continue  # a temporary: allowed until the rerun
        assert name in reference, f"{name}: not written by the uninterrupted run"
        if same_bytes:
            assert data == reference[name], f"{name}: differs from the uninterrupted run (half-written?)"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kill")
    raw = base / "raw"
    make_hippocampus_subset(raw, CASES[:6], DATASET)
    configuration = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
    configuration["network"]["topology"] = TINY_TOPOLOGY
    plans = make_plans({"3d_fullres": configuration})
    plans["dataset_name"] = DATASET
    (base / "plans.json").write_text(json.dumps(plans))
    torch.set_num_threads(1)
    return {"base": base, "raw": raw}


def roots(world: dict[str, Path], name: str) -> dict[str, str]:
    """Fresh preprocessed and results roots ``name`` (the tiny plan in place) over the shared raw data."""
    preprocessed = world["base"] / name / "preprocessed"
    (preprocessed / DATASET).mkdir(parents=True)
    shutil.copy(world["base"] / "plans.json", preprocessed / DATASET / "autosegPlans.json")
    return {"AUTOSEG_RAW": str(world["raw"]), "AUTOSEG_PREPROCESSED": str(preprocessed),
            "AUTOSEG_RESULTS": str(world["base"] / name / "results")}


def test_kill_anywhere_then_resume(world: dict[str, Path]) -> None:
    rng = random.Random(SEED)
    reference = roots(world, "reference")
    pre_ref = Path(reference["AUTOSEG_PREPROCESSED"]) / DATASET
    start = time.monotonic()
    cli(reference, "preprocess", DATASET, "-np", 1)
    preprocess_seconds = time.monotonic() - start
    start = time.monotonic()
    cli(reference, *TRAIN_ARGS)
    train_seconds = time.monotonic() - start
    model = Path(reference["AUTOSEG_RESULTS"]) / DATASET / MODEL
    predicted_ref = world["base"] / "predicted_reference"
    images = world["base"] / "images"  # three cases to predict
    images.mkdir()
    for case in CASES[:3]:
        shutil.copy(world["raw"] / DATASET / "imagesTr" / f"{case}_0000.nii.gz", images)
    predict_args = ["predict", "-i", images, "-m", model, "--no-tta", "--mixed-precision", "off"]
    start = time.monotonic()
    cli(reference, *predict_args, "-o", predicted_ref)
    predict_seconds = time.monotonic() - start
    zip_ref = world["base"] / "reference.zip"
    cli(reference, "export-model", "-m", model, "-f", "all", "-o", zip_ref)
    weights_ref = _weights(model / "fold_all" / "checkpoint_final.safetensors")["network_weights"]
    kills = 0

    for point in range(POINTS):
        # preprocess: rerun the same command (finished cases are skipped, killed ones redone)
        env = roots(world, f"preprocess_{point}")
        out = Path(env["AUTOSEG_PREPROCESSED"]) / DATASET
        kills += killed(env, ["preprocess", DATASET, "-np", "1"],
                        lambda: any(out.glob("autosegPlans_3d_fullres/*.json")), preprocess_seconds, rng)
        assert_nothing_half_written(out, stored_files(pre_ref))
        cli(env, "preprocess", DATASET, "-np", 1)
        assert stored_files(out) == stored_files(pre_ref) and temporaries(out) == []

        # train: --continue resumes from the last checkpoint (or starts a fold killed before its first)
        env = roots(world, f"train_{point}")
        shutil.copytree(pre_ref, Path(env["AUTOSEG_PREPROCESSED"]) / DATASET, dirs_exist_ok=True)
        fold = Path(env["AUTOSEG_RESULTS"]) / DATASET / MODEL / "fold_all"
        kills += killed(env, TRAIN_ARGS, lambda: (fold / "checkpoint_latest.safetensors").is_file(), train_seconds, rng)
        for checkpoint in fold.glob("checkpoint_*.safetensors") if fold.is_dir() else []:
            _weights(checkpoint)  # complete under its final name
        cli(env, *TRAIN_ARGS, "--continue")
        resumed = _weights(fold / "checkpoint_final.safetensors")["network_weights"]
        assert all(torch.equal(weights_ref[k], resumed[k]) for k in weights_ref)
        assert temporaries(fold.parent) == []

        # predict: --continue skips the cases whose outputs exist
        predicted = world["base"] / f"predicted_{point}"
        kills += killed(reference, [*predict_args, "-o", predicted], lambda: any(predicted.glob("*.nii.gz")),
                        predict_seconds, rng)
        assert_nothing_half_written(predicted, stored_files(predicted_ref))
        cli(reference, *predict_args, "-o", predicted, "--continue")
        assert stored_files(predicted) == stored_files(predicted_ref) and temporaries(predicted) == []

        # export-model: rerun; the zip is absent or complete, never partial
        exported = world["base"] / f"export_{point}" / "model.zip"
        exported.parent.mkdir()
        kills += killed(reference, ["export-model", "-m", str(model), "-f", "all", "-o", str(exported)],
                        lambda: any(exported.parent.iterdir()), 0.3, rng)  # its temporary appeared
        if exported.exists():
            zipfile.ZipFile(exported).testzip()
        cli(reference, "export-model", "-m", model, "-f", "all", "-o", exported)
        with zipfile.ZipFile(exported) as new, zipfile.ZipFile(zip_ref) as old:
            assert new.namelist() == old.namelist()
            for name in old.namelist():
                if name != "manifest.json":  # holds the creation time
                    assert new.read(name) == old.read(name), name
        assert temporaries(exported.parent) == []
    print(f"{4 * POINTS} kill points, {kills} killed before finishing, 0 failures")


WORKERS_JOB = """
import os, sys, time
from pathlib import Path
folder, kind = Path(sys.argv[1]), sys.argv[2]

def slow(index):
    (folder / str(os.getpid())).touch()
    time.sleep(600)

if kind == "parallel_map":
    from autoseg.utils.progress import parallel_map
    parallel_map(slow, [(str(i), (i,)) for i in range(4)], 2, "cases")
else:
    from autoseg.training.data_loading import BatchStream
    next(BatchStream(slow, num_workers=2))
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped, as orphans in a container can be, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("kind", ["parallel_map", "data_loading"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_their_killed_stage(kind: str, sig: signal.Signals, tmp_path: Path) -> None:
    """A stage killed by SIGKILL or SIGTERM leaves no worker behind (case pools of preprocess, fingerprint,
    evaluate ...; training's data loaders), where they waited on their queue forever."""
    process = subprocess.Popen([sys.executable, "-c", WORKERS_JOB, str(tmp_path), kind])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    assert len(workers) == 2
    process.send_signal(sig)
    process.wait()
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if _running(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def _dead_writers_temporary(folder: Path, target: str) -> Path:
    """What ``kill -9`` leaves while a stage writes ``folder/target``: its temporary, named for a dead pid."""
    from autoseg.utils.atomic import HOST_TAG

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{target}.{HOST_TAG}-{int(dead.stdout)}-{'0' * 16}.tmp.nii.gz"
    temporary.write_bytes(b"half")
    return temporary


@pytest.mark.skipif(os.name != "posix", reason="stale temporaries are recognised on POSIX only")
def test_postprocess_apply_and_ensemble_rerun_after_kill_leave_no_temporary(tmp_path: Path) -> None:
    """Rerunning ``postprocess apply`` or ``ensemble`` into the folder a killed run wrote removes its
    temporaries, as ``predict`` does (they stayed forever)."""
    from test_ensemble import _two_models
    from test_postprocessing import LABELS, _make_cv_folders

    from autoseg.evaluation.ensemble import ensemble_folders
    from autoseg.postprocessing.determine import apply_to_folder, determine_postprocessing
    from autoseg.utils.output_folders import OUTPUT_MARKER

    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    _dead_writers_temporary(tmp_path / "post", "case1.nii.gz")
    apply_to_folder(preds, tmp_path / "post", preds / "postprocessing.json", num_workers=1)
    # the dead writer's temporary is gone; the folder's mark (ensemble / postprocess apply wrote it) stays
    assert sorted(p.name for p in (tmp_path / "post").iterdir()) == [OUTPUT_MARKER, *(f"case{i}.nii.gz" for i in range(3))]

    models = _two_models(tmp_path / "models")
    _dead_writers_temporary(tmp_path / "ensembled", "x.nii.gz")
    ensemble_folders(list(models), tmp_path / "ensembled", num_workers=1)
    assert sorted(p.name for p in (tmp_path / "ensembled").iterdir()) == [OUTPUT_MARKER, "x.nii.gz"]


def _worker_takes_ctrl_c() -> bool:
    import signal as signals

    from autoseg.utils.worker_exit import exit_with_parent

    exit_with_parent(os.getppid())
    return signals.getsignal(signals.SIGINT) is not signals.SIG_IGN


def test_a_pool_worker_leaves_ctrl_c_to_the_stage() -> None:
    """Ctrl-C reaches the terminal's whole process group: workers interrupted inside the pool's queues printed
    their tracebacks and at times left the queues locked, so that `preprocess -np 2` hung for good."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_worker_takes_ctrl_c) is False

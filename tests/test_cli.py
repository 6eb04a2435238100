"""The command line: every stage listed, nnU-Net-style list options, argument errors as one line + exit 2."""

from __future__ import annotations

import os
import time
import types
from pathlib import Path
from typing import Any, Optional

import pytest
from typer.testing import CliRunner

from autoseg.cli import app, expand_multi_value_options

runner = CliRunner()


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

STAGES = [
    "verify", "fingerprint", "plan", "preprocess", "train", "predict", "evaluate", "postprocess",
    "ensemble", "find-best", "export-model", "import-model", "report", "networks", "demo",
]


def test_help_lists_every_stage_with_a_line() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        line = next(line for line in result.output.splitlines() if line.strip().startswith(stage + " "))
        assert len(line.split(maxsplit=1)[1]) > 20  # a real one-line explanation


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("flag", ["--help", "-h"])  # -h, which nnU-Net's commands take, was 'No such option: -h'
def test_every_stage_has_help(stage: str, flag: str) -> None:
    result = runner.invoke(app, [stage, flag])
    assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize(("args", "expected"), [
    (["predict", "-i", "a", "-o", "b", "-m", "m", "-f", "0", "1", "2", "--no-tta"],
     ["predict", "-i", "a", "-o", "b", "-m", "m", "-f", "0", "-f", "1", "-f", "2", "--no-tta"]),
    (["ensemble", "-i", "A", "B", "-o", "O"], ["ensemble", "-i", "A", "-i", "B", "-o", "O"]),
    (["train", "D", "3d_fullres", "0", "--set", "a=1", "b=2"], ["train", "D", "3d_fullres", "0", "--set", "a=1", "--set", "b=2"]),
    (["predict", "-f", "all", "-i", "x"], ["predict", "-f", "all", "-i", "x"]),
    (["verify", "Dataset004"], ["verify", "Dataset004"]),
    # a positional argument after the list was taken for a fold: 'Missing argument dataset'
    (["find-best", "-f", "0", "1", "2", "Dataset004"], ["find-best", "-f", "0", "-f", "1", "-f", "2", "Dataset004"]),
    (["find-best", "-f", "0", "1", "4", "-np", "1"], ["find-best", "-f", "0", "-f", "1", "4", "-np", "1"]),
    (["train", "--set", "a=1", "b=2", "D", "2d", "0"], ["train", "--set", "a=1", "--set", "b=2", "D", "2d", "0"]),
    (["find-best", "-c", "2d", "-f", "0", "1", "4"], ["find-best", "-c", "2d", "-f", "0", "-f", "1", "4"]),
    ([], []),
])
def test_nnunet_style_lists(args: list[str], expected: list[str]) -> None:
    assert expand_multi_value_options(args) == expected


@pytest.mark.parametrize("args", [
    ["-f", "0", "1", "2", "-c", "3d_fullres", "2d", "Dataset004"],
    ["-c", "3d_fullres", "2d", "-f", "0", "1", "2", "Dataset004"],
    ["-f", "0", "1", "2", "Dataset004", "-c", "3d_fullres", "2d"],
    ["-c", "3d_fullres", "2d", "Dataset004", "-f", "0", "1", "2"],
    ["Dataset004", "-c", "3d_fullres", "2d", "-f", "0", "1", "2"],
])
def test_several_nnunet_style_lists_in_any_order(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the last list gave its values back to the positional argument: ``find-best -f 0 1 2 Dataset004 -c
    3d_fullres 2d`` took 2d for the dataset and Dataset004 for a fold."""
    import autoseg.evaluation.selection as selection

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(selection, "find_best", lambda *given: calls.append(given) or {})
    monkeypatch.setattr(selection, "instructions_text", lambda instructions: "")
    result = runner.invoke(app, expand_multi_value_options(["find-best", *args]))
    assert result.exit_code == 0, result.output
    assert calls == [("Dataset004", ["0", "1", "2"], ["3d_fullres", "2d"], True, None)]


@pytest.mark.parametrize(("args", "message"), [
    (["plan", "Dataset004", "--budget", "soon"], "duration 'soon' not understood"),
    (["predict", "-i", ".", "-o", "out", "-m", ".", "--step", "1.5"], "--step 1.5: must be in (0, 1]"),
    # was accepted: 500x the default's tiles per axis, a prediction of days
    (["predict", "-i", ".", "-o", "out", "-m", ".", "--step", "0.001"],
     "--step 0.001: tiles would start 0.001 of a patch apart, up to 1000 per patch length on each axis: 500x"),
    (["predict", "-i", ".", "-o", "out"], "give either -m MODEL_FOLDER or both -d DATASET and -c CONFIGURATION"),
    # -c was ignored: the model folder's own configuration predicted without a word
    (["predict", "-i", ".", "-o", "out", "-m", ".", "-c", "2d"], "-m names the model; -c would be ignored"),
    (["predict", "-i", ".", "-o", "out", "-m", ".", "-d", "4", "--network", "vnet"], "-m names the model; -d, --network would be ignored"),
    (["verify", "Dataset777"], "dataset 'Dataset777' not found in the raw root"),
    # named as the option is spelled, not as the Python argument (mixed_precision='xyz')
    (["predict", "-i", ".", "-o", "out", "-m", ".", "--mixed-precision", "xyz"], "--mixed-precision='xyz': choose auto, fp16, bf16 or off"),
    (["predict", "-i", ".", "-o", "out", "-m", ".", "--mixed-precision", "fp16", "--device", "cpu"],
     "--mixed-precision=fp16 needs CUDA (device is cpu); use bf16 or off"),
    (["preprocess", "Dataset004", "-np", "-2"], "Invalid value for '-np' / '--num-workers'"),  # was: one worker, quietly
    (["evaluate", "-p", "p", "-r", "r", "--num-workers", "-1"], "Invalid value for '-np' / '--num-workers'"),
    # was 'num_workers must be >= 0 ...', naming the config key, not the option given
    (["train", "Dataset004", "2d", "0", "--workers", "-1"], "Invalid value for '--workers': Input should be greater"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str, roots: dict[str, Path]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (Path("out")).exists()


@pytest.mark.parametrize(("args", "line"), [
    # -chk is click's -c hk: 'Got unexpected extra argument(s) (best)' in four lines of click's, without a hint
    (["predict", "-i", "in", "-o", "out", "-m", "m", "-chk", "best"],
     "autoseg: error: predict: Got unexpected extra argument(s) (best); -chk is nnU-Net's spelling: use --checkpoint; "
     "see 'root predict --help'"),
    # without a value -chk is -c hk, refused by predict itself: that refusal got no hint
    (["predict", "-i", "in", "-o", "out", "-m", "m", "-chk"],
     "autoseg: error: -m names the model; -c would be ignored: leave it out, or name the model with -d DATASET -c "
     "CONFIGURATION instead of -m; -chk is nnU-Net's spelling: use --checkpoint"),
    (["train", "4", "2d", "0", "-tr", "nnUNetTrainer_5epochs"],
     "autoseg: error: train: No such option: -t; -tr is nnU-Net's spelling: use --network (nnU-Net's trainer variants "
     "are --network, --epochs and --set here); see 'root train --help'"),
    (["plan", "4", "-p", "nnUNetResEncPlans", "-device", "cpu"],
     "autoseg: error: plan: No such option: -p; -p is nnU-Net's spelling: use --plans-name; -device is nnU-Net's "
     "spelling: use --device; see 'root plan --help'"),
    (["preprocess", "-d", "4"], "autoseg: error: preprocess: No such option: -d; -d is nnU-Net's spelling: use the "
     "dataset as the first argument, without -d; see 'root preprocess --help'"),
    (["evaluate", "-p", "p", "-r", "r", "--bogus"], "autoseg: error: evaluate: No such option: --bogus; see 'root "
     "evaluate --help'"),  # evaluate's own -p: no hint
    (["train", "4"], "autoseg: error: train: Missing argument 'configuration'; see 'root train --help'"),
    (["verify", "4", "5"], "autoseg: error: verify: Got unexpected extra argument(s) (5); see 'root verify --help'"),
    (["postprocess", "apply", "--x"], "autoseg: error: postprocess apply: No such option: --x; see 'root postprocess "
     "apply --help'"),
    (["nosuch"], "autoseg: error: No such command 'nosuch'; see 'root --help'"),
    # click raises it without a context: it was named as the group's ('see root --help')
    (["predict", "-i", "in", "-o", "out", "-f"], "autoseg: error: predict: Option '-f' requires an argument; see 'root "
     "predict --help'"),
])
def test_usage_errors_are_one_line_with_hints_for_nnunet_spellings(args: list[str], line: str) -> None:
    """Usage errors were click's four lines (Usage, Try, a blank, 'Error: ...') unlike every other error, and
    nnU-Net's spellings got no hint."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output.splitlines() == [line]


def test_more_workers_than_cases_start_one_worker_a_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify -np 100000 on 3 cases started a pool of 100000 processes (fork starts them all at once): thousands of
    processes before the machine refused more."""
    from autoseg.utils import progress

    started: list[int] = []
    real_pool = progress.ProcessPoolExecutor

    def pool(max_workers: int, **options: Any) -> Any:
        started.append(max_workers)
        if max_workers > 3:
            raise RuntimeError(f"would start {max_workers} processes for 3 cases")
        return real_pool(max_workers=max_workers, **options)

    monkeypatch.setattr(progress, "ProcessPoolExecutor", pool)
    results, failures = progress.parallel_map(abs, [(str(i), (-i,)) for i in range(3)], 100000, "cases")
    assert results == {"0": 0, "1": 1, "2": 2} and not failures and started == [3]


def test_too_many_workers_are_lowered_when_the_command_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """-np was checked only when a stage's first pool started (ensemble had claimed its output folder by then); a
    count beyond 4 per core is lowered when the command line is read, with one note."""
    from autoseg.cli import checked_workers
    from autoseg.utils import progress

    monkeypatch.setattr(progress, "available_cores", lambda: 2)
    assert checked_workers(9) == 8 and checked_workers(8) == 8 and checked_workers(None) is None


def test_version_is_printed() -> None:
    """``autoseg --version`` was 'No such option: --version'."""
    from autoseg import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"autoseg {__version__}\n"


def test_a_bare_command_group_still_shows_its_help() -> None:
    result = runner.invoke(app, ["postprocess"])
    assert result.exit_code == 2 and "Usage:" in result.output and "determine" in result.output


@pytest.mark.parametrize("args", [
    ["predict", "-i", "in", "-o", "", "-m", "model"],
    ["predict", "-i", "", "-o", "out", "-m", "model"],
    ["evaluate", "-p", "p", "-r", "r", "-o", ""],
    ["postprocess", "apply", "-i", "in", "-o", "", "--decision", "d.json"],
    ["ensemble", "-i", "a", "-i", "b", "-o", ""],
    ["export-model", "-m", "model", "-o", ""],
    ["import-model", "model.zip", "--results-root", ""],
    ["report", "Dataset004", "-o", ""],
    ["demo", "-o", "", "--budget", "soon"],
])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-o ""`` (say an unset shell variable) became ``.``: predictions landed in the current folder."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "an empty path; give a file or folder name" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_a_leading_tilde_in_a_path_option_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--output=~/preds`` (no shell expands that ~) made a folder named ``~`` in the current one; dataset
    arguments and the roots expand it. An unknown user's ``~name`` is one line, not a traceback."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["export-model", "-m", "~/model", "--output=~/model.zip"])
    assert result.exit_code == 2 and f"{home / 'model'}" in result.output, result.output
    assert not any(work.iterdir())
    result = runner.invoke(app, ["evaluate", "-p", "~nosuchuser4711/p", "-r", "r"])
    assert result.exit_code == 2 and "the home folder of user 'nosuchuser4711' is unknown" in result.output, result.output


def test_a_reader_that_leaves_stops_the_command_quietly() -> None:
    """`autoseg networks | head -0`: the pipe's reader is gone before the first line; exit 141 as a
    shell reports a command stopped by a closed pipe, no "internal error" and no traceback."""
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before autoseg writes anything
    process = subprocess.run(
        [sys.executable, "-c", "from autoseg.cli import main; main()", "networks"],
        stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
    )
    os.close(write_end)
    assert (process.returncode, process.stderr) == (141, "")


def test_an_output_path_that_is_not_utf8_is_printed_as_given(tmp_path: Path) -> None:
    """With a strict UTF-8 standard output (an en_US.UTF-8 terminal; PYTHONIOENCODING=utf-8 here), `evaluate -o
    out\\xff` wrote its summary, then failed printing its path as an 'internal error', exit 1; the path is printed
    as its own bytes now."""
    import subprocess
    import sys

    import numpy as np

    from autoseg.dataset.imageio import Geometry, write_image

    for folder in ("pred", "ref"):
        write_image(np.eye(3, dtype=np.uint8)[None], Geometry.default((1, 3, 3)), tmp_path / folder / "a.nii.gz")
    output = os.fsencode(tmp_path) + b"/out\xff"
    process = subprocess.run(
        [sys.executable, "-c", "from autoseg.cli import main; main()", "evaluate", "-p", tmp_path / "pred", "-r",
         tmp_path / "ref", "-l", "1", "-o", output, "-np", "1"],
        capture_output=True, timeout=120, env=os.environ | {"PYTHONIOENCODING": "utf-8"},
    )
    assert process.returncode == 0, process.stderr
    assert b"written: " + output + b"/summary.json" in process.stdout and os.path.isfile(output + b"/summary.json")


def test_error_messages_show_undecodable_bytes_of_file_names_as_hex(tmp_path: Path) -> None:
    """Messages naming a file with a byte that is not UTF-8 (``caf\\xff.nii.gz``) printed it as ``caf\\udcff``,
    a name no file has; every error line shows the byte as ``\\xff`` now."""
    import shutil
    import subprocess
    import sys

    import numpy as np

    from autoseg.dataset.imageio import Geometry, write_image

    for folder in ("pred", "ref"):
        write_image(np.eye(3, dtype=np.uint8)[None], Geometry.default((1, 3, 3)), tmp_path / folder / "a.nii.gz")
    shutil.copy(tmp_path / "pred" / "a.nii.gz", os.fsdecode(os.fsencode(tmp_path) + b"/pred/caf\xff.nii.gz"))
    process = subprocess.run(
        [sys.executable, "-c", "from autoseg.cli import main; main()", "evaluate", "-p", tmp_path / "pred", "-r",
         tmp_path / "ref", "-l", "1", "-o", tmp_path / "out", "-np", "1"],
        capture_output=True, timeout=120, env=os.environ | {"PYTHONIOENCODING": "utf-8"},
    )
    assert process.returncode == 2, process.stderr
    assert b"reference of case caf\\xff not found (prediction " in process.stderr and b"udcff" not in process.stderr


def test_an_error_message_with_a_lone_surrogate_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """A lone surrogate that names no byte (``"\\ud800"``, a JSON escape) is shown escaped, not raised while
    printing the error."""
    import typer

    from autoseg.cli import _fail

    with pytest.raises(typer.Exit):
        _fail("label '\ud800' and case caf\udcff", 2)
    assert capsys.readouterr().err == "autoseg: error: label '\\ud800' and case caf\\xff\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_standard_output_is_named_as_such() -> None:
    """`autoseg networks > /dev/full` printed 'No space left on device; the disk is full ...' without saying
    that it was standard output that could not be written."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        process = subprocess.run([sys.executable, "-c", "from autoseg.cli import main; main()", "networks"],
                                 stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert process.returncode == 2, process.stderr
    assert process.stderr == ("autoseg: error: standard output could not be written (No space left on device): the disk "
                              "or device it is redirected to is full; free space or redirect it elsewhere\n")


def test_a_broken_pipe_elsewhere_is_still_an_internal_error() -> None:
    """Only standard output's reader leaving is quiet: a worker's pipe breaking is a bug to report."""
    import typer

    from autoseg.cli import user_errors

    single = typer.Typer()

    @single.command()
    @user_errors
    def work() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    result = runner.invoke(single, [])
    assert result.exit_code == 1
    assert "internal error (BrokenPipeError: [Errno 32] Broken pipe); this is a bug in autoseg" in result.output


def test_sigterm_ends_a_command_as_an_interrupt_with_its_cleanup(tmp_path: Path) -> None:
    """Schedulers stop jobs with SIGTERM, which ended Python at once: no cleanup, no message, status -15.
    Now the half-written file's temporary is removed, one line says why, and the status is 143."""
    import signal
    import time

    import typer

    from autoseg.cli import user_errors
    from autoseg.utils.atomic import atomic_path

    single = typer.Typer()

    @single.command()
    @user_errors
    def work() -> None:
        with atomic_path(tmp_path / "result.json") as tmp:
            tmp.write_text('{"half": ')
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this

    before = signal.getsignal(signal.SIGTERM)
    result = runner.invoke(single, [])
    assert result.exit_code == 143
    assert "autoseg: error: terminated (SIGTERM); rerun the command" in result.output
    assert list(tmp_path.iterdir()) == []  # neither the result nor its temporary
    assert signal.getsignal(signal.SIGTERM) is before  # the test process's own handler is back


def test_ctrl_c_in_a_command_is_an_interrupt_with_its_cleanup_whatever_the_entry_point_set(tmp_path: Path) -> None:
    """The entry point (autoseg.__main__) ends Ctrl-C at once, with one line, until a stage runs; within it Ctrl-C
    raises KeyboardInterrupt, as the stages' cleanup expects (the half-written file's temporary is removed); the entry
    point's handler is back after."""
    import signal
    import time

    import typer

    from autoseg.__main__ import _exit_interrupted
    from autoseg.cli import user_errors
    from autoseg.utils.atomic import atomic_path

    single = typer.Typer()
    raised: list[str] = []

    @single.command()
    @user_errors
    def work() -> None:
        with atomic_path(tmp_path / "result.json") as tmp:
            tmp.write_text('{"half": ')
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler interrupts this
            except BaseException as exc:
                raised.append(type(exc).__name__)
                raise

    before = signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        result = runner.invoke(single, [])
        assert signal.getsignal(signal.SIGINT) is _exit_interrupted
    finally:
        signal.signal(signal.SIGINT, before)
    assert (result.exit_code, result.output, raised) == (130, "autoseg: error: interrupted\n", ["KeyboardInterrupt"])
    assert list(tmp_path.iterdir()) == []  # neither the result nor its temporary


def test_demo_names_the_classes_of_the_dataset_it_evaluated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``demo --dataset`` with another dataset printed 'held-out mean Dice (Anterior, Posterior)' whatever its classes."""
    import autoseg.demo
    from autoseg.demo import DemoResult

    def fake_run_demo(*args: object, **kwargs: object) -> DemoResult:
        return DemoResult(predictions=tmp_path / "p", report=tmp_path / "r.html", evaluation=tmp_path / "e.json",
                          mean_dice=0.5, seconds=60.0, class_names=("whole_tumor", "tumor_core"))

    monkeypatch.setattr(autoseg.demo, "run_demo", fake_run_demo)
    result = runner.invoke(app, ["demo", "-o", str(tmp_path), "--dataset", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "held-out mean Dice (whole_tumor, tumor_core): 0.500" in result.output


def test_demo_refuses_an_output_below_a_file_before_running(tmp_path: Path) -> None:
    """``demo -o notes.txt``: verify ran, then fingerprint's mkdir failed as an internal error (exit 1)."""
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "notes.txt")])
    assert result.exit_code == 2
    assert "notes.txt: exists and is not a folder; give a folder (new or existing) for the outputs" in result.output
    assert "[1/7]" not in result.output and (tmp_path / "notes.txt").read_text() == "mine"


def _held_out_dataset(tmp_path: Path, with_label: bool) -> tuple[Path, str]:
    """A dataset folder with dataset.json and one held-out case of the example (its label or not); its case id."""
    from autoseg.demo import EXAMPLE_DATASET

    dataset = tmp_path / "Dataset990_Mine"
    for folder in ("imagesTs", "labelsTs"):
        (dataset / folder).mkdir(parents=True)
    (dataset / "dataset.json").write_text((EXAMPLE_DATASET / "dataset.json").read_text())
    image = next((EXAMPLE_DATASET / "imagesTs").glob("*_0000.nii.gz"))
    (dataset / "imagesTs" / image.name).write_bytes(image.read_bytes())
    case = image.name.removesuffix("_0000.nii.gz")
    if with_label:
        (dataset / "labelsTs" / f"{case}.nii.gz").write_bytes((EXAMPLE_DATASET / "labelsTs" / f"{case}.nii.gz").read_bytes())
    return dataset, case


def test_demo_refuses_held_out_images_without_labels_before_running(tmp_path: Path) -> None:
    """``demo --dataset`` with an imagesTs case lacking its labelsTs label trained the whole budget, then its
    evaluation refused the case."""
    dataset, case = _held_out_dataset(tmp_path, with_label=False)
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "out"), "--dataset", str(dataset)])
    assert result.exit_code == 2, result.output
    assert f"labelsTs: no label for held-out case(s) {case} (expected {case}.nii.gz)" in result.output
    assert "[1/7]" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch_cuda_available(), reason="needs a machine without CUDA")
def test_demo_refuses_a_missing_gpu_before_running(tmp_path: Path) -> None:
    """``demo --device cuda`` without CUDA: plan refused it after verify and fingerprint had written a run
    folder, advising plan's --gpu-memory, which the demo has not."""
    dataset, _ = _held_out_dataset(tmp_path, with_label=True)
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "out"), "--dataset", str(dataset), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "--device cuda: CUDA is not available on this machine; use --device cpu" in result.output
    assert "[1/7]" not in result.output and not (tmp_path / "out").exists()


def test_demo_refuses_to_write_into_its_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``autoseg demo --dataset .`` run in the dataset (the default -o autoseg_demo lies inside it) wrote its run
    folders into the user's dataset."""
    dataset, _ = _held_out_dataset(tmp_path, with_label=True)
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    monkeypatch.chdir(dataset)
    result = runner.invoke(app, ["demo", "--dataset", "."])
    assert result.exit_code == 2, result.output
    assert "autoseg_demo: output folder lies inside the input folder ." in result.output and "[1/7]" not in result.output
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


@pytest.mark.parametrize(("option", "message"), [
    # ran in float32 without a word (``--compile`` is refused)
    (["--mixed-precision", "bf16"], "--mixed-precision bf16 applies to the torch engine; the onnxruntime engine computes in float32"),
    # ran on the CPU without a word
    (["--device", "cuda"], "--device cuda applies to the torch engine; the onnxruntime engine runs on the CPU"),
])
def test_onnxruntime_engine_refuses_a_setting_it_would_not_use(option: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "m.zip"),
                                 "--engine", "onnxruntime", *option])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("asked", "message"), [
    ({"model_folder": Path("m"), "configuration": "2d"}, "-m names the model; -c would be ignored"),
    ({"dataset": "4"}, "give either -m MODEL_FOLDER or both -d DATASET and -c CONFIGURATION"),
    ({"model_folder": Path("m.zip"), "engine": "onnxruntime", "device": "cuda"}, "--device cuda applies to the torch engine"),
    ({"model_folder": Path("m"), "step": 1.5}, "--step 1.5: must be in (0, 1]"),
])
def test_predict_refusals_are_the_inference_packages_for_python_callers_too(asked: dict, message: str) -> None:
    """The checks lived in cli.py's predict command: ``autoseg.inference`` callers got none of them."""
    from autoseg.errors import UsageError
    from autoseg.inference import PredictRequest, check_predict_request

    with pytest.raises(UsageError) as raised:
        check_predict_request(PredictRequest(**asked))
    assert message in str(raised.value)


@pytest.mark.parametrize(("raised", "expected"), [
    (NotADirectoryError(20, "Not a directory", "notes.txt/pre/Dataset004_X"),
     "notes.txt/pre/Dataset004_X: Not a directory; a file stands where a folder is needed"),
    (PermissionError(13, "Permission denied", "/data/results/x.json"),
     "/data/results/x.json: Permission denied; no permission there; choose a folder you can write to"),
    (OSError(28, "No space left on device", "/data/pre/a.b2nd"),
     "/data/pre/a.b2nd: No space left on device; the disk is full"),
    # -o with a name over 255 bytes: 'internal error (OSError: [Errno 36] File name too long ...)'
    (OSError(36, "File name too long", "/data/" + "x" * 300),
     f"/data/{'x' * 300}: File name too long; a file or folder name there is longer than the file system allows"),
    # evaluate -np 2 under `ulimit -n 12`: 'internal error (OSError: [Errno 24] Too many open files)'
    (OSError(24, "Too many open files"), "Too many open files; this process's limit of open files is reached; raise it "
     "(ulimit -n 4096)"),
])
def test_file_system_refusals_the_user_can_fix_are_not_reported_as_bugs(raised: OSError, expected: str) -> None:
    """AUTOSEG_PREPROCESSED below a file, a folder without write permission or a full disk printed
    'internal error (...); this is a bug in autoseg' and exited with 1."""
    import typer

    from autoseg.cli import user_errors

    single = typer.Typer()

    @single.command()
    @user_errors
    def work() -> None:
        raise raised

    result = runner.invoke(single, [])
    assert result.exit_code == 2, result.output
    assert f"autoseg: error: {expected}" in result.output and "internal error" not in result.output


ALLOCATION_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                      "tried to allocate 905969664 bytes. Error code 12 (Cannot allocate memory)")
TRAIN_RAM_FIX = ("train with a smaller --set batch_size=N or --set patch_size=[...], fewer data workers (--workers), or "
                 "plan for this machine with autoseg plan ... --budget")


@pytest.mark.parametrize(("stage", "raised", "expected"), [
    ("train", RuntimeError(ALLOCATION_FAILURE), "out of memory (RAM) (can't allocate memory: you tried to allocate "
     f"905969664 bytes. Error code 12 (Cannot allocate memory)); {TRAIN_RAM_FIX}"),
    ("train", MemoryError(), f"out of memory (RAM); {TRAIN_RAM_FIX}"),
    ("preprocess", MemoryError(), "out of memory (RAM); use fewer worker processes (-np) or a machine with more RAM"),
    # starting worker processes: fork refused by the system, an OSError, not a MemoryError
    ("preprocess", OSError(12, "Cannot allocate memory"), "out of memory (RAM) ([Errno 12] Cannot allocate memory); "
     "use fewer worker processes (-np)"),
    ("train", "OutOfMemoryError", "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB); re-plan with a "
     "smaller --gpu-memory"),
    ("export_model", MemoryError(), "out of memory (RAM); use a machine with more RAM"),
    # GPU memory running out as a plain RuntimeError, not torch's OutOfMemoryError
    ("train", RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
     "out of GPU memory (CUDA error: out of memory); re-plan with a smaller --gpu-memory"),
    ("predict", RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.00 GB)"),
     "out of GPU memory (MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.00 GB)); re-plan "
     "with a smaller --gpu-memory"),
])
def test_memory_running_out_is_one_line_with_the_fix_not_a_bug(stage: str, raised: Any, expected: str) -> None:
    """torch's CPU allocator failing (a RuntimeError: 'can't allocate memory') ended as 'internal error ...
    this is a bug in autoseg' with exit code 1; a MemoryError in train or export-model was told to use
    -np, which they lack."""
    import torch
    import typer

    from autoseg.cli import user_errors

    single = typer.Typer()
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") if raised == "OutOfMemoryError" else raised

    def work() -> None:
        raise error

    def work_with_workers(num_workers: Optional[int] = typer.Option(None, "-np")) -> None:
        raise error

    work = work_with_workers if stage == "preprocess" else work
    work.__name__ = stage
    single.command()(user_errors(work))
    result = runner.invoke(single, [])
    assert result.exit_code == 2, result.output
    assert f"autoseg: error: {expected}" in result.output, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output


def test_a_file_where_a_root_folder_is_needed_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AUTOSEG_PREPROCESSED=notes.txt/pre autoseg fingerprint``: NotADirectoryError from mkdir, an internal error."""
    from conftest import EXAMPLE_DATASET

    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(tmp_path / "notes.txt" / "pre"))
    result = runner.invoke(app, ["fingerprint", str(EXAMPLE_DATASET), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert "notes.txt/pre/Dataset904_HippocampusMini: Not a directory; a file stands where a folder is needed" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demos_started_in_the_same_second_get_their_own_folders_and_short_budgets_print_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run folder had one-second resolution: two demos started in the same second shared it. A budget
    under 6 s was printed as '0.0 min'."""
    import autoseg.dataset.verify
    import autoseg.demo
    import autoseg.fingerprint.extract
    import autoseg.planning.planner
    from autoseg.demo import DemoResult, run_demo

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    clock = types.SimpleNamespace(strftime=lambda fmt: "run-20260101-120000", perf_counter=time.perf_counter)
    monkeypatch.setattr(autoseg.demo, "time", clock)  # the demo's clock only: both runs start in one second
    monkeypatch.setattr(autoseg.dataset.verify, "require_valid", lambda location: None)
    monkeypatch.setattr(autoseg.fingerprint.extract, "extract_fingerprint", lambda location, warn=None: {"is_2d": False})
    monkeypatch.setattr(autoseg.planning.planner, "plan_dataset", stop)
    said: list[str] = []
    for _ in range(2):
        with pytest.raises(Stop):
            run_demo(tmp_path / "demo", 60.0, say=said.append)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["run-20260101-120000", "run-20260101-120000-2"]
    assert "[3/7] plan for a training budget of 30.0 s on this machine" in said  # 60 s less 20 s before, 10 s after

    def fake_run_demo(*args: object, **kwargs: object) -> DemoResult:
        return DemoResult(predictions=tmp_path / "p", report=tmp_path / "r.html", evaluation=tmp_path / "e.json",
                          mean_dice=0.5, seconds=4.25, class_names=("Anterior", "Posterior"))

    monkeypatch.setattr(autoseg.demo, "run_demo", fake_run_demo)
    result = runner.invoke(app, ["demo", "-o", str(tmp_path)])
    assert result.exit_code == 0 and "total time:  4.2 s" in result.output, result.output


@pytest.mark.parametrize(("budget", "elapsed", "training"), [
    (60.0, 16.4, 33.6),  # 60 s less the 16.4 s before training and the 10 s kept for the stages after it
    (600.0, 16.4, 553.6),  # 5% of 10 min kept after training
    (60.0, 45.0, 20.0),  # the stages before took longer than usual: training gets its minimum
])
def test_the_demo_budget_counts_the_stages_before_and_after_training(budget: float, elapsed: float, training: float) -> None:
    """Training got 85% of the budget from its own start and the stages before it (the plan's timing probe)
    came on top: ``demo --budget 1m`` took 1.3 to 1.6 min."""
    from autoseg.demo import training_seconds

    assert training_seconds(budget, elapsed) == pytest.approx(training)
    if training > 20.0:  # with the stage times measured for the example (6.3 s after training), within 10%
        assert abs(elapsed + training_seconds(budget, elapsed) + 6.3 - budget) <= 0.1 * budget


def test_a_demo_budget_without_time_to_train_is_refused_before_any_run_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo"), "--budget", "30s"])
    assert result.exit_code == 2, result.output
    assert ("--budget 30.0 s: the demo's stages other than training take about 30.0 s and training at least 20.0 s; "
            "give --budget 50.0 s or more") in result.output
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), "30m", None])
def test_a_demo_budget_that_is_no_number_of_seconds_is_refused(budget: Any) -> None:
    """From Python, run_demo(budget_seconds=nan) passed the minimum-budget test and ran on (inf too: a demo
    without end), and "30m" raised a bare TypeError."""
    from autoseg.demo import check_budget
    from autoseg.errors import UsageError

    with pytest.raises(UsageError, match=r"--budget must be a positive, finite number of seconds, got .*parse_duration"):
        check_budget(budget)


@pytest.mark.parametrize(("is_2d", "configuration"), [(True, "2d"), (False, "3d_fullres")])
def test_the_demo_plans_the_configuration_of_its_datasets_dimensionality(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, is_2d: bool, configuration: str
) -> None:
    """``demo --dataset`` of a 2D dataset (PNG pictures) failed at plan: '3d_fullres cannot be planned for this
    2D dataset', after verify and fingerprint had run."""
    import autoseg.dataset.verify
    import autoseg.fingerprint.extract
    import autoseg.planning.planner
    from autoseg.demo import run_demo

    asked: list[object] = []

    class Stop(Exception):
        pass

    def plan(*args: object, configs: object = None, **kwargs: object) -> None:
        asked.append(configs)
        raise Stop

    monkeypatch.setattr(autoseg.dataset.verify, "require_valid", lambda location: None)
    monkeypatch.setattr(autoseg.fingerprint.extract, "extract_fingerprint", lambda location, warn=None: {"is_2d": is_2d})
    monkeypatch.setattr(autoseg.planning.planner, "plan_dataset", plan)
    with pytest.raises(Stop):
        run_demo(tmp_path / "demo", 60.0, say=lambda line: None)
    assert asked == [[configuration]]


# A child that gets Ctrl-C (SIGINT) while the command line imports typer, as a user's early Ctrl-C lands.
_CTRL_C_WHILE_IMPORTING = """
import os, signal, sys

class CtrlCOnTyper:
    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCOnTyper())
sys.argv = ["autoseg", "networks"]
from autoseg.__main__ import main
main()
"""


def test_ctrl_c_while_the_command_line_imports_is_one_line() -> None:
    """Ctrl-C within about 0.2 s of starting autoseg (typer and torch still importing) printed a KeyboardInterrupt
    traceback; the console script's entry point takes it over first, as the stages do: one line, exit 130."""
    import subprocess
    import sys
    import tomllib

    process = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_IMPORTING], capture_output=True, text=True, timeout=120)
    assert (process.returncode, process.stderr, process.stdout) == (130, "autoseg: error: interrupted\n", "")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["autoseg"] == "autoseg.__main__:main"


# A child that gets Ctrl-C while typer parses the command line (after its imports, before the stage runs).
_CTRL_C_WHILE_PARSING = """
import os, signal, sys
import typer.core

make_context = typer.core.TyperGroup.make_context

def interrupted_make_context(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return make_context(self, *args, **kwargs)

typer.core.TyperGroup.make_context = interrupted_make_context
sys.argv = ["autoseg", "networks"]
from autoseg.__main__ import main
main()
"""


def test_ctrl_c_while_the_command_line_is_parsed_is_one_line() -> None:
    """typer turns a KeyboardInterrupt while it parses the command line into exit 130 without a word (about 0.1 to
    0.2 s after the start); the entry point's own Ctrl-C handler says why it stopped. A stage raises Ctrl-C as
    KeyboardInterrupt again, for its cleanup (test_kill_resume)."""
    import subprocess
    import sys

    process = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_PARSING], capture_output=True, text=True, timeout=120)
    assert (process.returncode, process.stderr, process.stdout) == (130, "autoseg: error: interrupted\n", "")


def test_train_continue_help_says_it_falls_back_to_checkpoint_best() -> None:
    """--continue's help said only 'resume from the latest checkpoint', though a fold with checkpoint_best alone resumes
    from that, with a note."""
    result = runner.invoke(app, ["train", "--help"], terminal_width=400)
    line = next(line for line in result.output.splitlines() if line.strip().startswith("--continue"))
    assert "resume from the latest checkpoint (also after kill -9; else from checkpoint_best, with a note)" in line

"""The ``autoseg`` command line: one command per stage. Parses, calls, prints; no logic here."""

from __future__ import annotations

import contextlib
import errno
import io
import functools
import inspect
import os
import select
import stat
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from autoseg.cli_usage import OneLineUsageGroup, echo_error, with_spelling_hints
from autoseg.errors import AutosegError, out_of_memory_message
from autoseg.utils.termination import TERMINATED_EXIT_CODE, Terminated, signals_as_interrupts

app = typer.Typer(
    cls=OneLineUsageGroup,
    context_settings={"help_option_names": ["-h", "--help"]},  # nnU-Net's commands (argparse) take -h too
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help=(
        "autoseg: self-configuring medical image segmentation for nnU-Net v2 datasets.\n\n"
        "Stages run separately and leave files on disk: verify -> fingerprint -> plan -> preprocess -> "
        "train -> predict -> evaluate / postprocess / find-best. Datasets are named as Dataset004, 4, "
        "Dataset004_Hippocampus or a folder path; roots come from AUTOSEG_RAW / AUTOSEG_PREPROCESSED / "
        "AUTOSEG_RESULTS (or nnU-Net's variables), else ./autoseg_data."
    ),
)


def _fail(message: str, code: int) -> None:
    """Print ``message`` as one error line (``echo_error``) and exit with ``code``."""
    echo_error(message)
    raise typer.Exit(code)


SIGPIPE_EXIT_CODE = 141  # what a shell reports for a command stopped by a closed pipe (128 + SIGPIPE)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader went away (poll reports an error on its write end);
    if so, point it at /dev/null so that the exit's flush is quiet."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no fileno (captured output) or no poll (Windows)
        return False
    if closed:
        _silence_stdout(fd)
    return closed


def _silence_stdout(fd: int) -> None:
    """Point standard output (``fd``) at /dev/null, so that the exit's flush of what it could not take is quiet."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)


def _stdout_full() -> bool:
    """Whether standard output leads to a full device: /dev/full, or a file on a disk without free blocks;
    if so, silence it. A failed write to it carries no file name, so `autoseg networks > /dev/full` printed
    'No space left on device; the disk is full ...' without saying which output it was."""
    try:
        fd = sys.stdout.fileno()
        status = os.fstat(fd)
        full = (status.st_rdev == os.stat("/dev/full").st_rdev if stat.S_ISCHR(status.st_mode)
                else stat.S_ISREG(status.st_mode) and os.fstatvfs(fd).f_bavail == 0)
    except (AttributeError, OSError, ValueError):  # no fileno (captured output), no /dev/full (Windows)
        return False
    if full:
        _silence_stdout(fd)
    return full


# File-system refusals caused by where the user points autoseg (a root or -o below a file, a folder
# without write permission, a full disk), not by a bug: the fix for each.
ENVIRONMENT_ERRNO_FIXES = {
    errno.ENOTDIR: "a file stands where a folder is needed; check the path (and AUTOSEG_RAW / "
                   "AUTOSEG_PREPROCESSED / AUTOSEG_RESULTS)",
    errno.EACCES: "no permission there; choose a folder you can write to, or fix its permissions",
    errno.EPERM: "no permission there; choose a folder you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOSPC: "the disk is full; free space or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose a folder on another disk",
    errno.ENAMETOOLONG: "a file or folder name there is longer than the file system allows (most take 255 "
                        "bytes a name); choose shorter names",
    errno.EMFILE: "this process's limit of open files is reached; raise it (ulimit -n 4096) or use fewer worker "
                  "processes (-np)",
}


def environment_error_message(exc: OSError) -> str | None:
    """One line naming the path and the fix for an ``OSError`` the user's paths or disk caused, else None.

    Such errors reached the user as 'internal error ... this is a bug in autoseg' (for example
    ``AUTOSEG_PREPROCESSED=notes.txt/pre``: NotADirectoryError from fingerprint's mkdir). An existing file
    where ``mkdir`` wanted a folder (FileExistsError) counts as ENOTDIR."""
    code = exc.errno
    if code == errno.EEXIST and isinstance(exc.filename, (str, os.PathLike)) and Path(exc.filename).is_file():
        code = errno.ENOTDIR
    fix = ENVIRONMENT_ERRNO_FIXES.get(code) if code is not None else None
    if fix is None:
        return None
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return f"{where}{exc.strerror or os.strerror(code)}; {fix}"


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one message and exit code 2; never a traceback (AUTOSEG_DEBUG=1 shows it)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with signals_as_interrupts():
                return func(*args, **kwargs)
        except AutosegError as exc:
            if os.environ.get("AUTOSEG_DEBUG"):
                traceback.print_exc()
            _fail(with_spelling_hints(str(exc)), exc.exit_code)
        except Terminated:
            _fail("terminated (SIGTERM); rerun the command (or add --continue where the stage has it)", TERMINATED_EXIT_CODE)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if isinstance(exc, BrokenPipeError) and _stdout_closed():  # `autoseg ... | head`: the reader left
                raise typer.Exit(SIGPIPE_EXIT_CODE) from None  # stop quietly (another pipe breaking is a bug)
            if os.environ.get("AUTOSEG_DEBUG"):
                traceback.print_exc()
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and exc.filename is None \
                    and _stdout_full():
                _fail(f"standard output could not be written ({exc.strerror}): the disk or device it is redirected to "
                      "is full; free space or redirect it elsewhere", 2)
            environment = environment_error_message(exc) if isinstance(exc, OSError) else None
            if environment is not None:
                _fail(environment, 2)
            out_of_memory = out_of_memory_message(exc, func.__name__, "num_workers" in inspect.signature(func).parameters)
            if out_of_memory is not None:
                _fail(out_of_memory, 2)
            _fail(
                f"internal error ({type(exc).__name__}: {exc}); this is a bug in autoseg, please report it "
                "with the command you ran (AUTOSEG_DEBUG=1 prints the traceback)",
                1,
            )

    return wrapper


def nonempty_path(value: str | os.PathLike[str]) -> Path:
    """A path option's value, refused when empty: ``Path("")`` is ``.``, so ``-o ""`` (an unset shell
    variable) wrote predictions into the current folder, and ``-i ""`` read it. A leading ``~`` is
    expanded, as in dataset arguments and the roots: ``--output=~/preds``, which the shell leaves as it
    is, made a folder named ``~`` in the current one."""
    from autoseg.paths import expand_home

    text = os.fspath(value)
    if not text:
        raise typer.BadParameter("an empty path; give a file or folder name ('.' for the current folder)")
    try:
        return expand_home(text, "path")
    except AutosegError as exc:
        raise typer.BadParameter(str(exc)) from None


def nonempty_path_text(value: str | os.PathLike[str]) -> str:
    """``nonempty_path`` as text that keeps a trailing separator: ``-o d3/`` names a folder to write into,
    which ``Path`` drops (a file named ``d3`` was written)."""
    text = os.fspath(nonempty_path(value))
    return text + os.sep if os.fspath(value).endswith(("/", os.sep)) else text


path_option = functools.partial(typer.Option, parser=nonempty_path, metavar="<path>")  # every path-valued option
path_argument = functools.partial(typer.Argument, parser=nonempty_path)

DATASET_HELP = "Dataset004, 4, Dataset004_Hippocampus or the dataset folder's path"
WORKERS_HELP = "worker processes, 0 or 1: all in this process (default: the CPU cores available)"


def checked_workers(value: Optional[int]) -> Optional[int]:
    """``-np`` checked when the command starts, not when its first pool does (ensemble had claimed its output
    folder before a count was refused); a count beyond the machine's limit is lowered to it, with a note."""
    from autoseg.utils.progress import MAX_STAGE_WORKERS_PER_CORE, stage_workers

    if value is None:
        return None
    workers = stage_workers(value, typer.BadParameter)
    if workers < value:
        typer.echo(f"note: -np {value} is more than {MAX_STAGE_WORKERS_PER_CORE} worker processes per core of this "
                   f"machine; {workers} are used", err=True)
    return workers


workers_option = functools.partial(typer.Option, None, "-np", "--num-workers", min=0, help=WORKERS_HELP,
                                   callback=checked_workers)  # every stage's -np


def _print_version(requested: bool) -> None:
    """``autoseg --version``: which autoseg ran (it was 'No such option: --version'), for bug reports."""
    if requested:
        from autoseg import __version__

        typer.echo(f"autoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="print autoseg's version and exit"),
) -> None:
    """Options of ``autoseg`` itself, before the command."""


@app.command()
@user_errors
def verify(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Check a raw dataset and list every problem, one line each (exit 0 when clean, 2 otherwise)."""
    from autoseg.dataset.verify import verify_dataset
    from autoseg.paths import resolve_dataset

    report = verify_dataset(resolve_dataset(dataset), num_workers)
    for problem in report.problems:
        typer.echo(f"ERROR {problem}")
    for warning in report.warnings:
        typer.echo(f"WARNING {warning}")
    if report.ok:
        warned = f" ({len(report.warnings)} warning(s))" if report.warnings else ""
        typer.echo(f"{report.dataset}: {report.num_cases} case(s) checked, no problems found{warned}")
        return
    typer.echo(f"{report.dataset}: {len(report.problems)} problem(s) in {report.num_cases} case(s)", err=True)
    raise typer.Exit(2)


@app.command()
@user_errors
def fingerprint(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Verify the dataset and write its fingerprint.json (spacings, shapes, intensities, class sizes and thickness)."""
    from autoseg.fingerprint.extract import extract_fingerprint
    from autoseg.fingerprint.file import fingerprint_path
    from autoseg.fingerprint.summary import format_fingerprint
    from autoseg.paths import resolve_dataset

    location = resolve_dataset(dataset)
    warnings: list[str] = []
    result = extract_fingerprint(location, num_workers, warn=warnings.append)
    typer.echo(format_fingerprint(result))
    for warning in warnings:
        typer.echo(f"WARNING {warning}", err=True)
    typer.echo(f"written: {fingerprint_path(location)}")


@app.command()
@user_errors
def plan(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", help="GPU memory in GB to plan for (default: this machine's GPU); without a GPU here it plans for a GPU elsewhere, memory modelled (with --budget, which times this machine: this CPU, within 80% of that memory)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="time budget for one fold on this machine, e.g. 30m, 2h: preprocessing, training, checkpoints and the final validation (default with no GPU: 12h)"),
    network: Optional[str] = typer.Option(None, "--network", help="network family, one of those `autoseg networks` lists (default: nnU-Net's U-Net)"),
    configs: Optional[list[str]] = typer.Option(None, "--configs", "-c", "--configuration", help="only these configurations: 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres"),
    plans_name: str = typer.Option("autosegPlans", "--plans-name", help="name of the plans file; a new name never touches earlier plans"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing plans file of this name that differs"),
    device: Optional[str] = typer.Option(None, "--device", help="device to plan for: cpu, cuda or mps (default: cuda when present)"),
    num_workers: Optional[int] = workers_option(),
    transfer_from: Optional[Path] = path_option(None, "--transfer-plans-from", help="a plans file, trained model folder or model zip from export-model: keep its network, patch and batch (to fine-tune its weights with train --pretrained-weights), with this dataset's own spacing and normalization"),
) -> None:
    """Choose spacing, normalization, configurations, topology, patch, batch and mirrored axes; write the plans file."""
    from autoseg.planning.planner import plan_dataset
    from autoseg.utils.duration import parse_duration

    seconds = parse_duration(budget) if budget is not None else None
    _, table = plan_dataset(dataset, gpu_memory, seconds, network, configs or None, plans_name, overwrite, device, num_workers, transfer_from)
    typer.echo(table)


@app.command()
@user_errors
def networks() -> None:
    """List the registered network families (for --network): dimensionalities, description, paper."""
    from autoseg.networks.registry import format_network_table

    typer.echo(format_network_table())


@app.command()
@user_errors
def preprocess(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    configurations: Optional[list[str]] = typer.Option(None, "-c", "--configuration", help="configurations to preprocess (default: all planned)"),
    num_workers: Optional[int] = workers_option(),
    plans_name: str = typer.Option("autosegPlans", "--plans-name", help="plans file to follow"),
) -> None:
    """Crop, normalize, resample and store every training case; resumable; drops stored cases the dataset no longer lists."""
    from autoseg.preprocessing.runner import preprocess_dataset

    report = preprocess_dataset(dataset, configurations or None, num_workers, plans_name, started=_command_started)
    typer.echo(report.summary())


@app.command()
@user_errors
def train(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    configuration: str = typer.Argument(..., help="2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres"),
    fold: str = typer.Argument(..., help="0-4, or all (train on every case)"),
    network: Optional[str] = typer.Option(None, "--network", help="network family (default: the plan's)"),
    plans_name: str = typer.Option("autosegPlans", "--plans-name", help="plans file to follow"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="number of epochs; with --continue it extends a finished run"),
    budget: Optional[str] = typer.Option(None, "--budget", help="train for this long, e.g. 30m (iterations from measured speed; the LR schedule completes)"),
    continue_: bool = typer.Option(False, "--continue", help="resume from the latest checkpoint (also after kill -9; "
                                   "else from checkpoint_best, with a note)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: cuda when present)"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    deterministic: bool = typer.Option(False, "--deterministic", help="bit-reproducible runs (slower)"),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="override a training config value, e.g. --set optimizer.lr=0.005 (repeatable; an unknown key, a wrong type or a value out of the setting's range is refused before anything is written; docs/configuration.md lists every key)"),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="keep validation probabilities (for ensembling and postprocessing)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="data-loading worker processes (0: in-process, for debugging)"),
    pretrained_weights: Optional[Path] = path_option(None, "--pretrained-weights", help="start from a checkpoint, model folder or export-model zip: loads every tensor that matches, reports the rest (output heads for other classes)"),
) -> None:
    """Train one cross-validation fold; checkpoints every epoch, validates with sliding window at the end."""
    from autoseg.training.run import format_training_summary, train_fold
    from autoseg.utils.duration import parse_duration

    seconds = parse_duration(budget) if budget is not None else None
    summary = train_fold(
        dataset, configuration, fold, network, plans_name, epochs, seconds, continue_, device, seed,
        deterministic, overrides or [], save_probabilities, workers, pretrained_weights,
    )
    typer.echo(format_training_summary(summary))


@app.command()
@user_errors
def demo(
    output: Path = path_option(Path("autoseg_demo"), "-o", "--output", help="working folder for everything the demo writes"),
    budget: str = typer.Option("10m", "--budget", help="total time to aim for, at least 50s (training gets what the other stages leave)"),
    dataset: Optional[Path] = path_option(None, "--dataset", help="dataset folder with imagesTs/labelsTs (default: the shipped example)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps"),
) -> None:
    """Run the whole pipeline on the shipped example data and print where the results are."""
    from autoseg.demo import EXAMPLE_DATASET, run_demo
    from autoseg.utils.duration import format_duration, parse_duration

    result = run_demo(output, parse_duration(budget), dataset or EXAMPLE_DATASET, device, typer.echo)
    typer.echo(f"held-out mean Dice ({', '.join(result.class_names)}): {result.mean_dice:.3f}")  # --dataset: its classes
    typer.echo(f"predictions: {result.predictions}")
    typer.echo(f"evaluation:  {result.evaluation}")
    typer.echo(f"report:      {result.report}")
    typer.echo(f"total time:  {format_duration(result.seconds)}")


def _folds(folds: Optional[list[str]]) -> Any:
    """``-f all`` -> "all"; ``-f 0 -f 1`` -> [0, 1]; nothing -> None (every fold found)."""
    if not folds:
        return None
    return "all" if folds == ["all"] else folds


def _prediction_model(stack: contextlib.ExitStack, request: Any, folds: Any, checkpoint: str, tta: bool) -> tuple[Any, str]:
    """What ``predict_folder`` runs: a model folder (``-m`` or found from ``-d``/``-c``), a model zip unpacked
    for the run's duration (``stack``), or the ONNX folds of an export for onnxruntime (float32: mixed precision
    off), and the mixed precision to run it in."""
    model_folder, engine = request.model_folder, request.engine
    if model_folder is not None and model_folder.suffix.lower() == ".zip" and model_folder.is_file() and engine == "torch":
        from autoseg.evaluation.model_files import loaded_model_zip

        # without TTA, folds trained with other mirror axes load (nothing is mirrored)
        return stack.enter_context(loaded_model_zip(model_folder, folds, checkpoint, request.device, tta=tta)), request.mixed_precision
    if model_folder is not None:
        model = model_folder
    else:
        from autoseg.inference.model import find_model_folder

        model = find_model_folder(request.dataset, request.configuration, request.network, request.plans_name)
    if engine == "onnxruntime":
        from autoseg.inference.onnx_model import load_onnx_model

        return load_onnx_model(model, folds, checkpoint), "off"
    return model, request.mixed_precision


@app.command()
@user_errors
def predict(
    input: Path = path_option(..., "-i", "--input", help="folder of <case>_XXXX images and/or DICOM series folders, one image file, or one DICOM folder"),
    output: Path = path_option(..., "-o", "--output", help="folder for the label maps (written in each input's geometry)"),
    dataset: Optional[str] = typer.Option(None, "-d", "--dataset", help=DATASET_HELP + " (with -c)"),
    configuration: Optional[str] = typer.Option(None, "-c", "--configuration", help="2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres (with -d)"),
    network: Optional[str] = typer.Option(None, "--network", help="network of the model to use with -d/-c (default: the only one trained)"),
    plans_name: Optional[str] = typer.Option(None, "--plans-name", help="plans of the model to use with -d/-c"),
    model_folder: Optional[Path] = path_option(None, "-m", "--model", help="a model folder <results>/<Dataset>/<network>__<plans>__<config>, or a zip from export-model (checked like import-model, unpacked to a temporary folder) (instead of -d/-c)"),
    folds: Optional[list[str]] = typer.Option(None, "-f", "--fold", help="folds to ensemble, e.g. -f 0 -f 1, or -f all (default: every trained fold)"),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest"),
    step: float = typer.Option(0.5, "--step", help="sliding-window step as a fraction of the patch"),
    no_tta: bool = typer.Option(False, "--no-tta", help="skip mirroring test-time augmentation (about 2^k times faster)"),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="also write <case>.npz probabilities + <case>.json (for ensembling)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: cuda when present)"),
    num_parts: int = typer.Option(1, "--num-parts", help="split the cases into this many parts (several machines/GPUs)"),
    part_id: int = typer.Option(0, "--part-id", help="which part this run predicts (0-based)"),
    continue_: bool = typer.Option(False, "--continue", help="skip cases whose outputs exist"),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (fp16 on CUDA, bf16 on CPUs with native bf16: same Dice to 1e-4, 2.6x faster, docs/benchmarks.md), bf16, fp16 (CUDA) or off"),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the networks (a one-off compilation; pays off only over many tiles)"),
    engine: str = typer.Option("torch", "--engine", help="torch, or onnxruntime to run a zip from `export-model --format onnx` given with -m (CPU, float32; needs no torch, docs/interop.md)"),
    statistics: bool = typer.Option(False, "--statistics", help="also write <case>_statistics.json (per class or region: volume in mm3, voxels, components, intensity mean and percentiles per channel) and statistics.csv"),
) -> None:
    """Sliding-window prediction with mirroring TTA, ensembling folds; the cascade runs end to end."""
    from autoseg.inference.batch import predict_folder
    from autoseg.inference.request import PredictRequest, check_predict_request

    request = PredictRequest(
        model_folder=model_folder, dataset=dataset, configuration=configuration, network=network, plans_name=plans_name,
        engine=engine, device=device, mixed_precision=mixed_precision, step=step,
    )
    check_predict_request(request)
    if statistics:
        from autoseg.evaluation.statistics import predict_with_statistics_on_failure, refuse_name_clashes, run_statistics

        refuse_name_clashes(input, output, save_probabilities)
    with contextlib.ExitStack() as stack:
        model, mixed_precision = _prediction_model(stack, request, _folds(folds), checkpoint, tta=not no_tta)
        run = functools.partial(
            predict_folder, input, output, model, _folds(folds), checkpoint, step, not no_tta, save_probabilities,
            device, num_parts, part_id, continue_, mixed_precision, compile_networks=compile_,
        )
        report = predict_with_statistics_on_failure(run, input, output) if statistics else run()
    typer.echo(
        f"{len(report.predicted)} case(s) predicted, {len(report.skipped)} skipped, into {report.output_folder} "
        f"({report.seconds:.1f} s)"
    )
    if statistics and (table := run_statistics(report, input, output)) is not None:
        typer.echo(f"statistics: {table}")


def _description(dataset: Optional[str]) -> Any:
    if dataset is None:
        return None
    from autoseg.dataset.description import load_description
    from autoseg.paths import resolve_dataset

    return load_description(resolve_dataset(dataset).raw_dir)


@app.command()
@user_errors
def evaluate(
    pred: Path = path_option(..., "-p", "--pred", help="folder of predicted label maps"),
    ref: Path = path_option(..., "-r", "--ref", help="folder of reference label maps (same file names)"),
    dataset: Optional[str] = typer.Option(None, "-d", "--dataset", help="dataset for labels/regions (default: the first dataset.json in REF, REF's parent, PRED, the model PRED's predict_info.json names, a fold's model folder or PRED's parent)"),
    labels: Optional[list[int]] = typer.Option(None, "-l", "--labels", help="label values to evaluate without a dataset, e.g. --labels 1 2 (default: the labels of the dataset.json -d defaults to, else every value found in the references)"),
    output: Optional[Path] = path_option(None, "-o", "--output", help="folder for summary.json / summary.csv (default: PRED)"),
    tolerance_mm: float = typer.Option(1.0, help="tolerance of the normalised surface Dice, in mm"),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Dice, IoU, HD95, ASSD, surface Dice, precision, recall and volumes per case and class."""
    from autoseg.evaluation.evaluate import (
        absent_labels_note, check_evaluation_output, choose_labels, dataset_json_of, evaluate_folders,
        format_table, no_common_label_note, unpredicted_references,
    )

    check_evaluation_output(pred, ref, output, tolerance_mm)
    choice = choose_labels(pred, ref, _description(dataset), labels, num_workers)
    if choice.source == "references":
        typer.echo(f"no dataset.json or --labels: evaluating the labels found in the references: {', '.join(list(choice.labels)[1:])}")
    elif choice.source == "--labels" and "ignore" in choice.labels:
        typer.echo(f"ignore label {choice.labels['ignore']} of {dataset_json_of(pred, ref)}: its voxels are not scored")
    summary = evaluate_folders(pred, ref, choice.labels, output, num_workers, tolerance_mm, choice.file_ending)
    typer.echo(format_table(summary))
    if note := absent_labels_note(summary):
        typer.echo(note)
    if choice.source != "dataset" and (note := no_common_label_note(summary)):  # a dataset refuses other values
        typer.echo(note)
    unpredicted = unpredicted_references(summary, choice.file_ending)
    if unpredicted:
        typer.echo(f"note: {len(unpredicted)} reference case(s) have no prediction and are not scored: "
                   f"{', '.join(unpredicted[:5])}{' ...' if len(unpredicted) > 5 else ''}")
    typer.echo(f"written: {(output or pred) / 'summary.json'} and summary.csv")


postprocess_app = typer.Typer(
    no_args_is_help=True,
    help="Connected-component postprocessing: decide it on cross-validation predictions, then apply it.",
)
app.add_typer(postprocess_app, name="postprocess")


@postprocess_app.command("determine")
@user_errors
def postprocess_determine(
    pred: Path = path_option(..., "-p", "--pred", help="cross-validation predictions (all folds in one folder)"),
    ref: Path = path_option(..., "-r", "--ref", help="reference label maps"),
    dataset: Optional[str] = typer.Option(None, "-d", "--dataset", help="dataset for labels (default: the first dataset.json in REF, REF's parent, PRED, the model PRED's predict_info.json names, a fold's model folder or PRED's parent)"),
    output: Optional[str] = typer.Option(None, "-o", "--output", parser=nonempty_path_text, metavar="<path>",
                                         help="decision file, or a folder ending in / for postprocessing.json in it "
                                              "(default: PRED/postprocessing.json)"),
    epsilon: float = typer.Option(1e-3, help="a step must raise the mean Dice by more than this and lower no class by more"),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Decide which connected-component steps help on the cross-validation and store them as JSON."""
    from autoseg.postprocessing.determine import DECISION_FILE, describe_steps, determine_postprocessing
    from autoseg.utils.output_folders import output_file

    # without -d the dataset.json is looked for once the folders are checked (-p X -r X is the fault to name first)
    decision = determine_postprocessing(pred, ref, _description(dataset), output, num_workers, epsilon)
    accepted = describe_steps(decision)
    typer.echo("accepted steps:" + "".join(f"\n  {line}" for line in accepted) if accepted else "accepted steps: none")
    typer.echo(f"written: {output_file(pred, output, DECISION_FILE)}")


@postprocess_app.command("apply")
@user_errors
def postprocess_apply(
    input: Path = path_option(..., "-i", "--input", help="folder of label maps"),
    output: Path = path_option(..., "-o", "--output", help="new folder for the postprocessed label maps"),
    decision: Path = path_option(..., "--decision", help="postprocessing.json from `postprocess determine`"),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Apply a postprocessing decision to every label map of a folder (deterministic).

    The input folder's dataset.json and plans.json (or, for a predict output without them, those of the model
    its predict_info.json names) are copied beside the label maps once a case is written, so `evaluate` and
    `ensemble` on the output need no -d."""
    from autoseg.postprocessing.determine import apply_to_folder

    written = apply_to_folder(input, output, decision, num_workers)
    typer.echo(f"{len(written)} label map(s) written to {output}")


@app.command()
@user_errors
def ensemble(
    inputs: list[Path] = path_option(..., "-i", "--input", help="prediction folders with saved probabilities (give -i twice or more)"),
    output: Path = path_option(..., "-o", "--output", help="folder for the ensembled label maps"),
    save_probabilities: bool = typer.Option(False, help="also write the averaged probabilities"),
    file_ending: Optional[str] = typer.Option(None, help="ending of the written label maps, dot included, e.g. .nii.gz (default: as in the first folder)"),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Average the saved probabilities of several configurations (or models) case by case.

    The inputs' dataset.json (the first that gives the labels the probabilities were predicted with), its
    file_ending set to the one the written label maps share, is written beside them after the cases (when one was written), so
    `evaluate` and `postprocess determine` on the output need no -d."""
    from autoseg.evaluation.ensemble import ensemble_folders

    cases = ensemble_folders(inputs, output, save_probabilities, num_workers, file_ending)
    typer.echo(f"{len(cases)} case(s) ensembled into {output}")


FOLDS_HELP = "folds, e.g. -f 0 -f 1 (default: 0 1 2 3 4)"


@app.command("find-best")
@user_errors
def find_best(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    folds: list[str] = typer.Option(["0", "1", "2", "3", "4"], "-f", "--fold", help=FOLDS_HELP),
    configurations: Optional[list[str]] = typer.Option(None, "-c", "--configuration", help="only these configurations (default: all trained)"),
    no_ensembles: bool = typer.Option(False, "--no-ensembles", help="do not try pairwise ensembles"),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Rank every trained configuration and pairwise ensemble by cross-validation Dice; print how to predict."""
    from autoseg.evaluation.selection import find_best as run, instructions_text

    typer.echo(instructions_text(run(dataset, folds, configurations or None, not no_ensembles, num_workers)))


@app.command("export-model")
@user_errors
def export_model(
    model_folders: list[Path] = path_option(..., "-m", "--model", help="model folder(s) <results>/<Dataset>/<network>__<plans>__<config>"),
    output: Path = path_option(..., "-o", "--output", help="the zip file to write"),
    folds: list[str] = typer.Option(["0", "1", "2", "3", "4"], "-f", "--fold", help=FOLDS_HELP),
    checkpoint: str = typer.Option("final", help="final, best or latest"),
    format_: str = typer.Option("autoseg", "--format", help="autoseg (safetensors weights, for import-model) or onnx (one ONNX graph per fold + deploy.json, for predict --engine onnxruntime; needs autoseg[onnx])"),
) -> None:
    """Pack trained models into one zip: safetensors weights (or ONNX graphs), plans, dataset, postprocessing, checksums."""
    from autoseg.errors import UsageError

    if format_ == "onnx":
        from autoseg.inference.onnx_model import export_onnx_model

        if len(model_folders) != 1:
            raise UsageError("--format onnx: give one model folder (-m) per ONNX model file")
        typer.echo(f"written: {export_onnx_model(model_folders[0], output, folds, checkpoint)}")
        return
    if format_ != "autoseg":
        raise UsageError(f"--format {format_}: choose autoseg or onnx")
    from autoseg.evaluation.model_files import export_model as run

    typer.echo(f"written: {run(model_folders, output, folds, checkpoint)}")


@app.command("import-model")
@user_errors
def import_model(
    zip_file: Path = path_argument(..., help="a zip written by `autoseg export-model`"),
    results_root: Optional[Path] = path_option(None, help="where to install (default: the results root)"),
    overwrite: bool = typer.Option(False, help="replace model folders (and ensemble decisions) that exist"),
) -> None:
    """Check and install an exported model; never runs code, refuses tampered or incompatible files."""
    from autoseg.evaluation.model_files import install_model_file

    installed = install_model_file(zip_file, results_root, overwrite)
    for folder in installed.models:
        typer.echo(f"installed: {folder}")
    for decision in installed.decisions:
        typer.echo(f"installed: {decision} (postprocess apply --decision, after ensembling its models)")


@app.command()
@user_errors
def report(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    output: Optional[str] = typer.Option(None, "-o", "--output", parser=nonempty_path_text, metavar="<path>",
                                         help="HTML file, or a folder ending in / for report.html in it "
                                              "(default: <results>/<Dataset>/report.html)"),
    num_workers: Optional[int] = workers_option(),
) -> None:
    """Self-contained HTML report: cross-validation table, Dice box plots, training curves, overlays."""
    from autoseg.evaluation.report import build_report

    typer.echo(f"written: {build_report(dataset, output, num_workers)}")


def expand_multi_value_options(args: list[str]) -> list[str]:
    """Accept nnU-Net's ``-f 0 1 2 3 4`` and ``-i DIR DIR`` (``autoseg.cli_lists``)."""
    from autoseg.cli_lists import expand_lists

    commands = getattr(typer.main.get_command(app), "commands", {})
    command = commands.get(args[0]) if args else None
    return args if command is None else expand_lists(getattr(command, "params", []), args)


# When the ``autoseg`` process began (``time.time()``), set by the console script: the preprocess timing record that
# train subtracts from a planned budget then holds the interpreter's start and imports, as the plan prices them.
# None in-process (the Python API, typer's test runner), where the command starts with the call.
_command_started: float | None = None


def main(started: float | None = None) -> None:
    """Console-script entry point; ``started``: when the process began, if earlier than this call."""
    global _command_started
    _command_started = started
    _print_paths_as_given()
    app(args=expand_multi_value_options(sys.argv[1:]), prog_name="autoseg")


def _print_paths_as_given() -> None:
    """Print a path whose bytes are not UTF-8 (``-o out\\xff``, held as a surrogate) as its own bytes, as Python
    does under the C locale: with a strict UTF-8 standard output (any ``en_US.UTF-8`` terminal), ``evaluate -o
    out\\xff`` wrote its files, then failed printing where they are, as an 'internal error', exit 1."""
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors="surrogateescape")


if __name__ == "__main__":  # pragma: no cover
    main()

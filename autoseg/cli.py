"""The ``autoseg`` command line: one command per stage. Parses, calls, prints; no logic here."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from autoseg.errors import AutosegError

app = typer.Typer(
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
    typer.echo(f"autoseg: error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one message and exit code 2; never a traceback (AUTOSEG_DEBUG=1 shows it)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AutosegError as exc:
            if os.environ.get("AUTOSEG_DEBUG"):
                traceback.print_exc()
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("AUTOSEG_DEBUG"):
                traceback.print_exc()
            _fail(
                f"internal error ({type(exc).__name__}: {exc}); this is a bug in autoseg, please report it "
                "with the command you ran (AUTOSEG_DEBUG=1 prints the traceback)",
                1,
            )

    return wrapper


DATASET_HELP = "Dataset004, 4, Dataset004_Hippocampus or the dataset folder's path"
WORKERS_HELP = "worker processes (default: the CPU cores available)"


@app.command()
@user_errors
def verify(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Check a raw dataset and list every problem, one line each (exit 0 when clean, 2 otherwise)."""
    from autoseg.dataset.verify import verify_dataset
    from autoseg.paths import resolve_dataset

    report = verify_dataset(resolve_dataset(dataset), num_workers)
    for problem in report.problems:
        typer.echo(f"ERROR {problem}")
    if report.ok:
        typer.echo(f"{report.dataset}: {report.num_cases} case(s) checked, no problems found")
        return
    typer.echo(f"{report.dataset}: {len(report.problems)} problem(s) in {report.num_cases} case(s)", err=True)
    raise typer.Exit(2)


@app.command()
@user_errors
def fingerprint(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Verify the dataset and write its fingerprint.json (spacings, shapes, intensities, class sizes)."""
    from autoseg.fingerprint.extract import extract_fingerprint, fingerprint_path
    from autoseg.fingerprint.summary import format_fingerprint
    from autoseg.paths import resolve_dataset

    location = resolve_dataset(dataset)
    result = extract_fingerprint(location, num_workers)
    typer.echo(format_fingerprint(result))
    typer.echo(f"written: {fingerprint_path(location)}")


def _description(dataset: Optional[str]) -> Any:
    if dataset is None:
        return None
    from autoseg.dataset.description import load_description
    from autoseg.paths import resolve_dataset

    return load_description(resolve_dataset(dataset).raw_dir)


@app.command()
@user_errors
def evaluate(
    pred: Path = typer.Option(..., "-p", "--pred", help="folder of predicted label maps"),
    ref: Path = typer.Option(..., "-r", "--ref", help="folder of reference label maps (same file names)"),
    dataset: Optional[str] = typer.Option(None, "-d", "--dataset", help="dataset for labels/regions (default: dataset.json beside the references)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder for summary.json / summary.csv (default: PRED)"),
    tolerance_mm: float = typer.Option(1.0, help="tolerance of the normalised surface Dice, in mm"),
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Dice, IoU, HD95, ASSD, surface Dice, precision, recall and volumes per case and class."""
    from autoseg.evaluation.evaluate import evaluate_folders, format_table

    summary = evaluate_folders(pred, ref, _description(dataset), output, num_workers, tolerance_mm)
    typer.echo(format_table(summary))
    typer.echo(f"written: {(output or pred) / 'summary.json'} and summary.csv")


postprocess_app = typer.Typer(
    no_args_is_help=True,
    help="Connected-component postprocessing: decide it on cross-validation predictions, then apply it.",
)
app.add_typer(postprocess_app, name="postprocess")


@postprocess_app.command("determine")
@user_errors
def postprocess_determine(
    pred: Path = typer.Option(..., "-p", "--pred", help="cross-validation predictions (all folds in one folder)"),
    ref: Path = typer.Option(..., "-r", "--ref", help="reference label maps"),
    dataset: Optional[str] = typer.Option(None, "-d", "--dataset", help="dataset for labels (default: dataset.json beside the references)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="decision file (default: PRED/postprocessing.json)"),
    epsilon: float = typer.Option(1e-3, help="a step must raise the mean Dice by more than this and lower no class by more"),
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Decide which connected-component steps help on the cross-validation and store them as JSON."""
    from autoseg.evaluation.evaluate import find_description
    from autoseg.postprocessing.determine import determine_postprocessing

    description = _description(dataset) or find_description(pred, ref)
    decision = determine_postprocessing(pred, ref, description, output, num_workers, epsilon)
    accepted = [step for step in decision["steps"]]
    typer.echo(f"accepted steps: {accepted if accepted else 'none'}")
    typer.echo(f"written: {output or pred / 'postprocessing.json'}")


@postprocess_app.command("apply")
@user_errors
def postprocess_apply(
    input: Path = typer.Option(..., "-i", "--input", help="folder of label maps"),
    output: Path = typer.Option(..., "-o", "--output", help="new folder for the postprocessed label maps"),
    decision: Path = typer.Option(..., "--decision", help="postprocessing.json from `postprocess determine`"),
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Apply a postprocessing decision to every label map of a folder (deterministic)."""
    from autoseg.postprocessing.determine import apply_to_folder

    written = apply_to_folder(input, output, decision, num_workers)
    typer.echo(f"{len(written)} label map(s) written to {output}")


@app.command()
@user_errors
def ensemble(
    inputs: list[Path] = typer.Option(..., "-i", "--input", help="prediction folders with saved probabilities (give -i twice or more)"),
    output: Path = typer.Option(..., "-o", "--output", help="folder for the ensembled label maps"),
    save_probabilities: bool = typer.Option(False, help="also write the averaged probabilities"),
    file_ending: Optional[str] = typer.Option(None, help="ending of the written label maps (default: as in the first folder)"),
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Average the saved probabilities of several configurations (or models) case by case."""
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
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Rank every trained configuration and pairwise ensemble by cross-validation Dice; print how to predict."""
    from autoseg.evaluation.selection import find_best as run, instructions_text

    typer.echo(instructions_text(run(dataset, folds, configurations or None, not no_ensembles, num_workers)))


@app.command("export-model")
@user_errors
def export_model(
    model_folders: list[Path] = typer.Option(..., "-m", "--model", help="model folder(s) <results>/<Dataset>/<network>__<plans>__<config>"),
    output: Path = typer.Option(..., "-o", "--output", help="the zip file to write"),
    folds: list[str] = typer.Option(["0", "1", "2", "3", "4"], "-f", "--fold", help=FOLDS_HELP),
    checkpoint: str = typer.Option("final", help="final, best or latest"),
) -> None:
    """Pack trained models into one zip: plain-tensor weights, plans, dataset, postprocessing, checksums."""
    from autoseg.evaluation.model_files import export_model as run

    typer.echo(f"written: {run(model_folders, output, folds, checkpoint)}")


@app.command("import-model")
@user_errors
def import_model(
    zip_file: Path = typer.Argument(..., help="a zip written by `autoseg export-model`"),
    results_root: Optional[Path] = typer.Option(None, help="where to install (default: the results root)"),
    overwrite: bool = typer.Option(False, help="replace model folders that exist"),
) -> None:
    """Check and install an exported model; never runs code, refuses tampered or incompatible files."""
    from autoseg.evaluation.model_files import import_model as run

    for folder in run(zip_file, results_root, overwrite):
        typer.echo(f"installed: {folder}")


@app.command()
@user_errors
def report(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="HTML file (default: <results>/<Dataset>/report.html)"),
    num_workers: Optional[int] = typer.Option(None, "-np", "--num-workers", help=WORKERS_HELP),
) -> None:
    """Self-contained HTML report: cross-validation table, Dice box plots, training curves, overlays."""
    from autoseg.evaluation.report import build_report

    typer.echo(f"written: {build_report(dataset, output, num_workers)}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="autoseg")


if __name__ == "__main__":  # pragma: no cover
    main()

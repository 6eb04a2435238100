"""The ``autoseg`` command line: one command per stage. Parses, calls, prints; no logic here."""

from __future__ import annotations

import functools
import os
import sys
import traceback
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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="autoseg")


if __name__ == "__main__":  # pragma: no cover
    main()

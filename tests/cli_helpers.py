"""Running the ``autoseg`` command line inside a test, as the console script does."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from autoseg.cli import app, expand_multi_value_options

# The smallest training that still runs every step: two iterations per epoch, one validation batch.
TRAIN_SETTINGS = ["iterations_per_epoch=2", "val_iterations_per_epoch=1", "mixed_precision=off"]

runner = CliRunner()


def autoseg(*args: object) -> str:
    """Run ``autoseg ARGS`` (nnU-Net-style lists expanded); its stdout (the exit code must be 0)."""
    argv = expand_multi_value_options([str(a) for a in args])
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, f"autoseg {' '.join(argv)} exited {result.exit_code}:\n{result.output}"
    return result.stdout


def autoseg_fails(*args: object) -> str:
    """Run ``autoseg ARGS``, which must refuse with exit code 2 and one message (no traceback); its output."""
    argv = expand_multi_value_options([str(a) for a in args])
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, f"autoseg {' '.join(argv)} exited {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result.output


def set_options(settings: list[str]) -> list[str]:
    """``--set`` options for training settings ``key=value``."""
    return [token for setting in settings for token in ("--set", setting)]


def workers_asked(monkeypatch: Any, module: Any) -> list[int]:
    """The ``num_workers`` each ``parallel_map`` call of ``module`` is given, with ``default_workers()`` at 2 (so
    a ``-np 0`` read as unset shows as 2)."""
    import autoseg.utils.progress as progress

    asked: list[int] = []
    real = module.parallel_map

    def parallel_map(func, items, num_workers, description):  # type: ignore[no-untyped-def]
        asked.append(num_workers)
        return real(func, items, num_workers, description)

    monkeypatch.setattr(module, "parallel_map", parallel_map)
    monkeypatch.setattr(progress, "default_workers", lambda: 2)  # what stage_workers reads for None
    return asked

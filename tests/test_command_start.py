"""The console script passes when the process began to `preprocess`, whose timing record (what `autoseg train`
subtracts from a planned budget) then holds the interpreter's start and imports, as the plan prices them."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

import autoseg.__main__ as entry
import autoseg.cli as cli
import autoseg.preprocessing.runner as runner


def _capture_preprocess(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake(dataset: str, configurations: Any, num_workers: Any, plans_name: str, started: float | None = None) -> Any:
        seen["started"] = started
        return SimpleNamespace(summary=lambda: "stored")

    monkeypatch.setattr(runner, "preprocess_dataset", fake)
    return seen


def test_the_console_script_passes_its_start_to_preprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture_preprocess(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["autoseg", "preprocess", "Dataset999_None"])
    monkeypatch.setattr(cli, "_command_started", None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(started=1234.5)
    assert exit_info.value.code == 0 and seen["started"] == 1234.5


def test_the_entry_point_reads_the_clock_before_importing_the_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "main", lambda started=None: seen.setdefault("started", started))
    monkeypatch.setattr(entry.signal, "signal", lambda *args: None)  # pytest keeps its own Ctrl-C handling
    before = time.time()
    entry.main()
    assert before <= seen["started"] <= time.time()


def test_in_process_the_command_starts_with_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    seen = _capture_preprocess(monkeypatch)
    monkeypatch.setattr(cli, "_command_started", None)
    result = CliRunner().invoke(cli.app, ["preprocess", "Dataset999_None"])
    assert result.exit_code == 0, result.output
    assert seen["started"] is None

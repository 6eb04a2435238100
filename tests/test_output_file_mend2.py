"""utils.output_folders.output_file: where report and postprocess determine write their one output file."""

from __future__ import annotations

import os
from pathlib import Path

from autoseg.utils.output_folders import output_file


def test_output_file_defaults_to_the_folder_and_takes_a_trailing_separator_as_a_folder(tmp_path: Path) -> None:
    assert output_file(tmp_path, None, "report.html") == tmp_path / "report.html"
    assert output_file(tmp_path, "reports/", "report.html") == Path("reports") / "report.html"
    assert output_file(tmp_path, f"d3{os.sep}", "postprocessing.json") == Path("d3") / "postprocessing.json"
    assert output_file(tmp_path, Path("pp.json"), "postprocessing.json") == Path("pp.json")

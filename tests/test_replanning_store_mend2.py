"""The time reserve of a budgeted fold's final validation read each validation case's properties without waiting for
a ``preprocess`` run storing the case again, so such a case was reported as damaged ('<case>.json: is missing')."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.preprocessing import store as store_module
from autoseg.planning import accounting
from autoseg.training.replanning import validation_reserve_inputs

from test_store_readers_conc2 import _run_while_storing


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's flock")
def test_the_validation_reserve_waits_for_a_case_being_stored_again(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "STORE_WAIT_SECONDS", 3600.0)
    store = tmp_path / "store"
    shape = [4, 6, 8]
    properties = {"shape_after_resampling": shape, "shape_after_crop": shape, "shape_original": shape}
    store_module.save_case(store, "a", np.zeros((1, *shape), np.float32), np.zeros((1, *shape), np.int16), properties)
    outcome, err, code = _run_while_storing(store_module.case_paths(store, "a")[2],
                                            lambda: validation_reserve_inputs(store, "0", ["a"], [4, 4, 4], 2), capfd)
    expected = ([accounting.tiles_per_case(shape, [4, 4, 4])], [accounting.export_seconds(4 * 6 * 8, 2, False)])
    assert outcome == [expected] and code == 0
    assert err == f"waiting for a preprocess run writing into {store}\n"

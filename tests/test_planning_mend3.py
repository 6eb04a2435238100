"""The timing probe: one per plan whatever the widths, and the quietest probe seen kept in the cache with its load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoseg.networks.registry import get_network_spec
from autoseg.planning import compute_budget
from autoseg.planning import constants as C
from autoseg.planning import planner
from autoseg.planning.compute_budget import measure_timing
from autoseg.utils import cpu_load

STATS = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": -5.0, "max": 5.0, "percentile_00_5": -3.0,
         "percentile_99_5": 3.0, "num_samples": 100}
FINGERPRINT = {"version": 1, "dataset_name": "Dataset990_X", "channel_names": {"0": "MRI"},
               "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz", "spacings": [[1.0] * 3] * 4,
               "shapes_after_crop": [[32, 32, 32]] * 4, "median_relative_size_after_crop": 1.0, "is_2d": False,
               "foreground_intensity_properties_per_channel": {"0": STATS}}


def _loads(monkeypatch: pytest.MonkeyPatch, readings: list[float | None]) -> None:
    """Each probe's load reading faked, in turn: cores held by other processes while it ran (the machine's real
    load must not decide what these tests see)."""
    queue = list(readings)

    class Reading(cpu_load.LoadWhile):
        def __exit__(self, *exc: object) -> None:
            self.busy_elsewhere = queue.pop(0)

    monkeypatch.setattr(compute_budget, "LoadWhile", Reading)


def _probes(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Probe steps replaced by fixed timings, the n-th probe's step taking n seconds (so each probe's rate tells
    which probe it came from); the list holds one entry per probe."""
    probes: list[float] = []

    def step(*_: object) -> compute_budget.StepTime:
        probes.append(float(len(probes) + 1))
        return compute_budget.StepTime(probes[-1], probes[-1])

    monkeypatch.setattr(compute_budget, "_time_steps", step)
    monkeypatch.setattr(compute_budget, "_time_forward", lambda *_: compute_budget.StepTime(1.0, 1.0))
    return probes


def test_one_plan_probes_once_for_every_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a loaded probe no longer cached, each width probed again: one plan priced two widths at two rates."""
    _loads(monkeypatch, [1.0] * 4)
    probes = _probes(monkeypatch)
    ctx = planner._planning_context(FINGERPRINT, "unet", 4 * 2**30, 300.0, torch.device("cpu"), tmp_path, None, None,
                                    1.0, {}, True)
    rates = {ctx.timing(3, width, False).seconds_per_gflop for width in C.BUDGET_WIDTHS}
    assert len(C.BUDGET_WIDTHS) > 1 and len(probes) == 1 and len(rates) == 1


def _plan_rate(cache: Path) -> float:
    spec = get_network_spec("unet")
    return measure_timing("unet", spec.constraints, 2, 1, 2, width=4, device=torch.device("cpu"),
                          cache_dir=cache).seconds_per_gflop


def test_the_quietest_probe_is_kept_with_its_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine that is always busy nothing was cached: every plan probed again and planned from another rate.
    The quietest probe seen is now kept with its load; each plan probes again until one is quiet, and plans from
    the quieter of its own probe and the kept one."""
    _loads(monkeypatch, [1.5, 1.0, 1.2, 0.1])
    probes = _probes(monkeypatch)
    rates = [_plan_rate(tmp_path) for _ in range(5)]
    assert len(probes) == 4  # the fifth plan uses the quiet fourth probe
    first, second, fourth = rates[0], rates[1], rates[3]
    assert len({first, second, fourth}) == 3  # three probes of other rates kept in turn
    assert rates == [first, second, second, fourth, fourth]  # the third (busier than the kept one) is not used
    (entry,) = tmp_path.glob("timing_*.json")
    assert json.loads(entry.read_text())["value"]["busy_elsewhere"] == 0.1


def test_a_probe_cached_before_loads_were_kept_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Such a cache entry (no load) was written only for a quiet probe: it is used, not probed again."""
    _loads(monkeypatch, [None])
    probes = _probes(monkeypatch)
    rate = _plan_rate(tmp_path)
    (entry,) = tmp_path.glob("timing_*.json")
    stored = json.loads(entry.read_text())
    del stored["value"]["busy_elsewhere"]
    entry.write_text(json.dumps(stored))
    assert _plan_rate(tmp_path) == rate and len(probes) == 1

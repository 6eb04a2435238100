"""A class that no training case of a fold holds: training says so instead of a silent 0 for it."""

from __future__ import annotations

import json
from pathlib import Path

from autoseg.training.splits import classes_missing_from_training, read_fingerprint_quietly

FINGERPRINT = {
    "case_ids": ["a", "b", "c", "d"],
    "class_voxel_counts": {"1": [10, 12, 9, 11], "2": [0, 0, 64, 0], "3": [0, 0, 0, 0]},
}
NAMES = {1: "liver", 2: "rare", 3: "never"}


def test_a_class_only_in_validation_cases_is_named_with_them() -> None:
    notes = classes_missing_from_training(FINGERPRINT, NAMES, ["a", "b", "d"], ["c"])
    assert notes == [
        "note: class 2 (rare) is in no training case of this fold, only in validation case(s) c: the fold cannot "
        "learn it and scores 0 for it; train fold 'all', or move such a case into training in splits_final.json"
    ]


def test_no_note_when_training_holds_every_class_or_for_fold_all() -> None:
    assert classes_missing_from_training(FINGERPRINT, NAMES, ["a", "c"], ["b", "d"]) == []
    everything = ["a", "b", "c", "d"]
    assert classes_missing_from_training(FINGERPRINT, NAMES, everything, everything) == []


def test_a_fingerprint_of_other_cases_or_none_gives_no_note(tmp_path: Path) -> None:
    assert classes_missing_from_training(FINGERPRINT, NAMES, ["a", "x"], ["c"]) == []
    assert classes_missing_from_training({}, NAMES, ["a"], ["c"]) == []
    # hand-edited fields stopped the fold's start with an internal AttributeError, ValueError or TypeError
    for edit in ({"class_voxel_counts": [1, 2]}, {"class_voxel_counts": {"x": [0, 0, 1, 0]}},
                 {"class_voxel_counts": {"2": 5}}, {"class_voxel_counts": {"2": None}}, {"case_ids": 5},
                 {"case_ids": [["a"], "b", "c", "d"]}):
        assert classes_missing_from_training({**FINGERPRINT, **edit}, NAMES, ["a", "b", "d"], ["c"]) == []
    assert classes_missing_from_training({**FINGERPRINT, "case_ids": "abcd"}, NAMES, ["a", "b", "d"], ["c"]) == []
    assert read_fingerprint_quietly(tmp_path / "missing.json") == {}
    (tmp_path / "broken.json").write_text("{")
    assert read_fingerprint_quietly(tmp_path / "broken.json") == {}
    (tmp_path / "ok.json").write_text(json.dumps(FINGERPRINT))
    assert read_fingerprint_quietly(tmp_path / "ok.json") == FINGERPRINT

"""budget_search.small_class_notes on hand-computed fingerprints: a thin but large class is named by its
thickness, and a 2d note says its voxels are counted over all slices."""
from __future__ import annotations

from autoseg.planning.budget_search import small_class_notes

TARGET = [10.0, 1.5625, 1.5625]


def test_a_thin_but_large_class_is_named_by_its_thickness() -> None:
    """ACDC's myocardium, 6.5 mm thick at 4.42 mm in-plane: 6.5 / 4.42 = 1.47 voxels across, under 2, though its
    5000 target voxels (24.4 mm3 each) are 625 voxels of 195 mm3 there; it went unnamed. LV (30 mm) is not named."""
    fingerprint = {"labels": {"background": 0, "LV": 1, "MYO": 2},
                   "class_voxel_counts": {"1": [8000.0, 9000.0], "2": [5000.0, 6000.0]},
                   "class_volumes_mm3": {"1": [8000 * 24.4140625, 9000 * 24.4140625],
                                         "2": [5000 * 24.4140625, 6000 * 24.4140625]},
                   "median_structure_thickness_mm": {"LV": 30.0, "MYO": 6.5}}
    notes = small_class_notes("3d_fullres", fingerprint, [10.0, 4.42, 4.42], TARGET, 3)
    assert notes == ["3d_fullres: at 10x4.42x4.42 mm 'MYO' (6.5 mm, 1.5 voxels) is under 2 voxels thick, which may be "
                     "lost; give a larger --budget to keep the target spacing 10x1.56x1.56 mm"]
    assert small_class_notes("3d_fullres", fingerprint, TARGET, TARGET, 3) == []  # at the target spacing: no note


def test_a_2d_note_says_its_voxels_are_counted_over_all_slices() -> None:
    """At 3 x 3 mm (a 10 x 3 x 3 = 90 mm3 voxel) 180 and 270 mm3 are 2 and 3 voxels, under 2 ** 2; its 1.5 mm
    thickness is 0.5 voxels at 3 mm: both are said, the count's limit too."""
    fingerprint = {"labels": {"background": 0, "vessel": 1}, "class_volumes_mm3": {"1": [180.0, 270.0]},
                   "median_structure_thickness_mm": {"vessel": 1.5}}
    notes = small_class_notes("2d", fingerprint, [10.0, 3.0, 3.0], [10.0, 1.0, 1.0], 2)
    assert notes == ["2d: at 3x3 mm some cases hold fewer than 4 voxels of 'vessel' (median 2.5, smallest 2 voxels there) "
                     "over all their slices; 'vessel' (1.5 mm, 0.5 voxels) is under 2 voxels thick, which may be lost; "
                     "give a larger --budget to keep the target spacing 1x1 mm"]

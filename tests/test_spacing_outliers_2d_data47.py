"""Spacing outliers of 2D datasets: the slice axis (999) is never resampled, so it names no case."""
from __future__ import annotations

from autoseg.fingerprint.spacing_outliers import spacing_outlier_warnings

MEDIAN_2D = [999.0, 1.0, 1.0]


def test_a_one_slice_volume_among_2d_images_is_no_outlier_along_the_slice_axis() -> None:
    """A one-slice TIFF volume of 1 mm slices among 2D TIFFs was named 1/999 of the median along axis 0, 'resampled
    to 1/3,996 of its voxels', 'a header in m or micrometres': the 2D configuration resamples no slice axis."""
    spacings = [[1.0, 0.5, 0.5], [999.0, 1.0, 1.0], [999.0, 1.0, 1.0], [999.0, 1.0, 1.0]]
    assert spacing_outlier_warnings(["a", "b", "c", "d"], spacings, MEDIAN_2D) == []


def test_an_in_plane_outlier_of_a_2d_dataset_counts_in_plane_voxels_only() -> None:
    spacings = [[999.0, 10.0, 10.0], [999.0, 1.0, 1.0], [999.0, 1.0, 1.0]]
    assert spacing_outlier_warnings(["a", "b", "c"], spacings, MEDIAN_2D) == [
        "case a: spacing (999, 10, 10) mm is 10x the dataset's median (999, 1, 1) mm along axes 1, 2 (named from 5x "
        "off, either way); likely cause: its header gives the spacing in other units than the others (cm and mm differ "
        "10x); it is resampled to the median spacing (100 times its voxels): check its header (write the spacing in "
        "mm), then fingerprint again"]

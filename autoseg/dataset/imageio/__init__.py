"""Image reading and writing with geometry.

Every array travels with its ``Geometry`` so every output is written in its input's geometry. Formats:
NIfTI (.nii.gz, .nii), NRRD, MetaImage (.mha/.mhd) and GIPL through SimpleITK; 2D natural images
(.png, .bmp, .tif/.tiff) through scikit-image; a folder of DICOM files as one series.

Arrays are in SimpleITK's array order, always 3D: a 2D image is read as one slice ``(1, y, x)`` with
spacing 999 on the slice axis (as nnU-Net does), and written back as 2D.

A colour image file holds several channels, as in nnU-Net's ``NaturalImage2DIO``: ``read_image_channels``
gives an RGB PNG as 3 channels (R, G, B), RGBA as 4, grey as 1. ``read_case_images`` joins a case's
files in channel order and drops alpha when the dataset declares the channels without it.

A multi-page TIFF is a 3D volume (pages along z) when its spacing is known, as nnU-Net v2's ``Tiff3DIO``
reads it: from the sidecar ``<case>.json`` (``{"spacing": [z, y, x]}`` in mm; for a channel file
``<case>_0000.tif`` too), else from the spacing autoseg writes into the TIFF's own description. Without
either it is refused (nnU-Net would assume 1 mm silently; its pages could also be channels).
"""

from __future__ import annotations

import logging

import SimpleITK as sitk

from autoseg.dataset.imageio.channels import select_channels  # noqa: F401 - re-exported
from autoseg.dataset.imageio.dicom_checks import (  # noqa: F401 - re-exported
    DICOM_SLICE_TOLERANCE,
    DICOM_TILT_DEGREES,
    damaged_dicom_refusal,
)
from autoseg.dataset.imageio.endings import (  # noqa: F401 - re-exported
    DETACHED_HEADER_KEYS,
    NATURAL_2D_ENDINGS,
    NIFTI_ENDINGS,
    SITK_ENDINGS,
    SUPPORTED_ENDINGS,
    TIFF_ENDINGS,
    image_ending,
    is_image_ending,
    itk_reads_spelling,
    spelled_ending,
)
from autoseg.dataset.imageio.geometry import (  # noqa: F401 - re-exported
    GEOMETRY_TOLERANCE,
    ORIGIN_PRECISION_VOXELS,
    ORIGIN_TOLERANCE_VOXELS,
    SLICE_SPACING_2D,
    SMALLEST_REAL_VOXEL_MM,
    Geometry,
    far_origin_problem,
    far_origin_reason,
    geometry_differences,
    is_orthonormal,
    physical_volume_mm3,
)
from autoseg.dataset.imageio.headers import (  # noqa: F401 - re-exported
    case_nonfinite_voxels,
    detached_data_files,
    header_grid,
    header_with_data_files_renamed,
    ignored_sform_warning,
    itk_header_reader,
    nifti_nonfinite_counts,
    nifti_sform_ignored,
    nifti_value_scaling,
    nrrd_space_units,
    reader_grid,
    space_units_warning,
)
from autoseg.dataset.imageio.natural2d import COLOUR_KINDS  # noqa: F401 - re-exported
from autoseg.dataset.imageio.rawfile import is_gzip  # noqa: F401 - re-exported
from autoseg.dataset.imageio.reading import (  # noqa: F401 - re-exported
    read_case_images,
    read_image,
    read_image_channels,
)
from autoseg.dataset.imageio.shapes import label_map_shape  # noqa: F401 - re-exported
from autoseg.dataset.imageio.tiff_volume import (  # noqa: F401 - re-exported
    is_tiff_volume,
    missing_spacing_file_problem,
    tiff_spacing_files,
)
from autoseg.dataset.imageio.truncation import voxel_data_cut_short  # noqa: F401 - re-exported
from autoseg.dataset.imageio.values import (  # noqa: F401 - re-exported
    FLOAT32_MAX,
    float32_overflow_problem,
    is_integer_valued,
)
from autoseg.dataset.imageio.writing import (  # noqa: F401 - re-exported
    endings_keeping_geometry,
    geometry_lost_in,
    unwritable_problem,
    write_image,
)

# ITK prints warnings straight to stderr (for example while scanning a folder for DICOM); autoseg reports
# problems itself, as one clear line each.
sitk.ProcessObject_SetGlobalWarningDisplay(False)
# tifffile logs each oddity of a damaged TIFF ('incorrect StripByteCounts count (1 != 10000)', several times) to
# stderr beside autoseg's own line naming the file; its errors still reach autoseg as exceptions.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)

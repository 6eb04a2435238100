"""The file endings autoseg reads and writes, and an image's ending as its name spells it (and as ITK reads it)."""

from __future__ import annotations

from pathlib import Path


NIFTI_ENDINGS = (".nii.gz", ".nii")
SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz")
# A header whose voxels lie in a separate data file that it names (MetaImage ElementDataFile, NRRD "data file").
DETACHED_HEADER_KEYS = {".mhd": ("elementdatafile",), ".nhdr": ("data file", "datafile")}
NATURAL_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
TIFF_ENDINGS = (".tif", ".tiff")  # a 2D image, or a 3D volume when its spacing is known (is_tiff_volume)
SUPPORTED_ENDINGS = SITK_ENDINGS + NATURAL_2D_ENDINGS


def image_ending(path: str | Path) -> str:
    """The supported file ending of ``path`` ('' for a folder, which is read as a DICOM series)."""
    name = Path(path).name.lower()
    for ending in sorted(SUPPORTED_ENDINGS, key=len, reverse=True):
        if name.endswith(ending):
            return ending
    return ""


def is_image_ending(ending: str) -> bool:
    """Whether ``ending`` is a supported file ending as a dataset's ``file_ending`` is written: leading dot
    included, any case (``nii.gz`` and ``''`` are not: an empty one took every file of a folder as one case)."""
    return ending.startswith(".") and image_ending(f"case{ending}") == ending.lower()


def spelled_ending(path: Path) -> str:
    """The supported image ending of ``path`` as its name spells it ('' if none): cases are matched by
    exact file name, so ``c1.NII.GZ`` must be looked for as ``.NII.GZ``, not ``.nii.gz``."""
    ending = image_ending(path)
    return path.name[-len(ending):] if ending else ""


# The spellings of an ending, other than lower case, that ITK reads: NRRD in any case, NIfTI in upper case only.
_ITK_OTHER_SPELLINGS = {".nii.gz": (".NII.GZ",), ".nii": (".NII",), ".nrrd": None, ".nhdr": None}


def itk_reads_spelling(path: str | Path) -> bool:
    """Whether ITK reads a file named ``path`` by its ending as spelled (``.NII.GZ`` yes, ``.MHA``, ``.Nii.gz`` no);
    True for endings ITK does not read (natural 2D images)."""
    ending = image_ending(path)
    spelled = Path(path).name[-len(ending):] if ending else ""
    if ending not in SITK_ENDINGS or spelled == ending:
        return True
    others = _ITK_OTHER_SPELLINGS.get(ending, ())
    return others is None or spelled in others
